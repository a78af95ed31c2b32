"""Signed mode from the browser (issue 23): the playground's wallet-signed SessionKey,
checked and queued with the coordinator's relay, which registers it on chain on its next
pass (gaslessly for the wallet, as `promptex session create` does). The session key's
private key never reaches the server: only its address and the wallet's signature do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from sqlalchemy import Engine

from promptex.chain.deployments import Deployment
from promptex.coordinator.store import CoordinatorStore
from promptex.ledger.binding import checksum_address
from promptex.protocol.vault import session_key_digest

MAX_LANES = 64


class SessionRefused(ValueError):
    """A SessionKey the relay will not queue (the reason is for the user)."""


@dataclass(frozen=True)
class SessionRequest:
    account: str  # the wallet that signed
    asset: str  # symbol
    key: str
    lanes: int
    maximum: int
    expiry: int
    nonce: int
    signature: bytes


def _count(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise SessionRefused(f"{name} must be a whole number")
    return int(value)


def parse(body: dict[str, Any], symbols: list[str]) -> SessionRequest:
    asset = str(body.get("asset", "")).upper()
    if asset not in symbols:
        raise SessionRefused(f"asset must be one of {', '.join(symbols)}")
    try:
        account, key = checksum_address(str(body.get("account"))), checksum_address(str(body.get("key")))
        signature = bytes.fromhex(str(body.get("signature", "")).removeprefix("0x"))
    except ValueError:
        raise SessionRefused("account and key are addresses; signature is 0x hex") from None
    request = SessionRequest(
        account, asset, key, _count(body, "lanes"), _count(body, "maximum"), _count(body, "expiry"),
        _count(body, "nonce"), signature,
    )  # fmt: skip
    if not 1 <= request.lanes <= MAX_LANES:
        raise SessionRefused(f"a session has 1 to {MAX_LANES} lanes")
    if request.maximum <= 0:
        raise SessionRefused("a session's maximum must be above zero")
    if len(signature) != 65:
        raise SessionRefused("the signature is 65 bytes")
    return request


def queue(engine: Engine, deployment: Deployment, request: SessionRequest, now: int) -> int:
    """Check the SessionKey (signed by the wallet it names) and queue it for the coordinator;
    idempotent per (account, asset, nonce). Its expiry is the page's to bound (24 h) and the
    vault's to check (after now): an expired one fails at the relay, which records why."""
    digest = session_key_digest(
        chain_id=deployment.chain_id,
        vault=deployment.address("CreditsVault"),
        account=request.account,
        asset=deployment.address("USDC" if request.asset == "USDC" else f"token:{request.asset}"),
        key=request.key,
        lanes=request.lanes,
        maximum=request.maximum,
        expiry=request.expiry,
        nonce=request.nonce,
    )
    try:
        signer = Account._recover_hash(digest, signature=request.signature)
    except Exception:  # noqa: BLE001 - any malformed signature is the same refusal
        raise SessionRefused("the signature does not recover: sign the SessionKey with your wallet") from None
    if signer != request.account:
        raise SessionRefused(f"the SessionKey was signed by {signer}, not by {request.account}")
    added: int = CoordinatorStore(engine).add_session_key(
        request.account, request.asset, request.key, request.lanes, request.maximum, request.expiry, request.nonce,
        "0x" + request.signature.hex(), now,
    )  # fmt: skip
    return added
