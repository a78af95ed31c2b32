"""Facts from the chain, as the indexer reports them: deposits into the vault, exits
from it, the USDC proceeds of tokens sold on exit, settlement shortfalls and spend caps.
Each is idempotent by its chain event id (the indexer's is "<tx hash>:<log index>#<rewinds>").

The ledger records them; it never refuses one for lack of funds, because the chain
has already decided. Funds leaving the vault stop being spendable the moment the exit
is requested (`lock_for_exit`) and leave the books when it completes. A reorg undoes a
fact with `unwind_fact`: reversing journal entries, never edits.

No balance goes below zero: a fact that debits more than the balance holds (a reorg
removing a deposit already spent; an exit completing before the usage it raced was
settled) opens a debt for the rest, with a reason naming the fact (see `ledger.debts`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Sequence
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from promptex.ledger import accounts as _accounts
from promptex.ledger import debts as _debts
from promptex.ledger import sessions as _sessions
from promptex.ledger.amounts import add
from promptex.ledger.binding import checksum_address
from promptex.ledger.errors import ChainEventConflict
from promptex.ledger.journal import _ADD_POSTED, Line, ensure_balance, insert_ignore, post_entry
from promptex.ledger.models import AccountKind, Deposit, ExitLock, ExitStatus
from promptex.ledger.schema import (
    accounts,
    balances,
    chain_spend_caps,
    deposits,
    exits,
    journal_entries,
    journal_lines,
)
from promptex.ledger.wallets import account_for_address, bound_account, first_bound, governed_account


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
        reason=overdraft_reason(ref),
    )
    return closed


# ─── Batches from the indexer, and undoing facts a reorg orphaned ────────────

DEPOSIT, EXIT, SALE, SHORTFALL, UNWIND = "deposit:", "exit:", "sale:", "shortfall:", "unwind:"
_CHUNK = 500  # ids per IN (...) list

_OVERDRAWN_BY = {
    UNWIND + DEPOSIT: "a reorg removed deposit {id} after it was spent",
    UNWIND + SALE: "a reorg removed the proceeds of sale {id} after they were spent",
    UNWIND + SHORTFALL: "a reorg removed shortfall refund {id} after it was spent",
    EXIT: "exit {id} took funds the ledger had already charged for usage not yet settled on chain",
}


def overdraft_reason(ref: str) -> str:
    """Why a chain fact's debit (journal ref `ref`) overdrew a balance, in words."""
    for prefix, text in _OVERDRAWN_BY.items():
        if ref.startswith(prefix):
            return text.format(id=ref.removeprefix(prefix))
    return f"{ref} debited more than the balance held"


def owner_of(conn: Connection, account: int) -> int:
    """Who holds an account's funds now: an unclaimed account's funds moved to the account
    its address was bound to if it is that account's first wallet (see `wallets._claim`),
    or if they were claimed before a later wallet's funds stayed its own (a "claim:" entry);
    any other account holds its own."""
    row = conn.execute(select(accounts.c.kind, accounts.c.name).where(accounts.c.id == account)).one()
    if row.kind != AccountKind.UNCLAIMED.value:
        return account
    bound = bound_account(conn, row.name)
    if bound is None:
        return account
    if first_bound(conn, bound) == row.name:
        return bound
    claimed = conn.execute(select(journal_entries.c.id).where(journal_entries.c.ref == f"claim:{row.name}")).first()
    return account if claimed is None else bound


def _cap_holder(conn: Connection, account: int, now: int) -> int:
    """Whose cap a spend cap recorded on `account` is now: an unclaimed account's cap went
    to the account its address was bound to if that address is the account's debited wallet
    (`wallets._claim`, `governed_account`); otherwise it stays where it was recorded. A reorg
    that orphaned a cap set before its wallet's binding undid it on the unclaimed account,
    and the bound account kept a cap the chain no longer had (wbreak s15)."""
    row = conn.execute(select(accounts.c.kind, accounts.c.name).where(accounts.c.id == account)).one()
    if row.kind != AccountKind.UNCLAIMED.value:
        return account
    return governed_account(conn, row.name, now)


