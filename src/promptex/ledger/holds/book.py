"""`GeneralHolds`: the `Holds` interface on the general path, each operation in one ledger
transaction. The per-database books subclass it and replace its two hot operations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from promptex.ledger.holds import capacity, general
from promptex.ledger.holds.api import Reservation
from promptex.ledger.holds.capacity import LotClaim
from promptex.ledger.holds.extras import Extra
from promptex.ledger.models import Hold
from promptex.ledger.usage import UsageRecord, check_record

SWEEP_BATCH = 1_000


@dataclass(frozen=True)
class LedgerAccess:
    """What a hold book needs of its `Ledger`: its write transaction (with the ledger's
    retries), a read transaction, its clock and its system accounts."""

    write: Callable[[Callable[[Connection], Any]], Any]
    read: Callable[[], AbstractContextManager[Connection]]
    clock: Callable[[], int]
    usage: int  # the system account settled charges go to
    system: frozenset[int]


class GeneralHolds:
    holder: str | None = None  # who leases capacity (PostgreSQL); None: holds reserve on the lot's row

    def __init__(self, ledger: LedgerAccess, *, slice_size: int = 0) -> None:
        self.ledger = ledger
        self.slice_size = slice_size
        self.extras: dict[str, Extra] = {}

    def register(self, extra: Extra) -> None:
        self.extras[extra.name] = extra

    # ─── The two hot operations (a subclass's fast path replaces them) ──────────

    def reserve(self, reservation: Reservation) -> Hold:
        now = self.ledger.clock()
        return self.ledger.write(lambda conn: self.reserve_in(conn, reservation, now))  # type: ignore[no-any-return]

    def reserve_in(self, conn: Connection, r: Reservation, now: int) -> Hold:
        return general.reserve(
            conn,
            account=r.account,
            payer=r.account if r.payer is None else r.payer,
            asset=r.asset,
            amount=r.amount,
            request_id=r.request_id,
            ttl=r.ttl,
            now=now,
            lots=r.lots,
            extras=r.extras,
            registered=self.extras,
            holder=self.holder,
            slice_size=self.slice_size,
            process=self.process(),
        )

    def process(self) -> int | None:
        """The registered process id holds made now record (PostgreSQL; None on SQLite,
        where one process serves a file: `gateway.single`)."""
        return None

    def settle(self, request_id: str, cost: int, *, record: UsageRecord | None = None) -> Hold:
        if record is not None:
            check_record(record)
        now = self.ledger.clock()
        try:
            return self.ledger.write(lambda conn: self.settle_in(conn, request_id, cost, record, now))  # type: ignore[no-any-return]
        except IntegrityError:
            # A fast path took a balance, cap or budget below zero (a CHECK refused it and
            # the transaction rolled back): a chain fact emptied it while the request ran.
            # The general path charges it anyway, the missing part as a debt.
            return self.ledger.write(  # type: ignore[no-any-return]
                lambda conn: GeneralHolds.settle_in(self, conn, request_id, cost, record, now)
            )

    def settle_in(self, conn: Connection, request_id: str, cost: int, record: UsageRecord | None, now: int) -> Hold:
        return general.settle(
            conn,
            request_id,
            cost,
            now=now,
            usage=self.ledger.usage,
            system=self.ledger.system,
            record=record,
            registered=self.extras,
        )

    # ─── The rest ────────────────────────────────────────────────────────────

    def release(self, request_id: str) -> Hold:
        now = self.ledger.clock()
        return self.ledger.write(lambda conn: general.release(conn, request_id, now=now, registered=self.extras))  # type: ignore[no-any-return]

    def move(self, request_id: str, claim: LotClaim) -> Hold | None:
        now = self.ledger.clock()
        return self.ledger.write(  # type: ignore[no-any-return]
            lambda conn: general.move(conn, request_id, claim, holder=self.holder, slice_size=self.slice_size, now=now)
        )

    def extend(self, request_ids: Sequence[str], ttl: int) -> int:
        if not request_ids:
            return 0
        expires = self.ledger.clock() + ttl

        def work(conn: Connection) -> int:
            extended = general.extend(conn, request_ids, expires)
            if self.holder is not None:
                capacity.extend_leases(conn, self.holder, expires)
            return extended

        return self.ledger.write(work)  # type: ignore[no-any-return]

    def orphaned(self, request_ids: Sequence[str]) -> list[str]:
        """None on SQLite: a live gateway's holds there are never orphaned (only a starting
        one ends a dead one's, `Ledger.expire_orphans`). PostgreSQL reads them."""
        return []

    def sweep(self, limit: int = SWEEP_BATCH) -> int:
        now = self.ledger.clock()
        return self.ledger.write(lambda conn: general.expire(conn, now, limit, self.extras))  # type: ignore[no-any-return]

    def end_dead(self) -> int:
        """End early the active holds of gateway processes whose lock is free (PostgreSQL:
        `ledger.processes`); returns how many. SQLite has none to find."""
        return 0

    def maintain(self) -> None:
        """Trim leases: this book's own (idle room back, usage folded into the lots) and
        any that expired (their process died). SQLite has none."""
        now = self.ledger.clock()
        self.ledger.write(lambda conn: capacity.trim_leases(conn, holder=self.holder, now=now))

    def get(self, request_id: str) -> Hold | None:
        with self.ledger.read() as conn:
            return general.get_hold(conn, request_id)

    def close(self) -> None:
        pass
