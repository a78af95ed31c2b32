"""Sellers: onboard capacity from the browser, for a wallet bound to the key's account.

POST /api/seller/capacity  (Bearer key) {wallet?, provider, base_url, api_key, face_value_usd_micro,
                       kind, rate_bps, expires_at, bond, declare_resale_permitted} → the lot, opened
                       on chain by the dashboard's attestor (see `dashboard.sellers`); the key is never echoed
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from promptex.chain.attest import LotRefused
from promptex.dashboard.api import ApiError, guarded, read_body
from promptex.dashboard.context import Context
from promptex.dashboard.sellers import BadCapacity, LotNotRecorded, capacity_from
from promptex.gateway.sellers import CapacityRefused


def routes(ctx: Context) -> list[BaseRoute]:
    async def seller_capacity(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        body = await read_body(request)
        seller = await ctx.run(ctx.wallet_of, key, body.get("wallet"))
        deployment = await ctx.run(ctx.market.deployment)
        try:
            capacity = capacity_from(body, seller, ctx.settings.dashboard_seller_base_urls)
            return await ctx.run(ctx.onboarding.add, deployment, capacity, ctx.clock())
        except (BadCapacity, CapacityRefused, LotRefused) as exc:
            raise ApiError(400, f"no lot was opened: {exc}") from None
        except PermissionError as exc:
            raise ApiError(503, str(exc)) from None
        except ConnectionError as exc:
            raise ApiError(502, str(exc)) from None
        except LotNotRecorded as exc:
            raise ApiError(500, str(exc)) from None

    return [Route("/api/seller/capacity", guarded(seller_capacity), methods=["POST"])]
