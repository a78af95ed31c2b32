"""Attacks on the late-answer horizon of a key's budget (issue 22; session 7, bbreak): a
key's requests never charged beyond its budget, every take row ending, a refused late
answer charging nothing — whatever the order of reserve, renewal, sweep, trim and late
settle, on SQLite and on PostgreSQL (two ledgers on one database: as two processes).
Holds with limits or a key budget never take the SQLite or PostgreSQL fast paths (they
carry an extra), so the general path is the one attacked."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Connection, select, text

from promptex.gateway import limits
from promptex.gateway.limits import KeyBudgetExceeded, LateAnswerRefused, Limits, Plan
from promptex.gateway.schema import limit_takes
from promptex.ledger import UsageRecord

from .test_limits import HOLD, LATE, NOW, TOKENS, _budget_takes, _Late

USAGE = UsageRecord("m", 40, 60, 0)


def test_horizon__key_with_rate_and_cost_limits_only__refused_late_answer_leaves_all_consistent(
    ledger_url: str,
) -> None:
    """No budget: the late settle finds no budget take to lock and is refused on the clock
    alone; the cost and tokens it kept stay until their windows end (and trim's grace after
    them), then every row ends."""
    t = _Late(ledger_url, cost=10 * HOLD, room=4)
    t.plan = Plan(t.plan.limits, TOKENS, None)  # rate, tokens, in-flight and cost limits; no budget
    try:
        t.reserve("a")
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        t.clock[0] = NOW + LATE + 1
        limits.trim(t.book.engine, t.clock[0])
        with pytest.raises(LateAnswerRefused):
            t.books[0].holds.settle("a", HOLD, record=USAGE)
        assert t.charged() == 0 and t.used("concurrent") == [0] * 3
        assert t.used() == [HOLD] * 3  # its cost window (the hour) still counts what it might have been
        assert t.books[0].holds.release("a").status.value == "expired"
        t.book.check()
        t.clock[0] = NOW + 3_600 + 5 + limits.WINDOW_KEPT_SECONDS  # the hour and its grace over: its rows end
        limits.trim(t.book.engine, t.clock[0])
        assert t.takes() == [] and t.used() == [0] * 3
    finally:
        t.close()


def test_horizon__renewed_hold__active_past_the_horizon_settles__expired_past_it_gives_back_at_once(
    ledger_url: str,
) -> None:
    """The running process renews a hold in flight (`extend`): while active its budget
    take is not an expired one's (trim leaves it at any time) and its settle is not late;
    renewed past the horizon then swept, its budget comes back at the sweep and its late
    answer is refused. Never more charged than the budget."""
    t = _Late(ledger_url, cost=10 * HOLD, budget=2 * HOLD, room=4)
    try:
        t.reserve("a")  # made at NOW, horizon NOW + LATE
        t.clock[0] = NOW + 5
        assert t.books[0].holds.extend(["a"], LATE + 100) == 1  # renewed beyond its horizon
        t.clock[0] = NOW + LATE + 50
        limits.trim(t.book.engine, t.clock[0])
        assert t.budget_left() == HOLD and _budget_takes(t) == [("a", HOLD, 0)]  # active: kept
        assert t.books[0].holds.sweep() == 0
        t.books[0].holds.settle("a", HOLD // 2, record=USAGE)  # active: settled, not late
        assert t.budget_left() == 2 * HOLD - HOLD // 2 and _budget_takes(t) == []
        t.reserve("b")  # made at NOW + LATE + 50
        made = t.clock[0]
        assert t.books[0].holds.extend(["b"], LATE + 20) == 1
        t.clock[0] = made + LATE + 21  # expired after its horizon: swept, its budget back at once
        assert t.books[0].holds.sweep() == 1
        assert t.budget_left() == 2 * HOLD - HOLD // 2 and _budget_takes(t) == []
        with pytest.raises(LateAnswerRefused):
            t.books[0].holds.settle("b", HOLD, record=USAGE)
        t.reserve("c", HOLD + HOLD // 2)  # all that is left
        with pytest.raises(KeyBudgetExceeded):
            t.reserve("d", 1)
        t.books[0].holds.settle("c", HOLD + HOLD // 2)
        assert t.charged() == 2 * HOLD and t.budget_left() == 0
    finally:
        t.close()


def test_horizon__trim_and_late_settles_race_at_the_horizon__no_deadlock_no_lost_give_back(ledger_url: str) -> None:
    """Ten expired holds whose horizons straddle the clock; one ledger trims over and over
    and reserves what comes back while the other settles every late answer whole: those
    past their horizon refused, the others charged; every give-back lands once, no
    deadlock (PostgreSQL would raise one), the budget exactly what is left."""
    n = 10
    t = _Late(ledger_url, cost=100 * HOLD, books=2, budget=n * HOLD, room=4 * n)
    t.plan = Plan([], TOKENS, t.key.id)  # the key's budget alone
    try:
        for i in range(n):
            t.clock[0] = NOW + i
            t.reserve(f"r{i}", i=i % 2)
        with pytest.raises(KeyBudgetExceeded):
            t.reserve("x")
        t.clock[0] = NOW + 20
        assert t.books[0].holds.sweep() == n
        t.clock[0] = NOW + LATE + n // 2  # r0..r4 past their horizon, r5..r9 at or within it
        start = threading.Barrier(2)

        def trim_and_reserve() -> list[str]:
            start.wait()
            held = []
            for j in range(3 * n):
                limits.trim(t.book.engine, t.clock[0])
                try:
                    t.reserve(f"new{j}", i=0)
                    held.append(f"new{j}")
                except KeyBudgetExceeded:
                    pass
            return held

        def settle_late() -> list[str]:
            start.wait()
            outcomes = []
            for i in range(n):
                try:
                    t.books[1].holds.settle(f"r{i}", HOLD, record=USAGE)
                    outcomes.append("charged")
                except LateAnswerRefused:
                    outcomes.append("refused")
            return outcomes

        with ThreadPoolExecutor(2) as pool:
            held_future, settled_future = pool.submit(trim_and_reserve), pool.submit(settle_late)
            held, outcomes = held_future.result(), settled_future.result()
        assert outcomes == ["refused"] * (n // 2) + ["charged"] * (n - n // 2)
        assert len(held) == n // 2  # exactly what the refused ones gave back
        assert t.budget_left() == 0 and t.charged() == (n - n // 2) * HOLD
        for request_id in held:
            t.books[0].holds.release(request_id)
        assert t.budget_left() == n // 2 * HOLD and _budget_takes(t) == []
    finally:
        t.close()


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_horizon__trim_gives_back_while_a_settle_ends_a_request_of_the_same_key__no_deadlock(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that ran past its requests-per-minute window settles while a trim, having
    deleted that window's counter and its take, gives the same key's expired budget back.
    The settle must not hold the key's row while it waits for the take the trim holds (the
    trim waits for that key's row next): a deadlock, its victim run again or its sweep pass
    lost. Here the trim is held between the two steps until the settle waits."""
    t = _Late(ledger_url, budget=10 * HOLD)
    t.plan = Plan([(t.subjects[0], Limits(requests_per_minute=100))], TOKENS, t.key.id)
    real_settle, settles = t.counters[0].settle, []

    def counted_settle(*args: Any) -> None:
        settles.append(args[1].request_id)
        real_settle(*args)

    t.counters[0].settle = counted_settle  # type: ignore[method-assign]
    trimmed_takes, go = threading.Event(), threading.Event()
    real_past_horizon = limits._past_horizon

    def held_past_horizon(conn: Connection, now: int) -> None:
        trimmed_takes.set()  # the ended window's counter and take deleted (and locked)
        assert go.wait(30)
        real_past_horizon(conn, now)

    monkeypatch.setattr(limits, "_past_horizon", held_past_horizon)
    try:
        t.reserve("expired")  # made at NOW: its horizon NOW + LATE
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        t.reserve("long")  # made at NOW + 11: its minute's window, and trim's grace after it, end before the horizon
        assert t.books[0].holds.extend(["long"], 1_000) == 1  # still running: renewed
        t.clock[0] = NOW + LATE + 1
        with ThreadPoolExecutor(2) as pool:
            trim = pool.submit(limits.trim, t.book.engine, t.clock[0])
            assert trimmed_takes.wait(30)
            settle = pool.submit(t.books[0].holds.settle, "long", HOLD // 2, record=USAGE)
            waited = time.monotonic() + 30
            with t.book.engine.connect() as conn:  # until the settle waits on a lock
                while not conn.execute(text(_WAITING)).scalar_one():
                    conn.rollback()  # a new snapshot of the activity view
                    assert time.monotonic() < waited and not settle.done(), "the settle never waited"
            go.set()
            trim.result()
            settle.result()
        assert settles == ["long"], "the settle was a deadlock victim and ran again"
        assert t.budget_left() == 10 * HOLD - HOLD // 2 and _budget_takes(t) == []
    finally:
        go.set()
        t.close()


_WAITING = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"


SKEW = 2  # seconds the settling process's clock is behind the one that gives the budget back


@pytest.mark.parametrize("gives_back", ["trim", "sweep"])
def test_horizon__clocks_skewed__budget_given_back_ahead__late_answer_behind_refused__no_overshoot(
    ledger_url: str, gives_back: str
) -> None:
    """bbreak's finding: the horizon is judged on each process's own clock. One running 2 s
    ahead gave an expired hold's budget back (trim past the horizon, or a sweep after it);
    the budget admitted two more; the late answer reached a process still before the
    horizon by its clock: charged against nothing — 3,000 on a budget of 2,000. The take's
    row now leaves a mark when it is given back, and a late settle that finds it is refused
    whatever its own clock says."""
    t = _Late(ledger_url, cost=10 * HOLD, books=2, budget=2 * HOLD, room=4)
    behind = lambda: t.clock[0] - SKEW  # noqa: E731
    t.books[1].clock = behind
    t.counters[1].clock = behind
    try:
        t.reserve("a")  # made at NOW: horizon NOW + LATE
        if gives_back == "trim":
            t.clock[0] += 11
            assert t.books[0].holds.sweep() == 1
            t.clock[0] = NOW + LATE + 1  # ahead: past the horizon; behind: 1 s before it
            limits.trim(t.book.engine, t.clock[0])
        else:
            t.clock[0] = NOW + LATE + 1  # swept only now, past its horizon: given back at once
            assert t.books[0].holds.sweep() == 1
        assert t.budget_left() == 2 * HOLD  # given back
        t.reserve("b")
        t.reserve("c")
        t.books[0].holds.settle("b", HOLD)
        t.books[0].holds.settle("c", HOLD)
        with pytest.raises(LateAnswerRefused):
            t.books[1].holds.settle("a", HOLD, record=USAGE)  # the late answer, on the clock behind
        assert t.charged() == 2 * HOLD
        assert t.budget_left() == 0
        assert _marks(t) == ["a"]
        t.clock[0] += limits.BUDGET_BACK_KEPT + 1
        limits.trim(t.book.engine, t.clock[0])
        assert _marks(t) == []  # the mark ends too
    finally:
        t.close()


def _marks(t: _Late) -> list[str]:
    with t.book.engine.connect() as conn:
        rows = conn.execute(select(limit_takes.c.request_id).where(limit_takes.c.kind == limits.BUDGET_BACK))
        return sorted(rows.scalars())
