"""The `Ledger`: every operation in its own transaction, on SQLite or PostgreSQL.

The ledger knows neither HTTP nor the chain. The gateway calls `reserve`, `settle` and
`release`; the indexer reports chain facts (`credit_deposit`, `lock_for_exit`,
`cancel_exit`, `complete_exit`, `credit_sale`, `record_shortfall`, `unwind_chain_fact`, or
a whole batch at once with `apply_chain_facts`) and the coordinator updates spend caps (`set_spend_cap`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from promptex.ledger import accounts as _accounts
from promptex.ledger import chain_facts as _chain
from promptex.ledger import debts as _debts
from promptex.ledger import holds as _holds
from promptex.ledger import identity as _identity
from promptex.ledger import usage as _records
from promptex.ledger import wallets as _wallets
from promptex.ledger.binding import BindingMessage
from promptex.ledger.check import check_books
from promptex.ledger.db import READ_ONLY, create_ledger_engine, upgrade
from promptex.ledger.errors import LedgerError, LedgerInconsistent, UnknownAccount
from promptex.ledger.models import Account, AccountKind, Balance, Budget, Deposit, ExitLock, Hold
from promptex.ledger.schema import SYSTEM_ACCOUNTS, accounts, journal_lines
from promptex.protocol.identity import ChainIdentity

if TYPE_CHECKING:
    from promptex.config import Settings

Clock = Callable[[], int]
T = TypeVar("T")
RETRIES = 3
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # PostgreSQL: deadlock detected, serialization failure
DEFAULT_TREASURY = "promotions"


def _wall_clock() -> int:
    return int(time.time())


class Ledger:
    def __init__(self, engine: Engine, *, chain_id: int = 31337, binding_ttl: int = 600, clock: Clock | None = None):
        self.engine = engine
        self.chain_id = chain_id
        self.binding_ttl = binding_ttl
        self.clock: Clock = clock or _wall_clock
        # SQLite has one writer at a time: threads of this process queue on a lock instead
        # of polling the database file's lock (other processes still wait in busy_timeout).
        self._writer: AbstractContextManager[object] = (
            threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
        )
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
        self._pg: _holds.PgOneStatement | None = None
        if engine.dialect.name == "postgresql":
            url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._pg = _holds.PgOneStatement(url)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        pool_size: int = 10,
        busy_timeout_ms: int = 30_000,
        sqlite_synchronous: str = "FULL",
        chain_id: int = 31337,
        binding_ttl: int = 600,
        clock: Clock | None = None,
    ) -> Ledger:
        """Connect to the ledger at `url`, bringing its schema up to date unless `migrate` is False."""
        engine = create_ledger_engine(
            url, pool_size=pool_size, busy_timeout_ms=busy_timeout_ms, sqlite_synchronous=sqlite_synchronous
        )
        if migrate:
            upgrade(engine)
        return cls(engine, chain_id=chain_id, binding_ttl=binding_ttl, clock=clock)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, clock: Clock | None = None) -> Ledger:
        from promptex.config import settings as current

        s = settings or current()
        return cls.open(
            s.ledger_url,
            pool_size=s.ledger_pool_size,
            busy_timeout_ms=s.ledger_busy_timeout_ms,
            sqlite_synchronous=s.ledger_sqlite_synchronous,
            chain_id=s.wallet_binding_chain_id,
            binding_ttl=s.wallet_binding_ttl_seconds,
            clock=clock,
        )

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction. A transaction PostgreSQL aborted as a
        deadlock victim or on a serialization failure left nothing behind, so it is run
        again from the start (lock ordering makes this rare; see `holds`)."""
        for attempt in range(1, RETRIES + 1):
            try:
                with self._writer, self.engine.begin() as conn:
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
        """The EIP-712 message `wallet` must sign to bind itself to `account`."""
        return self._write(
            lambda conn: _wallets.issue_challenge(
                conn, account, wallet, now=self.clock(), ttl=ttl or self.binding_ttl, chain_id=self.chain_id
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

    def challenged_account(self, address: str) -> int | None:
        """The still-unbound account a challenge was last issued to `address` for, if any."""
        with self._read() as conn:
            return _wallets.challenged_account(conn, address)

    def wallets(self, account: int) -> list[str]:
        with self._read() as conn:
            return _wallets.addresses_of(conn, account)

    # ─── Holds ───────────────────────────────────────────────────────────────

    def reserve(
        self, account: int, asset: str, amount: int, request_id: str, ttl: int, *, payer: int | None = None
    ) -> Hold:
        """Hold `amount` for a request, atomically; the same `request_id` again returns the same hold.

        `payer` is whose balance pays: the account itself (default), an org it belongs to,
        or a treasury that granted it promotional credit. Raises InsufficientFunds,
        SpendCapExceeded, BudgetExceeded or NotAMember, leaving nothing behind.
        """
        payer_id = account if payer is None else payer
        if self._pg is not None:
            try:
                hold = self._pg.reserve(
                    account=account,
                    payer=payer_id,
                    asset=asset,
                    amount=amount,
                    request_id=request_id,
                    ttl=ttl,
                    now=self.clock(),
                )
            except Exception:  # the connection's state is unknown: drop it; the general path decides
                self._pg.drop()
                hold = None
            if hold is not None:
                return hold
        reserve = _holds.reserve if self._pg is not None else _holds.reserve_fast
        try:
            return self._write(
                lambda conn: reserve(
                    conn,
                    account=account,
                    payer=payer_id,
                    asset=asset,
                    amount=amount,
                    request_id=request_id,
                    ttl=ttl,
                    now=self.clock(),
                )
            )
        except IntegrityError:  # the hold's foreign keys: no such account or payer
            raise UnknownAccount(f"no account {account} or payer {payer}") from None

    def settle(self, request_id: str, actual_cost: int, *, record: _records.UsageRecord | None = None) -> Hold:
        """Charge the metered cost (idempotent); see `Hold.charged` and `Hold.shortfall`.

        With `record`, the request's usage record is written in the same transaction, so
        the coordinator sees every settled charge (idempotent too)."""

        if record is not None:
            _records.check_record(record)

        if self._pg is not None:
            values = None if record is None else _records.record_values(record)
            try:
                hold = self._pg.settle(request_id, actual_cost, now=self.clock(), usage=self._usage, record=values)
            except LedgerError:
                raise
            except Exception:  # the connection's state is unknown: drop it; the general path decides
                self._pg.drop()
                hold = None
            if hold is not None:
                return hold

        def settle(conn: Connection, fast: bool = True) -> Hold:
            now = self.clock()
            row = None if record is None else (lambda hold: _records.usage_row(hold, record, now))
            run = _holds.settle_fast if fast else _holds._settle_general
            return run(conn, request_id, actual_cost, now=now, usage=self._usage, system=self._system, record=row)

        try:
            return self._write(settle)
        except IntegrityError:
            # The fast path took a balance, cap or budget below zero (a CHECK refused it and
            # the transaction rolled back): a chain fact emptied it while the request ran.
            # The general path charges it anyway, the missing part as a debt.
            return self._write(lambda conn: settle(conn, fast=False))

    def usage_record(self, request_id: str) -> _records.StoredUsage | None:
        """The usage record of a settled request, with its settlement state."""
        with self._read() as conn:
            return _records.get_usage(conn, request_id)

    def next_epoch(self, asset: str) -> int:
        """The settlement epoch a record of `asset` settled now is expected in (see
        `ledger.usage.next_epoch`)."""
        with self._read() as conn:
            return _records.next_epoch(conn, asset)

    def release(self, request_id: str) -> Hold:
        """Drop the hold without a charge (idempotent)."""
        return self._write(lambda conn: _holds.release(conn, request_id, now=self.clock()))

    def hold(self, request_id: str) -> Hold | None:
        with self._read() as conn:
            return _holds.get_hold(conn, request_id)

    def sweep_expired(self, limit: int = 1_000) -> int:
        """End up to `limit` holds past their expiry (status "expired"); returns how many."""
        return self._write(lambda conn: _holds.expire(conn, self.clock(), limit))

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
