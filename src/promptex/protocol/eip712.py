"""EIP-712 pieces every typed message of the project shares: the domain type, its
separator as the contracts compute it, the digest, and a cached signer."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from eth_abi.abi import encode
from eth_account import Account
from eth_utils.crypto import keccak

EIP712_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
DOMAIN_TYPEHASH = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")


def domain_separator(name: str, version: str, chain_id: int, contract: str) -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [DOMAIN_TYPEHASH, keccak(text=name), keccak(text=version), chain_id, contract],
        )
    )


def typed_digest(domain: bytes, struct_hash: bytes) -> bytes:
    """The digest a signer signs: keccak256("\\x19\\x01" ‖ domain separator ‖ struct hash)."""
    return keccak(b"\x19\x01" + domain + struct_hash)


@lru_cache(maxsize=64)
def _signer(private_key: Any) -> Any:
    return Account.from_key(private_key)  # deriving the public key is the slow part


def sign_digest(private_key: Any, digest: bytes) -> bytes:
    """A 65-byte signature (r ‖ s ‖ v) of an EIP-712 digest."""
    return bytes(_signer(private_key).unsafe_sign_hash(digest).signature)
