"""Errors the gateway answers with, in OpenAI's body and status codes.

    {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}

On the Anthropic Messages API (`/v1/messages`) the same errors take Anthropic's shape,
`{"type": "error", "error": {"type": "...", "message": "..."}, "request_id": "..."}`,
with its types by status (`ANTHROPIC_TYPES`): a 402 (the balance cannot cover the hold)
is `billing_error`, Anthropic's own type for a 402; the gateway being at capacity (a 429
`capacity_busy`) is Anthropic's 529 `overloaded_error`, while a limit on the caller stays
a 429 `rate_limit_error`.

A message never contains an upstream secret: upstream bodies are not echoed.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from promptex.gateway.charges import ASSET, MAX_RATE


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra: dict[str, Any] = {}  # more fields of the error object (signed mode's resync state)

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code, **self.extra}
        return orjson.dumps({"error": error})

    def response(self, request_id: str) -> Response:
        headers = {"x-request-id": request_id, **self.headers}
        return Response(self.body(), status_code=self.status, media_type="application/json", headers=headers)

    def anthropic_status(self) -> int:
        return OVERLOADED if self.status == 429 and self.code == BUSY else self.status

    def anthropic_body(self, request_id: str) -> bytes:
        fallback = "api_error" if self.status >= 500 else "invalid_request_error"
        kind = ANTHROPIC_TYPES.get(self.anthropic_status(), fallback)
        error = {"type": kind, "message": self.message, **self.extra}
        return orjson.dumps({"type": "error", "error": error, "request_id": request_id})

    def anthropic_response(self, request_id: str) -> Response:
        """This error as the Anthropic Messages API answers it (`request-id` is what its SDK reads)."""
        headers = {"x-request-id": request_id, "request-id": request_id, **self.headers}
        return Response(
            self.anthropic_body(request_id),
            status_code=self.anthropic_status(),
            media_type="application/json",
            headers=headers,
        )


BUSY = "capacity_busy"
OVERLOADED = 529  # Anthropic's status for "overloaded"
# The admission's refusal (`app.GatewayApp._serve`): this key or address has its share in flight.
TOO_MANY_IN_FLIGHT = "too_many_in_flight"
# The connection guard's plain-text 429 (`guard`): this address has its share of connections open.
TOO_MANY_CONNECTIONS = "Too many connections from this address."
# The refusals the gateway answers before it reads a request's key and body (its load shed,
# 429 `capacity_busy` — Anthropic's 529 `overloaded_error` — and the admission's 429
# `too_many_in_flight`, Anthropic's 429 `rate_limit_error` without a code): they cannot name
# a voucher's lane and took nothing (`buyerside.signer.refused_unread` reads them so).
UNREAD = frozenset({BUSY, TOO_MANY_IN_FLIGHT})
# The mark such a refusal carries, and only such a refusal: the gateway sets it where it
# refuses before any voucher of the request was read (the app's load shed and admission,
# the connection guard, `Gateway.serve`'s shed and `price`'s all-lots-busy, both before the
# voucher's check). The same codes answered after a hold — `capacity_busy` when every lot
# answered 429 (`service._all_failed`), its lane left unnamed — never carry it: its voucher
# was stored at the hold, and a signer taking it for unread signed the next voucher at or
# below it (409 voucher_used: signing stopped, an honest gateway). The signer believes a
# refusal unread only with the mark (`buyerside.signer.unread`).
UNREAD_HEADER = "x-promptex-unread"
UNREAD_MARK = {UNREAD_HEADER: "1"}
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    OVERLOADED: "overloaded_error",
}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def internal() -> GatewayError:
    return GatewayError(500, "Internal error.", type="server_error")


def invalid_key() -> GatewayError:
    return GatewayError(401, "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key")


def unknown_model(model: str) -> GatewayError:
    return GatewayError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


def insufficient_balance(message: str) -> GatewayError:
    return GatewayError(
        402, message, type="insufficient_quota", code="insufficient_quota", headers={"x-should-retry": "false"}
    )


def busy(message: str = "All capacity for this model is busy; retry shortly.", *, unread: bool = False) -> GatewayError:
    """429 `capacity_busy`; `unread`: refused before any voucher of the request was read
    (`UNREAD_HEADER`), never for one refused after its hold."""
    return GatewayError(429, message, type="rate_limit_error", code=BUSY, headers=dict(UNREAD_MARK) if unread else None)


def rate_limited(message: str, retry_after: int) -> GatewayError:
    """A limit set on the key, its org member or its org (`gateway.limits`)."""
    return GatewayError(
        429, message, type="rate_limit_error", code="rate_limit_exceeded", headers={"retry-after": str(retry_after)}
    )


def no_capacity(model: str, asset: str) -> GatewayError:
    return GatewayError(
        503, f"No capacity serves `{model}` paid in {asset} right now.", type="server_error", code="no_capacity"
    )


def above_max_rate(model: str, asset: str, most: int, cheapest: int) -> GatewayError:
    """No lot that may serve the request charges at most what it pays (`charges.MAX_RATE`)."""
    return GatewayError(
        503,
        f"No lot serves `{model}` paid in {asset} at or below the {percent(most)} of list price this request "
        f"pays at most ({MAX_RATE}); the cheapest open lot asks {percent(cheapest)}.",
        type="server_error",
        code="no_lot_within_max_rate",
        param=MAX_RATE,
    )


def percent(bps: int) -> str:
    """Basis points as a person reads them: 9000 → "90 %", 8750 → "87.5 %"."""
    return f"{bps / 100:g} %"


def price_unavailable(symbol: str, own: str) -> GatewayError:
    return GatewayError(
        503,
        f"No fresh Oracle price for {symbol} right now, so this request cannot be priced in it; "
        f"retry shortly, or pay in {own} or USDC.",
        type="server_error",
        code="price_unavailable",
        param=ASSET,
    )


# Signed mode paying in another provider's token (a Claude model paid in GPT) is not built
# (session 18): the gateway converts at its fresh TWAP, `/v1/models` prints the converted
# prices rounded at 12 decimals per million tokens, and the signing side checks a charge to
# the unit, so most TWAPs stopped signing at the first answer, and any move between two reads
# of `/v1/models` did too. Checking it needs the TWAP stated with each charge and a bound on
# how far it may move (not built): refused before any hold instead, by the gateway and, when
# it knows the model's provider, by the signing side itself (the same code and message).
SIGNED_CROSS_TOKEN = "signed_cross_token_not_built"


def signed_cross_token_message(model: str, paying: str, own: str) -> str:
    return (
        f"`{model}` paid in {paying}, another provider's token, is not built in signed mode (the price moves with "
        f"{paying}'s TWAP and a voucher's charge cannot be checked to the unit): sign in {own} or USDC, "
        f"or pay in {paying} in capped mode (a spend cap, no session key in {paying})."
    )


def signed_cross_token(model: str, paying: str, own: str) -> GatewayError:
    """`SIGNED_CROSS_TOKEN`: a signed request whose payment would be converted across tokens."""
    return GatewayError(400, signed_cross_token_message(model, paying, own), code=SIGNED_CROSS_TOKEN, param=ASSET)


def hold_ended(signed: dict[str, Any] | None = None) -> GatewayError:
    """The request's hold was ended under it (`HoldOrphaned`): nothing served or charged. A
    signed request's refusal names its lane, the lane's total (the one before it: the hold
    was given back uncharged) and its voucher (accepted, the lane's highest), so a buyer's
    side keeps the lane exact instead of weighing the request as an answer without figures."""
    error = GatewayError(
        503,
        "This gateway process lost its ledger session while the request ran, and its hold was ended: "
        "the answer is not served and nothing is charged; retry.",
        type="server_error",
        code="hold_ended",
    )
    error.extra = dict(signed or {})
    return error


def ledger_unavailable(step: str = "hold") -> GatewayError:
    """The ledger's database did not take this request's hold, or its charge (`step`
    "settle": unreachable within its connect timeout, or failing): nothing was served or
    charged, and a hold left behind is released by the ledger's sweep once it answers."""
    what = "hold this request's funds" if step == "hold" else "charge this request's answer"
    return GatewayError(
        503,
        f"The gateway could not reach its ledger to {what}: it was not served and nothing is charged; retry shortly.",
        type="server_error",
        code="ledger_unavailable",
    )


def deadline_passed(seconds: float) -> GatewayError:
    return GatewayError(
        504,
        f"The request was not answered within its deadline of {seconds:g} seconds.",
        type="server_error",
        code="request_deadline",
    )


def upstream_failed(timeout: bool) -> GatewayError:
    if timeout:
        return GatewayError(504, "The upstream provider timed out.", type="server_error", code="upstream_timeout")
    return GatewayError(502, "The upstream provider failed.", type="server_error", code="upstream_error")
