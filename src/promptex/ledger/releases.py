"""Instant-exit releases: each locks part of an account's balance (`balances.locked`) from
the moment the coordinator signs it until the vault's release nonce shows it used, or it
expires. The release row and its lock are written in the caller's transaction (the
coordinator's store passes its connection), so one never exists without the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update

from promptex.ledger.amounts import add, ge, sub
from promptex.ledger.errors import InsufficientFunds
from promptex.ledger.journal import ensure_balance
from promptex.ledger.schema import balances, releases
from promptex.protocol.units import money

ACTIVE, USED, EXPIRED = "active", "used", "expired"


@dataclass(frozen=True)
class Release:
    id: int
    account: int
    address: str
    asset: str
    amount: int
    nonce: int
    expiry: int
    signature: str
    status: str


def _release(row: Any) -> Release:
    m = row._mapping
    return Release(
        m["id"], m["account_id"], m["address"], m["asset"], m["amount"], m["nonce"], m["expiry"], m["signature"],
        m["status"],
    )  # fmt: skip


def active_releases(conn: Connection, address: str | None = None) -> list[Release]:
    stmt = select(releases).where(releases.c.status == ACTIVE).order_by(releases.c.id)
    if address is not None:
        stmt = stmt.where(releases.c.address == address)
    return [_release(row) for row in conn.execute(stmt).all()]


def lock_release(
    conn: Connection,
    account: int,
    address: str,
    asset: str,
    amount: int,
    nonce: int,
    expiry: int,
    signature: str,
    now: int,
) -> Release:
    """Lock `amount` of the account's balance and record the signed release. Raises
    InsufficientFunds if the ledger's own spendable balance does not cover it (the caller's
    transaction then rolls back: nothing is written)."""
    ensure_balance(conn, account, asset)
    b = balances.c
    taken = conn.execute(
        update(balances)
        .where(b.account_id == account, b.asset == asset, ge(sub(sub(b.posted, b.held), b.locked), amount))
        .values(locked=add(b.locked, amount))
    ).rowcount
    if taken != 1:
        raise InsufficientFunds(
            f"account {account}'s ledger balance cannot spare {money(amount, asset, rounding='up')}"
        )
    release_id: int = conn.execute(
        insert(releases)
        .values(
            account_id=account,
            address=address,
            asset=asset,
            amount=amount,
            nonce=nonce,
            expiry=expiry,
            signature=signature,
            status=ACTIVE,
            created_at=now,
        )
        .returning(releases.c.id)
    ).scalar_one()
    return _release(conn.execute(select(releases).where(releases.c.id == release_id)).one())


def close_release(conn: Connection, release: Release, status: str, now: int) -> None:
    """The release was used or expired: close it and unlock its amount (once)."""
    closed = conn.execute(
        update(releases)
        .where(releases.c.id == release.id, releases.c.status == ACTIVE)
        .values(status=status, closed_at=now)
    ).rowcount
    if closed:
        b = balances.c
        conn.execute(
            update(balances)
            .where(and_(b.account_id == release.account, b.asset == release.asset))
            .values(locked=sub(b.locked, release.amount))
        )
