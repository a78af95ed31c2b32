"""Each seller lot's life, persisted, so that a lot is routed only while the chain says
it is open:

    requested ─► opening ─► open ─► closing ─► closed
        │           │         │        │
        └──► failed ◄┘         └────────┴──► expired / slashed

- requested: the lot (its sealed key) is recorded; nothing is on chain. Serves nothing.
- opening: its signed `open_lot` is stored (`open_tx`) before it is broadcast. Serves nothing.
- open: the chain confirmed it (a receipt, or the indexer's `LotOpened` naming `open_tx`).
  Routed while `now < route_until`: the lot's expiry less one settlement epoch and a
  posting margin, so the usage it serves is settled before the escrow stops drawing it.
- closing: the seller asked to close it (`LotCloseRequested`): never routed again;
  `finalize_close` may run from `close_at`.
- closed / expired / slashed: the chain ended it.
- failed: it never opened (refused, reverted, or its transaction was dropped); `reason`
  says why, to the seller and to the payers of any usage it served.

The chain is the truth: a transaction thought lost that landed after all moves a failed
lot to open, and the indexer moves chain states backwards when a reorg undoes an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from promptex.ledger.errors import LedgerError
from promptex.ledger.metadata import REASON
from promptex.ledger.schema import lot_states

REQUESTED, OPENING, OPEN, CLOSING, CLOSED, EXPIRED, SLASHED, FAILED = (
    "requested", "opening", "open", "closing", "closed", "expired", "slashed", "failed",
)  # fmt: skip
STATES = (REQUESTED, OPENING, OPEN, CLOSING, CLOSED, EXPIRED, SLASHED, FAILED)
# What the chain says of an opened lot (the escrow's status, and a close requested).
CHAIN_STATES = frozenset({OPEN, CLOSING, CLOSED, EXPIRED, SLASHED})
ENDED = frozenset({CLOSED, EXPIRED, SLASHED, FAILED})
_OFF_CHAIN = frozenset({REQUESTED, OPENING, FAILED})

_T = lot_states.c


class LotStateError(LedgerError):
    """A transition the lot's state machine does not allow, or an unknown lot."""


@dataclass(frozen=True)
class LotState:
    lot_id: int  # the gateway's lot id
    state: str
    reason: str | None
    expires_at: int
    route_until: int
    chain_lot_id: int | None
    open_tx: str | None
    close_at: int | None
    updated_at: int

    def routable(self, now: int) -> bool:
        """Whether the gateway may send a new request to the lot at `now`."""
        return self.state == OPEN and now < self.route_until

    def why_not_routed(self, now: int) -> str | None:
        """A reason for a person, or None when the lot is routed."""
        if self.routable(now):
            return None
        if self.state == OPEN:
            return "stopped routing before expiry, so its usage settles in time"
        if self.state == REQUESTED:
            return self.reason or "not sent to the chain yet"
        if self.state == OPENING:
            return f"waiting for open_lot {self.open_tx} to be confirmed"
        if self.state == CLOSING:
            return self.reason or "close requested"
        return self.reason or self.state


def _state(row: Any) -> LotState:
    m = row._mapping
    return LotState(
        int(m["lot_id"]),
        m["state"],
        m["reason"],
        int(m["expires_at"]),
        int(m["route_until"]),
        None if m["chain_lot_id"] is None else int(m["chain_lot_id"]),
        m["open_tx"],
        None if m["close_at"] is None else int(m["close_at"]),
        int(m["updated_at"]),
    )


def _reason(text: str | None) -> str | None:
    return None if text is None else text[:REASON]


def get(conn: Connection, lot_id: int, *, for_update: bool = False) -> LotState | None:
    stmt = select(lot_states).where(_T.lot_id == lot_id)
    row = conn.execute(stmt.with_for_update() if for_update else stmt).first()
    return None if row is None else _state(row)


def by_chain_lot(conn: Connection, chain_lot_id: int) -> LotState | None:
    row = conn.execute(select(lot_states).where(_T.chain_lot_id == chain_lot_id)).first()
    return None if row is None else _state(row)


def by_open_tx(conn: Connection, tx_hash: str) -> LotState | None:
    row = conn.execute(select(lot_states).where(_T.open_tx == tx_hash.lower())).first()
    return None if row is None else _state(row)


def all_states(conn: Connection) -> dict[int, LotState]:
    return {int(row.lot_id): _state(row) for row in conn.execute(select(lot_states).order_by(_T.lot_id))}


