"""The bench's floor: the gateway's HTTP server and upstream client with nothing between.

    python bench/forwarder.py --port 8001 --upstream http://127.0.0.1:8000/v1

uvicorn as `promptex gateway serve` configures it (uvloop, the guarded httptools
protocol) and the gateway's own keep-alive upstream client, posting each chat body to
`--upstream` unchanged and returning the answer: no key, no price, no ledger, no
metering. `bench/gateway.py --floor` measures it like the gateway (idle added latency,
CPU and added latency at the fixed rate), so the gateway's figures read against what the
same generator, fake upstream, server and client cost without it.
"""

from __future__ import annotations

from typing import Any

import click
import uvicorn

from promptex.config import Settings
from promptex.gateway.guard import ConnectionGuard, uvicorn_options
from promptex.gateway.upstream import UpstreamClient

MODELS = b'{"object":"list","data":[]}'


def forwarder(upstream: str) -> Any:
    client = UpstreamClient(connect_timeout=10, timeout=60, max_idle_per_origin=4096)
    url = upstream.rstrip("/") + "/chat/completions"
    headers = {"authorization": "Bearer sk-fake-bench", "content-type": "application/json"}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await client.__aenter__()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await client.__aexit__(None, None, None)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["method"] != "POST":  # the bench's readiness probe (GET /v1/models)
            head = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send({"type": "http.response.body", "body": MODELS})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        answer = await client.post(url, headers, b"".join(chunks))
        body = await answer.read()
        length = str(len(body)).encode()
        await send({
            "type": "http.response.start", "status": answer.status_code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", length)],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    return app


@click.command()
@click.option("--port", type=int, required=True)
@click.option("--upstream", required=True, help="the fake upstream's /v1 URL")
def main(port: int, upstream: str) -> None:
    settings = Settings()
    guard = ConnectionGuard(100_000, settings.gateway_header_timeout_seconds)  # one client address: the bench's
    options = uvicorn_options(settings, guard)
    app = forwarder(upstream)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", log_config=None, access_log=False, **options)


if __name__ == "__main__":
    main()
