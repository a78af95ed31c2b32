"""Attacks on the key budget's give-back mark (`limits.BUDGET_BACK`, bd6054f) and the late-answer
horizon it guards (issue 22; session 8, mbreak). The promises: a key's requests are never
charged more than its budget whatever the order of reserve, sweep, trim and late settle and
whatever two processes' clocks say (within a day); no budget stays taken forever; a refused
late answer charges nothing and leaves the books consistent (`Ledger.check`, run at close).
Holds with limits or a key budget carry an extra, so neither fast path (SQLite, PostgreSQL)
takes them: the general path is the one attacked, on both databases (two ledgers on one
database act as two processes)."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Connection, select, text

from promptex.gateway import limits
from promptex.gateway.limits import LateAnswerRefused, Plan
from promptex.gateway.schema import limit_takes
from promptex.ledger import UsageRecord
from promptex.ledger.models import Hold, HoldStatus
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import Fake, Harness
from .test_limits import HOLD, LATE, NOW, TOKENS, _budget_takes, _Late

USAGE = UsageRecord("m", 40, 60, 0)
DAY = limits.BUDGET_BACK_KEPT
_WAITING = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"


def _marks(t: _Late) -> list[tuple[str, int]]:
    with t.book.engine.connect() as conn:
        rows = conn.execute(select(limit_takes).where(limit_takes.c.kind == limits.BUDGET_BACK)).all()
    return sorted((r.request_id, int(r.window_start)) for r in rows)


def _skewed(t: _Late, i: int, by: int) -> None:
    """Ledger `i`'s process: its clock `by` seconds from the shared one (negative: behind)."""
    skewed = lambda: t.clock[0] + by  # noqa: E731
    t.books[i].clock = skewed
    t.counters[i].clock = skewed


def _wait_until_blocked(t: _Late, running: Any) -> None:
    """Until some transaction of this database waits on a row lock (PostgreSQL)."""
    waited = time.monotonic() + 30
    with t.book.engine.connect() as conn:
        while not conn.execute(text(_WAITING)).scalar_one():
            conn.rollback()  # a new snapshot of the activity view
            assert time.monotonic() < waited and not running.done(), "it never waited on a lock"


