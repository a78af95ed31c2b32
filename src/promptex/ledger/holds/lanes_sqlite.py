"""Signed mode's lane on SQLite's fast path: a voucher's admission taken with its hold, and
the lane's charge with the settle, on the DBAPI cursor of the hold's own transaction with
statements compiled once (`holds.sqlite`), instead of the `VoucherLanes` extra's
SQLAlchemy statements (a profile of one signed request: its eleven statements were most
of the ledger's time).

`take` does what `VoucherLanes.take` does for the usual case — the session current and
open (no spend cap after it), the lane's row there, nothing in flight on it, the ceiling
above the lane's highest and exactly the hold above what it was charged, the session's
ceilings within the balance less pending exits — in four statements; anything else (a
refusal, a lane never used) goes to `VoucherLanes.take` in the same transaction, before
this path wrote anything, so the refusal and the ledger's state are the general path's. `settle` adds the charge to the
lane and frees it as `VoucherLanes.settle` does (and refuses it after the session's last
charge second, as it does); `give_back` frees it. A test compares the two paths' ledger
state (tests/offchain/test_ledger_lanes.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, bindparam, null, select, update
from sqlalchemy.exc import NoResultFound

from promptex.ledger.holds.sqlite_statements import cursor, run
from promptex.ledger.lanes import VoucherLanes, charged_too_late, last_charge_second
from promptex.ledger.models import Hold
from promptex.ledger.schema import balances, session_keys, voucher_lanes
from promptex.ledger.usage import UsageRecord

_S, _L, _B = session_keys.c, voucher_lanes.c, balances.c
_SESSION = (
    select(_S.session, _S.lanes, _S.expiry, _S.ends_at, _S.revoked_at, _S.capped_by)
    .where(_S.account_id == bindparam("p_account"), _S.asset == bindparam("p_asset"))
    .order_by(_S.session.desc())
    .limit(1)
)
_LANES = select(_L.lane, _L.charged, _L.ceiling, _L.inflight, _L.inflight_hold).where(
    _L.account_id == bindparam("p_account"), _L.asset == bindparam("p_asset"), _L.session == bindparam("p_session")
)
_BALANCE = select(_B.posted, _B.held, _B.locked).where(
    _B.account_id == bindparam("p_account"), _B.asset == bindparam("p_asset")
)
_THIS_LANE = (
    _L.account_id == bindparam("p_account"),
    _L.asset == bindparam("p_asset"),
    _L.session == bindparam("p_session"),
    _L.lane == bindparam("p_lane"),
)
_TAKE = (
    update(voucher_lanes)
    .where(*_THIS_LANE)
    .values(
        inflight=bindparam("p_request_id"),
        inflight_hold=bindparam("p_hold"),
        inflight_ceiling=bindparam("p_ceiling"),
        inflight_signature=bindparam("p_signature"),
        updated_at=bindparam("p_now"),
        ceiling=bindparam("p_ceiling"),
        signature=bindparam("p_signature"),
    )
)
# The lane, and the close of its session's last window (`VoucherLanes.settle`'s check).
_CHARGED = (
    select(_L.charged, _L.ceiling, _L.inflight, _S.settles_until)
    .select_from(
        voucher_lanes.outerjoin(
            session_keys, and_(_S.account_id == _L.account_id, _S.asset == _L.asset, _S.session == _L.session)
        )
    )
    .where(*_THIS_LANE)
)
_CHARGE = update(voucher_lanes).where(*_THIS_LANE).values(charged=bindparam("p_charged"), updated_at=bindparam("p_now"))
_CHARGE_AND_FREE = (
    update(voucher_lanes)
    .where(*_THIS_LANE)
    .values(
        charged=bindparam("p_charged"),
        updated_at=bindparam("p_now"),
        inflight=null(),
        inflight_hold=null(),
        inflight_ceiling=null(),
        inflight_signature=null(),
    )
)
_FREE = (
    update(voucher_lanes)
    .where(
        _L.account_id == bindparam("p_account"),
        _L.asset == bindparam("p_asset"),
        _L.inflight == bindparam("p_request_id"),
    )
    .values(inflight=null(), inflight_hold=null(), inflight_ceiling=null(), inflight_signature=null())
)


def take(lanes: VoucherLanes, conn: Connection, hold: Hold, amount: int) -> None:
    """`VoucherLanes.take`, in four raw statements for the usual case (see the module)."""
    voucher = lanes.planned(hold.request_id)
    if voucher is None:
        lanes.take(conn, hold, amount)  # raises, as the general path does
        return
    cur = cursor(conn)
    account, asset, now = hold.payer, hold.asset, hold.created_at
    run(cur, conn, _SESSION, {"p_account": account, "p_asset": asset})
    found = cur.fetchone()
    usual = (
        found is not None
        and int(found[0]) == voucher.session
        and found[4] is None
        and found[5] is None
        and now < int(found[2])
        and (found[3] is None or now < int(found[3]))
        and 0 <= voucher.lane < int(found[1])
    )
    if usual:
        run(cur, conn, _LANES, {"p_account": account, "p_asset": asset, "p_session": voucher.session})
        usual = _within(cur.fetchall(), voucher.lane, voucher.ceiling, hold.amount, cur, conn, account, asset)
    if not usual:
        lanes.take(conn, hold, amount)  # refuses (or takes a lane never used before), as before
        return
    run(
        cur,
        conn,
        _TAKE,
        {
            "p_account": account,
            "p_asset": asset,
            "p_session": voucher.session,
            "p_lane": voucher.lane,
            "p_request_id": hold.request_id,
            "p_hold": str(hold.amount),
            "p_ceiling": str(voucher.ceiling),
            "p_signature": voucher.signature,
            "p_now": now,
        },
    )


def _within(
    rows: list[Any], lane: int, ceiling: int, held: int, cur: Any, conn: Connection, account: int, asset: str
) -> bool:
    """Whether the voucher passes every check `VoucherLanes.take` makes (else it refuses)."""
    mine = next((row for row in rows if int(row[0]) == lane), None)
    if mine is None or mine[3] is not None:
        return False
    charged, highest = int(mine[1]), int(mine[2])
    if ceiling < charged or ceiling <= highest or held != ceiling - charged:
        return False
    exposure, in_flight = ceiling - charged, held
    for row in rows:
        if int(row[0]) != lane:
            exposure += int(row[2]) - int(row[1])
            in_flight += int(row[4] or 0) if row[3] is not None else 0
    run(cur, conn, _BALANCE, {"p_account": account, "p_asset": asset})
    balance = cur.fetchone()
    if balance is None:
        return False
    posted, on_hold, locked = int(balance[0]), int(balance[1]), int(balance[2])
    return exposure <= posted - locked - (on_hold - in_flight)


def settle(lanes: VoucherLanes, conn: Connection, hold: Hold, record: UsageRecord | None, now: int) -> None:
    """`VoucherLanes.settle` for a hold settled within its amount (`hold.charged` set) at `now`."""
    cur = cursor(conn)
    if record is None or record.voucher_session is None or record.voucher_lane is None:
        give_back(conn, hold)
        return
    where = {"p_account": hold.payer, "p_asset": hold.asset, "p_session": record.voucher_session,
             "p_lane": record.voucher_lane}  # fmt: skip
    run(cur, conn, _CHARGED, where)
    row = cur.fetchone()
    if row is None:  # as VoucherLanes.settle: its `.one()` raises this very kind
        named = f"lane {record.voucher_lane} of session {record.voucher_session}"
        raise NoResultFound(f"no {named} for {hold.request_id!r}")
    last = last_charge_second(row[3], lanes.settle_seconds)
    if last is not None and now > last:
        raise charged_too_late(hold.request_id, record.voucher_session, int(row[3]), now, last)
    was, highest = int(row[0]), int(row[1])
    charged = min(was + (hold.charged or 0), max(highest, was))
    statement = _CHARGE_AND_FREE if row[2] == hold.request_id else _CHARGE
    run(cur, conn, statement, {**where, "p_charged": str(charged), "p_now": hold.created_at})


def give_back(conn: Connection, hold: Hold) -> None:
    run(cursor(conn), conn, _FREE, {"p_account": hold.payer, "p_asset": hold.asset, "p_request_id": hold.request_id})
