"""Proof that the books balance: the double-entry check, run in tests and on demand.

1. Every journal entry's lines sum to zero in each asset (so all lines do too).
2. Every balance row's `posted` equals the sum of that account's lines, and no
   account outside the system ones has lines without a balance row.
3. `held` equals the sum of active holds, per payer and per budget.
4. `locked` equals the sum of pending exits and of active instant-exit releases.
5. Nothing held, locked or reserved is negative.
6. What the "debts" system account lent, less what was repaid, is what open debts say
   is outstanding, per asset; no debt is repaid beyond its amount; and an account that
   owes an asset holds none of it (every credit repays first).
7. A lot's `reserved` equals its active holds' capacity reserved on its row plus its
   leases' amounts; a lease's `reserved` equals its active holds' capacity, and its
   reserved plus used never exceed its amount.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Sequence
from typing import Any

from sqlalchemy import Connection, select

from promptex.ledger.models import ExitStatus, HoldStatus
from promptex.ledger.schema import (
    accounts,
    balances,
    budgets,
    capacity_leases,
    debts,
    exits,
    holds,
    journal_lines,
    lot_capacity,
    releases,
)

Key = tuple[int, str]


def check_books(conn: Connection, system: Container[int]) -> list[str]:
    problems = _balances_and_journal(conn, system)
    return problems + _debts(conn)


def _debts(conn: Connection) -> list[str]:
    problems: list[str] = []
    lender = conn.execute(select(accounts.c.id).where(accounts.c.kind == "system", accounts.c.name == "debts")).scalar()
    lent: defaultdict[str, int] = defaultdict(int)
    lines: Sequence[Any] = conn.execute(
        select(journal_lines.c.asset, journal_lines.c.amount).where(journal_lines.c.account_id == lender)
    ).all()
    for asset, amount in lines:
        lent[asset] -= amount
    outstanding: defaultdict[str, int] = defaultdict(int)
    owing: set[Key] = set()
    for row in conn.execute(select(debts)).all():
        if not 0 <= row.repaid <= row.amount or (row.status == "open") != (row.repaid < row.amount):
            problems.append(f"debt {row.id}: repaid {row.repaid} of {row.amount} but {row.status}")
        if row.status == "open":
            outstanding[row.asset] += row.amount - row.repaid
            owing.add((row.account_id, row.asset))
    problems += [
        f"debts {asset}: {lent.get(asset, 0)} lent and not repaid, {outstanding.get(asset, 0)} outstanding"
        for asset in sorted(set(lent) | set(outstanding))
        if lent.get(asset, 0) != outstanding.get(asset, 0)
    ]
    for account, asset in sorted(owing):
        posted = conn.execute(
            select(balances.c.posted).where(balances.c.account_id == account, balances.c.asset == asset)
        ).scalar()
        if posted:
            problems.append(f"account {account} {asset}: owes a debt yet holds {posted}")
    return problems


def _balances_and_journal(conn: Connection, system: Container[int]) -> list[str]:
    """Every way the books fail to balance, as sentences; empty when they balance."""
    problems: list[str] = []

    per_entry: defaultdict[Key, int] = defaultdict(int)
    per_account: defaultdict[Key, int] = defaultdict(int)
    lines: Sequence[Any] = conn.execute(
        select(journal_lines.c.entry_id, journal_lines.c.account_id, journal_lines.c.asset, journal_lines.c.amount)
    ).all()
    for entry, account, asset, amount in lines:
        per_entry[(entry, asset)] += amount
        per_account[(account, asset)] += amount
    problems += [f"entry {entry} is off by {total} {asset}" for (entry, asset), total in per_entry.items() if total]

    held: defaultdict[Key, int] = defaultdict(int)
    budget_held: defaultdict[tuple[int, int, str], int] = defaultdict(int)
    active: Sequence[Any] = conn.execute(
        select(holds.c.payer_id, holds.c.account_id, holds.c.asset, holds.c.amount).where(
            holds.c.status == HoldStatus.ACTIVE.value
        )
    ).all()
    for payer, account, asset, amount in active:
        held[(payer, asset)] += amount
        budget_held[(payer, account, asset)] += amount

    locked: defaultdict[Key, int] = defaultdict(int)
    pending: Sequence[Any] = conn.execute(
        select(exits.c.account_id, exits.c.asset, exits.c.amount).where(exits.c.status == ExitStatus.LOCKED.value)
    ).all()
    for account, asset, amount in pending:
        locked[(account, asset)] += amount
    released: Sequence[Any] = conn.execute(
        select(releases.c.account_id, releases.c.asset, releases.c.amount).where(releases.c.status == "active")
    ).all()
    for account, asset, amount in released:
        locked[(account, asset)] += amount

    for row in conn.execute(select(balances)):
        key = (row.account_id, row.asset)
        where = f"account {row.account_id} {row.asset}"
        if row.posted != per_account.pop(key, 0):
            problems.append(f"{where}: posted {row.posted} is not the sum of its journal lines")
        if row.held != held.pop(key, 0) or row.held < 0:
            problems.append(f"{where}: held {row.held} is not the sum of its active holds")
        if row.locked != locked.pop(key, 0) or row.locked < 0:
            problems.append(f"{where}: locked {row.locked} is not the sum of its pending exits and releases")
    problems += [
        f"account {account} {asset}: {total} in journal lines but no balance row"
        for (account, asset), total in per_account.items()
        if account not in system and total
    ]
    problems += [f"account {a} {s}: {amount} held without a balance row" for (a, s), amount in held.items() if amount]
    problems += [
        f"account {a} {s}: {amount} locked without a balance row" for (a, s), amount in locked.items() if amount
    ]

    for row in conn.execute(select(budgets)):
        expected = budget_held.get((row.org_id, row.member_id, row.asset), 0)
        if row.held != expected or row.held < 0:
            problems.append(
                f"budget of {row.member_id} at {row.org_id} {row.asset}: held {row.held}, active holds {expected}"
            )
    return problems + _capacity_problems(conn)


def _capacity_problems(conn: Connection) -> list[str]:
    problems: list[str] = []
    on_lot: defaultdict[int, int] = defaultdict(int)
    on_lease: defaultdict[int, int] = defaultdict(int)
    reserving: Sequence[Any] = conn.execute(
        select(holds.c.lot_id, holds.c.lease_id, holds.c.lot_amount).where(
            holds.c.status == HoldStatus.ACTIVE.value, holds.c.lot_id.is_not(None)
        )
    ).all()
    for lot, lease, amount in reserving:
        if lease is None:
            on_lot[lot] += int(amount or 0)
        else:
            on_lease[lease] += int(amount or 0)
    for lease in conn.execute(select(capacity_leases)):
        on_lot[lease.lot_id] += lease.amount
        expected = on_lease.pop(lease.id, 0)
        if lease.reserved != expected or min(lease.reserved, lease.used) < 0:
            problems.append(f"lease {lease.id} of lot {lease.lot_id}: reserved {lease.reserved}, its holds {expected}")
        if lease.reserved + lease.used > lease.amount:
            problems.append(f"lease {lease.id} of lot {lease.lot_id}: uses more than its {lease.amount}")
    problems += [f"lease {lease}: {amount} reserved by holds, but no such lease" for lease, amount in on_lease.items()]
    for lot in conn.execute(select(lot_capacity)):
        expected = on_lot.pop(lot.lot_id, 0)
        if lot.reserved != expected or min(lot.reserved, lot.used) < 0:
            problems.append(f"lot {lot.lot_id}: reserved {lot.reserved}, its holds and leases {expected}")
    problems += [f"lot {lot}: {amount} reserved, but no capacity row" for lot, amount in on_lot.items() if amount]
    return problems
