"""The `Ledger`: every operation in its own transaction, on SQLite or PostgreSQL.

The ledger knows neither HTTP nor the chain. The gateway calls `holds` (`reserve`,
`settle`, `release`: funds and lot capacity together); the indexer reports chain facts
(`credit_deposit`, `lock_for_exit`, `cancel_exit`, `complete_exit`, `credit_sale`,
`record_shortfall`, `unwind_chain_fact`, or a whole batch at once with `apply_chain_facts`)
and the coordinator updates spend caps (`set_spend_cap`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from promptex.ledger import accounts as _accounts
from promptex.ledger import chain_facts as _chain
from promptex.ledger import debts as _debts
from promptex.ledger import identity as _identity
from promptex.ledger import lanes as _lanes
from promptex.ledger import lots as _lots
from promptex.ledger import sessions as _sessions
from promptex.ledger import usage as _records
from promptex.ledger import wallets as _wallets
from promptex.ledger.binding import BindingMessage
from promptex.ledger.check import check_books
from promptex.ledger.db import (
    CONNECT_TIMEOUT,
    READ_ONLY,
    check_current,
    create_ledger_engine,
    current_revision,
    sqlite_path,
    upgrade,
)
from promptex.ledger.errors import LedgerInconsistent, UnknownAccount, WriterBusy
from promptex.ledger.holds import capacity as _capacity
from promptex.ledger.holds import general as _general
from promptex.ledger.holds.api import Reservation
from promptex.ledger.holds.book import GeneralHolds, LedgerAccess
from promptex.ledger.holds.capacity import LotClaim
from promptex.ledger.holds.postgres import PostgresHolds
from promptex.ledger.holds.sqlite import SqliteHolds
from promptex.ledger.models import Account, AccountKind, Balance, Budget, Deposit, ExitLock, Hold, LotCapacity
from promptex.ledger.schema import SYSTEM_ACCOUNTS, accounts, journal_lines
from promptex.protocol.identity import ChainIdentity

if TYPE_CHECKING:
    from promptex.config import Settings

Clock = Callable[[], int]
T = TypeVar("T")
RETRIES = 3
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # PostgreSQL: deadlock detected, serialization failure
DEFAULT_TREASURY = "promotions"
# USD micro at list price a PostgreSQL gateway process leases of a lot at a time (see
# `holds.capacity`): large enough that most holds take from their process's own lease.
DEFAULT_CAPACITY_SLICE = 5_000_000


def _in_savepoint(conn: Connection, work: Callable[[Connection], T]) -> T:
    """`work` in a savepoint of `conn`'s transaction: rolled back alone if it raises.
    Raw statements on the driver (SQLAlchemy's `begin_nested` compiles its SAVEPOINT
    statements on every call: as much CPU as the work it wraps on the hot path)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.execute("SAVEPOINT ledger_write")
    try:
        result = work(conn)
    except BaseException:
        cursor.execute("ROLLBACK TO SAVEPOINT ledger_write")
        cursor.execute("RELEASE SAVEPOINT ledger_write")
        raise
    cursor.execute("RELEASE SAVEPOINT ledger_write")
    return result


@contextmanager
def _transaction(conn: Connection, begun: bool = False) -> Iterator[Connection]:
    """A write transaction on a pinned SQLite connection, begun and ended on the driver:
    committed when the block ends, rolled back if it raises. Why: SQLAlchemy's transaction
    object and events cost about as much CPU as the hot path's own statements. A statement
    the block runs through SQLAlchemy (the general path) joins the driver's transaction
    (`db._on_begin` emits no second BEGIN) and SQLAlchemy's state then ends with it.
    `begun`: the caller began it already (`Ledger.try_writes`)."""
    if not begun:
        _driver(conn, "BEGIN IMMEDIATE")
    try:
        yield conn
        if conn.in_transaction():
            conn.commit()
        else:
            _driver(conn, "COMMIT")
    except BaseException:
        if conn.in_transaction():
            conn.rollback()
        elif conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            _driver(conn, "ROLLBACK")  # (a failed COMMIT may have ended it already)
        raise


