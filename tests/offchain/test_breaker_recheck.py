"""Breaking the coordinator's receipt re-check (cbreak2, session 8) on the fake chain: a
stored receipt is "still ours" only if the block number and the outcome match; each pass
re-checks back a window below the head it last checked at (after a restart, or a spell as
standby, below the newest block its log holds); finality of a failure is read at the head
the pass checked; a failed batch with no member list holds every record of its asset.
Attacked: another transaction at the failed settle's nonce and height with the same
outcome, a reorg that shortens the chain below the head last checked (with and without a
restart, the log's newest block orphaned), leader and standby swapping around a reorg, a
reorg within the window re-mining the failed settle after the later epoch's old block,
and a failed batch without its member list (held until final, then released). The promise
checked each time: no record is debited twice on chain, and the books equal the chain.
Every attack held. Undone, the outcome comparison fails the shortening test (both ways);
a re-check bounded by the head now fails the standby-swap and down-meanwhile tests; the
old-database hold fails the last one."""

from __future__ import annotations

import json

import pytest
from coordinator_fakes import FakeChain
from eth_utils import keccak
from test_breaker_failure_final import _debited, _forget_members, _reorged_and_reincluded
from test_breaker_refund_taken_back import _payer, failed_and_retry, x_fails_y_retried
from test_coordinator_failure_final import _coordinator, _mine_to, _waits
from test_coordinator_refund_taken_back import USDC, View, spend

from promptex.chain.sender import Receipt
from promptex.coordinator.service import REORG_WINDOW, Coordinator
from promptex.ledger import Ledger
from promptex.reconcile import reconcile


def _at(receipt: Receipt | None) -> tuple[bool, int] | None:
    """A receipt's outcome and block number (each block the fake mines has its own hash)."""
    return None if receipt is None else (receipt.ok, receipt.block_number)


def _books_equal_chain(book: Ledger, chain: FakeChain) -> None:
    assert reconcile(book, View(chain), agent=False).differences == []


def test_same_height_reorg__another_tx_takes_the_failed_nonce_with_the_same_outcome__not_called_ours(
    book: Ledger, chain: FakeChain
) -> None:
    """A (X, Y) reverted at block b (nonce 0); a reorg at the SAME height puts ANOTHER
    transaction of the key at nonce 0 in block b, reverted too (same number, same outcome),
    and C re-included as before. Receipts are read by A's hash, so A is not on chain: its
    nonce is filled (the no-op is found dropped), X waits until C (the log's next mined tx,
    past A's nonce) is deep, then is settled once at epoch 2."""
    coord = _coordinator(book, chain)
    x, x_address, x_request, _, y_address, _, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    (retry,) = coord.store.batches(USDC, "confirmed")
    old, c_block = coord.store.tx(failed.tx_id).block, coord.store.tx(retry.tx_id).block
    assert old is not None and c_block == old + 1
    fork.reorg_to(chain)
    chain.block = old - 1
    other = json.dumps({"c": "vault", "f": "something_else", "n": 0})  # an operator's tx with the key, reverted
    chain.receipts["0x" + keccak(text=other).hex()] = Receipt(False, old)
    chain.s.nonce, chain.block = 1, old
    chain.broadcast(coord.store.tx(retry.tx_id).raw)  # C again, at its old block and outcome
    assert _at(chain.receipt(coord.store.tx(retry.tx_id).tx_hash)) == (True, c_block)
    assert chain.receipt(coord.store.tx(failed.tx_id).tx_hash) is None

    chain.next_window()
    report = coord.run_once()  # C's block is another block at its old height (its hash): C confirmed again there
    assert report.held == {x_request} and report.confirmed == [(USDC, 1)] and report.refunded == 0
    _mine_to(chain, c_block + REORG_WINDOW - 1)
    assert _waits(coord.run_once(), x_request)
    chain.mine_blocks(1)
    assert coord.run_once().confirmed == [(USDC, 2)]

    assert _debited(chain, x_address) == 1_002 and _debited(chain, y_address) == 2_007
    assert book.balance(x, USDC).posted == 8_998
    _books_equal_chain(book, chain)


