"""Accounts, balances, spend caps, org membership, budgets and promotional grants."""

from __future__ import annotations

from sqlalchemy import Connection, and_, delete, insert, select, update

from promptex.ledger.amounts import add
from promptex.ledger.errors import ChainEventConflict, LedgerError, NotAMember, UnknownAccount
from promptex.ledger.journal import ensure_balance, insert_ignore
from promptex.ledger.models import OWNED_KINDS, Account, AccountKind, Balance, Budget, HoldStatus
from promptex.ledger.schema import accounts, balances, budgets, grants, holds, members


def _account(row: tuple[int, str, str | None]) -> Account:
    return Account(int(row[0]), AccountKind(row[1]), row[2])


def create_account(conn: Connection, kind: AccountKind, name: str | None, now: int) -> Account:
    if kind not in OWNED_KINDS:
        raise ValueError(f"accounts of kind {kind.value!r} are the ledger's own")
    if name is not None and account_by_name(conn, kind, name) is not None:
        raise LedgerError(f"a {kind.value} account named {name!r} exists already")
    account_id: int = conn.execute(
        insert(accounts).values(kind=kind.value, name=name, created_at=now).returning(accounts.c.id)
    ).scalar_one()
    return Account(int(account_id), kind, name)


def get_account(conn: Connection, account_id: int) -> Account:
    row = conn.execute(
        select(accounts.c.id, accounts.c.kind, accounts.c.name).where(accounts.c.id == account_id)
    ).first()
    if row is None:
        raise UnknownAccount(f"no account {account_id}")
    return _account(row.tuple())


def owned_account(conn: Connection, account_id: int) -> Account:
    """An account that a person or org owns (not a system or unclaimed one)."""
    account = get_account(conn, account_id)
    if account.kind not in OWNED_KINDS:
        raise UnknownAccount(f"account {account_id} is a {account.kind.value} account")
    return account


def account_by_name(conn: Connection, kind: AccountKind, name: str) -> Account | None:
    row = conn.execute(
        select(accounts.c.id, accounts.c.kind, accounts.c.name).where(
            accounts.c.kind == kind.value, accounts.c.name == name
        )
    ).first()
    return None if row is None else _account(row.tuple())


def system_account_ids(conn: Connection) -> dict[str, int]:
    """The ledger's own accounts by name ("vault", "usage", "debts")."""
    rows = conn.execute(select(accounts.c.name, accounts.c.id).where(accounts.c.kind == AccountKind.SYSTEM.value))
    return {str(row.name): int(row.id) for row in rows}


def get_or_create_account(conn: Connection, kind: AccountKind, name: str, now: int) -> Account:
    insert_ignore(conn, accounts, {"kind": kind.value, "name": name, "created_at": now})
    account = account_by_name(conn, kind, name)
    assert account is not None
    return account


def balance(conn: Connection, account: int, asset: str) -> Balance:
    row = conn.execute(
        select(balances.c.posted, balances.c.held, balances.c.locked, balances.c.cap_remaining).where(
            balances.c.account_id == account, balances.c.asset == asset
        )
    ).first()
    if row is None:
        return Balance(account, asset, 0, 0, 0, 0)
    return Balance(account, asset, row.posted, row.held, row.locked, row.cap_remaining)


def set_spend_cap(conn: Connection, account: int, asset: str, remaining: int) -> None:
    """Record the account's remaining signed spend cap; settled holds then count down from it."""
    owned_account(conn, account)
    set_cap_remaining(conn, account, asset, remaining)


def set_cap_remaining(conn: Connection, account: int, asset: str, remaining: int) -> None:
    """`set_spend_cap` for any account, an unclaimed one included: the chain's cap of an
    address not yet bound waits there (see `chain_facts.ChainBatch.register_spend_cap`)."""
    ensure_balance(conn, account, asset)
    conn.execute(
        update(balances)
        .where(balances.c.account_id == account, balances.c.asset == asset)
        .values(cap_remaining=remaining)
    )


# ─── Orgs, members and budgets ───────────────────────────────────────────────


def add_member(conn: Connection, org: int, member: int, now: int) -> None:
    if owned_account(conn, org).kind not in (AccountKind.ORG, AccountKind.TREASURY):
        raise LedgerError(f"account {org} is not an org")
    if owned_account(conn, member).kind != AccountKind.USER:
        raise LedgerError(f"account {member} is not a user")
    insert_ignore(conn, members, {"org_id": org, "member_id": member, "created_at": now})


