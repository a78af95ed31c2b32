"""rbreak's item 1 (session 9): the old key LOST while its failed settle is off the chain.
The old key's A (X, Y) reverted at epoch 1, its retry C settled Y at epoch 1 (the next
nonce), X's record quarantined; the old coordinator stopped, the key rotated. A reorg
within the window, while the new key waits, orphans A. Only the old key can fill A's nonce
with a no-op, so the new key raised OtherKeyPending "run that key's coordinator --once":
with that key lost, for good. Now:
- (a) A's epoch taken on chain by another batch in a block `reorg_window` deep: A can never
  debit (the vault takes an epoch once), so the new key stops waiting for it;
- (d) until then A's own bytes are sent again (anyone may) while its records sit only in
  batches of its epoch: at most one of A and C lands; A landing is reattached.
Each record debited once; the books equal the chain."""

from __future__ import annotations

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from test_breaker_failure_final import _debited
from test_breaker_recheck import _books_equal_chain
from test_breaker_refund_taken_back import failed_and_retry, x_fails_y_retried
from test_breaker_rotation import NEW_KEY, _coordinator, _Keys
from test_coordinator_failure_final import _mine_to
from test_coordinator_refund_taken_back import USDC

from promptex.coordinator.service import REORG_WINDOW
from promptex.ledger import Ledger


def test_old_key_lost__its_failed_settle_off_chain__its_epoch_taken_deep__the_new_key_goes_on__each_debited_once(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a): on the new branch A's nonce went to a transaction outside the log (a wallet's
    cancel with the old key, before it was lost) and C is re-included: A can never land.
    Before, the new key waited for good (only the lost key could fill A's nonce); now it
    waits until C's block is a window deep, then settles X at epoch 2."""
    keys = _Keys(chain)
    old = _coordinator(book, chain, "old")
    s = x_fails_y_retried(book, chain, old, 1_002, 2_007)
    fr = failed_and_retry(old)
    old.store.release_lease("old")  # stopped; then its key is lost
    keys.use(NEW_KEY)
    new = _coordinator(book, chain, "new")
    chain.mine_blocks(3)
    assert new.run_once().waiting is not None

    s.fork.reorg_to(chain)  # A and C orphaned; on the new branch:
    keys.nonces[COORDINATOR] += 1  # A's nonce taken by the old account's cancel
    chain.broadcast(fr.raws[1])  # C re-included: Y debited at epoch 1
    assert chain.last_epoch(USDC) == 1 and chain.receipt(old.store.tx(fr.retry.tx_id or 0).tx_hash) is not None
    c_block = chain.head()

    chain.mine_blocks(REORG_WINDOW - 1)
    report = new.run_once()
    assert not report.leader and "coordinator --once" in (report.waiting or "")  # C not yet deep: A may land
    chain.mine_blocks(1)
    for _ in range(3):
        chain.next_window()
        report = new.run_once()
    assert report.leader and report.waiting is None
    assert chain.head() - c_block >= REORG_WINDOW

    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)
    assert chain.last_epoch(USDC) == 2
    assert chain.simulate(old._batch_call(fr.failed)) == "vault: epoch not consecutive"  # A, were it ever mined
    _books_equal_chain(book, chain)


def test_old_key_lost__its_failed_settle_and_retry_off_chain__the_new_key_sends_its_bytes__each_debited_once(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(d): A and C orphaned, neither re-included; C (the next nonce) cannot be mined while
    A's nonce is free, so nothing takes epoch 1. The new key sends A's bytes again (X and Y
    sit only in C, at A's epoch, or in quarantine): the network mines A (X, Y at epoch 1),
    then C reverts. A is reattached with both records; C let go. Before, the new key only
    sent C's bytes and waited for the lost key's --once for good."""
    keys = _Keys(chain)
    old = _coordinator(book, chain, "old")
    s = x_fails_y_retried(book, chain, old, 1_002, 2_007)
    fr = failed_and_retry(old)
    old.store.release_lease("old")  # stopped; then its key is lost
    keys.use(NEW_KEY)
    new = _coordinator(book, chain, "new")
    chain.mine_blocks(3)
    assert new.run_once().waiting is not None

    s.fork.reorg_to(chain)  # A and C orphaned, neither re-included
    chain.s.balances[(s.x_address, USDC)] = 10_000  # X's exit was on the orphaned branch too
    a_tx = old.store.tx(fr.failed.tx_id or 0)
    sent = len(chain.sent)

    new.run_once()
    assert a_tx.tx_hash in chain.sent[sent:]  # A's bytes, sent by the new key
    for _ in range(3):
        new.run_once()
    _mine_to(chain, chain.head() + REORG_WINDOW + 1)
    for _ in range(3):
        chain.next_window()
        report = new.run_once()
    assert report.leader and report.waiting is None

    assert old.store.batch(fr.failed.id).status == "confirmed" and old.store.batch(fr.retry.id).status == "failed"
    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)
    assert chain.last_epoch(USDC) == 1
    _books_equal_chain(book, chain)
