"""Keys: the wallet-signed way to obtain an API key (the same EIP-712 binding as
`promptex buyer bind`); a key is issued only to the holder of the wallet that signed.

    POST /api/keys/challenge   {wallet} → the EIP-712 BindWallet message to sign
    POST /api/keys/bind        {binding, signature} → a new API key for the wallet's account (shown once)
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from promptex.dashboard.api import ApiError, guarded, read_body
from promptex.dashboard.context import Context
from promptex.gateway.buyers import bind_wallet, issue_key, keyless
from promptex.ledger import BindingMessage, LedgerError
from promptex.ledger.binding import checksum_address


def routes(ctx: Context) -> list[BaseRoute]:
    ledger, s = ctx.ledger, ctx.settings

    def _challenge(wallet: str, client: str) -> dict[str, Any]:
        def admit_new() -> None:
            if not ctx.new_accounts.allow(client):
                raise ApiError(429, "too many new accounts from your address: try again in an hour")

        # The account of the wallet's last challenge, only if nobody holds a key of it: not one
        # `promptex buyer signup --wallet` made (its key is its runner's), whoever typed the address.
        message = ledger.challenge_wallet(wallet, admit_new=admit_new, pending=keyless)
        return {"binding": message.__dict__, "typed_data": message.typed_data()}

    async def challenge(request: Request) -> Any:
        wallet = (await read_body(request)).get("wallet")
        if not isinstance(wallet, str):
            raise ApiError(400, "give the wallet address to bind")
        client = request.client.host if request.client else "unknown"
        try:
            return await ctx.run(_challenge, checksum_address(wallet), client)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    def _bind(binding: dict[str, Any], signature: str) -> dict[str, Any]:
        message = BindingMessage(**binding)
        account = bind_wallet(
            ledger,
            message,
            signature,
            welcome_asset=s.welcome_credit_asset,
            welcome_amount=s.welcome_credit_amount,
            treasury=s.welcome_credit_treasury,
        )
        new = issue_key(ctx.store, account, ctx.clock())
        return {"key": new.key, "account": account, "prefix": new.record.prefix, "wallet": message.wallet}

    async def bind(request: Request) -> Any:
        data = await read_body(request)
        binding, signature = data.get("binding"), data.get("signature")
        if not isinstance(binding, dict) or not isinstance(signature, str):
            raise ApiError(400, "give the binding message and the wallet's signature")
        try:
            return await ctx.run(_bind, binding, signature)
        except LedgerError as exc:
            raise ApiError(400, f"the wallet could not be bound: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"malformed binding message: {exc}") from None

    return [
        Route("/api/keys/challenge", guarded(challenge), methods=["POST"]),
        Route("/api/keys/bind", guarded(bind), methods=["POST"]),
    ]
