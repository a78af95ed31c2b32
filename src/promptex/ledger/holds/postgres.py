"""Holds on PostgreSQL (many gateway processes): the general path, capacity shared through
leases (`holds.capacity`), and one statement per hot operation.

On PostgreSQL the hot path's cost was round trips (pool pre-ping, BEGIN, each statement,
COMMIT: about fifteen per request). Here each operation is one statement whose
data-modifying CTEs do all of it, on a connection per ledger thread kept outside the
pool, in autocommit (one statement is atomic, one round trip). A reserve applies whole
or not at all: had it taken the funds but found no room in this process's lease of the
lot (or the other way round, or the request id held already), its last expression
fails on purpose (`PARTIAL`) and the statement is rolled back whole — a transaction
around it cost as much CPU again in round trips. A statement that matches nothing
changes nothing, and the general path runs; so does any error (an unexpected one drops
the connection): both operations are idempotent, so a retry after an ambiguous commit
finds what the first attempt did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, update
from sqlalchemy import select as select_
from sqlalchemy.exc import OperationalError

from promptex.ledger import processes
from promptex.ledger.errors import LedgerError, LedgerUnavailable, LotCapacityExceeded
from promptex.ledger.holds import general
from promptex.ledger.holds.api import Reservation
from promptex.ledger.holds.book import GeneralHolds, LedgerAccess
from promptex.ledger.holds.capacity import LotClaim
from promptex.ledger.holds.general import MAX_REQUEST_ID
from promptex.ledger.models import Hold, HoldStatus
from promptex.ledger.schema import holds
from promptex.ledger.usage import UsageRecord, check_record, record_values

log = logging.getLogger("promptex.ledger")

DRY_SECONDS = 1.0  # a lot whose room ran out is skipped by the fast path this long
_T = TypeVar("_T")
_ABSENT = -1  # `PostgresHolds._mine`: no request in flight by that id

_TAKE_FUNDS = """
    UPDATE balances SET held = held + %(amount)s
    WHERE account_id = %(payer)s AND asset = %(asset)s
      AND posted - held - locked >= %(amount)s AND cap_remaining - held >= %(amount)s
    RETURNING account_id
"""
# A reserve that changed something but inserted no hold fails here, so autocommit rolls
# it back whole: the cast of this text to an integer is evaluated only in that case.
PARTIAL = "promptex: partial reserve, rolled back"
_PARTIAL_CHECK = f"""
SELECT (SELECT request_id FROM inserted),
    CASE WHEN NOT EXISTS (SELECT 1 FROM inserted) AND ({{changed}})
        THEN ('{PARTIAL} ' || (SELECT count(*) FROM taken))::int END
