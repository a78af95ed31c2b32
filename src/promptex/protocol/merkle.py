"""The usage Merkle tree whose root each settlement posts (`CreditsVault.usage_roots`).

Leaf (as OpenZeppelin's StandardMerkleTree, double-hashed so a leaf can never be read
as an inner node):

    leaf = keccak256(keccak256(abi.encode(
        string  request_id,
        address account,      # the wallet the settlement debited
        string  model,
        uint256 input_tokens,
        uint256 output_tokens,
        uint256 cost,         # charged, in the asset's smallest unit
        uint256 lot_id)))     # the CreditEscrow lot that served the request

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

LEAF_TYPES = ("string", "address", "string", "uint256", "uint256", "uint256", "uint256")


@dataclass(frozen=True)
class Leaf:
    """The fields of a usage record that its leaf commits to."""

    request_id: str
    account: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: int
    lot_id: int

    def hash(self) -> bytes:
        values = (
            self.request_id,
            self.account,
            self.model,
            self.input_tokens,
            self.output_tokens,
            self.cost,
            self.lot_id,
        )
        return keccak(keccak(encode(list(LEAF_TYPES), list(values))))


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
