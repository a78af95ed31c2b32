"""The coordinator's HTTP door (issue 21 item 5, issue 23's relay) against a fake chain,
in-process: every refusal is a 4xx with the reason in whole units and exact fields, and
locks nothing; an answered request locks its amount until the release is used or expires;
replays, expired requests and a wallet asking too often are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coordinator_fakes import ADDRESSES, CHAIN_ID, VAULT, FakeChain
from eth_account import Account
from ledger_helpers import event_id
from starlette.testclient import TestClient

from promptex.coordinator.door import Door
from promptex.coordinator.requests import Place
from promptex.coordinator.service import Coordinator
from promptex.coordinator.store import REJECTED
from promptex.ledger import Ledger, UsageRecord
from promptex.ledger.binding import sign
from promptex.protocol.units import utc_text
from promptex.protocol.vault import sign_exit_request, sign_session_key
from promptex.throttle import Throttle

USDC = 10**6
PLACE = Place(CHAIN_ID, VAULT, ADDRESSES)


class World:
    def __init__(self, book: Ledger, chain: FakeChain, throttle: Throttle | None = None) -> None:
        self.book, self.chain = book, chain
        self.coordinator = Coordinator(book.engine, chain, holder="door", clock=book.clock, tx_timeout=0)
        self.door = Door(self.coordinator, PLACE, throttle=throttle)
        assert self.coordinator.store.acquire_lease("door", 30)  # as its first pass takes it
        self.client = TestClient(self.door.app())

    def buyer(self, on_chain: int, unsettled: int = 0) -> tuple[int, Any]:
        """A bound wallet with `on_chain` USDC in the vault, `unsettled` of it spent off chain."""
        account, wallet = self.book.create_account().id, Account.create()
        message = self.book.issue_binding_challenge(account, wallet.address)
        self.book.bind_wallet(message, sign(message, wallet.key))
        self.book.credit_deposit(event_id(), wallet.address, "USDC", on_chain)
        self.book.set_spend_cap(account, "USDC", on_chain)
        self.chain.s.balances[(wallet.address, "USDC")] = on_chain
        if unsettled:
            self.book.reserve(account, "USDC", unsettled, f"req_{wallet.address}", ttl=60)
            record = UsageRecord(model="gpt-4o", input_tokens=1, output_tokens=1, list_usd_micro=1, gateway_lot_id=9,
                                 chain_lot_id=2, lot_kind="listed", fee_bps=500)  # fmt: skip
            self.book.settle(f"req_{wallet.address}", unsettled, record=record)
        return account, wallet

    def request(self, wallet: Any, amount: int, *, nonce: int = 0, signer: Any = None, **change: Any) -> dict[str, Any]:
        fields = {"account": wallet.address, "asset": ADDRESSES["USDC"], "amount": amount, "nonce": nonce,
                  "expiry": self.chain.now() + 300}  # fmt: skip
        fields.update({k: v for k, v in change.items() if k in fields})
        signature = sign_exit_request((signer or wallet).key, chain_id=CHAIN_ID, vault=VAULT, **fields)
        return {**fields, "asset": "USDC", "amount": str(amount), "signature": "0x" + signature.hex()}

    def post(self, body: Any, path: str = "/v1/exits") -> tuple[int, dict[str, Any]]:
        answer = self.client.post(path, content=body) if isinstance(body, bytes) else self.client.post(path, json=body)
        return answer.status_code, answer.json()


@pytest.fixture
def world(tmp_path: Path, clock) -> Iterator[World]:  # noqa: ANN001
    book = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", clock=clock, sqlite_synchronous="NORMAL")
    yield World(book, FakeChain())
    book.close()


def test_door__exit_refusals__4xx_with_the_reason_and_nothing_locked(world: World) -> None:
    account, wallet = world.buyer(20 * USDC, unsettled=7_500_000)
    other = Account.create()
    good = world.request(wallet, 5 * USDC)
    refusals = [
        (b"{not json", 400, "malformed_json"),
        (b"[1, 2]", 400, "malformed_json"),
        ({**good, "asset": "XYZ"}, 400, "unknown_asset"),
        ({**good, "amount": "0"}, 400, "bad_amount"),
        ({**good, "amount": "-5"}, 400, "bad_amount"),
        ({**good, "amount": str(2**256)}, 400, "bad_amount"),
        ({**good, "signature": "0x1234"}, 400, "bad_signature"),
        ({**good, "signature": "0x" + "00" * 65}, 401, "bad_signature"),
        ({**good, "amount": str(6 * USDC)}, 403, "wrong_signer"),  # signed for 5: recovers someone else
        (world.request(wallet, 5 * USDC, signer=other), 403, "wrong_signer"),
        (world.request(wallet, 5 * USDC, expiry=world.chain.now()), 400, "expired"),
        (world.request(wallet, 5 * USDC, expiry=world.chain.now() + 7_200), 400, "expiry_too_far"),
        (world.request(wallet, 5 * USDC, nonce=3), 409, "bad_nonce"),
        (world.request(other, 5 * USDC), 403, "not_bound"),
    ]
    for body, status, code in refusals:
        got, answer = world.post(body)
        assert (got, answer["error"]["code"]) == (status, code), (body, answer)
    # Moments read as dates, not unix seconds (exact fields beside).
    got, answer = world.post(world.request(wallet, 5 * USDC, expiry=world.chain.now()))
    now = utc_text(world.chain.now())
    assert f"the request expired (at {now}; the chain's time is {now})" in answer["error"]["message"], answer
    assert answer["error"]["expiry"] == world.chain.now()

    # Beyond what is free of unsettled usage (20 − 7.50): in whole units, exact fields beside.
    got, answer = world.post(world.request(wallet, 13 * USDC))
    assert got == 409 and answer["error"]["code"] == "unsettled_usage"
    assert answer["error"]["message"].startswith("only 12.50 USDC of ")
    assert "the rest leaves by the trustless exit: `promptex wallet withdraw`" in answer["error"]["message"]
    assert (answer["error"]["free_units"], answer["error"]["unsettled_units"]) == ("12500000", "7500000")
    got, answer = world.post(world.request(wallet, 2**255, nonce=1))  # huge, within 256 bits
    assert got == 409 and answer["error"]["code"] == "unsettled_usage"
    # A request answered (even refused) is answered once: its replay is refused.
    got, answer = world.post(world.request(wallet, 13 * USDC))
    assert got == 409 and answer["error"] == {**answer["error"], "code": "bad_nonce", "next_nonce": 2}

    assert world.book.balance(account, "USDC").locked == 0
    assert world.coordinator.store.active_releases() == []
    assert world.client.get("/v1/exits/nonce", params={"account": wallet.address}).json()["nonce"] == 2


def test_door__exit__locks_the_amount_until_used_or_expired(world: World) -> None:
    account, wallet = world.buyer(20 * USDC, unsettled=7_500_000)

    got, answer = world.post(world.request(wallet, 12_500_000))
    assert got == 200, answer
    release = answer["release"]
    assert (release["address"], release["asset"], release["amount"]) == (wallet.address, "USDC", "12500000")
    expected = world.chain.sign_release(wallet.address, "USDC", 12_500_000, release["nonce"], release["expiry"])
    assert release["signature"] == "0x" + expected.hex()
    assert world.book.balance(account, "USDC").locked == 12_500_000
    assert f"until {utc_text(release['expiry'])} (chain time)" in answer["message"]
    got, answer = world.post(world.request(wallet, 1, nonce=1))  # one release at a time
    assert got == 409 and answer["error"]["code"] == "release_outstanding"
    assert f"outstanding until {utc_text(release['expiry'])} (chain time)" in answer["error"]["message"]
    assert world.book.balance(account, "USDC").locked == 12_500_000

    world.chain.s.release_nonce[wallet.address] = release["nonce"] + 1  # the wallet used it on chain
    world.coordinator.run_once()
    assert world.book.balance(account, "USDC").locked == 0
    got, answer = world.post(world.request(wallet, USDC, nonce=2))
    assert got == 200 and world.book.balance(account, "USDC").locked == USDC
    world.chain.time = answer["release"]["expiry"] + 1  # never used
    world.coordinator.run_once()
    assert world.book.balance(account, "USDC").locked == 0 and world.coordinator.store.active_releases() == []


def test_door__a_wallet_asking_too_often__429_with_retry_after_nonce_kept(tmp_path: Path, clock) -> None:  # noqa: ANN001
    book = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", clock=clock, sqlite_synchronous="NORMAL")
    now = [0.0]
    world = World(book, FakeChain(), Throttle(2, 3_600.0, clock=lambda: now[0]))
    try:
        account, wallet = world.buyer(10 * USDC, unsettled=10 * USDC)  # nothing free: each answer is a refusal
        for nonce in (0, 1):
            assert world.post(world.request(wallet, USDC, nonce=nonce))[0] == 409
        third = world.request(wallet, USDC, nonce=2)
        answer = world.client.post("/v1/exits", json=third)
        assert answer.status_code == 429 and answer.headers["retry-after"] == "3600"
        assert answer.json()["error"]["retry_after_seconds"] == 3600
        now[0] = 3_600.0  # the first of the two leaves the window: the same signed request is answered
        assert world.post(third)[1]["error"]["code"] == "unsettled_usage"
        assert book.balance(account, "USDC").locked == 0
    finally:
        book.close()


def test_door__session_key__queued_when_signed_by_a_bound_wallet(world: World) -> None:
    _, wallet = world.buyer(USDC)
    key, stranger = Account.create(), Account.create()
    terms = {"account": wallet.address, "asset": ADDRESSES["USDC"], "key": key.address, "lanes": 4,
             "maximum": 5 * USDC, "expiry": world.chain.now() + 86_400, "nonce": 0}  # fmt: skip

    def body(signer: Any, **change: Any) -> dict[str, Any]:
        signed = {**terms, **change}
        signature = sign_session_key(signer.key, chain_id=CHAIN_ID, vault=VAULT, **signed)
        return {**signed, "asset": "USDC", "maximum": str(signed["maximum"]), "signature": "0x" + signature.hex()}

    assert world.post(body(stranger), "/v1/session-keys")[1]["error"]["code"] == "wrong_signer"
    refused = world.post(body(stranger, account=stranger.address), "/v1/session-keys")
    assert refused[0] == 403 and refused[1]["error"]["code"] == "not_bound"
    assert world.post(body(wallet, lanes=65), "/v1/session-keys")[1]["error"]["code"] == "bad_lanes"
    # What the vault would refuse or cut, refused by the same check as the dashboard's route:
    # an expiry past (chain time) or beyond its range, a maximum beyond what it holds, a replay.
    world.book.register_session(
        f"0x{1:064x}:0", address=wallet.address, asset="USDC", asset_address=ADDRESSES["USDC"], chain_id=CHAIN_ID,
        vault=VAULT, key=key.address, session=0, lanes=4, maximum=5 * USDC, expiry=terms["expiry"], signed_from=1,
    )  # fmt: skip
    for change, code in [
        ({"nonce": 0}, "replayed"),
        ({"nonce": 1, "expiry": world.chain.now()}, "expired"),
        ({"nonce": 1, "expiry": 2**32}, "bad_expiry"),
        ({"nonce": 1, "maximum": 2**96}, "bad_maximum"),
    ]:
        status, refusal = world.post(body(wallet, **change), "/v1/session-keys")
        assert (status, refusal["error"]["code"]) == (400, code), refusal
    # While session 0's vouchers settle the vault takes no next one: refused, saying why and until when.
    status, refusal = world.post(body(wallet, nonce=1), "/v1/session-keys")
    assert (status, refusal["error"]["code"]) == (409, "session_not_over"), refusal
    said = refusal["error"]["message"]
    assert f"session 0 in USDC is in force until {utc_text(terms['expiry'])}: revoke it first" in said
    ends_at = world.chain.now() + 15
    world.book.revoke_session(event_id(), address=wallet.address, asset="USDC", session=0, ends_at=ends_at)
    status, refusal = world.post(body(wallet, nonce=1), "/v1/session-keys")
    assert (status, refusal["error"]["code"]) == (409, "session_not_over"), refusal
    assert f"its vouchers settle until {utc_text(ends_at)}" in refusal["error"]["message"]
    assert world.coordinator.store.session_keys() == []
    world.chain.time = ends_at + 1  # the revoked session's last window is over
    got, answer = world.post(body(wallet, nonce=1), "/v1/session-keys")
    assert got == 200 and answer["account"] == wallet.address
    (queued,) = world.coordinator.store.session_keys()
    assert (queued.id, queued.address, queued.key, queued.maximum) == (answer["queued"], wallet.address, key.address,
                                                                        5 * USDC)  # fmt: skip


def test_door__session_key__after_an_expired_session__409_until_its_last_window_closes(world: World) -> None:
    """An expired session's vouchers settle until the close of its last window, which the
    indexer records (`settles_until`): the vault takes no next SessionKey before it. Before,
    the door queued it and the relay's registration was rejected."""
    _, wallet = world.buyer(USDC)
    key = Account.create()
    now = world.chain.now()
    world.book.register_session(
        f"0x{2:064x}:0", address=wallet.address, asset="USDC", asset_address=ADDRESSES["USDC"], chain_id=CHAIN_ID,
        vault=VAULT, key=key.address, session=0, lanes=1, maximum=USDC, expiry=now - 5, signed_from=1,
        settles_until=now + 20,
    )  # fmt: skip
    terms = {"account": wallet.address, "asset": ADDRESSES["USDC"], "key": key.address, "lanes": 1,
             "maximum": USDC, "expiry": now + 86_400, "nonce": 1}  # fmt: skip
    signature = sign_session_key(wallet.key, chain_id=CHAIN_ID, vault=VAULT, **terms)
    body = {**terms, "asset": "USDC", "maximum": str(USDC), "signature": "0x" + signature.hex()}
    status, refusal = world.post(body, "/v1/session-keys")
    assert (status, refusal["error"]["code"]) == (409, "session_not_over"), refusal
    assert f"its vouchers settle until {utc_text(now + 20)}" in refusal["error"]["message"]
    assert world.coordinator.store.session_keys() == []
    world.chain.time = now + 21
    assert world.post(body, "/v1/session-keys")[0] == 200


