"""Enterprise: the desk of an org, for the org's own key.

GET  /api/org          (Bearer key of an org itself) the enterprise desk: vault, members, keys
                       (prefixes), budgets, usage by member
POST /api/org/members  (the same key) {name?, budget_asset?, budget?} → a member key (shown once)
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from promptex.dashboard import enterprise
from promptex.dashboard.api import ApiError, guarded, read_body
from promptex.dashboard.context import Context
from promptex.ledger import LedgerError


def routes(ctx: Context) -> list[BaseRoute]:
    async def org(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        return await ctx.run(enterprise.desk_view, ctx.ledger, ctx.store, key)

    async def org_member(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        body = await read_body(request)
        try:
            return await ctx.run(enterprise.new_member, ctx.ledger, ctx.store, key, body, ctx.clock())
        except (ValueError, LedgerError) as exc:
            raise ApiError(400, f"no member was added: {exc}") from None

    return [
        Route("/api/org", guarded(org), methods=["GET"]),
        Route("/api/org/members", guarded(org_member), methods=["POST"]),
    ]