def _reverse(conn: Connection, ref: str, *, now: int, system: Container[int]) -> bool:
    """Post the mirror image of the entry `ref` (as "unwind:<ref>"), debiting whoever holds
    the funds now. The journal stays append-only: nothing is deleted or changed."""
    entry = conn.execute(select(journal_entries.c.id).where(journal_entries.c.ref == ref)).first()
    if entry is None:
        return False
    rows: Sequence[Any] = conn.execute(
        select(journal_lines.c.account_id, journal_lines.c.asset, journal_lines.c.amount).where(
            journal_lines.c.entry_id == entry.id
        )
    ).all()
    lines: list[Line] = [(owner_of(conn, account), asset, -amount) for account, asset, amount in rows]
    unwind = UNWIND + ref
    posted = post_entry(
        conn, ref=unwind, kind="unwind", lines=lines, now=now, system_accounts=system, reason=overdraft_reason(unwind)
    )
    return posted is not None


def unwind_fact(conn: Connection, event_id: str, *, now: int, system: Container[int]) -> bool:
    """Undo every ledger effect of the chain event `event_id` (a reorg orphaned it).

    Journal entries are reversed by new entries; the fact's own records (its deposit, the
    exit it requested, the cap it set) are deleted and an exit it ended is pending again,
    so ledger == chain once the orphaned events of a rewind are undone newest first.
    Idempotent. Returns whether anything was undone.
    """
    undone = False
    for prefix in (DEPOSIT, EXIT, SALE, SHORTFALL):
        undone |= _reverse(conn, prefix + event_id, now=now, system=system)
    undone |= bool(conn.execute(delete(deposits).where(deposits.c.event_id == event_id)).rowcount)

    reopened = conn.execute(select(exits).where(exits.c.closed_by == event_id)).first()
    if reopened is not None:
        account = owner_of(conn, reopened.account_id)
        conn.execute(
            update(exits)
            .where(exits.c.event_id == reopened.event_id)
            .values(status=ExitStatus.LOCKED.value, closed_by=None, closed_at=None, account_id=account)
        )
        ensure_balance(conn, account, reopened.asset)
        _move_locked(conn, account, reopened.asset, reopened.amount)
        undone = True

    requested = conn.execute(select(exits).where(exits.c.event_id == event_id)).first()
    if requested is not None:
        if requested.status != ExitStatus.LOCKED.value:
            raise ChainEventConflict(f"exit {event_id!r} was ended by {requested.closed_by!r}: undo that first")
        _move_locked(conn, requested.account_id, requested.asset, -requested.amount)
        conn.execute(delete(exits).where(exits.c.event_id == event_id))
        undone = True

    undone |= _sessions.unwind(conn, event_id)  # a session key registered or revoked (signed mode)

    cap = conn.execute(select(chain_spend_caps).where(chain_spend_caps.c.event_id == event_id)).first()
    if cap is not None:
        # Keep what settled holds counted down since: current − (set − previous), never below 0.
        holder = _cap_holder(conn, cap.account_id, now)
        current = _accounts.balance(conn, holder, cap.asset).cap_remaining
        restored = max(0, current - cap.remaining + cap.previous)
        _accounts.set_cap_remaining(conn, holder, cap.asset, restored)
        conn.execute(delete(chain_spend_caps).where(chain_spend_caps.c.event_id == event_id))
        undone = True
    return undone


