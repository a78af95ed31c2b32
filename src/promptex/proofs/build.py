"""Build a usage record's Merkle proof from the coordinator's batches."""

from __future__ import annotations

from typing import Any

from promptex.coordinator.store import CoordinatorStore
from promptex.ledger.usage import TOKEN_DETAILS, StoredUsage, settlement_note
from promptex.proofs.errors import BatchTampered, NotProvable, NoUsageRecord
from promptex.protocol.merkle import LEAF_V1, LEAF_VERSION, Leaf, MerkleTree


def leaf_of(record: StoredUsage, version: int = LEAF_VERSION) -> Leaf:
    """The leaf a batched record committed to in its settlement's root, whose leaves are
    of `version` (the batch's `leaf_version`)."""
    if record.address is None or record.chain_lot_id is None:
        raise NotProvable(f"usage {record.request_id!r} is not in a settlement batch ({record.status})")
    # A version-1 batch was planned before records had token details: its leaves have none.
    details = {name: getattr(record, name) for name in TOKEN_DETAILS} if version != LEAF_V1 else {}
    return Leaf(
        record.request_id,
        record.address,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.cost,
        record.chain_lot_id,
        version=version,
        **details,
    )


def _record_json(record: StoredUsage, version: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "request_id": record.request_id,
        "account": record.address,
        "model": record.model,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cost": str(record.cost),
        "lot_id": record.chain_lot_id,
    }
    if version != LEAF_V1:
        out.update({name: getattr(record, name) for name in TOKEN_DETAILS})
    return out


def build_proof(store: CoordinatorStore, request_id: str) -> dict[str, Any]:
    """The record, its leaf, its batch's root and the proof, as JSON-ready values."""
    record = store.record(request_id)
    if record is None:
        raise NoUsageRecord(f"no usage record for request {request_id!r}")
    if record.batch_id is None:
        raise NotProvable(f"usage {request_id!r} is in no settlement batch: {settlement_note(record)}")
    batch = store.batch(record.batch_id)
    leaf = leaf_of(record, batch.leaf_version)
    tree = MerkleTree([leaf_of(r, batch.leaf_version).hash() for r in store.batch_records(batch.id)])
    if tree.root != batch.usage_root:
        raise BatchTampered(f"batch {batch.id}'s records no longer hash to its stored root")
    return {
        "asset": record.asset,
        "epoch": batch.epoch,
        "batch_status": batch.status,
        "leaf_version": batch.leaf_version,
        "record": _record_json(record, batch.leaf_version),
        "leaf": "0x" + leaf.hash().hex(),
        "root": "0x" + tree.root.hex(),
        "proof": ["0x" + p.hex() for p in tree.proof(leaf.hash())],
    }
