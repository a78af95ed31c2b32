"""The usage Merkle tree: every leaf proves into the root; a changed leaf, proof or root does not."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from promptex.protocol.merkle import LEAF_V2, Leaf, MerkleTree, hash_pair, verify

hashes = st.binary(min_size=32, max_size=32)
leaf_sets = st.lists(hashes, min_size=1, max_size=40, unique=True)


@settings(max_examples=150, deadline=None)
@given(leaf_sets)
def test_proof__every_leaf__verifies(leaves: list[bytes]) -> None:
    tree = MerkleTree(leaves)
    for leaf in leaves:
        assert verify(tree.proof(leaf), tree.root, leaf)


@settings(max_examples=150, deadline=None)
@given(leaf_sets, st.data())
def test_proof__tampered_leaf_or_proof_or_root__fails(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    leaf = data.draw(st.sampled_from(leaves))
    proof = tree.proof(leaf)
    other = data.draw(hashes.filter(lambda h: h not in leaves))
    assert not verify(proof, tree.root, other)
    assert not verify(proof, other, leaf) or other == tree.root
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = bytearray(proof[i])
        bad[bit // 8] ^= 1 << (bit % 8)
        assert not verify([*proof[:i], bytes(bad), *proof[i + 1 :]], tree.root, leaf)


@given(leaf_sets, st.randoms())
def test_root__leaf_order__does_not_matter(leaves: list[bytes], rnd) -> None:  # noqa: ANN001
    shuffled = list(leaves)
    rnd.shuffle(shuffled)
    assert MerkleTree(shuffled).root == MerkleTree(leaves).root


def test_tree__two_leaves__root_is_sorted_pair_hash_as_openzeppelin() -> None:
    a, b = keccak(b"a"), keccak(b"b")
    assert MerkleTree([a, b]).root == keccak(min(a, b) + max(a, b)) == hash_pair(b, a)
    assert MerkleTree([a]).root == a and MerkleTree([a]).proof(a) == []


def test_leaf__documented_encoding__double_keccak_of_abi_encode() -> None:
    leaf = Leaf("req_1", "0x" + "11" * 20, "gpt-4o", 100, 20, 12_345, 7)
    fields = ["req_1", "0x" + "11" * 20, "gpt-4o", 100, 20, 12_345, 7]
    types = ["string", "address", "string", "uint256", "uint256", "uint256", "uint256"]
    assert leaf.hash() == keccak(keccak(encode(types, fields)))
    assert Leaf("req_1", "0x" + "11" * 20, "gpt-4o", 100, 20, 12_346, 7).hash() != leaf.hash()


def test_leaf_v2__documented_encoding__version_and_token_details_committed() -> None:
    leaf = Leaf("req_1", "0x" + "11" * 20, "claude-sonnet-4-5", 1_000, 200, 12_345, 7, 600, 300, 100, 50, version=2)
    types = ["uint256", "string", "address", "string", *["uint256"] * 8]
    fields = [2, "req_1", "0x" + "11" * 20, "claude-sonnet-4-5", 1_000, 200, 600, 300, 100, 50, 12_345, 7]
    assert leaf.hash() == keccak(keccak(encode(types, fields)))
    # Same counts, other version: another leaf (a v1 leaf never reads as a v2 one).
    v1 = Leaf("req_1", "0x" + "11" * 20, "claude-sonnet-4-5", 1_000, 200, 12_345, 7)
    assert Leaf(*(v1.request_id, v1.account, v1.model, 1_000, 200, 12_345, 7), version=LEAF_V2).hash() != v1.hash()


def test_leaf__version_1_with_token_details_or_unknown_version__refused() -> None:
    with pytest.raises(ValueError, match="version-1"):
        Leaf("req_1", "0x" + "11" * 20, "m", 10, 5, 1, 7, cache_read_tokens=3)
    with pytest.raises(ValueError, match="unknown usage leaf version"):
        Leaf("req_1", "0x" + "11" * 20, "m", 10, 5, 1, 7, version=3)
