"""Facts from the chain, as the indexer reports them: deposits into the vault and
exits from it. Each is idempotent by its chain event id (e.g. "<tx hash>:<log index>").

The ledger records them; it never refuses one for lack of funds, because the chain
has already decided. Funds leaving the vault stop being spendable the moment the exit
is requested (`lock_for_exit`) and leave the books when it completes.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from sqlalchemy import Connection, Row, select, update

from promptex.ledger.amounts import add
from promptex.ledger.binding import checksum_address
from promptex.ledger.errors import ChainEventConflict
from promptex.ledger.journal import ensure_balance, insert_ignore, post_entry
from promptex.ledger.models import Deposit, ExitLock, ExitStatus
from promptex.ledger.schema import balances, deposits, exits, journal_entries
from promptex.ledger.wallets import account_for_address


def _check_event(event_id: str, amount: int) -> None:
    if not event_id or len(event_id) > 200:
        raise ValueError("a chain event id is 1..200 characters")
    if amount <= 0:
        raise ValueError("an amount from the chain must be positive")


def credit_deposit(
    conn: Connection,
    event_id: str,
    address: str,
    asset: str,
    amount: int,
    *,
    now: int,
    vault: int,
    system: Container[int],
) -> Deposit:
    """Credit a vault deposit to the address's account — or, for an unbound address, to
    its unclaimed account until the address is bound."""
    _check_event(event_id, amount)
    address = checksum_address(address)
    account = account_for_address(conn, address, now)
    fresh = insert_ignore(
        conn,
        deposits,
        {
            "event_id": event_id,
            "address": address,
            "asset": asset,
            "amount": amount,
            "account_id": account,
            "created_at": now,
        },
    )
    if not fresh:
        row = conn.execute(select(deposits).where(deposits.c.event_id == event_id)).one()
        if (row.address, row.asset, row.amount) != (address, asset, amount):
            raise ChainEventConflict(
                f"deposit {event_id!r} was recorded as {row.amount} {row.asset} from {row.address}"
            )
        return Deposit(event_id, row.address, row.asset, row.amount, row.account_id)
    post_entry(
        conn,
        ref=f"deposit:{event_id}",
        kind="deposit",
        lines=[(vault, asset, -amount), (account, asset, amount)],
        now=now,
        system_accounts=system,
    )
    return Deposit(event_id, address, asset, amount, account)


def _exit(row: Row[Any]) -> ExitLock:
    m = row._mapping
    return ExitLock(m["event_id"], m["address"], m["asset"], m["amount"], m["account_id"], ExitStatus(m["status"]))


def _move_locked(conn: Connection, account: int, asset: str, change: int) -> None:
    conn.execute(
        update(balances)
        .where(balances.c.account_id == account, balances.c.asset == asset)
        .values(locked=add(balances.c.locked, change))
    )


def lock_for_exit(conn: Connection, event_id: str, address: str, asset: str, amount: int, *, now: int) -> ExitLock:
    """An exit was requested on-chain: lock `amount` so it can no longer be reserved."""
    _check_event(event_id, amount)
    address = checksum_address(address)
    account = account_for_address(conn, address, now)
    fresh = insert_ignore(
        conn,
        exits,
        {
            "event_id": event_id,
            "address": address,
            "asset": asset,
            "amount": amount,
            "account_id": account,
            "status": ExitStatus.LOCKED.value,
            "created_at": now,
        },
    )
    if not fresh:
        existing = _exit(conn.execute(select(exits).where(exits.c.event_id == event_id)).one())
        if (existing.address, existing.asset, existing.amount) != (address, asset, amount):
            raise ChainEventConflict(f"exit {event_id!r} was recorded as {existing.amount} {existing.asset}")
        return existing
    ensure_balance(conn, account, asset)
    _move_locked(conn, account, asset, amount)
    return ExitLock(event_id, address, asset, amount, account, ExitStatus.LOCKED)


def _close_exit(
    conn: Connection, event_id: str, address: str, asset: str, status: ExitStatus, now: int
) -> ExitLock | None:
    """End the address's pending exit in `asset` (at most one at a time) and unlock its amount."""
    done = conn.execute(select(exits).where(exits.c.closed_by == event_id)).first()
    if done is not None:
        return _exit(done)
    row = conn.execute(
        select(exits)
        .where(exits.c.address == address, exits.c.asset == asset, exits.c.status == ExitStatus.LOCKED.value)
        .order_by(exits.c.created_at)
        .with_for_update()
    ).first()
    if row is None:
        return None
    pending = _exit(row)
    conn.execute(
        update(exits)
        .where(exits.c.event_id == pending.event_id)
        .values(status=status.value, closed_by=event_id, closed_at=now)
    )
    _move_locked(conn, pending.account, asset, -pending.amount)
    return ExitLock(pending.event_id, address, asset, pending.amount, pending.account, status)


def cancel_exit(conn: Connection, event_id: str, address: str, asset: str, *, now: int) -> ExitLock | None:
    """The pending exit was cancelled on-chain: its amount is spendable again."""
    return _close_exit(conn, event_id, checksum_address(address), asset, ExitStatus.CANCELLED, now)


def complete_exit(
    conn: Connection,
    event_id: str,
    address: str,
    asset: str,
    amount: int,
    *,
    now: int,
    vault: int,
    system: Container[int],
) -> ExitLock | None:
    """Funds left the vault (a completed exit, or an instant withdrawal): debit them and
    unlock the pending exit, if there is one. Returns the exit that ended, if any."""
    _check_event(event_id, amount)
    address = checksum_address(address)
    ref = f"exit:{event_id}"
    if conn.execute(select(journal_entries.c.id).where(journal_entries.c.ref == ref)).first() is not None:
        done = conn.execute(select(exits).where(exits.c.closed_by == event_id)).first()
        return None if done is None else _exit(done)
    closed = _close_exit(conn, event_id, address, asset, ExitStatus.COMPLETED, now)
    account = closed.account if closed is not None else account_for_address(conn, address, now)
    post_entry(
        conn,
        ref=ref,
        kind="exit",
        lines=[(account, asset, -amount), (vault, asset, amount)],
        now=now,
        system_accounts=system,
    )
    return closed
