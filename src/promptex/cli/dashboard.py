"""`promptex dashboard`: serve the web dashboard."""

from __future__ import annotations

import click

from promptex.cli.market import rpc_url_option


@click.command("dashboard")
@click.option("--host", default=None, help="[default: PROMPTEX_DASHBOARD_HOST, 127.0.0.1]")
@click.option("--port", default=None, type=int, help="[default: PROMPTEX_DASHBOARD_PORT, 8090]")
@rpc_url_option
def dashboard(host: str | None, port: int | None) -> None:
    """Serve the web dashboard (`make setup` builds it first)."""
    import uvicorn

    from promptex.chain.identity import check_chain
    from promptex.config import ConfigurationError, settings
    from promptex.dashboard import DashboardOptions, create_app
    from promptex.ledger import Ledger

    s = settings()
    host, port = host or s.dashboard_host, port or s.dashboard_port
    try:
        options = DashboardOptions.from_settings(s)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    with Ledger.from_settings(s) as ledger:
        try:
            check_chain(
                ledger, service="the dashboard", rpc_url=options.rpc_url, network=options.network, require_chain=False
            )
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
    if not (options.dist / "index.html").exists():
        click.echo(f"warning: no built front end in {options.dist}: run `make setup`")
    click.echo(f"dashboard on http://{host}:{port} (chain {options.rpc_url}, gateway {options.gateway_url})")
    uvicorn.run(create_app(s, options), host=host, port=port, log_level="warning", access_log=False)
