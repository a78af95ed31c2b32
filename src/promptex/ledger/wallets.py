"""Wallet addresses bound to accounts, and the account an address's funds belong to."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Container, Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from promptex.ledger import debts
from promptex.ledger.accounts import create_account, get_or_create_account, owned_account, set_cap_remaining
from promptex.ledger.amounts import add
from promptex.ledger.binding import BindingMessage, checksum_address, verify
from promptex.ledger.errors import InvalidSignature, NonceReplayed, UnknownNonce, WalletAlreadyBound
from promptex.ledger.journal import Line, ensure_balance, post_entry
from promptex.ledger.models import AccountKind, ExitStatus
from promptex.ledger.schema import (
    accounts,
    balances,
    binding_challenges,
    chain_spend_caps,
    exits,
    session_keys,
    voucher_lanes,
    wallets,
)


def bound_account(conn: Connection, address: str) -> int | None:
    row = conn.execute(select(wallets.c.account_id).where(wallets.c.address == checksum_address(address))).first()
    return None if row is None else int(row.account_id)


def challenged_account(conn: Connection, address: str) -> int | None:
    """The account of the latest challenge issued to `address`, while no wallet is bound to it:
    a wallet that asks again signs for the same account instead of creating another."""
    row = conn.execute(
        select(binding_challenges.c.account_id)
        .where(binding_challenges.c.wallet == checksum_address(address))
        .order_by(binding_challenges.c.issued_at.desc(), binding_challenges.c.account_id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    taken = conn.execute(select(wallets.c.address).where(wallets.c.account_id == row.account_id).limit(1)).first()
    return None if taken is not None else int(row.account_id)


def addresses_of(conn: Connection, account: int) -> list[str]:
    return list(
        conn.execute(
            select(wallets.c.address).where(wallets.c.account_id == account).order_by(wallets.c.address)
        ).scalars()
    )


def bindings(conn: Connection) -> dict[int, list[str]]:
    """Every bound wallet, by account (oldest binding first)."""
    found: dict[int, list[str]] = {}
    rows: Sequence[Any] = conn.execute(
        select(wallets.c.address, wallets.c.account_id).order_by(wallets.c.bound_at, wallets.c.address)
    ).all()
    for address, account in rows:
        found.setdefault(int(account), []).append(str(address))
    return found


def first_bound(conn: Connection, account: int) -> str | None:
    """The wallet debited for an account on chain: its first bound (then lowest) address."""
    return conn.execute(
        select(wallets.c.address)
        .where(wallets.c.account_id == account)
        .order_by(wallets.c.bound_at, wallets.c.address)
        .limit(1)
    ).scalar()


ADDRESS_LOCKS = 0x61646472  # PostgreSQL advisory locks' first key ("addr"); the second, the address's hash


def _lock_address(conn: Connection, address: str) -> None:
    """Until this transaction ends, no other binds `address` or credits it (PostgreSQL; SQLite
    has one writer at a time). Without it, at READ COMMITTED, a deposit read as unbound while a
    binding was under way went to the unclaimed account after the binding had moved what that
    account held: the buyer's funds stranded there, the bound account at zero."""
    if conn.dialect.name == "postgresql":
        key = func.hashtext(checksum_address(address))
        conn.execute(select(func.pg_advisory_xact_lock(ADDRESS_LOCKS, key)))


def account_for_address(conn: Connection, address: str, now: int) -> int:
    """The account an address's vault funds belong to (its deposits, exits, sale proceeds,
    shortfalls, spend cap and session keys): its bound account if it is the wallet
    settlements debit (`first_bound`: the vault takes an account's usage from that wallet's
    balance, under its cap, and no other's); any other address's — unbound, or an account's
    later wallet — its own unclaimed account, credited to no one.

    Before (wallets s15), a later wallet's deposits were the account's too: the account spent
    them, the batch debiting its first wallet was refused ('uncovered debit') and the records
    quarantined, then refunded: served for nothing, the seller unpaid (pgbind s14, finding 4)."""
    _lock_address(conn, address)
    address = checksum_address(address)
    account = bound_account(conn, address)
    if account is not None and first_bound(conn, account) == address:
        return account
    return get_or_create_account(conn, AccountKind.UNCLAIMED, address, now).id


def governed_account(conn: Connection, address: str, now: int) -> int:
    """The account whose spending the address's signatures on chain govern (its spend cap,
    its session keys): the account its funds belong to (`account_for_address`), since the
    vault checks the debited wallet's cap and vouchers alone."""
    return account_for_address(conn, address, now)


