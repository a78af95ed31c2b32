"""Signed mode's session keys (issue 23), as the chain registered and revoked them.

A wallet authorizes a session key for one asset (EIP-712 `SessionKey`, relayed by the
coordinator or sent by the wallet itself); the vault then settles the account's usage of
that asset only against ceiling vouchers the key signs, lane by lane (`ledger.lanes`).
The indexer reports the vault's `SessionKeyRegistered` and `SessionKeyRevoked` events
here; tests insert sessions directly. Idempotent by chain event id, undone by
`unwind_session_event` when a reorg orphans the event.

The newest session of an (account, asset) is its current one. The account pays in that
asset in signed mode (a request without a voucher is refused) from its first registration
until a spend cap the chain accepted AFTER the newest session (`capped_by`): the vault
takes a cap only once the session's vouchers no longer settle (`CreditsVaultSigned._set_cap`:
its window past the session's last window), so from that cap on the account's plain
requests are served capped again, and the session takes no voucher more. Between the
session's end and that cap the account is served neither way (`mode`: the gateway says how
to leave). A new session key puts it back in signed mode. A session takes vouchers while
`open_at(now)`: before its expiry, not revoked, no cap after it. (The chain ends a revoked
session only at the close of the next window, but the wallet revoked it because it no
longer trusts the key: the gateway stops at once.)

Registering also sets the account's remaining cap in the asset (`balances.cap_remaining`)
to the session's maximum: holds never take beyond it, and the vault refuses a session's
settlements beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from promptex.ledger import accounts as _accounts
from promptex.ledger.binding import checksum_address
from promptex.ledger.errors import ChainEventConflict
from promptex.ledger.journal import insert_ignore
from promptex.ledger.schema import session_keys
from promptex.ledger.wallets import governed_account
from promptex.protocol.units import utc_text
from promptex.protocol.vault import MAX_CAP_EXPIRY


@dataclass(frozen=True)
class SessionKey:
    """One registered session: the SessionKey message's fields and where the chain is."""

    account: int
    asset: str  # the ledger's symbol
    session: int  # the vault's session nonce: vouchers name it
    address: str  # the wallet
    asset_address: str  # the asset's token address (vouchers sign it)
    chain_id: int
    vault: str
    key: str  # the session key's address
    lanes: int
    maximum: int
    expiry: int
    signed_from: int  # the first window the vault settles in signed mode
    ends_at: int | None = None  # revoked: the chain ends it then
    revoked_at: int | None = None
    capped_by: str | None = None  # the spend cap the chain accepted after it (capped mode again)
    settles_until: int | None = None  # the close of its last window, when the vault's clock was read

    def settlement_close(self) -> int:
        """The last second the vault settles this session's vouchers, as far as the ledger
        knows, never later than the chain's: a revocation's `ends_at`, the close of the
        expiry's next window (`settles_until`), else the expiry itself (the chain's close is
        at least one window after it: `settlement_close`)."""
        close = self.settles_until if self.settles_until is not None else self.expiry
        return close if self.ends_at is None else min(close, self.ends_at)

    def known_close(self) -> int | None:
        """The last second the vault settles this session's vouchers, exactly as the chain
        has it: a revocation's `ends_at` (the chain's own end, the sooner of the two), else
        `settles_until`; None when neither is known (an unrevoked session indexed before
        migration 0026: at least one window after its expiry). What may come next waits
        for it (`coordinator.requests.check_previous_session_over`)."""
        return self.ends_at if self.ends_at is not None else self.settles_until

    def open_at(self, now: int) -> bool:
        """Whether the gateway takes vouchers of this session at `now`."""
        return self.ended_why(now) is None

    def ended_why(self, now: int) -> str | None:
        if self.capped_by is not None:
            return f"session {self.session} is over: a spend cap was set after it"
        if self.revoked_at is not None:
            return f"session {self.session} was revoked by its wallet"
        if now >= self.expiry:
            return f"session {self.session} expired at {utc_text(self.expiry)}"
        if self.ends_at is not None and now >= self.ends_at:
            return f"session {self.session} ended at {utc_text(self.ends_at)}"
        return None


