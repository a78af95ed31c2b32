"""Usage: a key's metered requests and their Merkle proofs.

GET  /api/usage        (Bearer key) its usage records, newest first, with epoch and tx
GET  /api/usage-totals (Bearer key) what it spent per model and per day (UTC), per asset
GET  /api/usage.csv    (Bearer key) every record as CSV, oldest first
GET  /api/usage/{id}   (Bearer key) one record;  …/{id}/proof  its Merkle proof
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from promptex.dashboard import views
from promptex.dashboard.api import guarded
from promptex.dashboard.context import Context


def routes(ctx: Context) -> list[BaseRoute]:
    engine = ctx.ledger.engine

    async def usage(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        return await ctx.run(views.usage_view, engine, key)

    async def totals(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        return await ctx.run(views.usage_totals_view, engine, key)

    async def usage_csv(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        text = await ctx.run(views.usage_csv, engine, key)
        disposition = f'attachment; filename="promptex-usage-{key.account}.csv"'
        return Response(text, media_type="text/csv", headers={"content-disposition": disposition})

    async def usage_record(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        return await ctx.run(views.usage_record_view, engine, key, request.path_params["request_id"])

    async def proof(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        return await ctx.run(views.proof_view, engine, key, request.path_params["request_id"])

    return [
        Route("/api/usage", guarded(usage), methods=["GET"]),
        Route("/api/usage-totals", guarded(totals), methods=["GET"]),
        Route("/api/usage.csv", guarded(usage_csv), methods=["GET"]),
        Route("/api/usage/{request_id}", guarded(usage_record), methods=["GET"]),
        Route("/api/usage/{request_id}/proof", guarded(proof), methods=["GET"]),
    ]
