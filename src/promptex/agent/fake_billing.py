"""A fake provider billing API for offline use and tests (Starlette).

It keeps a USD balance per account and sells credits idempotently: the first
`POST /v1/accounts/{id}/credits` with an `Idempotency-Key` adds the credits and signs
an EIP-712 Receipt with its own key (the billing signer registered in the escrow for
its provider); a repeat of the key returns the same receipt and adds nothing.

    GET  /v1/accounts/{id}/balance   → {"account": id, "usd_micro": n}
    POST /v1/accounts/{id}/credits   {usd_micro, redemption_id, sale, provider, account_salt}

The account reference it signs is keccak256(salt ‖ id), computed here from the id in
the URL, so a receipt can only name the account the credits went to; the redemption id
and the sale (bytes32, `promptex.protocol.redemption.sale_id`) are signed as asked, and a
key asked again for another id, sale or amount is refused (409). Errors are
injected by configuration: a failure status or a delay (a client timeout) for the next
N requests, failing AFTER applying a purchase (a lost answer), or a forged signature.
The configuration lives in `app.state.config`; each request reads it once, on arrival,
so swapping in a new one never lets a slow earlier request act on it.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from promptex.protocol.redemption import account_ref, provider_id, sign_receipt


@dataclass
class FakeBillingConfig:
    signer_key: str  # hex private key of the billing signer
    chain_id: int
    escrow: str  # the RedemptionEscrow (EIP-712 verifying contract)
    provider: str = "anthropic"
    credentials: dict[str, str] | None = None  # account id → accepted bearer credential (None: any)
    balances: dict[str, int] = field(default_factory=dict)  # account id → USD micro-units
    fail_status: int | None = None  # answer this status…
    fail_times: int = 0  # …for the next N requests
    fail_after_apply: int = 0  # the next N purchases are applied, then answered 503
    delay_seconds: float = 0.0  # wait this long before answering…
    delay_times: int = 0  # …the next N requests
    forge: bool = False  # sign receipts with a key that is not the billing signer
    purchases: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotency key → receipt
    requests: int = 0


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_fake_billing(config: FakeBillingConfig) -> Starlette:
    forged_key = "0x" + secrets.token_hex(32)

    async def gate(request: Request, config: FakeBillingConfig) -> tuple[str, Response | None]:
        config.requests += 1
        if config.delay_times > 0:
            config.delay_times -= 1
            await asyncio.sleep(config.delay_seconds)
        if config.fail_times > 0 and config.fail_status is not None:
            config.fail_times -= 1
            return "", _json({"error": "injected failure"}, config.fail_status)
        account = request.path_params["account"]
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        allowed = None if config.credentials is None else config.credentials.get(account)
        if not token or (config.credentials is not None and token != allowed):
            return account, _json({"error": "invalid billing credential"}, 401)
        return account, None

    async def balance(request: Request) -> Response:
        config: FakeBillingConfig = request.app.state.config
        account, refused = await gate(request, config)
        if refused is not None:
            return refused
        return _json({"account": account, "usd_micro": config.balances.get(account, 0)})

    async def credits(request: Request) -> Response:
        config: FakeBillingConfig = request.app.state.config
        account, refused = await gate(request, config)
        if refused is not None:
            return refused
        key = request.headers.get("idempotency-key", "")
        if not key:
            return _json({"error": "an Idempotency-Key header is required"}, 400)
        try:
            body = orjson.loads(await request.body())
            usd_micro, redemption_id = int(body["usd_micro"]), int(body["redemption_id"])
            sale = bytes.fromhex(str(body["sale"]).removeprefix("0x"))
            if len(sale) != 32:
                raise ValueError("a sale is 32 bytes")
            salt = bytes.fromhex(str(body.get("account_salt", "0x")).removeprefix("0x"))
            if provider_id(str(body.get("provider", config.provider))) != provider_id(config.provider):
                return _json({"error": f"this billing API sells {config.provider} credits"}, 400)
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
            return _json({"error": "malformed purchase"}, 400)
        if usd_micro <= 0:
            return _json({"error": "usd_micro must be positive"}, 400)
        receipt = config.purchases.get(key)
        if receipt is None:
            billing_ref = secrets.token_bytes(32)
            fields = {
                "redemption_id": redemption_id,
                "sale": sale,
                "provider": provider_id(config.provider),
                "account_ref": account_ref(account, salt),
                "usd_micro": usd_micro,
                "billing_ref": billing_ref,
            }
            signature = sign_receipt(
                forged_key if config.forge else config.signer_key, chain_id=config.chain_id, escrow=config.escrow,
                **fields,
            )  # fmt: skip
            receipt = {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()}
            receipt["signature"] = "0x" + signature.hex()
            receipt["account"] = account
            config.purchases[key] = receipt
            config.balances[account] = config.balances.get(account, 0) + usd_micro
            if config.fail_after_apply > 0:
                config.fail_after_apply -= 1
                return _json({"error": "injected failure after the purchase"}, 503)
        elif (
            receipt["redemption_id"] != redemption_id
            or receipt["sale"] != "0x" + sale.hex()
            or receipt["usd_micro"] != usd_micro
        ):
            return _json({"error": "idempotency key reused for a different purchase"}, 409)
        return _json(receipt)

    app = Starlette(
        routes=[
            Route("/v1/accounts/{account}/balance", balance, methods=["GET"]),
            Route("/v1/accounts/{account}/credits", credits, methods=["POST"]),
        ]
    )
    app.state.config = config
    return app