def _driver(conn: Connection, statement: str) -> None:
    """`statement` on the driver; its errors as SQLAlchemy would raise them (callers catch its types)."""
    dbapi = conn.connection.dbapi_connection
    try:
        dbapi.execute(statement)  # type: ignore[union-attr]
    except conn.dialect.loaded_dbapi.Error as exc:
        error = conn.dialect.loaded_dbapi.Error
        raise DBAPIError.instance(statement, (), exc, error, dialect=conn.dialect) from exc


def _sqlite_file_pragmas(engine: Engine) -> tuple[int, int] | None:
    """A SQLite file ledger's `synchronous` level (1 NORMAL, 2 FULL) and busy timeout (ms),
    as every connection of `engine` sets them; None for PostgreSQL or a database in memory."""
    if sqlite_path(engine.url) is None:
        return None
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        level = dbapi.execute("PRAGMA synchronous").fetchone()  # type: ignore[union-attr]
        busy = dbapi.execute("PRAGMA busy_timeout").fetchone()  # type: ignore[union-attr]
    return int(level[0]), int(busy[0])


def _wall_clock() -> int:
    return int(time.time())


class Ledger:
    def __init__(
        self,
        engine: Engine,
        *,
        chain_id: int = 31337,
        binding_ttl: int = 600,
        clock: Clock | None = None,
        capacity_slice: int = DEFAULT_CAPACITY_SLICE,
    ):
        self.engine = engine
        self.chain_id = chain_id
        self.binding_ttl = binding_ttl
        self.clock: Clock = clock or _wall_clock
        # SQLite has one writer at a time: threads of this process queue on a lock instead
        # of polling the database file's lock (other processes still wait in busy_timeout).
        self._writer_lock = threading.Lock()
        self._writer: AbstractContextManager[object] = (
            self._writer_lock if engine.dialect.name == "sqlite" else nullcontext()
        )
        self._file = _sqlite_file_pragmas(engine)  # (synchronous, busy ms) of a SQLite file, for `try_writes`
        # A commit waits for the disk (SQLite FULL; PostgreSQL's own, not ours to know: True).
        self.commits_wait_for_disk = self._file is None or self._file[0] >= 2
        self._inline_conn: Connection | None = None  # `try_writes`'s own, until a thread pins one
        self._writer_conn: Connection | None = None  # the last connection a thread pinned (SQLite: one writer)
        self._grouped = threading.local()  # .conn: the transaction of this thread's open `group`
        self._pinned = threading.local()  # .conn: this thread's own connection (`pinned_connection`)
        self._trying = threading.local()  # .conn: the connection of this thread's open `try_writes`
        with self._read() as conn:
            rows: Sequence[Any] = conn.execute(
                select(accounts.c.name, accounts.c.id).where(accounts.c.kind == AccountKind.SYSTEM.value)
            ).all()
        ids = {name: int(account_id) for name, account_id in rows}
        missing = [name for name in SYSTEM_ACCOUNTS if name not in ids]
        if missing:
            raise RuntimeError(f"ledger schema lacks system accounts {missing}: run the migrations")
        self._vault, self._usage = ids["vault"], ids["usage"]
        self._system = frozenset(ids.values())
        access = LedgerAccess(self._write, self._read, lambda: self.clock(), self._usage, self._system)
        self.holds: GeneralHolds
        if engine.dialect.name == "postgresql":
            url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.holds = PostgresHolds(access, url, slice_size=capacity_slice)
        else:
            self.holds = SqliteHolds(access)
        # Signed mode's lanes, taken with holds: every process registers them, so any
        # process's sweeper frees the lanes of one that died.
        self.vouchers = _lanes.VoucherLanes()
        self.holds.register(self.vouchers)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        migrate: bool | Literal["new"] = True,
        current: bool = False,
        pool_size: int = 10,
        busy_timeout_ms: int = 30_000,
        sqlite_synchronous: str = "FULL",
        chain_id: int = 31337,
        binding_ttl: int = 600,
        clock: Clock | None = None,
        capacity_slice: int = DEFAULT_CAPACITY_SLICE,
        connect_timeout: int = CONNECT_TIMEOUT,
    ) -> Ledger:
        """Connect to the ledger at `url`, bringing its schema up to date unless `migrate` is False
        ("new": only a database with no schema yet gets one). `current`: refuse (SchemaNotCurrent)
        a schema that is not this code's head rather than use it (`db.check_current`)."""
        engine = create_ledger_engine(
            url,
            pool_size=pool_size,
            busy_timeout_ms=busy_timeout_ms,
            sqlite_synchronous=sqlite_synchronous,
            connect_timeout=connect_timeout,
        )
        try:
            if migrate is True or (migrate == "new" and current_revision(engine) is None):
                upgrade(engine)
            if current:
                check_current(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, chain_id=chain_id, binding_ttl=binding_ttl, clock=clock, capacity_slice=capacity_slice)

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        migrate: bool | Literal["new"] = True,
        current: bool = False,
    ) -> Ledger:
        """`open` with the settings' ledger URL and options."""
        from promptex.config import settings as configured

        s = settings or configured()
        return cls.open(
            s.ledger_url,
            migrate=migrate,
            current=current,
            pool_size=s.ledger_pool_size,
            busy_timeout_ms=s.ledger_busy_timeout_ms,
            sqlite_synchronous=s.ledger_sqlite_synchronous,
            chain_id=s.wallet_binding_chain_id,
            binding_ttl=s.wallet_binding_ttl_seconds,
            clock=clock,
            capacity_slice=s.ledger_capacity_slice_usd_micro,
            connect_timeout=s.ledger_connect_timeout_seconds,
        )

    def close(self) -> None:
        if self._inline_conn is not None:
            self._inline_conn.close()
        self.holds.close()
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def group(self) -> Iterator[None]:
        """Group commit: every write this thread makes inside the block joins one
        transaction, committed (made durable) once when the block ends — each write in a
        savepoint of its own, so one that raises is rolled back alone and the others stand.
        Nothing done inside may be acknowledged before the block has ended without an
        error: if the commit fails, none of it happened. SQLite only (PostgreSQL's fast
        paths write on connections of their own), and writes of other stores on the same
        file cannot be made inside (they would wait for this transaction's write lock)."""
        if self.engine.dialect.name != "sqlite":
            raise RuntimeError("ledger write groups are for SQLite")
        if getattr(self._grouped, "conn", None) is not None or getattr(self._trying, "conn", None) is not None:
            raise RuntimeError("ledger write groups do not nest")
        with self._writer, self._begin() as conn:
            self._grouped.conn = conn
            try:
                yield
            finally:
                self._grouped.conn = None

    def try_writes(self) -> AbstractContextManager[None] | None:
        """The calling thread's writes inside the block, each its own transaction as on a
        ledger thread, or None if that would wait now: another thread of this process is
        writing (SQLite: one writer). For an event loop that runs a write itself while the
        ledger is idle, rather than waking a ledger thread and then being woken by it (two
        wake-ups a write: on an idle virtual machine more CPU than the write's SQL). A
        write in the block whose BEGIN finds SQLite's write lock held by another process
        raises `WriterBusy` at once instead of waiting (nothing of it done). On the
        connection the ledger thread writes on (its page cache stays warm: two connections
        taking turns would each re-read what the other wrote), or one of its own before a
        thread pinned one. A SQLite file only (one in memory has a single connection for
        everyone). If a commit waits for the disk (FULL), the caller waits for it too:
        `commits_wait_for_disk` tells. Not a group: no savepoints (a write's savepoint, in
        a transaction of its own, cost as much CPU as the write)."""
        if self._file is None or getattr(self._grouped, "conn", None) is not None:
            return None
        if not self._writer_lock.acquire(blocking=False):
            return None
        return self._trying_writes()

    @contextmanager
    def _trying_writes(self) -> Iterator[None]:
        try:
            conn = self._writer_conn
            if conn is None or conn.invalidated or conn.closed:
                conn = self._inline_conn
                if conn is None or conn.invalidated or conn.closed:
                    conn = self._inline_conn = self.engine.connect()
            self._trying.conn = conn
            try:
                yield
            finally:
                self._trying.conn = None
        finally:
            self._writer_lock.release()

    def _try_write(self, conn: Connection, work: Callable[[Connection], T]) -> T:
        """`work` in a transaction of its own on `conn` (`try_writes`: the lock is ours) —
        begun only if SQLite's write lock is free now."""
        assert self._file is not None
        _driver(conn, "PRAGMA busy_timeout=0")
        try:
            _driver(conn, "BEGIN IMMEDIATE")
        except DBAPIError as exc:  # another process holds the write lock
            raise WriterBusy("SQLite's write lock is taken") from exc
        finally:
            _driver(conn, f"PRAGMA busy_timeout={self._file[1]}")
        with _transaction(conn, begun=True):
            return work(conn)

    @contextmanager
    def pinned_connection(self) -> Iterator[None]:
        """This thread's writes inside the block reuse one connection of its own (SQLite;
        elsewhere nothing changes), each still its own transaction. Why: checking a
        connection out of the pool and back in (a new `Connection`, its events and the
        pool's reset) was a third of a hot-path write's CPU. For a thread that writes all
        the time, such as the gateway's ledger thread; closed when the block ends."""
        if self.engine.dialect.name != "sqlite" or getattr(self._pinned, "conn", None) is not None:
            yield
            return
        self._pinned.conn = self._writer_conn = self.engine.connect()
        try:
            yield
        finally:
            conn, self._pinned.conn = self._pinned.conn, None
            conn.close()

    def _begin(self) -> AbstractContextManager[Connection]:
        """A write transaction: on this thread's pinned connection if it has one (a new one
        if the database dropped it), else on one from the pool."""
        pinned: Connection | None = getattr(self._pinned, "conn", None)
        if pinned is None:
            return self.engine.begin()
        if pinned.invalidated or pinned.closed:
            pinned.close()
            pinned = self._pinned.conn = self._writer_conn = self.engine.connect()
        return _transaction(pinned)

    def _write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction (in a savepoint of this thread's open
        `group`, if any). A transaction PostgreSQL aborted as a deadlock victim or on a
        serialization failure left nothing behind, so it is run again from the start (lock
        ordering makes this rare; see `holds`)."""
        grouped: Connection | None = getattr(self._grouped, "conn", None)
        if grouped is not None:
            return _in_savepoint(grouped, work)
        trying: Connection | None = getattr(self._trying, "conn", None)
        if trying is not None:
            return self._try_write(trying, work)
        for attempt in range(1, RETRIES + 1):
            try:
                with self._writer, self._begin() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if attempt == RETRIES or getattr(exc.orig, "sqlstate", None) not in RETRYABLE_SQLSTATES:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
            yield conn

    # ─── Accounts ────────────────────────────────────────────────────────────

    def create_account(self, kind: AccountKind = AccountKind.USER, name: str | None = None) -> Account:
        return self._write(lambda conn: _accounts.create_account(conn, kind, name, self.clock()))

    def account(self, account_id: int) -> Account:
        with self._read() as conn:
            return _accounts.get_account(conn, account_id)

    def treasury(self, name: str = DEFAULT_TREASURY) -> Account:
        """The treasury account that funds promotional credit (created on first use)."""

        def find_or_create(conn: Connection) -> Account:
            found = _accounts.account_by_name(conn, AccountKind.TREASURY, name)
            return found or _accounts.create_account(conn, AccountKind.TREASURY, name, self.clock())

        return self._write(find_or_create)

    def balance(self, account: int, asset: str) -> Balance:
        with self._read() as conn:
            return _accounts.balance(conn, account, asset)

    def set_spend_cap(self, account: int, asset: str, remaining: int) -> None:
        """The account's remaining signed spend cap in `asset` (the coordinator/indexer keeps it
        current). Settled charges count down from it; reserves never go beyond it."""
        if remaining < 0:
            raise ValueError("a spend cap cannot be negative")
        self._write(lambda conn: _accounts.set_spend_cap(conn, account, asset, remaining))

    def add_member(self, org: int, member: int) -> None:
        self._write(lambda conn: _accounts.add_member(conn, org, member, self.clock()))

    def set_member_budget(self, org: int, member: int, asset: str, remaining: int | None) -> None:
        """What `member` may still spend from `org` in `asset`; None: no limit but the org's balance."""
        if remaining is not None and remaining < 0:
            raise ValueError("a budget cannot be negative")
        self._write(lambda conn: _accounts.set_member_budget(conn, org, member, asset, remaining))

    def budget(self, org: int, member: int, asset: str) -> Budget | None:
        with self._read() as conn:
            return _accounts.budget(conn, org, member, asset)

    def grant_promotional_credit(
        self, grant_id: str, account: int, asset: str, amount: int, *, treasury: int | None = None
    ) -> Budget:
        """Welcome credit: `account` may spend `amount` more from the treasury (idempotent by
        `grant_id`); it reserves with `payer=` the treasury, which settles like any balance."""
        treasury_id = treasury if treasury is not None else self.treasury().id
        return self._write(
            lambda conn: _accounts.grant_promotional_credit(
                conn, grant_id, treasury_id, account, asset, amount, self.clock()
            )
        )

    # ─── Wallets ─────────────────────────────────────────────────────────────

    def issue_binding_challenge(self, account: int, wallet: str, *, ttl: int | None = None) -> BindingMessage:
        """The EIP-712 message `wallet` must sign to bind itself to `account`: an unused one for
        the pair is given again while it has half its ttl left (`wallets.challenge_for`)."""
        return self._write(
            lambda conn: _wallets.binding_challenge(
                conn, account, wallet, now=self.clock(), ttl=ttl or self.binding_ttl, chain_id=self.chain_id
            )
        )

    def challenge_wallet(
        self,
        wallet: str,
        *,
        admit_new: Callable[[], object] = lambda: None,
        ttl: int | None = None,
        pending: Callable[[Connection, int], bool] = lambda conn, account: True,
    ) -> BindingMessage:
        """The message `wallet` signs for a key: for its bound account, its pending one (one
        `pending` accepts), or a new user account (`admit_new` raises to refuse it); one account
        however many ask at once."""
        return self._write(
            lambda conn: _wallets.challenge_wallet(
                conn,
                wallet,
                admit_new=admit_new,
                now=self.clock(),
                ttl=ttl or self.binding_ttl,
                chain_id=self.chain_id,
                pending=pending,
            )
        )

    def bind_wallet(self, message: BindingMessage, signature: bytes | str) -> int:
        """Bind the wallet that signed `message`; deposits waiting for it are credited. Returns the account."""
        return self._write(
            lambda conn: _wallets.bind(
                conn, message, signature, now=self.clock(), chain_id=self.chain_id, system=self._system
            )
        )

    def account_of(self, address: str) -> int | None:
        with self._read() as conn:
            return _wallets.bound_account(conn, address)

    def wallets(self, account: int) -> list[str]:
        with self._read() as conn:
            return _wallets.addresses_of(conn, account)

    def debited_wallet(self, account: int) -> str | None:
        """The wallet settlements debit for the account, its first bound: only its vault funds
        are the account's (a later wallet's are its own, `wallets.account_for_address`)."""
        with self._read() as conn:
            return _wallets.first_bound(conn, account)

    # ─── Holds ───────────────────────────────────────────────────────────────
    #
    # The gateway calls `self.holds` (the `Holds` interface: funds, lot capacity and
    # extras in one transaction); these methods are the same operations by argument.

    def reserve(
        self,
        account: int,
        asset: str,
        amount: int,
        request_id: str,
        ttl: int,
        *,
        payer: int | None = None,
        lots: Sequence[LotClaim] = (),
    ) -> Hold:
        """Hold `amount` for a request, atomically; the same `request_id` again returns the same hold.

        `payer` is whose balance pays: the account itself (default), an org it belongs to,
        or a treasury that granted it promotional credit. `lots`: capacity to reserve with
        it (see `Reservation`). Raises InsufficientFunds, SpendCapExceeded, BudgetExceeded,
        LotCapacityExceeded or NotAMember, leaving nothing behind.
        """
        try:
            return self.holds.reserve(Reservation(request_id, account, asset, amount, ttl, payer=payer, lots=lots))
        except IntegrityError:  # the hold's foreign keys: no such account or payer
            raise UnknownAccount(f"no account {account} or payer {payer}") from None

    def settle(self, request_id: str, actual_cost: int, *, record: _records.UsageRecord | None = None) -> Hold:
        """Charge the metered cost (idempotent); see `Hold.charged` and `Hold.shortfall`.

        With `record`, the request's usage record is written in the same transaction, so
        the coordinator sees every settled charge (idempotent too)."""
        return self.holds.settle(request_id, actual_cost, record=record)

    def usage_record(self, request_id: str) -> _records.StoredUsage | None:
        """The usage record of a settled request, with its settlement state."""
        with self._read() as conn:
            return _records.get_usage(conn, request_id)

    def next_epoch(self, asset: str) -> int:
        """The settlement epoch a record of `asset` settled now is expected in (see
        `ledger.usage.next_epoch`)."""
        with self._read() as conn:
            return _records.next_epoch(conn, asset)

    def next_signed_epoch(self, asset: str) -> int:
        """The settlement epoch a signed-mode record of `asset` settled now is expected in
        (see `ledger.usage.next_signed_epoch`)."""
        with self._read() as conn:
            return _records.next_signed_epoch(conn, asset)

    def release(self, request_id: str) -> Hold:
        """Drop the hold without a charge (idempotent)."""
        return self.holds.release(request_id)

    def hold(self, request_id: str) -> Hold | None:
        with self._read() as conn:
            return _general.get_hold(conn, request_id)

    def sweep_expired(self, limit: int = 1_000) -> int:
        """End up to `limit` holds past their expiry (status "expired"); returns how many."""
        return self.holds.sweep(limit)

    def end_dead_processes(self) -> int:
        """End early the active holds of gateway processes whose ledger lock is free
        (PostgreSQL, `ledger.processes`: dead, or cut off from the database) as "orphaned":
        nothing charged, a late answer refused; returns how many. Nothing on SQLite (see
        `expire_orphans`)."""
        return self.holds.end_dead()

    def expire_orphans(self) -> int:
        """End every active hold now, as the sweeper ends an expired one (nothing charged);
        returns how many. Only for a caller that knows no live process holds any: a gateway
        starting on an SQLite ledger whose one-process lock it holds (`gateway.single`) —
        every hold then is a dead process's, which no late answer can settle, and would
        otherwise keep its funds, capacity and signed lane busy for the hold's lifetime."""
        now = self.clock()
        self._write(lambda conn: _general.expire_at_once(conn, now))
        total = 0
        while True:
            swept = self.holds.sweep()
            total += swept
            if swept == 0:
                return total

    # ─── Lot capacity ────────────────────────────────────────────────────────

    def open_lot_capacity(
        self, conn: Connection, lot_id: int, capacity: int, *, chain_lot_id: int | None = None
    ) -> None:
        """A new lot's capacity (its face value, USD micro at list price), written in the
        caller's transaction `conn` (the one that records the lot)."""
        _capacity.open_lot(conn, lot_id, capacity, now=self.clock(), chain_lot_id=chain_lot_id)

    def set_lot_chain_view(
        self, lot_id: int, *, remaining: int, consumed: int, chain_lot_id: int | None = None
    ) -> None:
        """What the chain says of a lot (USD micro at list price): `remaining` capacity and
        `consumed` so far; 0 remaining once closed, expired or slashed."""
        self._write(
            lambda conn: _capacity.set_chain_view(
                conn, lot_id, remaining=remaining, consumed=consumed, now=self.clock(), chain_lot_id=chain_lot_id
            )
        )

    def lot_capacities(self, lot_ids: Sequence[int] | None = None) -> dict[int, LotCapacity]:
        with self._read() as conn:
            return _capacity.capacities(conn, lot_ids)

    # ─── Chain facts (from the indexer) ──────────────────────────────────────

    def credit_deposit(self, chain_event_id: str, address: str, asset: str, amount: int) -> Deposit:
        return self._write(
            lambda conn: _chain.credit_deposit(
                conn, chain_event_id, address, asset, amount, now=self.clock(), vault=self._vault, system=self._system
            )
        )

    def lock_for_exit(self, chain_event_id: str, address: str, asset: str, amount: int) -> ExitLock:
        return self._write(
            lambda conn: _chain.lock_for_exit(conn, chain_event_id, address, asset, amount, now=self.clock())
        )

    def cancel_exit(self, chain_event_id: str, address: str, asset: str) -> ExitLock | None:
        return self._write(lambda conn: _chain.cancel_exit(conn, chain_event_id, address, asset, now=self.clock()))

    def complete_exit(self, chain_event_id: str, address: str, asset: str, amount: int) -> ExitLock | None:
        return self._write(
            lambda conn: _chain.complete_exit(
                conn, chain_event_id, address, asset, amount, now=self.clock(), vault=self._vault, system=self._system
            )
        )

    def credit_sale(self, chain_event_id: str, address: str, usdc: str, proceeds: int) -> None:
        """A spend-only token was sold on exit; its USDC proceeds are the account's (idempotent)."""
        self.apply_chain_facts(lambda facts: facts.credit_sale(chain_event_id, address, usdc, proceeds))

    def record_shortfall(self, chain_event_id: str, address: str, asset: str, amount: int) -> None:
        """Settlement debited `amount` less than the ledger charged; see `ChainBatch.record_shortfall`."""
        self.apply_chain_facts(lambda facts: facts.record_shortfall(chain_event_id, address, asset, amount))

    def unwind_chain_fact(self, chain_event_id: str) -> bool:
        """Undo a chain fact a reorg orphaned (reversing entries); see `chain_facts.unwind_fact`."""
        return self.apply_chain_facts(lambda facts: facts.unwind(chain_event_id))

    # ─── Signed mode: session keys and lanes (issue 23) ──────────────────────

    def register_session(self, chain_event_id: str, **fields: Any) -> _sessions.SessionKey:
        """The chain registered a session key (fields as `sessions.register` names them)."""
        return self._write(lambda conn: _sessions.register(conn, chain_event_id, now=self.clock(), **fields))

    def revoke_session(
        self, chain_event_id: str, *, address: str, asset: str, session: int, ends_at: int
    ) -> _sessions.SessionKey | None:
        return self._write(
            lambda conn: _sessions.revoke(
                conn, chain_event_id, address=address, asset=asset, session=session, ends_at=ends_at, now=self.clock()
            )
        )

    def session(self, account: int, asset: str) -> _sessions.SessionKey | None:
        """The account's current (newest) session key in `asset`, ended or not; None: it never
        had one. `sessions.mode` says how the account pays."""
        with self._read() as conn:
            return _sessions.current(conn, account, asset)

    def lane(self, account: int, asset: str, session: int, lane: int) -> _lanes.Lane:
        with self._read() as conn:
            return _lanes.lane(conn, account, asset, session, lane)

    def lanes(self, account: int, asset: str) -> tuple[_sessions.SessionKey | None, list[_lanes.Lane]]:
        """The current session and each of its lanes, read together."""
        with self._read() as conn:
            found = _sessions.current(conn, account, asset)
            if found is None:
                return None, []
            return found, _lanes.lanes(conn, account, asset, found.session, found.lanes)

    def signed_state(
        self, account: int, asset: str, lane: int | None
    ) -> tuple[_sessions.SessionKey | None, _lanes.Lane | None]:
        """The current session and, if it has it, lane `lane`, read together (the gateway's
        one read per request that names a voucher, or asks whether one is required)."""
        with self._read() as conn:
            found = _sessions.current(conn, account, asset)
            if found is None or lane is None or not 0 <= lane < found.lanes:
                return found, None
            return found, _lanes.lane(conn, account, asset, found.session, lane)

    def apply_chain_facts(self, work: Callable[[_chain.ChainBatch], T]) -> T:
        """Run `work` on a `ChainBatch` in one write transaction, committed with whatever
        else `work` writes on `facts.conn` (the indexer: its events and its checkpoint)."""

        def run(conn: Connection) -> T:
            facts = _chain.ChainBatch(conn, now=self.clock(), vault=self._vault, usage=self._usage, system=self._system)
            result = work(facts)
            facts.flush()
            return result

        return self._write(run)

    # ─── The chain it mirrors ────────────────────────────────────────────────

    def follow_chain(self, observed: ChainIdentity, service: str, *, adopt: bool = False) -> ChainIdentity:
        """Check, at a service's start, that this database mirrors the chain and deployment
        `observed` (`promptex.chain.identity.observe`): recorded by the first service on an
        empty database, then WrongChain (one line) for any other. See `ledger.identity`."""
        where = f"the ledger {self.engine.url.render_as_string(hide_password=True)}"
        return self._write(
            lambda conn: _identity.follow(conn, observed, service=service, where=where, now=self.clock(), adopt=adopt)
        )

    def chain_identity(self) -> ChainIdentity | None:
        """The chain and deployment this database mirrors, once a service recorded it."""
        with self._read() as conn:
            return _identity.recorded(conn)

    # ─── Seller lots' life (see `ledger.lots`) ────────────────────────────────

    def lot_states(self) -> dict[int, _lots.LotState]:
        """Every lot's state, by the gateway's lot id (what the gateway routes by)."""
        with self._read() as conn:
            return _lots.all_states(conn)

    def lot_state(self, lot_id: int) -> _lots.LotState | None:
        with self._read() as conn:
            return _lots.get(conn, lot_id)

    def request_lot(self, lot_id: int, *, expires_at: int, route_until: int) -> _lots.LotState:
        return self._write(
            lambda conn: _lots.request(conn, lot_id, expires_at=expires_at, route_until=route_until, now=self.clock())
        )

    def fail_lot(self, lot_id: int, reason: str) -> _lots.LotState:
        return self._write(lambda conn: _lots.fail(conn, lot_id, reason, now=self.clock()))

    def confirm_lot_open(self, lot_id: int, chain_lot_id: int) -> _lots.LotState:
        """The chain opened the gateway's lot `lot_id` as escrow lot `chain_lot_id`."""
        found = self._write(lambda conn: _lots.confirm_open(conn, chain_lot_id, lot_id=lot_id, now=self.clock()))
        assert found is not None  # by lot id: found, or LotStateError
        return found

    def set_lot_chain_state(
        self, chain_lot_id: int, state: str, *, close_at: int | None = None, reason: str | None = None
    ) -> _lots.LotState | None:
        return self._write(
            lambda conn: _lots.set_chain_state(
                conn, chain_lot_id, state, close_at=close_at, reason=reason, now=self.clock()
            )
        )

    # ─── Books ───────────────────────────────────────────────────────────────

    def system_balance(self, name: str, asset: str) -> int:
        """The balance of a system account ("vault": minus what the vault holds for users; "usage": settled charges)."""
        account = {"vault": self._vault, "usage": self._usage}[name]
        with self._read() as conn:
            amounts: Sequence[int] = (
                conn.execute(
                    select(journal_lines.c.amount).where(
                        journal_lines.c.account_id == account, journal_lines.c.asset == asset
                    )
                )
                .scalars()
                .all()
            )
            return sum(amounts)

    def debts(self, account: int, *, open_only: bool = False) -> list[_debts.Debt]:
        """An account's debts (what a debit beyond its balance left it owing), newest first."""
        with self._read() as conn:
            return _debts.debts_of(conn, account, open_only=open_only)

    def open_debts(self, asset: str | None = None) -> list[_debts.Debt]:
        """Every open debt (of one asset, or all), oldest first."""
        with self._read() as conn:
            return _debts.open_debts(conn, asset)

    def problems(self) -> list[str]:
        with self._read() as conn:
            return check_books(conn, self._system)

    def check(self) -> None:
        """Raise LedgerInconsistent unless the books balance (see `promptex.ledger.check`)."""
        problems = self.problems()
        if problems:
            raise LedgerInconsistent(problems)
