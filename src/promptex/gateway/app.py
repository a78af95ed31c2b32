"""The ASGI application: `create_app(settings)`, served by uvicorn.

The metered POST routes (chat completions, completions, embeddings, Anthropic's
`/v1/messages`, `/v1/responses`) go straight from the ASGI entry to the gateway; the rest
(`/v1/models`, the OpenAPI schema, unknown paths, other methods) through Starlette.
Why: at load, Starlette's router and middleware stack (each wrapping `send`) cost more
CPU per request than everything the gateway itself does outside the ledger. Past
saturation the entry answers 429 before the body is read, from bytes built once.

Every response carries `x-request-id`; every error has OpenAI's body, but on
`/v1/messages`, where it has Anthropic's (`gateway.fronts`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import orjson
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptex import metering
from promptex.config import Settings
from promptex.gateway import checkpoints, errors, fronts, logs, metrics, single
from promptex.gateway.adapters import CHAT, COMPLETIONS, EMBEDDINGS
from promptex.gateway.errors import GatewayError
from promptex.gateway.fronts import API_ROUTES
from promptex.gateway.guard import ConnectionGuard, uvicorn_options
from promptex.gateway.keys import hash_key
from promptex.gateway.messages import MESSAGES
from promptex.gateway.openapi import openapi_schema
from promptex.gateway.routing import LotRegistry
from promptex.gateway.service import MODEL_SCOPE, Gateway, check_hold_lifetime, new_request_id, presented_key
from promptex.gateway.store import GatewayStore
from promptex.gateway.twap import TwapSource, twap_cache_from_settings
from promptex.gateway.upstream import UpstreamClient
from promptex.ledger import Ledger
from promptex.sealing.envelope import load_master_keys
from promptex.serving import accept_backlog

log = logging.getLogger("promptex.gateway")


class RequestIdMiddleware:
    """Gives each request an id (scope state) and makes sure its response carries it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        raw = request_id.encode()

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", raw))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, stamped)


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or new_request_id())


HOT_ROUTES = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    **API_ROUTES,  # /v1/messages (Anthropic's API), /v1/responses
}
_SHED = errors.busy("The gateway is at capacity; retry shortly.", unread=True)
_UNREAD = (errors.UNREAD_HEADER.encode(), b"1")


def _shed(body: bytes, status: int) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, body, [*headers, (b"retry-after", b"1"), _UNREAD]


_SHED_OPENAI = _shed(_SHED.body(), 429)
_TOO_MANY = GatewayError(
    429,
    "Too many requests in flight for this API key or client address; retry when some have finished.",
    type="rate_limit_error",
    code=errors.TOO_MANY_IN_FLIGHT,
    headers={"retry-after": "1", "connection": "close", **errors.UNREAD_MARK},  # its body is never read
)


