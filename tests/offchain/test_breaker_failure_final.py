"""Breaking the failure-final rule (fbreak, session 8) on the fake chain: a failed batch's
record is settled again under a later epoch, or refunded, only once the failure is final
(its settle's nonce taken in a block `reorg_window` deep). Attacked: a reorg deeper than
the window, the nonce taken outside the coordinator's log, the failure re-mined in another
block, restarts and a kill mid-pass while a record waits, two failures at one epoch, the
buyer leaving meanwhile, a database whose failed batch kept no member list, and what
`usage status` says of a record that waits. The promise checked each time: no record is
debited twice on chain, and the books equal the chain (`reconcile`; `ledger.check()` by
the fixture)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from coordinator_fakes import FakeChain
from sqlalchemy import select, update
from test_breaker_refund_taken_back import _payer, failed_and_retry, x_fails_y_retried
from test_coordinator_failure_final import _coordinator, _mine_to, _waits
from test_coordinator_refund_taken_back import LOT, USDC, Branch, View, spend

from promptex.cli import main
from promptex.config import settings
from promptex.coordinator import service
from promptex.coordinator.plan import Payload
from promptex.coordinator.schema import settlement_batches
from promptex.coordinator.service import REORG_WINDOW, PassReport
from promptex.coordinator.store import ReleaseRefused
from promptex.dashboard.views import usage_record_view
from promptex.gateway.store import ApiKey
from promptex.ledger import Ledger
from promptex.protocol.escrow import KIND_LISTED
from promptex.reconcile import reconcile


def _held(report: PassReport, request_id: str) -> bool:
    return request_id in report.held and (USDC, 2) not in report.confirmed


def _debited(chain: FakeChain, address: str, funded: int = 10_000) -> int:
    return funded - chain.s.balances[(address, USDC)]


# ─── 1. A reorg deeper than the window ───────────────────────────────────────


def test_reorg_deeper_than_the_window__not_caught_by_the_coordinator__reconcile_reports_it(
    book: Ledger, chain: FakeChain
) -> None:
    """The rule's stated edge (README: the coordinator does not re-check receipts deeper
    than the window whose nonce the chain has passed). X's record waits the window, is
    settled in D at epoch 2; then a reorg DEEPER than the window orphans A's revert, C
    and D, and the network re-includes all three: A lands (X, Y), C reverts, D lands in the next
    window (X again). Nothing in the coordinator sees A (its stored receipt is below the window):
    X is debited twice on chain, once in the books, and `reconcile` says so."""
    coord = _coordinator(book, chain)
    x, x_address, x_request, _, y_address, _, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    (retry,) = coord.store.batches(USDC, "confirmed")
    reverted_in = coord.store.tx(failed.tx_id).block
    assert reverted_in is not None
    chain.next_window()
    _mine_to(chain, reverted_in + REORG_WINDOW)
    assert coord.run_once().confirmed == [(USDC, 2)]
    later = coord.store.batch(coord.store.record(x_request).batch_id)
    raws = [coord.store.tx(b.tx_id).raw for b in (failed, retry, later)]

    fork.reorg_to(chain)  # back to before A mined: deeper than the window
    for raw in raws[:2]:
        chain.broadcast(raw)
    chain.next_window()  # D in the window after A's, as it was
    chain.broadcast(raws[2])
    for _ in range(3):
        coord.run_once()

    assert _debited(chain, x_address) == 2 * 1_002 and _debited(chain, y_address) == 2_007  # X twice on chain
    assert book.balance(x, USDC).posted == 10_000 - 1_002  # once in the books
    result = reconcile(book, View(chain), agent=False)
    assert not result.ok  # found by the books' check, not by the coordinator


# ─── 2. The failed settle's nonce taken outside the coordinator's log ───────


def test_nonce_taken_by_a_tx_outside_the_log__never_final_early__final_once_a_later_tx_of_the_log_is_deep(
    book: Ledger, chain: FakeChain
) -> None:
    """An operator's manual transaction with the coordinator's key takes A's nonce (A is
    dropped), and X exits, so the retry at A's epoch is refused and X's record is
    quarantined: its refund waits for A's failure to be final. The log knows no block of
    the manual transaction, so however deep it is, it never makes A final by itself (never
    early); the coordinator's next transaction mined past A's nonce does, once it is
    `reorg_window` deep. In a market with no other settlement that is a long wait."""
    coord = _coordinator(book, chain, quarantine_refund=0)
    x, x_address = _payer(book, chain)
    x_request = spend(book, x, 1_002)
    chain.hold = True
    assert coord.run_once().waiting is not None
    chain.mempool.clear()
    chain.burn_nonce()  # the manual transaction
    chain.mine_blocks(1)
    chain.s.balances[(x_address, USDC)] = 0
    chain.hold = False
    report = coord.run_once()
    assert report.failed == [(USDC, 1)] and report.quarantined == 1 and report.confirmed == []
    chain.s.balances[(x_address, USDC)] = 10_000  # funded again: only the refund's wait is left (refund: 0 s)
    chain.mine_blocks(10 * REORG_WINDOW)
    assert _waits(coord.run_once(), x_request) and coord.store.record(x_request).status == "quarantined"

    z, _ = _payer(book, chain)  # another buyer's settlement: the log's next transaction, past A's nonce
    spend(book, z, 2_007)
    chain.next_window()
    assert coord.run_once().confirmed == [(USDC, 1)]
    (later,) = coord.store.batches(USDC, "confirmed")
    mined_in = coord.store.tx(later.tx_id).block
    assert mined_in is not None
    _mine_to(chain, mined_in + REORG_WINDOW - 1)
    assert _waits(coord.run_once(), x_request)

    chain.mine_blocks(1)

    assert coord.run_once().refunded == 1 and coord.store.record(x_request).status == "refunded"
    assert book.balance(x, USDC).posted == 10_000 and _debited(chain, x_address) == 0
    assert reconcile(book, View(chain), agent=False).differences == []


# ─── 3. The failure's block reorged away and re-mined ────────────────────────


def _reorged_and_reincluded(chain: FakeChain, fork: Branch, raws: list[str], x_address: str, *, at: int | None,
                            exit_first: bool) -> None:  # fmt: skip
    """A reorg back to `fork` (before A mined); the network re-includes `raws` (A, then C),
    X's exit first if `exit_first` (A reverts again), else not (A lands). `at`: the height
    the new branch re-includes them from (a same-height reorg), else the next blocks."""
    fork.reorg_to(chain)
    if at is not None:
        chain.block = at - 1
    if exit_first:
        chain.s.balances[(x_address, USDC)] = 0
    for raw in raws:
        chain.broadcast(raw)
    chain.s.balances[(x_address, USDC)] = 10_000 - (0 if exit_first else 1_002)  # X funded again (10,000)


def test_failed_revert_reorged_and_remined_later__the_wait_counts_from_its_new_block(
    book: Ledger, chain: FakeChain
) -> None:
    """A's revert is orphaned by a reorg 100 blocks deep (within the window) and re-mined,
    reverting again, in a later block: the stored block moves with it, and X waits until
    the NEW block is `reorg_window` deep, not the old one."""
    coord = _coordinator(book, chain)
    _, x_address, x_request, _, y_address, _, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    failed, retry, old, raws = failed_and_retry(coord)
    chain.mine_blocks(100)
    _reorged_and_reincluded(chain, fork, raws, x_address, at=None, exit_first=True)
    chain.next_window()
    assert _held(coord.run_once(), x_request)  # (C, re-included, is confirmed again)
    new = coord.store.tx(failed.tx_id).block
    assert new is not None and new > old + 100
    _mine_to(chain, old + REORG_WINDOW)  # the orphaned revert would be deep enough
    assert _waits(coord.run_once(), x_request)
    _mine_to(chain, new + REORG_WINDOW - 1)
    assert _waits(coord.run_once(), x_request)

    chain.mine_blocks(1)

    assert coord.run_once().confirmed == [(USDC, 2)]
    assert _debited(chain, x_address) == 1_002 and _debited(chain, y_address) == 2_007
    assert reconcile(book, View(chain), agent=False).differences == []


def test_same_height_reorg__the_failed_settle_now_lands_in_a_block_of_the_same_number__reattached(
    book: Ledger, chain: FakeChain
) -> None:
    """A one-block reorg whose competing block at the SAME height holds A without X's exit
    before it: A now succeeds there, C (the retry at epoch 1) reverts. The receipt's block
    number is the stored one: the outcome, not only the block, must be compared, or A stays
    failed in the books while the chain holds it, and X and Y wait and are then settled
    again under epoch 2: debited twice."""
    coord = _coordinator(book, chain)
    x, x_address, x_request, y, y_address, y_request, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    (retry,) = coord.store.batches(USDC, "confirmed")
    old = coord.store.tx(failed.tx_id).block
    raws = [coord.store.tx(b.tx_id).raw for b in (failed, retry)]
    _reorged_and_reincluded(chain, fork, raws, x_address, at=old, exit_first=False)
    now = chain.receipt(coord.store.tx(failed.tx_id).tx_hash)
    assert now is not None and (now.ok, now.block_number) == (True, old)  # same height, now ok

    for _ in range(2):
        coord.run_once()
    chain.next_window()
    chain.mine_blocks(REORG_WINDOW + 1)
    coord.run_once()

    assert _debited(chain, x_address) == 1_002 and _debited(chain, y_address) == 2_007
    assert coord.store.batch(failed.id).status == "confirmed"
    assert {coord.store.record(r).batch_id for r in (x_request, y_request)} == {failed.id}
    assert book.balance(x, USDC).posted == 8_998 and book.balance(y, USDC).posted == 10_000 - 2_007
    assert reconcile(book, View(chain), agent=False).differences == []


class _ReorgsMidPass(FakeChain):
    """A chain on which a reorg happens during a pass, after the coordinator re-checked its
    receipts: at the pass's first read of the chain's clock (`on_plan`, once)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_plan: list[Callable[[], None]] = []

    def now(self) -> int:
        while self.on_plan:
            self.on_plan.pop(0)()
        return super().now()


