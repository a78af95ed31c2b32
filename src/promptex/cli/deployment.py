"""`promptex deployment show`: where each contract of a recorded deployment lives."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from promptex.chain.deployments import load_deployment


@click.group()
def deployment() -> None:
    """Recorded contract deployments (deployments/<network>.json)."""


@deployment.command("show")
@click.option("--network", default="local", show_default=True, help="network name, e.g. local, sepolia")
def deployment_show(network: str) -> None:
    """Print where each contract of a deployment lives."""
    try:
        record = load_deployment(network)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title=f"{record.network} (chain {record.chain_id}, block {record.block_number})")
    table.add_column("contract")
    table.add_column("address")
    for name, contract in record.contracts.items():
        table.add_row(name, contract.address)
    Console().print(table)