def test_door__session_key__another_with_a_queued_nonce_409__the_same_again_idempotent__a_rejected_one_replaced(
    world: World,
) -> None:
    """claims s16: a second SessionKey with the nonce of one queued (`session create` run
    twice before the relay's pass) was answered 200 "queued" while the relay registered the
    first: the buyer's grant held a key the vault never had. And a SessionKey the relay
    rejected (the vault refused it; its nonce unused on chain) kept that nonce for good:
    every one signed again with it was answered "queued" and never relayed."""
    _, wallet = world.buyer(USDC)
    first, second = Account.create(), Account.create()

    def body(key: Any) -> dict[str, Any]:
        terms = {"account": wallet.address, "asset": ADDRESSES["USDC"], "key": key.address, "lanes": 2,
                 "maximum": USDC, "expiry": world.chain.now() + 86_400, "nonce": 0}  # fmt: skip
        signature = sign_session_key(wallet.key, chain_id=CHAIN_ID, vault=VAULT, **terms)
        return {**terms, "asset": "USDC", "maximum": str(USDC), "signature": "0x" + signature.hex()}

    status, queued = world.post(body(first), "/v1/session-keys")
    assert status == 200 and world.post(body(first), "/v1/session-keys") == (200, queued)  # the same: idempotent
    status, refusal = world.post(body(second), "/v1/session-keys")
    assert (status, refusal["error"]["code"]) == (409, "already_queued"), refusal
    assert first.address in refusal["error"]["message"] and "nonce 1" in refusal["error"]["message"]
    (kept,) = world.coordinator.store.session_keys()
    assert kept.key == first.address
    world.coordinator.store.close_session_key(kept.id, REJECTED, "the vault refused it")
    status, requeued = world.post(body(second), "/v1/session-keys")
    assert status == 200, requeued
    (replaced,) = world.coordinator.store.session_keys()
    assert (replaced.id, replaced.key, replaced.status, replaced.tx_id) == (kept.id, second.address, "pending", None)


