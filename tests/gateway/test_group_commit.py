"""Group commit on the SQLite ledger (`LedgerThreads.run_grouped` with `Ledger.group`):
writes queued while the ledger thread is busy share one transaction, each in a savepoint
of its own — a balance covering K holds still holds exactly K, one write that raises is
rolled back alone, and a group whose commit fails leaves nothing and runs each write
alone; all of it on the ledger thread's pinned connection, as in the gateway. Writes that
find the ledger idle run on the event loop itself (`inline`), with the same outcomes, and
never wait there for the lock. (A gateway killed with groups in flight:
`test_holds_processes.py`.)"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import Connection

from promptex.gateway.ledger_threads import LedgerThreads
from promptex.ledger import Ledger
from promptex.ledger.binding import sign
from promptex.ledger.errors import InsufficientFunds, WriterBusy
from promptex.ledger.holds import ExtraTake, Reservation
from promptex.ledger.models import Hold, HoldStatus
from promptex.ledger.usage import UsageRecord

from .conftest import event_id

HOLD, K, QUEUED = 1_000, 10, 30
BOOM = "boom"


class Boom:
    """An extra counter that fails after the hold took the payer's funds."""

    name = BOOM

    def take(self, conn: Connection, hold: Hold, amount: int) -> None:
        raise RuntimeError("the extra failed after the funds were taken")

    def settle(self, conn: Connection, hold: Hold, record: UsageRecord | None, late: bool) -> None: ...

    def give_back(self, conn: Connection, hold: Hold) -> None: ...


@pytest.fixture
def book(tmp_path: Path) -> Iterator[tuple[Ledger, int]]:
    """A SQLite ledger and an account whose balance covers exactly K holds."""
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", sqlite_synchronous="NORMAL")
    ledger.holds.register(Boom())
    account = ledger.create_account().id
    wallet = Account.create()
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    ledger.credit_deposit(event_id(), wallet.address, "USDC", K * HOLD)
    ledger.set_spend_cap(account, "USDC", K * HOLD)
    yield ledger, account
    ledger.check()
    ledger.close()


def _queued_together(
    ledger: Ledger, account: int, grouper: Callable[[], AbstractContextManager[Any]]
) -> tuple[LedgerThreads, list[object]]:
    """QUEUED reserves (the 6th with the failing extra) queued while the one ledger thread
    is held busy, so they reach it together; their outcomes in order."""
    threads = LedgerThreads(1, grouper=grouper, per_thread=ledger.pinned_connection)  # as the gateway's
    busy, free = threading.Event(), threading.Event()

    def hold_the_thread() -> None:
        busy.set()
        free.wait(30)

    async def run() -> list[object]:
        blocker = asyncio.ensure_future(threads.run(hold_the_thread))
        await asyncio.get_running_loop().run_in_executor(None, busy.wait, 30)
        reserves = [
            asyncio.ensure_future(
                threads.run_grouped(
                    ledger.holds.reserve,
                    Reservation(f"req-{i}", account, "USDC", HOLD, 900, extras=(ExtraTake(BOOM, 1),) if i == 5 else ()),
                )
            )
            for i in range(QUEUED)
        ]
        await asyncio.sleep(0)  # each is queued behind the busy thread now
        free.set()
        await blocker
        return list(await asyncio.gather(*reserves, return_exceptions=True))

    try:
        return threads, asyncio.run(run())
    finally:
        threads.close()


def _exactly_k_held(ledger: Ledger, account: int, outcomes: list[object]) -> None:
    held = [o for o in outcomes if isinstance(o, Hold)]
    assert [h.request_id for h in held] == [f"req-{i}" for i in (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)]
    assert all(h.status == HoldStatus.ACTIVE for h in held)
    assert isinstance(outcomes[5], RuntimeError)  # rolled back alone: its funds are not held
    assert all(isinstance(o, InsufficientFunds) for o in outcomes[11:])
    assert ledger.balance(account, "USDC").held == K * HOLD
    assert ledger.holds.get("req-5") is None and ledger.holds.get("req-11") is None


def test_group_commit__queued_reserves_share_one_commit__exactly_k_held__a_failing_one_rolled_back_alone(
    book: tuple[Ledger, int],
) -> None:
    ledger, account = book
    threads, outcomes = _queued_together(ledger, account, ledger.group)
    assert (threads.groups, threads.grouped) == (1, QUEUED)  # one transaction for all of them
    _exactly_k_held(ledger, account, outcomes)


def test_group_commit__commit_fails__nothing_of_it_stays__each_runs_alone(book: tuple[Ledger, int]) -> None:
    ledger, account = book
    attempts = 0

    @contextmanager
    def failing_commit() -> Iterator[None]:
        nonlocal attempts
        attempts += 1
        with ledger.group():
            yield
            raise OSError("disk full")  # inside the transaction: it rolls back

    threads, outcomes = _queued_together(ledger, account, failing_commit)
    assert (attempts, threads.groups) == (1, 0)
    _exactly_k_held(ledger, account, outcomes)  # as if it had never been grouped: no hold twice


def test_group_commit__groups_do_not_nest(book: tuple[Ledger, int]) -> None:
    ledger, _ = book
    with ledger.group(), pytest.raises(RuntimeError, match="do not nest"), ledger.group():
        pass


