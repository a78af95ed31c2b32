"""The indexer's tables (migration 0002): its cursor, block hashes and chain events.

Every function takes the connection of the caller's transaction: a batch's events, its
ledger effects and the cursor are committed together, or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from promptex.indexer.decode import Event
from promptex.indexer.rpc import Header
from promptex.indexer.schema import chain_events, indexer_blocks, indexer_cursor, indexer_reorgs
from promptex.ledger.errors import ChainEventConflict

CURSOR_ID = 1
_CHUNK = 500


@dataclass(frozen=True)
class Cursor:
    chain_id: int
    start_block: int
    block_number: int  # the last indexed block; start_block − 1 before the first
    block_hash: str | None
    rewinds: int


def load_cursor(conn: Connection) -> Cursor | None:
    row = conn.execute(select(indexer_cursor).where(indexer_cursor.c.id == CURSOR_ID)).first()
    if row is None:
        return None
    return Cursor(row.chain_id, row.start_block, row.block_number, row.block_hash, row.rewinds)


def create_cursor(conn: Connection, chain_id: int, start_block: int, now: int) -> Cursor:
    cursor = Cursor(chain_id, start_block, start_block - 1, None, 0)
    conn.execute(
        insert(indexer_cursor).values(
            id=CURSOR_ID,
            chain_id=chain_id,
            start_block=start_block,
            block_number=cursor.block_number,
            block_hash=None,
            rewinds=0,
            updated_at=now,
        )
    )
    return cursor


def move_cursor(conn: Connection, number: int, block_hash: str | None, now: int, *, rewound: bool = False) -> None:
    values: dict[str, Any] = {"block_number": number, "block_hash": block_hash, "updated_at": now}
    if rewound:
        values["rewinds"] = indexer_cursor.c.rewinds + 1
    conn.execute(update(indexer_cursor).where(indexer_cursor.c.id == CURSOR_ID).values(**values))


# ─── Block hashes ────────────────────────────────────────────────────────────


def save_blocks(conn: Connection, headers: Sequence[Header], keep: int) -> None:
    """Record the hashes of newly indexed blocks; forget those more than `keep` blocks back."""
    if not headers:
        return
    conn.execute(delete(indexer_blocks).where(indexer_blocks.c.number >= headers[0].number))  # re-indexed ones
    conn.execute(
        insert(indexer_blocks), [{"number": h.number, "hash": h.hash, "parent_hash": h.parent_hash} for h in headers]
    )
    conn.execute(delete(indexer_blocks).where(indexer_blocks.c.number <= headers[-1].number - keep))


def block_hashes(conn: Connection, low: int, high: int) -> dict[int, str]:
    rows: Sequence[Any] = conn.execute(
        select(indexer_blocks.c.number, indexer_blocks.c.hash).where(indexer_blocks.c.number.between(low, high))
    ).all()
    return {int(number): str(block_hash) for number, block_hash in rows}


def lowest_block(conn: Connection) -> int | None:
    low: int | None = conn.execute(select(func.min(indexer_blocks.c.number))).scalar()
    return low


# ─── Events ──────────────────────────────────────────────────────────────────


_EVENT_COLUMNS = ("tx_hash", "log_index", "block_number", "block_hash", "contract", "source", "name", "args", "fact_id")


def _row(event: Event, fact_id: str | None) -> tuple[Any, ...]:
    args = json.dumps(event.args, separators=(",", ":"))
    return (event.tx_hash, event.log_index, event.block_number, event.block_hash, event.contract, event.source,
            event.name, args, fact_id)  # fmt: skip


def new_events(conn: Connection, events: Sequence[Event]) -> list[Event]:
    """The events not stored yet. One already stored with other facts (another block,
    other args) is a conflict: the chain and the store disagree, and nothing is guessed."""
    if not events:
        return []
    low, high = min(e.block_number for e in events), max(e.block_number for e in events)
    stored = {
        (row.tx_hash, row.log_index): row
        for row in conn.execute(
            select(
                chain_events.c.tx_hash, chain_events.c.log_index, chain_events.c.block_hash, chain_events.c.args
            ).where(chain_events.c.block_number.between(low, high))
        )
    }
    fresh = []
    for event in events:
        row = stored.get(event.key)
        if row is None:
            fresh.append(event)
        elif (row.block_hash, json.loads(row.args)) != (event.block_hash, event.args):
            raise ChainEventConflict(f"event {event.tx_hash}:{event.log_index} was stored with other facts")
    return fresh


def save_events(conn: Connection, events: Sequence[Event], fact_ids: Sequence[str | None]) -> None:
    """Store fresh events (see `new_events`); a key stored elsewhere (in a block outside
    this batch) violates the primary key and fails the batch."""
    if not events:
        return
    # Straight to the driver's executemany: SQLAlchemy's per-row parameter processing is
    # most of the cost at 100,000 rows, and these columns need none (no Amount values).
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {chain_events.name} ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join([mark] * 9)})"
    conn.exec_driver_sql(sql, [_row(e, f) for e, f in zip(events, fact_ids, strict=True)])


def events_after(conn: Connection, block: int) -> list[tuple[str, int, str | None]]:
    """(tx hash, log index, fact id) of the events above `block`, newest first."""
    rows: Sequence[Any] = conn.execute(
        select(chain_events.c.tx_hash, chain_events.c.log_index, chain_events.c.fact_id)
        .where(chain_events.c.block_number > block)
        .order_by(chain_events.c.block_number.desc(), chain_events.c.log_index.desc())
    ).all()
    return [(str(tx), int(index), fact) for tx, index, fact in rows]


def forget_after(conn: Connection, block: int) -> int:
    """Delete the events and block hashes above `block`; returns how many events."""
    deleted = conn.execute(delete(chain_events).where(chain_events.c.block_number > block)).rowcount
    conn.execute(delete(indexer_blocks).where(indexer_blocks.c.number > block))
    return int(deleted)


@dataclass(frozen=True)
class StoredEvent:
    tx_hash: str
    log_index: int
    block_number: int
    args: dict[str, Any]


def events_named(conn: Connection, name: str, *, up_to: int | None = None) -> list[StoredEvent]:
    """Every stored event called `name` (in a block at or before `up_to`), oldest first."""
    stmt = select(chain_events.c.tx_hash, chain_events.c.log_index, chain_events.c.block_number, chain_events.c.args)
    stmt = stmt.where(chain_events.c.name == name)
    if up_to is not None:
        stmt = stmt.where(chain_events.c.block_number <= up_to)
    rows = conn.execute(stmt.order_by(chain_events.c.block_number, chain_events.c.log_index)).all()
    return [StoredEvent(str(r.tx_hash), int(r.log_index), int(r.block_number), json.loads(r.args)) for r in rows]


def stored_args(conn: Connection, name: str) -> list[dict[str, Any]]:
    """The args of every stored event called `name`, oldest first (e.g. PoolCreated)."""
    rows: Sequence[str] = (
        conn.execute(
            select(chain_events.c.args)
            .where(chain_events.c.name == name)
            .order_by(chain_events.c.block_number, chain_events.c.log_index)
        )
        .scalars()
        .all()
    )
    return [json.loads(text) for text in rows]


# ─── Reorgs ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Reorg:
    id: int
    detected_at: int
    fork_block: int
    old_tip: int
    old_tip_hash: str | None
    depth: int
    confirmations: int
    events_undone: int
    debts_opened: int


def record_reorg(conn: Connection, reorg: Reorg) -> None:
    values = {name: getattr(reorg, name) for name in Reorg.__dataclass_fields__ if name != "id"}
    conn.execute(insert(indexer_reorgs).values(**values))


def reorgs(conn: Connection, limit: int = 100) -> list[Reorg]:
    """The reorgs rewound, newest first."""
    rows = conn.execute(select(indexer_reorgs).order_by(indexer_reorgs.c.id.desc()).limit(limit)).all()
    return [Reorg(**row._mapping) for row in rows]
