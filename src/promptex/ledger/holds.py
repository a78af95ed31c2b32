"""Holds: reserve before a request, settle to the metered cost, release on failure.

A reserve is one conditional UPDATE of the payer's balance row —

    held += amount  WHERE posted − held − locked ≥ amount  AND  cap_remaining − held ≥ amount

— in the transaction that inserts the hold (request ids are unique), so no interleaving
of concurrent reserves can take spendable below zero or holds beyond the signed cap.
A member spending from an org (or a treasury's promotional credit) first takes the
same kind of conditional UPDATE on its budget row.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Container, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from promptex.ledger import debts as _debts
from promptex.ledger.amounts import Amount, add, ge, sub
from promptex.ledger.errors import (
    AccountInDebt,
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
from promptex.ledger.schema import (
    accounts,
    balances,
    budgets,
    holds,
    journal_entries,
    journal_lines,
    members,
    usage_records,
)

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
    debt = _debts.open_debt_in(conn, payer, asset)
    if debt is not None:
        return AccountInDebt(
            f"account {payer} owes {debt.outstanding} {asset} (debt {debt.id}: {debt.reason}); "
            f"a deposit repays it first"
        )
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
    if charged:
        _no_negative(conn, hold, charged, now)

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


def _no_negative(conn: Connection, hold: Hold, charged: int, now: int) -> None:
    """Before `charged` leaves the payer's balance, cap and budget: a balance a chain fact
    emptied while the request ran lends the rest as a debt; a cap or budget lowered below
    what was held stops at zero (they are limits, not money)."""
    ref = f"settle:{hold.request_id}"
    reason = f"request {hold.request_id} was charged {charged} {hold.asset} after the balance had dropped"
    _debts.cover(conn, hold.payer, hold.asset, charged, source=ref, reason=reason, now=now)
    where = _balance_where(hold.payer, hold.asset)
    cap: int = conn.execute(select(balances.c.cap_remaining).where(*where).with_for_update()).scalar_one()
    if cap < charged:
        conn.execute(update(balances).where(*where).values(cap_remaining=charged))
    if hold.payer != hold.account:
        budget = _budget_where(hold.payer, hold.account, hold.asset)
        remaining = conn.execute(select(budgets.c.remaining).where(budget).with_for_update()).scalar()
        if remaining is not None and remaining < charged:
            conn.execute(update(budgets).where(budget).values(remaining=charged))


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


# ─── The gateway's hot path, on the driver directly ──────────────────────────
#
# `reserve_fast` and `settle_fast` do what `reserve` and `settle` do for the common case
# — a hold that is new, a payer with the funds, a cost within the hold — with the same
# statements, compiled once per dialect and run on the DBAPI cursor of the caller's
# transaction (SQLAlchemy's per-statement work was most of the ledger's cost in a profile
# of the gateway). Every other case (a repeated request id, a refusal, an overage, a
# hold that has ended) goes to the general functions above in the same transaction.

_NAMED_SQLITE = sqlite.dialect(paramstyle="named")
_COMPILED: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}


def _run(cur: Any, conn: Connection, stmt: Any, params: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """Execute `stmt` on the raw cursor, compiled once per dialect (with its literal values)."""
    key = (conn.dialect.name, id(stmt))
    compiled = _COMPILED.get(key)
    if compiled is None:
        dialect = _NAMED_SQLITE if conn.dialect.name == "sqlite" else conn.dialect
        done = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        defaults = {
            name: value for name, value in done.params.items() if name not in (keys or ()) and value is not None
        }
        compiled = _COMPILED[key] = (str(done), defaults)
    text, defaults = compiled
    args = {**defaults, **params} if defaults else params
    try:
        cur.execute(text, args)
    except conn.dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy would: its exception types (callers catch IntegrityError, the
        # write retry reads DBAPIError's sqlstate), and a lost connection leaves the pool.
        lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cur)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            text, args, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc


def _cursor(conn: Connection) -> Any:
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


_HOLD_KEYS = ("request_id", "account_id", "payer_id", "asset", "amount", "status", "created_at", "expires_at")
_ENTRY_KEYS = ("ref", "kind", "created_at")
_LINE_KEYS = ("entry_id", "account_id", "asset", "amount")
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
)
_INSERT_HOLD = sqlite.insert(holds).on_conflict_do_nothing().returning(holds.c.request_id)
_INSERT_HOLD_PG = postgresql.insert(holds).on_conflict_do_nothing().returning(holds.c.request_id)
_INSERT_ENTRY = sqlite.insert(journal_entries).on_conflict_do_nothing().returning(journal_entries.c.id)
_INSERT_ENTRY_PG = postgresql.insert(journal_entries).on_conflict_do_nothing().returning(journal_entries.c.id)
_INSERT_USAGE = sqlite.insert(usage_records).on_conflict_do_nothing()
_INSERT_USAGE_PG = postgresql.insert(usage_records).on_conflict_do_nothing()
_INSERT_LINE = insert(journal_lines)
_HOLD_COLUMNS = ("account_id", "payer_id", "asset", "amount", "status", "created_at", "expires_at")
_SELECT_HOLD_ROW = select(*(holds.c[name] for name in _HOLD_COLUMNS)).where(
    holds.c.request_id == bindparam("p_request_id")
)
_SELECT_HOLD_ROW_FOR_UPDATE = _SELECT_HOLD_ROW.with_for_update()


def _money(conn: Connection) -> Callable[[int], Any]:
    """How the driver takes an amount: canonical decimal text on SQLite (see `amounts`)."""
    return str if conn.dialect.name == "sqlite" else int


def reserve_fast(
    conn: Connection, *, account: int, payer: int, asset: str, amount: int, request_id: str, ttl: int, now: int
) -> Hold:
    """`reserve`, two statements on the common path."""
    if amount <= 0 or ttl <= 0 or not request_id or len(request_id) > MAX_REQUEST_ID:
        return reserve(
            conn, account=account, payer=payer, asset=asset, amount=amount, request_id=request_id, ttl=ttl, now=now
        )
    pg = conn.dialect.name == "postgresql"
    money = _money(conn)
    cur = _cursor(conn)
    _run(
        cur,
        conn,
        _INSERT_HOLD_PG if pg else _INSERT_HOLD,
        {
            "request_id": request_id,
            "account_id": account,
            "payer_id": payer,
            "asset": asset,
            "amount": money(amount),
            "status": HoldStatus.ACTIVE.value,
            "created_at": now,
            "expires_at": now + ttl,
        },
        _HOLD_KEYS,
    )
    if not cur.fetchall():  # this request id holds already: the general path answers
        return reserve(
            conn, account=account, payer=payer, asset=asset, amount=amount, request_id=request_id, ttl=ttl, now=now
        )
    if payer != account:
        _hold_budget(conn, payer, account, asset, amount)
    _run(cur, conn, _TAKE, {"p_payer": payer, "p_asset": asset, "p_amount": money(amount)})
    if cur.rowcount != 1:
        refusal = _refusal(conn, payer, asset, amount)
        if refusal is not None:
            raise refusal  # the transaction rolls back the hold row (and the budget's hold)
        taken = _take(conn, payer, asset, amount)
        assert taken
    return Hold(request_id, account, payer, asset, amount, HoldStatus.ACTIVE, now, now + ttl)


def settle_fast(
    conn: Connection,
    request_id: str,
    cost: int,
    *,
    now: int,
    usage: int,
    system: Container[int],
    record: Callable[[Hold], dict[str, Any]] | None = None,
) -> Hold:
    """`settle` (and, with `record`, the usage record's row) on the common path: an active
    hold charged at most its amount. `record` gives the usage row's values for the hold."""
    cur = _cursor(conn)
    _run(cur, conn, _SELECT_HOLD_ROW_FOR_UPDATE, {"p_request_id": request_id})
    row = cur.fetchone()
    if row is None or row[4] != HoldStatus.ACTIVE.value or cost < 0 or cost > int(row[3]):
        return _settle_general(conn, request_id, cost, now=now, usage=usage, system=system, record=record)
    account, payer, asset, amount = int(row[0]), int(row[1]), row[2], int(row[3])
    money = _money(conn)
    pg = conn.dialect.name == "postgresql"
    params = {
        "p_request_id": request_id,
        "p_status": HoldStatus.SETTLED.value,
        "p_now": now,
        "p_cost": money(cost),
        "p_charged": money(cost),
        "p_payer": payer,
        "p_account": account,
        "p_asset": asset,
        "p_amount": money(amount),
    }
    _run(cur, conn, _END_HOLD, params)
    if payer != account:
        _run(cur, conn, _SETTLE_BUDGET, params)
    _run(cur, conn, _SETTLE_BALANCE, params)
    hold = Hold(request_id, account, payer, asset, amount, HoldStatus.SETTLED, int(row[5]), int(row[6]), cost, cost)
    if cost:
        _run(
            cur,
            conn,
            _INSERT_ENTRY_PG if pg else _INSERT_ENTRY,
            {"ref": f"settle:{request_id}", "kind": "settle", "created_at": now},
            _ENTRY_KEYS,
        )
        entry = cur.fetchall()
        if not entry:  # pragma: no cover - the ref is the active hold's, settled only here
            raise HoldConflict(f"request {request_id!r} has a settle entry already")
        entry_id = int(entry[0][0])
        line = {"entry_id": entry_id, "asset": asset}
        _run(cur, conn, _INSERT_LINE, {**line, "account_id": payer, "amount": money(-cost)}, _LINE_KEYS)
        _run(cur, conn, _INSERT_LINE, {**line, "account_id": usage, "amount": money(cost)}, _LINE_KEYS)
    if record is not None:
        values = record(hold)
        for name in ("cost", "list_usd_micro"):
            values[name] = money(values[name])
        _run(cur, conn, _INSERT_USAGE_PG if pg else _INSERT_USAGE, values, _USAGE_KEYS)
    return hold


def _settle_general(
    conn: Connection,
    request_id: str,
    cost: int,
    *,
    now: int,
    usage: int,
    system: Container[int],
    record: Callable[[Hold], dict[str, Any]] | None,
) -> Hold:
    hold = settle(conn, request_id, cost, now=now, usage=usage, system=system)
    if record is not None:
        insert_ignore(conn, usage_records, record(hold))
    return hold


# ─── PostgreSQL: one statement per operation ─────────────────────────────────
#
# On PostgreSQL the hot path's cost was round trips (pool pre-ping, BEGIN, each statement,
# COMMIT: about fifteen per request). Here each operation is one statement whose
# data-modifying CTEs do all of it, on a connection per ledger thread kept outside the
# pool: a settle runs alone in autocommit (one statement is atomic), a reserve in a
# pipelined transaction that commits only if it both took the funds and inserted the
# hold. A statement that matches nothing changes nothing and the caller runs the general
# path; so does any error (the connection is dropped): both operations are idempotent,
# so a retry after an ambiguous commit finds what the first attempt did.

PG_RESERVE = """
WITH taken AS (
    UPDATE balances SET held = held + %(amount)s
    WHERE account_id = %(payer)s AND asset = %(asset)s
      AND posted - held - locked >= %(amount)s AND cap_remaining - held >= %(amount)s
    RETURNING account_id
)
INSERT INTO holds (request_id, account_id, payer_id, asset, amount, status, created_at, expires_at)
SELECT %(request_id)s, %(account)s, %(payer)s, %(asset)s, %(amount)s, 'active', %(now)s, %(expires)s FROM taken
ON CONFLICT DO NOTHING
RETURNING request_id
"""

_PG_SETTLE_HEAD = """
WITH h AS (
    UPDATE holds SET status = 'settled', closed_at = %(now)s, cost = %(cost)s, charged = %(cost)s
    WHERE request_id = %(request_id)s AND status = 'active' AND amount >= %(cost)s AND payer_id = account_id
    RETURNING account_id, payer_id, asset, amount, created_at, expires_at
), b AS (
    UPDATE balances SET posted = balances.posted - %(cost)s, held = balances.held - h.amount,
        cap_remaining = balances.cap_remaining - %(cost)s
    FROM h WHERE balances.account_id = h.payer_id AND balances.asset = h.asset
    RETURNING 1
), e AS (
    INSERT INTO journal_entries (ref, kind, created_at)
    SELECT %(ref)s, 'settle', %(now)s FROM h WHERE %(cost)s > 0
    ON CONFLICT DO NOTHING
    RETURNING id
), l AS (
    INSERT INTO journal_lines (entry_id, account_id, asset, amount)
    SELECT e.id, h.payer_id, h.asset, -%(cost)s FROM e, h
    UNION ALL
    SELECT e.id, %(usage)s, h.asset, %(cost)s FROM e, h
    RETURNING 1
)"""
_PG_SETTLE_USAGE = """, u AS (
    INSERT INTO usage_records (request_id, account_id, payer_id, asset, model, input_tokens, output_tokens,
        cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, cost,
        gateway_lot_id, chain_lot_id, lot_kind, list_usd_micro, fee_bps, settled_at, status)
    SELECT %(request_id)s, h.account_id, h.payer_id, h.asset, %(model)s, %(input_tokens)s, %(output_tokens)s,
        %(cache_read_tokens)s, %(cache_write_tokens)s, %(cache_write_1h_tokens)s, %(reasoning_tokens)s, %(cost)s,
        %(gateway_lot_id)s, %(chain_lot_id)s, %(lot_kind)s, %(list_usd_micro)s, %(fee_bps)s, %(now)s, %(status)s
    FROM h
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""
_PG_SETTLE_TAIL = """
SELECT h.account_id, h.payer_id, h.asset, h.amount, h.created_at, h.expires_at,
       (SELECT count(*) FROM b), (SELECT count(*) FROM e)
FROM h
"""
PG_SETTLE = _PG_SETTLE_HEAD + _PG_SETTLE_TAIL
PG_SETTLE_WITH_USAGE = _PG_SETTLE_HEAD + _PG_SETTLE_USAGE + _PG_SETTLE_TAIL


class PgOneStatement:
    """The one-statement reserve and settle, each thread on its own connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg

            conn = psycopg.connect(self.url, autocommit=True)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def drop(self) -> None:
        """Forget this thread's connection (after an error: its state is unknown)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def reserve(
        self, *, account: int, payer: int, asset: str, amount: int, request_id: str, ttl: int, now: int
    ) -> Hold | None:
        """The hold, or None: nothing changed, the general path decides (a refusal, a
        request id seen before, a payer other than the account, bad arguments)."""
        if payer != account or amount <= 0 or ttl <= 0 or not request_id or len(request_id) > MAX_REQUEST_ID:
            return None
        import psycopg

        conn = self._conn()
        params = {
            "request_id": request_id,
            "account": account,
            "payer": payer,
            "asset": asset,
            "amount": amount,
            "now": now,
            "expires": now + ttl,
        }
        done = False
        with contextlib.suppress(psycopg.Rollback), conn.pipeline(), conn.transaction():
            row = conn.execute(PG_RESERVE, params).fetchone()
            if row is None:
                raise psycopg.Rollback()
            done = True
        if not done:
            return None
        return Hold(request_id, account, payer, asset, amount, HoldStatus.ACTIVE, now, now + ttl)

    def settle(self, request_id: str, cost: int, *, now: int, usage: int, record: dict[str, Any] | None) -> Hold | None:
        """The settled hold, or None: nothing changed, the general path decides (a hold
        settled or ended before, an overage, an org's or a treasury's hold, no hold)."""
        if cost < 0:
            return None
        params: dict[str, Any] = {"request_id": request_id, "cost": cost, "now": now, "usage": usage}
        params["ref"] = f"settle:{request_id}"
        if record is not None:
            params.update(record)
        row = self._conn().execute(PG_SETTLE if record is None else PG_SETTLE_WITH_USAGE, params).fetchone()
        if row is None:
            return None
        account, payer, asset, amount, created_at, expires_at, balances_changed, entries = row
        if balances_changed != 1 or (cost > 0 and entries != 1):
            # committed already: a hold without its balance row, or a settle entry that
            # existed, would be a broken ledger; say so loudly rather than guess.
            raise LedgerError(f"settling {request_id!r} touched {balances_changed} balances, {entries} entries")
        return Hold(
            request_id,
            int(account),
            int(payer),
            asset,
            int(amount),
            HoldStatus.SETTLED,
            int(created_at),
            int(expires_at),
            cost,
            cost,
        )