@pytest.mark.parametrize("restarted", [False, True], ids=["same-process", "restarted"])
def test_reorg_shortens_the_chain_below_the_head_last_checked__the_failed_settle_now_lands__reattached(
    book: Ledger, chain: FakeChain, restarted: bool
) -> None:
    """The coordinator checked at a head one block short of A's failure being final. A
    reorg then SHORTENS the chain (the head goes down to A's and C's old heights; the log's
    newest block, C's, is orphaned): the new branch has A landing at its old block number
    (no X exit before it) and C reverting. The re-check's bound must come from the lower
    head, and after a restart from the log's orphaned newest block no higher than it; the
    failure's finality is read at the new, lower head. X and Y are debited once, by A."""
    coord = _coordinator(book, chain)
    x, x_address, x_request, y, y_address, y_request, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    failed, retry, old, raws = failed_and_retry(coord)
    chain.next_window()
    _mine_to(chain, old + REORG_WINDOW - 1)
    assert _waits(coord.run_once(), x_request)

    _reorged_and_reincluded(chain, fork, raws, x_address, at=old, exit_first=False)
    assert chain.head() == old + 1 and coord.store.newest_block() == old + 1  # shorter by a window, less 2
    assert _at(chain.receipt(coord.store.tx(failed.tx_id).tx_hash)) == (True, old)
    if restarted:
        coord = _coordinator(book, chain)
    for _ in range(2):
        coord.run_once()
    chain.next_window()
    _mine_to(chain, chain.head() + REORG_WINDOW + 1)
    coord.run_once()

    assert _debited(chain, x_address) == 1_002 and _debited(chain, y_address) == 2_007
    assert coord.store.batch(failed.id).status == "confirmed"
    assert {coord.store.record(r).batch_id for r in (x_request, y_request)} == {failed.id}
    assert book.balance(x, USDC).posted == 8_998 and book.balance(y, USDC).posted == 10_000 - 2_007
    _books_equal_chain(book, chain)


def test_leader_and_standby_swap_around_a_reorg__each_rechecks_back_from_what_it_may_have_missed(
    book: Ledger, chain: FakeChain
) -> None:
    """Leader `t` checks one block short of A's failure being final; the lease goes to the
    standby `b` (which stood by, knowing no head), which leads a pass; `t`, paused, runs
    none meanwhile (it still remembers its head). Then a reorg within the window of that
    head goes back before A and re-includes it, now landing, near the old head; the chain
    runs on two windows past A's old block before anyone looks, and `t` leads again: its
    remembered head, not the head now, bounds its re-check. A is reattached, X and Y
    debited once; `b`, leading once more, undoes none of it."""
    t = _coordinator(book, chain)
    b = Coordinator(book.engine, chain, holder="b", clock=book.clock, tx_timeout=0, quarantine_retry=0)
    x, x_address, x_request, y, y_address, y_request, fork = x_fails_y_retried(book, chain, t, 1_002, 2_007)
    assert b.run_once().leader is False
    failed, retry, old, raws = failed_and_retry(t)
    chain.next_window()
    _mine_to(chain, old + REORG_WINDOW - 1)
    assert _waits(t.run_once(), x_request)

    t.store.release_lease("t")
    assert _waits(b.run_once(), x_request)  # b leads: still one block short
    b.store.release_lease("b")
    _reorged_and_reincluded(chain, fork, raws, x_address, at=old + REORG_WINDOW - 2, exit_first=False)
    _mine_to(chain, old + 3 * REORG_WINDOW)  # A's stored block, and the head t last checked at, long past the window

    for _ in range(2):
        t.run_once()
    t.store.release_lease("t")
    chain.next_window()
    b.run_once()

    assert _debited(chain, x_address) == 1_002 and _debited(chain, y_address) == 2_007
    assert t.store.batch(failed.id).status == "confirmed"
    assert {t.store.record(r).batch_id for r in (x_request, y_request)} == {failed.id}
    assert book.balance(x, USDC).posted == 8_998
    _books_equal_chain(book, chain)