def test_reorg_during_a_pass_after_its_receipt_recheck__finality_read_at_the_rechecked_head(book: Ledger) -> None:
    """A's revert is one block short of `reorg_window` deep when a pass re-checks receipts
    (A canonical). Then, in the same pass, a reorg within the window orphans A's block, the
    network re-includes A (it lands) and the head moves on: should the pass read the head
    again to decide finality, A is final by its stale block and X is planned under epoch 2.
    Finality is read at the head the receipts were checked at: X waits."""
    chain = _ReorgsMidPass()
    chain.open_lot(LOT, KIND_LISTED)
    coord = _coordinator(book, chain)
    _, x_address, x_request, _, _, _, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    failed, retry, reverted_in, raws = failed_and_retry(coord)
    chain.next_window()
    _mine_to(chain, reverted_in + REORG_WINDOW - 1)
    chain.on_plan = [
        lambda: _reorged_and_reincluded(chain, fork, raws, x_address, at=None, exit_first=False),
        chain.next_window,  # the new branch grows into the next window
    ]

    report = coord.run_once()

    assert chain.on_plan == [] and chain.head() > reverted_in + REORG_WINDOW  # it happened mid-pass
    assert x_request in report.held and coord.store.record(x_request).status == "pending"
    assert _debited(chain, x_address) == 1_002  # by A, re-included; no epoch 2 batch debited it again