def _issue_challenge(
    conn: Connection, account: int, wallet: str, *, now: int, ttl: int, chain_id: int
) -> BindingMessage:
    """A new challenge for the pair, stored; checked by its one caller, `challenge_for`."""
    message = BindingMessage(
        account=account,
        wallet=wallet,
        nonce="0x" + secrets.token_hex(32),
        issued_at=now,
        expires_at=now + ttl,
        chain_id=chain_id,
    )
    conn.execute(
        insert(binding_challenges).values(
            nonce=message.nonce,
            account_id=account,
            wallet=message.wallet,
            issued_at=message.issued_at,
            expires_at=message.expires_at,
        )
    )
    return message


def challenge_wallet(
    conn: Connection,
    wallet: str,
    *,
    admit_new: Callable[[], object],
    now: int,
    ttl: int,
    chain_id: int,
    pending: Callable[[Connection, int], bool] = lambda conn, account: True,
) -> BindingMessage:
    """The challenge a wallet asking for a key signs: for its bound account, else for the
    account its last challenge still unbound names, else for a new user account (`admit_new`
    is called first: it raises to refuse one). Read and written under the address's lock
    (PostgreSQL; SQLite has one writer at a time), so a wallet asking twice at once signs for
    one account: read in one transaction and created in another (before, claims s16), both
    requests read no account and each created one, one of them left empty for good.

    Anyone may ask for any address, so asking writes at most one row per address and half a
    ttl (`challenge_for`).

    `pending(conn, account)` says whether the account of the wallet's last challenge is one
    this wallet may be given (the dashboard: one nobody holds a key of yet); else a new one.
    Before (sbreak s17), a challenge `promptex buyer signup --wallet W` issued for its new
    account (whose key its runner holds) was handed to W asking the dashboard: W signed it,
    was bound into that account, and its deposits were spent with the other's key."""
    _lock_address(conn, wallet)
    wallet = checksum_address(wallet)
    account = bound_account(conn, wallet)
    if account is None:
        account = challenged_account(conn, wallet)
        if account is not None and not pending(conn, account):
            account = None
    if account is None:
        admit_new()
        account = create_account(conn, AccountKind.USER, None, now).id
    return challenge_for(conn, account, wallet, now=now, ttl=ttl, chain_id=chain_id)


def binding_challenge(
    conn: Connection, account: int, wallet: str, *, now: int, ttl: int, chain_id: int
) -> BindingMessage:
    """`challenge_for`, under the address's lock (the operator's path: `Ledger.issue_binding_challenge`)."""
    _lock_address(conn, wallet)
    return challenge_for(conn, account, wallet, now=now, ttl=ttl, chain_id=chain_id)


def challenge_for(conn: Connection, account: int, wallet: str, *, now: int, ttl: int, chain_id: int) -> BindingMessage:
    """The challenge `wallet` signs to bind itself to `account`: one still unused for the same
    pair, issued by now and with at least half its ttl left, is given again (nothing written);
    a new one clears the address's unused challenges that have expired (used ones stay: a
    binding's record). So asking writes at most one row per address and half a ttl. Before
    (late1 s16; the operator's path, smalls s17), every ask stored a row: anyone asking the
    dashboard for any address could grow the table without limit."""
    wallet = checksum_address(wallet)
    owned_account(conn, account)
    if ttl <= 0:
        raise ValueError("a challenge's ttl must be positive")
    outstanding = conn.execute(
        select(binding_challenges)
        .where(
            binding_challenges.c.wallet == wallet,
            binding_challenges.c.account_id == account,
            binding_challenges.c.used_at.is_(None),
            binding_challenges.c.issued_at <= now,
            binding_challenges.c.expires_at >= now + (ttl + 1) // 2,
        )
        .order_by(binding_challenges.c.expires_at.desc(), binding_challenges.c.nonce)
        .limit(1)
    ).first()
    if outstanding is not None:
        return BindingMessage(
            account=account,
            wallet=wallet,
            nonce=outstanding.nonce,
            issued_at=int(outstanding.issued_at),
            expires_at=int(outstanding.expires_at),
            chain_id=chain_id,
        )
    message = _issue_challenge(conn, account, wallet, now=now, ttl=ttl, chain_id=chain_id)
    conn.execute(
        delete(binding_challenges).where(
            binding_challenges.c.wallet == wallet,
            binding_challenges.c.used_at.is_(None),
            binding_challenges.c.expires_at < now,
        )
    )
    return message


