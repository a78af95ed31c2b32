"""Build a usage record's Merkle proof from the coordinator's batches."""

from __future__ import annotations

from typing import Any

from promptex.coordinator.store import CoordinatorStore
from promptex.ledger.usage import StoredUsage
from promptex.proofs.errors import BatchTampered, NotProvable, NoUsageRecord
from promptex.protocol.merkle import Leaf, MerkleTree


def leaf_of(record: StoredUsage) -> Leaf:
    """The leaf a batched record committed to in its settlement's root."""
    if record.address is None or record.chain_lot_id is None:
        raise NotProvable(f"usage {record.request_id!r} is not in a settlement batch ({record.status})")
    return Leaf(
        record.request_id,
        record.address,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.cost,
        record.chain_lot_id,
    )


def _record_json(record: StoredUsage) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "account": record.address,
        "model": record.model,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cost": str(record.cost),
        "lot_id": record.chain_lot_id,
    }


def build_proof(store: CoordinatorStore, request_id: str) -> dict[str, Any]:
    """The record, its leaf, its batch's root and the proof, as JSON-ready values."""
    record = store.record(request_id)
    if record is None:
        raise NoUsageRecord(f"no usage record for request {request_id!r}")
    if record.status == "quarantined":
        raise NotProvable(f"usage {request_id!r} is quarantined: {record.quarantine_reason}")
    leaf = leaf_of(record)
    assert record.batch_id is not None
    batch = store.batch(record.batch_id)
    tree = MerkleTree([leaf_of(r).hash() for r in store.batch_records(batch.id)])
    if tree.root != batch.usage_root:
        raise BatchTampered(f"batch {batch.id}'s records no longer hash to its stored root")
    return {
        "asset": record.asset,
        "epoch": batch.epoch,
        "batch_status": batch.status,
        "record": _record_json(record),
        "leaf": "0x" + leaf.hash().hex(),
        "root": "0x" + tree.root.hex(),
        "proof": ["0x" + p.hex() for p in tree.proof(leaf.hash())],
    }
