"""`promptex attestor review|reports|resolve`: lot health as it reaches the attestor
(`promptex.sellers.attestor`). The review records reports; a person acts on them. Nothing
here slashes: a slash is sent by hand, then recorded with `resolve REPORT slashed`."""

from __future__ import annotations

import click


@click.group()
def attestor() -> None:
    """The attestor: review the gateway's lot health and act on its reports by hand."""


def _when(unix: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _line(report: object) -> str:
    from promptex.sellers.attestor import Report

    assert isinstance(report, Report)
    lot = f"lot {report.lot_id}" + (f" (escrow lot {report.chain_lot_id})" if report.chain_lot_id is not None else "")
    line = (
        f"report {report.id}: {lot} of {report.seller}: {report.reasons}; {report.errors} errors in "
        f"{report.requests} calls reported; opened {_when(report.opened_at)}, last seen {_when(report.updated_at)}"
    )
    if report.status != "open" and report.resolved_at is not None:
        line += f"; {report.status} {_when(report.resolved_at)}: {report.note}"
    return line


@attestor.command("review")
@click.option(
    "--error-rate", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
    help="report a lot whose upstream calls since the last review failed at this rate or more",
)  # fmt: skip
@click.option("--min-calls", type=click.IntRange(1), default=20, show_default=True, help="fewer calls: no rate judged")
def attestor_review(error_rate: float, min_calls: int) -> None:
    """Judge each lot's health since the last review (error rate, a refused key, an open
    circuit) and record a report for each failing lot. Slashes nothing."""
    import time

    from promptex.cli.ledgers import market_ledger
    from promptex.sellers.attestor import Thresholds, review

    with market_ledger() as ledger:
        found = review(ledger.engine, int(time.time()), Thresholds(error_rate=error_rate, min_requests=min_calls))
    if not found:
        click.echo("no lot fails: nothing reported")
    for report in found:
        click.echo(_line(report))
    if found:
        click.echo(
            "Act by hand: slash the escrow lot if the seller's capacity failed, then "
            "`promptex attestor resolve REPORT slashed --note TX`; or `… dismissed --note WHY`."
        )


@attestor.command("reports")
@click.option("--all", "every", is_flag=True, help="resolved reports too")
def attestor_reports(every: bool) -> None:
    """The open reports (every report with --all), oldest first."""
    from promptex.cli.ledgers import market_ledger
    from promptex.sellers.attestor import open_reports

    with market_ledger() as ledger:
        found = open_reports(ledger.engine, every=every)
    if not found:
        click.echo("no reports" if every else "no open reports")
    for report in found:
        click.echo(_line(report))


@attestor.command("resolve")
@click.argument("report_id", metavar="REPORT", type=click.IntRange(1))
@click.argument("status", type=click.Choice(["dismissed", "slashed"]))
@click.option("--note", required=True, help="why it was dismissed, or the slash's transaction hash")
def attestor_resolve(report_id: int, status: str, note: str) -> None:
    """Record what was done about an open report. Sends nothing."""
    import time

    from promptex.cli.ledgers import market_ledger
    from promptex.sellers.attestor import ReportRefused, resolve

    with market_ledger() as ledger:
        try:
            report = resolve(ledger.engine, report_id, status, note, int(time.time()))
        except ReportRefused as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(_line(report))
