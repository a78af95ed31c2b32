"""Check a proof document (as `build_proof` makes it) against the root on chain."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from promptex.ledger.usage import TOKEN_DETAILS
from promptex.proofs.errors import MalformedProof
from promptex.protocol.merkle import LEAF_V1, Leaf, verify


class RootReader(Protocol):
    def usage_root(self, asset: str, epoch: int) -> bytes:
        """The usage root the vault holds for (asset, epoch)."""
        ...


@dataclass(frozen=True)
class Verification:
    request_id: str
    asset: str
    epoch: int
    leaf: bytes
    root_on_chain: bytes
    verified: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "asset": self.asset,
            "epoch": self.epoch,
            "leaf": "0x" + self.leaf.hex(),
            "root_on_chain": "0x" + self.root_on_chain.hex(),
            "verified": self.verified,
        }


def verify_proof(proof: Mapping[str, Any], chain: RootReader) -> Verification:
    """Hash the record into its leaf and check its path into the root the vault holds on
    chain for its epoch; a mismatch is a result (`verified` False), not an error."""
    try:
        r = proof["record"]
        version = int(proof.get("leaf_version", LEAF_V1))  # documents made before version 2 name none
        details = {name: int(r[name]) for name in TOKEN_DETAILS} if version != LEAF_V1 else {}
        leaf = Leaf(
            r["request_id"], r["account"], r["model"], int(r["input_tokens"]), int(r["output_tokens"]),
            int(r["cost"]), int(r["lot_id"]), version=version, **details,
        ).hash()  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedProof(f"malformed proof: {exc}") from None
    on_chain = chain.usage_root(proof["asset"], int(proof["epoch"]))
    path = [bytes.fromhex(p.removeprefix("0x")) for p in proof["proof"]]
    return Verification(r["request_id"], proof["asset"], proof["epoch"], leaf, on_chain, verify(path, on_chain, leaf))
