"""EIP-712 pieces every typed message of the project shares: the domain type, its
separator as the contracts compute it, the digest, and a cached signer."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from eth_abi.abi import encode
from eth_account import Account
from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError

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


SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


def recover_digest(digest: bytes, signature: bytes) -> str | None:
    """The checksummed signer of a 65-byte signature of `digest`, or None when it recovers
    no key. A high-s signature is refused as the contracts' ecrecover wrappers do, so a
    signature has one form only (a malleated copy is not a second voucher)."""
    if len(signature) != 65:
        return None
    v = signature[64]
    v = v - 27 if v >= 27 else v
    s = int.from_bytes(signature[32:64], "big")
    if v not in (0, 1) or not 0 < s <= SECP256K1_HALF_N:
        return None
    try:
        public = Signature(signature_bytes=signature[:64] + bytes([v])).recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValidationError, ValueError):
        return None
    return str(public.to_checksum_address())
