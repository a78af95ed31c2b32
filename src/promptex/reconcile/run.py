"""`promptex reconcile` as the settings describe it: the ledger, checked to mirror the
chain it is compared with, and that chain read at the block the indexer last applied
(its head when nothing was indexed yet, said in a note)."""

from __future__ import annotations

from web3.exceptions import Web3Exception

from promptex.chain.deployments import load_deployment
from promptex.chain.identity import check_chain
from promptex.config import ConfigurationError, Settings
from promptex.indexer import store as indexer_store
from promptex.ledger import Ledger
from promptex.ledger.db import READ_ONLY
from promptex.reconcile.chain import Web3ChainView
from promptex.reconcile.compare import reconcile
from promptex.reconcile.report import Report


class ReconcileError(RuntimeError):
    """The comparison could not be made (the message says why)."""


def indexed_block(ledger: Ledger) -> int | None:
    """The last block whose events the ledger applied, if the indexer ran."""
    with ledger.engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
        cursor = indexer_store.load_cursor(conn)
    return None if cursor is None else cursor.block_number


def run(s: Settings, *, rpc_url: str, network: str, ledger: Ledger | None = None) -> Report:
    try:
        deployment = load_deployment(network)
    except FileNotFoundError as exc:
        raise ConfigurationError(str(exc)) from None
    own = ledger is None
    book = Ledger.from_settings(s) if ledger is None else ledger
    try:
        check_chain(book, service="reconcile", rpc_url=rpc_url, network=network)
        block = indexed_block(book)
        view = Web3ChainView(rpc_url, deployment, block if block is not None else 0)
        if block is None:
            view.block = int(view.w3.eth.block_number)
        report = reconcile(book, view)
        if block is None:
            report.notes.append("the indexer has not run on this ledger: the chain was read at its head")
        return report
    except (OSError, ValueError, Web3Exception) as exc:  # no node, no state at that block, no such contract
        raise ReconcileError(f"cannot read the chain at {rpc_url}: {exc}") from None
    finally:
        if own:
            book.close()
