"""A record of a failed batch is never settled under a second epoch (nor refunded) while a
reorg can still undo the failure, on the fake chain. The vault takes an epoch once, so the
retry at the SAME epoch goes at once (of the two, at most one ever lands); under a later
epoch, or as a refund, the record waits until the failed settle's nonce was taken (by its
revert, by the no-op that replaced it, by another transaction) in a block `reorg_window`
deep: the depth past which the coordinator stops re-checking receipts.

The first test is rbreak's finding (it failed before the rule): both old settles
re-included by the network after a reorg debited a record twice on chain, once in the
books. Blocks here advance only as the tests mine them (`FakeChain.mine_blocks`)."""

from __future__ import annotations

import logging

import pytest
from coordinator_fakes import FakeChain
from test_breaker_refund_taken_back import _payer, x_fails_y_retried
from test_coordinator_refund_taken_back import LOT, USDC, View, spend

from promptex.coordinator.service import REORG_WINDOW, Coordinator, PassReport
from promptex.ledger import Ledger
from promptex.protocol.escrow import KIND_LISTED
from promptex.reconcile import reconcile


def _coordinator(book: Ledger, chain: FakeChain, **knobs: int) -> Coordinator:
    coord = Coordinator(book.engine, chain, holder="t", clock=book.clock, tx_timeout=0, quarantine_retry=0, **knobs)
    assert coord.reorg_window == REORG_WINDOW  # the default, as on a real chain: no rule weakened for tests
    return coord


def _mine_to(chain: FakeChain, head: int) -> None:
    assert head >= chain.head()
    chain.mine_blocks(head - chain.head())


def _waits(report: PassReport, request_id: str) -> bool:
    return report.held == {request_id} and report.confirmed == [] and report.refunded == 0


def test_finding__both_old_settles_reincluded__the_record_debited_once(ledger: Ledger) -> None:
    """rbreak's finding: A (X, Y) reverts, C retries epoch 1 with Y, X's record is requeued
    and was settled in D at epoch 2 in the next window; a reorg orphaned everything since A
    and the network re-included the old bytes in nonce order: A landed (X, Y debited), C
    reverted, D landed too (X debited again, the seller paid twice): the books charged X
    once, the chain twice. Now D is never planned while A's revert is within the window,
    so the re-included A debits X once and holds its record. SQLite and PostgreSQL."""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED)
    coord = _coordinator(ledger, chain)
    # List prices (cost // 3 + 1) whose seller credit at 60 % is whole (as in rbreak's finding).
    x, x_address, x_request, _, _, y_request, fork = x_fails_y_retried(ledger, chain, coord, 1_002, 2_007)
    failed, retry = coord.store.batches(USDC, "failed")[0], coord.store.batches(USDC, "confirmed")[0]
    chain.next_window()
    assert _waits(coord.run_once(), x_request)  # requeued, but not planned under epoch 2
    assert coord.store.record(x_request).status == "pending" and chain.last_epoch(USDC) == 1

    fork.reorg_to(chain)  # the network re-includes the old bytes, in nonce order, before the coordinator acts
    for batch in (failed, retry):
        chain.broadcast(coord.store.tx(batch.tx_id).raw)
    for _ in range(3):
        coord.run_once()
    chain.next_window()
    _mine_to(chain, chain.head() + REORG_WINDOW)  # and whatever follows, past the window
    coord.run_once()

    assert 10_000 - chain.s.balances[(x_address, USDC)] == 1_002  # once on chain
    assert {coord.store.record(r).batch_id for r in (x_request, y_request)} == {failed.id}
    assert coord.store.batch(failed.id).status == "confirmed" and chain.last_epoch(USDC) == 1
    assert ledger.balance(x, USDC).posted == chain.s.balances[(x_address, USDC)] == 8_998  # the books too
    result = reconcile(ledger, View(chain), agent=False)
    assert result.ok and result.differences == [], result.unexplained


