"""The coordinator's fake chain models what the coordinator relies on (rbreak's item 7,
session 9): a transaction is its signer's, so two keys' transactions at one nonce are two
transactions with two hashes."""

from __future__ import annotations

from coordinator_fakes import COORDINATOR, FakeChain

from promptex.chain.txlog import NOOP
from promptex.coordinator.store import CoordinatorStore
from promptex.ledger import Ledger

NEW_KEY = "0x000000000000000000000000000000000000bEEF"


def test_two_keys_no_ops_at_one_nonce__two_transactions__both_in_one_log(book: Ledger) -> None:
    """Before, the no-op's hash ignored its sender: an A→B→A test in which both keys fill
    equal nonces met the log's unique tx_hash (IntegrityError)."""
    chain, store = FakeChain(), CoordinatorStore(book.engine)
    a = chain.sign_noop(3)
    chain.sender = NEW_KEY
    b = chain.sign_noop(3)
    assert a.tx_hash != b.tx_hash
    with store._tx() as conn:
        ids = {store._store_tx(conn, NOOP, a, COORDINATOR, 0), store._store_tx(conn, NOOP, b, NEW_KEY, 0)}
    assert len(ids) == 2