class _LandsMidPlan(FakeChain):
    """A chain on which the network re-includes a failed settle while the coordinator plans:
    at its first read of whether the asset is spend-only (`on_plan`, once)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_plan: list[Callable[[], None]] = []

    def is_spend_only(self, asset: str) -> bool:
        while self.on_plan:
            self.on_plan.pop(0)()
        return super().is_spend_only(asset)


def test_failed_settle_lands_while_its_epoch_is_planned_again__the_retry_keeps_that_epoch(book: Ledger) -> None:
    """A (X) reverts; in the same pass X may go again at A's epoch 1, at once. While that
    retry is planned, a reorg re-includes A (it lands at epoch 1, in a block of the
    window before). Should the plan read the vault's epoch again, the retry becomes epoch
    2 and X is debited twice; read once, the retry is refused at epoch 1 (taken) and the
    next pass gives X back to A."""
    chain = _LandsMidPlan()
    chain.open_lot(LOT, KIND_LISTED)
    coord = _coordinator(book, chain)
    x, x_address = _payer(book, chain)
    x_request = spend(book, x, 1_002)
    chain.hold = True
    assert coord.run_once().waiting is not None
    fork = Branch.of(chain)
    (failed,) = coord.store.batches(USDC)
    raw = coord.store.tx(failed.tx_id).raw
    chain.s.balances[(x_address, USDC)] = 0  # X's exit, mined first: A reverts
    chain.mine()
    chain.s.balances[(x_address, USDC)] = 10_000
    chain.hold = False

    def reorg() -> None:
        fork.reorg_to(chain)
        chain.broadcast(raw)  # A lands at epoch 1
        chain.next_window()  # (its new block in the window before the retry's)

    chain.on_plan = [reorg]
    report = coord.run_once()
    assert chain.on_plan == [] and report.failed == [(USDC, 1)]
    coord.run_once()

    assert _debited(chain, x_address) == 1_002 and chain.last_epoch(USDC) == 1
    assert coord.store.record(x_request).batch_id == failed.id and coord.store.batch(failed.id).status == "confirmed"
    assert book.balance(x, USDC).posted == 8_998
    assert reconcile(book, View(chain), agent=False).differences == []


# ─── 4. Restarted, or killed mid-pass, while a record waits ──────────────────


def test_restarted_while_a_record_waits__it_waits_to_the_same_block__not_a_window_again_nor_less(
    book: Ledger, chain: FakeChain
) -> None:
    """Nothing of the wait is in memory: a coordinator started afresh one block short of the
    window still holds X, and settles it at the very block the first one would have."""
    coord = _coordinator(book, chain)
    _, x_address, x_request, *_ = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    reverted_in = coord.store.tx(failed.tx_id).block
    assert reverted_in is not None
    chain.next_window()
    assert _waits(coord.run_once(), x_request)
    _mine_to(chain, reverted_in + REORG_WINDOW - 1)

    coord = _coordinator(book, chain)  # restarted
    assert _waits(coord.run_once(), x_request)
    chain.mine_blocks(1)
    assert _coordinator(book, chain).run_once().confirmed == [(USDC, 2)]
    assert _debited(chain, x_address) == 1_002


class _Killed(BaseException):
    """kill -9 at a crash point: nothing after it runs, nothing is rolled back but the
    database transaction in flight."""


@pytest.mark.parametrize("step", ["settle_signed", "settle_broadcast"])
def test_killed_in_the_pass_the_failure_turns_final__the_record_settled_once(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The pass in which A's failure is final plans X under epoch 2 and dies with its settle
    signed and stored, or broadcast: the restarted coordinator finishes that batch (the
    same bytes), X debited once."""
    coord = _coordinator(book, chain)
    x, x_address, x_request, *_ = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    reverted_in = coord.store.tx(failed.tx_id).block
    assert reverted_in is not None
    chain.next_window()
    _mine_to(chain, reverted_in + REORG_WINDOW)

    def kill(at: str) -> None:
        if at == step:
            raise _Killed(at)

    monkeypatch.setattr(service, "crash_point", kill)
    monkeypatch.setattr(service.txlog, "crash_point", lambda _env, at: kill(at))
    with pytest.raises(_Killed):
        coord.run_once()
    monkeypatch.undo()

    coord = _coordinator(book, chain)
    for _ in range(2):
        coord.run_once()

    assert _debited(chain, x_address) == 1_002 and chain.last_epoch(USDC) == 2
    record = coord.store.record(x_request)
    assert (record.status, record.epoch, coord.store.batch(record.batch_id).status) == ("batched", 2, "confirmed")
    assert book.balance(x, USDC).posted == 8_998
    assert reconcile(book, View(chain), agent=False).differences == []


