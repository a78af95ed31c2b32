"""`GeneralHolds`: the `Holds` interface on the general path, each operation in one ledger
transaction. The per-database books subclass it and replace its two hot operations."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from promptex.ledger.errors import LedgerError
from promptex.ledger.holds import capacity, general, unanswered
from promptex.ledger.holds.api import Reservation
from promptex.ledger.holds.capacity import LotClaim
from promptex.ledger.holds.extras import Extra
from promptex.ledger.models import Hold
from promptex.ledger.usage import UsageRecord, check_record

SWEEP_BATCH = 1_000
# Settles whose outcome is unknown a book remembers at most (`GeneralHolds.unanswered`):
# only requests in flight when the database went reach their settle (new ones fail at their
# reserve), so an outage's worth is the requests in flight then; beyond it one is not
# remembered (charged though answered 503, as before the give-back).
UNANSWERED_MOST = 10_000

log = logging.getLogger("promptex.ledger")


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
        # Settles that raised with the database unreachable (their COMMIT may have landed,
        # their request answered 503): request id → cost, until the next sweep looks
        # (`give_back_unanswered`). `kept`: charges found settled that had to stay.
        self.unanswered: dict[str, int] = {}
        self.kept = 0
        self._unanswered_lock = threading.Lock()

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

    def settle(self, request_id: str, cost: int, *, record: UsageRecord | None = None, served: bool = False) -> Hold:
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
        `ledger.processes`); returns how many. SQLite has none to find; a settle whose
        answer was lost is given back (`give_back_unanswered`)."""
        self.give_back_unanswered()
        return 0

    # ─── A settle whose answer was lost (`holds.unanswered`) ────────────────────

    def lost_answer(self, request_id: str, cost: int, *, served: bool = False) -> None:
        """Remember a settle that raised with the database unreachable (its outcome unknown;
        its request answered 503) for the next sweep to look at. `served`: its client has
        the answer already (a stream): never given back, so forgotten instead."""
        if served:  # gbreak5: a stream delivered whole was given back, its seller unpaid
            self.answered(request_id)
            return
        with self._unanswered_lock:
            if len(self.unanswered) < UNANSWERED_MOST or request_id in self.unanswered:
                self.unanswered[request_id] = cost
                return
        log.warning("request %s: a settle's outcome is unknown, not remembered (%d are)", request_id, UNANSWERED_MOST)

    def answered(self, request_id: str) -> None:
        """A settle of `request_id` returned: its caller was answered, nothing to give back."""
        if self.unanswered:  # empty but after an outage: no lock on the hot path
            with self._unanswered_lock:
                self.unanswered.pop(request_id, None)

    def give_back_unanswered(self) -> int:
        """Each remembered settle: not settled, forgotten; settled, its charge given back
        in one transaction, or kept (counted in `kept`) — see `holds.unanswered`. A
        database still unreachable raises (the rest wait for the next sweep). Returns how
        many were given back."""
        with self._unanswered_lock:
            waiting = list(self.unanswered.items())
        given = 0
        for request_id, cost in waiting:
            now = self.ledger.clock()
            give_back = functools.partial(unanswered.give_back, request_id=request_id, cost=cost, now=now)
            try:
                outcome: unanswered.Outcome = self.ledger.write(give_back)
            except OperationalError:  # still unreachable: this one and the rest wait for the next pass
                raise
            except (unanswered.Kept, LedgerError) as exc:
                outcome = unanswered.Outcome.KEPT
                self.kept += 1
                log.warning("request %s was charged though answered 503, and stays charged: %s", request_id, exc)
            except Exception:  # never the sweep's end: its leases and the other ids wait behind it
                outcome = unanswered.Outcome.KEPT
                self.kept += 1
                log.exception("request %s was charged though answered 503; giving it back failed", request_id)
            if outcome == unanswered.Outcome.GIVEN_BACK:
                given += 1
                log.warning("request %s was charged though answered 503: its charge was given back", request_id)
            with self._unanswered_lock:
                self.unanswered.pop(request_id, None)
        return given

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
