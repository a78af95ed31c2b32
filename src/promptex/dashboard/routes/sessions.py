"""Signed mode's session keys from the browser (issue 23).

POST /api/session-keys  (Bearer key) a SessionKey signed by a wallet bound to the key's
                        account: checked and queued with the coordinator's relay
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from promptex.dashboard import sessions
from promptex.dashboard.api import ApiError, guarded, read_body
from promptex.dashboard.context import Context


def routes(ctx: Context) -> list[BaseRoute]:
    async def session_key(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        body = await read_body(request)
        deployment = await ctx.run(ctx.market.deployment)
        try:
            asked = sessions.parse(body, ["USDC", *deployment.token_symbols()])
        except sessions.SessionRefused as exc:
            raise ApiError(400, str(exc)) from None
        wallet = await ctx.run(ctx.wallet_of, key, asked.account)  # 403 unless bound to this key's account
        try:
            queued = await ctx.run(sessions.queue, ctx.ledger.engine, deployment, asked, ctx.clock())
        except sessions.SessionRefused as exc:
            raise ApiError(400, str(exc)) from None
        return {"queued": queued, "account": wallet, "asset": asked.asset, "nonce": asked.nonce}

    return [Route("/api/session-keys", guarded(session_key), methods=["POST"])]
