"""The usage Merkle tree whose root each settlement posts (`CreditsVault.usage_roots`).

Leaves are double-hashed as in OpenZeppelin's StandardMerkleTree, so a leaf can never
be read as an inner node. Two versions exist; a batch records which one its root is made
of (`settlement_batches.leaf_version`), and a proof document names it (`leaf_version`,
absent: 1), so every epoch ever posted still verifies.

Version 1 (every batch planned before the exact token accounting):

    leaf = keccak256(keccak256(abi.encode(
        string  request_id,
        address account,      # the wallet the settlement debited
        string  model,
        uint256 input_tokens,
        uint256 output_tokens,
        uint256 cost,         # charged, in the asset's smallest unit
        uint256 lot_id)))     # the CreditEscrow lot that served the request

Version 2 commits to the version and to the parts of the token counts the cost was
metered from (cached input read and written, one-hour writes, reasoning):

    leaf = keccak256(keccak256(abi.encode(
        uint256 version,      # 2
        string  request_id,
        address account,
        string  model,
        uint256 input_tokens,           # all input, cached included
        uint256 output_tokens,          # all output, reasoning included
        uint256 cache_read_tokens,      # of input_tokens
        uint256 cache_write_tokens,     # of input_tokens
        uint256 cache_write_1h_tokens,  # of cache_write_tokens
        uint256 reasoning_tokens,       # of output_tokens
        uint256 cost,
        uint256 lot_id)))

A version-2 encoding starts with a different head than any version-1 one (a small
integer where version 1 has a string offset), so no leaf reads as both.

Inner nodes hash the sorted pair, keccak256(min(a, b) ‖ max(a, b)) as OpenZeppelin's
`MerkleProof.verify` does, so a proof is a plain list of sibling hashes. Leaves are
sorted before building (the root does not depend on record order); a level with an odd
count carries its last node up unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi.abi import encode
from eth_utils.crypto import keccak

LEAF_V1, LEAF_V2 = 1, 2
LEAF_VERSION = LEAF_V2  # what new batches are made of
LEAF_VERSIONS = (LEAF_V1, LEAF_V2)
LEAF_TYPES = ("string", "address", "string", "uint256", "uint256", "uint256", "uint256")  # version 1
LEAF_TYPES_V2 = (
    "uint256",
    "string",
    "address",
    "string",
    "uint256",
    "uint256",
    "uint256",
    "uint256",
    "uint256",
    "uint256",
    "uint256",
    "uint256",
)


@dataclass(frozen=True)
class Leaf:
    """The fields of a usage record that its leaf commits to. `version` 1 (the default,
    so a leaf built as before hashes as before) has no token details: they must be 0."""

    request_id: str
    account: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: int
    lot_id: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    version: int = LEAF_V1

    def __post_init__(self) -> None:
        if self.version not in LEAF_VERSIONS:
            raise ValueError(f"unknown usage leaf version {self.version} (known: {LEAF_VERSIONS})")
        details = (self.cache_read_tokens, self.cache_write_tokens, self.cache_write_1h_tokens, self.reasoning_tokens)
        if self.version == LEAF_V1 and any(details):
            raise ValueError("a version-1 leaf has no cached or reasoning token counts")

    def hash(self) -> bytes:
        if self.version == LEAF_V1:
            values: tuple[object, ...] = (
                self.request_id,
                self.account,
                self.model,
                self.input_tokens,
                self.output_tokens,
                self.cost,
                self.lot_id,
            )
            return keccak(keccak(encode(list(LEAF_TYPES), list(values))))
        values = (
            self.version,
            self.request_id,
            self.account,
            self.model,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cache_write_1h_tokens,
            self.reasoning_tokens,
            self.cost,
            self.lot_id,
        )
        return keccak(keccak(encode(list(LEAF_TYPES_V2), list(values))))


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b if a < b else b + a)


class MerkleTree:
    """A tree over leaf hashes; `proof(leaf)` lists the siblings from the leaf up."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        if any(len(leaf) != 32 for leaf in leaves):
            raise ValueError("leaves are 32-byte hashes")
        self.levels: list[list[bytes]] = [sorted(leaves)]
        while len(self.levels[-1]) > 1:
            level = self.levels[-1]
            up = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                up.append(level[-1])
            self.levels.append(up)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def proof(self, leaf: bytes) -> list[bytes]:
        try:
            index = self.levels[0].index(leaf)
        except ValueError:
            raise KeyError("the leaf is not in this tree") from None
        proof: list[bytes] = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                proof.append(level[sibling])
            index //= 2
        return proof


def verify(proof: Sequence[bytes], root: bytes, leaf: bytes) -> bool:
    """Whether `proof` takes `leaf` to `root` (OpenZeppelin's MerkleProof.verify)."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
