"""Instant exits from the browser (issue 21): forwarded to the coordinator's door, the one
place that checks a wallet's ExitRequest and co-signs a release (no second code path here).

POST /api/exits         an ExitRequest signed by the wallet → the door's answer, as it is
GET  /api/exits/nonce   ?account=0x… → the nonce the wallet's next request carries

No API key: the wallet's signature is the credential, checked by the door.
"""

from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from promptex.dashboard.api import json_response
from promptex.dashboard.context import Context

NO_DOOR = "no coordinator door is known to this dashboard: start the market with `promptex up`"


def routes(ctx: Context) -> list[BaseRoute]:
    async def forward(request: Request, method: str, path: str) -> Response:
        door = ctx.settings.coordinator_door_url
        if not door:
            return json_response({"error": {"code": "no_door", "message": NO_DOOR}}, 503)
        try:
            answer = await ctx.client.request(
                method, f"{door.rstrip('/')}{path}", params=request.query_params, content=await request.body(),
                headers={"content-type": "application/json"}, timeout=30.0,
            )  # fmt: skip
        except httpx.HTTPError:
            message = "the coordinator's door does not answer: try again shortly"
            return json_response({"error": {"code": "unavailable", "message": message}}, 502)
        headers = {"retry-after": answer.headers["retry-after"]} if "retry-after" in answer.headers else None
        return Response(answer.content, answer.status_code, headers=headers, media_type="application/json")

    async def exits(request: Request) -> Response:
        return await forward(request, "POST", "/v1/exits")

    async def nonce(request: Request) -> Response:
        return await forward(request, "GET", "/v1/exits/nonce")

    return [
        Route("/api/exits", exits, methods=["POST"]),
        Route("/api/exits/nonce", nonce, methods=["GET"]),
    ]