def test_down_across_a_shallow_reorg_until_its_stale_receipts_are_past_the_window__rechecked_on_restart(
    book: Ledger, chain: FakeChain
) -> None:
    """The coordinator is down when a reorg two blocks deep (well within the window) orphans
    A's revert and C, and the new branch re-includes A one block later without X's exit (A
    lands, C reverts). It comes back 130 blocks on: the receipts it stored for A and C are
    below `head - reorg_window`, so a re-check bounded by the head alone never reads them
    again, A stays failed, final by its stale block, and X and Y are settled again under
    epoch 2: debited twice. Receipts are re-checked back to the window below the newest
    block the log has seen (the last head it checked is no lower)."""
    coord = _coordinator(book, chain)
    x, x_address, x_request, y, y_address, y_request, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    failed, retry, old, raws = failed_and_retry(coord)
    _reorged_and_reincluded(chain, fork, raws, x_address, at=old + 1, exit_first=False)
    chain.next_window()
    _mine_to(chain, old + 2 + REORG_WINDOW)

    coord = _coordinator(book, chain)  # restarted
    for _ in range(2):
        coord.run_once()
    chain.next_window()
    coord.run_once()

    assert _debited(chain, x_address) == 1_002 and _debited(chain, y_address) == 2_007
    assert coord.store.batch(failed.id).status == "confirmed"
    assert {coord.store.record(r).batch_id for r in (x_request, y_request)} == {failed.id}
    assert book.balance(x, USDC).posted == 8_998 and book.balance(y, USDC).posted == 10_000 - 2_007
    assert reconcile(book, View(chain), agent=False).differences == []


