"""The dashboard's two pass-throughs: the gateway's /v1 on the dashboard's own origin (so the
browser needs no CORS and streams arrive as they are produced), and a read-only JSON-RPC
endpoint (so the node's URL, which may carry a provider's key, never reaches the browser,
and nothing but reads goes through it: transactions are signed and sent by the wallet)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

READ_METHODS = frozenset(
    {
        "eth_blockNumber",
        "eth_call",
        "eth_chainId",
        "eth_estimateGas",
        "eth_feeHistory",
        "eth_gasPrice",
        "eth_getBalance",
        "eth_getBlockByHash",
        "eth_getBlockByNumber",
        "eth_getCode",
        "eth_getLogs",
        "eth_getTransactionByHash",
        "eth_getTransactionCount",
        "eth_getTransactionReceipt",
        "eth_maxPriorityFeePerGas",
        "net_version",
    }
)
MAX_RPC_BATCH = 50
MAX_RPC_BODY = 256 * 1024
# Signed mode (issue 23): the playground's voucher goes up, with the most a lot may charge it
# (its hold is priced at that rate); the lane it was charged on, and the lot's rate, come back,
# and in a session's last stretch the deadline it was served under (cut to fit its close).
REQUEST_HEADERS = (
    "authorization", "content-type", "accept", "x-promptex-asset", "x-promptex-voucher", "x-promptex-max-rate-bps",
)  # fmt: skip
RESPONSE_HEADERS = (
    "content-type", "x-request-id", "x-promptex-lot", "retry-after", "cache-control",
    "x-promptex-lane", "x-promptex-lane-charged-units", "x-promptex-voucher", "x-promptex-lot-rate-bps",
    "x-promptex-deadline-seconds", "x-promptex-unread",
    # the cost on every answer (gateway.charges): a signer behind this pass-through checks each
    # plain answer's cost-units and stopped at the first without it (review3 s18)
    "x-promptex-asset", "x-promptex-cost", "x-promptex-cost-units", "x-promptex-cost-usd", "x-promptex-hold",
    "x-promptex-hold-units", "x-promptex-hold-usd", "x-promptex-epoch", "x-promptex-chain-lot",
)  # fmt: skip


def _rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class RpcProxy:
    def __init__(self, client: httpx.AsyncClient, rpc_url: str) -> None:
        self.client = client
        self.rpc_url = rpc_url

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_RPC_BODY:
            return JSONResponse(_rpc_error(None, -32600, "request too large"), status_code=413)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return JSONResponse(_rpc_error(None, -32700, "parse error"), status_code=400)
        calls = payload if isinstance(payload, list) else [payload]
        if not calls or len(calls) > MAX_RPC_BATCH or not all(isinstance(c, dict) for c in calls):
            return JSONResponse(_rpc_error(None, -32600, "invalid request"), status_code=400)
        refused = [c for c in calls if c.get("method") not in READ_METHODS]
        if refused:
            method = refused[0].get("method")
            message = f"{method!r} is not served here: this endpoint only reads; your wallet sends transactions"
            errors = [_rpc_error(c.get("id"), -32601, message) for c in calls]
            return JSONResponse(errors if isinstance(payload, list) else errors[0])
        try:
            answer = await self.client.post(self.rpc_url, content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError:
            return JSONResponse(_rpc_error(None, -32603, "the chain's node does not answer"), status_code=502)
        return Response(answer.content, status_code=answer.status_code, media_type="application/json")


class GatewayProxy:
    def __init__(self, client: httpx.AsyncClient, gateway_url: str, max_body: int, wait: float | None = None) -> None:
        """`wait`: how long the gateway may go silent (None: the client's read timeout). The
        gateway waits for a plain answer up to its request deadline (`Gateway.upstream_wait`):
        given up here before it, the answer would be served and charged, and lost."""
        self.client = client
        self.gateway_url = gateway_url.rstrip("/")
        self.max_body = max_body
        self.timeout = None if wait is None else httpx.Timeout(wait, connect=client.timeout.connect)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > self.max_body:
            return _openai_error(413, "Request body too large.", "request_too_large")
        url = self.gateway_url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        headers = {name: request.headers[name] for name in REQUEST_HEADERS if name in request.headers}
        upstream = self.client.build_request(
            request.method, url, headers=headers, content=body, timeout=self.timeout or self.client.timeout
        )
        try:
            answer = await self.client.send(upstream, stream=True)
        except httpx.HTTPError:
            return _openai_error(502, f"The gateway at {self.gateway_url} does not answer.", "gateway_unavailable")
        kept = {name: answer.headers[name] for name in RESPONSE_HEADERS if name in answer.headers}
        return StreamingResponse(
            answer.aiter_bytes(), status_code=answer.status_code, headers=kept, background=BackgroundTask(answer.aclose)
        )


def _openai_error(status: int, message: str, code: str) -> Response:
    body = {"error": {"message": message, "type": "api_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status)
