"""xbreak (session 10), the let-go question (a record under a later epoch while an old
settle of it can still land, within the reorg window): yes. A settle closed DROPPED (its
nonce taken by a transaction outside the log: the operator's wallet cancelling a stuck
settle) was never looked at again. A reorg within the window that orphans the cancel
lets its bytes land after all; its records, back to pending and settled again at the
same epoch by a retry that now reverts, were then planned under a later epoch once the
retry's failure was final: debited twice on chain, the books saying once, no error.
Now each pass reads the receipt of an unfinal failed batch's dropped settle; landed, the
batch takes its records back (`_reattach`), as a no-op found dropped does."""

from __future__ import annotations

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from test_breaker_failure_final import _debited
from test_breaker_recheck import _books_equal_chain
from test_breaker_refund_taken_back import _payer
from test_breaker_rotation import NEW_KEY, _coordinator, _old_key_dies_with_its_settle_open
from test_coordinator_failure_final import _mine_to
from test_coordinator_refund_taken_back import LOT, USDC, Branch, spend

from promptex.coordinator.service import REORG_WINDOW, Coordinator
from promptex.ledger import Ledger
from promptex.protocol.escrow import KIND_LISTED


@pytest.fixture
def chain() -> FakeChain:
    fake = FakeChain()
    fake.open_lot(LOT, KIND_LISTED)
    return fake


def test_settle_dropped_by_a_cancel_a_reorg_then_orphans__its_bytes_land__each_record_debited_once(
    book: Ledger, chain: FakeChain
) -> None:
    coord = Coordinator(book.engine, chain, holder="c", clock=book.clock, tx_timeout=0, quarantine_retry=0)
    x, x_address = _payer(book, chain)
    spend(book, x, 1_002)
    chain.next_window()
    chain.hold = True
    assert coord.run_once().waiting is not None  # Z (X's record, epoch 1) sent, stuck in the pool
    (z,) = coord.store.open_txs()
    chain.mempool.clear()  # the local node loses it; another node's pool still holds its bytes
    chain.hold = False
    y, y_address = _payer(book, chain)
    fork = Branch.of(chain)
    chain.mine_blocks(1)
    chain.burn_nonce()  # the operator's wallet cancels the stuck settle: its nonce, outside the log
    spend(book, y, 2_007)
    assert coord.run_once().confirmed == [(USDC, 1)]  # Z dropped, failed; Z2 (X, Y) settles epoch 1
    assert coord.store.tx(z.id).status == "dropped"
    assert (_debited(chain, x_address), _debited(chain, y_address)) == (1_002, 2_007)

    chain.mine_blocks(3)
    fork.reorg_to(chain)  # 4 blocks deep, within the window: the cancel and Z2 orphaned
    chain.broadcast(z.raw)  # the other node's copy of Z lands at its nonce, epoch 1: X debited
    for _ in range(3):
        chain.next_window()
        coord.run_once()
        _mine_to(chain, chain.head() + REORG_WINDOW + 1)

    assert (_debited(chain, x_address), _debited(chain, y_address)) == (1_002, 2_007)
    _books_equal_chain(book, chain)


def test_old_keys_settle_dropped_by_its_cancel__the_cancel_orphaned__its_bytes_land__the_new_key_reattaches(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same after a key rotation, through the README's way out: the old key's settle Z
    lost, its nonce taken by a wallet's cancel; the old key's coordinator run once closes Z
    dropped and settles Z's and Y's records at epoch 1 (Z2). A reorg within the window
    orphans the cancel and Z2; Z's bytes land, Z2's revert. The new key (any key's dropped
    settle is read) gives Z its record back and lets Z2 go: Z and Y each debited once."""
    z_address, y_address, old, keys = _old_key_dies_with_its_settle_open(book, chain, mined=False)
    (z,) = old.store.open_txs()
    raws = {z.raw}
    fork, old_nonce = Branch.of(chain), keys.nonces[COORDINATOR]
    chain.mine_blocks(1)
    keys.nonces[COORDINATOR] += 1  # the wallet's cancel, at the old account's nonce
    new = _coordinator(book, chain, "new")
    assert "some not yet mined" in (new.run_once().waiting or "")
    keys.use(COORDINATOR)
    assert old.run_once().confirmed == [(USDC, 1)]  # Z dropped; Z2 (Z's and Y's records) at epoch 1
    old.store.release_lease("old")
    keys.use(NEW_KEY)
    (z2,) = [tx for tx in old.store.landed_txs(0, 0) if tx.purpose == "settle"]
    raws.add(z2.raw)

    chain.mine_blocks(3)
    fork.reorg_to(chain)  # the cancel and Z2 orphaned, within the window
    keys.nonces[COORDINATOR] = old_nonce
    chain.broadcast(z.raw)  # a pool's copy of Z lands at its nonce: Z's record debited at epoch 1
    for _ in range(3):
        chain.next_window()
        new.run_once()
        _mine_to(chain, chain.head() + REORG_WINDOW + 1)

    assert (_debited(chain, z_address), _debited(chain, y_address)) == (3_012, 2_007)
    _books_equal_chain(book, chain)