# ─── 5. Two failed batches at one epoch ──────────────────────────────────────


def test_two_failed_batches_in_a_row_at_one_epoch__each_record_waits_for_its_own_failures(
    book: Ledger, chain: FakeChain
) -> None:
    """A (X, Y, Z) reverts (X's exit); its retry C (Y, Z) at epoch 1 reverts too (Y's exit);
    C2 (Z) takes epoch 1. Funded again, X waits for A alone, Y for A and C: X settles at
    epoch 2 once A's revert is deep, Y at epoch 3 only once C's is. Each debited once."""
    coord = _coordinator(book, chain)
    (x, x_address), (y, y_address), (z, z_address) = (_payer(book, chain) for _ in range(3))
    x_request, y_request, z_request = spend(book, x, 1_002), spend(book, y, 2_007), spend(book, z, 3_012)
    chain.hold = True
    assert coord.run_once().waiting is not None  # A sent
    chain.s.balances[(x_address, USDC)] = 0
    chain.mine()  # A reverts
    report = coord.run_once()  # C sent
    assert report.failed == [(USDC, 1)] and report.waiting is not None
    chain.s.balances[(y_address, USDC)] = 0
    chain.hold = False
    chain.mine_blocks(10)
    chain.mine()  # C reverts, ten blocks after A
    report = coord.run_once()
    assert report.failed == [(USDC, 1)] and report.confirmed == [(USDC, 1)]
    assert [coord.store.record(r).status for r in (x_request, y_request)] == ["quarantined"] * 2
    first, second = coord.store.batches(USDC, "failed")
    a_in, c_in = coord.store.tx(first.tx_id).block, coord.store.tx(second.tx_id).block
    assert a_in is not None and c_in is not None and a_in < c_in
    chain.s.balances[(x_address, USDC)] = chain.s.balances[(y_address, USDC)] = 10_000
    chain.next_window()
    assert coord.run_once().held == {x_request, y_request}
    _mine_to(chain, a_in + REORG_WINDOW)
    report = coord.run_once()
    assert report.confirmed == [(USDC, 2)] and report.held == {y_request}
    chain.next_window()
    _mine_to(chain, c_in + REORG_WINDOW - 1)
    assert coord.run_once().held == {y_request}

    chain.mine_blocks(1)

    assert coord.run_once().confirmed == [(USDC, 3)]
    assert [coord.store.record(r).epoch for r in (x_request, y_request, z_request)] == [2, 3, 1]
    assert [_debited(chain, a) for a in (x_address, y_address, z_address)] == [1_002, 2_007, 3_012]
    assert reconcile(book, View(chain), agent=False).differences == []


# ─── 6. The buyer leaves while its record waits ──────────────────────────────


def test_buyer_exits_while_its_record_waits__release_leaves_the_record__then_refund_or_debit_never_both(
    book: Ledger, chain: FakeChain
) -> None:
    """X's record waits for A's failure to be final (pending). An instant exit is signed only
    for what the record leaves free; X takes it on chain. Once A is final the record is
    settled from what is left: debited once, never refunded as well."""
    coord = _coordinator(book, chain)
    x, x_address, x_request, *_ = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    reverted_in = coord.store.tx(failed.tx_id).block
    assert reverted_in is not None
    chain.next_window()
    assert _waits(coord.run_once(), x_request)
    with pytest.raises(ReleaseRefused):
        coord.sign_release(x_address, USDC, 10_000)
    release = coord.sign_release(x_address, USDC, 10_000 - 1_002)
    chain.s.balances[(x_address, USDC)] -= release.amount  # X takes it on chain
    chain.s.release_nonce[x_address] = release.nonce + 1
    _mine_to(chain, reverted_in + REORG_WINDOW)

    report = coord.run_once()

    assert report.confirmed == [(USDC, 2)] and report.refunded == 0
    assert chain.s.balances[(x_address, USDC)] == 0 and coord.store.record(x_request).status == "batched"


