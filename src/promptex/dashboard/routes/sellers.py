"""Sellers: onboard capacity from the browser, for a wallet bound to the key's account.

POST /api/seller/capacity  (Bearer key) {wallet?, provider, base_url, api_key, face_value_usd_micro,
                       kind, rate_bps, expires_at, bond, declare_resale_permitted} → the lot, opened
                       on chain by the dashboard's attestor on the one tokenize/list path
                       (`promptex.sellers`); the key is never echoed
GET  /api/seller/health    (Bearer key) the upstream health the gateways recorded for the lots of the
                       wallets bound to the key's account (`gateway.health`): calls, errors, latency,
                       the last error, an open circuit, a refused key
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from promptex.dashboard.api import ApiError, guarded, read_body
from promptex.dashboard.context import Context
from promptex.dashboard.sellers import BadCapacity, capacity_from
from promptex.gateway import health
from promptex.gateway.store import ApiKey
from promptex.sellers import CapacityRefused, LotNotOpened, LotPending


def routes(ctx: Context) -> list[BaseRoute]:
    async def seller_capacity(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        body = await read_body(request)
        seller = await ctx.run(ctx.wallet_of, key, body.get("wallet"))
        deployment = await ctx.run(ctx.market.deployment)
        try:
            capacity = capacity_from(body, seller, ctx.settings.dashboard_seller_base_urls)
            return await ctx.run(ctx.onboarding.add, deployment, capacity)
        except (BadCapacity, CapacityRefused) as exc:
            raise ApiError(400, f"no lot was opened: {exc}") from None
        except PermissionError as exc:
            raise ApiError(503, str(exc)) from None
        except ConnectionError as exc:
            raise ApiError(502, str(exc)) from None
        except LotNotOpened as exc:
            raise ApiError(502, str(exc)) from None
        except LotPending as exc:
            raise ApiError(504, str(exc)) from None

    def health_of(key: ApiKey) -> list[dict[str, Any]]:
        wallets = {wallet.lower() for wallet in ctx.ledger.wallets(key.account)}
        lots = [lot for lot in ctx.store.lots() if lot.seller.lower() in wallets]
        found = {r.lot_id: r for r in health.reports(ctx.ledger.engine, [lot.id for lot in lots])}
        now = ctx.clock()
        views = []
        for lot in lots:
            r = found.get(lot.id)
            views.append(
                {
                    "lot": lot.id,
                    "chain_lot_id": lot.chain_lot_id,
                    "provider": lot.provider,
                    "requests": r.requests if r else 0,
                    "errors": r.errors if r else 0,
                    "error_rate": r.error_rate if r else 0.0,
                    "mean_latency_ms": r.mean_latency_ms if r else None,
                    "last_error": r.last_error if r else None,
                    "last_error_at": r.last_error_at if r else None,
                    "key_refused_at": r.key_refused_at if r else None,
                    "circuit_open": bool(r and r.circuit_open_until and r.circuit_open_until > now),
                }
            )
        return views

    async def seller_health(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        return await ctx.run(health_of, key)

    return [
        Route("/api/seller/capacity", guarded(seller_capacity), methods=["POST"]),
        Route("/api/seller/health", guarded(seller_health), methods=["GET"]),
    ]
