"""What a wallet may ask the coordinator for by signature alone, checked in one place for
every entrance (the coordinator's HTTP door, the dashboard's routes): an instant exit
(EIP-712 ExitRequest, issue 21) and a session key to relay (EIP-712 SessionKey, issue 23).

Each parser takes a JSON object and answers a typed request or raises `Refused` with an
HTTP status, a machine code, the reason for a person (amounts in whole units) and exact
machine fields (smallest units). Nothing here writes, except `queue_session_key`, after
every check passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from promptex.chain.deployments import Deployment
from promptex.coordinator.store import CapSubmission, CoordinatorStore, SessionKeySubmission
from promptex.ledger.binding import checksum_address
from promptex.ledger.sessions import SessionKey
from promptex.protocol.eip712 import recover_digest
from promptex.protocol.units import MAX_UINT256, money, utc_text
from promptex.protocol.vault import MAX_CAP_EXPIRY, MAX_CAP_TOTAL, MAX_LANES, exit_request_digest, session_key_digest

MAX_EXIT_REQUEST_SECONDS = 3_600  # a signed request is answered only this close to its expiry (chain time)


class Refused(ValueError):
    """A request refused: `status` (4xx), `code` (machine), the message (for people), `fields` (exact)."""

    def __init__(self, status: int, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.fields}}


@dataclass(frozen=True)
class Place:
    """Which market a signature is for: the vault's EIP-712 domain and its assets."""

    chain_id: int
    vault: str
    assets: dict[str, str] = field(default_factory=dict)  # symbol → address

    @classmethod
    def of(cls, deployment: Deployment) -> Place:
        symbols = deployment.asset_symbols()
        return cls(deployment.chain_id, deployment.address("CreditsVault"),
                   {s: deployment.asset_address(s) for s in symbols})  # fmt: skip

    def asset(self, value: object) -> tuple[str, str]:
        """(symbol, address) of an asset named by symbol or address; Refused when unknown."""
        text = str(value or "")
        for symbol, address in self.assets.items():
            if text.upper() == symbol or text.lower() == address.lower():
                return symbol, address
        raise Refused(400, "unknown_asset", f"asset must be one of {', '.join(self.assets)} (not {text!r})", asset=text)


def _number(body: dict[str, Any], name: str) -> int:
    """A whole number 0 ≤ n < 2**256, as JSON number or decimal string."""
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise Refused(400, f"bad_{name}", f"{name} must be a whole number (smallest units for amounts)", field=name)
    number = int(value)
    if number > MAX_UINT256:
        raise Refused(400, f"bad_{name}", f"{name} does not fit in 256 bits", field=name)
    return number


def _address(body: dict[str, Any], name: str) -> str:
    try:
        return checksum_address(str(body.get(name)))
    except ValueError:
        raise Refused(400, f"bad_{name}", f"{name} must be an address (0x and 40 hex digits)", field=name) from None


def _signature(body: dict[str, Any]) -> bytes:
    try:
        signature = bytes.fromhex(str(body.get("signature", "")).removeprefix("0x"))
    except ValueError:
        signature = b""
    if len(signature) != 65:
        raise Refused(400, "bad_signature", "signature must be 65 bytes of 0x hex (r ‖ s ‖ v)")
    return signature


def _signed_by(account: str, digest: bytes, signature: bytes, what: str) -> None:
    signer = recover_digest(digest, signature)
    if signer is None:
        raise Refused(401, "bad_signature", f"the signature does not recover: sign the {what} with your wallet")
    if signer != account:
        raise Refused(403, "wrong_signer", f"the {what} was signed by {signer}, not by {account}", signer=signer)


# ─── Instant exits ───────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ExitRequest:
    account: str
    asset: str  # symbol
    asset_address: str
    amount: int  # smallest units
    nonce: int  # the door's request nonce for this wallet
    expiry: int  # chain time
    signature: bytes


