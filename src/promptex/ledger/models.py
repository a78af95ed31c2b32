"""Plain records the ledger returns. Amounts are ints in the asset's smallest unit;
times are unix seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class AccountKind(StrEnum):
    USER = "user"
    ORG = "org"
    TREASURY = "treasury"  # funds promotional credit; members spend it within grants
    SYSTEM = "system"  # the vault's holdings, settled usage: balances only in the journal
    UNCLAIMED = "unclaimed"  # deposits from one unbound address, credited to no one


OWNED_KINDS = frozenset({AccountKind.USER, AccountKind.ORG, AccountKind.TREASURY})


class HoldStatus(StrEnum):
    ACTIVE = "active"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"  # released by the sweeper; a late answer is still charged
    # Ended early by a sweeper that took its process's lock (PostgreSQL: that process's lock
    # session is gone, `ledger.processes`): a late answer is refused, never charged.
    ORPHANED = "orphaned"


class ExitStatus(StrEnum):
    LOCKED = "locked"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Account:
    id: int
    kind: AccountKind
    name: str | None


@dataclass(frozen=True)
class Balance:
    account: int
    asset: str
    posted: int  # settled balance, the sum of the account's journal lines
    held: int  # reserved by active holds
    locked: int  # leaving the vault (pending exits)
    cap_remaining: int  # the remaining signed spend cap

    @property
    def spendable(self) -> int:
        return self.posted - self.held - self.locked

    @property
    def reservable(self) -> int:
        """The most one new hold may take: spendable and within the cap."""
        return max(0, min(self.spendable, self.cap_remaining - self.held))


@dataclass(frozen=True)
class Budget:
    org: int
    member: int
    asset: str
    remaining: int
    held: int


@dataclass(frozen=True)
class Hold:
    request_id: str
    account: int  # who spends
    payer: int  # whose balance pays: the account itself, its org, or a treasury
    asset: str
    amount: int
    status: HoldStatus
    created_at: int
    expires_at: int
    cost: int | None = None  # the metered cost given to settle
    charged: int | None = None  # what was debited (cost, or the hold when the overage was not covered)
    lot_id: int | None = None  # the lot whose capacity the hold reserved
    lot_amount: int = 0  # that capacity, in USD micro at list price
    # When it ended (ledger clock; None while active, or where a fast path did not say):
    # what an extra needs to tell a late answer's lateness (`gateway.limits`). Not part of
    # a hold's identity: the same hold read back compares equal without it.
    closed_at: int | None = field(default=None, compare=False)

    @property
    def shortfall(self) -> int:
        """Metered cost that could not be charged."""
        return 0 if self.cost is None or self.charged is None else self.cost - self.charged


@dataclass(frozen=True)
class LotCapacity:
    """A lot's capacity in USD micro at list price (see `ledger.schema.lot_capacity`)."""

    lot_id: int
    chain_lot_id: int | None
    chain_remaining: int  # what the chain says the lot can still serve
    chain_consumed: int  # what the chain has consumed of it
    used: int  # settled usage against it (the chain consumes it later)
    reserved: int  # held by active holds or leased to gateway processes

    @property
    def unsettled(self) -> int:
        """Usage the chain has not consumed yet."""
        return max(0, self.used - self.chain_consumed)

    @property
    def headroom(self) -> int:
        """What one more hold may still reserve (never below zero)."""
        return max(0, self.chain_remaining - self.unsettled - self.reserved)


@dataclass(frozen=True)
class Deposit:
    event_id: str
    address: str
    asset: str
    amount: int
    account: int  # the bound account, or the address's unclaimed account


@dataclass(frozen=True)
class ExitLock:
    event_id: str
    address: str
    asset: str
    amount: int
    account: int
    status: ExitStatus
