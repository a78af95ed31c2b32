"""Breaking the gateway processes' ledger locks on PostgreSQL (`ledger.processes`): a live
process must keep its holds, whatever its lock connection's file descriptor."""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import threading
import time
from collections.abc import Iterator

import pytest
from ledger_helpers import fund
from sqlalchemy import text
from test_ledger_lanes import ASSET

from promptex.ledger import HoldOrphaned, HoldStatus, Ledger, LotClaim, Reservation, UsageRecord
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


def test_reserve_whose_id_was_lost_meanwhile__committed_after_the_new_registration__its_hold_follows(
    two: tuple[Ledger, Ledger],
) -> None:
    """Thread A reads the process's id, the lock connection is cut, thread B's reserve
    registers again and takes the old id's holds along, then A's reserve commits under the
    old id: its hold was left under a dead id and the next sweep ended it (A's answer
    refused, 503 hold_ended) although the process lived and held its new lock."""
    alive, sweeper = two
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    alive.holds.reserve(Reservation("first", account, ASSET, USDC, 300))
    lock = alive.holds.lock
    lost = lock.current()
    registered = lock.current
    cut = False

    def thread_a_reads_its_id() -> int:  # then, before its reserve is sent, B's registration runs
        nonlocal cut
        if not cut:
            cut = True
            _cut(alive, lost)
            alive.holds.reserve(Reservation("b", account, ASSET, USDC, 300))  # thread B: registers again
            return lost
        return registered()

    lock.current = thread_a_reads_its_id  # type: ignore[method-assign]
    alive.holds.reserve(Reservation("a", account, ASSET, USDC, 300))
    assert lock.id != lost
    assert sweeper.end_dead_processes() == 0
    for request_id in ("first", "a", "b"):
        assert alive.holds.settle(request_id, USDC // 4).status == HoldStatus.SETTLED
    assert alive.balance(account, ASSET).posted == 10 * USDC - 3 * (USDC // 4)


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
