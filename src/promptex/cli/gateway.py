"""`promptex gateway serve`: the OpenAI-compatible /v1 gateway on uvicorn."""

from __future__ import annotations

import click

from promptex.cli.market import rpc_url_option
from promptex.config import ConfigurationError, settings


@click.group()
def gateway() -> None:
    """The OpenAI-compatible /v1 gateway."""


@gateway.command("serve")
@click.option("--host", help="[default: PROMPTEX_GATEWAY_HOST]")
@click.option("--port", type=int, help="[default: PROMPTEX_GATEWAY_PORT]")
@rpc_url_option
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="processes sharing the listening socket (more than one needs a PostgreSQL ledger)",
)  # fmt: skip
def gateway_serve(host: str | None, port: int | None, workers: int) -> None:
    """Serve /v1 on uvicorn (uvloop, httptools)."""
    import uvicorn

    from promptex.chain.identity import check_chain
    from promptex.gateway import create_app, logs, single
    from promptex.gateway.service import check_hold_lifetime, end_dead_workers
    from promptex.gateway.workers import run_workers
    from promptex.ledger import Ledger
    from promptex.serving import listening_sockets

    s = settings()
    if workers > 1 and single.sqlite_file(s.ledger_url) is not None:
        raise click.ClickException(
            "--workers needs a PostgreSQL ledger (PROMPTEX_LEDGER_URL=postgresql://…): "
            "SQLite takes one gateway process per file"
        )
    try:
        check_hold_lifetime(s)
        claimed = single.claim(s.ledger_url)  # first: a second gateway on one SQLite file stops here
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        with Ledger.from_settings(s) as ledger:
            try:  # the chain its lots are opened on (none yet: an off-chain gateway, e.g. in tests)
                check_chain(
                    ledger, service="the gateway", rpc_url=s.optional_rpc_url("attestor"), network=s.attestor_network,
                    require_chain=False,
                )  # fmt: skip
            except ConfigurationError as exc:
                raise click.ClickException(str(exc)) from None
        host, port = host or s.gateway_host, port or s.gateway_port
        try:
            sockets = listening_sockets(host, port, s.gateway_accept_per_iteration)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        logs.configure(s.gateway_log_format)  # JSON lines with request ids, uvicorn's too

        def serve(index: int) -> None:
            mine = s
            if index and s.gateway_metrics_port:  # each worker its own operator address
                mine = s.model_copy(update={"gateway_metrics_port": s.gateway_metrics_port + index})
            app = create_app(mine, listeners=sockets)
            options = app.uvicorn_options()  # header timeout, connections per address, trusted proxies
            config = uvicorn.Config(app, loop="uvloop", log_config=None, access_log=False, **options)
            uvicorn.Server(config).run(sockets=sockets)

        if workers == 1:
            serve(0)
        else:
            # A reaped worker's holds end at once (not at a replacement's first sweep, which
            # never comes when the command is stopping or gave up restarting it).
            code = run_workers(workers, serve, lambda pids: end_dead_workers(s, pids))
            if code:
                raise SystemExit(code)
    finally:
        single.release(claimed)
