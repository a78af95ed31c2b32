"""`promptex coordinator [--once]` and `promptex coordinator release`: the settlement
service (built by `coordinator.factory` from the settings), with its HTTP door for wallets
(`coordinator.door`, served beside the passes), and its instant-exit co-signature."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import click

from promptex.cli.market import rpc_url_option
from promptex.config import ConfigurationError, settings

if TYPE_CHECKING:
    from promptex.coordinator.door import Door
    from promptex.coordinator.service import Coordinator


def _coordinator(*, service: bool = True) -> Coordinator:
    """The coordinator; a command's (`service` False: `release`) opens the market's ledger as
    every command does (`cli.ledgers`: refused outside the market folder, never migrated)."""
    from promptex.cli.ledgers import market_ledger, market_settings
    from promptex.coordinator import factory

    try:
        if service:
            return factory.make_coordinator(settings())
        return factory.make_coordinator(market_settings(), open_ledger=market_ledger)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def factory_door(coord: Coordinator) -> Door:
    from promptex.coordinator import factory

    return factory.make_door(settings(), coord)


@click.group("coordinator", invoke_without_command=True)
@click.option("--once", is_flag=True, help="run one pass and exit")
@rpc_url_option
@click.pass_context
def coordinator(ctx: click.Context, once: bool) -> None:
    """Settle usage on chain every epoch window (crash-safe; SIGTERM stops it cleanly)."""
    if ctx.invoked_subcommand is not None:
        return
    from promptex.coordinator.service import serve

    s = settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    coord = _coordinator()
    if once:
        report = coord.run_once()
        click.echo(
            json.dumps(
                {
                    "leader": report.leader,
                    "confirmed": report.confirmed,
                    "failed": report.failed,
                    "quarantined": report.quarantined,
                    "requeued": report.requeued,
                    "refunded": report.refunded,
                    "held": len(report.held),  # records of a failed batch waiting for its failure to be final
                    "spend_caps": report.caps,
                    "session_keys": report.session_keys,
                    "waiting": report.waiting,
                }
            )
        )
        return
    door = None
    if s.coordinator_door_port:
        from promptex.coordinator.door import serve_door

        door = serve_door(factory_door(coord), s.coordinator_door_host, s.coordinator_door_port)
    try:
        serve(coord, s.coordinator_poll_seconds)
    finally:
        if door is not None:
            door.__exit__()
            # A request answered while the passes stopped may have renewed the lease: free it.
            coord.store.release_lease(coord.holder)


@coordinator.command("release")
@rpc_url_option
@click.option("--address", required=True, help="the wallet that will exit (must be bound to an account)")
@click.option("--asset", "symbol", required=True, help="USDC or a provider token symbol")
@click.option("--amount", required=True, type=click.IntRange(min=1), help="smallest units of the asset")
def coordinator_release(address: str, symbol: str, amount: int) -> None:
    """Co-sign an instant exit if the amount is free of unsettled usage; print the release as JSON
    (the wallet submits it with `promptex wallet exit-instant --release FILE`)."""
    from promptex.coordinator.store import ReleaseRefused

    try:
        release = _coordinator(service=False).sign_release(address, symbol.upper(), amount)
    except (ReleaseRefused, ValueError) as exc:
        raise click.ClickException(f"release refused: {exc}") from None
    click.echo(
        json.dumps(
            {
                "address": release.address,
                "asset": release.asset,
                "amount": str(release.amount),
                "nonce": release.nonce,
                "expiry": release.expiry,
                "signature": release.signature,
            },
            indent=2,
        )
    )
