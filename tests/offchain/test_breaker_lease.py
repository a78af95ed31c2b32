"""Breaking the coordinator's leader lease with a long pass (lease, session 9), on the fake
chain with a clock the test moves: the lease (30 s) was taken only at a pass's start, while
one pass waits up to `tx_timeout` (120 s) for a single transaction. Found: a leader waiting
on its settle lost the lease at 30 s and the standby ran its own pass during the wait; a
leader stopped (SIGSTOP) past its lease, resumed, went on planning, signing and sending
beside the standby ("two coordinators never post together" did not hold). rbreak's fix
(4ff0be1, landed meanwhile) checks the lease before each signed transaction and planned
batch: a check, then an act, which a stop between the two defeats (the fourth test), and no
renewal while a receipt is waited for (the first). Now, besides: a pass renews the lease
before each broadcast and between slices of a wait, and every database transaction of a
pass first reads the lease row, locked, and raises LeaseLost once it ran out: a step after
that writes nothing and sends nothing new. SQLite and PostgreSQL (the row FOR UPDATE; taking
the lease gives up after a lock timeout rather than wait on a stopped leader)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest
from coordinator_fakes import FakeChain
from eth_utils.crypto import keccak
from sqlalchemy import select
from test_breaker_refund_taken_back import _payer
from test_coordinator_refund_taken_back import LOT, USDC, spend

from fixtures.ledger import Clock
from promptex.chain.sender import Call, Receipt, SignedTx
from promptex.coordinator.schema import coordinator_txs, settlement_batches, spend_cap_submissions
from promptex.coordinator.service import Coordinator
from promptex.ledger import Ledger
from promptex.ledger.schema import usage_records
from promptex.protocol.escrow import KIND_LISTED

LEASE = 30  # the default lease_seconds
TX_TIMEOUT = 120  # the default tx_timeout


class SlowChain(FakeChain):
    """A node on which waiting for a receipt takes the time it is given: the test's clock
    moves by the wait's timeout (unless the receipt is there already), and `during`, when
    set, runs inside the wait (what other processes do meanwhile; not re-entered)."""

    def __init__(self, advance: Callable[[int], None]) -> None:
        super().__init__()
        self.advance = advance
        self.during: Callable[[float], None] | None = None

    def wait(self, tx_hash: str, timeout: float) -> Receipt | None:
        if tx_hash in self.receipts:
            return self.receipts[tx_hash]
        self.advance(math.ceil(timeout))
        during, self.during = self.during, None
        try:
            if during is not None:
                during(timeout)
        finally:
            self.during = during if self.during is None else self.during
        return self.receipts.get(tx_hash)


@pytest.fixture
def chain(clock: Clock) -> SlowChain:
    fake = SlowChain(clock.advance)
    fake.open_lot(LOT, KIND_LISTED)
    return fake


def _coordinator(book: Ledger, chain: FakeChain, holder: str) -> Coordinator:
    coord = Coordinator(book.engine, chain, holder=holder, clock=book.clock, quarantine_retry=0)
    assert (coord.lease_seconds, coord.tx_timeout) == (LEASE, TX_TIMEOUT)  # the defaults: nothing weakened
    return coord


def _rows(book: Ledger) -> list[Any]:
    """What the coordinator's pass writes: batches, signed transactions, usage records, caps."""
    with book.engine.connect() as conn:
        return [
            [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key.columns)).all()]
            for table in (settlement_batches, coordinator_txs, usage_records, spend_cap_submissions)
        ]


