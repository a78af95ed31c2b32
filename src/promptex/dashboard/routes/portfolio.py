"""Portfolio: what a key's account holds.

GET  /api/account      (Bearer key) the key's account: wallets and ledger balances
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from promptex.dashboard import views
from promptex.dashboard.api import guarded
from promptex.dashboard.context import Context


def routes(ctx: Context) -> list[BaseRoute]:
    async def account(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        return await ctx.run(views.account_view, ctx.ledger, key)

    return [Route("/api/account", guarded(account), methods=["GET"])]
