"""Seller lots' states from the escrow's events, in the transaction of the batch (or the
rewind) that stored them: each touched lot's state is folded again from every lifecycle
event stored for it, so a reorg that removes an event moves the lot back.

    LotOpened           open (the lot whose stored open_lot is this transaction's)
    LotCloseRequested   closing, with the time finalize_close is due
    LotClosed           closed
    LotExpired          expired
    LotSlashed          slashed

Lots opened by another attestor, or by hand, are not this gateway's and are left alone.
A lot whose seller's request_close is stored but not yet mined stays `closing`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, select

from promptex.indexer.decode import Event
from promptex.indexer.schema import chain_events
from promptex.ledger import lots as ledger_lots

ESCROW = "CreditEscrow"
OPENED = "LotOpened"
_ENDS = {"LotClosed": ledger_lots.CLOSED, "LotExpired": ledger_lots.EXPIRED, "LotSlashed": ledger_lots.SLASHED}
LIFECYCLE = (OPENED, "LotCloseRequested", *_ENDS)


def touched(events: Iterable[Event]) -> set[int]:
    """The escrow lots whose life these events change."""
    return {int(e.args["lot_id"]) for e in events if e.source == ESCROW and e.name in LIFECYCLE}


def touched_after(conn: Connection, block: int) -> set[int]:
    """The escrow lots with lifecycle events stored above `block` (what a rewind undoes)."""
    rows: Iterable[str] = conn.execute(
        select(chain_events.c.args).where(
            chain_events.c.block_number > block,
            chain_events.c.source == ESCROW,
            chain_events.c.name.in_(LIFECYCLE),
        )
    ).scalars()
    return {int(json.loads(text)["lot_id"]) for text in rows}


def _stored(conn: Connection, lot_ids: set[int]) -> dict[int, list[tuple[str, dict[str, Any], str]]]:
    """Each lot's stored lifecycle events, oldest first: (name, args, tx hash)."""
    rows: Sequence[Any] = conn.execute(
        select(chain_events.c.name, chain_events.c.args, chain_events.c.tx_hash)
        .where(chain_events.c.source == ESCROW, chain_events.c.name.in_(LIFECYCLE))
        .order_by(chain_events.c.block_number, chain_events.c.log_index)
    ).all()
    found: dict[int, list[tuple[str, dict[str, Any], str]]] = {lot_id: [] for lot_id in lot_ids}
    for name, text, tx_hash in rows:
        args = json.loads(text)
        lot_id = int(args["lot_id"])
        if lot_id in found:
            found[lot_id].append((name, args, tx_hash))
    return found


def refold(conn: Connection, lot_ids: set[int], now: int) -> None:
    """Set each lot's state to what its stored events say."""
    if not lot_ids:
        return
    for lot_id, events in sorted(_stored(conn, lot_ids).items()):
        opened = next((tx for name, _args, tx in events if name == OPENED), None)
        if opened is None:  # a reorg took its LotOpened away
            ledger_lots.unconfirm_open(conn, lot_id, now=now)
            continue
        current = ledger_lots.confirm_open(conn, lot_id, open_tx=opened, now=now) or ledger_lots.by_chain_lot(
            conn, lot_id
        )
        if current is None:
            continue  # not one of this gateway's lots
        state, close_at, reason = ledger_lots.OPEN, None, None
        for name, args, tx in events:
            if name == "LotCloseRequested":
                state, close_at, reason = ledger_lots.CLOSING, int(args["close_at"]), f"close requested in {tx}"
            elif name in _ENDS:
                state, reason = _ENDS[name], f"{name} in {tx}"
        close_pending = current.state == ledger_lots.CLOSING and current.close_at is None
        if state == ledger_lots.OPEN and close_pending:
            continue  # its seller's request_close is stored, not yet mined: it stays unrouted
        ledger_lots.set_chain_state(conn, lot_id, state, close_at=close_at, reason=reason, now=now)
