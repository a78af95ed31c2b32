"""What the dashboard's origin serves besides its JSON API: a 404 for unknown /api paths,
the read-only JSON-RPC proxy, the gateway's /v1 (streaming), and the built front end.

    POST /rpc              read-only JSON-RPC to the node (the wallet sends transactions)
    *    /v1/…             the gateway, proxied (streaming)
    /                      the built front end (dashboard/dist), index.html for any page
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from promptex.dashboard.context import Context
from promptex.dashboard.proxy import GatewayProxy, RpcProxy

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>PROMPTEX dashboard</title>
<h1>The dashboard is not built</h1>
<p>Build it once: <code>make setup</code>, then reload.</p>"""


async def api_unknown(_request: Request) -> Response:
    return JSONResponse({"error": "no such endpoint"}, status_code=404)


async def not_built(_request: Request) -> Response:
    return HTMLResponse(NOT_BUILT, status_code=503)


def routes(ctx: Context) -> list[BaseRoute]:
    """After every /api route: the catch-all answers only what none of them matched."""
    wait = ctx.settings.gateway_client_wait_seconds()
    gateway_proxy = GatewayProxy(ctx.client, ctx.options.gateway_url, ctx.settings.gateway_max_body_bytes, wait)
    found: list[BaseRoute] = [
        Route("/api/{rest:path}", api_unknown),
        Route("/rpc", RpcProxy(ctx.client, ctx.options.rpc_url).handle, methods=["POST"]),
        Route("/v1/{rest:path}", gateway_proxy.handle, methods=["GET", "POST"]),
    ]
    dist = ctx.options.dist
    if (dist / "index.html").exists():
        found.append(Mount("/", StaticFiles(directory=dist, html=True)))
    else:
        found.append(Route("/{rest:path}", not_built))
    return found
