"""The dashboard's ASGI app: `create_app(settings)` assembles the routes of each area
(`dashboard/routes/`: market, keys, portfolio, exits (forwarded to the coordinator's door),
usage, redemption, enterprise, sellers, sessions, then the RPC and gateway proxies and the
front end) over one shared `Context`.

Everything under /api is read-only except the key endpoints, which issue a key only to
the holder of the wallet that signed (the same EIP-712 binding as `promptex buyer bind`),
and writes that act only for what that key owns: a rule (added or switched) or a linked
AI account for a wallet bound to the key's account, a member key for the org the key is,
a lot whose seller is a wallet bound to the key's account, a SessionKey that wallet signed
(queued for the coordinator's relay). Billing credentials and API keys
other than a new member's (shown once to its org's owner) never leave the server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from promptex import metering
from promptex.agent.billing import HttpBilling
from promptex.config import Settings
from promptex.dashboard.context import Context
from promptex.dashboard.market import Market
from promptex.dashboard.options import DashboardOptions
from promptex.dashboard.redemption import RedemptionReader, master_keys
from promptex.dashboard.routes import (
    enterprise,
    exits,
    keys,
    market,
    passthrough,
    portfolio,
    redemption,
    sellers,
    sessions,
    usage,
)
from promptex.dashboard.sellers import Onboarding
from promptex.gateway.store import GatewayStore
from promptex.ledger import Ledger
from promptex.sellers import SellerStore
from promptex.throttle import Throttle

AREAS = (
    market,
    keys,
    portfolio,
    exits,
    usage,
    redemption,
    enterprise,
    sellers,
    sessions,
    passthrough,
)  # passthrough last


def create_app(
    s: Settings,
    options: DashboardOptions | None = None,
    *,
    ledger: Ledger | None = None,
    clock: Callable[[], int] = lambda: int(time.time()),
    chain_clock: Callable[[], int] | None = None,
) -> Starlette:
    """The dashboard app over the settings' ledger, chain and gateway (see DashboardOptions).
    `chain_clock`: the chain's time [default: read from the node, as the coordinator's door does]."""
    opts = options or DashboardOptions.from_settings(s)
    owned = ledger is None
    ledger_ = ledger if ledger is not None else Ledger.from_settings(s)
    store = GatewayStore(ledger_.engine)
    market_ = Market(opts.rpc_url, opts.network, opts.deployments_dir)
    billing = HttpBilling(timeout=min(s.agent_billing_timeout_seconds, 5.0))
    attestor_key = s.attestor_private_key.get_secret_value() if s.attestor_private_key else None
    ctx = Context(
        settings=s,
        options=opts,
        ledger=ledger_,
        store=store,
        market=market_,
        client=httpx.AsyncClient(timeout=httpx.Timeout(s.gateway_upstream_timeout_seconds, connect=5.0)),
        billing=billing,
        new_accounts=Throttle(opts.new_accounts_per_hour, 3600.0),
        redemptions=RedemptionReader(ledger_.engine, billing, lambda: master_keys(s)),
        onboarding=Onboarding(
            SellerStore(ledger_.engine),
            lambda: master_keys(s),
            metering.load_catalog(s.model_catalog),
            opts.rpc_url,
            attestor_key,
            posting_margin=s.seller_posting_margin_seconds,
            tx_timeout=s.seller_tx_timeout_seconds,
        ),
        clock=clock,
        chain_clock=chain_clock or market_.now,
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await ctx.client.aclose()
            ctx.billing.close()
            if owned:
                ctx.ledger.close()

    routes: list[BaseRoute] = [route for area in AREAS for route in area.routes(ctx)]
    return Starlette(routes=routes, lifespan=lifespan)
