"""`promptex gateway serve`: the OpenAI-compatible /v1 gateway on uvicorn."""

from __future__ import annotations

import click

from promptex.config import settings


@click.group()
def gateway() -> None:
    """The OpenAI-compatible /v1 gateway."""


@gateway.command("serve")
@click.option("--host", help="[default: PROMPTEX_GATEWAY_HOST]")
@click.option("--port", type=int, help="[default: PROMPTEX_GATEWAY_PORT]")
def gateway_serve(host: str | None, port: int | None) -> None:
    """Serve /v1 on uvicorn (uvloop, httptools)."""
    import uvicorn

    from promptex.gateway import create_app
    from promptex.serving import listening_sockets

    s = settings()
    host, port = host or s.gateway_host, port or s.gateway_port
    try:
        sockets = listening_sockets(host, port, s.gateway_accept_per_iteration)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    config = uvicorn.Config(
        create_app(s, listeners=sockets), loop="uvloop", http="httptools", log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=sockets)
