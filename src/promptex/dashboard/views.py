"""Read-only views over the ledger for the dashboard: a key's account and balances, its
usage records, settlement epochs with their transactions, and a record's Merkle proof."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, or_, select

from promptex.coordinator.store import CoordinatorStore
from promptex.gateway.store import ApiKey
from promptex.ledger import Ledger
from promptex.ledger.schema import coordinator_txs, settlement_batches, usage_records
from promptex.metering import ASSETS, CREDIT_SYMBOL
from promptex.proofs import ProofError, build_proof

USAGE_LIMIT = 200


class NotFound(LookupError):
    """No such record for this key (or not this key's to see)."""


class NoProof(ValueError):
    """The record exists but cannot be proved (yet): not settled, or quarantined."""


def account_view(ledger: Ledger, key: ApiKey) -> dict[str, Any]:
    """The key's account: its wallets and, per asset, what the ledger holds for it."""
    account = key.payer if key.payer is not None else key.account
    balances = {}
    for symbol in ASSETS:
        if symbol == CREDIT_SYMBOL:
            continue
        b = ledger.balance(account, symbol)
        balances[symbol] = {
            "posted": str(b.posted),
            "held": str(b.held),
            "locked": str(b.locked),
            "spendable": str(max(0, b.posted - b.held - b.locked)),
            "cap_remaining": str(b.cap_remaining),
        }
    return {
        "account": key.account,
        "payer": account,
        "key_prefix": key.prefix,
        "default_asset": key.default_asset,
        "wallets": ledger.wallets(account),
        "balances": balances,
    }


def _usage_row(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "request_id": m["request_id"],
        "model": m["model"],
        "asset": m["asset"],
        "input_tokens": int(m["input_tokens"]),
        "output_tokens": int(m["output_tokens"]),
        "cost": str(m["cost"]),
        "settled_at": int(m["settled_at"]),
        "status": m["status"],
        "lot_id": m["chain_lot_id"],
        "epoch": m["epoch"],
        "batch_status": m["batch_status"],
        "tx_hash": m["tx_hash"],
    }


def _usage_query() -> Any:
    joined = usage_records.outerjoin(settlement_batches, usage_records.c.batch_id == settlement_batches.c.id).outerjoin(
        coordinator_txs, settlement_batches.c.tx_id == coordinator_txs.c.id
    )
    return select(
        usage_records,
        settlement_batches.c.status.label("batch_status"),
        coordinator_txs.c.tx_hash.label("tx_hash"),
    ).select_from(joined)


def _mine(key: ApiKey) -> Any:
    return or_(usage_records.c.account_id == key.account, usage_records.c.payer_id == key.account)


def usage_view(engine: Engine, key: ApiKey, limit: int = USAGE_LIMIT) -> list[dict[str, Any]]:
    """The key's account's usage records (spent by it, or paid by it as an org), newest first."""
    stmt = _usage_query().where(_mine(key)).order_by(usage_records.c.settled_at.desc()).limit(limit)
    with engine.connect() as conn:
        return [_usage_row(row) for row in conn.execute(stmt).all()]


def usage_record_view(engine: Engine, key: ApiKey, request_id: str) -> dict[str, Any]:
    stmt = _usage_query().where(_mine(key), usage_records.c.request_id == request_id)
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        raise NotFound(f"no usage record {request_id!r} for this key")
    return _usage_row(row)


def proof_view(engine: Engine, key: ApiKey, request_id: str) -> dict[str, Any]:
    """`promptex usage proof` for one of the key's own records."""
    record = usage_record_view(engine, key, request_id)
    if record["batch_status"] != "confirmed":
        state = record["batch_status"] or record["status"]
        raise NoProof(f"usage {request_id} is not settled on chain yet ({state}); try again after the next epoch")
    try:
        return build_proof(CoordinatorStore(engine), request_id)
    except ProofError as exc:
        raise NoProof(str(exc)) from None


def epochs_view(engine: Engine, limit: int = USAGE_LIMIT) -> list[dict[str, Any]]:
    """Settlement batches, newest first: asset, epoch, status, records, root and transaction."""
    joined = settlement_batches.outerjoin(coordinator_txs, settlement_batches.c.tx_id == coordinator_txs.c.id)
    stmt = (
        select(settlement_batches, coordinator_txs.c.tx_hash.label("tx_hash"))
        .select_from(joined)
        .order_by(settlement_batches.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        {
            "id": int(r.id),
            "asset": r.asset,
            "epoch": int(r.epoch),
            "status": r.status,
            "records": int(r.records),
            "total": str(r.total),
            "usage_root": r.usage_root,
            "tx_hash": r.tx_hash,
            "created_at": int(r.created_at),
            "error": r.error,
        }
        for r in rows
    ]
