"""`promptex indexer`: follow the chain into the ledger, as a long-lived service."""

from __future__ import annotations

import logging

import click

from promptex.chain.deployments import load_deployment
from promptex.config import settings
from promptex.indexer.decode import LogDecodeError
from promptex.indexer.followed import Followed
from promptex.indexer.progress import Progress
from promptex.indexer.reorg import ReorgTooDeep
from promptex.indexer.rpc import RpcClient, RpcError
from promptex.indexer.service import Indexer, IndexerError, Options, log, serve
from promptex.ledger import Ledger, LedgerError


@click.command("indexer")
@click.option("--network", help="deployment whose contracts to follow [default: PROMPTEX_INDEXER_NETWORK]")
@click.option("--rpc-url", help="the node's JSON-RPC URL [default: PROMPTEX_INDEXER_RPC_URL]")
@click.option(
    "--confirmations", type=click.IntRange(min=0), help="index up to head − N [default: PROMPTEX_INDEXER_CONFIRMATIONS]"
)
@click.option(
    "--from-block", type=click.IntRange(min=0), help="first block on an empty ledger [default: the deployment's]"
)
@click.option("--once", is_flag=True, help="catch up to the head, then exit")
def indexer(
    network: str | None, rpc_url: str | None, confirmations: int | None, from_block: int | None, once: bool
) -> None:
    """Index vault, escrow, factory and pool events into the ledger (Ctrl-C stops cleanly)."""
    s = settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    try:
        deployment = load_deployment(network or s.indexer_network)
    except FileNotFoundError as exc:
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
            RpcClient(rpc_url or s.indexer_rpc_url, timeout=s.indexer_rpc_timeout_seconds) as rpc,
            Ledger.from_settings(s) as ledger,
        ):
            if rpc.chain_id() != deployment.chain_id:
                raise IndexerError(
                    f"the {deployment.network} deployment is on chain {deployment.chain_id}, not this node's"
                )
            service = Indexer(ledger, rpc, Followed.from_deployment(deployment), options)
            totals = serve(
                service,
                once=once,
                poll_seconds=s.indexer_poll_seconds,
                progress=Progress(log, every=s.indexer_log_seconds),
            )
    except (RpcError, LogDecodeError, IndexerError, ReorgTooDeep, LedgerError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"indexed to block {totals.block} (head {totals.head}): {totals.events} events, "
        f"{totals.blocks} blocks, {totals.rewinds} reorgs undone, in {totals.seconds:.1f} s"
    )
