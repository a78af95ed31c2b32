"""Proving usage: a settled usage record's Merkle proof against the root its settlement
posted (`CreditsVault.usage_roots`), and checking one against the root on chain.

Used by `promptex usage proof|verify` and the dashboard's proof endpoint; each maps the
domain errors below to its own (a one-line CLI error, an HTTP status)."""

from promptex.proofs.build import build_proof, leaf_of
from promptex.proofs.errors import BatchTampered, MalformedProof, NotProvable, NoUsageRecord, ProofError
from promptex.proofs.verify import RootReader, Verification, verify_proof

__all__ = [
    "BatchTampered",
    "MalformedProof",
    "NoUsageRecord",
    "NotProvable",
    "ProofError",
    "RootReader",
    "Verification",
    "build_proof",
    "leaf_of",
    "verify_proof",
]
