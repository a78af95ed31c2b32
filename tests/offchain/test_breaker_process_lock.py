"""Breaking the gateway processes' ledger locks on PostgreSQL (`ledger.processes`): a live
process must keep its holds, whatever its lock connection's file descriptor."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import resource
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from ledger_helpers import fund
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from test_ledger_lanes import ASSET

from promptex.ledger import (
    Hold,
    HoldOrphaned,
    HoldStatus,
    Ledger,
    LotClaim,
    Reservation,
    Sweeper,
    UsageRecord,
    processes,
)
from promptex.ledger.errors import LedgerUnavailable
from promptex.ledger.local_postgres import LocalPostgres
from promptex.ledger.processes import LOCK_SPACE
from promptex.protocol.units import USD_MICRO as USDC

_databases = itertools.count()
HIGH_FD = 1100  # past select()'s FD_SETSIZE (1024)


@contextlib.contextmanager
def _low_fds_taken() -> Iterator[None]:
    """Every file descriptor below HIGH_FD in use, so the next socket opened lands above it
    (a busy gateway: thousands of client and upstream connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HIGH_FD + 64:
        if hard != resource.RLIM_INFINITY and hard < HIGH_FD + 64:
            pytest.skip(f"the hard limit of open files ({hard}) is below {HIGH_FD + 64}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH_FD + 64, hard))
    taken: list[int] = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            taken.append(fd)
            if fd >= HIGH_FD:
                break
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_lock_socket_above_fd_1024__live_process_keeps_one_id__its_holds_not_orphaned(
    two: tuple[Ledger, Ledger],
) -> None:
    """select() refuses a descriptor of 1024 or more (ValueError): the lock's health check
    took that for a lost connection, so every reserve registered again, closing the lock
    its earlier holds named — the next sweep ended a live process's holds in flight."""
    alive, sweeper = two
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    with _low_fds_taken():
        alive.holds.reserve(Reservation("first", account, ASSET, USDC, 300))  # registers: a high socket
    lock = alive.holds.lock
    assert lock.id is not None and lock._conn.pgconn.socket >= HIGH_FD
    process = lock.id
    alive.holds.reserve(Reservation("second", account, ASSET, USDC, 300))
    assert (lock.id, lock.registrations) == (process, 1)
    assert sweeper.end_dead_processes() == 0
    alive.holds.settle("first", USDC // 4)
    hold = alive.holds.settle("second", USDC // 4)
    assert hold.status == HoldStatus.SETTLED
    assert alive.balance(account, ASSET).posted == 10 * USDC - USDC // 2


def test_server_ends_idle_sessions__the_lock_session_is_exempt__live_holds_kept(
    postgres: LocalPostgres,
    clock,  # noqa: ANN001
) -> None:
    """A server (or the gateway's role) with `idle_session_timeout` ends every session idle
    that long, and the lock connection is idle for its whole life: each process lost its
    lock that often, and a sweep before its next reserve ended its holds in flight (a long
    stream: served, then refused). The lock session turns the timeout off for itself."""
    name = f"lock_breaker_{next(_databases)}"
    url = postgres.create_database(name, template="ledger_template")
    with contextlib.closing(Ledger.open(url, clock=clock)) as admin, admin.engine.begin() as conn:
        conn.execute(text(f"ALTER DATABASE {name} SET idle_session_timeout = '100ms'"))
    alive, sweeper = Ledger.open(url, clock=clock), Ledger.open(url, clock=clock)
    try:
        account = alive.create_account().id
        fund(alive, account, ASSET, 10 * USDC)
        alive.holds.reserve(Reservation("long", account, ASSET, USDC, 300))
        process = alive.holds.lock.id
        time.sleep(0.5)  # the stream runs on; idle sessions past 100 ms are ended meanwhile
        assert sweeper.end_dead_processes() == 0
        assert alive.holds.settle("long", USDC // 4).status == HoldStatus.SETTLED
        assert (alive.holds.lock.id, alive.holds.lock.registrations) == (process, 1)
        alive.check()
    finally:
        alive.close()
        sweeper.close()
        postgres.drop_database(name)


def _b_registers_again_while_a_reads_its_id(alive: Ledger) -> tuple[int, int, list[int]]:
    """A hold ("first") under the process's id; then the next reserve (thread A) reads that
    id, and before A's reserve is sent the lock session is cut and thread B's reserve ("b")
    registers again. Returns the account, the lost id, and a list that has one entry once
    the lock is cut, two once B has registered."""
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    alive.holds.reserve(Reservation("first", account, ASSET, USDC, 300))
    lock = alive.holds.lock
    lost = lock.current()
    registered = lock.current
    cut: list[int] = []

    def thread_a_reads_its_id() -> int:  # then, before its reserve is sent, B's registration runs
        if not cut:
            cut.append(lost)
            _cut(alive, lost)
            alive.holds.reserve(Reservation("b", account, ASSET, USDC, 300))  # thread B: registers again
            cut.append(0)
            return lost
        return registered()

    lock.current = thread_a_reads_its_id  # type: ignore[method-assign]
    return account, lost, cut


def test_reserve_whose_id_was_lost_meanwhile__committed_after_the_new_registration__its_hold_follows(
    two: tuple[Ledger, Ledger],
) -> None:
    """Thread A reads the process's id, the lock connection is cut, thread B's reserve
    registers again and takes the old id's holds along, then A's reserve commits under the
    old id: its hold was left under a dead id and the next sweep ended it (A's answer
    refused, 503 hold_ended) although the process lived and held its new lock."""
    alive, sweeper = two
    account, lost, _ = _b_registers_again_while_a_reads_its_id(alive)
    alive.holds.reserve(Reservation("a", account, ASSET, USDC, 300))
    assert alive.holds.lock.id != lost
    assert sweeper.end_dead_processes() == 0
    for request_id in ("first", "a", "b"):
        assert alive.holds.settle(request_id, USDC // 4).status == HoldStatus.SETTLED
    assert alive.balance(account, ASSET).posted == 10 * USDC - 3 * (USDC // 4)


def test_reserve_whose_id_was_lost_meanwhile__another_sweep_between_its_commit_and_its_move__its_hold_kept(
    two: tuple[Ledger, Ledger],
) -> None:
    """pgbreak remaining 1 (the `_follow` gap): as above, thread A's reserve commits under
    the lost id after thread B's registration took that id's holds along; before A's hold
    moves under the new id, ANOTHER process's sweep runs. The lost id's lock was free, so
    that sweep ended A's hold as orphaned — a live process's request refused (503
    hold_ended) — where the same sweep a moment later finds nothing to end. Now the new
    registration holds the lost id's lock too: no sweeper can take it while the process
    lives, and A's hold moves under the new id."""
    alive, sweeper = two
    account, lost, _ = _b_registers_again_while_a_reads_its_id(alive)
    book = alive.holds
    follow = book._follow
    swept: list[int] = []

    def another_sweep_first(hold: Hold, started: int) -> Hold:
        if hold.request_id == "a":  # committed under the lost id, not yet moved
            swept.append(sweeper.end_dead_processes())
        return follow(hold, started)

    book._follow = another_sweep_first  # type: ignore[method-assign]
    alive.holds.reserve(Reservation("a", account, ASSET, USDC, 300))
    assert book.lock.id != lost and swept == [0]  # before: 1, A's hold orphaned
    assert sweeper.end_dead_processes() == 0
    for request_id in ("first", "a", "b"):
        assert alive.holds.settle(request_id, USDC // 4).status == HoldStatus.SETTLED
    assert alive.balance(account, ASSET).posted == 10 * USDC - 3 * (USDC // 4)


def test_reserve_whose_id_was_lost_meanwhile__its_move_fails__503_and_its_own_sweep_releases_it(
    two: tuple[Ledger, Ledger],
) -> None:
    """pgbreak2: as above, thread A's reserve commits under the lost id after thread B's
    registration took that id's holds along — and its move under the new id fails (the
    database blinks): a raw OperationalError (the gateway's 500), the request given up, its
    hold left under the lost id, whose lock the new lock session holds (83dc3aa). No other
    process's sweep could end it, and the process's own looked only at its new id: held for
    its whole lifetime. Now a 503 (LedgerUnavailable), and its own next sweep releases it."""
    alive, sweeper = two
    account, lost, cut = _b_registers_again_while_a_reads_its_id(alive)
    book = alive.holds
    lock, write = book.lock, book.ledger.write

    def blinks_once(work: Any) -> Any:
        if len(cut) == 2:  # B has registered: A's next write is its move
            cut.append(0)
            raise OperationalError("UPDATE holds", {}, psycopg.OperationalError("server closed the connection"))
        return write(work)

    book.ledger = dataclasses.replace(book.ledger, write=blinks_once)
    with pytest.raises(LedgerUnavailable):  # before: OperationalError (a 500)
        book.reserve(Reservation("a", account, ASSET, USDC, 300))
    book.ledger = dataclasses.replace(book.ledger, write=write)
    assert lock.id != lost and lock.kept == (lost,)
    assert sweeper.end_dead_processes() == 0  # the lost id's lock is this process's
    assert Sweeper(alive).run_once() == 1  # before: 0, "a" held for its lifetime
    assert alive.hold("a") is not None and alive.hold("a").status == HoldStatus.RELEASED  # type: ignore[union-attr]
    for request_id in ("first", "b"):
        assert book.settle(request_id, USDC // 4).status == HoldStatus.SETTLED
    assert alive.balance(account, ASSET).held == 0


def test_registration__ids_whose_lock_another_session_holds__moved_past_or_not_kept__never_waited_for(
    two: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration keeps its lost id's lock, so another registration may meet an id whose
    lock a live session holds (its row gone, the ids' sequence gone back): it moves past it
    instead of waiting for it for as long as that process lives (before: a plain
    pg_advisory_lock, the reserve hung). And a lost id whose lock another session took
    meanwhile (the same sequence gone back) is not kept: waited for `LOST_LOCK_WAIT` at
    most, the registration goes on and still takes its holds along."""
    alive, _ = two
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    alive.holds.reserve(Reservation("first", account, ASSET, USDC, 300))
    lost = alive.holds.lock.current()
    monkeypatch.setattr(processes, "LOST_LOCK_WAIT", 0.2)
    with psycopg.connect(alive.holds.lock.url, autocommit=True) as other:
        next_id = other.execute(
            "SELECT last_value + 1 FROM pg_sequences WHERE sequencename = 'ledger_processes_id_seq'"
        ).fetchone()
        assert next_id is not None
        other.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_SPACE, next_id[0]))
        _cut(alive, lost)
        other.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_SPACE, lost))
        done = threading.Event()

        def reserve() -> None:
            alive.holds.reserve(Reservation("second", account, ASSET, USDC, 300))  # registers again
            done.set()

        threading.Thread(target=reserve, daemon=True).start()
        assert done.wait(20), "the registration waited for a lock another session holds"
    again = alive.holds.lock.id
    assert again is not None and again not in (lost, next_id[0])
    with alive.engine.connect() as conn:
        assert set(conn.execute(text("SELECT process_id FROM holds")).scalars()) == {again}
    for request_id in ("first", "second"):
        assert alive.holds.settle(request_id, USDC // 4).status == HoldStatus.SETTLED


def _cut(ledger: Ledger, process: int) -> None:
    """The database ends `process`'s lock session (as a restart or a network cut would)."""
    with ledger.engine.begin() as conn:
        killed = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid, 30000) FROM pg_locks"  # waits until it has ended
                " WHERE locktype = 'advisory' AND classid = :space AND objid = :p AND granted"
            ),
            {"space": LOCK_SPACE, "p": process},
        ).scalars()
        assert list(killed) == [True]


def _sweep_once(sweeper: Ledger, start: threading.Barrier, ended: list[int | BaseException]) -> None:
    start.wait()
    try:
        ended.append(sweeper.end_dead_processes())
    except BaseException as exc:  # the test thread asserts on it
        ended.append(exc)


def test_settle_racing_a_sweep_after_a_lock_cut__charged_or_ended_never_both(two: tuple[Ledger, Ledger]) -> None:
    """Round after round, a live process's lock is cut while it settles a request (through
    the one-statement path, or the general one with lot capacity) and another process
    sweeps at the same moment: the hold ends exactly one way — settled and charged, or
    orphaned and refused with nothing charged — and the books balance."""
    alive, sweeper = two
    with alive.engine.begin() as conn:
        alive.open_lot_capacity(conn, 7, 1_000 * USDC)
    account = alive.create_account().id
    fund(alive, account, ASSET, 100 * USDC)
    outcomes: dict[str, str] = {}
    for i in range(10):
        request_id = f"r{i}"
        lots = [LotClaim(7, USDC)] if i % 2 else []
        alive.holds.reserve(Reservation(request_id, account, ASSET, USDC, 300, lots=lots))  # registers again
        process = alive.holds.lock.id
        assert process is not None
        _cut(alive, process)
        start = threading.Barrier(2)
        ended: list[int | BaseException] = []

        sweeping = threading.Thread(target=_sweep_once, args=(sweeper, start, ended))
        sweeping.start()
        record = UsageRecord("m", 1, 1, USDC // 2, gateway_lot_id=7) if i % 2 else None
        start.wait()
        try:
            alive.holds.settle(request_id, USDC // 4, record=record)
            outcomes[request_id] = "settled"
        except HoldOrphaned:
            outcomes[request_id] = "refused"
        sweeping.join()
        ended.append(sweeper.end_dead_processes())
        assert all(isinstance(n, int) for n in ended), ended
        status = alive.hold(request_id).status  # type: ignore[union-attr]
        if outcomes[request_id] == "settled":
            assert status == HoldStatus.SETTLED and sum(ended) == 0  # type: ignore[arg-type]
        else:
            assert status == HoldStatus.ORPHANED and sum(ended) == 1  # type: ignore[arg-type]
            assert alive.usage_record(request_id) is None
    settled = sum(1 for outcome in outcomes.values() if outcome == "settled")
    balance = alive.balance(account, ASSET)
    assert (balance.posted, balance.held) == (100 * USDC - settled * (USDC // 4), 0)
    sweeper.holds.maintain()
    alive.holds.maintain()
    assert alive.lot_capacities()[7].reserved == 0


def test_ids_sequence_went_back__registration_moves_past_the_ids_in_use(two: tuple[Ledger, Ledger]) -> None:
    """After a failover to a logical replica (sequences are not copied) or a data-only
    restore, the next id may be one a row has: the registration failed on the duplicate key,
    and so did the reserve behind it, one request per id in use."""
    first, second = two
    account = first.create_account().id
    fund(first, account, ASSET, 10 * USDC)
    first.holds.reserve(Reservation("first", account, ASSET, USDC, 300))
    with first.engine.begin() as conn:
        conn.execute(text("SELECT setval(pg_get_serial_sequence('ledger_processes', 'id'), 1, false)"))
    second.holds.reserve(Reservation("second", account, ASSET, USDC, 300))
    assert second.holds.lock.id not in (None, first.holds.lock.id)
    assert second.end_dead_processes() == 0 and first.end_dead_processes() == 0
    for request_id in ("first", "second"):
        assert first.holds.settle(request_id, USDC // 4).status == HoldStatus.SETTLED


def test_ids_sequence_went_back__an_id_only_active_holds_still_name__not_taken_again(
    two: tuple[Ledger, Ledger],
) -> None:
    """pgbreak's remaining 4 (pbreak Open 1): a dead process's row was forgotten while a hold
    of it stayed active (a sweep skipped it, locked), then the ids' sequence went back. The
    next registration took that id (no row: no duplicate key), its live lock made the dead
    hold look live, and it waited for its lifetime. Now the registration moves past it and
    the next sweep ends it."""
    dead, live = two
    account = dead.create_account().id
    fund(dead, account, ASSET, 10 * USDC)
    dead.holds.reserve(Reservation("left-behind", account, ASSET, USDC, 300))
    gone = dead.holds.lock.id
    assert gone is not None
    dead.holds.lock.close()  # the process dies
    with dead.engine.begin() as conn:  # its row forgotten, its hold not; the sequence back to its id
        conn.execute(text("DELETE FROM ledger_processes WHERE id = :p"), {"p": gone})
        conn.execute(text("SELECT setval(pg_get_serial_sequence('ledger_processes', 'id'), :p, false)"), {"p": gone})
    live.holds.reserve(Reservation("live", account, ASSET, USDC, 300))
    assert live.holds.lock.id not in (None, gone)
    assert live.end_dead_processes() == 1  # the dead process's hold, not the live one's
    with live.engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT request_id, status FROM holds")).all())
    assert statuses == {"left-behind": "orphaned", "live": "active"}
    live.holds.settle("live", USDC // 4)
    assert live.balance(account, ASSET).held == 0
