"""Lot capacity and the holds interface's extension point, on SQLite and PostgreSQL: a
hold reserves its lot's capacity with its funds (all or nothing), settles it into usage
or gives it back; PostgreSQL processes share a lot through leases without ever serving
beyond it; extra counters are taken and given back in the hold's own transaction."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ledger_helpers import fund
from sqlalchemy import Connection

from promptex.ledger import (
    ExtraTake,
    Hold,
    HoldStatus,
    InsufficientFunds,
    Ledger,
    LotCapacityExceeded,
    LotClaim,
    Refusal,
    Reservation,
    UsageRecord,
)
from promptex.ledger.holds.general import OVER_CAPACITY

USDC = "USDC"
LOT_A, LOT_B = 11, 12


def record(lot: int, usd: int) -> UsageRecord:
    return UsageRecord("fake-gpt", 10, 10, usd, gateway_lot_id=lot, lot_kind="listed")


def open_lots(ledger: Ledger, **capacity: int) -> None:
    with ledger.engine.begin() as conn:
        for name, amount in capacity.items():
            ledger.open_lot_capacity(conn, {"a": LOT_A, "b": LOT_B}[name], amount)


@pytest.fixture
def buyer(ledger: Ledger) -> int:
    account = ledger.create_account().id
    fund(ledger, account, USDC, 1_000_000)
    return account


def test_reserve__first_lot_full__takes_the_next_and_settles_its_usage(ledger, buyer):
    open_lots(ledger, a=30, b=100)
    hold = ledger.reserve(buyer, USDC, 500, "req-1", ttl=60, lots=[LotClaim(LOT_A, 40), LotClaim(LOT_B, 40)])
    assert (hold.lot_id, hold.lot_amount) == (LOT_B, 40)
    assert ledger.lot_capacities()[LOT_B].headroom == 60
    ledger.settle("req-1", 300, record=record(LOT_B, 25))
    ledger.holds.maintain()  # PostgreSQL: this process's idle lease room back to the lots
    a, b = ledger.lot_capacities()[LOT_A], ledger.lot_capacities()[LOT_B]
    assert (a.used, a.reserved, b.used, b.reserved, b.headroom) == (0, 0, 25, 0, 75)


def test_reserve__no_lot_has_room__refused_naming_what_is_left_nothing_held(ledger, buyer):
    open_lots(ledger, a=30)
    with pytest.raises(LotCapacityExceeded) as refused:
        ledger.reserve(buyer, USDC, 500, "req-1", ttl=60, lots=[LotClaim(LOT_A, 40)])
    assert refused.value.available == 30
    assert ledger.hold("req-1") is None
    assert ledger.balance(buyer, USDC).held == 0  # the funds' hold rolled back with it
    assert ledger.lot_capacities()[LOT_A].reserved == 0


def test_reserve__funds_refused__no_capacity_taken(ledger, buyer):
    open_lots(ledger, a=100)
    with pytest.raises(InsufficientFunds):
        ledger.reserve(buyer, USDC, 2_000_000, "req-1", ttl=60, lots=[LotClaim(LOT_A, 40)])
    assert ledger.lot_capacities()[LOT_A].headroom == 100


def test_release_and_expire__capacity_back(ledger, buyer, clock):
    open_lots(ledger, a=100)
    ledger.reserve(buyer, USDC, 500, "req-1", ttl=60, lots=[LotClaim(LOT_A, 40)])
    ledger.reserve(buyer, USDC, 500, "req-2", ttl=60, lots=[LotClaim(LOT_A, 40)])
    assert ledger.lot_capacities()[LOT_A].headroom == 20
    ledger.release("req-1")
    clock.advance(61)
    assert ledger.sweep_expired() == 1
    ledger.holds.maintain()
    assert ledger.lot_capacities()[LOT_A].headroom == 100


def test_move__failover_to_a_lot_with_room__capacity_follows(ledger, buyer):
    open_lots(ledger, a=100, b=50)
    ledger.reserve(buyer, USDC, 500, "req-1", ttl=60, lots=[LotClaim(LOT_A, 40)])
    assert ledger.holds.move("req-1", LotClaim(LOT_B, 60)) is None  # no room there: it keeps lot A
    moved = ledger.holds.move("req-1", LotClaim(LOT_B, 40))
    assert moved is not None and moved.lot_id == LOT_B
    ledger.holds.maintain()  # PostgreSQL: this process's idle lease room back to the lots
    assert (ledger.lot_capacities()[LOT_A].headroom, ledger.lot_capacities()[LOT_B].headroom) == (100, 10)
    ledger.settle("req-1", 100, record=record(LOT_B, 30))
    assert ledger.lot_capacities()[LOT_B].used == 30


def test_chain_view__lot_closed_on_chain__serves_nothing_more(ledger, buyer):
    open_lots(ledger, a=100)
    ledger.set_lot_chain_view(LOT_A, remaining=0, consumed=0)
    with pytest.raises(LotCapacityExceeded):
        ledger.reserve(buyer, USDC, 500, "req-1", ttl=60, lots=[LotClaim(LOT_A, 1)])


def test_chain_view__consumed_on_chain__counts_usage_once(ledger, buyer):
    open_lots(ledger, a=100)
    ledger.reserve(buyer, USDC, 500, "req-1", ttl=60, lots=[LotClaim(LOT_A, 40)])
    ledger.settle("req-1", 100, record=record(LOT_A, 30))
    ledger.holds.maintain()
    ledger.set_lot_chain_view(LOT_A, remaining=70, consumed=30)  # the escrow consumed that usage
    capacity = ledger.lot_capacities()[LOT_A]
    assert (capacity.unsettled, capacity.headroom) == (0, 70)


def test_settle_after_sweep__usage_beyond_the_lot__quarantined_not_consumed(ledger, buyer, clock):
    open_lots(ledger, a=50)
    ledger.reserve(buyer, USDC, 500, "req-1", ttl=60, lots=[LotClaim(LOT_A, 50)])
    clock.advance(61)
    ledger.sweep_expired()
    ledger.reserve(buyer, USDC, 500, "req-2", ttl=60, lots=[LotClaim(LOT_A, 50)])  # its capacity, given again
    ledger.settle("req-2", 100, record=record(LOT_A, 50))
    late = ledger.settle("req-1", 100, record=record(LOT_A, 20))  # the first answer arrives after all
    assert late.status == HoldStatus.SETTLED and late.charged == 100
    stored = ledger.usage_record("req-1")
    assert stored is not None and (stored.status, stored.quarantine_reason) == ("quarantined", OVER_CAPACITY)
    assert ledger.usage_record("req-2").status == "pending"  # type: ignore[union-attr]


# ─── PostgreSQL: capacity leased to processes ────────────────────────────────


@pytest.fixture
def second(ledger: Ledger, ledger_url: str, clock) -> Iterator[Ledger]:  # noqa: ANN001
    """Another process's ledger on the same database (its own lease holder)."""
    other = Ledger.open(ledger_url, migrate=False, clock=clock, sqlite_synchronous="NORMAL")
    yield other
    other.close()