class ChainBatch:
    """Chain facts applied on one connection, so that the indexer commits a batch of
    events, their ledger effects and its checkpoint in one transaction.

    Postings (deposits, exit debits, sale proceeds, shortfalls) are collected and written
    in bulk by `flush`, skipping refs already in the journal (idempotent per event id);
    exit locks and spend caps are applied at once, in order, because later events of the
    same batch depend on them. Account lookups are cached for the batch.
    """

    def __init__(self, conn: Connection, *, now: int, vault: int, usage: int, system: Container[int]) -> None:
        self.conn, self.now, self.vault, self.usage, self.system = conn, now, vault, usage, system
        self._accounts: dict[str, int] = {}
        self._checksums: dict[str, str] = {}
        self._entries: dict[str, tuple[str, list[Line]]] = {}
        self._deposits: dict[str, dict[str, Any]] = {}

    def _checksum(self, address: str) -> str:
        """EIP-55 form, memoized for the batch (hashing every address again is the slow part)."""
        known = self._checksums.get(address)
        if known is None:
            known = self._checksums[address] = checksum_address(address)
        return known

    def account(self, address: str) -> int:
        """The account an address's funds belong to (its bound or its unclaimed account)."""
        account = self._accounts.get(address)
        if account is None:
            account = self._accounts[address] = account_for_address(self.conn, address, self.now)
        return account

    def _post(self, ref: str, kind: str, lines: list[Line]) -> None:
        self._entries.setdefault(ref, (kind, lines))

    def credit_deposit(self, event_id: str, address: str, asset: str, amount: int) -> None:
        _check_event(event_id, amount)
        address = self._checksum(address)
        account = self.account(address)
        self._deposits.setdefault(
            event_id,
            {
                "event_id": event_id,
                "address": address,
                "asset": asset,
                "amount": amount,
                "account_id": account,
                "created_at": self.now,
            },
        )
        self._post(DEPOSIT + event_id, "deposit", [(self.vault, asset, -amount), (account, asset, amount)])

    def lock_for_exit(self, event_id: str, address: str, asset: str, amount: int) -> ExitLock:
        return lock_for_exit(self.conn, event_id, address, asset, amount, now=self.now)

    def cancel_exit(self, event_id: str, address: str, asset: str) -> ExitLock | None:
        return cancel_exit(self.conn, event_id, address, asset, now=self.now)

    def complete_exit(self, event_id: str, address: str, asset: str, amount: int) -> ExitLock | None:
        """The trustless exit completed: end the pending exit and debit what left (maybe 0,
        when settlements took the whole balance first)."""
        if amount < 0:
            raise ValueError("an amount from the chain cannot be negative")
        address = self._checksum(address)
        closed = _close_exit(self.conn, event_id, address, asset, ExitStatus.COMPLETED, self.now)
        if amount:
            self.release_exit(event_id, address, asset, amount, account=None if closed is None else closed.account)
        return closed

    def release_exit(self, event_id: str, address: str, asset: str, amount: int, *, account: int | None = None) -> None:
        """Funds left the vault without ending a pending exit (an instant, co-signed release)."""
        _check_event(event_id, amount)
        account = self.account(self._checksum(address)) if account is None else account
        self._post(EXIT + event_id, "exit", [(account, asset, -amount), (self.vault, asset, amount)])

    def credit_sale(self, event_id: str, address: str, usdc: str, proceeds: int) -> None:
        """A spend-only token was sold on exit: the USDC proceeds land in the account's vault balance."""
        _check_event(event_id, proceeds)
        account = self.account(self._checksum(address))
        self._post(SALE + event_id, "sale", [(self.vault, usdc, -proceeds), (account, usdc, proceeds)])

    def record_shortfall(self, event_id: str, address: str, asset: str, amount: int) -> None:
        """Settlement debited `amount` less than the ledger charged (balance or cap too low
        on chain): give it back to the account, out of settled usage, as a visible
        "shortfall" entry — the protocol's loss, paid on chain from its reserve."""
        _check_event(event_id, amount)
        account = self.account(self._checksum(address))
        self._post(SHORTFALL + event_id, "shortfall", [(self.usage, asset, -amount), (account, asset, amount)])

    def register_spend_cap(
        self, event_id: str, address: str, asset: str, remaining: int, *, revoked: bool = False
    ) -> bool:
        """The chain registered (or `revoked`: `remaining` 0) a spend cap: make it the remaining
        cap of the account the address's funds belong to. A registration after a session key
        of the account in the asset returns it to capped mode (`sessions.capped_after`); a
        revocation while its newest session is not over that way leaves the session's maximum
        left. An unbound address's cap waits on its unclaimed account, and binding the address
        carries it over (`wallets._claim`): a wallet that set its cap before proving itself to
        an account can spend under it.

        Only the cap of the wallet settlements debit (`first_bound`) is its account's: the
        vault checks that wallet's cap alone. Another bound wallet's cap waits on its own
        unclaimed account (`wallets.governed_account`). Before, it
        became the account's: the gateway served under a cap the vault never applies, the
        batch debiting the first wallet was refused beyond its own, and the records were
        quarantined, then refunded a day later: the seller unpaid (pgbind s14)."""
        if remaining < 0:
            raise ValueError("a spend cap cannot be negative")
        account = governed_account(self.conn, address, self.now)
        previous = _accounts.balance(self.conn, account, asset).cap_remaining
        newest = _sessions.current(self.conn, account, asset) if revoked else None
        if newest is not None and newest.capped_by is None:
            # In signed mode the vault debits within the session's maximum, which a revoked
            # cap leaves as it is (`revoke_spend_cap` touches no session): so does the ledger.
            # Before, the ledger's cap went to 0 and the session's vouchers were refused.
            remaining = previous
        row = {
            "event_id": event_id,
            "account_id": account,
            "asset": asset,
            "previous": previous,
            "remaining": remaining,
            "created_at": self.now,
        }
        if insert_ignore(self.conn, chain_spend_caps, row) is not None:
            _accounts.set_cap_remaining(self.conn, account, asset, remaining)
            if not revoked:
                _sessions.capped_after(self.conn, event_id, account, asset)
        return True

    def register_session(self, event_id: str, **fields: Any) -> bool:
        """The chain registered a session key (signed mode; fields as `sessions.register`)."""
        _sessions.register(self.conn, event_id, now=self.now, **fields)
        return True

    def revoke_session(self, event_id: str, address: str, asset: str, session: int, ends_at: int) -> bool:
        """The wallet revoked its session key; the chain ends the session at `ends_at`."""
        _sessions.revoke(
            self.conn, event_id, address=address, asset=asset, session=session, ends_at=ends_at, now=self.now
        )
        return True

    def unwind(self, event_id: str) -> bool:
        self.flush()
        return unwind_fact(self.conn, event_id, now=self.now, system=self.system)

    def flush(self) -> None:
        """Write the collected postings in bulk; refs already in the journal are skipped."""
        if not self._entries:
            return
        entries, deposit_rows = self._entries, self._deposits
        self._entries, self._deposits = {}, {}
        refs = list(entries)
        for start in range(0, len(refs), _CHUNK):
            chunk = refs[start : start + _CHUNK]
            known: Sequence[str] = (
                self.conn.execute(select(journal_entries.c.ref).where(journal_entries.c.ref.in_(chunk))).scalars().all()
            )
            for ref in known:
                del entries[ref]
        if not entries:
            return
        for ref, (_, lines) in entries.items():
            if sum(amount for _, _, amount in lines):  # every fact moves one asset between two accounts
                raise ValueError(f"journal entry {ref!r} does not balance")
        fresh = [row for event_id, row in deposit_rows.items() if DEPOSIT + event_id in entries]
        if fresh:
            self.conn.execute(insert(deposits), fresh)
        ids: Sequence[int] = (
            self.conn.execute(
                insert(journal_entries).returning(journal_entries.c.id, sort_by_parameter_order=True),
                [{"ref": ref, "kind": kind, "created_at": self.now} for ref, (kind, _) in entries.items()],
            )
            .scalars()
            .all()
        )
        line_rows: list[dict[str, Any]] = []
        posted: defaultdict[tuple[int, str], int] = defaultdict(int)
        debited_by: dict[tuple[int, str], str] = {}  # the first ref that debits each balance
        for entry_id, (ref, (_, lines)) in zip(ids, entries.items(), strict=True):
            for account, asset, amount in lines:
                line_rows.append({"entry_id": entry_id, "account_id": account, "asset": asset, "amount": amount})
                if account not in self.system:
                    posted[(account, asset)] += amount
                    if amount < 0:
                        debited_by.setdefault((account, asset), ref)
        self.conn.execute(insert(journal_lines), line_rows)
        for account, asset in posted:
            ensure_balance(self.conn, account, asset)
        for (account, asset), change in sorted(posted.items()):
            if change < 0:  # the batch's debits beyond the balance become a debt (see ledger.debts)
                ref = debited_by[(account, asset)]
                reason = overdraft_reason(ref)
                _debts.cover(self.conn, account, asset, -change, source=ref, reason=reason, now=self.now)
        changes = [{"p_account": a, "p_asset": s, "p_amount": amount} for (a, s), amount in posted.items() if amount]
        if changes:
            self.conn.execute(_ADD_POSTED, changes)  # one statement, many rows
        _debts.repay_all(self.conn, [key for key, change in posted.items() if change > 0], now=self.now)


def pending_exits(conn: Connection) -> list[ExitLock]:
    """Every exit requested on chain and not yet completed or cancelled."""
    rows = conn.execute(
        select(exits).where(exits.c.status == ExitStatus.LOCKED.value).order_by(exits.c.created_at)
    ).all()
    return [_exit(row) for row in rows]
