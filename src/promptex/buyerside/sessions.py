"""A session grant: the session key a wallet authorized (EIP-712 SessionKey) and what it
signs for, kept in one file the proxy reads.

The session key's private key is in that file (mode 0600), unencrypted: the proxy signs
without a prompt. What it can lose is bounded by the session's maximum, and the wallet can
revoke it on chain (effective at the close of the next window) — see the README's table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils.address import to_checksum_address

from promptex.buyerside.signer import Session
from promptex.buyerside.voucherlog import Identity
from promptex.files import write_whole
from promptex.protocol.vault import session_key_digest, typed_data

WalletSigner = Callable[[dict[str, Any]], bytes]  # EIP-712 typed data → 65-byte signature


class GrantError(ValueError):
    """A grant file that cannot be used (unreadable, or not signed by its account)."""


@dataclass(frozen=True)
class SessionGrant:
    chain_id: int
    vault: str
    account: str
    asset: str  # the asset's address
    asset_symbol: str
    key: str  # the session key's address
    private_key: str
    lanes: int
    maximum: int  # in the asset's smallest unit
    expiry: int
    session: int  # the vault's session_nonce when signed: the session's id
    signature: str  # the wallet's, 0x hex

    def message(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "asset": self.asset,
            "key": self.key,
            "lanes": self.lanes,
            "maximum": self.maximum,
            "expiry": self.expiry,
            "nonce": self.session,
        }

    def typed_data(self) -> dict[str, Any]:
        return typed_data("SessionKey", chain_id=self.chain_id, vault=self.vault, message=self.message())

    def digest(self) -> bytes:
        return session_key_digest(chain_id=self.chain_id, vault=self.vault, **self.message())

    def identity(self) -> Identity:
        return Identity(self.chain_id, self.vault, self.account, self.asset, self.key)

    def signing_session(self) -> Session:
        return Session(self.identity(), self.private_key, self.session, self.lanes, self.maximum, self.asset_symbol)

    def check(self) -> None:
        """The wallet's signature is the account's, and the key is the private key's."""
        if Account.from_key(self.private_key).address.lower() != self.key.lower():
            raise GrantError("the grant's private key is not its session key")
        try:
            signer = Account._recover_hash(self.digest(), signature=bytes.fromhex(self.signature.removeprefix("0x")))
        except Exception:
            raise GrantError("the grant's wallet signature does not recover") from None
        if signer.lower() != self.account.lower():
            raise GrantError(f"the SessionKey was signed by {signer}, not by the account {self.account}")

    def registration(self) -> dict[str, Any]:
        """What the coordinator relays to `register_session_key` (no private key)."""
        return {**self.message(), "chain_id": self.chain_id, "vault": self.vault, "signature": self.signature}

    def relay(self, store: Any, now: int) -> int:
        """Queue the wallet-signed SessionKey with the coordinator (`CoordinatorStore`), which
        registers it on chain on its next pass, gaslessly for the wallet; idempotent."""
        added: int = store.add_session_key(
            self.account, self.asset_symbol, self.key, self.lanes, self.maximum, self.expiry, self.session,
            self.signature, now,
        )  # fmt: skip
        return added


def new_grant(
    sign: WalletSigner,
    *,
    chain_id: int,
    vault: str,
    account: str,
    asset: str,
    asset_symbol: str,
    lanes: int,
    maximum: int,
    expiry: int,
    nonce: int,
) -> SessionGrant:
    """A fresh session key, authorized by the wallet's signature (`sign`) of its SessionKey."""
    if not 1 <= lanes <= 64:
        raise GrantError("a session has 1 to 64 lanes")
    if maximum <= 0:
        raise GrantError("a session's maximum is positive")
    key = Account.create()
    unsigned = SessionGrant(
        chain_id,
        to_checksum_address(vault),
        to_checksum_address(account),
        to_checksum_address(asset),
        asset_symbol.upper(),
        key.address,
        "0x" + bytes(key.key).hex(),
        lanes,
        maximum,
        expiry,
        nonce,
        "",
    )
    signature = sign(unsigned.typed_data())
    grant = SessionGrant(**{**asdict(unsigned), "signature": "0x" + signature.hex()})
    grant.check()
    return grant


def save(grant: SessionGrant, path: Path) -> None:
    """Write the grant whole or not at all (`files.write_whole`), readable by its owner only."""
    write_whole(path, json.dumps({**asdict(grant), "maximum": str(grant.maximum)}, indent=2), 0o600)


def load(path: Path) -> SessionGrant:
    try:
        raw = json.loads(path.read_text())
        grant = SessionGrant(**{**raw, "maximum": int(raw["maximum"])})
    except FileNotFoundError:
        raise GrantError(f"no session grant at {path}: run `promptex session create`") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise GrantError(f"cannot read the session grant {path}: {exc}") from None
    grant.check()
    return grant
