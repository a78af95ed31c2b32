"""Debts: what an account owes when a debit is larger than its balance.

No balance is ever negative (CHECK constraints on both databases). A debit the ledger
cannot refuse — a chain fact (a reorg removing a deposit already spent, an exit that
completed before the usage it raced was settled) or a charge for an answer already
served — is still posted whole; the part the balance cannot cover is lent to the account
by the "debts" system account, in a "debt" journal entry posted just before it, and
recorded here with its source (the journal ref of the debit) and a reason a person can
read. So the balance stops at zero, and every account's journal sum still equals it.

While a debt is open the account's balance in its asset is zero: every later credit in
that asset (a deposit, a shortfall given back, a refund, a claim) repays the oldest open
debts first, in "repay" entries, before anything becomes spendable. Nothing is reserved
from a zero balance, so the account is not served in that asset until it is repaid;
`holds` then refuses with `AccountInDebt`, naming the debt.

`journal.post_entry` applies both rules (`cover` before a debit, `repay` after a credit)
to every posting that moves balances, and `chain_facts.ChainBatch` to its bulk postings;
code that moves `posted` itself (a settle) calls `cover` first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select, update

# journal imports this module too (post_entry applies the rules): attributes only at call time.
import promptex.ledger.journal as journal
from promptex.ledger.metadata import REASON
from promptex.ledger.models import AccountKind
from promptex.ledger.schema import accounts, balances, debts

OPEN, REPAID = "open", "repaid"
DEBT, REPAY = "debt", "repay"  # journal entry kinds
MAX_REASON = REASON


@dataclass(frozen=True)
class Debt:
    id: int
    account: int
    asset: str
    amount: int  # owed when it opened
    repaid: int
    source: str  # the journal ref of the debit that overdrew the balance
    reason: str
    status: str  # open | repaid
    created_at: int
    closed_at: int | None

    @property
    def outstanding(self) -> int:
        return self.amount - self.repaid


def _debt(row: Row[Any]) -> Debt:
    m = row._mapping
    return Debt(
        int(m["id"]), int(m["account_id"]), m["asset"], m["amount"], m["repaid"], m["source"], m["reason"],
        m["status"], int(m["created_at"]), m["closed_at"],
    )  # fmt: skip


def debts_account(conn: Connection) -> int:
    """The "debts" system account (made by migration 0008): minus what accounts owe."""
    found: int | None = conn.execute(
        select(accounts.c.id).where(accounts.c.kind == AccountKind.SYSTEM.value, accounts.c.name == "debts")
    ).scalar()
    if found is None:
        raise RuntimeError("the ledger has no debts account: run the migrations")
    return int(found)


def _posted(conn: Connection, account: int, asset: str) -> int:
    value: int | None = conn.execute(
        select(balances.c.posted).where(balances.c.account_id == account, balances.c.asset == asset).with_for_update()
    ).scalar()
    return 0 if value is None else value


def cover(conn: Connection, account: int, asset: str, debit: int, *, source: str, reason: str, now: int) -> Debt | None:
    """Before `debit` leaves the account's balance: if the balance is below it, open a
    debt for the difference and credit it to the balance ("debt" entry), so that the
    debit takes the balance to exactly zero. Returns the debt, or None if none was needed.
    Call it inside the transaction that then posts the debit; the balance row must exist."""
    if debit <= 0:
        return None
    deficit = debit - _posted(conn, account, asset)
    if deficit <= 0:
        return None
    return open_debt(conn, account, asset, deficit, source=source, reason=reason, now=now)


def open_debt(conn: Connection, account: int, asset: str, amount: int, *, source: str, reason: str, now: int) -> Debt:
    """Record that `account` owes `amount` of `asset` and lend it to its balance (idempotent
    by source, account and asset: the same call again returns the debt it opened)."""
    if amount <= 0:
        raise ValueError("a debt must be positive")
    values = {
        "account_id": account,
        "asset": asset,
        "amount": amount,
        "repaid": 0,
        "source": source,
        "reason": reason[:MAX_REASON],
        "status": OPEN,
        "created_at": now,
    }
    fresh = journal.insert_ignore(conn, debts, values)
    row = conn.execute(
        select(debts).where(debts.c.source == source, debts.c.account_id == account, debts.c.asset == asset)
    ).one()
    if fresh is not None:
        lender = debts_account(conn)
        journal.post_entry(
            conn,
            ref=f"{DEBT}:{row.id}",
            kind=DEBT,
            lines=[(lender, asset, -amount), (account, asset, amount)],
            now=now,
            system_accounts={lender},
            no_negative=False,  # a credit that repaid the debt it opens would undo it
        )
    return _debt(row)


def repay(conn: Connection, account: int, asset: str, *, now: int) -> int:
    """Repay the account's open debts in `asset`, oldest first, from its balance; returns
    how much was repaid (0 when it owes nothing: one indexed read)."""
    owed = conn.execute(
        select(debts)
        .where(debts.c.account_id == account, debts.c.asset == asset, debts.c.status == OPEN)
        .order_by(debts.c.id)
        .with_for_update()
    ).all()
    if not owed:
        return 0
    available = _posted(conn, account, asset)
    lender = debts_account(conn)
    total = 0
    for row in owed:
        if available <= 0:
            break
        debt = _debt(row)
        paid = min(available, debt.outstanding)
        available -= paid
        total += paid
        repaid = debt.repaid + paid
        done = repaid == debt.amount
        conn.execute(
            update(debts)
            .where(debts.c.id == debt.id)
            .values(repaid=repaid, status=REPAID if done else OPEN, closed_at=now if done else None)
        )
        journal.post_entry(
            conn,
            ref=f"{REPAY}:{debt.id}:{repaid}",  # repaid only grows: one ref per repayment
            kind=REPAY,
            lines=[(account, asset, -paid), (lender, asset, paid)],
            now=now,
            system_accounts={lender},
            no_negative=False,
        )
    return total


def repay_all(conn: Connection, keys: Iterable[tuple[int, str]], *, now: int) -> int:
    """`repay` for each (account, asset) that has an open debt among `keys` (one read
    for all of them when nobody owes anything, the usual case)."""
    wanted = set(keys)
    if not wanted:
        return 0
    rows: Sequence[Any] = conn.execute(select(debts.c.account_id, debts.c.asset).where(debts.c.status == OPEN)).all()
    owing = {(int(account), str(asset)) for account, asset in rows}
    return sum(repay(conn, account, asset, now=now) for account, asset in sorted(wanted & owing))


def transfer(conn: Connection, from_account: int, to_account: int, *, now: int) -> None:
    """Move open debts to another account (an unclaimed address's, when it is bound), then
    repay them from that account's balance."""
    moved = conn.execute(
        update(debts)
        .where(debts.c.account_id == from_account, debts.c.status == OPEN)
        .values(account_id=to_account)
        .returning(debts.c.asset)
    ).all()
    for asset in sorted({row.asset for row in moved}):
        repay(conn, to_account, asset, now=now)


# ─── Readers ─────────────────────────────────────────────────────────────────


def debts_of(conn: Connection, account: int, *, open_only: bool = False) -> list[Debt]:
    """An account's debts, newest first."""
    stmt = select(debts).where(debts.c.account_id == account)
    if open_only:
        stmt = stmt.where(debts.c.status == OPEN)
    return [_debt(row) for row in conn.execute(stmt.order_by(debts.c.id.desc())).all()]


def open_debts(conn: Connection, asset: str | None = None) -> list[Debt]:
    """Every open debt (of one asset, or all), oldest first."""
    stmt = select(debts).where(debts.c.status == OPEN)
    if asset is not None:
        stmt = stmt.where(debts.c.asset == asset)
    return [_debt(row) for row in conn.execute(stmt.order_by(debts.c.id)).all()]


def last_id(conn: Connection) -> int:
    """The newest debt's id (0 for none): with `opened_after`, what one transaction opened."""
    found: int | None = conn.execute(select(debts.c.id).order_by(debts.c.id.desc()).limit(1)).scalar()
    return 0 if found is None else int(found)


def opened_after(conn: Connection, debt_id: int) -> list[Debt]:
    return [_debt(row) for row in conn.execute(select(debts).where(debts.c.id > debt_id).order_by(debts.c.id)).all()]


def open_debt_in(conn: Connection, account: int, asset: str) -> Debt | None:
    """The account's oldest open debt in `asset`, if any."""
    row = conn.execute(
        select(debts)
        .where(debts.c.account_id == account, debts.c.asset == asset, debts.c.status == OPEN)
        .order_by(debts.c.id)
        .limit(1)
    ).first()
    return None if row is None else _debt(row)
