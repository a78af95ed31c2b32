"""`promptex up`: the whole local market in one command (the orchestration is `promptex.up`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("up")
@click.option("--rpc-url", help="use this node instead of starting a local anvil")
@click.option("--chain-port", default=8545, show_default=True, type=int, help="port of the anvil it starts")
@click.option("--gateway-host", default="127.0.0.1", show_default=True)
@click.option("--gateway-port", default=8080, show_default=True, type=int)
@click.option("--upstream-port", default=9000, show_default=True, type=int, help="the fake upstreams' port")
@click.option("--billing-port", default=9100, show_default=True, type=int, help="the fake billing API's port")
@click.option("--dashboard-port", default=8090, show_default=True, type=int, help="the web dashboard's port")
@click.option(
    "--door-port",
    default=8086,
    show_default=True,
    type=int,
    help="the coordinator's door (exits, sessions)",
)
@click.option("--no-seed", is_flag=True, help="do not open the seed pools")
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="the market's folder: the chain is kept there across restarts [default: PROMPTEX_UP_STATE_DIR, "
    "promptex-market]",
)
@click.option(
    "--fresh", is_flag=True, help="archive the market's folder, ledger and deployment record, and start a new one"
)
def up_command(
    rpc_url: str | None,
    chain_port: int,
    gateway_host: str,
    gateway_port: int,
    upstream_port: int,
    billing_port: int,
    dashboard_port: int,
    door_port: int,
    no_seed: bool,
    state_dir: Path | None,
    fresh: bool,
) -> None:
    """Start the local market: anvil, deploy, seed, indexer, coordinator, fake upstreams, the
    gateway, a fake billing API, the redemption agent and the web dashboard (Ctrl-C stops it)."""
    from promptex.config import market_dir
    from promptex.up import UpOptions, up

    options = UpOptions(
        rpc_url, chain_port, gateway_host, gateway_port, upstream_port, seed=not no_seed, billing_port=billing_port,
        dashboard_port=dashboard_port, state_dir=state_dir or market_dir(), fresh=fresh, door_port=door_port,
    )  # fmt: skip
    raise SystemExit(up(options))
