"""Redemption: a wallet's linked AI accounts, auto-topup rules and redemption history,
for the key whose account the wallet is bound to (billing credentials never leave).

    GET  /api/redemption   (Bearer key, ?wallet=) the key's wallet's linked accounts with live
                           balances, auto-topup rules and redemption history; the agent's address
    POST /api/redemption/rules  (Bearer key) {wallet, provider, token, below_usd, add_usd, max_tokens}
    POST /api/redemption/rules/{id}  (Bearer key) {wallet?, enabled} switches one of the wallet's rules
    POST /api/redemption/accounts  (Bearer key) {wallet?, provider, account_id, credential} links the
                           wallet's account at a provider (credential checked, sealed, never echoed)
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from promptex.dashboard.api import ApiError, guarded, read_body
from promptex.dashboard.context import Context
from promptex.dashboard.redemption import (
    BadInput,
    add_rule,
    agent_address,
    link_billing_account,
    master_keys,
    set_rule_enabled,
)


def routes(ctx: Context) -> list[BaseRoute]:
    s, engine = ctx.settings, ctx.ledger.engine

    async def redemption(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        wallet = await ctx.run(ctx.wallet_of, key, request.query_params.get("wallet"))
        view = await ctx.run(ctx.redemptions.view, wallet)
        return {**view, "agent": agent_address(s)}

    async def redemption_rule(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        body = await read_body(request)
        wallet = await ctx.run(ctx.wallet_of, key, body.get("wallet"))
        deployment = await ctx.run(ctx.market.deployment)
        try:
            return await ctx.run(add_rule, engine, wallet, body, deployment.token_symbols(), ctx.clock())
        except (BadInput, ValueError) as exc:
            raise ApiError(400, str(exc)) from None

    async def redemption_rule_switch(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        body = await read_body(request)
        wallet = await ctx.run(ctx.wallet_of, key, body.get("wallet"))
        try:
            return await ctx.run(set_rule_enabled, engine, wallet, request.path_params["rule_id"], body)
        except BadInput as exc:
            raise ApiError(400, str(exc)) from None
        except LookupError as exc:
            raise ApiError(404, str(exc)) from None

    async def redemption_account(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        body = await read_body(request)
        wallet = await ctx.run(ctx.wallet_of, key, body.get("wallet"))
        try:
            keys = master_keys(s)
            return await ctx.run(
                link_billing_account, engine, keys, ctx.billing, wallet, body, s.agent_billing_url, ctx.clock()
            )
        except BadInput as exc:
            raise ApiError(400, f"the account was not linked: {exc}") from None
        except PermissionError as exc:
            raise ApiError(503, str(exc)) from None

    return [
        Route("/api/redemption", guarded(redemption), methods=["GET"]),
        Route("/api/redemption/rules", guarded(redemption_rule), methods=["POST"]),
        Route("/api/redemption/rules/{rule_id:int}", guarded(redemption_rule_switch), methods=["POST"]),
        Route("/api/redemption/accounts", guarded(redemption_account), methods=["POST"]),
    ]
