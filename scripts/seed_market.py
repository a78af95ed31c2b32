"""Seed the demo market: `ape run seed_market --network ethereum:local:foundry`.

Against the deployment recorded in deployments/<network>.json (run `ape run deploy`
first), opens the CLD/USDC, GPT/USDC, GEM/USDC and LLM/USDC 0.30 % pools at the
reference prices, `--depth` dollars a side, and takes each pool's first oracle
observation (the work is in `promptex.chain.seed`). Local chains only: the market
maker's tokens come from tokenized escrow lots it opens as the attestor, and its dollars
from the MockUSDC faucet. A pool that already
has liquidity is left alone, so running it twice is harmless.
"""

import click
from ape.cli import ConnectedProviderCommand
from rich.console import Console
from rich.table import Table

from promptex.chain.accounts import resolve_account
from promptex.chain.deploy import is_local, live_deployment
from promptex.chain.seed import seed_pools
from promptex.cli.errors import readable_errors
from promptex.protocol.providers import REFERENCE_PRICES
from promptex.protocol.units import TOKEN_UNIT, USD_MICRO

console = Console(width=130)


@click.command(cls=ConnectedProviderCommand)
@click.option("--depth", default=25_000, show_default=True, help="USD on each side of every pool")
@click.option("--account", "alias", default=None, help="market maker (default: test account 0, the deployer)")
def cli(network, depth, alias):
    with readable_errors():
        seed_market(network.name, depth, alias)


def seed_market(network_name: str, depth_usd: int, alias: str | None) -> None:
    if not is_local(network_name):
        raise ValueError("seed_market opens escrow lots and mints MockUSDC: local chains only")
    if depth_usd <= 0:
        raise ValueError("--depth must be positive")
    deployment = live_deployment(network_name)
    if deployment is None:
        raise ValueError(
            f"no live deployment recorded for {network_name!r} on this chain: "
            f"run `ape run deploy --network ethereum:local:foundry` first"
        )
    seeded = seed_pools(deployment, resolve_account(alias), depth_usd)
    table = Table(title=f"Pools at the reference prices (0.30 %, ${depth_usd:,} a side)")
    for column in ("pool", "address", "token reserve", "USDC reserve", "price", "reference"):
        table.add_column(column, justify="right" if column != "address" else "left")
    for s in seeded:
        if not s.created:
            click.echo(f"{s.symbol}/USDC already has liquidity: left alone")
        table.add_row(
            f"{s.symbol}/USDC",
            s.pool.address,
            f"{s.token_reserve / TOKEN_UNIT:,.2f}",
            f"{s.usdc_reserve / USD_MICRO:,.2f}",
            f"${s.usdc_reserve * TOKEN_UNIT / s.token_reserve / USD_MICRO:,.6f}",
            f"${REFERENCE_PRICES[s.symbol] / USD_MICRO:,.6f}",
        )
    console.print(table)
