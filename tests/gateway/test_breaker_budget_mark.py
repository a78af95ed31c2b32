"""Attacks on the key budget's give-back mark (`limits.BUDGET_BACK`, bd6054f) and the late-answer
horizon it guards (issue 22; session 8, mbreak). The promises: a key's requests are never
charged more than its budget whatever the order of reserve, sweep, trim and late settle and
whatever two processes' clocks say (within a day); no budget stays taken forever; a refused
late answer charges nothing and leaves the books consistent (`Ledger.check`, run at close).
Holds with limits or a key budget carry an extra, so neither fast path (SQLite, PostgreSQL)
takes them: the general path is the one attacked, on both databases (two ledgers on one
database act as two processes)."""

from __future__ import annotations

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

from .test_limits import HOLD, LATE, NOW, TOKENS, _Late

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
