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
from coordinator_fakes import FakeChain
from test_breaker_failure_final import _debited
from test_breaker_recheck import _books_equal_chain
from test_breaker_refund_taken_back import _payer
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
