"""Signed mode's lanes (issue 23): per lane of a session, what the ledger charged, what the
chain settled, the highest voucher accepted and the one request in flight.

A voucher says "lane L of account A in session S may be charged at most C in total". The
gateway names a request's voucher (`VoucherLanes.plan`) and reserves its hold with the
extra counter `VoucherLanes` (see `holds.extras`), so in the hold's own transaction:

- the session is still the account's current one and open;
- the lane has no request in flight (else `LaneBusy`), and is marked as this request's;
- C is above every ceiling accepted on the lane before (else `VoucherUsed`): ceilings rise
  strictly per lane, so a voucher is good for one request, whichever process it is
  replayed to (a replayed voucher would otherwise be served again, up to its ceiling);
- C ≥ what the lane was charged (else `CeilingBelowCharged`), and the hold is exactly
  C − charged (a lane charged meanwhile: `LaneBusy`, so the client resyncs);
- what the vault could ever debit the account on this session's lanes stays within its
  balance less pending exits: Σ over lanes (highest ceiling − settled on chain) ≤ chain
  balance − pending exits. In ledger terms (chain balance ≥ posted + Σ (charged − settled),
  the settled parts cancel) that is Σ (highest ceiling − charged) ≤ posted − locked − held
  by anything but this session's lanes (else `VoucherAboveBalance`). Posted leaves out
  capped usage not yet settled, so the check is, if anything, stricter than the chain's.

Settling the hold adds its charge to the lane (never beyond the lane's highest voucher)
and frees the lane — refused (`ChargedTooLate`, nothing charged) past the session's last
charge second: the close of its last window (`settles_until`) less the coordinator's time
to settle (`VoucherLanes.settle_seconds`). Releasing it, or the sweeper expiring it (a
gateway that died), frees the lane with nothing charged. The highest voucher is kept from
the moment it is accepted: the coordinator settles each lane's charged − settled against it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, select, update

from promptex.ledger import accounts as _accounts
from promptex.ledger import sessions as _sessions
from promptex.ledger.errors import HoldConflict, Refusal
from promptex.ledger.journal import insert_ignore
from promptex.ledger.models import Hold
from promptex.ledger.schema import session_keys, voucher_lanes
from promptex.ledger.usage import UsageRecord
from promptex.protocol.units import money, utc_text

NAME = "voucher-lanes"
# Seconds the coordinator is given to settle a lane's charge before its session's vouchers
# stop settling on chain: the gateway's default `gateway_signed_settle_seconds` (a gateway
# sets its own: `VoucherLanes.settle_seconds`).
SETTLE_SECONDS = 120


@dataclass(frozen=True)
class Voucher:
    """A session key's signed ceiling for one lane (`signature`: 0x + 65 bytes hex)."""

    session: int
    lane: int
    ceiling: int
    signature: str

    def header(self) -> str:
        """As the `x-promptex-voucher` header carries it."""
        return f"session={self.session};lane={self.lane};ceiling={self.ceiling};sig={self.signature}"

    def fields(self) -> dict[str, Any]:
        # Amounts as strings: 18-decimal amounts exceed JSON's safe integers.
        return {"session": self.session, "lane": self.lane, "ceiling": str(self.ceiling), "sig": self.signature}


@dataclass(frozen=True)
class Lane:
    account: int
    asset: str
    session: int
    lane: int
    charged: int = 0  # by the ledger, in total this session
    settled: int = 0  # by the chain
    voucher: Voucher | None = None  # the highest accepted
    inflight: str | None = None  # the request on it now

    def fields(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "lane": self.lane,
            "charged_units": str(self.charged),
            "settled_units": str(self.settled),
            "voucher": None if self.voucher is None else self.voucher.fields(),
            "in_flight": self.inflight is not None,
        }


class LaneRefusal(Refusal):
    """A voucher the lane's state refuses (the gateway answers with the lane to resync)."""


class LaneBusy(LaneRefusal):
    """The lane has a request in flight, or was charged since the voucher was checked."""


class VoucherUsed(LaneRefusal):
    """The voucher's ceiling is not above the lane's highest accepted one: it (or a higher
    one) was used already."""


class CeilingBelowCharged(LaneRefusal):
    """The voucher's ceiling is below what the lane was already charged."""


class VoucherAboveBalance(LaneRefusal):
    """The ceilings would exceed the balance less pending exits (`available`: the largest
    ceiling this lane could have)."""


class ChargedTooLate(HoldConflict):
    """A lane's charge that would land after its session's last charge second
    (`last_charge_second`): the vault could not be counted on to settle it. Not charged."""


