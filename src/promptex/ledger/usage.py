"""Usage records: what a settled request used and which lot served it, written in the
same transaction as the settlement so a crash can never keep one without the other.

The coordinator later assigns each record to one settlement batch (or quarantines it
with a reason); nothing here deletes a record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from promptex.ledger.journal import insert_ignore
from promptex.ledger.models import Hold
from promptex.ledger.schema import usage_records

PENDING, BATCHED, QUARANTINED = "pending", "batched", "quarantined"


@dataclass(frozen=True)
class UsageRecord:
    """What the gateway metered for one request (the ledger adds who paid and how much)."""

    model: str
    input_tokens: int
    output_tokens: int
    list_usd_micro: int  # the serving lot's draw-down at list price
    gateway_lot_id: int | None = None
    chain_lot_id: int | None = None  # None: the serving lot was never opened on chain
    lot_kind: str | None = None  # tokenized | listed
    fee_bps: int | None = None  # USDC: the protocol fee included in the price


@dataclass(frozen=True)
class StoredUsage:
    """A usage record as stored, with its settlement state."""

    request_id: str
    account: int
    payer: int
    asset: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: int
    gateway_lot_id: int | None
    chain_lot_id: int | None
    lot_kind: str | None
    list_usd_micro: int
    fee_bps: int | None
    seller_share: int | None
    fee: int | None
    settled_at: int
    status: str
    address: str | None
    batch_id: int | None
    epoch: int | None
    quarantine_reason: str | None


def stored_usage(row: Any) -> StoredUsage:
    m = row._mapping
    return StoredUsage(
        m["request_id"],
        m["account_id"],
        m["payer_id"],
        m["asset"],
        m["model"],
        m["input_tokens"],
        m["output_tokens"],
        m["cost"],
        m["gateway_lot_id"],
        m["chain_lot_id"],
        m["lot_kind"],
        m["list_usd_micro"],
        m["fee_bps"],
        m["seller_share"],
        m["fee"],
        m["settled_at"],
        m["status"],
        m["address"],
        m["batch_id"],
        m["epoch"],
        m["quarantine_reason"],
    )


def record_values(record: UsageRecord) -> dict[str, Any]:
    """A usage row's values that come from the record, not from the settled hold."""
    if min(record.input_tokens, record.output_tokens, record.list_usd_micro) < 0:
        raise ValueError("token counts and list value cannot be negative")
    return {
        "model": record.model,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "gateway_lot_id": record.gateway_lot_id,
        "chain_lot_id": record.chain_lot_id,
        "lot_kind": record.lot_kind,
        "list_usd_micro": record.list_usd_micro,
        "fee_bps": record.fee_bps,
        "status": PENDING,
    }


def usage_row(hold: Hold, record: UsageRecord, now: int) -> dict[str, Any]:
    """The usage_records row of a settled hold."""
    return {
        "request_id": hold.request_id,
        "account_id": hold.account,
        "payer_id": hold.payer,
        "asset": hold.asset,
        "cost": hold.charged or 0,
        "settled_at": now,
        **record_values(record),
    }


def record_usage(conn: Connection, hold: Hold, record: UsageRecord, *, now: int) -> None:
    """Insert the record of a settled hold; a second call for the same request changes nothing."""
    insert_ignore(conn, usage_records, usage_row(hold, record, now))


def get_usage(conn: Connection, request_id: str) -> StoredUsage | None:
    row = conn.execute(select(usage_records).where(usage_records.c.request_id == request_id)).first()
    return None if row is None else stored_usage(row)
