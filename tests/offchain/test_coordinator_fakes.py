"""The coordinator's fake chain models what the coordinator relies on (rbreak's item 7,
session 9): a transaction is its signer's, so two keys' transactions at one nonce are two
transactions with two hashes, each mined on its signer's account nonce."""

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


def test_another_keys_bytes__mined_on_their_signers_account_nonce() -> None:
    """Each key has its own account nonce (rbreak's item 7): bytes the old key signed, sent
    by anyone after a rotation, are mined at the old account's nonce, and the key in use's
    stays. Before, the fake kept one nonce: they were compared with the new key's
    (`test_breaker_rotation.on_its_own_nonce` swapped nonces by hand)."""
    chain = FakeChain()
    chain.broadcast(chain.sign_noop(0).raw)  # the old key's nonce 0 taken
    later = chain.sign_noop(1)  # its next transaction, signed, not yet sent
    chain.sender, chain.s.nonce = NEW_KEY, 0  # a new key: its own account
    chain.broadcast(later.raw)
    assert chain.receipt(later.tx_hash) is not None
    assert chain.nonce() == 0 and chain.s.nonces[COORDINATOR] == 2