def _lock_membership(conn: Connection, org: int, member: int) -> None:
    """Lock the membership row against concurrent reserves (PostgreSQL; SQLite serializes writers anyway)."""
    row = conn.execute(
        select(members.c.org_id).where(members.c.org_id == org, members.c.member_id == member).with_for_update()
    ).first()
    if row is None:
        raise NotAMember(f"account {member} is not a member of {org}")


def set_member_budget(conn: Connection, org: int, member: int, asset: str, remaining: int | None) -> None:
    """A member's remaining budget at the org in `asset`; None lifts the limit."""
    _lock_membership(conn, org, member)
    where = and_(budgets.c.org_id == org, budgets.c.member_id == member, budgets.c.asset == asset)
    if remaining is None:
        conn.execute(delete(budgets).where(where))
        return
    if conn.execute(update(budgets).where(where).values(remaining=remaining)).rowcount:
        return
    # A new budget starts out holding what the member's active holds already reserve.
    held = sum(
        conn.execute(
            select(holds.c.amount).where(
                holds.c.payer_id == org,
                holds.c.account_id == member,
                holds.c.asset == asset,
                holds.c.status == HoldStatus.ACTIVE.value,
            )
        ).scalars()
    )
    conn.execute(insert(budgets).values(org_id=org, member_id=member, asset=asset, remaining=remaining, held=held))


def budget(conn: Connection, org: int, member: int, asset: str) -> Budget | None:
    row = conn.execute(
        select(budgets.c.remaining, budgets.c.held).where(
            budgets.c.org_id == org, budgets.c.member_id == member, budgets.c.asset == asset
        )
    ).first()
    return None if row is None else Budget(org, member, asset, row.remaining, row.held)


def members_of(conn: Connection, org: int) -> list[tuple[int, int]]:
    """An org's members with the time each joined, oldest first."""
    rows = conn.execute(
        select(members.c.member_id, members.c.created_at)
        .where(members.c.org_id == org)
        .order_by(members.c.created_at, members.c.member_id)
    ).all()
    return [(int(row.member_id), int(row.created_at)) for row in rows]


def budgets_of(conn: Connection, org: int) -> list[Budget]:
    """Every member budget at an org."""
    rows = conn.execute(select(budgets).where(budgets.c.org_id == org)).all()
    return [Budget(row.org_id, row.member_id, row.asset, row.remaining, row.held) for row in rows]


def grant_promotional_credit(
    conn: Connection, grant_id: str, treasury: int, account: int, asset: str, amount: int, now: int
) -> Budget:
    """Let `account` spend up to `amount` more from the treasury; idempotent by `grant_id`."""
    if amount <= 0:
        raise ValueError("a grant must be positive")
    if owned_account(conn, treasury).kind != AccountKind.TREASURY:
        raise LedgerError(f"account {treasury} is not a treasury")
    fresh = insert_ignore(
        conn,
        grants,
        {
            "grant_id": grant_id,
            "treasury_id": treasury,
            "account_id": account,
            "asset": asset,
            "amount": amount,
            "created_at": now,
        },
    )
    if not fresh:
        row = conn.execute(
            select(grants.c.treasury_id, grants.c.account_id, grants.c.asset, grants.c.amount).where(
                grants.c.grant_id == grant_id
            )
        ).one()
        if tuple(row) != (treasury, account, asset, amount):
            raise ChainEventConflict(f"grant {grant_id!r} was made with other terms")
    else:
        add_member(conn, treasury, account, now)
        insert_ignore(
            conn, budgets, {"org_id": treasury, "member_id": account, "asset": asset, "remaining": 0, "held": 0}
        )
        conn.execute(
            update(budgets)
            .where(budgets.c.org_id == treasury, budgets.c.member_id == account, budgets.c.asset == asset)
            .values(remaining=add(budgets.c.remaining, amount))
        )
    result = budget(conn, treasury, account, asset)
    assert result is not None
    return result


def all_balances(conn: Connection) -> list[tuple[Account, Balance]]:
    """Every balance row with its account (none of the system accounts keep one)."""
    rows = conn.execute(
        select(accounts.c.id, accounts.c.kind, accounts.c.name, balances).join(
            balances, balances.c.account_id == accounts.c.id
        )
    ).all()
    return [
        (
            _account((row.id, row.kind, row.name)),
            Balance(row.id, row.asset, row.posted, row.held, row.locked, row.cap_remaining),
        )
        for row in rows
    ]