def test_failed_record__under_a_later_epoch_only_once_its_revert_is_reorg_window_deep(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture
) -> None:
    """Y's record of the failed A is settled again at once at A's epoch (above); X's, requeued,
    waits at epoch 2 until A's revert is `reorg_window` blocks below the head, logged once
    at INFO however many passes it waits, then is planned and settled."""
    coord = _coordinator(book, chain)
    _, x_address, x_request, *_ = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    reverted_in = coord.store.tx(failed.tx_id).block
    assert reverted_in is not None
    chain.next_window()
    caplog.set_level(logging.INFO, logger="promptex.coordinator")
    assert _waits(coord.run_once(), x_request)
    _mine_to(chain, reverted_in + REORG_WINDOW - 1)
    assert _waits(coord.run_once(), x_request)  # one block short
    waits = [r for r in caplog.records if r.levelno == logging.INFO and f"usage {x_request} waits" in r.message]
    assert len(waits) == 1 and "epoch 2" in waits[0].message

    chain.mine_blocks(1)
    report = coord.run_once()

    assert report.held == set() and report.confirmed == [(USDC, 2)]
    record = coord.store.record(x_request)
    assert (record.status, record.epoch) == ("batched", 2)
    assert 10_000 - chain.s.balances[(x_address, USDC)] == 1_002


def test_failed_record__refund_waits_until_its_revert_is_reorg_window_deep(book: Ledger, chain: FakeChain) -> None:
    """A record quarantined out of a failed batch is not refunded while the batch could still
    land (its refund would be taken back): one block short of the window it waits."""
    coord = _coordinator(book, chain, quarantine_refund=0)
    x, x_address = _payer(book, chain)
    request_id = spend(book, x, 1_002)
    chain.hold = True
    assert coord.run_once().waiting is not None
    chain.s.balances[(x_address, USDC)] = 0
    chain.hold = False
    chain.mine()
    assert coord.run_once().failed == [(USDC, 1)]
    reverted_in = coord.store.tx(coord.store.batches(USDC, "failed")[0].tx_id).block
    assert reverted_in is not None
    _mine_to(chain, reverted_in + REORG_WINDOW - 1)
    assert _waits(coord.run_once(), request_id) and coord.store.record(request_id).status == "quarantined"

    chain.mine_blocks(1)

    assert coord.run_once().refunded == 1 and coord.store.record(request_id).status == "refunded"
    assert book.balance(x, USDC).posted == 10_000


def test_failed_settle_replaced_by_a_noop__waits_for_the_noop_to_be_deep_not_the_orphaned_revert(
    book: Ledger, chain: FakeChain
) -> None:
    """A reorg orphans A's revert (and C); the coordinator fills A's nonce with a no-op and
    re-sends C. A's failure is final only once that no-op is `reorg_window` deep: the old
    revert's depth no longer counts (it is not on the chain)."""
    coord = _coordinator(book, chain)
    _, _, x_request, _, _, _, fork = x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    (failed,) = coord.store.batches(USDC, "failed")
    old_revert = coord.store.tx(failed.tx_id).block
    assert old_revert is not None
    fork.reorg_to(chain)
    coord.run_once()  # the no-op takes A's nonce; C's bytes land again
    (noop,) = [tx for tx in coord.store.landed_txs(0, 0) if tx.purpose == "noop"]
    assert noop.nonce == coord.store.tx(failed.tx_id).nonce and noop.block is not None and noop.block > old_revert
    chain.next_window()
    _mine_to(chain, noop.block + REORG_WINDOW - 1)  # the orphaned revert would have been deep enough
    assert _waits(coord.run_once(), x_request)

    chain.mine_blocks(1)

    assert coord.run_once().confirmed == [(USDC, 2)] and coord.store.record(x_request).epoch == 2


def test_dropped_settle__its_records_retried_at_the_same_epoch_at_once(book: Ledger, chain: FakeChain) -> None:
    """Another transaction of the key takes the settle's nonce: the batch fails (dropped) and
    its records are planned again at its epoch in the same pass, no block mined."""
    coord = _coordinator(book, chain)
    x, _ = _payer(book, chain)
    request_id = spend(book, x, 1_002)
    chain.hold = True
    assert coord.run_once().waiting is not None
    chain.mempool.clear()
    chain.burn_nonce()
    chain.hold = False

    report = coord.run_once()

    assert report.failed == [(USDC, 1)] and report.confirmed == [(USDC, 1)] and report.held == set()
    record = coord.store.record(request_id)
    assert (record.status, record.epoch) == ("batched", 1) and coord.store.batch(record.batch_id).status == "confirmed"
