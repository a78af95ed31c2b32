"""How commands reach the coordinator's HTTP door (`promptex.coordinator.door`): its URL
from the settings (the market's profile: `promptex up` writes it), the wallet's EIP-712
signature through its ape account, and each refusal as one line (a ValueError, which
`readable_errors` prints as the door worded it: amounts in whole units)."""

from __future__ import annotations

from typing import Any

import httpx

from promptex.config import settings

NO_DOOR = (
    "no coordinator door known: run `promptex up` (it starts one and writes its URL into the market's profile) "
    "or set PROMPTEX_COORDINATOR_DOOR_URL to a running `promptex coordinator`'s door"
)
EXIT_REQUEST_SECONDS = 300  # a signed ExitRequest is answered until then (chain time)


class DoorError(ValueError):
    """The door refused, or did not answer; the message says why and what to do. `refused`:
    the door answered a 4xx (nothing done); else what it did is not known (no answer, a 5xx)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def door_url() -> str:
    url = settings().coordinator_door_url
    if not url:
        raise DoorError(NO_DOOR)
    return url.rstrip("/")


def call(method: str, path: str, *, body: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> Any:
    """The door's JSON answer, or DoorError with its reason."""
    url = door_url()
    try:
        answer = httpx.request(method, f"{url}{path}", json=body, params=params, timeout=30.0)
    except httpx.HTTPError:
        raise DoorError(
            f"the coordinator's door does not answer at {url}: is `promptex up` (or `promptex coordinator`) running?"
        ) from None
    try:
        data = answer.json()
    except ValueError:
        data = None
    if answer.status_code >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise DoorError(
            f"the coordinator refused: {message or f'HTTP {answer.status_code}'}", refused=answer.status_code < 500
        )
    return data


def sign_typed_data(account: Any, typed: dict[str, Any]) -> bytes:
    """EIP-712 typed data signed by an ape account (a keyfile asks for its passphrase)."""
    from eth_account.messages import encode_typed_data

    signature = account.sign_message(encode_typed_data(full_message=typed))
    if signature is None:
        raise DoorError(f"the wallet did not sign the {typed['primaryType']}")
    return bytes(signature.encode_rsv())


def request_exit(account: Any, *, chain_id: int, vault: str, asset: str, amount: int, chain_now: int) -> Any:
    """Ask the door for an instant exit of `amount` of `asset` (an address), signed by the
    wallet `account`: its release (`promptex coordinator release`'s JSON)."""
    from promptex.protocol.vault import typed_data

    address = str(account.address)
    nonce = int(call("GET", "/v1/exits/nonce", params={"account": address})["nonce"])
    message = {"account": address, "asset": asset, "amount": amount, "nonce": nonce,
               "expiry": chain_now + EXIT_REQUEST_SECONDS}  # fmt: skip
    signature = sign_typed_data(account, typed_data("ExitRequest", chain_id=chain_id, vault=vault, message=message))
    answer = call("POST", "/v1/exits", body={**message, "amount": str(amount), "signature": "0x" + signature.hex()})
    return answer["release"]


def submit_session_key(message: dict[str, Any], signature: str) -> Any:
    """Queue a wallet-signed SessionKey with the coordinator's relay through its door."""
    return call("POST", "/v1/session-keys", body=_session_key_body(message, signature))


def _session_key_body(message: dict[str, Any], signature: str) -> dict[str, Any]:
    return {**message, "maximum": str(message["maximum"]), "signature": signature}


def check_session_key(message: dict[str, Any], signature: str) -> None:
    """DoorError when the market's coordinator refuses a SessionKey the wallet is about to
    register itself (`session create --direct`): a wallet bound to an account whose
    settlements debit another of its wallets registers a session the gateway then refuses
    for every voucher. No door known: the same check against the market's ledger here
    (`_check_in_ledger`). A door known but not answering this check (down, or older): the
    wallet's own transaction goes on unchecked, as it did before."""
    try:
        url = door_url()
    except DoorError:
        _check_in_ledger(str(message["account"]))
        return
    try:
        answer = httpx.post(f"{url}/v1/session-keys/check", json=_session_key_body(message, signature), timeout=30.0)
    except httpx.HTTPError:
        return
    if answer.status_code not in (400, 403):
        return
    try:
        error = answer.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return
    raise DoorError(f"the coordinator refused: {error} (nothing was registered)", refused=True)


NO_DOOR_TO_CHECK = (
    "no coordinator door known and no ledger here to check that the market would use a session your wallet "
    "registers itself: run this in the folder `promptex up` runs in, or set PROMPTEX_COORDINATOR_DOOR_URL to "
    "its door (nothing was registered)"
)


def _check_in_ledger(wallet: str) -> None:
    """The door's check (`coordinator.requests.check_session_key_wallet`) against the market's
    ledger, for `session create --direct` with no door known; refused (NO_DOOR_TO_CHECK) where
    there is none to read either. Before (smalls s17), no door meant no check: a later wallet's
    session was registered on chain and every voucher under it refused."""
    from promptex.cli.ledgers import NoLedgerHere, market_ledger, market_settings
    from promptex.coordinator.requests import Refused, check_session_key_wallet
    from promptex.ledger import LedgerError

    try:
        s = market_settings()
    except NoLedgerHere:
        raise DoorError(NO_DOOR_TO_CHECK, refused=True) from None
    try:
        with market_ledger(s) as ledger:
            account = ledger.account_of(wallet)
            debited = None if account is None else ledger.debited_wallet(account)
    except NoLedgerHere as exc:  # its schema is not this promptex's
        raise DoorError(f"{exc.message} (nothing was registered)", refused=True) from None
    except LedgerError:
        raise DoorError(NO_DOOR_TO_CHECK, refused=True) from None
    try:
        check_session_key_wallet(wallet, debited)
    except Refused as exc:
        raise DoorError(f"the market's ledger refuses: {exc.message} (nothing was registered)", refused=True) from None