def test_door__session_key_signed_by_a_wallet_the_account_s_settlements_do_not_debit__403_nothing_queued(
    world: World,
) -> None:
    """wbreak s15: the vault takes an account's usage from its first bound wallet alone, and
    a later wallet's session is not the account's (`wallets.governed_account`); the door
    relayed a later wallet's SessionKey all the same (its gas paid, checked for a replay
    against the first wallet's sessions), and every voucher the buyer then signed under it
    was refused by the gateway. Refused now, naming the wallet to sign with."""
    account, first = world.buyer(USDC)
    later = Account.create()
    message = world.book.issue_binding_challenge(account, later.address)
    world.book.bind_wallet(message, sign(message, later.key))
    terms = {"account": later.address, "asset": ADDRESSES["USDC"], "key": Account.create().address, "lanes": 1,
             "maximum": USDC, "expiry": world.chain.now() + 86_400, "nonce": 0}  # fmt: skip
    signature = sign_session_key(later.key, chain_id=CHAIN_ID, vault=VAULT, **terms)
    body = {**terms, "asset": "USDC", "maximum": str(USDC), "signature": "0x" + signature.hex()}
    status, refusal = world.post(body, "/v1/session-keys")
    assert (status, refusal["error"]["code"]) == (403, "not_debited"), refusal
    assert first.address in refusal["error"]["message"] and refusal["error"]["wallet"] == first.address
    assert world.coordinator.store.session_keys() == []


def test_door__a_standby_coordinator__503_and_nothing_locked_or_used(world: World) -> None:
    account, wallet = world.buyer(20 * USDC)
    leader = Coordinator(world.book.engine, world.chain, holder="leader", clock=world.book.clock, tx_timeout=0)
    world.coordinator.store.release_lease("door")
    assert leader.store.acquire_lease("leader", 30)

    got, answer = world.post(world.request(wallet, USDC))

    assert got == 503 and answer["error"]["code"] == "standby"
    assert world.book.balance(account, "USDC").locked == 0
    assert world.client.get("/v1/exits/nonce", params={"account": wallet.address}).json()["nonce"] == 0