def bind(
    conn: Connection,
    message: BindingMessage,
    signature: bytes | str,
    *,
    now: int,
    chain_id: int,
    system: Container[int],
) -> int:
    """Bind the signing wallet to the account the challenge was issued for; returns the account.

    Deposits that waited for this address (its unclaimed account) move to the account if it
    is the account's first wallet, the one settlements debit; a later wallet's funds stay its
    own (`account_for_address`).
    """
    verify(message, signature, now=now, chain_id=chain_id)
    challenge = conn.execute(
        select(binding_challenges).where(binding_challenges.c.nonce == message.nonce).with_for_update()
    ).first()
    if challenge is None:
        raise UnknownNonce("this binding message was not issued by this ledger")
    issued = (challenge.account_id, challenge.wallet, challenge.issued_at, challenge.expires_at)
    if issued != (message.account, checksum_address(message.wallet), message.issued_at, message.expires_at):
        raise InvalidSignature("the signed message differs from the challenge that was issued")
    used = conn.execute(
        update(binding_challenges)
        .where(binding_challenges.c.nonce == message.nonce, binding_challenges.c.used_at.is_(None))
        .values(used_at=now)
    ).rowcount
    if not used:
        raise NonceReplayed("this binding message was used already; ask for a new one")
    address = checksum_address(message.wallet)
    _lock_address(conn, address)
    current = bound_account(conn, address)
    if current is not None:
        if current != message.account:
            # Named: the wallet's owner signed this message, and "another account" left it guessing which.
            name = conn.execute(select(accounts.c.name).where(accounts.c.id == current)).scalar()
            raise WalletAlreadyBound(
                f"wallet {address} is bound to another account: account {current}" + (f" ({name})" if name else "")
            )
        return current
    bound_at = _bound_after(conn, message.account, now)
    conn.execute(
        insert(wallets).values(address=address, account_id=message.account, bound_at=bound_at, nonce=message.nonce)
    )
    _claim(conn, address, message.account, now=now, system=system)
    return message.account


def _bound_after(conn: Connection, account: int, now: int) -> int:
    """The `bound_at` of a wallet bound to `account` now: after every wallet it has, so that
    its first binding stays the wallet settlements debit (`first_bound`: the lowest
    (bound_at, address)). With `now` alone, a second wallet bound in the same second with a
    lower address, or by a host whose clock is behind, became "first": batches planned after
    it debited another wallet than those before, and a failed batch landing after all failed
    `_reattach`'s root proof, its entries recomputed with the new wallet (cbreak3 s13).
    Binds to one account are serialized (PostgreSQL: its row, locked without blocking the
    rows that reference it; SQLite has one writer at a time), so each reads the other's; a
    tie the lock did not prevent is refused by the unique (account_id, bound_at) index
    (migration 0024, which also moved the ties bound before this apart)."""
    conn.execute(select(accounts.c.id).where(accounts.c.id == account).with_for_update(key_share=True)).first()
    newest = conn.execute(select(func.max(wallets.c.bound_at)).where(wallets.c.account_id == account)).scalar()
    return now if newest is None else max(now, int(newest) + 1)


def _claim(conn: Connection, address: str, account: int, *, now: int, system: Container[int]) -> None:
    """Move an address's unclaimed balances, locks, pending exits, debts, spend caps and
    sessions to the account it was bound to, if it is the account's first wallet (the one
    settlements debit); a later wallet's stay where they are (`account_for_address`).

    The deposits keep the account they were first credited to: the record of what happened.
    """
    if first_bound(conn, account) != address:
        return  # a later wallet: its funds, cap and sessions stay its own (`account_for_address`)
    unclaimed = get_or_create_account(conn, AccountKind.UNCLAIMED, address, now).id
    rows = conn.execute(select(balances).where(balances.c.account_id == unclaimed)).all()
    lines: list[Line] = []
    for row in rows:
        if row.posted:
            lines += [(unclaimed, row.asset, -row.posted), (account, row.asset, row.posted)]
        if row.locked:
            ensure_balance(conn, account, row.asset)
            for who, change in ((unclaimed, -row.locked), (account, row.locked)):
                conn.execute(
                    update(balances)
                    .where(balances.c.account_id == who, balances.c.asset == row.asset)
                    .values(locked=add(balances.c.locked, change))
                )
    if lines:
        post_entry(conn, ref=f"claim:{address}", kind="claim", lines=lines, now=now, system_accounts=system)
    capped: list[str] = list(
        conn.execute(
            select(chain_spend_caps.c.asset).where(chain_spend_caps.c.account_id == unclaimed).distinct()
        ).scalars()
    )
    caps = {row.asset: row.cap_remaining for row in rows}
    # Signed mode's sessions (and their lanes) registered before the binding too.
    signed: list[str] = list(
        conn.execute(select(session_keys.c.asset).where(session_keys.c.account_id == unclaimed)).scalars()
    )
    for table in (session_keys, voucher_lanes):
        conn.execute(update(table).where(table.c.account_id == unclaimed).values(account_id=account))
    for asset in {*capped, *signed}:
        set_cap_remaining(conn, account, asset, caps.get(asset, 0))
    debts.transfer(conn, unclaimed, account, now=now)  # what the address owes, the account now owes
    conn.execute(
        update(exits)
        .where(exits.c.account_id == unclaimed, exits.c.status == ExitStatus.LOCKED.value)
        .values(account_id=account)
    )
