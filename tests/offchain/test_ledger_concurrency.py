"""1,000 concurrent reserves against a balance (or a signed cap) that covers exactly K:
exactly K succeed, on SQLite and on PostgreSQL. Threads start together at a barrier and
each opens its own transactions through the ledger's connection pool."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest
from ledger_helpers import fund

from promptex.ledger import AccountKind, BudgetExceeded, HoldStatus, InsufficientFunds, Ledger, SpendCapExceeded
from promptex.protocol.units import TOKEN_UNIT as TOKEN

RESERVES = 1_000
THREADS = 40
AMOUNT = 7 * TOKEN + 3  # an odd amount, past 64 bits once multiplied
K = 137


def _run_together(work: Callable[[int], None], threads: int = THREADS, count: int = RESERVES) -> None:
    """Run work(0..count-1) split over `threads` threads that start at once."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        barrier.wait()
        for i in range(offset, count, threads):
            try:
                work(i)
            except BaseException as exc:  # collected and re-raised in the main thread
                errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]


def _reserve_all(ledger: Ledger, account: int, request_id: Callable[[int], str]) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def reserve(i: int) -> None:
        try:
            ledger.reserve(account, "CLD", AMOUNT, request_id(i), ttl=600)
            outcome = "held"
        except (InsufficientFunds, SpendCapExceeded) as exc:
            outcome = type(exc).__name__
        with lock:
            outcomes[outcome] += 1

    _run_together(reserve)
    return outcomes


@pytest.fixture
def pooled_ledger(ledger_url, clock):
    book = Ledger.open(ledger_url, clock=clock, pool_size=THREADS // 2, sqlite_synchronous="NORMAL")
    yield book
    try:
        book.check()
    finally:
        book.close()


@pytest.mark.parametrize("binding", ["balance", "cap"])
def test_reserve__1000_concurrent_against_exactly_K__exactly_K_succeed(pooled_ledger, binding):
    ledger = pooled_ledger
    buyer = ledger.create_account().id
    if binding == "balance":
        fund(ledger, buyer, "CLD", K * AMOUNT, cap=10 * K * AMOUNT)
    else:
        fund(ledger, buyer, "CLD", 10 * K * AMOUNT, cap=K * AMOUNT)

    outcomes = _reserve_all(ledger, buyer, lambda i: f"req-{i}")

    refused = "InsufficientFunds" if binding == "balance" else "SpendCapExceeded"
    assert outcomes == {"held": K, refused: RESERVES - K}
    balance = ledger.balance(buyer, "CLD")
    assert balance.held == K * AMOUNT
    assert balance.reservable == 0
    assert ledger.problems() == []


def test_reserve__1000_concurrent_retries_of_100_requests__each_held_once(pooled_ledger):
    ledger = pooled_ledger
    buyer = ledger.create_account().id
    fund(ledger, buyer, "CLD", 1_000 * AMOUNT)

    outcomes = _reserve_all(ledger, buyer, lambda i: f"req-{i % 100}")

    assert outcomes == {"held": RESERVES}  # every retry answered with the hold
    assert ledger.balance(buyer, "CLD").held == 100 * AMOUNT
    assert ledger.problems() == []


def test_settle_and_sweep__racing_on_the_same_holds__each_hold_ends_once(pooled_ledger, clock):
    ledger = pooled_ledger
    buyer = ledger.create_account().id
    fund(ledger, buyer, "CLD", 200 * AMOUNT)
    for i in range(200):
        ledger.reserve(buyer, "CLD", AMOUNT, f"req-{i}", ttl=10)
    clock.advance(10)
    settled: list[str] = []

    def settle_or_sweep(i: int) -> None:
        if i % 5 == 0:
            ledger.sweep_expired(limit=20)
        elif i < 200:
            try:
                ledger.settle(f"req-{i}", TOKEN)
                settled.append(f"req-{i}")
            except Exception as exc:  # lost the race to the sweeper
                assert "expired" in str(exc)

    _run_together(settle_or_sweep, threads=8, count=250)
    ledger.sweep_expired()
    statuses = Counter(ledger.hold(f"req-{i}").status for i in range(200))
    assert statuses[HoldStatus.SETTLED] == len(settled)
    assert statuses[HoldStatus.SETTLED] + statuses[HoldStatus.EXPIRED] == 200
    balance = ledger.balance(buyer, "CLD")
    assert (balance.held, balance.posted) == (0, 200 * AMOUNT - len(settled) * TOKEN)
    assert ledger.problems() == []


def test_members_reserve_settle_release__concurrently_on_one_org__budgets_and_books_hold(pooled_ledger):
    ledger = pooled_ledger
    org = ledger.create_account(AccountKind.ORG, "acme").id
    fund(ledger, org, "USDC", 300 * 1_000_000)
    members = [ledger.create_account().id for _ in range(4)]
    for member in members:
        ledger.add_member(org, member)
        ledger.set_member_budget(org, member, "USDC", 100 * 1_000_000)
    charged: Counter[int] = Counter()
    lock = threading.Lock()

    def spend(i: int) -> None:
        member = members[i % len(members)]
        try:
            ledger.reserve(member, "USDC", 2_000_000, f"req-{i}", ttl=600, payer=org)
        except (BudgetExceeded, InsufficientFunds):
            return
        if i % 3:
            hold = ledger.settle(f"req-{i}", 1_000_000 + i)
            with lock:
                charged[member] += hold.charged
        else:
            ledger.release(f"req-{i}")

    _run_together(spend, threads=16, count=400)

    for member in members:
        budget = ledger.budget(org, member, "USDC")
        assert budget.held == 0
        assert budget.remaining == 100 * 1_000_000 - charged[member]
    balance = ledger.balance(org, "USDC")
    assert (balance.held, balance.posted) == (0, 300 * 1_000_000 - sum(charged.values()))
    assert balance.posted >= 0
    assert ledger.problems() == []


def test_sqlite_write__file_locked_by_another_writer__sqlalchemys_operational_error_after_the_busy_timeout(tmp_path):
    """BEGIN IMMEDIATE runs on the driver (the hot path's saving): a write lock held
    elsewhere still surfaces as SQLAlchemy's error type, which callers catch."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(f"sqlite:///{path}", busy_timeout_ms=50, sqlite_synchronous="NORMAL")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="database is locked"):
            ledger.create_account()
        other.execute("ROLLBACK")
        assert ledger.create_account().id > 0  # the lock gone, the same ledger writes again
    finally:
        other.close()
        ledger.close()