"""
PG_RESERVE = f"""
WITH taken AS ({_TAKE_FUNDS}), inserted AS (
    INSERT INTO holds (request_id, account_id, payer_id, asset, amount, status, created_at, expires_at, process_id)
    SELECT %(request_id)s, %(account)s, %(payer)s, %(asset)s, %(amount)s, 'active', %(now)s, %(expires)s,
        %(process)s FROM taken
    ON CONFLICT DO NOTHING
    RETURNING request_id
)""" + _PARTIAL_CHECK.format(changed="EXISTS (SELECT 1 FROM taken)")
PG_RESERVE_LEASED = f"""
WITH taken AS ({_TAKE_FUNDS}), leased AS (
    UPDATE capacity_leases SET reserved = reserved + %(lot_amount)s, expires_at = GREATEST(expires_at, %(expires)s)
    WHERE lot_id = %(lot)s AND holder = %(holder)s AND amount - reserved - used >= %(lot_amount)s
    RETURNING id
), inserted AS (
    INSERT INTO holds (request_id, account_id, payer_id, asset, amount, status, created_at, expires_at,
        lot_id, lot_amount, lease_id, process_id)
    SELECT %(request_id)s, %(account)s, %(payer)s, %(asset)s, %(amount)s, 'active', %(now)s, %(expires)s,
        %(lot)s, %(lot_amount)s, leased.id, %(process)s
    FROM taken, leased
    ON CONFLICT DO NOTHING
    RETURNING request_id
)""" + _PARTIAL_CHECK.format(changed="EXISTS (SELECT 1 FROM taken) OR EXISTS (SELECT 1 FROM leased)")

_PG_SETTLE_HEAD = """
WITH h AS (
    UPDATE holds SET status = 'settled', closed_at = %(now)s, cost = %(cost)s, charged = %(cost)s
    WHERE request_id = %(request_id)s AND status = 'active' AND amount >= %(cost)s AND payer_id = account_id
      AND extras IS NULL
      AND (lot_id IS NULL OR (lease_id IS NOT NULL AND lot_id = %(lot)s AND lot_amount >= %(lot_usage)s))
    RETURNING account_id, payer_id, asset, amount, created_at, expires_at, lot_id, lot_amount, lease_id
), b AS (
    UPDATE balances SET posted = balances.posted - %(cost)s, held = balances.held - h.amount,
        cap_remaining = balances.cap_remaining - %(cost)s
    FROM h WHERE balances.account_id = h.payer_id AND balances.asset = h.asset
    RETURNING 1
), c AS (
    UPDATE capacity_leases SET reserved = capacity_leases.reserved - h.lot_amount,
        used = capacity_leases.used + %(lot_usage)s
    FROM h WHERE capacity_leases.id = h.lease_id
    RETURNING 1
), e AS (
    INSERT INTO journal_entries (ref, kind, created_at)
    SELECT %(ref)s, 'settle', %(now)s FROM h WHERE %(cost)s > 0
    ON CONFLICT DO NOTHING
    RETURNING id
), l AS (
    INSERT INTO journal_lines (entry_id, account_id, asset, amount)
    SELECT e.id, h.payer_id, h.asset, -%(cost)s FROM e, h
    UNION ALL
    SELECT e.id, %(usage)s, h.asset, %(cost)s FROM e, h
    RETURNING 1
)"""
_PG_SETTLE_USAGE = """, u AS (
    INSERT INTO usage_records (request_id, account_id, payer_id, asset, model, input_tokens, output_tokens,
        cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, cost,
        gateway_lot_id, chain_lot_id, lot_kind, list_usd_micro, fee_bps, settled_at, status,
        mode, voucher_session, voucher_lane, voucher_ceiling)
    SELECT %(request_id)s, h.account_id, h.payer_id, h.asset, %(model)s, %(input_tokens)s, %(output_tokens)s,
        %(cache_read_tokens)s, %(cache_write_tokens)s, %(cache_write_1h_tokens)s, %(reasoning_tokens)s, %(cost)s,
        %(gateway_lot_id)s, %(chain_lot_id)s, %(lot_kind)s, %(list_usd_micro)s, %(fee_bps)s, %(now)s, %(status)s,
        %(mode)s, %(voucher_session)s, %(voucher_lane)s, %(voucher_ceiling)s
    FROM h
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""
_PG_SETTLE_TAIL = """
SELECT h.account_id, h.payer_id, h.asset, h.amount, h.created_at, h.expires_at, h.lot_id, h.lot_amount, h.lease_id,
       (SELECT count(*) FROM b), (SELECT count(*) FROM e), (SELECT count(*) FROM c)
FROM h
"""
PG_SETTLE = _PG_SETTLE_HEAD + _PG_SETTLE_TAIL
PG_SETTLE_WITH_USAGE = _PG_SETTLE_HEAD + _PG_SETTLE_USAGE + _PG_SETTLE_TAIL

# Each parameter's type, as the column it is compared with or written to (PostgreSQL's
# OIDs: int8, numeric, text): the statements are prepared with them on libpq directly.
_INT8, _NUMERIC, _TEXT = 20, 1700, 25
_TYPES = {
    "request_id": _TEXT, "asset": _TEXT, "holder": _TEXT, "ref": _TEXT, "model": _TEXT, "lot_kind": _TEXT,
    "status": _TEXT, "mode": _TEXT,
    "amount": _NUMERIC, "cost": _NUMERIC, "list_usd_micro": _NUMERIC, "voucher_ceiling": _NUMERIC,
}  # fmt: skip
_PARAM = re.compile(r"%\((\w+)\)s")


class Prepared:
    """A statement with `%(name)s` parameters as libpq runs it: `$n` placeholders, typed,
    prepared once a connection. Why not psycopg's cursor: its per-execution work in Python
    (adapting, the prepared-statement cache, the result's loaders) was most of the client's
    CPU a request (measured: reserve + settle ~0.41 ms client CPU a pair)."""

    def __init__(self, name: str, sql: str) -> None:
        self.name = name.encode()
        self.names: list[str] = []
        for found in _PARAM.finditer(sql):
            if found.group(1) not in self.names:
                self.names.append(found.group(1))
        self.sql = _PARAM.sub(lambda m: f"${self.names.index(m.group(1)) + 1}", sql).encode()
        self.types = [_TYPES.get(name, _INT8) for name in self.names]

    def values(self, params: dict[str, Any]) -> list[bytes | None]:
        """Each parameter as text (ints in decimal; None is NULL)."""
        out: list[bytes | None] = []
        for name in self.names:
            value = params[name]
            out.append(None if value is None else (value if isinstance(value, str) else str(value)).encode())
        return out


class StatementFailed(Exception):
    """A statement PostgreSQL refused (`sqlstate`, `message`); nothing of it was applied."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate, self.message = sqlstate, message


_RESERVE = Prepared("promptex_reserve", PG_RESERVE)
_RESERVE_LEASED = Prepared("promptex_reserve_leased", PG_RESERVE_LEASED)
_SETTLE = Prepared("promptex_settle", PG_SETTLE)
_SETTLE_WITH_USAGE = Prepared("promptex_settle_usage", PG_SETTLE_WITH_USAGE)


class PgOneStatement:
    """The one-statement reserve and settle, each thread on its own connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg

            conn = psycopg.connect(self.url, autocommit=True)
            self._local.conn = conn
            self._local.prepared = set()
            with self._lock:
                self._all.append(conn)
        return conn

    def _run(self, statement: Prepared, params: dict[str, Any]) -> tuple[bytes | None, ...] | None:
        """`statement` on this thread's connection (prepared on it first): its first row,
        as text, or None; raises `StatementFailed` if PostgreSQL refused it."""
        from psycopg import pq

        pgconn = self._conn().pgconn
        prepared: set[bytes] = self._local.prepared
        if statement.name not in prepared:
            done = pgconn.prepare(statement.name, statement.sql, statement.types)
            if done.status != pq.ExecStatus.COMMAND_OK:
                raise _failed(done)
            prepared.add(statement.name)
        result = pgconn.exec_prepared(statement.name, statement.values(params))
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise _failed(result)
        if result.ntuples == 0:
            return None
        return tuple(result.get_value(0, column) for column in range(result.nfields))

    def drop(self) -> None:
        """Forget this thread's connection (after an error: its state is unknown)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def reserve(self, r: Reservation, claim: LotClaim | None, holder: str, now: int, process: int) -> Hold | None:
        """The hold, or None: nothing changed, the general path decides (a refusal, a lease
        without room, a request id seen before, a payer other than the account, bad arguments)."""
        if (
            (r.payer is not None and r.payer != r.account)
            or r.extras
            or r.amount <= 0
            or r.ttl <= 0
            or not r.request_id
            or len(r.request_id) > MAX_REQUEST_ID
            or (claim is not None and claim.amount <= 0)
        ):
            return None
        params: dict[str, Any] = {
            "request_id": r.request_id,
            "account": r.account,
            "payer": r.account,
            "asset": r.asset,
            "amount": r.amount,
            "now": now,
            "expires": now + r.ttl,
            "process": process,
        }
        if claim is not None:
            params.update(lot=claim.lot_id, lot_amount=claim.amount, holder=holder)
        try:
            row = self._run(_RESERVE if claim is None else _RESERVE_LEASED, params)
        except StatementFailed as exc:
            if exc.sqlstate != "22P02" or PARTIAL not in exc.message:  # invalid_text_representation
                raise
            return None  # rolled back whole (see PARTIAL); the connection is fine in autocommit
        if row is None or row[0] is None:
            return None
        return Hold(
            r.request_id,
            r.account,
            r.account,
            r.asset,
            r.amount,
            HoldStatus.ACTIVE,
            now,
            now + r.ttl,
            lot_id=None if claim is None else claim.lot_id,
            lot_amount=0 if claim is None else claim.amount,
        )

    def settle(self, request_id: str, cost: int, *, now: int, usage: int, record: UsageRecord | None) -> Hold | None:
        """The settled hold, or None: nothing changed, the general path decides (a hold
        settled or ended before, an overage, an org's or a treasury's hold, usage beyond
        the lot capacity held, no hold)."""
        if cost < 0:
            return None
        params: dict[str, Any] = {
            "request_id": request_id,
            "cost": cost,
            "now": now,
            "usage": usage,
            "ref": f"settle:{request_id}",
            "lot": None if record is None else record.gateway_lot_id,
            "lot_usage": 0 if record is None else record.list_usd_micro,
        }
        if record is not None:
            params.update(record_values(record))
        row = self._run(_SETTLE if record is None else _SETTLE_WITH_USAGE, params)
        if row is None:
            return None
        (
            account,
            payer,
            asset,
            amount,
            created_at,
            expires_at,
            lot_id,
            lot_amount,
            lease_id,
            balances_text,
            entries_text,
            leases_text,
        ) = row
        balances, entries, leases = int(balances_text or 0), int(entries_text or 0), int(leases_text or 0)
        if balances != 1 or (cost > 0 and entries != 1) or leases != (0 if lease_id is None else 1):
            # committed already: a hold without its balance row or its lease, or a settle
            # entry that existed, would be a broken ledger; say so loudly rather than guess.
            raise LedgerError(
                f"settling {request_id!r} touched {balances} balances, {entries} entries, {leases} leases"
            )
        return Hold(
            request_id,
            int(account or 0),
            int(payer or 0),
            (asset or b"").decode(),
            int(amount or 0),
            HoldStatus.SETTLED,
            int(created_at or 0),
            int(expires_at or 0),
            cost,
            cost,
            None if lot_id is None else int(lot_id),
            int(lot_amount or 0),
        )


def _failed(result: Any) -> StatementFailed:
    from psycopg import pq

    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE) or b""
    return StatementFailed(sqlstate.decode(), (result.error_message or b"").decode(errors="replace"))


def holder_name() -> str:
    """Who leases capacity: this process (and book), unique across hosts and restarts."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


class PostgresHolds(GeneralHolds):
    def __init__(self, ledger: LedgerAccess, url: str, *, slice_size: int) -> None:
        super().__init__(ledger, slice_size=slice_size)
        self.holder = holder_name()
        self._one = PgOneStatement(url)
        self._dry: dict[int, float] = {}  # lot id → until when the fast path skips it
        self.lock = processes.ProcessLock(url, self.holder, ledger.clock)  # registered at the first reserve
        # This book's requests in flight: request id → None while its reserve runs, then its
        # hold's expiry as this book last set it. An id leaves when its settle or release
        # returns or raises, its reserve raises (the caller was told no hold was made), or
        # its move cannot reach the database (the caller gives the request up, 503):
        # so an active hold of this process's id that is not here was abandoned (`end_dead`).
        self._mine: dict[str, int | None] = {}
        self._mine_lock = threading.Lock()

    def process(self) -> int:
        return self.lock.current()

    def end_dead(self) -> int:
        # Registered before: first again if its lock was lost, its holds along — also after a
        # registration that failed (no id now), else this sweep finds its own lost id's lock
        # free and ends its live requests' holds.
        if self.lock.registered_before:
            self.lock.current()
        now = self.ledger.clock()
        own = self.lock.id
        kept = self.lock.kept  # a lost id whose lock is this process's too: a hold a failed `_follow` left there

        def work(conn: Connection) -> int:
            gone = processes.dead(conn)
            ended = general.orphan(conn, gone, now, self.extras)
            processes.forget(conn, gone, now)
            if own is not None:
                ended += self._release_abandoned(conn, [own, *kept], now)
            return ended

        ended: int = self.ledger.write(work)
        self.give_back_unanswered()  # after the release of abandoned holds: an unsettled one is ended there
        return ended

    def _release_abandoned(self, conn: Connection, own: Sequence[int], now: int) -> int:
        """Release this process's active holds that no request of its own is in flight for:
        a reserve that raised (LedgerUnavailable: its COMMIT failed, or its answer was lost
        with the connection) may have made its hold all the same, and a settle or release
        that raised so may have left it active; nothing else would end it before its
        lifetime (funds, lot capacity and a signed lane held). Released: nothing charged.
        The holds are read first, the requests in flight after: a reserve under way is in
        `_mine` before its hold can be committed, so none in flight is taken. Memory: the
        requests in flight, not one id per failure (an outage's worth)."""
        active = select_(holds.c.request_id).where(
            holds.c.process_id.in_(list(own)), holds.c.status == HoldStatus.ACTIVE.value
        )
        found: list[str] = list(conn.execute(active).scalars())
        with self._mine_lock:
            for request_id, expires in list(self._mine.items()):
                if expires is not None and expires < now:  # expired: a sweep ends it, never active again
                    del self._mine[request_id]
            abandoned = [request_id for request_id in found if request_id not in self._mine]
        if not abandoned:
            return 0
        chosen = select_(holds.c.request_id).where(holds.c.request_id.in_(abandoned)).order_by(holds.c.request_id)
        released = general.end_active(conn, chosen, HoldStatus.RELEASED, now, self.extras)
        if released:
            log.warning("released %d holds whose requests this process gave up (the ledger failed them)", released)
        return released

    def _track(self, request_id: str, expires: int | None) -> int | None:
        """Mark `request_id` in flight (None: its reserve under way; else its hold's expiry);
        returns what was there before (`_ABSENT`: nothing)."""
        with self._mine_lock:
            before = self._mine.get(request_id, _ABSENT)
            self._mine[request_id] = expires
            return before

    def _untrack(self, request_id: str, restore: int | None = _ABSENT) -> None:
        with self._mine_lock:
            if restore == _ABSENT:
                self._mine.pop(request_id, None)
            else:
                self._mine[request_id] = restore

    def orphaned(self, request_ids: Sequence[str]) -> list[str]:
        if not request_ids:
            return []
        with self.ledger.read() as conn:
            return general.orphaned_among(conn, request_ids)

    def _fast_claim(self, r: Reservation) -> LotClaim | None:
        now = time.monotonic()
        for claim in r.lots:
            if self._dry.get(claim.lot_id, 0.0) <= now:
                return claim
        return r.lots[0]

    def reserve(self, reservation: Reservation) -> Hold:
        before = self._track(reservation.request_id, None)  # before its hold can exist
        try:
            hold = self._reserve(reservation)
        except BaseException:  # told no hold: one made all the same is abandoned (`end_dead`)
            self._untrack(reservation.request_id, before)
            raise
        self._untrack(reservation.request_id, hold.expires_at)
        return hold

    def _reserve(self, reservation: Reservation) -> Hold:
        claim = self._fast_claim(reservation) if reservation.lots else None
        holder = self.holder
        assert holder is not None
        started = self.lock.started  # before the id is read (`ProcessLock.moved_on`)
        process = self.process()  # first: a lost lock connection registers again
        try:
            fast = self._one.reserve(reservation, claim, holder, self.ledger.clock(), process)
        except Exception:  # the connection's state is unknown: drop it; the general path decides
            self._one.drop()
            fast = None
        if fast is not None:
            return self._follow(fast, started)
        try:
            hold = super().reserve(reservation)
        except OperationalError as exc:  # no connection within the URL's connect_timeout, or one lost
            raise LedgerUnavailable(f"the ledger's database failed the reserve: {exc.orig}") from exc
        except LotCapacityExceeded:
            if claim is not None:
                self._dry[claim.lot_id] = time.monotonic() + DRY_SECONDS
            raise
        if claim is not None and hold.lot_id != claim.lot_id:
            self._dry[claim.lot_id] = time.monotonic() + DRY_SECONDS
        return self._follow(hold, started)

    def _follow(self, hold: Hold, started: int) -> Hold:
        """`hold`, moved under the id registered now if this process registered again while
        it was made (its id lost meanwhile, the old id's holds taken along before it was
        committed). Unless a sweeper ended it first: then its answer is refused, as any
        hold's under a lost lock."""
        now = self.lock.moved_on(started)
        if now is not None:  # a failure: the hold is abandoned (under a kept lost id: `end_dead` looks there too)
            self._unavailable(
                "reserve",
                lambda: self.ledger.write(
                    lambda conn: conn.execute(
                        update(holds)
                        .where(
                            holds.c.request_id == hold.request_id,
                            holds.c.status == HoldStatus.ACTIVE.value,
                            holds.c.process_id != now,
                        )
                        .values(process_id=now)
                    )
                ),
            )
        return hold

    def settle(self, request_id: str, cost: int, *, record: UsageRecord | None = None, served: bool = False) -> Hold:
        try:
            settled = self._settle(request_id, cost, record)
        except LedgerUnavailable:  # the gateway's 503: had its COMMIT landed, `end_dead` gives it back
            self.lost_answer(request_id, cost, served=served)
            raise
        else:
            self.answered(request_id)
            return settled
        finally:  # settled, or given up (a hold left active by a failure is abandoned: `end_dead`)
            self._untrack(request_id)

    def release(self, request_id: str) -> Hold:
        try:
            return self._unavailable("release", lambda: super(PostgresHolds, self).release(request_id))
        finally:
            self._untrack(request_id)

    def extend(self, request_ids: Sequence[str], ttl: int) -> int:
        expires = self.ledger.clock() + ttl
        extended = super().extend(request_ids, ttl)
        with self._mine_lock:
            for request_id in request_ids:
                if self._mine.get(request_id, _ABSENT) not in (_ABSENT, None):
                    self._mine[request_id] = expires
        return extended

    def _settle(self, request_id: str, cost: int, record: UsageRecord | None) -> Hold:
        if record is not None:
            check_record(record)
        try:
            hold = self._one.settle(request_id, cost, now=self.ledger.clock(), usage=self.ledger.usage, record=record)
        except LedgerError:
            raise
        except Exception:  # the connection's state is unknown: drop it; the general path decides
            self._one.drop()
            hold = None
        if hold is not None:
            return hold
        return self._unavailable(
            "settle", lambda: super(PostgresHolds, self).settle(request_id, cost, record=record), again=True
        )

    def move(self, request_id: str, claim: LotClaim) -> Hold | None:
        try:
            return self._unavailable("move", lambda: super(PostgresHolds, self).move(request_id, claim))
        except LedgerUnavailable:  # the request is given up (the gateway's 503): its hold is abandoned
            self._untrack(request_id)
            raise

    @staticmethod
    def _unavailable(what: str, call: Callable[[], _T], *, again: bool = False) -> _T:
        """`call`'s hold; a database it could not reach (no connection within the URL's
        connect timeout, or one lost) raises LedgerUnavailable (the gateway's 503).
        `again` (an idempotent call): a connection lost while it ran (its COMMIT may have
        landed, its answer lost) is tried once more on a new one first, so a settle that
        was charged is answered as charged while the database answers — not with a 503.
        A connection never made is not tried again (no second connect timeout)."""
        try:
            return call()
        except OperationalError as exc:
            if not (again and exc.connection_invalidated):
                raise LedgerUnavailable(f"the ledger's database failed the {what}: {exc.orig}") from exc
            log.warning("the ledger's connection was lost during a %s: trying it once more", what)
        try:
            return call()
        except OperationalError as exc:
            raise LedgerUnavailable(f"the ledger's database failed the {what}: {exc.orig}") from exc

    def close(self) -> None:
        self._one.close()
        self.lock.close()