def test_leader_waits_on_its_settle_longer_than_the_lease__the_standby_never_leads_meanwhile(
    ledger: Ledger, chain: SlowChain
) -> None:
    """The leader's settle sits in the mempool for 100 s (within tx_timeout). Before, its one
    120 s wait let the lease lapse at 30 s: the standby took it and ran a pass beside it (it
    re-sent the settle and waited too). Now the leader, alive and waiting, keeps the lease:
    each time the standby tries (every slice of the wait) it stands by; the leader confirms."""
    t, b = _coordinator(ledger, chain, "t"), _coordinator(ledger, chain, "b")
    x, x_address = _payer(ledger, chain)
    spend(ledger, x, 1_002)
    waited: list[float] = []
    standby: list[bool] = []

    def during(timeout: float) -> None:
        waited.append(timeout)
        standby.append(b.run_once().leader)
        if sum(waited) >= 100:
            chain.hold = False
            chain.mine()

    chain.hold = True
    chain.during = during
    report = t.run_once()

    assert sum(waited) >= 100 > 3 * LEASE
    assert standby and not any(standby), f"the standby led during the leader's wait: {standby}"
    assert report.leader and report.confirmed == [(USDC, 1)]
    assert chain.s.settlements == [(USDC, 1)] and chain.s.balances[(x_address, USDC)] == 10_000 - 1_002


def test_leader_paused_past_its_lease__the_standby_leads__resumed_it_writes_and_sends_nothing(
    ledger: Ledger, chain: SlowChain, clock: Clock
) -> None:
    """The leader registers a spend cap; its process is stopped (SIGSTOP) during the wait for
    2 minutes. The standby takes the lease, finishes the cap and settles X at epoch 1. Then Y
    spends, a new window opens, and the leader is resumed. Before, its pass went on: it
    planned Y at epoch 2, signed and sent it while the standby held the lease. Now its next
    step finds the lease gone: the pass ends (not leader), nothing written, nothing sent;
    the standby, leading, settles Y once."""
    t, b = _coordinator(ledger, chain, "t"), _coordinator(ledger, chain, "b")
    x, x_address = _payer(ledger, chain)
    y, y_address = _payer(ledger, chain)
    t.submit_spend_cap(x_address, USDC, 2**256 - 1, 10**9, chain.now() + 86_400, 0, b"sig")
    spend(ledger, x, 1_002)
    seen: dict[str, Any] = {}

    def stopped(_timeout: float) -> None:
        clock.advance(2 * 60)  # SIGSTOP … SIGCONT
        chain.hold = False
        led = b.run_once()
        assert led.leader and led.caps == 1 and led.confirmed == [(USDC, 1)]
        spend(ledger, y, 2_007)
        chain.next_window()
        seen.update(rows=_rows(ledger), sent=list(chain.sent))

    chain.hold = True
    chain.during = stopped
    report = t.run_once()

    assert seen, "the leader's pass never waited"
    assert chain.sent == seen["sent"], "the leader sent after the standby took the lease"
    assert _rows(ledger) == seen["rows"], "the leader wrote after the standby took the lease"
    assert not report.leader and report.confirmed == [] and report.waiting is not None
    assert "lease" in report.waiting
    assert not t.run_once().leader  # the standby holds it
    assert b.run_once().confirmed == [(USDC, 2)]
    assert chain.s.settlements == [(USDC, 1), (USDC, 2)]
    assert chain.s.balances[(y_address, USDC)] == 10_000 - 2_007


def test_leader_paused_past_its_lease__no_one_took_it__resumed_it_writes_nothing__its_next_pass_finishes(
    ledger: Ledger,
    chain: SlowChain,
    clock: Clock,
) -> None:
    """A lease that ran out is lost, taken by another or not (rbreak's rule, 4ff0be1): a
    leader stopped past it with no standby running writes nothing once resumed (before,
    its pass closed the transaction and confirmed the batch on an expired lease), and the
    next pass takes the lease again and confirms the batch, once."""
    t = _coordinator(ledger, chain, "t")
    x, x_address = _payer(ledger, chain)
    spend(ledger, x, 1_002)
    seen: dict[str, Any] = {}

    def stopped(_timeout: float) -> None:
        clock.advance(10 * 60)
        chain.hold = False
        chain.mine()
        seen.update(rows=_rows(ledger), sent=list(chain.sent))

    chain.hold = True
    chain.during = stopped
    report = t.run_once()

    assert seen and _rows(ledger) == seen["rows"] and chain.sent == seen["sent"]
    assert not report.leader and report.confirmed == [] and "lease" in (report.waiting or "")
    report = t.run_once()
    assert report.leader and report.confirmed == [(USDC, 1)] and report.waiting is None
    assert chain.s.settlements == [(USDC, 1)] and chain.s.balances[(x_address, USDC)] == 10_000 - 1_002


