"""cbreak (session 11): another key's failed settle whose nonce is not final holds its
records off later epochs, as this key's own does (`Coordinator._unfinal_failures`).

Before, only this key's failures held records: "another key's are final once a pass runs
at all (`txlog.wait_for_other_keys`)". That holds for another key's settle that reverted
or is open (the new key waits until its row is `reorg_window` deep), not for one closed
DROPPED by its own key's coordinator (its nonce taken by a transaction outside the log: a
wallet's cancel of a stuck settle): no row of that key is then open or mined, so the new
key never waits, and nothing of that key's will ever be mined past its nonce. Here the
old key's only transaction, Z (X's record, epoch 1), is lost, its nonce taken by the
wallet's cancel; the old key's coordinator, run once (the README's way out), closes Z
dropped, X's record cannot go at once (X's balance short: quarantined). The new key
settles Y at epoch 1 (G1), X's record requeued goes under epoch 2 (G2). A reorg within the
window orphans the cancel, G1 and G2; a pool's copy of Z lands at epoch 1 (X debited),
G1 reverts, G2 lands (X debited again): X twice on chain, reconcile's error. Now X waits
until Z's epoch is taken by a settle `reorg_window` deep (Z can then never land)."""

from __future__ import annotations

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from test_breaker_failure_final import _debited
from test_breaker_recheck import _books_equal_chain
from test_breaker_refund_taken_back import _payer
from test_breaker_rotation import NEW_KEY, _coordinator, _Keys
from test_coordinator_failure_final import _mine_to
from test_coordinator_refund_taken_back import USDC, Branch, spend

from promptex.chain.txlog import DROPPED, StoredTx
from promptex.coordinator.service import REORG_WINDOW
from promptex.ledger import Ledger


def _old_keys_only_settle_dropped_by_a_cancel(
    book: Ledger, chain: FakeChain
) -> tuple[_Keys, str, str, int, str, StoredTx, Branch]:
    """The old key's only settle Z (X's record, epoch 1) lost, its nonce taken by a wallet's
    cancel; its coordinator run once closes Z dropped and quarantines X's record (X's balance
    short). Returns the keys (the new one in use), X's address and request, Y (funded, no
    spend yet) and its address, Z and the chain before the cancel."""
    keys = _Keys(chain)
    old = _coordinator(book, chain, "old")
    x, x_address = _payer(book, chain)
    y, y_address = _payer(book, chain)  # Y's spend comes later, to the new key
    x_request = spend(book, x, 1_002)
    chain.next_window()
    chain.hold, chain.lose = True, True
    assert old.run_once().waiting is not None  # Z sent, lost by the local node; a pool keeps it
    (z,) = old.store.open_txs()
    chain.hold = chain.lose = False
    fork = Branch.of(chain)  # before the cancel
    chain.mine_blocks(1)
    keys.nonces[COORDINATOR] += 1  # the wallet's cancel of the stuck settle, outside the log
    chain.s.balances[(x_address, USDC)] = 0  # X's balance short for a while (an exit)
    assert old.run_once().confirmed == []  # Z dropped, its batch failed; X's record quarantined
    assert old.store.tx(z.id).status == DROPPED and old.store.record(x_request).status == "quarantined"
    old.store.release_lease("old")
    keys.use(NEW_KEY)
    return keys, x_address, x_request, y, y_address, z, fork


def test_old_keys_only_settle_dropped_by_a_cancel__its_records_wait_until_its_epoch_is_taken_deep(
    book: Ledger, chain: FakeChain
) -> None:
    _, x_address, x_request, y, y_address, z, fork = _old_keys_only_settle_dropped_by_a_cancel(book, chain)
    new = _coordinator(book, chain, "new")
    spend(book, y, 2_007)
    report = new.run_once()  # nothing of the old key open or mined: the new key does not wait
    assert report.waiting is None and report.confirmed == [(USDC, 1)]  # G1: Y at epoch 1
    chain.s.balances[(x_address, USDC)] = 10_000
    sent = len(chain.sent)
    for _ in range(2):
        chain.next_window()
        report = new.run_once()
        assert report.held == {x_request} and report.confirmed == []  # before: G2, X under epoch 2
    assert chain.last_epoch(USDC) == 1 and len(chain.sent) == sent

    fork.reorg_to(chain)  # within the window: the cancel and the new key's settles orphaned
    chain.broadcast(z.raw)  # a pool's copy of Z lands at its nonce: X debited at epoch 1
    g1, *later = [tx for tx in new.store.landed_txs(0, 0, NEW_KEY) if tx.purpose == "settle"]
    chain.broadcast(g1.raw)  # re-included by the network: it reverts (epoch 1 is Z's)
    chain.next_window()
    for tx in later:  # before: G2, re-included from a pool in the next window, X debited again
        chain.broadcast(tx.raw)
    for _ in range(3):
        chain.next_window()
        new.run_once()
    _mine_to(chain, chain.head() + REORG_WINDOW + 1)
    for _ in range(2):
        chain.next_window()
        new.run_once()

    assert (_debited(chain, x_address), _debited(chain, y_address)) == (1_002, 2_007)
    _books_equal_chain(book, chain)


def test_old_keys_only_settle_dropped_by_a_cancel__no_reorg__its_records_settle_once_its_epoch_is_deep(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the reorg the wait ends: once G1 (epoch 1) is `reorg_window` deep, Z can never
    land; X's record goes under epoch 2, debited once, and Z is no longer read."""
    _, x_address, x_request, y, y_address, z, _ = _old_keys_only_settle_dropped_by_a_cancel(book, chain)
    new = _coordinator(book, chain, "new")
    spend(book, y, 2_007)
    assert new.run_once().confirmed == [(USDC, 1)]
    (g1,) = [tx for tx in new.store.landed_txs(0, 0, NEW_KEY) if tx.purpose == "settle"]
    chain.s.balances[(x_address, USDC)] = 10_000
    chain.next_window()
    assert new.run_once().held == {x_request}
    _mine_to(chain, (g1.block or 0) + REORG_WINDOW - 1)
    chain.next_window()
    assert new.run_once().held == {x_request}  # one block short
    chain.mine_blocks(1)
    report = new.run_once()
    assert report.held == set() and report.confirmed == [(USDC, 2)]
    assert (_debited(chain, x_address), _debited(chain, y_address)) == (1_002, 2_007)
    _books_equal_chain(book, chain)

    read: list[str] = []
    real = chain.receipt
    monkeypatch.setattr(chain, "receipt", lambda tx_hash: read.append(tx_hash) or real(tx_hash))
    chain.next_window()
    new.run_once()
    assert z.tx_hash not in read  # Z can never land: no pass reads it again (its key's nonce never final)
