"""Limits per key, org member and org (`gateway.limits`): taken in the hold's own ledger
transaction, exactly K of 200 concurrent requests (1,000 with HYPOTHESIS_PROFILE=deep)
admitted against each kind of limit on SQLite and on PostgreSQL (two ledgers on one
database: as two processes would), and through the gateway: 429 with retry-after in each
API's error shape, nothing held by a refused request, tokens and cost settled to the
actual usage."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from eth_account import Account
from sqlalchemy import select

from polling import until
from promptex.config import Settings
from promptex.gateway import limits
from promptex.gateway.buyers import member_key
from promptex.gateway.limits import (
    LATE_SECONDS as LATE,
)
from promptex.gateway.limits import (
    KeyBudgetExceeded,
    LateAnswerRefused,
    LimitCounters,
    LimitExceeded,
    Limits,
    Plan,
)
from promptex.gateway.schema import limit_counters, limit_takes
from promptex.gateway.store import ApiKey, GatewayStore
from promptex.ledger import AccountKind, ExtraTake, Ledger, Reservation, UsageRecord
from promptex.ledger.binding import sign
from promptex.ledger.schema import holds, usage_records
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import Fake, Harness, _harness, event_id

_T = int(time.time())
NOW = _T - _T % 3_600 + 5  # the ledger's fixed clock: early in a minute and an hour, no window ends mid-test
HELLO = [{"role": "user", "content": "hi"}]
REQUESTS = 1_000 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 200
K = 23
HOLD = 1_000  # each request's hold (USDC smallest units)
TOKENS = 300  # each request's token bound


def fund(ledger: Ledger, amount: int, account: int | None = None) -> int:
    if account is None:
        account = ledger.create_account().id
    wallet = Account.create()
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    ledger.credit_deposit(event_id(), wallet.address, "USDC", amount)
    ledger.set_spend_cap(account, "USDC", amount)
    return account


@pytest.mark.parametrize(
    "subject_limits",
    [
        Limits(requests_per_minute=K),
        Limits(tokens_per_minute=K * TOKENS + TOKENS - 1),
        Limits(concurrent=K),
        Limits(cost=K * HOLD + HOLD - 1, cost_asset="USDC", cost_window_seconds=3_600),
    ],
    ids=["requests", "tokens", "concurrent", "cost"],
)
def test_limit__200_concurrent_holds_from_two_ledgers__exactly_k_admitted_nothing_else_held(
    ledger_url: str, subject_limits: Limits
) -> None:
    books = [Ledger.open(ledger_url, clock=lambda: NOW, sqlite_synchronous="NORMAL") for _ in range(2)]
    counters = [LimitCounters(book.clock) for book in books]
    for book, extra in zip(books, counters, strict=True):
        book.holds.register(extra)
    try:
        account = fund(books[0], REQUESTS * HOLD)
        plan = Plan([("key:1", subject_limits)], TOKENS)

        def reserve(i: int) -> str:
            book, extra = books[i % 2], counters[i % 2]
            request_id = f"req-{i}"
            extra.plan(request_id, plan)
            try:
                book.holds.reserve(
                    Reservation(request_id, account, "USDC", HOLD, 60, extras=(ExtraTake(limits.NAME, TOKENS),))
                )
                return "held"
            except LimitExceeded:
                return "limited"
            finally:
                extra.plan(request_id, None)

        start = threading.Barrier(50)

        def first_wait(i: int) -> str:
            if i < 50:
                start.wait()
            return reserve(i)

        with ThreadPoolExecutor(50) as pool:
            outcomes = Counter(pool.map(first_wait, range(REQUESTS)))
        assert outcomes == Counter({"held": K, "limited": REQUESTS - K})
        assert books[0].balance(account, "USDC").held == K * HOLD  # a limited request held nothing
        with books[0].engine.connect() as conn:
            assert len(conn.execute(select(limit_takes)).all()) == K
        books[0].check()
    finally:
        for book in books:
            book.close()


# ─── Through the gateway ─────────────────────────────────────────────────────


@pytest.fixture
def gw_clocked(settings: Settings, tmp_path: Path) -> Iterator[Harness]:
    yield from _harness(settings, f"sqlite:///{tmp_path}/ledger.sqlite3", clock=lambda: NOW)


def key_of(gw: Harness, key: str) -> ApiKey:
    from promptex.gateway.keys import hash_key

    found = gw.store.api_key(hash_key(key))
    assert found is not None
    return found


def counters(gw: Harness) -> dict[tuple[str, str], int]:
    with gw.ledger.engine.connect() as conn:
        rows = conn.execute(select(limit_counters)).all()
    return {(r.subject, r.kind): r.used for r in rows}


def test_requests_per_minute__over__429_retry_after_both_shapes_nothing_held(gw_clocked: Harness, fake: Fake) -> None:
    gw = gw_clocked
    gw.add_lot(fake)
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    account, key = gw.buyer()
    limits.set_limits(gw.ledger.engine, limits.key_subject(key_of(gw, key)), Limits(requests_per_minute=2), NOW)
    client = gw.client(key)
    client.chat.completions.create(model="fake-flat", messages=HELLO, max_tokens=16)
    client.chat.completions.create(model="fake-flat", messages=HELLO, max_tokens=16)
    served = fake.config.requests
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="fake-flat", messages=HELLO, max_tokens=16)
    assert refused.value.response.headers["retry-after"] == str(60 - NOW % 60)
    assert refused.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "2 requests per minute" in refused.value.message
    with pytest.raises(anthropic.RateLimitError) as shaped:
        gw.anthropic(key).messages.create(model="fake-claude", max_tokens=16, messages=HELLO)
    assert shaped.value.status_code == 429 and shaped.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert fake.config.requests == served
    assert gw.ledger.balance(account, "USDC").held == 0
    assert counters(gw)[(limits.key_subject(key_of(gw, key)), "requests")] == 2


def test_tokens_and_cost__taken_at_the_bound__settled_to_actual__org_member_and_org_count_too(
    gw_clocked: Harness, fake: Fake
) -> None:
    gw = gw_clocked
    gw.add_lot(fake)
    org = gw.ledger.create_account(AccountKind.ORG).id
    fund(gw.ledger, 10 * USDC, org)
    member = key_of(gw, (new := member_key(gw.ledger, gw.store, org, NOW)).key)
    big = Limits(tokens_per_minute=100_000, cost=10 * USDC, cost_asset="USDC")
    for subject in limits.subjects(member):
        limits.set_limits(gw.ledger.engine, subject, big, NOW)
    gw.client(new.key).chat.completions.create(model="fake-flat", messages=HELLO, max_tokens=16)
    seen = counters(gw)
    charged = gw.ledger.system_balance("usage", "USDC")
    for subject in limits.subjects(member):
        assert 0 < seen[(subject, "tokens")] < 1_000  # the actual tokens, not the bound
        assert seen[(subject, "cost")] == charged


def test_concurrent_and_tokens__given_back_when_upstream_fails__slot_free_after_each_answer(
    gw_clocked: Harness, fake: Fake
) -> None:
    gw = gw_clocked
    gw.add_lot(fake)
    account, key = gw.buyer()
    subject = limits.key_subject(key_of(gw, key))
    limits.set_limits(gw.ledger.engine, subject, Limits(concurrent=1, tokens_per_minute=10_000), NOW)
    fake.config.fail_status = 500  # the upstream fails: the hold is released, the slot given back
    for _ in range(3):
        answer = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "fake-flat", "messages": HELLO, "max_tokens": 16},
            headers={"authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 502
    assert counters(gw)[(subject, "tokens")] == 0
    fake.config.fail_status = None
    client = gw.client(key)
    for _ in range(3):  # one at a time: each ends, and gives its slot back
        client.chat.completions.create(model="fake-flat", messages=HELLO, max_tokens=16)
    assert counters(gw)[(subject, "concurrent")] == 0
    assert gw.ledger.balance(account, "USDC").held == 0


def test_limits__none_set__no_extra_taken(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    _, key = gw.buyer()
    answer = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "fake-flat", "messages": HELLO, "max_tokens": 16},
        headers={"authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 200
    assert counters(gw) == {}


# ─── An API key's budget, taken with the hold ────────────────────────────────


def test_key_budget__taken_with_the_hold__a_swept_hold_keeps_it__its_late_charge_settles_it(
    ledger_url: str,
) -> None:
    """Found by test_breaker_holds: a key's budget was taken in its own transaction before
    the hold and given back only by the process that made it, so every request in flight
    when a gateway was killed kept its share of the key's budget for good."""
    clock = [NOW]
    book = Ledger.open(ledger_url, clock=lambda: clock[0], sqlite_synchronous="NORMAL")
    counters = LimitCounters(book.clock)
    book.holds.register(counters)
    try:
        account = fund(book, 10 * USDC)
        key = GatewayStore(book.engine).add_api_key("h" * 64, "px-budget", account, NOW, budget=("USDC", 2 * HOLD))

        def reserve(request_id: str) -> None:
            counters.plan(request_id, Plan([], TOKENS, key.id))
            try:
                book.holds.reserve(
                    Reservation(request_id, account, "USDC", HOLD, 60, extras=(ExtraTake(limits.NAME, TOKENS),))
                )
            finally:
                counters.plan(request_id, None)

        def left() -> int:
            found = GatewayStore(book.engine).key_by_id(key.id)
            assert found is not None and found.budget_remaining is not None
            return found.budget_remaining

        reserve("a")
        reserve("b")
        with pytest.raises(KeyBudgetExceeded):
            reserve("c")  # nothing of the hold is kept
        assert left() == 0 and book.balance(account, "USDC").held == 2 * HOLD
        book.holds.settle("a", HOLD // 4)
        assert left() == HOLD - HOLD // 4  # the rest of the hold given back
        clock[0] += 61
        assert book.holds.sweep() == 1  # "b": its process died (or hung)
        assert left() == HOLD - HOLD // 4  # kept for its late answer, until its horizon
        book.holds.settle("b", HOLD // 2)  # its answer, metered after all: the rest back
        assert left() == 2 * HOLD - HOLD // 4 - HOLD // 2
        with book.engine.connect() as conn:
            assert conn.execute(select(limit_takes)).all() == []
        book.check()
    finally:
        book.close()


# ─── A swept hold's tokens and cost, kept for its late answer ─────────────────


def test_tokens_and_cost__a_swept_hold_keeps_them_for_its_late_answer__the_window_never_overshoots(
    ledger_url: str,
) -> None:
    """Found by the gateway breaker (Session 6): the sweeper gave an expired hold's tokens
    and cost back, the room admitted other requests, and the late answer — charged whole,
    it was served — then counted against nothing: 2,000 charged in a window limited to
    1,000. Now an expired hold gives back only its slot in flight; its tokens and cost stay
    taken until its answer settles them to the actual, or their window ends (trim)."""
    clock = [NOW]
    book = Ledger.open(ledger_url, clock=lambda: clock[0], sqlite_synchronous="NORMAL")
    counters = LimitCounters(book.clock)
    book.holds.register(counters)
    subject = "key:late"
    lim = Limits(tokens_per_minute=2 * TOKENS, concurrent=2, cost=HOLD, cost_asset="USDC", cost_window_seconds=3_600)
    try:
        account = fund(book, 10 * USDC)

        def reserve(request_id: str, amount: int) -> None:
            counters.plan(request_id, Plan([(subject, lim)], TOKENS))
            try:
                book.holds.reserve(
                    Reservation(request_id, account, "USDC", amount, 10, extras=(ExtraTake(limits.NAME, TOKENS),))
                )
            finally:
                counters.plan(request_id, None)

        def used() -> dict[str, int]:
            with book.engine.connect() as conn:
                rows = conn.execute(select(limit_counters).where(limit_counters.c.subject == subject)).all()
            return {r.kind: int(r.used) for r in rows}

        reserve("a", HOLD)  # the whole window's cost
        clock[0] += 11  # its gateway hangs past the hold's lifetime (same minute, same hour)
        assert book.holds.sweep() == 1
        assert used() == {"tokens": TOKENS, "cost": HOLD, "concurrent": 0}  # only the slot given back
        with pytest.raises(LimitExceeded, match="cost per window"):
            reserve("b", 1)  # no room: "a" may still be answered
        book.holds.settle("a", HOLD // 2, record=UsageRecord("m", 40, 60, 0))  # its late answer
        assert used() == {"tokens": 100, "cost": HOLD // 2, "concurrent": 0}  # settled to the actual
        reserve("b", HOLD // 2)  # the room the actual left
        with pytest.raises(LimitExceeded, match="cost per window"):
            reserve("c", 1)
        book.holds.settle("b", HOLD // 2, record=UsageRecord("m", 40, 60, 0))
        with book.engine.connect() as conn:
            charged = sum(int(h.charged or 0) for h in conn.execute(select(holds)).all())
        assert charged == HOLD  # never above the window's limit

        # A late answer that never comes: its takes go with their windows.
        clock[0] = NOW + 3_600  # the next hour (and minute)
        reserve("d", HOLD)
        clock[0] += 11
        assert book.holds.sweep() == 1
        with book.engine.connect() as conn:
            assert {r.kind for r in conn.execute(select(limit_takes)).all()} == {"tokens", "cost"}
        clock[0] = NOW + 2 * 3_600 + 5 + limits.WINDOW_KEPT_SECONDS  # the hour over, and trim's grace after it
        limits.trim(book.engine, clock[0])
        with book.engine.connect() as conn:
            assert conn.execute(select(limit_takes)).all() == []
        book.check()
    finally:
        book.close()


# ─── Attacks on the late-answer fix (session 6, lbreak) ──────────────────────


class _Late:
    """One ledger (or two on one database), a funded account, a budget key and three
    subjects (key, org member, org) each limited to `cost` per hour, `room` requests in
    flight and `room` * TOKENS a minute."""

    def __init__(
        self, url: str, cost: int = HOLD, books: int = 1, budget: int = 10 * HOLD, room: int = 2, late: int = LATE
    ) -> None:
        self.clock = [NOW]
        self.books = [Ledger.open(url, clock=lambda: self.clock[0], sqlite_synchronous="NORMAL") for _ in range(books)]
        self.counters = [LimitCounters(book.clock, late) for book in self.books]
        for book, extra in zip(self.books, self.counters, strict=True):
            book.holds.register(extra)
        self.book = self.books[0]
        self.account = fund(self.book, 10 * USDC)
        self.key = GatewayStore(self.book.engine).add_api_key(
            "l" * 64, "px-late", self.account, NOW, budget=("USDC", budget)
        )
        lim = Limits(
            tokens_per_minute=room * TOKENS, concurrent=room, cost=cost, cost_asset="USDC", cost_window_seconds=3_600
        )
        self.subjects = [f"key:{self.key.id}", f"member:9:{self.account}", "org:9"]
        self.plan = Plan([(s, lim) for s in self.subjects], TOKENS, self.key.id)

    def reserve(self, request_id: str, amount: int = HOLD, i: int = 0) -> None:
        self.counters[i].plan(request_id, self.plan)
        try:
            self.books[i].holds.reserve(
                Reservation(request_id, self.account, "USDC", amount, 10, extras=(ExtraTake(limits.NAME, TOKENS),))
            )
        finally:
            self.counters[i].plan(request_id, None)

    def used(self, kind: str = "cost") -> list[int]:
        """Each subject's counter of `kind` in the current window (0: none)."""
        with self.book.engine.connect() as conn:
            rows = conn.execute(select(limit_counters).where(limit_counters.c.kind == kind)).all()
        now = self.clock[0]
        found = {r.subject: int(r.used) for r in rows if r.window_start <= now < r.ends_at}
        return [found.get(s, 0) for s in self.subjects]

    def budget_left(self) -> int:
        found = GatewayStore(self.book.engine).key_by_id(self.key.id)
        assert found is not None and found.budget_remaining is not None
        return found.budget_remaining

    def charged(self) -> int:
        with self.book.engine.connect() as conn:
            return sum(int(h.charged or 0) for h in conn.execute(select(holds)).all())

    def takes(self) -> list[tuple[str, int]]:
        with self.book.engine.connect() as conn:
            return sorted((r.kind, int(r.amount)) for r in conn.execute(select(limit_takes)).all())

    def close(self) -> None:
        for book in self.books:
            book.check()
            book.close()


def test_late_answer__after_trim_removed_its_window__or_in_the_next_window__charges_the_old_window_only(
    ledger_url: str,
) -> None:
    t = _Late(ledger_url, late=4 * 3_600)  # late answers hours later: a horizon beyond them
    try:
        t.reserve("a")
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        assert t.books[0].holds.sweep() == 0  # sweep twice: nothing more given back
        assert t.books[0].holds.release("a").status.value == "expired"  # release of an expired hold: nothing
        assert t.used() == [HOLD] * 3 and t.used("concurrent") == [0] * 3 and t.budget_left() == 9 * HOLD
        # The next hour: a new window with its own room; the late answer settles in the old one.
        t.clock[0] = NOW + 3_600
        t.reserve("b")
        t.books[0].holds.settle("a", HOLD // 2, record=UsageRecord("m", 40, 60, 0))
        assert t.used() == [HOLD] * 3  # the new window: "b" alone
        assert t.budget_left() == 10 * HOLD - HOLD - HOLD // 2
        # Another hour; the old windows trimmed, then a late answer whose window is gone.
        t.books[0].holds.settle("b", HOLD, record=UsageRecord("m", 40, 60, 0))
        t.clock[0] = NOW + 7_200
        t.reserve("c")
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        t.clock[0] = NOW + 3 * 3_600 + 5 + limits.WINDOW_KEPT_SECONDS  # "c"'s hour over, and trim's grace
        limits.trim(t.book.engine, t.clock[0])
        assert t.takes() == [("budget", HOLD)]  # "c"'s key budget waits for its late answer (its horizon)
        t.reserve("d")  # a window untouched by "c"
        t.books[0].holds.settle("c", HOLD // 4, record=UsageRecord("m", 40, 60, 0))
        assert t.used() == [HOLD] * 3
        assert t.budget_left() == 10 * HOLD - HOLD // 2 - HOLD - HOLD // 4 - HOLD  # a, b, c, d held
        t.books[0].holds.release("d")
        assert t.budget_left() == 10 * HOLD - HOLD // 2 - HOLD - HOLD // 4 and t.takes() == []
    finally:
        t.close()


def test_late_answer__same_request_id_reserved_again_after_the_sweep__takes_nothing_twice(ledger_url: str) -> None:
    t = _Late(ledger_url, cost=2 * HOLD)
    try:
        t.reserve("a")
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        t.reserve("a")  # the same request again (a retry with its id): the expired hold, nothing taken
        assert t.used() == [HOLD] * 3 and t.used("concurrent") == [0] * 3 and t.budget_left() == 9 * HOLD
        t.books[0].holds.settle("a", HOLD, record=UsageRecord("m", 40, 60, 0))
        assert t.used() == [HOLD] * 3 and t.budget_left() == 9 * HOLD and t.takes() == []
    finally:
        t.close()


def test_late_answer__charged_above_its_hold__counted_whole__the_window_admits_only_what_is_left(
    ledger_url: str,
) -> None:
    """A late answer is charged whole (it was served), the key's budget takes all of it;
    the window's cost counter kept only the hold's take, so it admitted the overage again."""
    t = _Late(ledger_url, cost=3 * HOLD)
    try:
        t.reserve("a")
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        t.books[0].holds.settle("a", 2 * HOLD, record=UsageRecord("m", 40, 60, 0))
        assert t.charged() == 2 * HOLD and t.budget_left() == 8 * HOLD
        assert t.used() == [2 * HOLD] * 3  # counted whole, as charged
        t.reserve("b")  # the room left
        with pytest.raises(LimitExceeded, match="cost per window"):
            t.reserve("c", 1)
        t.books[0].holds.settle("b", HOLD)
        assert t.charged() == 3 * HOLD  # == the window's limit
    finally:
        t.close()


def test_late_answer__one_ledger_sweeps_while_the_other_settles_late__counters_exact(ledger_url: str) -> None:
    n = 12
    t = _Late(ledger_url, cost=n * HOLD, books=2, budget=n * HOLD, room=n)
    try:
        for i in range(n):
            t.reserve(f"r{i}", i=i % 2)
        t.clock[0] += 11  # all past their lifetime: each is swept, or settled first (not late)
        barrier = threading.Barrier(2)

        def sweep() -> None:
            barrier.wait()
            for _ in range(n):
                t.books[0].holds.sweep(limit=1)

        def settle() -> None:
            barrier.wait()
            for i in range(n):
                t.books[1].holds.settle(f"r{i}", HOLD // 2, record=UsageRecord("m", 40, 60, 0))

        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(sweep), pool.submit(settle)]:
                done.result()
        assert t.charged() == n * HOLD // 2
        assert t.used() == [n * HOLD // 2] * 3 and t.used("concurrent") == [0] * 3
        assert t.used("tokens") == [n * 100] * 3
        assert t.budget_left() == n * HOLD // 2 and t.takes() == []
    finally:
        t.close()


# ─── A window's end: trim keeps its counter past it (session 8, mbreak) ──────


@pytest.mark.parametrize("kind", ["cost", "tokens"])
def test_window_end__trim_ahead_of_a_reserve_still_in_the_window__limit_admitted_once__counter_gone_after_the_grace(
    ledger_url: str, kind: str
) -> None:
    """mbreak's finding (session 8): `trim` deleted a window's counter as soon as ITS clock
    passed the window's end, and a reserve whose clock was still inside the window (read
    before the trim committed, or on a process behind the trimming one) created the counter
    afresh at 0: the window admitted its limit twice (2,000 charged in a cost window of
    1,000; a minute's tokens twice). Now trim keeps an ended window's counter
    `WINDOW_KEPT_SECONDS` past its end."""
    hour = kind == "cost"
    t = _Late(ledger_url, cost=HOLD if hour else 10 * HOLD, room=4)  # tokens: 4 * TOKENS a minute
    t.plan = Plan(t.plan.limits, TOKENS, None)
    length = 3_600 if hour else 60
    window_end = NOW - 5 + length  # NOW is 5 s into the hour (and the minute)
    try:
        for i in range(1 if hour else 4):  # the hour's whole cost, or the minute's whole tokens
            t.reserve(f"a{i}")
            t.books[0].holds.settle(f"a{i}", HOLD)  # no usage record: its tokens kept at the bound
        with pytest.raises(LimitExceeded, match=limits.WHAT[kind]):
            t.reserve("early")  # full, as it should be
        limits.trim(t.book.engine, window_end + 1)  # a sweep pass 2 s ahead (or committed first)
        t.clock[0] = window_end - 1  # the reserve's clock: the window's last second
        with pytest.raises(LimitExceeded, match=limits.WHAT[kind]):
            t.reserve("b")  # was admitted: its counter recreated at 0
        assert t.used(kind) == [HOLD if hour else 4 * TOKENS] * 3

        def kept() -> int:
            with t.book.engine.connect() as conn:
                found = select(limit_counters).where(
                    limit_counters.c.kind == kind, limit_counters.c.ends_at == window_end
                )
                return len(conn.execute(found).all())

        limits.trim(t.book.engine, window_end + limits.WINDOW_KEPT_SECONDS)
        assert kept() == 3  # the grace's last second: kept
        limits.trim(t.book.engine, window_end + limits.WINDOW_KEPT_SECONDS + 1)
        assert kept() == 0  # past it: the window's counters deleted
        assert t.charged() == (HOLD if hour else 4 * HOLD)
    finally:
        t.close()


# ─── A key's budget and late answers: kept until the horizon (issue 22) ──────


def _budget_takes(t: _Late) -> list[tuple[str, int, int]]:
    with t.book.engine.connect() as conn:
        rows = conn.execute(select(limit_takes).where(limit_takes.c.kind == "budget")).all()
    return sorted((r.request_id, int(r.amount), int(r.window_start)) for r in rows)


def test_key_budget__swept_hold_keeps_it__others_refused__late_answer_never_overshoots(ledger_url: str) -> None:
    """lbreak's finding (session 6): the sweep gave an expired hold's key budget back, the
    budget admitted others, the late answer was charged whole and the budget stopped at
    zero: 3,000 charged against a budget of 2,000. Now the expired hold keeps its take
    until its late answer — here at the last second of its horizon — settles it."""
    t = _Late(ledger_url, cost=10 * HOLD, budget=2 * HOLD, room=4)
    try:
        t.reserve("a")
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        assert t.budget_left() == HOLD  # kept for the late answer (given back at the sweep before)
        t.reserve("b")
        with pytest.raises(KeyBudgetExceeded):
            t.reserve("c")  # what "a" may still be charged is not admitted again
        t.books[0].holds.settle("b", HOLD)
        t.clock[0] = NOW + LATE  # the last second of "a"'s horizon: still kept, then settled
        limits.trim(t.book.engine, t.clock[0])
        assert t.budget_left() == 0
        t.books[0].holds.settle("a", HOLD // 2, record=UsageRecord("m", 40, 60, 0))  # the late answer
        assert t.budget_left() == HOLD // 2  # its charge kept, the rest back
        t.reserve("c", HOLD // 2)
        t.books[0].holds.settle("c", HOLD // 2)
        with t.book.engine.connect() as conn:
            charged = sum(int(h.charged or 0) for h in conn.execute(select(holds)).all())
        assert charged <= 2 * HOLD, f"the key's budget is {2 * HOLD}, its requests were charged {charged}"
        assert charged == 2 * HOLD and t.budget_left() == 0 and _budget_takes(t) == []
    finally:
        t.close()


def test_key_budget__never_answered__back_exactly_at_the_horizon__row_deleted__later_answer_refused(
    ledger_url: str,
) -> None:
    t = _Late(ledger_url, cost=10 * HOLD, budget=2 * HOLD, room=4)
    try:
        t.reserve("a")  # made at NOW
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == 1
        horizon = NOW + LATE
        assert _budget_takes(t) == [("a", HOLD, horizon)]
        t.clock[0] = horizon
        limits.trim(t.book.engine, horizon)
        assert t.budget_left() == HOLD and len(_budget_takes(t)) == 1  # at the horizon: still kept
        t.clock[0] = horizon + 1
        limits.trim(t.book.engine, horizon + 1)
        assert t.budget_left() == 2 * HOLD and _budget_takes(t) == []  # past it: back, the row deleted
        with pytest.raises(LateAnswerRefused):
            t.books[0].holds.settle("a", HOLD, record=UsageRecord("m", 40, 60, 0))  # its answer, too late
        assert t.charged() == 0 and t.budget_left() == 2 * HOLD
        assert t.books[0].holds.release("a").status.value == "expired"  # nothing was charged or recorded
        # A hold swept only after its horizon (every gateway was down): its budget back at once.
        t.reserve("b")  # made at horizon + 1
        t.clock[0] += LATE + 1
        assert t.books[0].holds.sweep() == 1
        assert t.budget_left() == 2 * HOLD and _budget_takes(t) == []
    finally:
        t.close()


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_key_budget__200_concurrent_from_two_ledgers__late_answers_meanwhile__charged_within_the_budget(
    ledger_url: str,
) -> None:
    """Two ledgers on one database (two gateway processes): a few holds expire, then 200
    requests race for the key's budget while the expired holds' late answers settle from
    the other ledger: every charge within the budget, the budget exactly what is left."""
    late = 5
    t = _Late(ledger_url, books=2, budget=K * HOLD)
    t.plan = Plan([], TOKENS, t.key.id)  # the key's budget alone
    try:
        for i in range(late):
            t.reserve(f"late{i}", i=i % 2)
        t.clock[0] += 11
        assert t.books[0].holds.sweep() == late
        assert t.budget_left() == (K - late) * HOLD
        start = threading.Barrier(51)

        def reserve(i: int) -> str:
            if i < 50:
                start.wait()
            try:
                t.reserve(f"req-{i}", i=i % 2)
                return "held"
            except KeyBudgetExceeded:
                return "refused"

        def answer_late() -> int:
            start.wait()
            for i in range(late):  # charged half their hold: the rest back, admitted again
                t.books[1].holds.settle(f"late{i}", HOLD // 2, record=UsageRecord("m", 40, 60, 0))
            return late

        with ThreadPoolExecutor(51) as pool:
            answered = pool.submit(answer_late)
            results = list(pool.map(reserve, range(REQUESTS)))
            assert answered.result() == late
        held = results.count("held")
        assert K - late <= held <= K - late + late // 2 and results.count("refused") == REQUESTS - held
        for i, outcome in enumerate(results):
            if outcome == "held":
                t.books[i % 2].holds.settle(f"req-{i}", HOLD)
        charged = t.charged()
        assert charged <= K * HOLD and t.budget_left() == K * HOLD - charged
        assert _budget_takes(t) == []
    finally:
        t.close()


# ─── The request deadline the horizon rests on ───────────────────────────────


@pytest.fixture
def gw_deadline(settings: Settings, tmp_path: Path) -> Iterator[Harness]:
    short = settings.model_copy(update={"gateway_request_deadline_seconds": 0.25})
    yield from _harness(short, f"sqlite:///{tmp_path}/ledger.sqlite3")


def test_deadline__unanswered_request_cancelled_504_hold_released__stream_cut_off_charged_as_cut(
    gw_deadline: Harness, fake: Fake
) -> None:
    """No live gateway settles a request after its deadline (+ the margin for the settle):
    the premise of the late-answer horizon. An answer not in by then is not served (504,
    its hold released, nothing charged); a stream still running is cut off there and
    charged what it streamed."""
    gw = gw_deadline
    gw.add_lot(fake)
    account, key = gw.buyer()
    gate = threading.Event()
    fake.config.gate = gate  # the upstream never answers
    try:
        answer = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "fake-flat", "messages": HELLO, "max_tokens": 16},
            headers={"authorization": f"Bearer {key}"},
        )
    finally:
        gate.set()
        fake.config.gate = None
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "request_deadline"
    balance = gw.ledger.balance(account, "USDC")
    assert (balance.posted, balance.held) == (10 * USDC, 0)
    with gw.ledger.engine.connect() as conn:
        assert [h.status for h in conn.execute(select(holds)).all()] == ["released"]

    fake.config.chunk_delay_ms = 20  # 64 words: 1.3 s
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={"model": "fake-flat", "messages": HELLO, "max_tokens": 64, "stream": True},
        headers={"authorization": f"Bearer {key}"},
    ) as streamed:
        assert streamed.status_code == 200
        body = streamed.read()
    assert b'"cost_units"' in body  # ended by the gateway with its charge, not broken off
    with gw.ledger.engine.connect() as conn:
        cut = conn.execute(select(holds).where(holds.c.status == "settled")).one()
        output = conn.execute(select(usage_records.c.output_tokens)).scalar_one()
    assert 0 < int(cut.charged) < int(cut.amount) and 0 < output < 64  # cut short, charged as such


def test_deadline__stream_silent_until_it__not_the_lot_s_failure(gw_deadline: Harness, fake: Fake) -> None:
    """A stream whose lot sent nothing before the request's deadline (a model still thinking:
    since bc55cdc its first content may be waited for up to it) is released, and counts
    against the lot no more than a plain request's deadline does (review s17: "empty")."""
    gw = gw_deadline
    lot = gw.add_lot(fake)
    account, key = gw.buyer()
    fake.config.think_ms = 2_000  # a role chunk, then silence past the 0.25 s deadline
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={"model": "fake-flat", "messages": HELLO, "max_tokens": 4_000, "stream": True},
        headers={"authorization": f"Bearer {key}"},
    ) as streamed:
        streamed.read()
    balance = gw.ledger.balance(account, "USDC")
    assert (balance.posted, balance.held) == (10 * USDC, 0)  # nothing charged, nothing held
    assert gw.gateway.health._lots[lot].errors == 0 and gw.gateway.health._lots[lot].failures == 0


class _Unread:
    """The server as a client that reads nothing makes it: the head of a stream is sent once
    `read` is set — as uvicorn's send waits (`flow.drain`) while the connection's transport is
    past its high-water mark, e.g. a request pipelined behind an answer its client left unread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.read = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def unread(message: Any) -> None:
            stream = (b"content-type", b"text/event-stream")
            if message["type"] == "http.response.start" and stream in message["headers"]:
                while not self.read.is_set():
                    await asyncio.sleep(0.01)
            await send(message)

        await self.app(scope, receive, unread)


@pytest.fixture
def gw_unread(settings: Settings, tmp_path: Path) -> Iterator[tuple[Harness, _Unread]]:
    short = settings.model_copy(update={"gateway_request_deadline_seconds": 0.25})
    wrapped: list[_Unread] = []
    harness = _harness(
        short, f"sqlite:///{tmp_path}/ledger.sqlite3", wrap=lambda app: wrapped.append(_Unread(app)) or wrapped[0]
    )
    yield next(harness), wrapped[0]
    wrapped[0].read.set()
    next(harness, None)


def test_deadline__stream_head_its_client_does_not_read__hold_released_at_the_deadline(
    gw_unread: tuple[Harness, _Unread], fake: Fake
) -> None:
    """A stream whose head waits on a client reading nothing (pipelined behind an unread
    answer) is over at its deadline like any: its hold released, nothing charged, and the
    client that reads at last gets the 504. Before (xbreak s18) the head's send was outside
    the deadline: the hold — the buyer's funds and the lot's capacity — stayed active,
    extended every sweep, for as long as the client kept the connection."""
    gw, server = gw_unread
    gw.add_lot(fake)
    account, key = gw.buyer()
    answers: list[httpx.Response] = []

    def stream() -> None:
        body = {"model": "fake-flat", "messages": HELLO, "max_tokens": 4_000, "stream": True}
        with httpx.stream(
            "POST", gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as answer:
            answer.read()
            answers.append(answer)

    sender = threading.Thread(target=stream)
    sender.start()
    try:

        def statuses() -> list[str]:
            with gw.ledger.engine.connect() as conn:
                return [h.status for h in conn.execute(select(holds)).all()]

        until(statuses, "the stream's hold made", seconds=10)
        until(lambda: statuses() == ["released"], "the hold ended at the deadline (0.25 s)", seconds=2)
        balance = gw.ledger.balance(account, "USDC")
        assert (balance.posted, balance.held) == (10 * USDC, 0)
    finally:
        server.read.set()
        sender.join()
    assert answers[0].status_code == 504 and answers[0].json()["error"]["code"] == "request_deadline"
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC


def test_stream__client_leaves_with_a_request_pipelined_behind_it__neutral_for_the_lot__charged_what_it_streamed(
    gw: Harness, fake: Fake
) -> None:
    """uvicorn tells only the last request parsed on a connection that the connection closed:
    a stream with a request pipelined behind it whose client leaves never hears it, and its
    next write raises on the closed transport. That is its client leaving — charged what it
    streamed, not the lot's failure. Before (xbreak s18) the error ended it as a 'broken'
    stream of the lot: a buyer opened any lot's circuit (5 failures) for a few units each."""
    fake.config.chunk_delay_ms = 20  # 64 words: 1.3 s
    lot = gw.add_lot(fake)
    account, key = gw.buyer()
    host, port = gw.url.removeprefix("http://").split(":")

    def request(body: dict[str, Any]) -> bytes:
        raw = orjson.dumps({"model": "fake-flat", "messages": HELLO, **body})
        head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
        return (head + f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n").encode() + raw

    with socket.create_connection((host, int(port))) as client:
        client.sendall(request({"max_tokens": 64, "stream": True}) + request({"max_tokens": 1}))
        got = b""
        while b"alpha" not in got:
            got += client.recv(4096)

    def settled() -> list[Any]:
        with gw.ledger.engine.connect() as conn:
            return [h for h in conn.execute(select(holds)).all() if h.status == "settled"]

    [hold] = until(settled, "the stream settled once its client left", seconds=10)
    assert 0 < int(hold.charged) < int(hold.amount)  # what it streamed
    assert gw.gateway.health._lots[lot].errors == 0 and gw.gateway.health._lots[lot].failures == 0


@pytest.fixture
def gw_stalled(settings: Settings, tmp_path: Path) -> Iterator[tuple[Harness, list[int]]]:
    """A gateway on a ledger clock the test moves, whose own sweep pass runs only at start."""
    clock = [NOW]
    quiet = settings.model_copy(update={"gateway_sweep_seconds": 3_600})
    harness = _harness(quiet, f"sqlite:///{tmp_path}/ledger.sqlite3", clock=lambda: clock[0])
    yield next(harness), clock
    next(harness, None)


def test_deadline__answer_metered_past_its_horizon__refused_not_served__stream_uncharged__budget_back(
    gw_stalled: tuple[Harness, list[int]], fake: Fake
) -> None:
    """A gateway that stalls past a request's horizon while another process sweeps its
    hold (and gives its key's budget back): the answer, when it comes, is not served (504),
    nothing is charged — so the budget given back is never spent twice."""
    gw, clock = gw_stalled
    gw.add_lot(fake)
    account, key = gw.buyer(budget=("USDC", USDC))
    gate = threading.Event()
    fake.config.gate = gate
    answers: list[httpx.Response] = []
    body = {"model": "fake-flat", "messages": HELLO, "max_tokens": 16}
    sender = threading.Thread(
        target=lambda: answers.append(
            httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        )
    )
    sender.start()
    try:
        waited = time.monotonic() + 30
        while not gw.ledger.balance(account, "USDC").held:
            assert time.monotonic() < waited, "the request never held"
            time.sleep(0.01)
        clock[0] = NOW + LATE + 1  # the gateway stalled past the horizon; another one sweeps
        assert gw.ledger.holds.sweep() == 1
        assert key_of(gw, key).budget_remaining == USDC  # past its horizon: given back at once
    finally:
        gate.set()
        fake.config.gate = None
    sender.join()
    assert answers[0].status_code == 504 and answers[0].json()["error"]["code"] == "request_deadline"
    with gw.ledger.engine.connect() as conn:
        assert [(h.status, h.charged) for h in conn.execute(select(holds)).all()] == [("expired", None)]
        assert conn.execute(select(usage_records)).all() == []
    balance = gw.ledger.balance(account, "USDC")
    assert (balance.posted, balance.held) == (10 * USDC, 0) and key_of(gw, key).budget_remaining == USDC

    # A stream, likewise: its chunks were sent, its settle is refused — it ends without its
    # charge event, uncharged (the residual the README names), the budget whole.
    gate = threading.Event()
    fake.config.gate = gate
    streamed: list[bytes] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            gw.url + "/v1/chat/completions",
            json={**body, "stream": True},
            headers={"authorization": f"Bearer {key}"},
        ) as answer:
            streamed.append(answer.read())

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        while not gw.ledger.balance(account, "USDC").held:
            assert time.monotonic() < waited, "the stream never held"
            time.sleep(0.01)
        clock[0] += LATE + 1
        assert gw.ledger.holds.sweep() == 1
    finally:
        gate.set()
        fake.config.gate = None
    sender.join()
    assert b'"content"' in streamed[0] and b'"cost_units"' not in streamed[0]
    with gw.ledger.engine.connect() as conn:
        assert {h.status for h in conn.execute(select(holds)).all()} == {"expired"}
        assert conn.execute(select(usage_records)).all() == []
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC and key_of(gw, key).budget_remaining == USDC