def settlement_close(expiry: int, signed_from: int, genesis: int, epoch_length: int) -> int:
    """The last second the vault settles the vouchers of a session expiring at `expiry`
    (unrevoked), from its epoch clock (`genesis`, `epoch_length`: immutable): the close of
    its last window, max(window(expiry) + 1, signed_from) (`CreditsVaultSigned`'s rule)."""
    last = max((min(expiry, MAX_CAP_EXPIRY) - genesis) // epoch_length + 1, signed_from)
    return genesis + (last + 1) * epoch_length - 1


def _session(row: Any) -> SessionKey:
    m = row._mapping
    return SessionKey(
        m["account_id"],
        m["asset"],
        int(m["session"]),
        m["address"],
        m["asset_address"],
        int(m["chain_id"]),
        m["vault"],
        m["key"],
        int(m["lanes"]),
        int(m["maximum"]),
        int(m["expiry"]),
        int(m["signed_from"]),
        m["ends_at"],
        m["revoked_at"],
        m["capped_by"],
        m["settles_until"],
    )


def register(
    conn: Connection,
    event_id: str,
    *,
    address: str,
    asset: str,
    asset_address: str,
    chain_id: int,
    vault: str,
    key: str,
    session: int,
    lanes: int,
    maximum: int,
    expiry: int,
    signed_from: int,
    now: int,
    settles_until: int | None = None,
) -> SessionKey:
    """The chain registered a session key (idempotent by `event_id`); `settles_until`: the
    close of its last window (`settlement_close`), None when the vault's clock is unknown."""
    if lanes < 1 or maximum < 0 or session < 0:
        raise ValueError("a session has at least one lane, and no negative maximum or id")
    address = checksum_address(address)
    account = governed_account(conn, address, now)  # a wallet not debited: not its account's session
    previous = _accounts.balance(conn, account, asset).cap_remaining
    row = {
        "account_id": account,
        "asset": asset,
        "session": session,
        "address": address,
        "asset_address": checksum_address(asset_address),
        "chain_id": chain_id,
        "vault": checksum_address(vault),
        "key": checksum_address(key),
        "lanes": lanes,
        "maximum": maximum,
        "expiry": expiry,
        "signed_from": signed_from,
        "settles_until": settles_until,
        "ends_at": None,
        "revoked_at": None,
        "event_id": event_id,
        "revoke_event": None,
        "previous_cap": previous,
        "created_at": now,
    }
    if insert_ignore(conn, session_keys, row) is None:
        found = conn.execute(select(session_keys).where(session_keys.c.event_id == event_id)).first()
        if found is None:
            raise ChainEventConflict(f"session {session} of {address} in {asset} was registered by another event")
        return _session(found)
    _accounts.set_cap_remaining(conn, account, asset, maximum)
    return _session(conn.execute(select(session_keys).where(session_keys.c.event_id == event_id)).one())


def revoke(
    conn: Connection, event_id: str, *, address: str, asset: str, session: int, ends_at: int, now: int
) -> SessionKey | None:
    """The wallet revoked its session key: the chain ends the session at `ends_at`."""
    account = governed_account(conn, checksum_address(address), now)
    where = (session_keys.c.account_id == account, session_keys.c.asset == asset, session_keys.c.session == session)
    conn.execute(
        update(session_keys)
        .where(*where, session_keys.c.revoke_event.is_(None))
        .values(ends_at=ends_at, revoked_at=now, revoke_event=event_id)
    )
    found = conn.execute(select(session_keys).where(*where)).first()
    return None if found is None else _session(found)


def unwind(conn: Connection, event_id: str) -> bool:
    """Undo a registration, revocation or cap after a session a reorg orphaned; returns
    whether one was undone."""
    capped = conn.execute(
        update(session_keys).where(session_keys.c.capped_by == event_id).values(capped_by=None)
    ).rowcount
    revoked = conn.execute(
        update(session_keys)
        .where(session_keys.c.revoke_event == event_id)
        .values(ends_at=None, revoked_at=None, revoke_event=None)
    ).rowcount
    row = conn.execute(select(session_keys).where(session_keys.c.event_id == event_id)).first()
    if row is not None:
        # The cap it set gives way to the one before, less what was charged under it since.
        current = _accounts.balance(conn, row.account_id, row.asset).cap_remaining
        restored = max(0, current - int(row.maximum) + int(row.previous_cap))
        _accounts.set_cap_remaining(conn, row.account_id, row.asset, restored)
        conn.execute(delete(session_keys).where(session_keys.c.event_id == event_id))
    return bool(capped) or bool(revoked) or row is not None


def capped_after(conn: Connection, event_id: str, account: int, asset: str) -> None:
    """The chain accepted a spend cap (`event_id`) of the account in `asset`: it follows the
    newest session, if any (the vault takes none while a session's vouchers settle), which
    is then over for good and the account capped again. Events arrive in chain order."""
    newest = current(conn, account, asset)
    if newest is not None and newest.capped_by is None:
        conn.execute(
            update(session_keys)
            .where(
                session_keys.c.account_id == account,
                session_keys.c.asset == asset,
                session_keys.c.session == newest.session,
            )
            .values(capped_by=event_id)
        )


CAPPED, SIGNED, NEITHER = "capped", "signed", "neither"


def mode(found: SessionKey | None, now: int) -> str:
    """How the account pays in the asset at `now`, given its newest session `found`: CAPPED
    (no session, or a spend cap after it), SIGNED (the session takes vouchers), or NEITHER
    (the session is over and no cap was set since: the vault settles no plain request yet)."""
    if found is None or found.capped_by is not None:
        return CAPPED
    return SIGNED if found.open_at(now) else NEITHER


def current(conn: Connection, account: int, asset: str) -> SessionKey | None:
    """The account's newest session in `asset`, ended or not (None: it never had one);
    `mode` says how it pays."""
    row = conn.execute(
        select(session_keys)
        .where(session_keys.c.account_id == account, session_keys.c.asset == asset)
        .order_by(session_keys.c.session.desc())
        .limit(1)
    ).first()
    return None if row is None else _session(row)


def get(conn: Connection, account: int, asset: str, session: int) -> SessionKey | None:
    row = conn.execute(
        select(session_keys).where(
            session_keys.c.account_id == account, session_keys.c.asset == asset, session_keys.c.session == session
        )
    ).first()
    return None if row is None else _session(row)
