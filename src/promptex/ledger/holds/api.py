"""The one interface the gateway holds money and capacity through: `Holds`.

    hold = ledger.holds.reserve(Reservation(request_id, account, asset, amount, ttl,
                                            lots=[LotClaim(lot, list_usd_bound), …]))
    ledger.holds.settle(request_id, cost, record=usage)   # or .release(request_id)

A reservation holds the payer's funds AND the capacity of the first lot in `lots` that
has room for it (and any `extras`), in one transaction: all or nothing. Implementations
per database (`holds.sqlite`, `holds.postgres`) share the general path (`holds.general`)
and differ only in their fast paths and in how capacity is shared between processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from promptex.ledger.holds.capacity import LotClaim
from promptex.ledger.holds.extras import Extra, ExtraTake
from promptex.ledger.models import Hold
from promptex.ledger.usage import UsageRecord


@dataclass(frozen=True)
class Reservation:
    """One request's hold.

    `payer`: whose balance pays (the account itself by default, an org it belongs to, a
    treasury that granted it credit). `lots`: the lots that may serve it, in the order
    to try, each with the capacity its answer may use at most; empty: no capacity is
    reserved (a caller that serves from no lot). `extras`: more counters taken with it
    (see `holds.extras`).
    """

    request_id: str
    account: int
    asset: str
    amount: int
    ttl: int
    payer: int | None = None
    lots: Sequence[LotClaim] = ()
    extras: Sequence[ExtraTake] = field(default=())


class Holds(Protocol):
    def reserve(self, reservation: Reservation) -> Hold:
        """Hold funds and capacity atomically; the same request id again returns the same
        hold. Raises a `Refusal` (InsufficientFunds, SpendCapExceeded, BudgetExceeded,
        LotCapacityExceeded, an extra's own) or NotAMember, leaving nothing behind."""
        ...

    def settle(self, request_id: str, cost: int, *, record: UsageRecord | None = None, served: bool = False) -> Hold:
        """Charge the metered cost, and count `record.list_usd_micro` as the lot's usage,
        writing the usage record in the same transaction (idempotent). Charges never take
        a balance below zero: what it cannot cover is recorded as a debt — but a hold that
        expired before its answer was metered is charged no more than the payer can pay
        then (the rest its shortfall); an orphaned one is refused (HoldOrphaned).
        `served`: the client has its answer already (a stream): a settle that raises with
        the database unreachable but had committed stays charged — never given back
        (`holds.unanswered` gives back only a request answered 503)."""
        ...

    def release(self, request_id: str) -> Hold:
        """End the hold without a charge; its funds and capacity are free again (idempotent)."""
        ...

    def move(self, request_id: str, claim: LotClaim) -> Hold | None:
        """Move an active hold's capacity to another lot (failing over to it); None if that
        lot has no room (the hold keeps its lot)."""
        ...

    def extend(self, request_ids: Sequence[str], ttl: int) -> int:
        """Keep requests still in flight held for `ttl` more seconds; returns how many."""
        ...

    def orphaned(self, request_ids: Sequence[str]) -> list[str]:
        """Those of `request_ids` (this process's requests in flight) whose hold a sweeper
        ended as "orphaned" (its process's lock was found free: PostgreSQL), so their
        answers will be refused; nothing on SQLite, where one live process serves a file."""
        ...

    def sweep(self, limit: int = 1_000) -> int:
        """End up to `limit` holds past their expiry (status "expired"): funds, capacity and
        extras back. Returns how many."""
        ...

    def end_dead(self) -> int:
        """End early (status "orphaned": a late answer is refused) the active holds of
        gateway processes whose lock is free — dead, or cut off from the database — and
        release this process's own active holds that no request of its own is in flight
        for (a reserve, settle or release that raised LedgerUnavailable may have left one)
        (PostgreSQL; nothing on SQLite). Returns how many. Then (both) give back the charge
        of a settle that raised so but had committed (its request answered 503), or keep it
        where it must stay (`holds.unanswered`)."""
        ...

    def maintain(self) -> None:
        """Give back idle capacity this process leased, and capacity leased by processes
        that died (PostgreSQL; nothing to do on SQLite)."""
        ...

    def register(self, extra: Extra) -> None:
        """Make an extra counter available to reservations (see `holds.extras`)."""
        ...

    def close(self) -> None: ...