def parse_exit_request(body: dict[str, Any], place: Place, now: int) -> ExitRequest:
    """An ExitRequest signed by the wallet it names, for a positive amount, not expired and
    not signed for later than MAX_EXIT_REQUEST_SECONDS from `now` (the chain's time).
    Its nonce is checked by the caller, which keeps the wallet's nonces."""
    account = _address(body, "account")
    symbol, asset = place.asset(body.get("asset"))
    amount, nonce, expiry = _number(body, "amount"), _number(body, "nonce"), _number(body, "expiry")
    if amount == 0:
        raise Refused(400, "bad_amount", "an exit must be for a positive amount", field="amount")
    signature = _signature(body)
    if expiry <= now:
        raise Refused(400, "expired", f"the request expired (at {utc_text(expiry)}; the chain's time is "
                      f"{utc_text(now)}): sign a new one", expiry=expiry, now=now)  # fmt: skip
    if expiry > now + MAX_EXIT_REQUEST_SECONDS:
        raise Refused(400, "expiry_too_far",
                      f"a request may be signed for at most {MAX_EXIT_REQUEST_SECONDS} s ahead of the chain's time",
                      expiry=expiry, now=now)  # fmt: skip
    digest = exit_request_digest(
        chain_id=place.chain_id, vault=place.vault, account=account, asset=asset, amount=amount, nonce=nonce,
        expiry=expiry,
    )  # fmt: skip
    _signed_by(account, digest, signature, "ExitRequest")
    return ExitRequest(account, symbol, asset, amount, nonce, expiry, signature)


# ─── Session keys ────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class SessionRequest:
    account: str  # the wallet that signed
    asset: str  # symbol
    asset_address: str
    key: str
    lanes: int
    maximum: int
    expiry: int
    nonce: int
    signature: bytes


def parse_session_key(body: dict[str, Any], place: Place) -> SessionRequest:
    """A SessionKey signed by the wallet it names, with 1..MAX_LANES lanes and a positive
    maximum. Its expiry is the vault's to check (after its time) and a page's to bound:
    one that has expired fails at the relay, which records why."""
    symbol, asset = place.asset(body.get("asset"))
    account, key = _address(body, "account"), _address(body, "key")
    lanes, maximum = _number(body, "lanes"), _number(body, "maximum")
    expiry, nonce = _number(body, "expiry"), _number(body, "nonce")
    if not 1 <= lanes <= MAX_LANES:
        raise Refused(400, "bad_lanes", f"a session has 1 to {MAX_LANES} lanes", field="lanes")
    if maximum == 0:
        raise Refused(400, "bad_maximum", "a session's maximum must be above zero", field="maximum")
    signature = _signature(body)
    digest = session_key_digest(
        chain_id=place.chain_id, vault=place.vault, account=account, asset=asset, key=key, lanes=lanes,
        maximum=maximum, expiry=expiry, nonce=nonce,
    )  # fmt: skip
    _signed_by(account, digest, signature, "SessionKey")
    return SessionRequest(account, symbol, asset, key, lanes, maximum, expiry, nonce, signature)


def check_session_key_fresh(request: SessionRequest, now: int, latest_session: int | None) -> None:
    """Refuse (400) what the relay would only learn from the vault's refusal or cut: an expiry
    already past (at `now`) or beyond the vault's range, a maximum beyond what the vault holds,
    a nonce not above the latest session the ledger knows for the account (a replayed
    SessionKey). Nothing is stored for a refused key."""
    if request.expiry <= now:
        raise Refused(400, "expired", f"this SessionKey expired (at {utc_text(request.expiry)}; the chain's time "
                      f"is {utc_text(now)}): sign a new one",
                      field="expiry")  # fmt: skip
    if request.expiry > MAX_CAP_EXPIRY:
        raise Refused(400, "bad_expiry", f"expiry {request.expiry} is beyond the vault's range "
                      f"(at most {MAX_CAP_EXPIRY})", field="expiry")  # fmt: skip
    if request.maximum > MAX_CAP_TOTAL:
        raise Refused(400, "bad_maximum", f"a maximum of {money(request.maximum, request.asset)} is beyond what "
                      f"the vault holds (at most {money(MAX_CAP_TOTAL, request.asset)})", field="maximum",
                      maximum=str(request.maximum))  # fmt: skip
    if latest_session is not None and request.nonce <= latest_session:
        raise Refused(
            400, "replayed", f"nonce {request.nonce} is of a session already registered (the latest is "
            f"{latest_session}): sign a SessionKey with nonce {latest_session + 1}", field="nonce",
        )  # fmt: skip