# ─── 2 and 4: a trim ahead commits its give-back while a late settle behind waits ──────


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_mark__trim_ahead_gives_back_while_late_settle_behind_waits_on_the_take__refused_no_overshoot(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trim on a process 2 s ahead locks the expired hold's budget take, marks it and
    deletes it; meanwhile the late answer's settle, on a process still before the horizon,
    waits for that take's lock. When the trim commits the settle's locking read finds the
    take gone — and, its snapshot older than the trim's commit, no mark either — so its own
    clock alone decides. Must still be refused: the budget went back and was spent again."""
    t = _Late(ledger_url, cost=10 * HOLD, books=2, budget=2 * HOLD, room=4)
    t.plan = Plan([], TOKENS, t.key.id)  # the key's budget alone
    _skewed(t, 1, -2)
    gave_back, go = threading.Event(), threading.Event()
    real_past_horizon = limits._past_horizon

    def held_past_horizon(conn: Connection, now: int) -> None:
        real_past_horizon(conn, now)  # the take locked, marked and deleted; not yet committed
        gave_back.set()
        assert go.wait(30)

    monkeypatch.setattr(limits, "_past_horizon", held_past_horizon)
    try:
        t.reserve("a")  # made at NOW: its horizon NOW + LATE
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        t.clock[0] = NOW + LATE + 1  # the trimming process: past the horizon; the settling one: before it
        with ThreadPoolExecutor(2) as pool:
            trim = pool.submit(limits.trim, t.book.engine, t.clock[0])
            assert gave_back.wait(30)
            settle = pool.submit(t.books[1].holds.settle, "a", HOLD, record=USAGE)
            _wait_until_blocked(t, settle)
            go.set()
            trim.result()
            with pytest.raises(LateAnswerRefused):
                settle.result()
        monkeypatch.setattr(limits, "_past_horizon", real_past_horizon)
        assert t.budget_left() == 2 * HOLD and t.charged() == 0  # given back once, nothing charged
        assert _marks(t) == [("a", NOW + LATE + 1 + DAY)]  # the mark stays for the next late answer
        t.reserve("b")
        t.reserve("c")  # the budget admits its whole again
        t.books[0].holds.settle("b", HOLD)
        t.books[0].holds.settle("c", HOLD)
        assert t.charged() == 2 * HOLD and t.budget_left() == 0
    finally:
        go.set()
        t.close()


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_mark__sweep_ahead_gives_back_while_late_settle_behind_waits_on_the_hold__refused(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race through a sweep: a process ahead sweeps the hold after its horizon
    (its budget back at once, a mark left) while the late answer's settle, behind, waits
    for the hold's row. It reads the hold again once the sweep commits (expired: late), and
    its read of the takes starts after that commit: it finds the mark, refused."""
    t = _Late(ledger_url, cost=10 * HOLD, books=2, budget=2 * HOLD, room=4)
    _skewed(t, 1, -2)
    gave_back, go = threading.Event(), threading.Event()
    real_give_back = t.counters[0].give_back

    def held_give_back(conn: Connection, hold: Any) -> None:
        real_give_back(conn, hold)
        gave_back.set()
        assert go.wait(30)

    t.counters[0].give_back = held_give_back  # type: ignore[method-assign]
    try:
        t.reserve("a")  # made at NOW, expires at NOW + 10: its horizon NOW + LATE
        t.clock[0] = NOW + LATE + 1  # no sweep ran until now (ahead); behind: 1 s before the horizon
        with ThreadPoolExecutor(2) as pool:
            sweep = pool.submit(t.books[0].holds.sweep)
            assert gave_back.wait(30)
            settle = pool.submit(t.books[1].holds.settle, "a", HOLD, record=USAGE)
            _wait_until_blocked(t, settle)
            go.set()
            assert sweep.result() == 1
            with pytest.raises(LateAnswerRefused):
                settle.result()
        assert t.budget_left() == 2 * HOLD and t.charged() == 0 and _budget_takes(t) == []
        assert _marks(t) == [("a", NOW + LATE + 1 + DAY)]
    finally:
        go.set()
        t.close()


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_mark__two_trimmers_past_the_horizon_at_once__each_budget_back_once_no_deadlock(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes trim at once, both past four expired holds' horizons: the first holds
    the takes (and the ended minute's counters) it gives back; the second waits for those
    counters, then finds every take given back — nothing twice, one mark each."""
    n = 4
    t = _Late(ledger_url, cost=10 * HOLD, books=2, budget=n * HOLD, room=n)
    first, gave_back, go = threading.Lock(), threading.Event(), threading.Event()
    real_past_horizon = limits._past_horizon

    def held_past_horizon(conn: Connection, now: int) -> None:
        real_past_horizon(conn, now)
        if first.acquire(blocking=False):  # the first trimmer only: held before it commits
            gave_back.set()
            assert go.wait(30)

    monkeypatch.setattr(limits, "_past_horizon", held_past_horizon)
    try:
        for i in range(n):
            t.reserve(f"r{i}", i=i % 2)
        t.clock[0] += 11
        assert t.books[1].holds.sweep() == n
        assert t.budget_left() == 0
        t.clock[0] = NOW + LATE + 1
        with ThreadPoolExecutor(2) as pool:
            one = pool.submit(limits.trim, t.books[0].engine, t.clock[0])
            assert gave_back.wait(30)
            other = pool.submit(limits.trim, t.books[1].engine, t.clock[0])
            _wait_until_blocked(t, other)  # on the minute counters the first deleted
            go.set()
            one.result(timeout=30)
            other.result(timeout=30)
        assert t.budget_left() == n * HOLD and _budget_takes(t) == []
        assert [m[0] for m in _marks(t)] == [f"r{i}" for i in range(n)]
        for i in range(n):
            with pytest.raises(LateAnswerRefused):
                t.books[i % 2].holds.settle(f"r{i}", HOLD, record=USAGE)
        assert t.charged() == 0
    finally:
        go.set()
        t.close()


# ─── 1 and 3: the mark's lifetime, and what it is keyed by ───────────────────


def test_mark__trimmer_days_ahead__retry_with_the_same_request_id__mark_outlived__all_refused_nothing_twice(
    ledger_url: str,
) -> None:
    """The mark is keyed by the request id, which a hold never gives up (holds are never
    deleted: the id cannot be recycled). A trimmer two days ahead gives the budget back and
    marks it for a day of ITS clock; a late answer on the right clock, well before the
    horizon, is refused by the mark. A retry with the same request id gets the expired hold
    back and takes nothing. Trims on the right clock leave the mark while it is young, and
    once it is gone the late answer is past its horizon on any clock within a day: refused.
    A hold renewed many times and swept after its horizon: back at once, refused the same."""
    t = _Late(ledger_url, cost=10 * HOLD, budget=2 * HOLD, room=4)
    t.plan = Plan([], TOKENS, t.key.id)
    ahead = NOW + 2 * DAY
    try:
        t.reserve("a")  # made at NOW: its horizon NOW + LATE
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        limits.trim(t.book.engine, ahead)  # a process two days ahead
        assert t.budget_left() == 2 * HOLD and _marks(t) == [("a", ahead + DAY)]
        with pytest.raises(LateAnswerRefused):
            t.books[0].holds.settle("a", HOLD, record=USAGE)  # the right clock: NOW + 11
        t.reserve("a")  # an idempotent retry: the expired hold, nothing taken
        assert t.budget_left() == 2 * HOLD and _budget_takes(t) == []
        with pytest.raises(LateAnswerRefused):
            t.books[0].holds.settle("a", HOLD // 2, record=USAGE)
        t.clock[0] = NOW + LATE + 1
        limits.trim(t.book.engine, t.clock[0])
        assert t.budget_left() == 2 * HOLD and len(_marks(t)) == 1  # nothing back twice, the mark kept
        t.clock[0] = ahead + DAY + 1
        limits.trim(t.book.engine, t.clock[0])
        assert _marks(t) == []
        with pytest.raises(LateAnswerRefused):
            t.books[0].holds.settle("a", HOLD, record=USAGE)
        # Renewed every few minutes for an hour, then its process dies: swept after its horizon.
        t.reserve("r")
        made = t.clock[0]
        for _ in range(12):
            t.clock[0] += 300
            assert t.books[0].holds.extend(["r"], 310) == 1
        t.clock[0] += 311
        assert t.books[0].holds.sweep() == 1
        assert t.budget_left() == 2 * HOLD and _marks(t) == [("r", t.clock[0] + DAY)]
        t.clock[0] += DAY + 1
        limits.trim(t.book.engine, t.clock[0])
        assert _marks(t) == [] and t.clock[0] > made + LATE + DAY
        with pytest.raises(LateAnswerRefused):
            t.books[0].holds.settle("r", HOLD, record=USAGE)
        assert t.charged() == 0 and t.budget_left() == 2 * HOLD and t.takes() == []
    finally:
        t.close()


# ─── 7: marks under a flood of expired holds ─────────────────────────────────


def test_mark__flood_of_expired_holds__given_back_in_batches__every_mark_ends_a_day_on(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More expired holds past their horizon than one trim gives back: each trim gives a
    batch back (the rest wait, still taken, for the next), one mark each; a day on every
    mark is deleted in one trim — the rows never outgrow a day of expired requests."""
    n = 5
    monkeypatch.setattr(limits, "TRIM_BATCH", 2)
    t = _Late(ledger_url, cost=10 * HOLD, budget=n * HOLD, room=n)
    t.plan = Plan([], TOKENS, t.key.id)
    try:
        for i in range(n):
            t.reserve(f"r{i}")
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == n
        t.clock[0] = NOW + LATE + 1
        back = []
        for _ in range(3):
            limits.trim(t.book.engine, t.clock[0])
            back.append(t.budget_left())
        assert back == [2 * HOLD, 4 * HOLD, 5 * HOLD] and len(_marks(t)) == n and _budget_takes(t) == []
        t.clock[0] += DAY + 1
        limits.trim(t.book.engine, t.clock[0])
        assert t.takes() == [] and t.charged() == 0
    finally:
        t.close()


# ─── 5: the client leaves while its request's reserve runs ───────────────────


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_mark__client_disconnects_while_its_reserve_runs__hold_ended_at_once__budget_not_kept(
    gw: Harness, fake: Fake, stream: bool
) -> None:
    """A budgeted key's request whose client closes the connection while its hold is being
    made (the reserve runs on a ledger thread, shielded: it completes). The gateway goes on:
    a stream sees the disconnect once it starts and is cut short (charged what was served,
    the rest of its budget back); a plain request is answered and settled. Either way its
    hold ends at once — not left active, renewed by the gateway as in flight (that would
    hold the key's budget for as long as the process lives), nor left to expire."""
    gw.add_lot(fake)
    budget = 10 * USDC
    account, _ = gw.buyer()
    key, record = gw.api_key(account, budget=("USDC", budget))
    counters = gw.gateway.counters
    real_take, made, go = counters.take, [], threading.Event()

    def held_take(conn: Connection, hold: Hold, amount: int) -> None:
        real_take(conn, hold, amount)
        made.append(hold.request_id)
        assert go.wait(30)

    counters.take = held_take  # type: ignore[method-assign]
    host, port = gw.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    )
    try:
        with socket.create_connection((host, int(port)), timeout=30) as client:
            client.sendall(request.encode())
            waited = time.monotonic() + 30
            while not made:  # the reserve is running: the hold made, its transaction open
                assert time.monotonic() < waited, "the reserve never ran"
                time.sleep(0.01)
        go.set()  # the client has gone; the reserve completes
        hold = gw.ledger.hold(made[0])
        waited = time.monotonic() + 30
        while hold is None or hold.status == HoldStatus.ACTIVE:
            assert time.monotonic() < waited, f"the hold stays {hold and hold.status}"
            time.sleep(0.01)
            hold = gw.ledger.hold(made[0])
    finally:
        go.set()
        counters.take = real_take  # type: ignore[method-assign]
    assert hold.status in (HoldStatus.SETTLED, HoldStatus.RELEASED)
    assert made[0] not in gw.gateway.holding  # not renewed as a request in flight
    charged = hold.charged or 0
    left = gw.store.key_by_id(record.id)
    assert left is not None and left.budget_remaining == budget - charged
    assert gw.ledger.balance(account, "USDC").held == 0
