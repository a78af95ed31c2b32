"""Market: the deployment's public config, the pools with their TWAPs, settlement epochs.

GET  /api/config       chain id, contract addresses, assets (no secrets: the node's URL stays here)
GET  /api/pools        every pool: reserves, spot price, Oracle TWAPs and a TWAP history
GET  /api/epochs       settlement batches with their transactions and usage roots
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from promptex.dashboard import views
from promptex.dashboard.api import ApiError, guarded
from promptex.dashboard.context import Context
from promptex.dashboard.market import public_config


def routes(ctx: Context) -> list[BaseRoute]:
    async def config(_request: Request) -> Any:
        deployment = await ctx.run(ctx.market.deployment)
        return {**public_config(deployment), "rpc": "/rpc", "gateway": "/v1"}

    async def pools(_request: Request) -> Any:
        try:
            return await ctx.run(ctx.market.pools)
        except (OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ApiError(502, f"cannot read the pools from the chain: {exc}") from None

    async def epochs(_request: Request) -> Any:
        return await ctx.run(views.epochs_view, ctx.ledger.engine)

    return [
        Route("/api/config", guarded(config), methods=["GET"]),
        Route("/api/pools", guarded(pools), methods=["GET"]),
        Route("/api/epochs", guarded(epochs), methods=["GET"]),
    ]