def last_charge_second(settles_until: int | None, settle_seconds: int) -> int | None:
    """The last second a charge may land on a lane of a session whose vouchers settle on
    chain until `settles_until` (the close of its last window: `SessionKey.settles_until`),
    the coordinator given `settle_seconds` after it; None when the close is not known (a
    session indexed before migration 0026: the gateway's admission takes its expiry)."""
    return None if settles_until is None else int(settles_until) - settle_seconds


def charged_too_late(request_id: str, session: int, settles_until: int, now: int, last: int) -> ChargedTooLate:
    return ChargedTooLate(
        f"request {request_id!r} was answered at {utc_text(now)}, after {utc_text(last)}, the last second a charge "
        f"of session {session} lands: its vouchers settle on chain only until {utc_text(settles_until)}; not charged"
    )


class SessionClosed(LaneRefusal):
    """The voucher's session is not the account's current one, or it has ended."""


def _voucher(session: int, lane: int, ceiling: Any, signature: Any) -> Voucher | None:
    return None if signature is None else Voucher(session, lane, int(ceiling), signature)


def _lane(row: Any) -> Lane:
    m = row._mapping
    session, lane = int(m["session"]), int(m["lane"])
    return Lane(
        m["account_id"],
        m["asset"],
        session,
        lane,
        int(m["charged"]),
        int(m["settled"]),
        _voucher(session, lane, m["ceiling"], m["signature"]),
        m["inflight"],
    )


def _where(account: int, asset: str, session: int) -> tuple[Any, ...]:
    c = voucher_lanes.c
    return (c.account_id == account, c.asset == asset, c.session == session)


def lanes(conn: Connection, account: int, asset: str, session: int, count: int) -> list[Lane]:
    """Every lane 0..count−1 of the session (an unused lane: all zero)."""
    rows = conn.execute(select(voucher_lanes).where(*_where(account, asset, session))).all()
    found = {int(row.lane): _lane(row) for row in rows}
    return [found.get(n, Lane(account, asset, session, n)) for n in range(count)]


def lane(conn: Connection, account: int, asset: str, session: int, number: int) -> Lane:
    row = conn.execute(
        select(voucher_lanes).where(*_where(account, asset, session), voucher_lanes.c.lane == number)
    ).first()
    return Lane(account, asset, session, number) if row is None else _lane(row)


def set_settled(
    conn: Connection,
    account: int,
    asset: str,
    session: int,
    number: int,
    settled: int,
    now: int,
    *,
    lower: bool = False,
) -> None:
    """What the chain has settled on the lane in total (the coordinator's confirmed batches):
    never lowered (a read of another session's lane, or an older read, cannot take it back)
    unless `lower` — a reorg took a landed settle off the chain, and the vault's total with it."""
    _ensure(conn, account, asset, session, number, now)
    column = voucher_lanes.c.settled
    conn.execute(
        update(voucher_lanes)
        .where(*_where(account, asset, session), voucher_lanes.c.lane == number)
        .values(settled=settled if lower else case((column < settled, settled), else_=column), updated_at=now)
    )


def _ensure(conn: Connection, account: int, asset: str, session: int, number: int, now: int) -> None:
    insert_ignore(
        conn,
        voucher_lanes,
        {
            "account_id": account,
            "asset": asset,
            "session": session,
            "lane": number,
            "charged": 0,
            "settled": 0,
            "ceiling": 0,
            "updated_at": now,
        },
    )


