"""The dashboard's ASGI app: `create_app(settings)`.

    /                      the built front end (dashboard/dist), index.html for any page
    GET  /api/config       chain id, contract addresses, assets (no secrets: the node's URL stays here)
    GET  /api/pools        every pool: reserves, spot price, Oracle TWAPs and a TWAP history
    GET  /api/epochs       settlement batches with their transactions and usage roots
    POST /api/keys/challenge   {wallet} → the EIP-712 BindWallet message to sign
    POST /api/keys/bind        {binding, signature} → a new API key for the wallet's account (shown once)
    GET  /api/account      (Bearer key) the key's account: wallets and ledger balances
    GET  /api/usage        (Bearer key) its usage records, newest first, with epoch and tx
    GET  /api/usage/{id}   (Bearer key) one record;  …/{id}/proof  its Merkle proof
    GET  /api/redemption   (Bearer key, ?wallet=) the key's wallet's linked accounts with live
                           balances, auto-topup rules and redemption history; the agent's address
    POST /api/redemption/rules  (Bearer key) {wallet, provider, token, below_usd, add_usd, max_tokens}
    POST /api/redemption/rules/{id}  (Bearer key) {wallet?, enabled} switches one of the wallet's rules
    POST /api/redemption/accounts  (Bearer key) {wallet?, provider, account_id, credential} links the
                           wallet's account at a provider (credential checked, sealed, never echoed)
    GET  /api/org          (Bearer key of an org itself) the enterprise desk: vault, members, keys
                           (prefixes), budgets, usage by member
    POST /api/org/members  (the same key) {name?, budget_asset?, budget?} → a member key (shown once)
    POST /api/seller/capacity  (Bearer key) {wallet?, provider, base_url, api_key, face_value_usd_micro,
                           kind, rate_bps, expires_at, bond, declare_resale_permitted} → the lot, opened
                           on chain by the dashboard's attestor (see sellers.py); the key is never echoed
    POST /rpc              read-only JSON-RPC to the node (the wallet sends transactions)
    *    /v1/…             the gateway, proxied (streaming)

Everything under /api is read-only except the key endpoints, which issue a key only to
the holder of the wallet that signed (the same EIP-712 binding as `promptex buyer bind`),
and writes that act only for what that key owns: a rule (added or switched) or a linked
AI account for a wallet bound to the key's account, a member key for the org the key is,
a lot whose seller is a wallet bound to the key's account. Billing credentials and API keys
other than a new member's (shown once to its org's owner) never leave the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from promptex import metering
from promptex.agent.billing import HttpBilling
from promptex.chain.attest import LotRefused
from promptex.config import Settings
from promptex.dashboard import enterprise, views
from promptex.dashboard.market import Market, public_config
from promptex.dashboard.options import DashboardOptions
from promptex.dashboard.proxy import GatewayProxy, RpcProxy
from promptex.dashboard.redemption import (
    BadInput,
    RedemptionReader,
    add_rule,
    agent_address,
    link_billing_account,
    master_keys,
    set_rule_enabled,
)
from promptex.dashboard.sellers import BadCapacity, LotNotRecorded, Onboarding, capacity_from
from promptex.dashboard.throttle import Throttle
from promptex.gateway.buyers import bind_wallet, issue_key
from promptex.gateway.keys import bearer, hash_key
from promptex.gateway.sellers import CapacityRefused
from promptex.gateway.store import ApiKey, GatewayStore
from promptex.ledger import AccountKind, BindingMessage, Ledger, LedgerError
from promptex.ledger.binding import checksum_address

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>PROMPTEX dashboard</title>
<h1>The dashboard is not built</h1>
<p>Build it once: <code>make setup</code>, then reload.</p>"""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def create_app(
    s: Settings,
    options: DashboardOptions | None = None,
    *,
    ledger: Ledger | None = None,
    clock: Callable[[], int] = lambda: int(time.time()),
) -> Starlette:
    """The dashboard app over the settings' ledger, chain and gateway (see DashboardOptions)."""
    opts = options or DashboardOptions.from_settings(s)
    owned = ledger is None
    ledger_ = ledger if ledger is not None else Ledger.from_settings(s)
    store = GatewayStore(ledger_.engine)
    market = Market(opts.rpc_url, opts.network, opts.deployments_dir)
    client = httpx.AsyncClient(timeout=httpx.Timeout(s.gateway_upstream_timeout_seconds, connect=5.0))
    billing = HttpBilling(timeout=min(s.agent_billing_timeout_seconds, 5.0))
    new_accounts = Throttle(opts.new_accounts_per_hour, 3600.0)
    redemptions = RedemptionReader(ledger_.engine, billing, lambda: master_keys(s))
    attestor_key = s.attestor_private_key.get_secret_value() if s.attestor_private_key else None
    onboarding = Onboarding(
        store, lambda: master_keys(s), metering.load_catalog(s.model_catalog), opts.rpc_url, attestor_key
    )

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def key_of(request: Request) -> ApiKey:
        key = bearer(request.headers.get("authorization"))
        if key is None:
            raise ApiError(401, "paste an API key, or get one by signing with your wallet")
        record = store.api_key(hash_key(key))
        if record is None:
            raise ApiError(401, "this API key is not valid (revoked or mistyped)")
        return record

    def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                return _json(await handler(request))
            except ApiError as exc:
                return _json({"error": exc.message}, exc.status)
            except views.NotFound as exc:
                return _json({"error": str(exc)}, 404)
            except views.NoProof as exc:
                return _json({"error": str(exc)}, 409)
            except enterprise.NotOwner as exc:
                return _json({"error": str(exc)}, 403)
            except FileNotFoundError as exc:
                return _json({"error": f"no deployment: {exc}"}, 503)
            except httpx.HTTPError:
                return _json({"error": "the chain's node does not answer"}, 502)

        return endpoint

    async def config(_request: Request) -> Any:
        deployment = await run(market.deployment)
        return {**public_config(deployment), "rpc": "/rpc", "gateway": "/v1"}

    async def pools(_request: Request) -> Any:
        try:
            return await run(market.pools)
        except (OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ApiError(502, f"cannot read the pools from the chain: {exc}") from None

    async def epochs(_request: Request) -> Any:
        return await run(views.epochs_view, ledger_.engine)

    def _challenge(wallet: str, client: str) -> dict[str, Any]:
        account = ledger_.account_of(wallet)
        if account is None:
            account = ledger_.challenged_account(wallet)
        if account is None:
            if not new_accounts.allow(client):
                raise ApiError(429, "too many new accounts from your address: try again in an hour")
            account = ledger_.create_account(AccountKind.USER).id
        message = ledger_.issue_binding_challenge(account, wallet)
        return {"binding": message.__dict__, "typed_data": message.typed_data()}

    async def challenge(request: Request) -> Any:
        wallet = (await _body(request)).get("wallet")
        if not isinstance(wallet, str):
            raise ApiError(400, "give the wallet address to bind")
        client = request.client.host if request.client else "unknown"
        try:
            return await run(_challenge, checksum_address(wallet), client)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    def _bind(binding: dict[str, Any], signature: str) -> dict[str, Any]:
        message = BindingMessage(**binding)
        account = bind_wallet(
            ledger_,
            message,
            signature,
            welcome_asset=s.welcome_credit_asset,
            welcome_amount=s.welcome_credit_amount,
            treasury=s.welcome_credit_treasury,
        )
        new = issue_key(store, account, clock())
        return {"key": new.key, "account": account, "prefix": new.record.prefix, "wallet": message.wallet}

    async def bind(request: Request) -> Any:
        data = await _body(request)
        binding, signature = data.get("binding"), data.get("signature")
        if not isinstance(binding, dict) or not isinstance(signature, str):
            raise ApiError(400, "give the binding message and the wallet's signature")
        try:
            return await run(_bind, binding, signature)
        except LedgerError as exc:
            raise ApiError(400, f"the wallet could not be bound: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"malformed binding message: {exc}") from None

    async def account(request: Request) -> Any:
        key = await run(key_of, request)
        return await run(views.account_view, ledger_, key)

    async def usage(request: Request) -> Any:
        key = await run(key_of, request)
        return await run(views.usage_view, ledger_.engine, key)

    async def usage_record(request: Request) -> Any:
        key = await run(key_of, request)
        return await run(views.usage_record_view, ledger_.engine, key, request.path_params["request_id"])

    async def proof(request: Request) -> Any:
        key = await run(key_of, request)
        return await run(views.proof_view, ledger_.engine, key, request.path_params["request_id"])

    def wallet_of(key: ApiKey, asked: str | None) -> str:
        """The wallet the key acts for: one bound to its own account (`asked` picks among several)."""
        wallets = ledger_.wallets(key.account)
        if not wallets:
            raise ApiError(403, "this key's account has no wallet bound: get a key by signing with your wallet")
        if asked is None:
            return wallets[0]
        try:
            wallet = checksum_address(asked)
        except ValueError:
            raise ApiError(400, f"{asked!r} is not a wallet address") from None
        if wallet not in wallets:
            raise ApiError(403, f"{wallet} is not bound to this key's account: you can only see and change your own")
        return wallet

    async def redemption(request: Request) -> Any:
        key = await run(key_of, request)
        wallet = await run(wallet_of, key, request.query_params.get("wallet"))
        view = await run(redemptions.view, wallet)
        return {**view, "agent": agent_address(s)}

    async def redemption_rule(request: Request) -> Any:
        key = await run(key_of, request)
        body = await _body(request)
        wallet = await run(wallet_of, key, body.get("wallet"))
        deployment = await run(market.deployment)
        try:
            return await run(add_rule, ledger_.engine, wallet, body, deployment.token_symbols(), clock())
        except (BadInput, ValueError) as exc:
            raise ApiError(400, str(exc)) from None

    async def redemption_rule_switch(request: Request) -> Any:
        key = await run(key_of, request)
        body = await _body(request)
        wallet = await run(wallet_of, key, body.get("wallet"))
        try:
            return await run(set_rule_enabled, ledger_.engine, wallet, request.path_params["rule_id"], body)
        except BadInput as exc:
            raise ApiError(400, str(exc)) from None
        except LookupError as exc:
            raise ApiError(404, str(exc)) from None

    async def redemption_account(request: Request) -> Any:
        key = await run(key_of, request)
        body = await _body(request)
        wallet = await run(wallet_of, key, body.get("wallet"))
        try:
            keys = master_keys(s)
            return await run(
                link_billing_account, ledger_.engine, keys, billing, wallet, body, s.agent_billing_url, clock()
            )
        except BadInput as exc:
            raise ApiError(400, f"the account was not linked: {exc}") from None
        except PermissionError as exc:
            raise ApiError(503, str(exc)) from None

    async def org(request: Request) -> Any:
        key = await run(key_of, request)
        return await run(enterprise.desk_view, ledger_, store, key)

    async def org_member(request: Request) -> Any:
        key = await run(key_of, request)
        body = await _body(request)
        try:
            return await run(enterprise.new_member, ledger_, store, key, body, clock())
        except (ValueError, LedgerError) as exc:
            raise ApiError(400, f"no member was added: {exc}") from None

    async def seller_capacity(request: Request) -> Any:
        key = await run(key_of, request)
        body = await _body(request)
        seller = await run(wallet_of, key, body.get("wallet"))
        deployment = await run(market.deployment)
        try:
            return await run(
                onboarding.add, deployment, capacity_from(body, seller, s.dashboard_seller_base_urls), clock()
            )
        except (BadCapacity, CapacityRefused, LotRefused) as exc:
            raise ApiError(400, f"no lot was opened: {exc}") from None
        except PermissionError as exc:
            raise ApiError(503, str(exc)) from None
        except ConnectionError as exc:
            raise ApiError(502, str(exc)) from None
        except LotNotRecorded as exc:
            raise ApiError(500, str(exc)) from None

    async def not_built(_request: Request) -> Response:
        return HTMLResponse(NOT_BUILT, status_code=503)

    async def api_unknown(_request: Request) -> Response:
        return JSONResponse({"error": "no such endpoint"}, status_code=404)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()
            billing.close()
            if owned:
                ledger_.close()

    gateway_proxy = GatewayProxy(client, opts.gateway_url, s.gateway_max_body_bytes)
    get = partial(Route, methods=["GET"])
    post = partial(Route, methods=["POST"])
    routes: list[BaseRoute] = [
        get("/api/config", guarded(config)),
        get("/api/pools", guarded(pools)),
        get("/api/epochs", guarded(epochs)),
        post("/api/keys/challenge", guarded(challenge)),
        post("/api/keys/bind", guarded(bind)),
        get("/api/account", guarded(account)),
        get("/api/usage", guarded(usage)),
        get("/api/usage/{request_id}", guarded(usage_record)),
        get("/api/usage/{request_id}/proof", guarded(proof)),
        get("/api/redemption", guarded(redemption)),
        post("/api/redemption/rules", guarded(redemption_rule)),
        post("/api/redemption/rules/{rule_id:int}", guarded(redemption_rule_switch)),
        post("/api/redemption/accounts", guarded(redemption_account)),
        get("/api/org", guarded(org)),
        post("/api/org/members", guarded(org_member)),
        post("/api/seller/capacity", guarded(seller_capacity)),
        Route("/api/{rest:path}", api_unknown),
        post("/rpc", RpcProxy(client, opts.rpc_url).handle),
        Route("/v1/{rest:path}", gateway_proxy.handle, methods=["GET", "POST"]),
    ]
    if (opts.dist / "index.html").exists():
        routes.append(Mount("/", StaticFiles(directory=opts.dist, html=True)))
    else:
        routes.append(Route("/{rest:path}", not_built))
    return Starlette(routes=routes, lifespan=lifespan)
