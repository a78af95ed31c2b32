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
from ledger_helpers import bind_new_wallet, event_id
from test_breaker_failure_final import _debited
from test_breaker_recheck import _books_equal_chain
from test_breaker_refund_taken_back import _payer
from test_breaker_rotation import _coordinator, _old_key_dies_with_its_settle_open
from test_coordinator_failure_final import _mine_to
from test_coordinator_refund_taken_back import USDC, Branch, spend

from promptex.coordinator.service import REORG_WINDOW, Coordinator
from promptex.ledger import Ledger


@pytest.mark.parametrize("second_wallet", [False, True], ids=["one_wallet", "second_wallet_same_second"])
def test_settle_dropped_by_a_cancel_a_reorg_then_orphans__its_bytes_land__each_record_debited_once(
    book: Ledger, chain: FakeChain, second_wallet: bool
) -> None:
    """`second_wallet` (cbreak2's item 5, tried by cbreak3 s13): X binds a second, funded
    wallet with a lower address in the same second, after Z was planned. It became X's
    debited wallet (`first_bound`: the lowest (bound_at, address)): Z2 and later batches
    debited it, and Z landing after all failed `_reattach`'s root proof (its entries
    recomputed with the new wallet: "may be settled twice; run reconcile"): X's record
    was debited from both wallets. The first binding now stays the debited wallet."""
    coord = Coordinator(book.engine, chain, holder="c", clock=book.clock, tx_timeout=0, quarantine_retry=0)
    x, x_address = _payer(book, chain)
    spend(book, x, 1_002)
    chain.next_window()
    chain.hold = True
    assert coord.run_once().waiting is not None  # Z (X's record, epoch 1) sent, stuck in the pool
    (z,) = coord.store.open_txs()
    chain.mempool.clear()  # the local node loses it; another node's pool still holds its bytes
    chain.hold = False
    other = "0x00eDf2d16AfbC028FB1e879559b07997Af79539f"  # key 130's: lower than any other wallet
    if second_wallet:
        assert bind_new_wallet(book, x, (130).to_bytes(32, "big")) == other
        book.credit_deposit(event_id(), other, USDC, 10_000)
        chain.s.balances[(other, USDC)] = 10_000
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
    assert chain.s.balances.get((other, USDC), 10_000) == 10_000, "X's record debited from its second wallet too"
    _books_equal_chain(book, chain)


def test_old_keys_settle_dropped_by_its_cancel__the_cancel_orphaned__its_bytes_land__the_new_key_reattaches(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same after a key rotation: the old key's settle Z lost, its nonce taken by a
    wallet's cancel; the new key calls Z dropped by the old account's nonce (cbreak2; before,
    the old key's coordinator run once did) and settles Z's and Y's records at epoch 1 (Z2).
    A reorg within the window orphans the cancel and Z2; Z's bytes land. The new key (any
    key's dropped settle is read) gives Z its record back and lets Z2 go (its nonce to a
    no-op): Z and Y each debited once."""
    z_address, y_address, old, keys = _old_key_dies_with_its_settle_open(book, chain, mined=False)
    (z,) = old.store.open_txs()
    raws = {z.raw}
    fork, old_nonce = Branch.of(chain), keys.nonces[COORDINATOR]
    chain.mine_blocks(1)
    keys.nonces[COORDINATOR] += 1  # the wallet's cancel, at the old account's nonce
    new = _coordinator(book, chain, "new")
    assert new.run_once().confirmed == [(USDC, 1)]  # Z dropped; Z2 (Z's and Y's records) at epoch 1
    assert new.store.tx(z.id).status == "dropped"
    (z2,) = [tx for tx in new.store.landed_txs(0, 0) if tx.purpose == "settle"]
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