class GatewayApp:
    """The ASGI entry (see the module's docstring); `state` is the Starlette app's."""

    def __init__(self, inner: Starlette, gateway: Callable[[], Gateway], settings: Settings) -> None:
        self.inner = inner
        self.state = inner.state
        self._gateway = gateway
        self.settings = settings
        self.guard = ConnectionGuard(
            settings.gateway_max_connections_per_address,
            settings.gateway_header_timeout_seconds,
            settings.gateway_trusted_proxies,
        )
        self.access_log = settings.gateway_access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = HOT_ROUTES.get(scope["path"])
            if endpoint is not None:
                await self._serve(endpoint, scope, receive, send)
                return
        await self.inner(scope, receive, send)

    async def _serve(self, endpoint: str, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        gateway = self._gateway()
        if gateway.overloaded or gateway.inflight >= gateway.s.gateway_max_inflight:
            if endpoint == MESSAGES:  # Anthropic's 529 overloaded_error (names its request id)
                status, body, headers = _shed(_SHED.anthropic_body(request_id), _SHED.anthropic_status())
            else:
                status, body, headers = _SHED_OPENAI
            ids = [(name.encode(), value.encode()) for name, value in fronts.id_headers(endpoint, request_id).items()]
            await send({"type": "http.response.start", "status": status, "headers": [*headers, *ids]})
            await send({"type": "http.response.body", "body": body})
            gateway.shed += 1
            gateway.metrics.answered(None, status)
            return
        started = time.perf_counter()
        token = logs.bind(request_id)
        request = Request(scope, receive)
        presented = presented_key(request, endpoint)
        client = scope.get("client")
        address = client[0] if client else ""
        digest = hash_key(presented) if presented else ""
        entry = gateway.admission.enter(digest, address)
        status = 429
        try:
            if entry is None:  # this key or address has its share in flight: before its body is read
                await fronts.error_response(endpoint, _TOO_MANY, request_id)(scope, receive, send)
                return
            response: Any
            try:
                response = await gateway.serve(endpoint, request, request_id, digest)
            except GatewayError as exc:
                response = fronts.error_response(endpoint, exc, request_id)
            except Exception as exc:
                log.error("internal error: %s", type(exc).__name__, exc_info=exc)
                response = fronts.error_response(endpoint, errors.internal(), request_id)
            status = getattr(response, "status_code", 200)  # a stream: 200
            await response(scope, receive, send)
        finally:
            if entry is not None:
                gateway.admission.leave(entry)
            model = scope.get(MODEL_SCOPE)
            gateway.metrics.answered(model, status)
            if self.access_log:
                logs.access(endpoint, status, model, started, address)
            logs.unbind(token)

    def uvicorn_options(self) -> dict[str, Any]:
        """The uvicorn.Config options this app is served with (`gateway.guard`)."""
        return uvicorn_options(self.settings, self.guard)


def create_app(
    settings: Settings,
    *,
    ledger: Ledger | None = None,
    clock: Any = None,
    twap_source: TwapSource | None = None,
    listeners: Sequence[socket.socket] = (),
) -> GatewayApp:
    """The gateway app. It opens the ledger (unless one is given), its own tables, the
    lots and one pooled HTTP client for every upstream when it starts, and keeps the
    Oracle's TWAPs fresh in the background (from `twap_source`, else the deployed Oracle
    when `gateway_twap_rpc_url` is set). `listeners`: the sockets uvicorn accepts on, if
    the caller made them; their accept queue is one of the signs of overload. Every
    running gateway sweeps expired holds and extends its own in flight (`keep_holds`).
    Raises ConfigurationError for settings that cannot hold money safely; at startup,
    for a SQLite ledger another gateway process serves already (`gateway.single`)."""
    check_hold_lifetime(settings)
    state: dict[str, Gateway] = {}
    # Duplicates share one accept queue: reading it from the first socket is enough.
    backlog = (lambda: accept_backlog(listeners[0])) if listeners else None

    guard_ref: list[ConnectionGuard] = []  # the entry's, once made (below)

    def gateway() -> Gateway:
        return state["gateway"]

    def ready() -> str | None:
        """None when this process serves /v1; else why not (blocking: reads the ledger)."""
        current = state.get("gateway")
        if current is None:
            return "starting"
        if current.overloaded:
            return "shedding load"
        try:
            with current.ledger.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return f"ledger unreachable: {type(exc).__name__}"
        return None

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        book = ledger or Ledger.from_settings(settings)
        try:
            claimed = single.claim(book.engine.url.render_as_string(hide_password=False))
        except BaseException:
            if ledger is None:
                book.close()
            raise
        checkpointing = settings.gateway_sqlite_checkpoint_seconds > 0 and checkpoints.take_over(book.engine)
        store = GatewayStore(book.engine)
        secret = settings.gateway_master_key.get_secret_value() if settings.gateway_master_key else None
        keys = load_master_keys(secret, settings.gateway_master_key_file)
        registry = LotRegistry(store, keys, clock or (lambda: int(time.time())), book.lot_capacities, book.lot_states)
        await anyio.to_thread.run_sync(registry.refresh)
        async with UpstreamClient(
            connect_timeout=settings.gateway_upstream_connect_timeout_seconds,
            timeout=settings.gateway_upstream_timeout_seconds,
        ) as client:
            twaps = twap_cache_from_settings(settings, twap_source)
            state["gateway"] = _app.state.gateway = Gateway(
                settings, book, store, registry, metering.load_catalog(settings.model_catalog), client, twaps
            )
            # Alone on an SQLite ledger: every active hold is a dead process's. Ended once the
            # Gateway registered its extras (its limits counter): a dead hold may have taken them;
            # then the lots are read again.
            if single.serve(claimed):
                try:
                    ended = await anyio.to_thread.run_sync(book.expire_orphans)
                except BaseException:
                    state["gateway"].close()
                    single.unserve(claimed)
                    single.release(claimed)
                    if ledger is None:
                        book.close()
                    raise
                if ended:
                    log.warning("ended %d holds a stopped gateway process left (nothing charged)", ended)
                    await anyio.to_thread.run_sync(registry.refresh)  # their lots' capacity is back

            await anyio.to_thread.run_sync(_app.state.gateway.treasury)
            await anyio.to_thread.run_sync(_app.state.gateway.refresh_epochs)
            measured = state["gateway"].metrics
            measured.watch(lambda: state.get("gateway"), guard_ref[0] if guard_ref else None)
            operator = None
            if settings.gateway_metrics_port:
                app = metrics.operator_app(measured, ready)
                operator = metrics.serve_operator(settings.gateway_metrics_host, settings.gateway_metrics_port, app)

            async def refresh_lots() -> None:
                while True:
                    await anyio.sleep(settings.gateway_lot_refresh_seconds)
                    try:
                        await anyio.to_thread.run_sync(registry.refresh)
                        await anyio.to_thread.run_sync(state["gateway"].refresh_epochs)
                        await anyio.to_thread.run_sync(state["gateway"].health.flush, book.engine)
                    except Exception:  # a database hiccup: keep serving the lots we know
                        log.exception("refreshing lots failed")

            async with anyio.create_task_group() as tg:
                tg.start_soon(refresh_lots)
                tg.start_soon(_app.state.gateway.keep_holds)
                tg.start_soon(_app.state.gateway.watch_load, backlog)
                if twaps is not None:
                    tg.start_soon(twaps.run)
                if checkpointing:
                    tg.start_soon(checkpoints.checkpoints, book.engine, settings.gateway_sqlite_checkpoint_seconds)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
            if operator is not None:
                operator.shutdown()
                operator.server_close()
            with contextlib.suppress(Exception):  # the last counts, if the database still answers
                await anyio.to_thread.run_sync(state["gateway"].health.flush, book.engine)
            # Its requests are done: its leases' idle room back to the lots now, not when the
            # leases expire (a hold's lifetime on) and some other gateway happens to trim them.
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(book.holds.maintain)
            state["gateway"].close()
            if checkpointing:
                await anyio.to_thread.run_sync(checkpoints.checkpoint, book.engine)
        single.unserve(claimed)
        single.release(claimed)
        if ledger is None:
            book.close()

    def endpoint(name: str) -> Any:
        async def handle(request: Request) -> Any:
            request_id = _request_id(request)
            try:
                return await gateway().serve(name, request, request_id)
            except GatewayError as exc:
                return fronts.error_response(name, exc, request_id)

        return handle

    async def models(request: Request) -> Response:
        request_id = _request_id(request)
        try:
            await gateway().authenticate(request)
        except GatewayError as exc:
            return exc.response(request_id)
        return Response(gateway().models(), media_type="application/json", headers={"x-request-id": request_id})

    async def lanes(request: Request) -> Response:
        request_id = _request_id(request)
        try:
            content = await gateway().lanes(request)
        except GatewayError as exc:
            return exc.response(request_id)
        return Response(content, media_type="application/json", headers={"x-request-id": request_id})

    async def healthz(request: Request) -> Response:
        return Response(b"ok\n", media_type="text/plain")

    async def readyz(request: Request) -> Response:
        why = await anyio.to_thread.run_sync(ready)
        return Response(
            ((why or "ready") + "\n").encode(), status_code=200 if why is None else 503, media_type="text/plain"
        )

    async def schema(request: Request) -> Response:
        return Response(orjson.dumps(openapi_schema()), media_type="application/json")

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = exc.detail if isinstance(exc, HTTPException) else "Internal error."
        kind = "invalid_request_error" if status < 500 else "server_error"
        error = GatewayError(status, str(message), type=kind)
        return fronts.error_response(fronts.api_of(request.url.path), error, _request_id(request))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error in request %s: %s", _request_id(request), type(exc).__name__)
        return fronts.error_response(fronts.api_of(request.url.path), errors.internal(), _request_id(request))

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", endpoint(CHAT), methods=["POST"]),
            Route("/v1/completions", endpoint(COMPLETIONS), methods=["POST"]),
            Route("/v1/embeddings", endpoint(EMBEDDINGS), methods=["POST"]),
            *(Route(path, endpoint(name), methods=["POST"]) for path, name in API_ROUTES.items()),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/promptex/lanes", lanes, methods=["GET"]),
            Route("/openapi.json", schema, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.add_middleware(RequestIdMiddleware)
    entry = GatewayApp(app, gateway, settings)
    guard_ref.append(entry.guard)
    return entry
