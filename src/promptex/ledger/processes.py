"""Gateway processes on PostgreSQL: each registers itself and holds a lock that tells the
others whether it still lives, so a dead process's holds end at once, not after their
lifetime.

A process that reserves registers first (`ProcessLock.current`): on a connection of its own,
in one transaction, it inserts a `ledger_processes` row (its id, its capacity leases'
holder name, host and pid) and takes the session advisory lock named by that id, which it
keeps for as long as it lives and never uses the connection for anything else. Every hold
it makes records that id (`holds.process_id`). PostgreSQL drops a session's locks when its
backend ends, and the kernel closes a killed process's socket at once: so a sweeper that
can take the lock (`dead`: `pg_try_advisory_xact_lock`, released with its transaction)
knows the process's lock session is gone, and ends its active holds as "orphaned" —
funds, lot capacity, extras (limits, a signed lane) back — and gives its leases back.

A free lock proves that the lock SESSION ended, not that the process did: a database
restart or a cut connection frees it under a live process. So an orphaned hold's late
answer is refused (`HoldOrphaned`, nothing charged: as if its process had died after the
upstream call), unlike an expired one's, and a process whose lock connection is gone
registers again, under a new id, before its next reserve (a lost connection is seen as its
socket turning readable: the server's goodbye, or end of file; client keepalives find a
silent cut), and takes its holds still active under the old id along (those a sweeper has
not ended first: either way each hold is ended or kept, never both); the new registration
also keeps the lost id's lock, so a reserve that read the old id and commits after it is
never ended by a sweep before its hold moves under the new id. The lock is a
session lock: the ledger must not be reached through a transaction-pooling proxy
(pgbouncer in transaction mode), where a session is not a connection. The lock session
turns `idle_session_timeout` off for itself (a server or role may set it: the session is
idle for its whole life).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, union, update
from sqlalchemy import select as select_

from promptex.ledger.errors import LedgerUnavailable
from promptex.ledger.schema import capacity_leases, holds, ledger_processes

log = logging.getLogger("promptex.ledger")

LOCK_SPACE = 0x70726F63  # the advisory locks' first key ("proc"); the second is the process id
_REGISTER = "INSERT INTO ledger_processes (holder, host, pid, started_at) VALUES (%s, %s, %s, %s) RETURNING id"
_PAST_IDS = """SELECT setval(pg_get_serial_sequence('ledger_processes', 'id'), GREATEST(
    (SELECT coalesce(max(id), 0) FROM ledger_processes),
    (SELECT coalesce(max(process_id), 0) FROM holds WHERE status = 'active'),
    nextval(pg_get_serial_sequence('ledger_processes', 'id'))))"""
_NAMED = "SELECT 1 FROM holds WHERE status = 'active' AND process_id = %s LIMIT 1"
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
_ATTEMPTS = 5  # ids tried by one registration whose lock another session holds
LOST_LOCK_WAIT = 2.0  # seconds a registration waits for its lost id's lock (`_keep_lost`)
_KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}


class ProcessLock:
    """This process's registration and its lock connection (PostgreSQL)."""

    def __init__(self, url: str, holder: str, clock: Any) -> None:
        self.url = url
        self.holder = holder
        self.clock = clock
        self.registrations = 0  # how many times this process registered (again after a lost lock)
        self._conn: Any = None
        self._id: int | None = None
        self._pid = 0  # the pid that registered (a forked child registers again)
        self._previous: int | None = None  # the id lost, whose holds the next registration takes along
        self._mutex = threading.Lock()
        self.started = 0  # registrations begun (`moved_on`)
        self.failures = 0  # registrations that could not reach the database
        self.kept: tuple[int, ...] = ()  # a lost id whose lock the lock session holds too (`_keep_lost`)

    def current(self) -> int:
        """This process's id, registering (again) first if it has none or its lock
        connection is gone. One poll of the socket when all is well. Raises
        LedgerUnavailable if the database cannot be reached within the URL's connect timeout
        — at once for a caller that waited on a registration that failed so (each reserve
        waits for one attempt at most, not for each of those queued before it)."""
        process = self._id
        if process is not None and self._pid == os.getpid() and not _readable(self._conn):
            return process
        failures = self.failures
        with self._mutex:
            if self._id is None or self._pid != os.getpid() or self._lost():
                if self.failures != failures:
                    raise LedgerUnavailable("the ledger's database could not be reached (registering this process)")
                self._register()
            assert self._id is not None
            return self._id

    def moved_on(self, started: int) -> int | None:
        """The id registered now if a registration began since `started` was read (each
        reserve reads it before `current`), else None. A reserve whose id was lost while it
        ran may commit after the new registration took the old id's holds along: its hold
        must follow (`PostgresHolds.reserve`), or a sweep ends a live process's request.
        Read after the hold is committed: a registration not begun by then takes it along."""
        if self.started == started:
            return None
        with self._mutex:  # one under way: its id once it is done
            return self._id

    @property
    def id(self) -> int | None:
        """The id registered now (None before the first reserve)."""
        return self._id

    @property
    def registered_before(self) -> bool:
        """This process has registered: an id now, or one lost whose holds the next
        registration takes along (a registration after the loss failed: the id is None then,
        yet this process's sweep must register again first, or it ends its own holds)."""
        return self._id is not None or self._previous is not None

    def _lost(self) -> bool:
        """The lock connection is gone (called with the mutex): something arrived on a
        connection that never asks anything — the server's goodbye or end of file, or a
        notice (read and dropped: the connection is still good)."""
        conn = self._conn
        if conn is None or conn.closed:
            return True
        if not _readable(conn):
            return False
        from psycopg import pq

        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
            while not pgconn.is_busy() and pgconn.get_result() is not None:
                pass
        except Exception:
            return True
        return bool(pgconn.status != pq.ConnStatus.OK or _readable(conn))

    def _register(self) -> None:
        import psycopg

        self.started += 1
        if self._pid != os.getpid():  # a forked child adopts nothing of its parent's
            self._id = self._previous = None
        elif self._id is not None:  # kept until a registration succeeds (the database may be down now)
            self._previous = self._id
        old = self._previous
        self._drop()
        try:
            conn = psycopg.connect(self.url, autocommit=False, **_KEEPALIVES)
        except psycopg.OperationalError as exc:  # within the URL's connect_timeout (`ledger.db`)
            self.failures += 1
            raise LedgerUnavailable(f"the ledger's database could not be reached: {exc}") from exc
        try:
            if conn.info.server_version >= 140000:
                # Idle for its whole life by design: a server (or role) that ends idle
                # sessions would end this one, and its process's holds with it.
                conn.execute("SET idle_session_timeout = 0")
            host = socket.gethostname()[:64]
            args = (self.holder, host, os.getpid(), int(self.clock()))
            try:
                with conn.transaction():  # a savepoint
                    row = conn.execute(_REGISTER, args).fetchone()
            except psycopg.errors.UniqueViolation:
                # The ids' sequence went back (a failover to a logical replica, which does not
                # copy sequences; a data-only restore): on past the ids in use, never back.
                conn.execute(_PAST_IDS)
                row = conn.execute(_REGISTER, args).fetchone()
            assert row is not None
            if conn.execute(_NAMED, (row[0],)).fetchone() is not None:
                # Active holds name this id: a dead process's whose row a sweep forgot while
                # skipping a hold it found locked, the sequence gone back since. Its lock is
                # free, so the next sweep ends them; this process takes an id past them.
                conn.execute("DELETE FROM ledger_processes WHERE id = %s", (row[0],))
                conn.execute(_PAST_IDS)
                row = conn.execute(_REGISTER, args).fetchone()
            assert row is not None
            # Taken before the row is visible: no one ever sees a row whose lock is free
            # while its process lives. Held by another session already (a live process
            # keeping a lost id of its own, below, its row gone and the sequence gone back):
            # on past it, never waiting for it.
            for _ in range(_ATTEMPTS):
                taken = conn.execute(_TRY_LOCK, (LOCK_SPACE, row[0])).fetchone()
                if taken is not None and taken[0]:
                    break
                conn.execute("DELETE FROM ledger_processes WHERE id = %s", (row[0],))
                conn.execute(_PAST_IDS)
                row = conn.execute(_REGISTER, args).fetchone()
                assert row is not None
            else:
                raise LedgerUnavailable(f"no free process id after {_ATTEMPTS} tries")
            process = int(row[0])
            adopted = 0
            kept: tuple[int, ...] = ()
            if old is not None and self._keep_lost(conn, old):
                kept = (old,)
                # The lost id's lock is this session's too, for as long as it lives: a
                # reserve that read the old id before the loss and commits after this
                # registration (its hold under the old id until `PostgresHolds._follow`
                # moves it) is never ended by another process's sweep meanwhile. Its row
                # goes: this process is registered under the new id.
                conn.execute("DELETE FROM ledger_processes WHERE id = %s", (old,))
            if old is not None:
                # This process's holds still active under its lost id, now under the new one's
                # lock: a sweeper that took the old lock first has made them orphaned already
                # (this waits for it, then skips them), else it will not (it ends the old id's).
                adopted = conn.execute(
                    "UPDATE holds SET process_id = %s WHERE process_id = %s AND status = 'active'", (process, old)
                ).rowcount
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        self._conn, self._id, self._pid, self._previous, self.kept = conn, process, os.getpid(), None, kept
        self.registrations += 1
        if old is not None:
            log.warning(
                "ledger lock connection of process %d was lost: registered again as %d (%d holds in flight kept)",
                old, process, adopted,
            )  # fmt: skip

    @staticmethod
    def _keep_lost(conn: Any, old: int) -> bool:
        """Take the lost id's lock in this (registering) transaction's session, waiting at
        most `LOST_LOCK_WAIT` for a sweeper that holds it now (it commits the holds it ended
        and lets go); False if it is still held then (a sequence gone back gave the id to
        another live process): not kept, nothing waits on it."""
        import psycopg

        try:
            with conn.transaction():  # a savepoint: its lock_timeout ends with it
                conn.execute(f"SET LOCAL lock_timeout = '{int(LOST_LOCK_WAIT * 1000)}ms'")
                conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_SPACE, old))
                conn.execute("SET LOCAL lock_timeout = 0")
        except psycopg.errors.LockNotAvailable:
            log.warning("the lost process id %d's lock is held elsewhere: not kept", old)
            return False
        return True

    def _drop(self) -> None:
        conn, self._conn, self._id, self.kept = self._conn, None, None, ()
        if conn is not None and self._pid == os.getpid():  # never a forked parent's connection
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Unregister (the lock goes with the connection); sweepers then end what this
        process left active."""
        with self._mutex:
            self._drop()


def _readable(conn: Any) -> bool:
    """Something arrived on `conn`'s socket (or it is closed): never on a healthy idle one.
    poll(), not select(): select() refuses a descriptor of 1024 or more, which a busy
    gateway's lock socket may well be, and every reserve would then register again."""
    if conn is None or conn.closed:
        return True
    try:
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def dead(conn: Connection) -> list[int]:
    """The registered processes (and those active holds name) whose lock this transaction
    could take: their lock sessions are gone. The locks are held until the transaction ends."""
    candidates = union(
        select_(ledger_processes.c.id.label("p")),
        select_(holds.c.process_id.label("p")).where(holds.c.status == "active", holds.c.process_id.is_not(None)),
    ).subquery()
    free = select_(candidates.c.p).where(func.pg_try_advisory_xact_lock(LOCK_SPACE, candidates.c.p))
    found: list[Any] = list(conn.execute(free.order_by(candidates.c.p)).scalars())
    return sorted(int(p) for p in found)


def forget(conn: Connection, processes: Sequence[int], now: int) -> None:
    """Dead processes' rows deleted; their capacity leases due now (the next lease trim
    gives their idle room back to the lots)."""
    if not processes:
        return
    holders = select_(ledger_processes.c.holder).where(ledger_processes.c.id.in_(list(processes)))
    conn.execute(
        update(capacity_leases)
        .where(capacity_leases.c.holder.in_(holders), capacity_leases.c.expires_at >= now)
        .values(expires_at=now - 1)
    )
    conn.execute(delete(ledger_processes).where(ledger_processes.c.id.in_(list(processes))))


def registered(conn: Connection, host: str, pid: int) -> bool:
    """A process `pid` on `host` is still registered."""
    return (
        conn.execute(
            select_(ledger_processes.c.id).where(ledger_processes.c.host == host[:64], ledger_processes.c.pid == pid)
        ).first()
        is not None
    )
