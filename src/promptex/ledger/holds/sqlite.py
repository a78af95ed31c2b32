"""Holds on SQLite: the general path, plus a fast path on the driver for the gateway's
two hot operations.

`reserve_in` and `settle_in` do what the general path does for the common case — a new
hold, a payer with the funds, a lot with room, a cost within the hold, and in signed mode
a voucher the lane takes (`holds.lanes_sqlite`) — with the same
statements, compiled once and run on the DBAPI cursor of the caller's transaction
(SQLAlchemy's per-statement work was most of the ledger's cost in a profile of the
gateway). Every other case goes to the general path in the same transaction. One
gateway process per SQLite file (`promptex.gateway.single`): capacity is reserved on
the lot's row itself, no leases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import OperationalError

from promptex.ledger.errors import HoldConflict
from promptex.ledger.holds import capacity, general, lanes_sqlite
from promptex.ledger.holds.api import Reservation
from promptex.ledger.holds.book import GeneralHolds
from promptex.ledger.holds.capacity import LotClaim
from promptex.ledger.holds.extras import names
from promptex.ledger.holds.sqlite_statements import cursor, run
from promptex.ledger.lanes import NAME as LANES
from promptex.ledger.lanes import VoucherLanes
from promptex.ledger.models import Hold, HoldStatus
from promptex.ledger.schema import holds, journal_entries, journal_lines, lot_capacity, usage_records
from promptex.ledger.usage import UsageRecord, usage_row

_run, _cursor = run, cursor  # the raw statements (`holds.sqlite_statements`)


_HOLD_KEYS = (
    "request_id",
    "account_id",
    "payer_id",
    "asset",
    "amount",
    "status",
    "created_at",
    "expires_at",
    "lot_id",
    "lot_amount",
)
_ENTRY_KEYS = ("ref", "kind", "created_at")
_USAGE_KEYS = (
    "request_id",
    "account_id",
    "payer_id",
    "asset",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "cost",
    "gateway_lot_id",
    "chain_lot_id",
    "lot_kind",
    "list_usd_micro",
    "fee_bps",
    "settled_at",
    "status",
    "mode",
    "voucher_session",
    "voucher_lane",
    "voucher_ceiling",
)
# Inserted or not (the request id holds already): `rowcount` says, no RETURNING to fetch.
_INSERT_HOLD = sqlite.insert(holds).on_conflict_do_nothing()
_SIGNED_HOLD_KEYS = (*_HOLD_KEYS, "extras")
_INSERT_SIGNED_HOLD = sqlite.insert(holds).on_conflict_do_nothing()
_INSERT_ENTRY = sqlite.insert(journal_entries).on_conflict_do_nothing()  # its id: `lastrowid`
# A settle's two lines in one statement.
_INSERT_LINES = insert(journal_lines).values(
    [
        {
            "entry_id": bindparam("p_entry"),
            "account_id": bindparam("p_payer"),
            "asset": bindparam("p_asset"),
            "amount": bindparam("p_debit"),
        },
        {
            "entry_id": bindparam("p_entry"),
            "account_id": bindparam("p_usage_account"),
            "asset": bindparam("p_asset"),
            "amount": bindparam("p_cost"),
        },
    ]
)
_INSERT_USAGE = sqlite.insert(usage_records).on_conflict_do_nothing()
_HOLD_COLUMNS = (
    "account_id",
    "payer_id",
    "asset",
    "amount",
    "status",
    "created_at",
    "expires_at",
    "lot_id",
    "lot_amount",
    "lease_id",
    "extras",
)
# Read, then ended by `general.END_HOLD`: measured, an UPDATE … RETURNING with the fast
# path's conditions in its WHERE cost more than the two (SQLite buffers RETURNING rows).
_SELECT_HOLD_ROW = select(*(holds.c[name] for name in _HOLD_COLUMNS)).where(
    holds.c.request_id == bindparam("p_request_id")
)
_CONSUME = (
    update(lot_capacity)
    .where(lot_capacity.c.lot_id == bindparam("p_lot"))
    .values(reserved=lot_capacity.c.reserved - bindparam("p_reserved"), used=lot_capacity.c.used + bindparam("p_usage"))
)


class SqliteHolds(GeneralHolds):
    def _lanes(self, names: Sequence[str]) -> VoucherLanes | None:
        """The lanes extra when it is the only one taken (signed mode's fast path)."""
        extra = self.extras.get(LANES) if list(names) == [LANES] else None
        return extra if isinstance(extra, VoucherLanes) else None

    def reserve_in(self, conn: Connection, r: Reservation, now: int) -> Hold:
        payer = r.account if r.payer is None else r.payer
        lanes = self._lanes([take.name for take in r.extras]) if r.extras else None
        if r.extras and lanes is None:
            return super().reserve_in(conn, r, now)
        general.check_reservation(r.amount, r.ttl, r.request_id)
        first = r.lots[0] if r.lots else None
        cur = _cursor(conn)
        row = {
            "request_id": r.request_id,
            "account_id": r.account,
            "payer_id": payer,
            "asset": r.asset,
            "amount": str(r.amount),
            "status": HoldStatus.ACTIVE.value,
            "created_at": now,
            "expires_at": now + r.ttl,
            "lot_id": first.lot_id if first else None,
            "lot_amount": first.amount if first else None,
        }
        if lanes is None:
            _run(cur, conn, _INSERT_HOLD, row, _HOLD_KEYS)
        else:  # the lane's name with the hold, so any process's sweeper frees the lane
            _run(cur, conn, _INSERT_SIGNED_HOLD, {**row, "extras": LANES}, _SIGNED_HOLD_KEYS)
        if cur.rowcount != 1:  # this request id holds already: the general path answers
            return super().reserve_in(conn, r, now)
        if payer != r.account:
            general.hold_budget(conn, payer, r.account, r.asset, r.amount)
        _run(cur, conn, general.TAKE, {"p_payer": payer, "p_asset": r.asset, "p_amount": row["amount"]})
        if cur.rowcount != 1:
            general.raise_refusal(conn, payer, r.asset, r.amount)
        lot_id, lot_amount = (None, 0) if first is None else self._capacity(conn, cur, r, first, now)
        hold = Hold(
            r.request_id, r.account, payer, r.asset, r.amount, HoldStatus.ACTIVE, now, now + r.ttl,
            lot_id=lot_id, lot_amount=lot_amount,
        )  # fmt: skip
        if lanes is not None:
            lanes_sqlite.take(lanes, conn, hold, r.extras[0].amount)
        return hold

    def _capacity(self, conn: Connection, cur: Any, r: Reservation, first: LotClaim, now: int) -> tuple[int, int]:
        """The lot capacity the hold takes: (lot id, amount)."""
        if first.amount > 0:
            _run(cur, conn, capacity.TAKE_DIRECT, {"p_lot": first.lot_id, "p_amount": first.amount})
            if cur.rowcount == 1:
                return first.lot_id, first.amount
        claim, _ = capacity.take(conn, r.lots, holder=None, expires=now + r.ttl, slice_size=0)
        conn.execute(
            update(holds).where(holds.c.request_id == r.request_id).values(lot_id=claim.lot_id, lot_amount=claim.amount)
        )
        return claim.lot_id, claim.amount

    def settle(self, request_id: str, cost: int, *, record: UsageRecord | None = None, served: bool = False) -> Hold:
        try:
            settled = super().settle(request_id, cost, record=record)
        except OperationalError:  # the gateway's 503: had it committed, the next sweep gives it back
            self.lost_answer(request_id, cost, served=served)
            raise
        self.answered(request_id)
        return settled

    def settle_in(self, conn: Connection, request_id: str, cost: int, record: UsageRecord | None, now: int) -> Hold:
        cur = _cursor(conn)
        _run(cur, conn, _SELECT_HOLD_ROW, {"p_request_id": request_id})
        row = cur.fetchone()
        lanes = self._lanes(names(row[10])) if row is not None and row[10] else None
        if (
            row is None
            or row[4] != HoldStatus.ACTIVE.value
            or cost < 0
            or cost > int(row[3])
            or row[9]
            or (row[10] and lanes is None)
        ):
            return super().settle_in(conn, request_id, cost, record, now)
        lot_id, lot_amount = row[7], int(row[8] or 0)
        usage = 0 if record is None else record.list_usd_micro
        if lot_id is not None and (record is None or record.gateway_lot_id != lot_id or not 0 <= usage <= lot_amount):
            return super().settle_in(conn, request_id, cost, record, now)
        account, payer, asset, amount = int(row[0]), int(row[1]), row[2], int(row[3])
        params = {
            "p_request_id": request_id,
            "p_was": HoldStatus.ACTIVE.value,
            "p_status": HoldStatus.SETTLED.value,
            "p_now": now,
            "p_cost": str(cost),
            "p_charged": str(cost),
            "p_payer": payer,
            "p_account": account,
            "p_asset": asset,
            "p_held": row[3],
        }
        _run(cur, conn, general.END_HOLD, params)
        if payer != account:
            _run(cur, conn, general.SETTLE_BUDGET, params)
        _run(cur, conn, general.SETTLE_BALANCE, params)
        hold = Hold(
            request_id, account, payer, asset, amount, HoldStatus.SETTLED, int(row[5]), int(row[6]),
            cost, cost, lot_id, lot_amount,
        )  # fmt: skip
        if cost:
            _run(
                cur,
                conn,
                _INSERT_ENTRY,
                {"ref": f"settle:{request_id}", "kind": "settle", "created_at": now},
                _ENTRY_KEYS,
            )
            if cur.rowcount != 1:  # pragma: no cover - the ref is the active hold's, settled only here
                raise HoldConflict(f"request {request_id!r} has a settle entry already")
            params["p_entry"], params["p_debit"], params["p_usage_account"] = (
                cur.lastrowid,
                str(-cost),
                self.ledger.usage,
            )
            _run(cur, conn, _INSERT_LINES, params)
        if lot_id is not None:
            _run(cur, conn, _CONSUME, {"p_lot": lot_id, "p_reserved": lot_amount, "p_usage": usage})
        if record is not None:
            values = usage_row(hold, record, now)
            for name in ("cost", "list_usd_micro", "voucher_ceiling"):  # Amount columns: canonical text
                if values[name] is not None:
                    values[name] = str(values[name])
            _run(cur, conn, _INSERT_USAGE, values, _USAGE_KEYS)
        if lanes is not None:
            lanes_sqlite.settle(lanes, conn, hold, record, now)
        return hold
