"""Double-entry postings and the SQL helpers every ledger operation shares.

A posting never takes a balance below zero: the part of a debit the balance cannot
cover becomes a debt, and a credit repays open debts first (see `ledger.debts`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, Table, bindparam, insert, update
from sqlalchemy.dialects import postgresql, sqlite

import promptex.ledger.debts as debts
from promptex.ledger.amounts import Amount, add
from promptex.ledger.schema import balances, journal_entries, journal_lines

Line = tuple[int, str, int]  # (account id, asset, signed amount)


_IGNORING: dict[tuple[str, str], Any] = {}


def _insert_or_nothing(dialect: str, table: Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING RETURNING <primary key>, built once per dialect and
    table (a statement built once is compiled and cache-keyed once)."""
    stmt = _IGNORING.get((dialect, table.name))
    if stmt is None:
        if dialect == "postgresql":
            stmt = postgresql.insert(table).on_conflict_do_nothing()
        elif dialect == "sqlite":
            stmt = sqlite.insert(table).on_conflict_do_nothing()
        else:  # pragma: no cover - create_ledger_engine allows only the two
            raise NotImplementedError(dialect)
        stmt = _IGNORING[(dialect, table.name)] = stmt.returning(*table.primary_key.columns)
    return stmt


def insert_ignore(conn: Connection, table: Table, values: Mapping[str, Any]) -> Row[Any] | None:
    """INSERT … ON CONFLICT DO NOTHING: the new row's primary key, or None if it existed.

    Told by RETURNING, not rowcount: with implicit RETURNING a driver may report -1.
    """
    return conn.execute(_insert_or_nothing(conn.dialect.name, table), dict(values)).first()


_INSERT_LINES = insert(journal_lines)
_ADD_POSTED = (
    update(balances)
    .where(balances.c.account_id == bindparam("p_account"), balances.c.asset == bindparam("p_asset"))
    .values(posted=add(balances.c.posted, bindparam("p_amount", type_=Amount())))
)


def ensure_balance(conn: Connection, account: int, asset: str) -> None:
    """The (account, asset) balance row, created at zero when missing."""
    insert_ignore(
        conn,
        balances,
        {"account_id": account, "asset": asset, "posted": 0, "held": 0, "locked": 0, "cap_remaining": 0},
    )


def post_entry(
    conn: Connection,
    *,
    ref: str,
    kind: str,
    lines: Sequence[Line],
    now: int,
    system_accounts: Container[int],
    update_balances: bool = True,
    no_negative: bool = True,
    reason: str | None = None,
) -> int | None:
    """Record one journal entry whose lines sum to zero per asset.

    Returns the entry id, or None when an entry with this `ref` exists already (the
    posting is idempotent by ref). Unless `update_balances` is False (the caller moves
    `posted` itself), each line also moves `posted` on its account's balance row;
    system accounts keep no balance rows: their balance is the sum of their lines.
    With `no_negative` (the debts module's own entries turn it off), a debit beyond the
    balance opens a debt for the rest, said to be for `reason` (default: the entry's
    ref), and a credit repays the account's open debts in that asset.
    """
    totals: defaultdict[str, int] = defaultdict(int)
    for _, asset, amount in lines:
        totals[asset] += amount
    unbalanced = {asset: total for asset, total in totals.items() if total}
    if unbalanced:
        raise ValueError(f"journal entry {ref!r} does not balance: {unbalanced}")
    entry = insert_ignore(conn, journal_entries, {"ref": ref, "kind": kind, "created_at": now})
    if entry is None:
        return None
    entry_id = int(entry.id)
    conn.execute(
        _INSERT_LINES,
        [
            {"entry_id": entry_id, "account_id": account, "asset": asset, "amount": amount}
            for account, asset, amount in lines
        ],
    )
    if update_balances:
        changes: defaultdict[tuple[int, str], int] = defaultdict(int)
        for account, asset, amount in lines:
            if account not in system_accounts:
                changes[(account, asset)] += amount
        for (account, asset), change in changes.items():
            ensure_balance(conn, account, asset)
            if no_negative and change < 0:
                why = reason or f"{kind} {ref} debited {-change} {asset}"
                debts.cover(conn, account, asset, -change, source=ref, reason=why, now=now)
            conn.execute(_ADD_POSTED, {"p_account": account, "p_asset": asset, "p_amount": change})
        if no_negative:
            credited = [key for key, change in changes.items() if change > 0]
            debts.repay_all(conn, credited, now=now)
    return entry_id