def test_pinned_connection__reused_by_the_threads_writes__a_failed_one_rolled_back__a_dropped_one_replaced(
    book: tuple[Ledger, int],
) -> None:
    ledger, account = book
    with ledger.pinned_connection():
        pinned = ledger._pinned.conn
        with pytest.raises(RuntimeError):
            ledger.holds.reserve(Reservation("boom", account, "USDC", HOLD, 900, extras=(ExtraTake(BOOM, 1),)))
        assert ledger.holds.get("boom") is None and ledger.balance(account, "USDC").held == 0  # rolled back
        ledger.holds.reserve(Reservation("a", account, "USDC", HOLD, 900))
        assert ledger._pinned.conn is pinned and not pinned.in_transaction()  # committed, connection kept
        pinned.invalidate()  # the database dropped it
        ledger.holds.reserve(Reservation("b", account, "USDC", HOLD, 900))
        assert ledger._pinned.conn is not pinned
    assert ledger._pinned.conn is None
    assert ledger.balance(account, "USDC").held == 2 * HOLD  # read through the pool: both committed


# ─── Writes run on the event loop while the ledger is idle (`LedgerThreads._inline`) ───


def _inline_threads(ledger: Ledger, gap: float = 0.0) -> LedgerThreads:
    """As the gateway's, with writes on the loop whenever the ledger is idle (`gap` 0:
    however fast they come)."""
    return LedgerThreads(
        1, grouper=ledger.group, per_thread=ledger.pinned_connection, inline=ledger.try_writes, inline_gap=gap
    )


def _reserve(threads: LedgerThreads, ledger: Ledger, account: int, request_id: str, boom: bool = False) -> Any:
    extras = (ExtraTake(BOOM, 1),) if boom else ()
    return threads.run_grouped(ledger.holds.reserve, Reservation(request_id, account, "USDC", HOLD, 900, extras=extras))


def test_inline__idle_ledger__writes_run_on_the_loop__exactly_k_held__a_failing_one_rolled_back_alone(
    book: tuple[Ledger, int], tmp_path: Path
) -> None:
    ledger, account = book
    threads = _inline_threads(ledger)

    async def run() -> list[object]:
        outcomes: list[object] = []
        for i in range(K + 3):  # one at a time: the ledger is idle for each
            try:
                outcomes.append(await _reserve(threads, ledger, account, f"req-{i}", boom=i == 5))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    try:
        outcomes = asyncio.run(run())
    finally:
        threads.close()
    assert threads.inlined == K + 3  # none woke the ledger thread
    held = [o for o in outcomes if isinstance(o, Hold)]
    assert [h.request_id for h in held] == [f"req-{i}" for i in (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)]
    assert isinstance(outcomes[5], RuntimeError) and ledger.holds.get("req-5") is None  # rolled back alone
    assert all(isinstance(o, InsufficientFunds) for o in outcomes[11:])
    assert not ledger.commits_wait_for_disk  # NORMAL: the gateway runs such writes on its loop if asked
    with Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", sqlite_synchronous="FULL") as other:
        assert other.balance(account, "USDC").held == K * HOLD  # committed: another connection sees it
        assert other.commits_wait_for_disk  # FULL: "normal" leaves them on the thread


def test_inline__ledger_busy_or_calls_coming_fast__writes_go_to_the_thread(book: tuple[Ledger, int]) -> None:
    ledger, account = book
    threads = _inline_threads(ledger)
    fast = _inline_threads(ledger, gap=10.0)  # calls "less than 10 s apart" on average: always fast
    busy, free = threading.Event(), threading.Event()

    def hold_the_writer() -> None:  # the ledger thread mid-write: the write lock is taken
        with ledger.group():
            busy.set()
            free.wait(30)

    async def run() -> None:
        blocker = asyncio.ensure_future(threads.run(hold_the_writer))
        await asyncio.get_running_loop().run_in_executor(None, busy.wait, 30)
        queued = asyncio.ensure_future(_reserve(threads, ledger, account, "while-busy"))
        await asyncio.sleep(0)  # it tried the loop, found the lock taken, and queued
        assert threads.inlined == 0 and not queued.done()
        free.set()
        await blocker
        assert isinstance(await queued, Hold)
        assert isinstance(await _reserve(fast, ledger, account, "fast"), Hold)

    try:
        asyncio.run(run())
    finally:
        threads.close()
        fast.close()
    assert (threads.inlined, fast.inlined) == (0, 0)
    assert ledger.balance(account, "USDC").held == 2 * HOLD


def test_inline__another_process_holds_the_write_lock__never_waits_on_the_loop__the_thread_does(
    book: tuple[Ledger, int], tmp_path: Path
) -> None:
    ledger, account = book
    threads = _inline_threads(ledger)
    other = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)  # as another process would
    other.execute("BEGIN IMMEDIATE")

    async def run() -> Hold:
        queued = asyncio.ensure_future(_reserve(threads, ledger, account, "locked-out"))
        await asyncio.sleep(0)  # the loop's attempt found SQLite's lock taken and gave it to the thread
        assert threads.inlined == 0 and ledger.holds.get("locked-out") is None
        other.execute("ROLLBACK")  # the thread, which waits for the lock (busy timeout), goes on
        return await queued  # type: ignore[no-any-return]

    try:
        assert isinstance(asyncio.run(run()), Hold)
        conn = ledger._writer_conn  # the ledger thread's: it waits for the lock again as before
        assert conn is not None and not conn.closed
        assert conn.connection.dbapi_connection.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000  # type: ignore[union-attr]
        other.execute("BEGIN IMMEDIATE")
        writes = ledger.try_writes()
        assert writes is not None
        with writes, pytest.raises(WriterBusy):  # nothing of it done
            ledger.holds.reserve(Reservation("direct", account, "USDC", HOLD, 900))
        other.execute("ROLLBACK")
    finally:
        threads.close()
        other.close()
    assert threads.inlined == 0 and ledger.holds.get("direct") is None
    assert ledger.balance(account, "USDC").held == HOLD
