"""Breaking the refund take-back (issue 20's last reorg gap) on the fake chain: a crash in
the middle of it, a failed batch of several payers (some refunded, some settled again in
the retry batch), a second refund cycle on top of a debt, and the record the chain debited
twice (settled again under a later epoch before the old settle was re-included).
Since a failed batch's records are refunded, or planned under a later epoch, only once the
failure is `reorg_window` blocks deep (`Coordinator._plannable`), each attack here is a
reorg deeper than that window (`beyond_the_window`): the take-back and the later batch let
go are the defence in depth behind the rule.
Every promise checked against the chain: the books equal it (`reconcile`), `ledger.check()`
holds (the fixture), a second pass books nothing."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from coordinator_fakes import FakeChain
from ledger_helpers import event_id, fund
from test_coordinator_refund_taken_back import (
    LOT,
    USDC,
    Branch,
    View,
    _coordinator,
    beyond_the_window,
    entries,
    reincluded,
    settle_fails_then_refunded,
    spend,
)
from test_coordinator_signed import SignedBuyer

from promptex.coordinator import store as coordinator_store
from promptex.coordinator.service import Coordinator
from promptex.coordinator.store import Batch
from promptex.ledger import AccountKind, Ledger, debts
from promptex.ledger.usage import refunds_taken_back
from promptex.protocol.escrow import KIND_LISTED
from promptex.reconcile import reconcile


def _open_debts(book: Ledger) -> list[debts.Debt]:
    with book.engine.connect() as conn:
        return debts.open_debts(conn)


def test_take_back__crash_after_the_unrefund_entry__nothing_half_written_then_retry_converges(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies inside `store.reattach` after the unrefund entry is posted and the
    record moved, before the batch is confirmed: the database transaction rolls all of it
    back (the refund stands, the batch failed, no entry, no debt); the next pass takes the
    refund back exactly once. SQLite and PostgreSQL."""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED)
    coord = _coordinator(ledger, chain)
    case = settle_fails_then_refunded(ledger, chain, coord)
    spend(ledger, case.account, 9_500)  # the refund spent: the take-back opens a debt, which must roll back too
    reincluded(chain, case)
    booked = entries(ledger)
    real = coordinator_store._usage.take_back_refund

    def dies_after(*args: object, **kwargs: object) -> bool:
        assert real(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("killed between the unrefund entry and the batch update")

    monkeypatch.setattr(coordinator_store._usage, "take_back_refund", dies_after)
    with pytest.raises(RuntimeError, match="killed"):
        coord.run_once()
    monkeypatch.undo()

    assert entries(ledger) == booked and _open_debts(ledger) == []
    assert coord.store.record(case.request_id).status == "refunded"
    assert [b.epoch for b in coord.store.batches(USDC, "failed")] == [1]
    assert ledger.balance(case.account, USDC).posted == 500
    with ledger.engine.connect() as conn:
        assert refunds_taken_back(conn) == []

    report = coord.run_once()  # the retry: the lease is still ours, the same landed settle found again

    assert report.taken_back == 1 and report.confirmed == [(USDC, 1)]
    assert coord.store.record(case.request_id).status == "batched"
    (debt,) = _open_debts(ledger)
    assert (debt.account, debt.outstanding) == (case.account, 500)
    assert ledger.balance(case.account, USDC).posted == 0
    booked = entries(ledger)
    assert coord.run_once().taken_back == 0 and entries(ledger) == booked
    assert reconcile(ledger, View(chain), agent=False).ok


def _payer(book: Ledger, chain: FakeChain, amount: int = 10_000) -> tuple[int, str]:
    account = book.create_account(AccountKind.USER).id
    address = fund(book, account, USDC, amount)
    chain.s.balances[(address, USDC)] = amount
    return account, address


class FailedAndRetry(NamedTuple):
    failed: Batch  # A: reverted at epoch 1
    retry: Batch  # C: epoch 1 again, landed
    reverted_in: int  # A's block
    raws: list[bytes]  # A's and C's signed bytes, for a branch to re-include


def failed_and_retry(coord: Coordinator) -> FailedAndRetry:
    """After `x_fails_y_retried`: the failed batch A, its retry C, A's block and both
    transactions' bytes."""
    (failed,) = coord.store.batches(USDC, "failed")
    (retry,) = coord.store.batches(USDC, "confirmed")
    reverted_in = coord.store.tx(failed.tx_id).block
    assert reverted_in is not None
    return FailedAndRetry(failed, retry, reverted_in, [coord.store.tx(b.tx_id).raw for b in (failed, retry)])


class XFailsYRetried(NamedTuple):
    x: int
    x_address: str
    x_request: str
    y: int
    y_address: str
    y_request: str
    fork: Branch


def x_fails_y_retried(
    book: Ledger, chain: FakeChain, coord: Coordinator, x_cost: int = 1_000, y_cost: int = 2_000
) -> XFailsYRetried:
    """Batch A (epoch 1) holds X's and Y's records and reverts (X's exit, mined first); in
    the same pass the retry C takes epoch 1 with Y alone (the same epoch: at once) and X's
    record is quarantined. X is then funded again on chain (10,000). `fork`: the chain as it
    stood before A mined."""
    x, x_address = _payer(book, chain)
    y, y_address = _payer(book, chain)
    x_request, y_request = spend(book, x, x_cost), spend(book, y, y_cost)
    chain.hold = True
    assert coord.run_once().waiting is not None
    fork = Branch.of(chain)
    chain.s.balances[(x_address, USDC)] = 0
    chain.hold = False
    chain.mine()
    report = coord.run_once()
    assert report.failed == [(USDC, 1)] and report.confirmed == [(USDC, 1)] and report.quarantined == 1
    (retry,) = coord.store.batches(USDC, "confirmed")
    assert (retry.epoch, coord.store.record(y_request).batch_id) == (1, retry.id)
    chain.s.balances[(x_address, USDC)] = 10_000  # X funded again on chain: the quarantine's cause is gone
    return XFailsYRetried(x, x_address, x_request, y, y_address, y_request, fork)


def test_take_back__several_payers_one_refunded_one_resettled_in_the_retry__each_debited_once(
    book: Ledger, chain: FakeChain
) -> None:
    """Batch A holds X's and Y's records; X's exit makes A revert; in the same pass the retry
    batch B (the same epoch) settles Y alone and lands, X is quarantined, then refunded.
    A reorg orphans B and A's old bytes are re-included: A holds X's and Y's records again
    (B failed, its re-sent bytes never land), X's refund is taken back, Y is not charged a
    second time, the seller is credited once for each, and the books equal the chain."""
    coord = _coordinator(book, chain)
    x, x_address = _payer(book, chain)
    y, y_address = _payer(book, chain)
    x_request, y_request = spend(book, x, 1_000), spend(book, y, 2_000)
    chain.hold = True
    assert coord.run_once().waiting is not None
    fork = Branch.of(chain)
    chain.s.balances[(x_address, USDC)] = 0  # X's instant exit, mined first
    chain.hold = False
    chain.mine()
    report = coord.run_once()
    assert report.failed == [(USDC, 1)] and report.quarantined == 1 and report.confirmed == [(USDC, 1)]
    (retry,) = coord.store.batches(USDC, "confirmed")
    assert coord.store.record(y_request).batch_id == retry.id
    with beyond_the_window(coord, {x_request}):
        assert coord.run_once().refunded == 1
    (failed,) = coord.store.batches(USDC, "failed")
    assert book.balance(x, USDC).posted == 10_000 and chain.s.claimable[(LOT, USDC)] > 0

    fork.reorg_to(chain)  # B orphaned with A's revert; A's bytes first on the new branch
    chain.broadcast(coord.store.tx(failed.tx_id).raw)
    report = coord.run_once()

    assert report.taken_back == 1 and (USDC, 1) in report.confirmed
    assert {b.id for b in coord.store.batches(USDC, "confirmed")} == {failed.id}
    assert coord.store.batch(retry.id).status == "failed"
    for request_id in (x_request, y_request):
        record = coord.store.record(request_id)
        assert (record.status, record.batch_id) == ("batched", failed.id)
    assert (book.balance(x, USDC).posted, book.balance(y, USDC).posted) == (9_000, 8_000)
    assert (chain.s.balances[(x_address, USDC)], chain.s.balances[(y_address, USDC)]) == (9_000, 8_000)
    assert _open_debts(book) == []
    result = reconcile(book, View(chain), agent=False)  # claimable: the seller credited once for each
    assert result.ok and result.differences == [], result.unexplained
    booked = entries(book)
    again = coord.run_once()
    assert (again.taken_back, again.confirmed, entries(book)) == (0, [], booked)
    assert (chain.s.balances[(x_address, USDC)], chain.s.balances[(y_address, USDC)]) == (9_000, 8_000)


def test_take_back__second_cycle_after_a_debt__the_debt_repaid_once_books_equal_the_chain(
    book: Ledger, chain: FakeChain
) -> None:
    """The refund is spent and taken back (a debt of 500); a later reorg orphans the landed
    settle and the race repeats, the spent 9,500 caught in it too: both are refunded (the
    500 debt repaid from them first, once), then the re-included settle takes back the
    record's second refund only. The payer ends where the chain has it (9,000), owing
    nothing, the first debt repaid exactly once."""
    coord = _coordinator(book, chain)
    first = settle_fails_then_refunded(book, chain, coord)
    spend(book, first.account, 9_500)
    reincluded(chain, first)
    assert coord.run_once().taken_back == 1
    (debt,) = _open_debts(book)
    assert debt.outstanding == 500

    first.fork.reorg_to(chain)  # the landed settle orphaned; re-sent, and raced again by the exit
    chain.hold = True
    assert coord.run_once().waiting is not None
    fork = Branch.of(chain)
    chain.s.balances[(first.address, USDC)] = 0
    chain.hold = False
    chain.mine()
    assert coord.run_once().failed == [(USDC, 1)]  # the later 9,500 quarantined with it: the chain has 0
    # The 9,500, in no failed batch (quarantined when the retry was planned), is refunded at once.
    with beyond_the_window(coord, {first.request_id}, refunded=1):
        assert coord.run_once().refunded == 1
    assert _open_debts(book) == [] and book.balance(first.account, USDC).posted == 10_000  # 10,500 back, 500 repaid
    fork.reorg_to(chain)
    chain.broadcast(coord.store.tx(coord.store.batches(USDC, "failed")[0].tx_id).raw)
    assert coord.run_once().taken_back == 1

    assert book.balance(first.account, USDC).posted == 9_000 == chain.s.balances[(first.address, USDC)]
    with book.engine.connect() as conn:
        (repaid,) = debts.debts_of(conn, first.account)
    assert (repaid.id, repaid.status, repaid.repaid) == (debt.id, "repaid", 500)
    assert reconcile(book, View(chain), agent=False).ok
    booked = entries(book)
    book.credit_deposit(event_id(), first.address, USDC, 700)  # nothing owed: all of it spendable
    chain.s.balances[(first.address, USDC)] += 700
    assert book.balance(first.account, USDC).posted == 9_700 and entries(book) == booked + 1
    assert coord.run_once().taken_back == 0 and entries(book) == booked + 1


def test_take_back__record_settled_again_under_a_later_epoch__old_settle_reincluded__debited_once(
    book: Ledger, chain: FakeChain
) -> None:
    """Batch A (epoch 1) holds X's and Y's records and reverts (X's exit); the retry C takes
    epoch 1 with Y alone; X is funded again on chain, its record requeued and settled in D,
    epoch 2, next window. A reorg orphans everything since A was sent and a node re-includes
    A's old bytes: the chain debited X's record in A, so A holds it again and D (not on the
    new branch) is let go, its nonce filled with a no-op. Before, D kept the record, its
    re-sent bytes reverted, the record went back to pending and was settled a third time:
    X debited twice on chain, once in the books."""
    coord = Coordinator(book.engine, chain, holder="t", clock=book.clock, tx_timeout=0, quarantine_retry=0)
    x, x_address, x_request, y, y_address, y_request, fork = x_fails_y_retried(book, chain, coord)
    (failed,) = coord.store.batches(USDC, "failed")
    chain.next_window()
    with beyond_the_window(coord, {x_request}):  # requeued: held from epoch 2 while A's failure is not final
        report = coord.run_once()
    assert (report.requeued, report.confirmed) == (0, [(USDC, 2)])
    later = coord.store.batch(coord.store.record(x_request).batch_id)
    assert later.epoch == 2

    fork.reorg_to(chain)
    chain.broadcast(coord.store.tx(failed.tx_id).raw)
    coord.run_once()
    chain.next_window()
    coord.run_once()  # the next window's settlement: nothing of X's left to settle

    x_debited = 10_000 - chain.s.balances[(x_address, USDC)]
    y_debited = 10_000 - chain.s.balances[(y_address, USDC)]
    assert (x_debited, y_debited) == (1_000, 2_000), "the chain debited a record twice"
    assert coord.store.batch(later.id).status == "failed" and chain.last_epoch(USDC) == 1
    assert {coord.store.record(r).batch_id for r in (x_request, y_request)} == {failed.id}
    assert (book.balance(x, USDC).posted, book.balance(y, USDC).posted) == (9_000, 8_000)
    result = reconcile(book, View(chain), agent=False)
    assert result.ok and result.differences == [], result.unexplained


def test_take_back__signed_batch_reincluded__its_lanes_settled_at_once_refund_taken_back(book: Ledger) -> None:
    """Signed mode: the failed `settle_signed` batch lands after all. Its record's refund is
    taken back and the lane's settled total is read from the vault in the same pass (before,
    `_reattach` left it stale until the next batch confirmed)."""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED, "USDC")
    coord = _coordinator(book, chain)
    buyer = SignedBuyer(book, chain, 10_000)
    request_id = buyer.spend(0, 300)
    chain.hold = True
    assert coord.run_once().waiting is not None
    fork = Branch.of(chain)
    chain.s.balances[(buyer.address, USDC)] = 0  # the exit first: the settle reverts
    chain.hold = False
    chain.mine()
    assert coord.run_once().failed == [(USDC, 1)]
    with beyond_the_window(coord, {request_id}):
        assert coord.run_once().refunded == 1 and book.balance(buyer.account, USDC).posted == 10_000
    fork.reorg_to(chain)
    chain.broadcast(coord.store.tx(coord.store.batches(USDC, "failed")[0].tx_id).raw)

    report = coord.run_once()

    assert report.taken_back == 1 and chain.lane_settled(buyer.address, USDC, 0) == 300
    assert book.lane(buyer.account, USDC, 1, 0).settled == 300  # what GET /v1/promptex/lanes reports
    assert coord.store.record(request_id).status == "batched"
    assert book.balance(buyer.account, USDC).posted == 9_700 == chain.s.balances[(buyer.address, USDC)]