class VoucherLanes:
    """The `Extra` that takes a request's lane with its hold (see the module's doc).

    The gateway names the request's voucher (`plan`) just before it reserves, on the same
    thread; settling and giving back read only the lanes table, so any process's sweeper
    frees the lanes of a process that died."""

    name = NAME

    def __init__(self, settle_seconds: int = SETTLE_SECONDS) -> None:
        self._plans: dict[str, Voucher] = {}
        self._lock = threading.Lock()
        # The coordinator's time to settle a charge before its session's vouchers stop
        # settling (the gateway sets its `gateway_signed_settle_seconds`): no charge lands later.
        self.settle_seconds = settle_seconds

    def plan(self, request_id: str, voucher: Voucher | None) -> None:
        with self._lock:
            if voucher is None:
                self._plans.pop(request_id, None)
            else:
                self._plans[request_id] = voucher

    def planned(self, request_id: str) -> Voucher | None:
        """The voucher `plan` named for a request (None: none)."""
        with self._lock:
            return self._plans.get(request_id)

    def take(self, conn: Connection, hold: Hold, amount: int) -> None:
        with self._lock:
            voucher = self._plans.get(hold.request_id)
        if voucher is None:
            raise RuntimeError(f"request {hold.request_id!r} took a lane without a voucher")
        account, asset, now = hold.payer, hold.asset, hold.created_at
        session = _sessions.current(conn, account, asset)
        if session is None or session.session != voucher.session:
            raise SessionClosed(f"session {voucher.session} is not the account's current session in {asset}")
        ended = session.ended_why(now)
        if ended is not None:
            raise SessionClosed(ended)
        if not 0 <= voucher.lane < session.lanes:
            raise SessionClosed(f"lane {voucher.lane} is not one of session {voucher.session}'s {session.lanes} lanes")
        _ensure(conn, account, asset, voucher.session, voucher.lane, now)
        c = voucher_lanes.c
        rows = conn.execute(
            select(voucher_lanes).where(*_where(account, asset, voucher.session)).order_by(c.lane).with_for_update()
        ).all()
        mine = next(row for row in rows if int(row.lane) == voucher.lane)
        charged = int(mine.charged)
        if mine.inflight is not None:
            raise LaneBusy(f"lane {voucher.lane} has a request in flight", available=charged)
        if voucher.ceiling < charged:
            raise CeilingBelowCharged(
                f"the voucher's ceiling {voucher.ceiling} is below the {charged} lane {voucher.lane} was charged",
                available=charged,
            )
        if voucher.ceiling <= int(mine.ceiling):
            raise VoucherUsed(
                f"the voucher's ceiling {voucher.ceiling} is not above the {int(mine.ceiling)} lane {voucher.lane} "
                f"accepted before",
                available=charged,
            )
        if hold.amount != voucher.ceiling - charged:
            raise LaneBusy(
                f"lane {voucher.lane} was charged {charged} since the voucher was checked", available=charged
            )
        highest = max(int(mine.ceiling), voucher.ceiling)
        exposure = highest - charged
        in_flight = hold.amount
        for row in rows:
            if int(row.lane) != voucher.lane:
                exposure += int(row.ceiling) - int(row.charged)
                in_flight += int(row.inflight_hold or 0) if row.inflight is not None else 0
        balance = _accounts.balance(conn, account, asset)  # its row is locked: the hold was just taken from it
        room = balance.posted - balance.locked - (balance.held - in_flight)
        if exposure > room:
            over = exposure - room
            raise VoucherAboveBalance(
                f"the ceilings of session {voucher.session}'s lanes would come to {money(exposure, asset)} above what "
                f"was charged, more than the {money(max(0, room), asset, rounding='down')} the balance less pending "
                f"exits covers",
                available=max(charged, voucher.ceiling - over),
            )
        values: dict[str, Any] = {
            "inflight": hold.request_id,
            "inflight_hold": hold.amount,
            "inflight_ceiling": voucher.ceiling,
            "inflight_signature": voucher.signature,
            "updated_at": now,
        }
        values.update(ceiling=voucher.ceiling, signature=voucher.signature)  # above the stored one (checked)
        conn.execute(
            update(voucher_lanes).where(*_where(account, asset, voucher.session), c.lane == voucher.lane).values(values)
        )

    def settle(self, conn: Connection, hold: Hold, record: UsageRecord | None, late: bool) -> None:
        """Add the charge to the lane and free it. Never beyond the lane's highest voucher:
        only an answer metered after its hold expired (its gateway hung past the sweep) can
        be charged more than its hold, and the chain could not settle the rest. Never after
        the session's last charge second (`ChargedTooLate`, the whole settle rolled back):
        the gateway serves a request only within a deadline that ends before it, so only an
        answer metered late (a gateway that stalled), active or swept, gets here after it."""
        if record is None or record.voucher_session is None or record.voucher_lane is None:
            self.give_back(conn, hold)
            return
        s = session_keys.c
        settles_until = conn.execute(
            select(s.settles_until).where(
                s.account_id == hold.payer, s.asset == hold.asset, s.session == record.voucher_session
            )
        ).scalar()
        last = last_charge_second(settles_until, self.settle_seconds)
        now = hold.closed_at
        if settles_until is not None and last is not None and now is not None and now > last:
            raise charged_too_late(hold.request_id, record.voucher_session, int(settles_until), now, last)
        c = voucher_lanes.c
        where = (*_where(hold.payer, hold.asset, record.voucher_session), c.lane == record.voucher_lane)
        row = conn.execute(select(voucher_lanes).where(*where).with_for_update()).one()
        charged = min(int(row.charged) + (hold.charged or 0), max(int(row.ceiling), int(row.charged)))
        values: dict[str, Any] = {"charged": charged, "updated_at": hold.created_at}
        if row.inflight == hold.request_id:
            values.update(inflight=None, inflight_hold=None, inflight_ceiling=None, inflight_signature=None)
        conn.execute(update(voucher_lanes).where(*where).values(values))

    def give_back(self, conn: Connection, hold: Hold) -> None:
        c = voucher_lanes.c
        conn.execute(
            update(voucher_lanes)
            .where(c.account_id == hold.payer, c.asset == hold.asset, c.inflight == hold.request_id)
            .values(inflight=None, inflight_hold=None, inflight_ceiling=None, inflight_signature=None)
        )
