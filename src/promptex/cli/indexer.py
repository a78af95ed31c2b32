"""`promptex indexer`: follow the chain into the ledger, as a long-lived service;
`promptex indexer reorgs`: the reorgs it rewound."""

from __future__ import annotations

import logging

import click

from promptex.chain.deployments import load_deployment
from promptex.chain.identity import identity_of
from promptex.config import ConfigurationError, settings
from promptex.indexer.decode import LogDecodeError
from promptex.indexer.followed import Followed
from promptex.indexer.progress import Progress
from promptex.indexer.reorg import ReorgTooDeep
from promptex.indexer.rpc import RpcClient, RpcError
from promptex.indexer.service import Indexer, IndexerError, Options, log, serve
from promptex.ledger import Ledger, LedgerError


@click.group("indexer", invoke_without_command=True)
@click.option("--network", help="deployment whose contracts to follow [default: PROMPTEX_INDEXER_NETWORK]")
@click.option("--rpc-url", help="the node [default: PROMPTEX_INDEXER_RPC_URL, PROMPTEX_RPC_URL, the market's profile]")
@click.option(
    "--confirmations", type=click.IntRange(min=0), help="index up to head − N [default: PROMPTEX_INDEXER_CONFIRMATIONS]"
)
@click.option(
    "--from-block", type=click.IntRange(min=0), help="first block on an empty ledger [default: the deployment's]"
)
@click.option("--once", is_flag=True, help="catch up to the head, then exit")
@click.pass_context
def indexer(
    ctx: click.Context,
    network: str | None,
    rpc_url: str | None,
    confirmations: int | None,
    from_block: int | None,
    once: bool,
) -> None:
    """Index vault, escrow, factory and pool events into the ledger (Ctrl-C stops cleanly)."""
    if ctx.invoked_subcommand is not None:
        return
    s = settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    try:
        rpc_url = rpc_url or s.chain_rpc_url("indexer")  # first: no market at all is the thing to say
        deployment = load_deployment(network or s.indexer_network)
    except (FileNotFoundError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None
    options = Options(
        confirmations=s.indexer_confirmations if confirmations is None else confirmations,
        max_block_range=s.indexer_max_block_range,
        target_logs=s.indexer_target_logs,
        keep_blocks=s.indexer_keep_blocks,
        start_block=s.indexer_start_block if from_block is None else from_block,
    )
    try:
        with (
            RpcClient(rpc_url, timeout=s.indexer_rpc_timeout_seconds) as rpc,
            Ledger.from_settings(s) as ledger,
        ):
            genesis = rpc.headers([0])[0].hash
            observed = identity_of(deployment, rpc.chain_id(), genesis)
            service = Indexer(ledger, rpc, Followed.from_deployment(deployment), options)
            # Before anything is indexed: another chain under this ledger is refused, not
            # rewound as a reorg of every block (which undid every balance).
            ledger.follow_chain(observed, "the indexer", adopt=service.anchored())
            totals = serve(
                service,
                once=once,
                poll_seconds=s.indexer_poll_seconds,
                progress=Progress(log, every=s.indexer_log_seconds),
            )
    except (RpcError, LogDecodeError, IndexerError, ReorgTooDeep, LedgerError, KeyError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"indexed to block {totals.block} (head {totals.head}): {totals.events} events, "
        f"{totals.blocks} blocks, {totals.rewinds} reorgs undone, in {totals.seconds:.1f} s"
    )


@indexer.command("reorgs")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
def indexer_reorgs(limit: int) -> None:
    """The reorgs the indexer rewound, newest first: depth, events undone, debts opened."""
    from promptex.cli.ledgers import market_ledger
    from promptex.indexer import store

    with market_ledger() as ledger, ledger.engine.connect() as conn:
        found = store.reorgs(conn, limit)
    if not found:
        click.echo("no reorgs")
        return
    click.echo(f"{'id':>4} {'fork block':>11} {'old tip':>9} {'depth':>6} {'conf.':>5} {'undone':>7} {'debts':>6}")
    for r in found:
        click.echo(
            f"{r.id:>4} {r.fork_block:>11} {r.old_tip:>9} {r.depth:>6} {r.confirmations:>5} "
            f"{r.events_undone:>7} {r.debts_opened:>6}"
        )