def test_leases__two_processes__share_the_last_room_exactly(ledger, second, buyer, ledger_url):
    if not ledger_url.startswith("postgresql"):
        pytest.skip("leases are PostgreSQL's (one gateway process per SQLite file)")
    open_lots(ledger, a=400)
    claim = [LotClaim(LOT_A, 40)]
    ledger.reserve(buyer, USDC, 500, "req-first", ttl=60, lots=claim)  # leases a slice: more than 40
    served = 1
    for i in range(20):  # the other process finds the lot's unleased room short, then takes idle room back
        try:
            second.reserve(buyer, USDC, 500, f"req-second-{i}", ttl=60, lots=claim)
            served += 1
        except LotCapacityExceeded:
            break
    assert served == 10  # 400 / 40: not one less (idle room in the first lease) nor one more
    with pytest.raises(LotCapacityExceeded):
        ledger.reserve(buyer, USDC, 500, "req-first-2", ttl=60, lots=claim)
    ledger.check()


def test_leases__holder_died__its_lease_trimmed_by_another_once_expired(ledger, second, buyer, ledger_url, clock):
    if not ledger_url.startswith("postgresql"):
        pytest.skip("leases are PostgreSQL's")
    open_lots(ledger, a=400)
    second.reserve(buyer, USDC, 500, "req-1", ttl=60, lots=[LotClaim(LOT_A, 40)])
    second.settle("req-1", 100, record=record(LOT_A, 30))
    assert ledger.lot_capacities()[LOT_A].reserved > 0  # the dead process's idle lease
    clock.advance(61)
    ledger.holds.maintain()  # anyone trims an expired lease: idle room back, its usage folded in
    capacity = ledger.lot_capacities()[LOT_A]
    assert (capacity.used, capacity.reserved, capacity.headroom) == (30, 0, 370)
    ledger.check()


# ─── The extension point: extra counters in the hold's transaction ───────────


class RequestsPerKey:
    """A toy limit: at most `limit` requests held at once (as the gateway's per-window
    limits will be: `holds.extras`)."""

    name = "requests"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken: dict[str, int] = {}
        self.events: list[tuple[str, str]] = []

    def take(self, conn: Connection, hold: Hold, amount: int) -> None:
        if sum(self.taken.values()) + amount > self.limit:
            raise Refusal("too many requests in flight", available=self.limit - sum(self.taken.values()))
        self.taken[hold.request_id] = amount
        self.events.append(("take", hold.request_id))

    def settle(self, conn: Connection, hold: Hold, record: UsageRecord | None, late: bool) -> None:
        self.taken.pop(hold.request_id, None)
        self.events.append(("late" if late else "settle", hold.request_id))

    def give_back(self, conn: Connection, hold: Hold) -> None:
        self.taken.pop(hold.request_id, None)
        self.events.append(("give_back", hold.request_id))


def test_extras__taken_with_the_hold__refusal_leaves_nothing__given_back_on_every_end(ledger, buyer, clock):
    extra = RequestsPerKey(limit=2)
    ledger.holds.register(extra)

    def reserve(request_id: str) -> Hold:
        return ledger.holds.reserve(Reservation(request_id, buyer, USDC, 500, 60, extras=(ExtraTake("requests", 1),)))

    reserve("req-1")
    reserve("req-2")
    with pytest.raises(Refusal, match="too many"):
        reserve("req-3")
    assert ledger.hold("req-3") is None and ledger.balance(buyer, USDC).held == 1_000  # req-3 held nothing
    ledger.settle("req-1", 100)
    ledger.release("req-2")
    reserve("req-4")
    clock.advance(61)
    ledger.sweep_expired()
    assert extra.taken == {}
    assert extra.events == [
        ("take", "req-1"), ("take", "req-2"), ("settle", "req-1"), ("give_back", "req-2"), ("take", "req-4"),
        ("give_back", "req-4"),
    ]  # fmt: skip
    assert ledger.balance(buyer, USDC).held == 0
