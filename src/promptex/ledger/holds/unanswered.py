"""A settle whose answer was lost: charged, though its request was answered 503.

A settle's COMMIT may land while its answer is lost with the connection, the database then
unreachable for its retry: the gateway answers 503 `ledger_unavailable` ("nothing is
charged") and the charge stands. The book that ran it remembers (request id, cost)
(`GeneralHolds.unanswered`), and its next sweep, once the database answers, looks:

- not settled: nothing to give back (its hold is released as an abandoned one, or expires);
- settled at that cost, its usage record still pending (no batch holds it): given back in
  one transaction — the settle's charge reversed by the refund entry `refund:{request id}`
  (idempotent by its ref and by the record's status) with the spend cap and any member
  budget it took (`usage.refund`: the cap only while it is still the one in force — once
  the chain set another, which never counted the charge, it stays as the chain has it; a
  debt the settle opened is repaid by it), the record
  marked refunded (the coordinator's plan of a batch naming it fails whole), the lot usage
  it counted taken off its lease or lot, and a signed lane's charged total moved back —
  only while that lane still stands as this settle left it (no voucher accepted since, none
  in flight): the buyer's proxy was told no total, so it still counts the lane's total
  before it; once a later answer told it a total that includes this charge, moving it back
  would contradict what it was told, so the charge is KEPT (and counted);
- settled but its record batched already (an epoch may be posted), or no record: KEPT.

The limits' counters (requests, tokens, cost per window, a key's budget) keep what the
settle counted: the request was served upstream, and a limit counting a charge given back
only errs on the buyer's safe side.
"""

from __future__ import annotations

from enum import Enum

from sqlalchemy import Connection, select, update

from promptex.ledger.holds.general import get_hold
from promptex.ledger.models import HoldStatus
from promptex.ledger.schema import capacity_leases, holds, lot_capacity, voucher_lanes
from promptex.ledger.usage import PENDING, get_usage, refund

GIVEN_BACK_REASON = (
    "its request was answered 503 ledger_unavailable: the settle committed but its answer was lost with the "
    "database, so its charge is given back"
)


class Outcome(Enum):
    NOT_SETTLED = "not settled"  # nothing charged: nothing to give back
    GIVEN_BACK = "given back"
    KEPT = "kept"  # charged, and it stays charged (see the module's docstring)


class Kept(Exception):
    """Raised inside the give-back's transaction to roll it back whole: the charge stays."""


def give_back(conn: Connection, request_id: str, cost: int, *, now: int) -> Outcome:
    """Give back the charge of `request_id`'s settle at `cost` whose answer was lost (see the
    module's docstring), in the caller's transaction; raises `Kept` (roll it back) for a
    charge that must stay. Again after it was given back: GIVEN_BACK, nothing changed."""
    hold = get_hold(conn, request_id, for_update=True)  # waits for a settle still committing
    if hold is None or hold.status != HoldStatus.SETTLED:
        return Outcome.NOT_SETTLED
    record = get_usage(conn, request_id)
    if record is None or hold.cost != cost:
        raise Kept(f"request {request_id!r} was settled without a usage record, or at another cost")
    if record.status != PENDING:
        if record.refund_reason == GIVEN_BACK_REASON:
            return Outcome.GIVEN_BACK  # given back before (by an earlier pass)
        raise Kept(f"request {request_id!r}'s usage record is {record.status}: its settlement may be under way")
    if not refund(conn, request_id, GIVEN_BACK_REASON, now=now, was=PENDING):
        raise Kept(f"request {request_id!r}'s usage record was no longer pending")
    if hold.lot_id is not None and record.list_usd_micro:
        lease_id = conn.execute(select(holds.c.lease_id).where(holds.c.request_id == request_id)).scalar()
        _unuse(conn, hold.lot_id, lease_id, int(record.list_usd_micro))
    if record.voucher_session is not None and record.voucher_lane is not None and record.cost:
        _lane_back(conn, hold.payer, hold.asset, record.voucher_session, record.voucher_lane,
                   int(record.voucher_ceiling or 0), int(record.cost))  # fmt: skip
    return Outcome.GIVEN_BACK


def _unuse(conn: Connection, lot_id: int, lease_id: int | None, usage: int) -> None:
    """Take `usage` off what the lot counts as used: its lease's first (a settle on a lease
    counts it there until the lease is trimmed into the lot), the rest off the lot's row.
    Lock order: the lot, then the lease."""
    lot = conn.execute(select(lot_capacity.c.used).where(lot_capacity.c.lot_id == lot_id).with_for_update()).first()
    left = usage
    if lease_id is not None:
        lease = conn.execute(
            select(capacity_leases.c.used).where(capacity_leases.c.id == lease_id).with_for_update()
        ).first()
        if lease is not None:
            off = min(left, int(lease.used))
            if off:
                conn.execute(
                    update(capacity_leases)
                    .where(capacity_leases.c.id == lease_id)
                    .values(used=capacity_leases.c.used - off)
                )
            left -= off
    if left and lot is not None:
        off = min(left, int(lot.used))
        conn.execute(update(lot_capacity).where(lot_capacity.c.lot_id == lot_id).values(used=lot_capacity.c.used - off))


def _lane_back(conn: Connection, payer: int, asset: str, session: int, lane: int, ceiling: int, cost: int) -> None:
    """The lane's charged total back by `cost`, if the lane still stands as the settle left
    it: its highest accepted voucher the request's own (`ceiling`: every later request needs
    a higher one) and nothing in flight. Else `Kept`: a later answer told the proxy a total
    that includes this charge."""
    c = voucher_lanes.c
    where = (c.account_id == payer, c.asset == asset, c.session == session, c.lane == lane)
    row = conn.execute(select(voucher_lanes).where(*where).with_for_update()).first()
    if (
        row is None
        or row.inflight is not None
        or int(row.ceiling) != ceiling
        or int(row.charged) - cost < int(row.settled)
    ):
        raise Kept(f"lane {lane} of account {payer} was used again since: the proxy was told a total with the charge")
    conn.execute(update(voucher_lanes).where(*where).values(charged=c.charged - cost))