def test_reorg_within_the_window_remines_the_failed_settle_after_the_later_epochs_old_block__down_meanwhile(
    book: Ledger, chain: FakeChain
) -> None:
    """A (X, Y) reverts, C retries Y at epoch 1; Z's record is settled in D at epoch 2 in
    the next window (X still waits). A reorg one block short of the window deep (from D's
    block) goes back before A: the network re-includes A (landing: X funded), C
    (reverting) and D (landing), each in a block past D's old one. The coordinator, down,
    comes back when D's OLD block is past the window (A's too) but the new ones are not:
    A is reattached, D moved, nothing planned under epoch 3 for X. Each debited once."""
    coord = _coordinator(book, chain)
    x, x_address, x_request, y, y_address, y_request, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    (retry,) = coord.store.batches(USDC, "confirmed")
    old = coord.store.tx(failed.tx_id).block
    assert old is not None
    z, z_address = _payer(book, chain)
    z_request = spend(book, z, 3_012)
    chain.next_window()
    report = coord.run_once()
    assert x_request in report.held and report.confirmed == [(USDC, 2)]
    later = coord.store.batch(coord.store.record(z_request).batch_id)
    d_old = coord.store.tx(later.tx_id).block
    assert d_old is not None and d_old > old
    raws = [coord.store.tx(bt.tx_id).raw for bt in (failed, retry, later)]

    _mine_to(chain, old + REORG_WINDOW - 2)
    chain.block = d_old + 3  # the new branch's A, C, D land past D's old block (within the window)
    _reorged_and_reincluded(chain, fork, raws[:2], x_address, at=None, exit_first=False)
    chain.next_window()  # D in the window after A's, as it was
    chain.s.balances[(z_address, USDC)] = 10_000  # Z's deposit, re-included too
    chain.broadcast(raws[2])
    receipts = [chain.receipt(coord.store.tx(bt.tx_id).tx_hash) for bt in (failed, retry, later)]
    assert [_at(r) for r in receipts] == [(True, d_old + 4), (False, d_old + 5), (True, d_old + 6)]
    _mine_to(chain, d_old + REORG_WINDOW + 1)  # D's and A's old blocks past the window; the new ones not

    coord = _coordinator(book, chain)  # restarted
    for _ in range(2):
        coord.run_once()
    chain.next_window()
    _mine_to(chain, chain.head() + REORG_WINDOW + 1)
    coord.run_once()

    assert _debited(chain, x_address) == 1_002 and _debited(chain, y_address) == 2_007
    assert _debited(chain, z_address) == 3_012 and chain.last_epoch(USDC) == 2
    assert coord.store.batch(failed.id).status == "confirmed" and coord.store.batch(later.id).status == "confirmed"
    assert {coord.store.record(r).batch_id for r in (x_request, y_request)} == {failed.id}
    assert book.balance(x, USDC).posted == 8_998
    _books_equal_chain(book, chain)


def test_failed_batch_without_member_list__holds_every_record_until_final__then_releases_them_at_that_block(
    book: Ledger, chain: FakeChain
) -> None:
    """An upgraded database's failed batch A (no member list): every USDC record waits,
    a newcomer Z's too (the price of not knowing), never early (one block short of A's
    revert being deep) and not forever: at that block X and Z are settled, each once."""
    coord = _coordinator(book, chain)
    x, x_address, x_request, _, y_address, _, _ = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    _forget_members(book, failed.id)
    old = coord.store.tx(failed.tx_id).block
    assert old is not None
    z, z_address = _payer(book, chain)
    z_request = spend(book, z, 3_012)
    chain.next_window()
    report = coord.run_once()
    assert report.held == {x_request, z_request} and report.confirmed == []
    _mine_to(chain, old + REORG_WINDOW - 1)
    assert coord.run_once().held == {x_request, z_request}
    coord = _coordinator(book, chain)  # restarted: no shorter
    assert coord.run_once().held == {x_request, z_request}

    chain.mine_blocks(1)
    report = coord.run_once()

    assert report.confirmed == [(USDC, 2)] and report.held == set()
    assert _debited(chain, x_address) == 1_002 and _debited(chain, z_address) == 3_012
    assert _debited(chain, y_address) == 2_007
    assert book.balance(x, USDC).posted == 8_998
    _books_equal_chain(book, chain)