# ─── 7. A failed batch from before the member lists ──────────────────────────


def _forget_members(book: Ledger, batch_id: int) -> None:
    """The batch as a database from before failed batches kept their member list has it."""
    with book.engine.begin() as conn:
        payload = Payload.from_json(
            conn.execute(select(settlement_batches.c.payload).where(settlement_batches.c.id == batch_id)).scalar_one()
        )
        payload.members = []
        conn.execute(
            update(settlement_batches).where(settlement_batches.c.id == batch_id).values(payload=payload.to_json())
        )


def test_failed_batch_without_its_member_list__records_not_settled_twice(book: Ledger) -> None:
    """An upgraded database: A failed (reverted) before failed batches kept their members,
    within the window of the upgrade. Not knowing which records were A's, none of the
    asset's records may go under a later epoch (nor be refunded) until A's failure is
    final; else rbreak's finding is back (both old settles re-included: X debited twice)."""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED)
    coord = _coordinator(book, chain)
    x, x_address, x_request, _, y_address, y_request, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    failed, retry = coord.store.batches(USDC, "failed")[0], coord.store.batches(USDC, "confirmed")[0]
    _forget_members(book, failed.id)
    chain.next_window()
    assert x_request in coord.run_once().held and coord.store.record(x_request).status == "pending"

    fork.reorg_to(chain)  # the network re-includes the old bytes, in nonce order, before the coordinator acts
    for batch in (failed, retry):
        chain.broadcast(coord.store.tx(batch.tx_id).raw)
    chain.next_window()  # (on a real chain A's new block may carry an older window's timestamp)
    for _ in range(3):
        coord.run_once()
    chain.next_window()
    _mine_to(chain, chain.head() + REORG_WINDOW)
    coord.run_once()

    assert _debited(chain, x_address) == 1_002 and _debited(chain, y_address) == 2_007
    assert {coord.store.record(r).batch_id for r in (x_request, y_request)} == {failed.id}
    assert book.balance(x, USDC).posted == 8_998
    assert reconcile(book, View(chain), agent=False).differences == []


# ─── 8. What `usage status` says of a record that waits ──────────────────────


def test_usage_status_of_a_waiting_record__says_it_waits_for_its_failed_batch_to_be_final(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """X's record, pending while A's failure is not final, was said to be "waiting for the
    next settlement": it may wait ~26 minutes past it. Status now names the failed batch and
    the wait (the dashboard's Usage page too); Y's record, settled again at A's epoch, is
    unchanged. And a pass between two
    windows reported nothing held (`coordinator --once`): it does now."""
    coord = _coordinator(book, chain)
    x, _, x_request, _, _, y_request, _ = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    assert _waits(coord.run_once(), x_request)  # `held` in `coordinator --once` between windows too
    chain.next_window()
    assert _waits(coord.run_once(), x_request)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", book.engine.url.render_as_string(hide_password=False))
    settings.cache_clear()
    try:
        said = {r: CliRunner().invoke(main, ["usage", "status", r]) for r in (x_request, y_request)}
    finally:
        settings.cache_clear()

    assert [result.exit_code for result in said.values()] == [0, 0], [r.output for r in said.values()]
    assert f"waiting for the next settlement; its batch {failed.id} (epoch 1) failed" in said[x_request].output
    assert (
        f"only once that failure is final: its settle's nonce taken {REORG_WINDOW} blocks deep"
        in said[x_request].output
    )
    assert said[y_request].output.strip().endswith("settled on chain in epoch 1")
    shown = usage_record_view(book.engine, ApiKey(1, x, None, USDC, None, None, "pk"), x_request)["settlement"]
    assert shown == said[x_request].output.strip().split(" — ", 1)[1]  # the dashboard's Usage page: the same words
