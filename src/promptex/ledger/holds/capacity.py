"""Seller lots' capacity as ledger facts, in USD micro at list price (what the escrow is
consumed in). A hold reserves its lot's capacity in the transaction that holds the
buyer's funds, and settles or gives it back with them, so requests in flight can never
overdraw a lot:

    reserved + unsettled ≤ chain_remaining        unsettled = max(0, used − chain_consumed)

`chain_remaining` and `chain_consumed` are the chain's view (the lot's face value at open,
then what the indexer sees of the escrow); `used` is the usage the ledger settled
against the lot, which the chain consumes later.

SQLite (one gateway process): a hold reserves on the lot's row. PostgreSQL (many
processes): a hold reserves on its process's *lease* of the lot — a slice the lot counts
as reserved whole — so concurrent holds do not all queue on one lot row. A lease that
lacks room takes a new slice; when the lot's unleased room is short too, idle room is
taken back from every lease of the lot first, so a request is refused only when the lot
as a whole has no room for it. Leases are trimmed (idle room given back, usage folded
into the lot's `used`) by their process every few seconds, and by anyone once they have
expired (their process died).

Lock order, the same in every transaction: holds → budgets → balances → lots → leases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, case, delete, func, insert, select, update

from promptex.ledger.errors import LotCapacityExceeded
from promptex.ledger.models import LotCapacity
from promptex.ledger.schema import capacity_leases, lot_capacity
from promptex.protocol.units import usd_text

_L = lot_capacity.c
_E = capacity_leases.c


@dataclass(frozen=True)
class LotClaim:
    """Capacity a hold may reserve on one lot (USD micro at list price)."""

    lot_id: int
    amount: int


def _unsettled() -> ColumnElement[Any]:
    return case((_L.used > _L.chain_consumed, _L.used - _L.chain_consumed), else_=0)


def headroom_sql() -> ColumnElement[Any]:
    """What one more hold may reserve on a lot's row, as SQL."""
    return _L.chain_remaining - _L.reserved - _unsettled()


def _later(column: Any, value: Any) -> Any:
    return case((column < value, value), else_=column)


TAKE_DIRECT = (
    update(lot_capacity)
    .where(_L.lot_id == bindparam("p_lot"), headroom_sql() >= bindparam("p_amount"))
    .values(reserved=_L.reserved + bindparam("p_amount"))
)
_TAKE_LEASED = (
    update(capacity_leases)
    .where(
        _E.lot_id == bindparam("p_lot"),
        _E.holder == bindparam("p_holder"),
        _E.amount - _E.reserved - _E.used >= bindparam("p_amount"),
    )
    .values(reserved=_E.reserved + bindparam("p_amount"), expires_at=_later(_E.expires_at, bindparam("p_expires")))
    .returning(_E.id)
)


# ─── The chain's view ────────────────────────────────────────────────────────


def open_lot(conn: Connection, lot_id: int, capacity: int, *, now: int, chain_lot_id: int | None = None) -> None:
    """A new lot's capacity (its face value): what the chain will say at open. Again for
    the same lot: nothing changes."""
    if capacity < 0:
        raise ValueError("a lot's capacity cannot be negative")
    exists = conn.execute(select(_L.lot_id).where(_L.lot_id == lot_id)).first()
    if exists is None:
        conn.execute(
            insert(lot_capacity).values(
                lot_id=lot_id,
                chain_lot_id=chain_lot_id,
                chain_remaining=capacity,
                chain_consumed=0,
                used=0,
                reserved=0,
                updated_at=now,
            )
        )


def set_chain_view(
    conn: Connection, lot_id: int, *, remaining: int, consumed: int, now: int, chain_lot_id: int | None = None
) -> None:
    """What the chain says of the lot: `remaining` it can still serve and `consumed` so far
    (closed, expired or slashed: remaining 0). Reserves beyond it are refused from now on."""
    if remaining < 0 or consumed < 0:
        raise ValueError("a lot's remaining and consumed capacity cannot be negative")
    values: dict[str, Any] = {"chain_remaining": remaining, "chain_consumed": consumed, "updated_at": now}
    if chain_lot_id is not None:
        values["chain_lot_id"] = chain_lot_id
    if not conn.execute(update(lot_capacity).where(_L.lot_id == lot_id).values(**values)).rowcount:
        conn.execute(
            insert(lot_capacity).values(lot_id=lot_id, chain_lot_id=chain_lot_id, used=0, reserved=0, **values)
        )