def test_take_back__later_epoch_batch_reopened_first__old_settle_beats_its_noop__debited_once(
    ledger: Ledger, chain: FakeChain
) -> None:
    """As above, but the coordinator saw the reorg before the old settle came back: it filled
    A's nonce with a no-op and reopened C and D (submitted again, their bytes to re-send).
    Then a node includes A's old bytes in the no-op's place: A landed after all, with X's
    record, which D (epoch 2, not on the new branch) holds too. D must not be re-sent.
    SQLite and PostgreSQL."""
    coord = Coordinator(ledger.engine, chain, holder="t", clock=ledger.clock, tx_timeout=0, quarantine_retry=0)
    _, x_address, x_request, _, y_address, y_request, fork = x_fails_y_retried(ledger, chain, coord)
    (failed,) = coord.store.batches(USDC, "failed")
    chain.next_window()
    with beyond_the_window(coord, {x_request}):
        assert coord.run_once().confirmed == [(USDC, 2)]
    later = coord.store.batch(coord.store.record(x_request).batch_id)

    fork.reorg_to(chain)
    chain.hold = True  # the coordinator's no-op waits in the mempool
    assert coord.run_once().waiting is not None
    assert coord.store.batch(later.id).status == "submitted"  # reopened: its bytes to go again
    chain.mempool.clear()  # the network drops the no-op and includes A's old bytes instead
    chain.hold = False
    chain.broadcast(coord.store.tx(failed.tx_id).raw)
    for _ in range(3):
        coord.run_once()
    chain.next_window()
    coord.run_once()

    x_debited = 10_000 - chain.s.balances[(x_address, USDC)]
    y_debited = 10_000 - chain.s.balances[(y_address, USDC)]
    assert (x_debited, y_debited) == (1_000, 2_000), "the chain debited a record twice"
    assert {coord.store.record(r).batch_id for r in (x_request, y_request)} == {failed.id}
    result = reconcile(ledger, View(chain), agent=False)
    assert result.ok and result.differences == [], result.unexplained
