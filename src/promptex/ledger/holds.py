"""Holds: reserve before a request, settle to the metered cost, release on failure.

A reserve is one conditional UPDATE of the payer's balance row —

    held += amount  WHERE posted − held − locked ≥ amount  AND  cap_remaining − held ≥ amount

— in the transaction that inserts the hold (request ids are unique), so no interleaving
of concurrent reserves can take spendable below zero or holds beyond the signed cap.
A member spending from an org (or a treasury's promotional credit) first takes the
same kind of conditional UPDATE on its budget row.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, bindparam, select, update

from promptex.ledger.amounts import Amount, add, ge, sub
from promptex.ledger.errors import (
    BudgetExceeded,
    HoldConflict,
    HoldNotFound,
    InsufficientFunds,
    LedgerError,
    NotAMember,
    SpendCapExceeded,
)
from promptex.ledger.journal import insert_ignore, post_entry
from promptex.ledger.models import AccountKind, Hold, HoldStatus
from promptex.ledger.schema import accounts, balances, budgets, holds, members

MAX_REQUEST_ID = 200


def _hold(row: Row[tuple[object, ...]]) -> Hold:
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
    )


# The hot path's statements, built once: each is compiled and cache-keyed once.
_SELECT_HOLD = select(holds).where(holds.c.request_id == bindparam("p_request_id"))
_SELECT_HOLD_FOR_UPDATE = _SELECT_HOLD.with_for_update()
_PAYER_BALANCE = (balances.c.account_id == bindparam("p_payer"), balances.c.asset == bindparam("p_asset"))
_MEMBER_BUDGET = (
    budgets.c.org_id == bindparam("p_payer"),
    budgets.c.member_id == bindparam("p_account"),
    budgets.c.asset == bindparam("p_asset"),
)
_AMOUNT, _CHARGED = bindparam("p_amount", type_=Amount()), bindparam("p_charged", type_=Amount())
_B = balances.c
_TAKE = (
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
_END_HOLD = (
    update(holds)
    .where(holds.c.request_id == bindparam("p_request_id"), holds.c.status == HoldStatus.ACTIVE.value)
    .values(
        status=bindparam("p_status"),
        closed_at=bindparam("p_now"),
        cost=bindparam("p_cost", type_=Amount()),
        charged=_CHARGED,
    )
)
_SETTLE_BALANCE = (
    update(balances)
    .where(*_PAYER_BALANCE)
    .values(posted=sub(_B.posted, _CHARGED), held=sub(_B.held, _AMOUNT), cap_remaining=sub(_B.cap_remaining, _CHARGED))
)
_SETTLE_BUDGET = (
    update(budgets)
    .where(*_MEMBER_BUDGET)
    .values(remaining=sub(budgets.c.remaining, _CHARGED), held=sub(budgets.c.held, _AMOUNT))
)
_UNHOLD_BALANCE = update(balances).where(*_PAYER_BALANCE).values(held=sub(_B.held, _AMOUNT))
_UNHOLD_BUDGET = update(budgets).where(*_MEMBER_BUDGET).values(held=sub(budgets.c.held, _AMOUNT))


def get_hold(conn: Connection, request_id: str, *, for_update: bool = False) -> Hold | None:
    stmt = _SELECT_HOLD_FOR_UPDATE if for_update else _SELECT_HOLD
    row = conn.execute(stmt, {"p_request_id": request_id}).first()
    return None if row is None else _hold(row)


def _balance_where(payer: int, asset: str) -> list[ColumnElement[bool]]:
    return [balances.c.account_id == payer, balances.c.asset == asset]


def _budget_where(payer: int, account: int, asset: str) -> ColumnElement[bool]:
    return and_(budgets.c.org_id == payer, budgets.c.member_id == account, budgets.c.asset == asset)


def reserve(
    conn: Connection, *, account: int, payer: int, asset: str, amount: int, request_id: str, ttl: int, now: int
) -> Hold:
    if amount <= 0:
        raise ValueError("a hold must be positive")
    if ttl <= 0:
        raise ValueError("a hold's ttl must be positive")
    if not request_id or len(request_id) > MAX_REQUEST_ID:
        raise ValueError(f"a request id is 1..{MAX_REQUEST_ID} characters")
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
        _hold_budget(conn, payer, account, asset, amount)
    if not _take(conn, payer, asset, amount):
        refusal = _refusal(conn, payer, asset, amount)
        if refusal is not None:
            raise refusal  # the transaction rolls back the hold row (and the budget's hold)
        taken = _take(conn, payer, asset, amount)  # the row changed in between; now it is locked
        assert taken
    return Hold(request_id, account, payer, asset, amount, HoldStatus.ACTIVE, now, now + ttl)


def _take(conn: Connection, payer: int, asset: str, amount: int) -> bool:
    """The one conditional UPDATE: hold `amount` only if spendable and within the cap."""
    taken = conn.execute(_TAKE, {"p_payer": payer, "p_asset": asset, "p_amount": amount}).rowcount
    return bool(taken == 1)


def _hold_budget(conn: Connection, payer: int, account: int, asset: str, amount: int) -> None:
    membership = conn.execute(
        select(accounts.c.kind)
        .select_from(members.join(accounts, accounts.c.id == members.c.org_id))
        .where(members.c.org_id == payer, members.c.member_id == account)
        .with_for_update(read=True, of=members)
    ).first()
    if membership is None:
        raise NotAMember(f"account {account} may not spend from account {payer}")
    params = {"p_payer": payer, "p_account": account, "p_asset": asset, "p_amount": amount}
    if conn.execute(_TAKE_BUDGET, params).rowcount:
        return
    row = conn.execute(
        select(budgets.c.remaining, budgets.c.held).where(_budget_where(payer, account, asset)).with_for_update()
    ).first()
    if row is not None:
        left = row.remaining - row.held
        if left < amount:
            raise BudgetExceeded(
                f"account {account} has {max(0, left)} {asset} left to spend from {payer}, needs {amount}"
            )
        taken = conn.execute(_TAKE_BUDGET, params).rowcount  # the row changed in between; now it is locked
        assert taken
        return
    if membership.kind == AccountKind.TREASURY.value:
        raise BudgetExceeded(f"account {account} has no promotional credit in {asset}")
    # A member without a budget in this asset spends without a limit of its own.


def _refusal(conn: Connection, payer: int, asset: str, amount: int) -> LedgerError | None:
    """Why the conditional UPDATE took nothing, read under the row's lock; None if, by now,
    it would (on PostgreSQL another transaction may have freed funds in between)."""
    row = conn.execute(select(balances).where(*_balance_where(payer, asset)).with_for_update()).first()
    if row is None:
        return InsufficientFunds(f"account {payer} has no {asset}")
    spendable = row.posted - row.held - row.locked
    if spendable < amount:
        return InsufficientFunds(f"account {payer} can spend {max(0, spendable)} {asset}, needs {amount}")
    left = row.cap_remaining - row.held
    if left < amount:
        return SpendCapExceeded(
            f"account {payer} has {max(0, left)} {asset} left under its signed spend cap, needs {amount}"
        )
    return None


def settle(conn: Connection, request_id: str, cost: int, *, now: int, usage: int, system: Container[int]) -> Hold:
    """Charge the metered cost and end the hold; again with the same cost changes nothing.

    A cost above the hold is charged in full only if the overage is spendable, within
    the cap and within any budget; otherwise the hold's amount is charged and the rest
    is the hold's `shortfall`.
    """
    if cost < 0:
        raise ValueError("a cost cannot be negative")
    hold = get_hold(conn, request_id, for_update=True)
    if hold is None:
        raise HoldNotFound(f"no hold for request {request_id!r}")
    if hold.status == HoldStatus.SETTLED:
        if hold.cost == cost:
            return hold
        raise HoldConflict(f"request {request_id!r} was settled at {hold.cost}, not {cost}")
    if hold.status != HoldStatus.ACTIVE:
        raise HoldConflict(f"request {request_id!r} was {hold.status.value} before it was settled")
    charged = cost if cost <= hold.amount or _covers(conn, hold, cost - hold.amount) else hold.amount

    params = {
        "p_request_id": request_id,
        "p_status": HoldStatus.SETTLED.value,
        "p_now": now,
        "p_cost": cost,
        "p_charged": charged,
        "p_payer": hold.payer,
        "p_account": hold.account,
        "p_asset": hold.asset,
        "p_amount": hold.amount,
    }
    conn.execute(_END_HOLD, params)
    if hold.payer != hold.account:
        conn.execute(_SETTLE_BUDGET, params)
    conn.execute(_SETTLE_BALANCE, params)
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
    return replace(hold, status=HoldStatus.SETTLED, cost=cost, charged=charged)


def _covers(conn: Connection, hold: Hold, extra: int) -> bool:
    if hold.payer != hold.account:
        budget = conn.execute(
            select(budgets.c.remaining, budgets.c.held)
            .where(_budget_where(hold.payer, hold.account, hold.asset))
            .with_for_update()
        ).first()
        if budget is not None and budget.remaining - budget.held < extra:
            return False
    row = conn.execute(select(balances).where(*_balance_where(hold.payer, hold.asset)).with_for_update()).one()
    return bool(row.posted - row.held - row.locked >= extra and row.cap_remaining - row.held >= extra)


def release(conn: Connection, request_id: str, *, now: int) -> Hold:
    """End an active hold without a charge. Releasing a hold that has ended changes nothing."""
    ended = conn.execute(
        _END_HOLD,
        {
            "p_request_id": request_id,
            "p_status": HoldStatus.RELEASED.value,
            "p_now": now,
            "p_cost": None,
            "p_charged": None,
        },
    ).rowcount
    hold = get_hold(conn, request_id)
    if hold is None:
        raise HoldNotFound(f"no hold for request {request_id!r}")
    if ended:
        _unhold(conn, {(hold.payer, hold.account, hold.asset): hold.amount})
    return hold


def _unhold(conn: Connection, amounts: dict[tuple[int, int, str], int]) -> None:
    """Take ended holds' amounts off `held`: budgets first, then balances, each in sorted
    order — the order every transaction locks them in, so none can deadlock another."""
    per_balance: dict[tuple[int, str], int] = {}
    for (payer, account, asset), amount in sorted(amounts.items()):
        per_balance[(payer, asset)] = per_balance.get((payer, asset), 0) + amount
        if payer != account:
            conn.execute(_UNHOLD_BUDGET, {"p_payer": payer, "p_account": account, "p_asset": asset, "p_amount": amount})
    for (payer, asset), amount in sorted(per_balance.items()):
        conn.execute(_UNHOLD_BALANCE, {"p_payer": payer, "p_asset": asset, "p_amount": amount})


def expire(conn: Connection, now: int, limit: int) -> int:
    """End up to `limit` active holds past their expiry, oldest first; returns how many.

    Holds another transaction is settling right now are skipped (SKIP LOCKED on
    PostgreSQL; SQLite has one writer at a time), so concurrent sweepers and settles
    never wait on one another in a cycle.
    """
    ids: list[str] = list(
        conn.execute(
            select(holds.c.request_id)
            .where(holds.c.status == HoldStatus.ACTIVE.value, holds.c.expires_at <= now)
            .order_by(holds.c.expires_at, holds.c.request_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if not ids:
        return 0
    ended: Sequence[Any] = conn.execute(
        update(holds)
        .where(holds.c.request_id.in_(ids), holds.c.status == HoldStatus.ACTIVE.value)
        .values(status=HoldStatus.EXPIRED.value, closed_at=now)
        .returning(holds.c.payer_id, holds.c.account_id, holds.c.asset, holds.c.amount)
    ).all()
    amounts: dict[tuple[int, int, str], int] = {}
    for payer, account, asset, amount in ended:
        amounts[(payer, account, asset)] = amounts.get((payer, account, asset), 0) + amount
    _unhold(conn, amounts)
    return len(ended)