def set_chain_lot_id(conn: Connection, lot_id: int, chain_lot_id: int | None) -> None:
    """The escrow lot the gateway's lot was opened as (what chain events name)."""
    conn.execute(update(lot_capacity).where(_L.lot_id == lot_id).values(chain_lot_id=chain_lot_id))


def capacities(conn: Connection, lot_ids: Sequence[int] | None = None) -> dict[int, LotCapacity]:
    """Each lot's capacity, with its leases' settled usage counted as used (not as reserved)."""
    leased_use = select(_E.lot_id, func.coalesce(func.sum(_E.used), 0).label("used")).group_by(_E.lot_id).subquery()
    stmt = select(lot_capacity, func.coalesce(leased_use.c.used, 0).label("lease_used")).outerjoin(
        leased_use, leased_use.c.lot_id == _L.lot_id
    )
    if lot_ids is not None:
        stmt = stmt.where(_L.lot_id.in_(list(lot_ids)))
    found: dict[int, LotCapacity] = {}
    for row in conn.execute(stmt):
        lease_used = int(row.lease_used)
        found[int(row.lot_id)] = LotCapacity(
            int(row.lot_id),
            row.chain_lot_id,
            int(row.chain_remaining),
            int(row.chain_consumed),
            int(row.used) + lease_used,
            int(row.reserved) - lease_used,
        )
    return found


# ─── Reserving ───────────────────────────────────────────────────────────────


def take(
    conn: Connection, claims: Sequence[LotClaim], *, holder: str | None, expires: int, slice_size: int
) -> tuple[LotClaim, int | None]:
    """Reserve the first claim that fits, in order: (that claim, the lease it came from or
    None). On the lot's row when `holder` is None (SQLite), else from `holder`'s lease.
    Raises LotCapacityExceeded (nothing of it taken: the caller's transaction rolls back)."""
    best = 0
    for claim in claims:
        if claim.amount <= 0:
            raise ValueError("a capacity claim must be positive")
        if holder is None:
            if conn.execute(TAKE_DIRECT, {"p_lot": claim.lot_id, "p_amount": claim.amount}).rowcount == 1:
                return claim, None
            found = capacities(conn, [claim.lot_id]).get(claim.lot_id)
            best = max(best, found.headroom if found else 0)
            continue
        lease, room = _take_leased(conn, claim, holder, expires, slice_size)
        if lease is not None:
            return claim, lease
        best = max(best, room)
    lots = ", ".join(str(c.lot_id) for c in claims)
    need = min((c.amount for c in claims), default=0)
    raise LotCapacityExceeded(
        f"lot(s) {lots} have {usd_text(best, rounding='down')} of capacity left at list price, "
        f"this request needs {usd_text(need, rounding='up')}",
        available=best,
    )