def check_previous_session_over(request: SessionRequest, now: int, latest: SessionKey | None) -> None:
    """Refuse (409 session_not_over) a SessionKey while the account's newest session in the
    asset, as the ledger knows it, still settles vouchers: the vault takes the next one only
    after its last window (`CreditsVaultSigned._register_session`), so the relay would send it
    for a rejection, and the buyer's grant would hold a key the vault never had. In force
    (before its expiry, not revoked): revoke it first; revoked: its vouchers settle until
    `ends_at`. An expired one's last window ends up to two windows after its expiry: at
    `settles_until` when the indexer read the vault's clock (migration 0026), else left to
    the vault (`SessionKey.known_close`). A spend cap set after it proves it over."""
    if latest is None or latest.capped_by is not None:
        return
    session, close = f"session {latest.session} in {request.asset}", latest.known_close()
    if latest.revoked_at is None and now < latest.expiry:
        why = (f"{session} is in force until {utc_text(latest.expiry)}: revoke it first (`promptex session revoke "
               f"--asset {request.asset}`), then sign the next once its vouchers no longer settle (the close of the "
               "window after)")  # fmt: skip
    elif close is None or now > close:
        return
    elif latest.revoked_at is not None:
        why = (f"{session} was revoked; its vouchers settle until {utc_text(close)} and the vault takes the "
               "next SessionKey only after that: sign it then")  # fmt: skip
    else:
        why = (f"{session} expired at {utc_text(latest.expiry)}; its vouchers settle until {utc_text(close)} and "
               "the vault takes the next SessionKey only after that: sign it then")  # fmt: skip
    raise Refused(409, "session_not_over", why, session=latest.session)


def check_session_key_wallet(wallet: str, debited: str | None) -> None:
    """Refuse (403) a SessionKey signed by `wallet` when it is bound to an account whose
    settlements debit another of its wallets (`debited`: `wallets.first_bound`). The vault takes the
    account's usage from that wallet alone, under its own session; a later wallet's session
    is not the account's (`wallets.governed_account`), so the relay paid its gas for nothing
    and the gateway refused every voucher signed under it (wbreak s15)."""
    if debited is not None and debited != wallet:
        raise Refused(
            403, "not_debited",
            f"{wallet} is not the wallet this account's settlements debit ({debited}): a session of "
            f"its would govern none of the account's spending; sign the SessionKey with {debited}",
            wallet=debited,
        )  # fmt: skip


def queue_session_key(store: CoordinatorStore, request: SessionRequest, now: int) -> int:
    """Queue a checked SessionKey with the coordinator's relay, which registers it on chain on
    its next pass (gaslessly for the wallet); idempotent per (account, asset, nonce) for the
    same message. Another SessionKey with a nonce already queued and not rejected is refused
    (409 already_queued, naming the queued key): before (claims s16) it was answered "queued"
    while the relay registered the first, and `promptex session create` run twice before the
    relay's pass kept a grant whose key the vault never had (every voucher refused)."""
    signature = "0x" + request.signature.hex()
    queued = store.session_key_submission(store.add_session_key(
        request.account, request.asset, request.key, request.lanes, request.maximum, request.expiry, request.nonce,
        signature, now,
    ))  # fmt: skip
    return queued_once(
        "SessionKey", queued,
        (queued.key.lower(), queued.lanes, queued.maximum, queued.expiry),
        (request.key.lower(), request.lanes, request.maximum, request.expiry),
        f"key {queued.key}", key=queued.key,
    )  # fmt: skip


def queued_once(
    kind: str,
    submission: SessionKeySubmission | CapSubmission,
    terms: tuple[object, ...],
    asked: tuple[object, ...],
    shown: str,
    **fields: Any,
) -> int:
    """The id of `submission`, what the relay's queue holds for a wallet-signed message's
    (address, asset, nonce) once it was added: the message's own if its `terms` are those
    `asked` (queued now, or the same message again); else another's, still to be relayed, and
    the message is refused (409 already_queued, naming the queued one by `shown`: sign the
    next nonce once it is registered). A SessionKey's and a SpendCap's (`Coordinator.submit_spend_cap`)."""
    if terms != asked:
        raise Refused(
            409, "already_queued",
            f"a {kind} of {submission.address} with nonce {submission.nonce} ({shown}) is queued already, "
            f"{submission.status}: the relay registers it on its next pass; sign the next one (nonce "
            f"{submission.nonce + 1}) once it is registered",
            **fields, queued_status=submission.status,
        )  # fmt: skip
    return submission.id
