"""Holds, the general path: every case, on SQLAlchemy Core, for SQLite and PostgreSQL.

A reserve is one conditional UPDATE of the payer's balance row —

    held += amount  WHERE posted − held − locked ≥ amount  AND  cap_remaining − held ≥ amount

— in the transaction that inserts the hold (request ids are unique) and reserves its
lot's capacity (`capacity`), so no interleaving of concurrent reserves can take spendable
below zero, holds beyond the signed cap, or lots beyond their capacity. A member
spending from an org (or a treasury's promotional credit) first takes the same kind of
conditional UPDATE on its budget row.

A settle charges the metered cost, also for an answer metered after its hold expired (its
funds and capacity were given back meanwhile): a charge for an answer already served is
posted whole, and the part the balance cannot cover is lent to it as a debt
(`ledger.debts`), never taken below zero. The fast paths (`holds.sqlite`, `holds.postgres`) do the common cases with the
same statements and come here for everything else.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, Select, and_, bindparam, select, update

from promptex.ledger import debts as _debts
from promptex.ledger.amounts import Amount, add, ge, sub
from promptex.ledger.errors import (
    AccountInDebt,
    BudgetExceeded,
    HoldConflict,
    HoldNotFound,
    HoldOrphaned,
    InsufficientFunds,
    LedgerError,
    NotAMember,
    Refusal,
    SpendCapExceeded,
)
from promptex.ledger.holds import capacity
from promptex.ledger.holds.capacity import LotClaim
from promptex.ledger.holds.extras import NAME_SEPARATOR, Extra, ExtraTake, names
from promptex.ledger.journal import insert_ignore, post_entry
from promptex.ledger.models import AccountKind, Hold, HoldStatus
from promptex.ledger.schema import accounts, balances, budgets, holds, members, usage_records
from promptex.ledger.usage import QUARANTINED, UsageRecord, usage_row
from promptex.protocol.units import money

MAX_REQUEST_ID = 200
OVER_CAPACITY = "served beyond its lot's capacity: the answer was metered after its hold expired"


def hold_of(row: Row[tuple[object, ...]]) -> Hold:
    m = row._mapping
    return Hold(
        request_id=m["request_id"],
        account=m["account_id"],
        payer=m["payer_id"],
        asset=m["asset"],
        amount=m["amount"],
        status=HoldStatus(m["status"]),
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        cost=m["cost"],
        charged=m["charged"],
        lot_id=m["lot_id"],
        lot_amount=int(m["lot_amount"] or 0),
        closed_at=m["closed_at"],
    )


# The hot path's statements, built once: each is compiled and cache-keyed once.
SELECT_HOLD = select(holds).where(holds.c.request_id == bindparam("p_request_id"))
_SELECT_HOLD_FOR_UPDATE = SELECT_HOLD.with_for_update()
_PAYER_BALANCE = (balances.c.account_id == bindparam("p_payer"), balances.c.asset == bindparam("p_asset"))
_MEMBER_BUDGET = (
    budgets.c.org_id == bindparam("p_payer"),
    budgets.c.member_id == bindparam("p_account"),
    budgets.c.asset == bindparam("p_asset"),
)
_AMOUNT, _CHARGED = bindparam("p_amount", type_=Amount()), bindparam("p_charged", type_=Amount())
_HELD = bindparam("p_held", type_=Amount())  # what leaves `held`: the hold, or 0 once it expired
_B = balances.c
TAKE = (
    update(balances)
    .where(
        *_PAYER_BALANCE,
        ge(sub(sub(_B.posted, _B.held), _B.locked), _AMOUNT),
        ge(sub(_B.cap_remaining, _B.held), _AMOUNT),
    )
    .values(held=add(_B.held, _AMOUNT))
)
_TAKE_BUDGET = (
    update(budgets)
    .where(*_MEMBER_BUDGET, ge(sub(budgets.c.remaining, budgets.c.held), _AMOUNT))
    .values(held=add(budgets.c.held, _AMOUNT))
)
END_HOLD = (
    update(holds)
    .where(holds.c.request_id == bindparam("p_request_id"), holds.c.status == bindparam("p_was"))
    .values(
        status=bindparam("p_status"),
        closed_at=bindparam("p_now"),
        cost=bindparam("p_cost", type_=Amount()),
        charged=_CHARGED,
    )
)
SETTLE_BALANCE = (
    update(balances)
    .where(*_PAYER_BALANCE)
    .values(posted=sub(_B.posted, _CHARGED), held=sub(_B.held, _HELD), cap_remaining=sub(_B.cap_remaining, _CHARGED))
)
SETTLE_BUDGET = (
    update(budgets)
    .where(*_MEMBER_BUDGET)
    .values(remaining=sub(budgets.c.remaining, _CHARGED), held=sub(budgets.c.held, _HELD))
)
_UNHOLD_BALANCE = update(balances).where(*_PAYER_BALANCE).values(held=sub(_B.held, _AMOUNT))
_UNHOLD_BUDGET = update(budgets).where(*_MEMBER_BUDGET).values(held=sub(budgets.c.held, _AMOUNT))
_SET_LOT = (
    update(holds)
    .where(holds.c.request_id == bindparam("p_request_id"))
    .values(lot_id=bindparam("p_lot"), lot_amount=bindparam("p_lot_amount"), lease_id=bindparam("p_lease"))
)


def get_hold(conn: Connection, request_id: str, *, for_update: bool = False) -> Hold | None:
    row = _hold_row(conn, request_id, for_update=for_update)
    return None if row is None else hold_of(row)


def _hold_row(conn: Connection, request_id: str, *, for_update: bool = False) -> Row[Any] | None:
    stmt = _SELECT_HOLD_FOR_UPDATE if for_update else SELECT_HOLD
    return conn.execute(stmt, {"p_request_id": request_id}).first()


def _balance_where(payer: int, asset: str) -> list[ColumnElement[bool]]:
    return [balances.c.account_id == payer, balances.c.asset == asset]


def _budget_where(payer: int, account: int, asset: str) -> ColumnElement[bool]:
    return and_(budgets.c.org_id == payer, budgets.c.member_id == account, budgets.c.asset == asset)


# ─── Reserve ─────────────────────────────────────────────────────────────────


def check_reservation(amount: int, ttl: int, request_id: str) -> None:
    if amount <= 0:
        raise ValueError("a hold must be positive")
    if ttl <= 0:
        raise ValueError("a hold's ttl must be positive")
    if not request_id or len(request_id) > MAX_REQUEST_ID:
        raise ValueError(f"a request id is 1..{MAX_REQUEST_ID} characters")


def reserve(
    conn: Connection,
    *,
    account: int,
    payer: int,
    asset: str,
    amount: int,
    request_id: str,
    ttl: int,
    now: int,
    lots: Sequence[LotClaim] = (),
    extras: Sequence[ExtraTake] = (),
    registered: Mapping[str, Extra] | None = None,
    holder: str | None = None,
    slice_size: int = 0,
    process: int | None = None,
) -> Hold:
    """Hold `amount` of the payer's funds and the capacity of the first of `lots` with room
    (on the lot's row, or from `holder`'s lease of it), and take `extras`: all or nothing.
    `process`: the registered gateway process making it (`ledger.processes`), if any."""
    check_reservation(amount, ttl, request_id)
    fresh = insert_ignore(
        conn,
        holds,
        {
            "request_id": request_id,
            "account_id": account,
            "payer_id": payer,
            "asset": asset,
            "amount": amount,
            "status": HoldStatus.ACTIVE.value,
            "created_at": now,
            "expires_at": now + ttl,
            "process_id": process,
        },
    )
    if not fresh:
        existing = get_hold(conn, request_id)
        assert existing is not None
        if (existing.account, existing.payer, existing.asset, existing.amount) != (account, payer, asset, amount):
            raise HoldConflict(
                f"request {request_id!r} already holds {existing.amount} {existing.asset} on other terms"
            )
        return existing
    if payer != account:
        hold_budget(conn, payer, account, asset, amount)
    if not take_funds(conn, payer, asset, amount):
        raise_refusal(conn, payer, asset, amount)
    hold = Hold(request_id, account, payer, asset, amount, HoldStatus.ACTIVE, now, now + ttl)
    if lots:
        claim, lease = capacity.take(conn, lots, holder=holder, expires=now + ttl, slice_size=slice_size)
        conn.execute(
            _SET_LOT,
            {"p_request_id": request_id, "p_lot": claim.lot_id, "p_lot_amount": claim.amount, "p_lease": lease},
        )
        hold = replace(hold, lot_id=claim.lot_id, lot_amount=claim.amount)
    if extras:
        known = registered or {}
        for take in extras:
            if take.name not in known:
                raise ValueError(f"no extra counter {take.name!r} is registered")
            if NAME_SEPARATOR in take.name:
                raise ValueError(f"an extra's name cannot hold {NAME_SEPARATOR!r}")
            known[take.name].take(conn, hold, take.amount)
        taken = NAME_SEPARATOR.join(take.name for take in extras)
        conn.execute(update(holds).where(holds.c.request_id == request_id).values(extras=taken))
    return hold


def take_funds(conn: Connection, payer: int, asset: str, amount: int) -> bool:
    """The one conditional UPDATE: hold `amount` only if spendable and within the cap."""
    taken = conn.execute(TAKE, {"p_payer": payer, "p_asset": asset, "p_amount": amount}).rowcount
    return bool(taken == 1)


def raise_refusal(conn: Connection, payer: int, asset: str, amount: int) -> None:
    """The conditional UPDATE took nothing: raise why, read under the row's lock (the
    transaction rolls back the hold row and the budget's hold). If by now it would take
    (on PostgreSQL another transaction may have freed funds in between), take it."""
    refusal = _refusal(conn, payer, asset, amount)
    if refusal is not None:
        raise refusal
    taken = take_funds(conn, payer, asset, amount)  # the row changed in between; now it is locked
    assert taken


def hold_budget(conn: Connection, payer: int, account: int, asset: str, amount: int) -> None:
    membership = conn.execute(
        select(accounts.c.kind)
        .select_from(members.join(accounts, accounts.c.id == members.c.org_id))
        .where(members.c.org_id == payer, members.c.member_id == account)
        .with_for_update(read=True, of=members)
    ).first()
    if membership is None:
        raise NotAMember(f"account {account} may not spend from {_payer_text(conn, payer)}")
    params = {"p_payer": payer, "p_account": account, "p_asset": asset, "p_amount": amount}
    if conn.execute(_TAKE_BUDGET, params).rowcount:
        return
    row = conn.execute(
        select(budgets.c.remaining, budgets.c.held).where(_budget_where(payer, account, asset)).with_for_update()
    ).first()
    if row is not None:
        left = row.remaining - row.held
        if left < amount:
            who = _payer_text(conn, payer)
            raise BudgetExceeded(
                f"account {account} has {money(max(0, left), asset, rounding='down')} left to spend from {who}, "
                f"needs {money(amount, asset, rounding='up')}",
                available=max(0, left),
                payer=who,
            )
        taken = conn.execute(_TAKE_BUDGET, params).rowcount  # the row changed in between; now it is locked
        assert taken
        return
    if membership.kind == AccountKind.TREASURY.value:
        raise BudgetExceeded(f"account {account} has no promotional credit in {asset}", available=0)
    # A member without a budget in this asset spends without a limit of its own.


def _payer_text(conn: Connection, payer: int) -> str:
    """The payer as a refusal names it: an org by its name (its members know it by that,
    not by its account number), any other account by its number."""
    row = conn.execute(select(accounts.c.kind, accounts.c.name).where(accounts.c.id == payer)).first()
    if row is not None and row.kind == AccountKind.ORG.value and row.name:
        return f"org {row.name!r}"
    return f"account {payer}"


def _refusal(conn: Connection, payer: int, asset: str, amount: int) -> LedgerError | None:
    row = conn.execute(select(balances).where(*_balance_where(payer, asset)).with_for_update()).first()
    who = _payer_text(conn, payer)
    if row is None:
        return InsufficientFunds(f"{who} has no {asset}", available=0, payer=who)
    debt = _debts.open_debt_in(conn, payer, asset)
    if debt is not None:
        return AccountInDebt(
            f"{who} owes {money(debt.outstanding, asset, rounding='up')} (debt {debt.id}: {debt.reason}); "
            f"a deposit repays it first"
        )
    spendable = row.posted - row.held - row.locked
    if spendable < amount:
        return InsufficientFunds(
            f"{who} can spend {money(max(0, spendable), asset, rounding='down')}, "
            f"needs {money(amount, asset, rounding='up')}",
            available=max(0, spendable),
            payer=who,
        )
    left = row.cap_remaining - row.held
    if left < amount:
        return SpendCapExceeded(
            f"{who} has {money(max(0, left), asset, rounding='down')} left under its signed spend cap, "
            f"needs {money(amount, asset, rounding='up')}",
            available=max(0, left),
            payer=who,
        )
    return None


def move(
    conn: Connection, request_id: str, claim: LotClaim, *, holder: str | None, slice_size: int, now: int
) -> Hold | None:
    """Move an active hold's capacity to `claim`'s lot; None (nothing changed) if it has no room."""
    row = _hold_row(conn, request_id, for_update=True)
    if row is None:
        raise HoldNotFound(f"no hold for request {request_id!r}")
    hold = hold_of(row)
    if hold.status == HoldStatus.ORPHANED:
        raise HoldOrphaned(f"request {request_id!r} was ended: its gateway process's ledger lock was lost")
    if hold.status != HoldStatus.ACTIVE:
        raise HoldConflict(f"request {request_id!r} was {hold.status.value}: its capacity cannot move")
    if hold.lot_id == claim.lot_id and hold.lot_amount >= claim.amount:
        return hold
    try:
        _, lease = capacity.take(conn, [claim], holder=holder, expires=hold.expires_at, slice_size=slice_size)
    except Refusal:
        return None
    if hold.lot_id is not None:
        lease_id = row._mapping["lease_id"]
        capacity.give_back(
            conn,
            {} if lease_id is not None else {hold.lot_id: hold.lot_amount},
            {} if lease_id is None else {lease_id: hold.lot_amount},
        )
    conn.execute(
        _SET_LOT, {"p_request_id": request_id, "p_lot": claim.lot_id, "p_lot_amount": claim.amount, "p_lease": lease}
    )
    return replace(hold, lot_id=claim.lot_id, lot_amount=claim.amount)


# ─── Settle ──────────────────────────────────────────────────────────────────


def settle(
    conn: Connection,
    request_id: str,
    cost: int,
    *,
    now: int,
    usage: int,
    system: Container[int],
    record: UsageRecord | None = None,
    registered: Mapping[str, Extra] | None = None,
) -> Hold:
    """Charge the metered cost and end the hold; again with the same cost changes nothing.

    An active hold: a cost above the hold is charged in full only if the overage is
    spendable, within the cap and within any budget; otherwise the hold's amount is
    charged and the rest is the hold's `shortfall`. A balance that dropped while the hold
    was active (a chain fact) is never taken below zero: the part it cannot cover is a
    debt (`_no_negative`). A hold that expired before its answer was metered (its funds
    and capacity were given back, and may have been spent again since) is charged its
    cost only as far as the payer can pay it then — spendable, within the cap and any
    budget — never beyond: the rest is its `shortfall` (the seller's loss), never a debt.
    `record` is the usage record written with it; its `list_usd_micro` is the lot's usage.
    """
    if cost < 0:
        raise ValueError("a cost cannot be negative")
    row = _hold_row(conn, request_id, for_update=True)
    if row is None:
        raise HoldNotFound(f"no hold for request {request_id!r}")
    hold = hold_of(row)
    if hold.status == HoldStatus.SETTLED:
        if hold.cost == cost:
            return hold
        raise HoldConflict(f"request {request_id!r} was settled at {hold.cost}, not {cost}")
    if hold.status == HoldStatus.ORPHANED:  # its process's lock was free: it may have been reused
        raise HoldOrphaned(
            f"request {request_id!r} was ended when its gateway process's ledger lock was found free: not charged"
        )
    if hold.status not in (HoldStatus.ACTIVE, HoldStatus.EXPIRED):
        raise HoldConflict(f"request {request_id!r} was {hold.status.value} before it was settled")
    late = hold.status == HoldStatus.EXPIRED
    if record is not None and hold.lot_id is not None and record.gateway_lot_id != hold.lot_id:
        raise HoldConflict(f"request {request_id!r} holds lot {hold.lot_id}'s capacity, not {record.gateway_lot_id}'s")

    if late:  # what the payer can pay now, no more: its hold no longer stood for it
        charged = min(cost, _payable(conn, hold))
    else:  # an active hold's overage only if covered
        covered = cost <= hold.amount or _covers(conn, hold, cost - hold.amount)
        charged = cost if covered else hold.amount
    if charged:
        _no_negative(conn, hold, charged, now, late=late)
    params = {
        "p_request_id": request_id,
        "p_was": hold.status.value,
        "p_status": HoldStatus.SETTLED.value,
        "p_now": now,
        "p_cost": cost,
        "p_charged": charged,
        "p_payer": hold.payer,
        "p_account": hold.account,
        "p_asset": hold.asset,
        "p_held": 0 if late else hold.amount,
    }
    conn.execute(END_HOLD, params)
    if hold.payer != hold.account:
        conn.execute(SETTLE_BUDGET, params)
    conn.execute(SETTLE_BALANCE, params)
    if charged:
        post_entry(
            conn,
            ref=f"settle:{request_id}",
            kind="settle",
            lines=[(hold.payer, hold.asset, -charged), (usage, hold.asset, charged)],
            now=now,
            system_accounts=system,
            update_balances=False,
        )
    over = False
    if hold.lot_id is not None:
        lot_usage = record.list_usd_micro if record is not None else 0
        reserved = 0 if late else hold.lot_amount
        over = capacity.consume(conn, hold.lot_id, row._mapping["lease_id"], reserved, lot_usage)
    settled = replace(hold, status=HoldStatus.SETTLED, cost=cost, charged=charged, closed_at=now)
    for name in names(row._mapping["extras"]):
        _extra(registered, name).settle(conn, settled, record, late)
    if record is not None:
        values = usage_row(settled, record, now)
        if over:
            values.update(status=QUARANTINED, quarantine_reason=OVER_CAPACITY, quarantined_at=now)
        insert_ignore(conn, usage_records, values)
    return settled


def _no_negative(conn: Connection, hold: Hold, charged: int, now: int, *, late: bool) -> None:
    """Before `charged` leaves the payer's balance, cap and budget: a balance that dropped
    while the request ran (a chain fact emptied it; after a sweep, the funds were spent
    again) lends the rest as a debt; a cap or budget lowered below what is charged stops
    at zero (they are limits, not money)."""
    if hold.payer != hold.account:  # the budget first: every transaction locks budgets before balances
        budget = _budget_where(hold.payer, hold.account, hold.asset)
        remaining = conn.execute(select(budgets.c.remaining).where(budget).with_for_update()).scalar()
        if remaining is not None and remaining < charged:
            conn.execute(update(budgets).where(budget).values(remaining=charged))
    ref = f"settle:{hold.request_id}"
    when = "after its hold expired" if late else "after the balance had dropped"
    reason = f"request {hold.request_id} was charged {charged} {hold.asset} {when}"
    _debts.cover(conn, hold.payer, hold.asset, charged, source=ref, reason=reason, now=now)
    where = _balance_where(hold.payer, hold.asset)
    cap: int = conn.execute(select(balances.c.cap_remaining).where(*where).with_for_update()).scalar_one()
    if cap < charged:
        conn.execute(update(balances).where(*where).values(cap_remaining=charged))


def _payable(conn: Connection, hold: Hold) -> int:
    """What the payer can pay now (rows locked, budgets first): spendable, within its cap
    and any member budget."""
    most: int | None = None
    if hold.payer != hold.account:
        budget = conn.execute(
            select(budgets.c.remaining, budgets.c.held)
            .where(_budget_where(hold.payer, hold.account, hold.asset))
            .with_for_update()
        ).first()
        if budget is not None:
            most = int(budget.remaining) - int(budget.held)
    row = conn.execute(select(balances).where(*_balance_where(hold.payer, hold.asset)).with_for_update()).one()
    own = min(int(row.posted) - int(row.held) - int(row.locked), int(row.cap_remaining) - int(row.held))
    return max(0, own if most is None else min(own, most))


def _covers(conn: Connection, hold: Hold, extra: int) -> bool:
    """The payer can pay `extra` (> 0) above the hold now: `_payable`'s same locked reads."""
    return _payable(conn, hold) >= extra


def _extra(registered: Mapping[str, Extra] | None, name: str) -> Extra:
    found = (registered or {}).get(name)
    if found is None:
        raise HoldConflict(f"a hold took the extra counter {name!r}, which this process has not registered")
    return found


# ─── Release, expire, extend ─────────────────────────────────────────────────


def release(conn: Connection, request_id: str, *, now: int, registered: Mapping[str, Extra] | None = None) -> Hold:
    """End an active hold without a charge. Releasing a hold that has ended changes nothing."""
    ended = conn.execute(
        END_HOLD,
        {
            "p_request_id": request_id,
            "p_was": HoldStatus.ACTIVE.value,
            "p_status": HoldStatus.RELEASED.value,
            "p_now": now,
            "p_cost": None,
            "p_charged": None,
        },
    ).rowcount
    row = _hold_row(conn, request_id)
    if row is None:
        raise HoldNotFound(f"no hold for request {request_id!r}")
    hold = hold_of(row)
    if ended:
        _end(conn, [row], registered)
    return hold


def _end(conn: Connection, rows: Sequence[Any], registered: Mapping[str, Extra] | None) -> None:
    """Give back what ended holds took without usage: funds (budgets first, then balances,
    each in sorted order — the order every transaction locks them in, so none can deadlock
    another), then capacity, then extras."""
    funds: dict[tuple[int, int, str], int] = {}
    per_lot: dict[int, int] = {}
    per_lease: dict[int, int] = {}
    for row in rows:
        m = row._mapping
        key = (m["payer_id"], m["account_id"], m["asset"])
        funds[key] = funds.get(key, 0) + int(m["amount"])
        if m["lot_id"] is not None and m["lot_amount"]:
            if m["lease_id"] is not None:
                per_lease[m["lease_id"]] = per_lease.get(m["lease_id"], 0) + int(m["lot_amount"])
            else:
                per_lot[m["lot_id"]] = per_lot.get(m["lot_id"], 0) + int(m["lot_amount"])
    _unhold(conn, funds)
    capacity.give_back(conn, per_lot, per_lease)
    for row in rows:
        for name in names(row._mapping["extras"]):
            _extra(registered, name).give_back(conn, hold_of(row))


def _unhold(conn: Connection, amounts: dict[tuple[int, int, str], int]) -> None:
    per_balance: dict[tuple[int, str], int] = {}
    for (payer, account, asset), amount in sorted(amounts.items()):
        per_balance[(payer, asset)] = per_balance.get((payer, asset), 0) + amount
        if payer != account:
            conn.execute(_UNHOLD_BUDGET, {"p_payer": payer, "p_account": account, "p_asset": asset, "p_amount": amount})
    for (payer, asset), amount in sorted(per_balance.items()):
        conn.execute(_UNHOLD_BALANCE, {"p_payer": payer, "p_asset": asset, "p_amount": amount})


def expire(conn: Connection, now: int, limit: int, registered: Mapping[str, Extra] | None = None) -> int:
    """End up to `limit` active holds past their expiry, oldest first; returns how many.

    Holds another transaction is settling right now are skipped (SKIP LOCKED on
    PostgreSQL; SQLite has one writer at a time), so concurrent sweepers and settles
    never wait on one another in a cycle.
    """
    due = select(holds.c.request_id).where(holds.c.expires_at <= now)
    return end_active(conn, due.order_by(holds.c.expires_at, holds.c.request_id).limit(limit),
                       HoldStatus.EXPIRED, now, registered)  # fmt: skip


def orphan(conn: Connection, processes: Sequence[int], now: int, registered: Mapping[str, Extra] | None = None) -> int:
    """End the active holds of `processes` (whose locks the caller holds: dead lock
    sessions, `ledger.processes.dead`) as "orphaned": nothing charged, funds, capacity and
    extras back, and a late answer refused. Holds being settled right now are skipped
    (SKIP LOCKED): a settle that commits first charges legitimately. Returns how many."""
    if not processes:
        return 0
    theirs = select(holds.c.request_id).where(holds.c.process_id.in_(list(processes)))
    return end_active(conn, theirs.order_by(holds.c.request_id), HoldStatus.ORPHANED, now, registered)


def end_active(
    conn: Connection, chosen: Select[Any], status: HoldStatus, now: int, registered: Mapping[str, Extra] | None
) -> int:
    """End the still-active holds among `chosen` (a query of request ids) with `status`,
    skipping those another transaction has locked (a settle in progress); returns how many."""
    ids: list[str] = list(
        conn.execute(
            chosen.where(holds.c.status == HoldStatus.ACTIVE.value).with_for_update(skip_locked=True)
        ).scalars()
    )
    if not ids:
        return 0
    ended: Sequence[Any] = conn.execute(
        update(holds)
        .where(holds.c.request_id.in_(ids), holds.c.status == HoldStatus.ACTIVE.value)
        .values(status=status.value, closed_at=now)
        .returning(*holds.c)
    ).all()
    _end(conn, ended, registered)
    return len(ended)


def expire_at_once(conn: Connection, now: int) -> int:
    """Every active hold expires now (a sweep then ends it as any expired hold: nothing
    charged, funds, capacity and extras back); returns how many. Only for holds no live
    process can settle: see `Ledger.expire_orphans`."""
    return int(
        conn.execute(
            update(holds)
            .where(holds.c.status == HoldStatus.ACTIVE.value, holds.c.expires_at > now)
            .values(expires_at=now)
        ).rowcount
    )


def orphaned_among(conn: Connection, request_ids: Sequence[str]) -> list[str]:
    """Those of `request_ids` whose hold a sweeper ended as "orphaned" (`orphan`)."""
    if not request_ids:
        return []
    chosen = holds.c.request_id.in_(list(request_ids)), holds.c.status == HoldStatus.ORPHANED.value
    return sorted(conn.execute(select(holds.c.request_id).where(*chosen)).scalars())


def extend(conn: Connection, request_ids: Sequence[str], expires: int) -> int:
    """Active holds among `request_ids` expire no sooner than `expires`; returns how many."""
    if not request_ids:
        return 0
    return int(
        conn.execute(
            update(holds)
            .where(
                holds.c.request_id.in_(list(request_ids)),
                holds.c.status == HoldStatus.ACTIVE.value,
                holds.c.expires_at < expires,
            )
            .values(expires_at=expires)
        ).rowcount
    )
