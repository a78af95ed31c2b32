"""Proof that a wallet belongs to an account: an EIP-712 `BindWallet` message.

The ledger issues a challenge (account, wallet, a fresh 32-byte nonce, issue and
expiry times); the wallet signs it with `eth_signTypedData_v4`; the ledger checks the
signature, the expiry and that the nonce was issued for exactly this and never used.
This module is the pure half: the message and its signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import is_address, to_checksum_address

from promptex.ledger.errors import ExpiredMessage, InvalidSignature

DOMAIN_NAME = "PROMPTEX"
DOMAIN_VERSION = "1"

BIND_WALLET_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
    ],
    "BindWallet": [
        {"name": "statement", "type": "string"},
        {"name": "account", "type": "uint256"},
        {"name": "wallet", "type": "address"},
        {"name": "nonce", "type": "bytes32"},
        {"name": "issuedAt", "type": "uint256"},
        {"name": "expiresAt", "type": "uint256"},
    ],
}


def checksum_address(address: str) -> str:
    """The EIP-55 form of an address; ValueError for anything that is not one."""
    if not isinstance(address, str) or not is_address(address):
        raise ValueError(f"not an Ethereum address: {address!r}")
    return str(to_checksum_address(address))


@dataclass(frozen=True)
class BindingMessage:
    """What the wallet signs to bind itself to a ledger account."""

    account: int
    wallet: str
    nonce: str  # 0x + 64 hex digits
    issued_at: int
    expires_at: int
    chain_id: int

    @property
    def statement(self) -> str:
        return f"Bind this wallet to PROMPTEX account {self.account}. Sign only on the PROMPTEX site."

    def typed_data(self) -> dict[str, Any]:
        """The full EIP-712 message, as `eth_signTypedData_v4` takes it."""
        return {
            "types": BIND_WALLET_TYPES,
            "primaryType": "BindWallet",
            "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": self.chain_id},
            "message": {
                "statement": self.statement,
                "account": self.account,
                "wallet": self.wallet,
                "nonce": self.nonce,
                "issuedAt": self.issued_at,
                "expiresAt": self.expires_at,
            },
        }


def sign(message: BindingMessage, private_key: bytes | str) -> bytes:
    """Sign as a wallet would (tests, scripts)."""
    signed = Account.sign_message(encode_typed_data(full_message=message.typed_data()), private_key)
    return bytes(signed.signature)


def signer_of(message: BindingMessage, signature: bytes | str) -> str:
    """The address that signed `message`; InvalidSignature if the signature is malformed."""
    try:
        return str(Account.recover_message(encode_typed_data(full_message=message.typed_data()), signature=signature))
    except Exception as exc:  # eth_keys raises several types for malformed signatures
        raise InvalidSignature(f"malformed signature: {exc}") from None


def verify(message: BindingMessage, signature: bytes | str, *, now: int, chain_id: int) -> None:
    """Refuse a message signed for another chain, by another key, or past its expiry."""
    if message.chain_id != chain_id:
        raise InvalidSignature(f"message is for chain {message.chain_id}, this ledger binds on chain {chain_id}")
    signer = signer_of(message, signature)
    if signer != checksum_address(message.wallet):
        raise InvalidSignature(f"signature is by {signer}, not by the wallet {message.wallet}")
    if now > message.expires_at:
        raise ExpiredMessage(f"binding message expired at {message.expires_at} (now {now}); ask for a new one")
