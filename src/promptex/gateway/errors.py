"""Errors the gateway answers with, in OpenAI's body and status codes.

    {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}

A message never contains an upstream secret: upstream bodies are not echoed.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response


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

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )

    def response(self, request_id: str) -> Response:
        headers = {"x-request-id": request_id, **self.headers}
        return Response(self.body(), status_code=self.status, media_type="application/json", headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def invalid_key() -> GatewayError:
    return GatewayError(401, "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key")


def unknown_model(model: str) -> GatewayError:
    return GatewayError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


def insufficient_balance(message: str) -> GatewayError:
    return GatewayError(
        402, message, type="insufficient_quota", code="insufficient_quota", headers={"x-should-retry": "false"}
    )


def busy(message: str = "All capacity for this model is busy; retry shortly.") -> GatewayError:
    return GatewayError(429, message, type="rate_limit_error", code="capacity_busy")


def no_capacity(model: str, asset: str) -> GatewayError:
    return GatewayError(
        503, f"No capacity serves `{model}` paid in {asset} right now.", type="server_error", code="no_capacity"
    )


def price_unavailable(symbol: str, own: str) -> GatewayError:
    return GatewayError(
        503,
        f"No fresh Oracle price for {symbol} right now, so this request cannot be priced in it; "
        f"retry shortly, or pay in {own} or USDC.",
        type="server_error",
        code="price_unavailable",
        param="x-promptex-asset",
    )


def upstream_failed(timeout: bool) -> GatewayError:
    if timeout:
        return GatewayError(504, "The upstream provider timed out.", type="server_error", code="upstream_timeout")
    return GatewayError(502, "The upstream provider failed.", type="server_error", code="upstream_error")