def _take_leased(
    conn: Connection, claim: LotClaim, holder: str, expires: int, slice_size: int
) -> tuple[int | None, int]:
    """(lease id, room) — from the holder's lease, else a new slice of the lot, taking idle
    room back from every lease of the lot when the unleased room is short."""
    params = {"p_lot": claim.lot_id, "p_holder": holder, "p_amount": claim.amount, "p_expires": expires}
    row = conn.execute(_TAKE_LEASED, params).first()
    if row is not None:
        return int(row[0]), claim.amount
    lot = conn.execute(
        select(_L.chain_remaining, _L.chain_consumed, _L.used, _L.reserved)
        .where(_L.lot_id == claim.lot_id)
        .with_for_update()
    ).first()
    if lot is None:
        return None, 0
    room = int(lot.chain_remaining) - int(lot.reserved) - max(0, int(lot.used) - int(lot.chain_consumed))
    if room < claim.amount:  # take idle room back from every lease of the lot, this one's too
        room += _trim(conn, claim.lot_id, holder=None)
        own_idle = 0
    else:
        mine = conn.execute(
            select(_E.amount - _E.reserved - _E.used).where(_E.lot_id == claim.lot_id, _E.holder == holder)
        ).scalar()
        own_idle = int(mine or 0)
    if room + own_idle < claim.amount:
        return None, max(0, room + own_idle)
    # A slice: at least this hold's need beyond the lease's idle room, at most the
    # configured size, and no more than an eighth of the room (others may need it too).
    need = claim.amount - own_idle
    size = min(room, max(need, min(slice_size, room // 8)))
    conn.execute(update(lot_capacity).where(_L.lot_id == claim.lot_id).values(reserved=_L.reserved + size))
    grown = conn.execute(
        update(capacity_leases)
        .where(_E.lot_id == claim.lot_id, _E.holder == holder)
        .values(amount=_E.amount + size, reserved=_E.reserved + claim.amount, expires_at=_later(_E.expires_at, expires))
        .returning(_E.id)
    ).first()
    if grown is not None:
        return int(grown[0]), room
    lease_id: int = conn.execute(
        insert(capacity_leases)
        .values(lot_id=claim.lot_id, holder=holder, amount=size, reserved=claim.amount, used=0, expires_at=expires)
        .returning(_E.id)
    ).scalar_one()
    return int(lease_id), room


# ─── Ending holds ────────────────────────────────────────────────────────────


def give_back(conn: Connection, per_lot: Mapping[int, int], per_lease: Mapping[int, int]) -> None:
    """Capacity of holds that ended without usage (released, expired), back to their lots
    (SQLite) or leases (PostgreSQL), in lock order."""
    for lot_id, amount in sorted(per_lot.items()):
        conn.execute(update(lot_capacity).where(_L.lot_id == lot_id).values(reserved=_L.reserved - amount))
    for lease_id, amount in sorted(per_lease.items()):
        conn.execute(update(capacity_leases).where(_E.id == lease_id).values(reserved=_E.reserved - amount))


def consume(conn: Connection, lot_id: int, lease_id: int | None, reserved: int, usage: int) -> bool:
    """A settled hold: its reservation becomes `usage` (above the reservation, the rest goes
    on the lot itself). `reserved` 0: the reservation was given back already (a hold that
    expired before its answer was metered). True if the lot is now used beyond what the
    chain says it has (usage that must not be consumed on chain as is)."""
    within = min(usage, reserved)
    beyond = usage - within
    if lease_id is not None and reserved:
        conn.execute(
            update(capacity_leases)
            .where(_E.id == lease_id)
            .values(reserved=_E.reserved - reserved, used=_E.used + within)
        )
        if beyond:
            conn.execute(update(lot_capacity).where(_L.lot_id == lot_id).values(used=_L.used + beyond))
    else:
        conn.execute(
            update(lot_capacity)
            .where(_L.lot_id == lot_id)
            .values(reserved=_L.reserved - reserved, used=_L.used + usage)
        )
    if not beyond:
        return False
    over = conn.execute(select(headroom_sql()).where(_L.lot_id == lot_id)).scalar()
    return over is not None and int(over) < 0


# ─── Leases ──────────────────────────────────────────────────────────────────


def trim_leases(conn: Connection, *, holder: str | None, now: int) -> int:
    """Give back idle lease room and fold leases' usage into their lots: `holder`'s own
    leases (a running gateway, every few seconds) and every lease past its expiry (one
    whose gateway died). A lease with nothing reserved is deleted. Returns the room given
    back."""
    due = _E.expires_at < now if holder is None else (_E.holder == holder) | (_E.expires_at < now)
    lot_ids: list[int] = list(conn.execute(select(_E.lot_id).where(due).distinct()).scalars())
    freed = 0
    for lot_id in sorted(lot_ids):
        conn.execute(select(_L.lot_id).where(_L.lot_id == lot_id).with_for_update()).first()
        freed += _trim(conn, lot_id, holder=holder, now=now)
    return freed


def _trim(conn: Connection, lot_id: int, *, holder: str | None, now: int | None = None) -> int:
    """Trim the lot's leases (all of them when `now` is None, else `holder`'s and the
    expired ones); the lot's row must be locked by the caller. Returns the room freed."""
    stmt = select(_E.id, _E.amount, _E.reserved, _E.used).where(_E.lot_id == lot_id)
    if now is not None:
        stmt = stmt.where(_E.expires_at < now if holder is None else (_E.holder == holder) | (_E.expires_at < now))
    rows: Sequence[Any] = conn.execute(stmt.order_by(_E.id).with_for_update()).all()
    freed = folded = 0
    for row in rows:
        idle = int(row.amount) - int(row.reserved) - int(row.used)
        freed += idle
        folded += int(row.used)
        if int(row.reserved) == 0:
            conn.execute(delete(capacity_leases).where(_E.id == row.id))
        elif idle or row.used:
            conn.execute(update(capacity_leases).where(_E.id == row.id).values(amount=row.reserved, used=0))
    if freed or folded:
        conn.execute(
            update(lot_capacity)
            .where(_L.lot_id == lot_id)
            .values(reserved=_L.reserved - freed - folded, used=_L.used + folded)
        )
    return freed


def extend_leases(conn: Connection, holder: str, expires: int) -> None:
    """Keep `holder`'s leases at least until `expires` (their holds were extended)."""
    conn.execute(update(capacity_leases).where(_E.holder == holder).values(expires_at=_later(_E.expires_at, expires)))