def _must(conn: Connection, lot_id: int) -> LotState:
    found = get(conn, lot_id, for_update=True)
    if found is None:
        raise LotStateError(f"no lot {lot_id}")
    return found


def _move(conn: Connection, lot: LotState, state: str, now: int, **values: Any) -> LotState:
    conn.execute(update(lot_states).where(_T.lot_id == lot.lot_id).values(state=state, updated_at=now, **values))
    found = get(conn, lot.lot_id)
    assert found is not None
    return found


# ─── The seller's path ───────────────────────────────────────────────────────


def request(conn: Connection, lot_id: int, *, expires_at: int, route_until: int, now: int) -> LotState:
    """A newly recorded lot: requested, serving nothing until the chain opens it."""
    if route_until > expires_at:
        raise ValueError("a lot cannot be routed past its expiry")
    conn.execute(
        insert(lot_states).values(
            lot_id=lot_id, state=REQUESTED, expires_at=expires_at, route_until=route_until, updated_at=now
        )
    )
    return _must(conn, lot_id)


def opening(conn: Connection, lot_id: int, open_tx: str, *, now: int) -> LotState:
    """Its open_lot is signed and stored (by the caller, in this transaction): opening."""
    lot = _must(conn, lot_id)
    if lot.state != REQUESTED:
        raise LotStateError(f"lot {lot_id} is {lot.state}, not requested")
    return _move(conn, lot, OPENING, now, open_tx=open_tx.lower(), reason=None)


def fail(conn: Connection, lot_id: int, reason: str, *, now: int) -> LotState:
    """It did not open (refused before sending, reverted, or dropped); a lot the chain
    opened cannot fail."""
    lot = _must(conn, lot_id)
    if lot.state == FAILED:
        return lot
    if lot.state not in (REQUESTED, OPENING):
        raise LotStateError(f"lot {lot_id} is {lot.state}: only a lot not yet open can fail")
    return _move(conn, lot, FAILED, now, reason=_reason(reason))


# ─── The chain's word ────────────────────────────────────────────────────────


def confirm_open(
    conn: Connection, chain_lot_id: int, *, now: int, lot_id: int | None = None, open_tx: str | None = None
) -> LotState | None:
    """The chain opened the lot as `chain_lot_id`, found by `lot_id` (the sender's receipt)
    or by `open_tx` (the indexer's LotOpened): open. Again: nothing changes. None when no
    lot of ours was opened by `open_tx`."""
    if lot_id is not None:
        lot: LotState | None = _must(conn, lot_id)
    elif open_tx is not None:
        lot = by_open_tx(conn, open_tx)
    else:
        raise ValueError("give the lot id or the open transaction")
    if lot is None:
        return None
    if lot.chain_lot_id is not None:
        if lot.chain_lot_id != chain_lot_id:
            raise LotStateError(f"lot {lot.lot_id} was opened as escrow lot {lot.chain_lot_id}, not {chain_lot_id}")
        return lot
    if lot.state not in _OFF_CHAIN:
        raise LotStateError(f"lot {lot.lot_id} is {lot.state} without an escrow lot")
    return _move(conn, lot, OPEN, now, chain_lot_id=chain_lot_id, reason=None)


def set_chain_state(
    conn: Connection,
    chain_lot_id: int,
    state: str,
    *,
    now: int,
    close_at: int | None = None,
    reason: str | None = None,
) -> LotState | None:
    """What the chain says of an opened lot now (the indexer folds the escrow's events;
    a seller command its receipt). Any chain state may follow any other: a reorg can undo
    a close. None when the escrow lot is not one of ours."""
    if state not in CHAIN_STATES:
        raise ValueError(f"{state!r} is not a state the chain sets")
    lot = by_chain_lot(conn, chain_lot_id)
    if lot is None:
        return None
    if (lot.state, lot.close_at, lot.reason) == (state, close_at, _reason(reason)):
        return lot
    return _move(conn, lot, state, now, close_at=close_at, reason=_reason(reason))


def unconfirm_open(conn: Connection, chain_lot_id: int, *, now: int) -> LotState | None:
    """A reorg undid the lot's LotOpened: opening again (its transaction may be mined
    again, and the indexer will see it)."""
    lot = by_chain_lot(conn, chain_lot_id)
    if lot is None:
        return None
    return _move(conn, lot, OPENING, now, chain_lot_id=None, close_at=None, reason=None)
