"""`promptex reconcile`: the books against the chain; exit 1 if a difference is unexplained."""

from __future__ import annotations

import json

import click
import rich.console
import rich.table

from promptex.config import ConfigurationError, settings


@click.command("reconcile")
@click.option("--network", help="the deployment to compare with [default: PROMPTEX_INDEXER_NETWORK]")
@click.option(
    "--rpc-url", help="the node to read [default: PROMPTEX_INDEXER_RPC_URL, PROMPTEX_RPC_URL, the market's profile]"
)
@click.option("--json", "as_json", is_flag=True, help="every difference and explanation in exact units, as JSON")
@click.option("--all", "show_all", is_flag=True, help="also list the explained differences record by record")
def reconcile(network: str | None, rpc_url: str | None, as_json: bool, show_all: bool) -> None:
    """Compare, per account and asset, the ledger with the vault (balances, pending exits,
    sellers' claimables), each lot with the escrow and each redemption with RedemptionEscrow,
    at the block the indexer last applied. Every difference must be explained by named
    records (request ids, debts, tx hashes, batches) adding up to it exactly; anything
    unexplained exits 1."""
    from promptex.cli.ledgers import market_ledger
    from promptex.reconcile.run import ReconcileError, run

    s = settings()
    try:
        url, network = rpc_url or s.chain_rpc_url("indexer"), network or s.indexer_network  # no market: said first
        with market_ledger(s) as ledger:
            report = run(s, rpc_url=url, network=network, ledger=ledger)
    except (ConfigurationError, ReconcileError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print(report, show_all)
    raise SystemExit(0 if report.ok else 1)


def _print(report: object, show_all: bool) -> None:
    from promptex.reconcile import Report, summary

    assert isinstance(report, Report)
    console = rich.console.Console(highlight=False, soft_wrap=True)
    rows = report.differences if show_all else report.unexplained
    if rows:
        table = rich.table.Table(title=f"books against the chain at block {report.block}")
        for column in ("what", "subject", "asset", "books", "chain", "difference", "explained by", "unexplained"):
            table.add_column(
                column, justify="right" if column in ("books", "chain", "difference", "unexplained") else "left"
            )
        for row in rows:
            explained = "\n".join(
                f"{e.kind} {e.ref}: {row.shown(e.amount)}" + (f" ({e.note})" if e.note else "")
                for e in row.explanations
            )
            table.add_row(
                row.section, row.subject, row.asset, row.shown(row.books), row.shown(row.chain),
                row.shown(row.difference), explained or "—", row.shown(row.unexplained),
            )  # fmt: skip
        console.print(table)
    for row in report.unexplained:  # one full line each, whatever the terminal's width
        console.print(
            f"unexplained: {row.section} of {row.subject}: books {row.shown(row.books)}, "
            f"chain {row.shown(row.chain)}, {row.shown(row.unexplained)} not explained"
        )
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(summary(report))