def test_leader_stopped_between_its_lease_check_and_signing__resumed_it_stores_and_sends_nothing(
    ledger: Ledger,
    chain: SlowChain,
    clock: Clock,
) -> None:
    """The check before each signed transaction (`_hold_lease`, 4ff0be1) is a check, then
    an act: a leader stopped (SIGSTOP) right after it, in the middle of signing a spend cap's
    registration, for 2 minutes: the standby takes the lease, registers the cap with its own
    transaction (signed at the same nonce, with its own fees) and settles X. Resumed, the
    leader stored its signed cap transaction and sent it, on a lease another held (its nonce
    was taken: dropped). Now its store is fenced: the transaction is never stored, never
    sent; its pass stops there."""
    t, b = _coordinator(ledger, chain, "t"), _coordinator(ledger, chain, "b")
    x, x_address = _payer(ledger, chain)
    t.submit_spend_cap(x_address, USDC, 2**256 - 1, 10**9, chain.now() + 86_400, 0, b"sig")
    spend(ledger, x, 1_002)
    seen: dict[str, Any] = {}
    sign = chain.sign

    def stopped_in_sign(call: Call, nonce: int) -> SignedTx:
        signed = sign(call, nonce)
        if seen:  # the standby signs at another moment: other fees, other bytes
            raw = json.dumps({**json.loads(signed.raw), "fee": 2})
            return SignedTx("0x" + keccak(text=raw).hex(), raw, nonce)
        seen["stopped"] = True
        clock.advance(2 * 60)  # SIGSTOP … SIGCONT
        led = b.run_once()
        assert led.leader and led.caps == 1 and led.confirmed == [(USDC, 1)]
        seen.update(rows=_rows(ledger), sent=list(chain.sent))
        return signed

    chain.sign = stopped_in_sign  # type: ignore[method-assign]
    report = t.run_once()

    assert seen, "the leader never signed"
    assert chain.sent == seen["sent"], "the leader sent after the standby took the lease"
    assert _rows(ledger) == seen["rows"], "the leader wrote after the standby took the lease"
    assert not report.leader and "lease" in (report.waiting or "")
    assert chain.s.caps == [(x_address, USDC, 10**9)] and chain.s.settlements == [(USDC, 1)]


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_leader_stopped_inside_a_transaction_of_its_pass__the_standby_stands_by_instead_of_hanging(
    ledger: Ledger, chain: SlowChain, clock: Clock
) -> None:
    """The fence holds the lease row (FOR UPDATE) for the length of each of the pass's
    transactions. A leader stopped inside one (SIGSTOP) would keep it locked for as long as
    it is stopped: the standby's take of the lease waited on the row for good (its pass
    hung). Now it gives up after a short lock timeout and stands by: a leader inside a
    transaction still holds the lease. (On SQLite a writer stopped inside its transaction
    holds the database's one write lock: every writer waits, as before.)"""
    t, b = _coordinator(ledger, chain, "t"), _coordinator(ledger, chain, "b")
    assert t.run_once().leader
    answers: list[bool] = []
    with t.store.fenced("t", LEASE), t.store._tx():  # t stopped inside a transaction
        clock.advance(10 * LEASE)
        standby = threading.Thread(target=lambda: answers.append(b.run_once().leader), daemon=True)
        standby.start()
        standby.join(timeout=30)
    standby.join()
    assert answers == [False]
    assert b.run_once().leader  # t resumed, its transaction ended, its lease long expired: b takes it
