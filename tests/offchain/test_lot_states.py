"""Each seller lot's persisted state (`ledger.lots`) on SQLite and PostgreSQL, and the
indexer's fold of the escrow's lifecycle events into it (`indexer.lots`), reorgs included."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete, insert

from promptex.indexer import lots as indexer_lots
from promptex.indexer.schema import chain_events
from promptex.ledger import Ledger, LotStateError, lots

EXPIRY = 2_000_000_000
OPEN_TX = "0x" + "ab" * 32


def requested(ledger: Ledger, lot_id: int = 1) -> None:
    ledger.request_lot(lot_id, expires_at=EXPIRY, route_until=EXPIRY - 900)


def opening(ledger: Ledger, lot_id: int = 1, tx: str = OPEN_TX) -> None:
    requested(ledger, lot_id)
    with ledger.engine.begin() as conn:
        lots.opening(conn, lot_id, tx, now=ledger.clock())


def test_lot__requested_opening_open__routed_only_when_open_and_before_route_until(ledger: Ledger) -> None:
    requested(ledger)
    state = ledger.lot_state(1)
    assert state is not None and state.state == "requested" and not state.routable(0)
    with ledger.engine.begin() as conn:
        lots.opening(conn, 1, OPEN_TX, now=ledger.clock())
    state = ledger.lot_state(1)
    assert state is not None and state.state == "opening" and state.open_tx == OPEN_TX
    assert state.why_not_routed(0) == f"waiting for open_lot {OPEN_TX} to be confirmed"
    opened = ledger.confirm_lot_open(1, 42)
    assert (opened.state, opened.chain_lot_id) == ("open", 42)
    assert opened.routable(EXPIRY - 901) and not opened.routable(EXPIRY - 900)
    assert ledger.confirm_lot_open(1, 42) == opened  # again: nothing changes


def test_lot__failed__serves_nothing_says_why_and_an_open_lot_cannot_fail(ledger: Ledger) -> None:
    opening(ledger)
    failed = ledger.fail_lot(1, "open_lot reverted in 0xdead")
    assert failed.state == "failed" and failed.why_not_routed(0) == "open_lot reverted in 0xdead"
    late = ledger.confirm_lot_open(1, 5)  # the transaction thought lost landed after all: the chain decides
    assert late.state == "open" and late.reason is None
    with pytest.raises(LotStateError, match="only a lot not yet open can fail"):
        ledger.fail_lot(1, "too late")
    with pytest.raises(LotStateError, match="opened as escrow lot 5, not 6"):
        ledger.confirm_lot_open(1, 6)
    with pytest.raises(ValueError, match="past its expiry"):
        ledger.request_lot(2, expires_at=10, route_until=11)


def test_lot__chain_states__any_may_follow_any_and_only_opened_lots_of_ours(ledger: Ledger) -> None:
    opening(ledger)
    ledger.confirm_lot_open(1, 42)
    closing = ledger.set_lot_chain_state(42, "closing", close_at=EXPIRY - 10, reason="close requested in 0x1")
    assert closing is not None and (closing.state, closing.close_at) == ("closing", EXPIRY - 10)
    assert not closing.routable(0)
    back = ledger.set_lot_chain_state(42, "open")  # a reorg undid the close
    assert back is not None and back.routable(0) and back.close_at is None
    assert ledger.set_lot_chain_state(99, "closed") is None  # not one of this gateway's lots
    with pytest.raises(ValueError, match="not a state the chain sets"):
        ledger.set_lot_chain_state(42, "failed")


def _store_event(ledger: Ledger, block: int, name: str, args: dict[str, object], tx: str) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(chain_events).values(
                tx_hash=tx, log_index=0, block_number=block, block_hash="0x" + "00" * 32, contract="0x" + "11" * 20,
                source="CreditEscrow", name=name, args=json.dumps(args),
            )
        )  # fmt: skip


def _refold(ledger: Ledger, lot_ids: set[int]) -> None:
    with ledger.engine.begin() as conn:
        indexer_lots.refold(conn, lot_ids, ledger.clock())


def test_indexer_fold__escrow_events__open_closing_closed_and_a_reorg_moves_the_lot_back(ledger: Ledger) -> None:
    opening(ledger)
    _store_event(ledger, 10, "LotOpened", {"lot_id": 42}, OPEN_TX)
    _refold(ledger, {42})
    state = ledger.lot_state(1)
    assert state is not None and (state.state, state.chain_lot_id) == ("open", 42)  # found by its open_lot

    _store_event(ledger, 11, "LotCloseRequested", {"lot_id": 42, "close_at": EXPIRY - 5}, "0x" + "cd" * 32)
    _refold(ledger, {42})
    state = ledger.lot_state(1)
    assert state is not None and (state.state, state.close_at) == ("closing", EXPIRY - 5)

    _store_event(ledger, 12, "LotClosed", {"lot_id": 42}, "0x" + "ef" * 32)
    _refold(ledger, {42})
    state = ledger.lot_state(1)
    assert state is not None and state.state == "closed"

    with ledger.engine.begin() as conn:  # a reorg removes blocks 11 and 12
        undone = indexer_lots.touched_after(conn, 10)
        conn.execute(delete(chain_events).where(chain_events.c.block_number > 10))
        indexer_lots.refold(conn, undone, ledger.clock())
    state = ledger.lot_state(1)
    assert state is not None and (state.state, state.close_at) == ("open", None)

    with ledger.engine.begin() as conn:  # and one that removes the LotOpened too
        conn.execute(delete(chain_events))
        indexer_lots.refold(conn, {42}, ledger.clock())
    state = ledger.lot_state(1)
    assert state is not None and (state.state, state.chain_lot_id) == ("opening", None)


def test_indexer_fold__someone_elses_lot_or_a_close_not_yet_mined__left_alone(ledger: Ledger) -> None:
    _store_event(ledger, 10, "LotOpened", {"lot_id": 7}, "0x" + "77" * 32)  # another attestor's lot
    _refold(ledger, {7})
    assert ledger.lot_states() == {}

    opening(ledger)
    ledger.confirm_lot_open(1, 42)
    _store_event(ledger, 11, "LotOpened", {"lot_id": 42}, OPEN_TX)
    with ledger.engine.begin() as conn:  # the seller's request_close is stored, not yet mined
        lots.set_chain_state(conn, 42, "closing", reason="close requested in 0x1", now=ledger.clock())
    _refold(ledger, {42})
    state = ledger.lot_state(1)
    assert state is not None and state.state == "closing"  # it stays unrouted
