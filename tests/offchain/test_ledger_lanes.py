"""Signed mode's lanes in the ledger (issue 23): a hold with a voucher takes its lane in the
hold's own transaction — one request in flight per lane, the hold exactly ceiling −
charged, the lanes' ceilings within the balance less pending exits — and settling,
releasing or sweeping the hold frees the lane. On SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address
from ledger_helpers import event_id, fund

from promptex.indexer import effects
from promptex.indexer.decode import Event
from promptex.indexer.followed import VAULT as VAULT_SOURCE
from promptex.ledger import Ledger, Reservation, UsageRecord, sessions
from promptex.ledger.binding import sign
from promptex.ledger.holds import ExtraTake
from promptex.ledger.lanes import (
    NAME,
    CeilingBelowCharged,
    LaneBusy,
    SessionClosed,
    Voucher,
    VoucherAboveBalance,
    VoucherUsed,
)
from promptex.ledger.usage import SIGNED
from promptex.protocol.units import USD_MICRO as USDC

ASSET = "USDC"
VAULT = "0x" + "ab" * 20
TOKEN = "0x" + "cd" * 20
KEY = "0x" + "ef" * 20
VAULT_CHECKSUM, TOKEN_CHECKSUM, KEY_CHECKSUM = (to_checksum_address(a) for a in (VAULT, TOKEN, KEY))


def _signed(ledger: Ledger, *, balance: int = 10 * USDC, lanes: int = 2, maximum: int = 100 * USDC) -> int:
    account = ledger.create_account().id
    address = fund(ledger, account, ASSET, balance)
    ledger.register_session(
        event_id(),
        address=address,
        asset=ASSET,
        asset_address=TOKEN,
        chain_id=31337,
        vault=VAULT,
        key=KEY,
        session=1,
        lanes=lanes,
        maximum=maximum,
        expiry=ledger.clock() + 86_400,
        signed_from=2,
    )
    return account


def _hold(ledger: Ledger, account: int, request_id: str, lane: int, ceiling: int, charged: int = 0) -> None:
    ledger.vouchers.plan(request_id, Voucher(1, lane, ceiling, "0x" + "11" * 65))
    try:
        ledger.holds.reserve(
            Reservation(request_id, account, ASSET, ceiling - charged, 60, extras=(ExtraTake(NAME, ceiling),))
        )
    finally:
        ledger.vouchers.plan(request_id, None)


def _record(lane: int, ceiling: int) -> UsageRecord:
    return UsageRecord("m", 1, 1, 1, mode=SIGNED, voucher_session=1, voucher_lane=lane, voucher_ceiling=ceiling)


def test_lane__one_request_in_flight__settle_charges_and_frees_it(ledger: Ledger):
    account = _signed(ledger)
    assert ledger.session(account, ASSET).maximum == 100 * USDC
    assert ledger.balance(account, ASSET).cap_remaining == 100 * USDC  # the session's maximum
    _hold(ledger, account, "r1", 0, 2 * USDC)
    with pytest.raises(LaneBusy):
        _hold(ledger, account, "r2", 0, 2 * USDC)
    _hold(ledger, account, "r3", 1, USDC)  # another lane is free
    ledger.holds.settle("r1", 500_000, record=_record(0, 2 * USDC))
    lane = ledger.lane(account, ASSET, 1, 0)
    assert (lane.charged, lane.inflight, lane.voucher.ceiling) == (500_000, None, 2 * USDC)
    with pytest.raises(CeilingBelowCharged):
        _hold(ledger, account, "r4", 0, 400_000, charged=399_999)
    with pytest.raises(LaneBusy):  # a hold that is not ceiling − charged: the client's view is stale
        _hold(ledger, account, "r5", 0, 3 * USDC, charged=0)
    _hold(ledger, account, "r6", 0, 3 * USDC, charged=500_000)
    ledger.holds.release("r6")
    assert ledger.lane(account, ASSET, 1, 0).inflight is None
    assert ledger.lane(account, ASSET, 1, 0).voucher.ceiling == 3 * USDC  # the highest is kept
    ledger.holds.release("r3")


def test_lane__ceilings_beyond_balance_less_exits__refused(ledger: Ledger):
    account = _signed(ledger, balance=5 * USDC)
    _hold(ledger, account, "a", 0, 3 * USDC)
    ledger.holds.settle("a", USDC, record=_record(0, 3 * USDC))  # lane 0: 2 USDC of slack stays exposed
    # 4 USDC posted now; lane 0 can still take 2 more: lane 1 may have a ceiling of 2 at most.
    with pytest.raises(VoucherAboveBalance) as refused:
        _hold(ledger, account, "b", 1, 2 * USDC + 1)
    assert refused.value.available == 2 * USDC
    address = ledger.wallets(account)[0]
    ledger.lock_for_exit(event_id(), address, ASSET, USDC)  # a pending exit lowers it by as much
    with pytest.raises(VoucherAboveBalance):
        _hold(ledger, account, "c", 1, 2 * USDC)
    _hold(ledger, account, "d", 1, USDC)
    ledger.holds.release("d")


def test_lane__swept_hold__frees_the_lane(ledger: Ledger, clock):
    account = _signed(ledger)
    _hold(ledger, account, "dead", 0, USDC)
    clock.advance(61)
    assert ledger.sweep_expired() == 1
    assert ledger.lane(account, ASSET, 1, 0).inflight is None
    with pytest.raises(VoucherUsed):  # a voucher serves once: the swept one's ceiling is spent
        _hold(ledger, account, "again", 0, USDC)
    _hold(ledger, account, "next", 0, USDC + 1)
    ledger.holds.release("next")


def test_lane__revoked_or_other_session__refused(ledger: Ledger):
    account = _signed(ledger)
    address = ledger.wallets(account)[0]
    ledger.vouchers.plan("x", Voucher(2, 0, USDC, "0x" + "11" * 65))
    with pytest.raises(SessionClosed):
        ledger.holds.reserve(Reservation("x", account, ASSET, USDC, 60, extras=(ExtraTake(NAME, USDC),)))
    ledger.revoke_session(event_id(), address=address, asset=ASSET, session=1, ends_at=ledger.clock() + 600)
    with pytest.raises(SessionClosed):
        _hold(ledger, account, "y", 0, USDC)
    assert ledger.balance(account, ASSET).held == 0  # nothing of a refused hold stays


def _event(name: str, args: dict[str, object], log_index: int) -> Event:
    return Event(VAULT_SOURCE, name, VAULT_CHECKSUM, 7, "0x" + "77" * 32, "0x" + "88" * 32, log_index, args)


def test_indexer_effects__session_events__registered_revoked_unwound_and_carried_to_the_bound_account(
    ledger: Ledger,
):
    wallet = Account.create()
    symbol = {TOKEN_CHECKSUM: ASSET}.__getitem__
    registered = _event(
        "SessionKeyRegistered",
        {"account": wallet.address, "asset": TOKEN_CHECKSUM, "key": KEY_CHECKSUM, "session": 3, "lanes": 4,
         "maximum": 7 * USDC, "expiry": ledger.clock() + 3_600, "signed_from": 9},
        0,
    )  # fmt: skip
    revoked = _event(
        "SessionKeyRevoked", {"account": wallet.address, "asset": TOKEN_CHECKSUM, "session": 3, "ends_at": 99}, 1
    )
    for event in (registered, revoked):
        assert ledger.apply_chain_facts(lambda facts, e=event: effects.apply(facts, e, f"{e.log_index}", symbol, "", 5))
    account = ledger.create_account().id  # bound after the events: the session follows its wallet
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    session = ledger.session(account, ASSET)
    assert session is not None
    assert (session.session, session.lanes, session.chain_id, session.vault, session.key) == (
        3, 4, 5, VAULT_CHECKSUM, KEY_CHECKSUM
    )  # fmt: skip
    assert (session.ends_at, session.signed_from, session.open_at(ledger.clock())) == (99, 9, False)
    assert ledger.balance(account, ASSET).cap_remaining == 7 * USDC
    assert ledger.unwind_chain_fact("1")  # a reorg orphaned the revocation: open again
    assert ledger.session(account, ASSET).open_at(ledger.clock())
    assert ledger.unwind_chain_fact("0")  # and the registration: capped mode, its cap back
    assert ledger.session(account, ASSET) is None
    assert ledger.balance(account, ASSET).cap_remaining == 0


def test_usage_record__mode_and_voucher__kept_on_every_settle_path(ledger: Ledger):
    account = ledger.create_account().id
    fund(ledger, account, "CLD", 10**20)
    ceiling = 3 * 10**19  # beyond 2**63: an exact amount on both databases
    ledger.holds.reserve(Reservation("plain", account, "CLD", 10**18, 60))  # no extras: the fast paths
    record = UsageRecord("m", 1, 1, 1, mode=SIGNED, voucher_session=5, voucher_lane=3, voucher_ceiling=ceiling)
    ledger.holds.settle("plain", 10**17, record=record)
    stored = ledger.usage_record("plain")
    assert stored is not None
    assert (stored.mode, stored.voucher_session, stored.voucher_lane, stored.voucher_ceiling) == (
        "signed",
        5,
        3,
        ceiling,
    )
    ledger.holds.reserve(Reservation("bad", account, "CLD", 10**18, 60))
    with pytest.raises(ValueError):  # a signed record names its voucher
        ledger.holds.settle("bad", 1, record=UsageRecord("m", 1, 1, 1, mode=SIGNED))
    ledger.holds.release("bad")


def test_spend_cap_after_a_session__capped_again__not_a_cap_before_nor_a_revoked_one__unwound(ledger: Ledger):
    """The way back from signed mode: the vault takes a spend cap only once the session's
    vouchers no longer settle, so a SpendCapRegistered indexed after the newest session ends
    it for good and the account pays capped again; a cap from before the session, or a
    SpendCapRevoked (the vault takes one any time), does not. A reorg undoes it."""
    account = ledger.create_account().id
    address = fund(ledger, account, ASSET, 10 * USDC)
    symbol = {TOKEN_CHECKSUM: ASSET}.__getitem__
    cap = {"account": address, "asset": TOKEN_CHECKSUM, "per_epoch": USDC, "expiry": 2**32 - 1, "nonce": 0}
    events = {
        "before": _event("SpendCapRegistered", {**cap, "total": 3 * USDC}, 0),
        "session": _event(
            "SessionKeyRegistered",
            {
                "account": address,
                "asset": TOKEN_CHECKSUM,
                "key": KEY_CHECKSUM,
                "session": 1,
                "lanes": 2,
                "maximum": 5 * USDC,
                "expiry": ledger.clock() + 3_600,
                "signed_from": 9,
            },
            1,
        ),
        "revoked cap": _event("SpendCapRevoked", {"account": address, "asset": TOKEN_CHECKSUM, "expiry": 1}, 2),
    }
    for name, event in events.items():
        assert ledger.apply_chain_facts(lambda facts, e=event, n=name: effects.apply(facts, e, n, symbol, "", 31337))
    session = ledger.session(account, ASSET)
    assert session is not None and session.capped_by is None
    assert sessions.mode(session, ledger.clock()) == sessions.SIGNED
    assert ledger.balance(account, ASSET).cap_remaining == 5 * USDC  # the session's maximum: the revoked cap's 0 not
    _hold(ledger, account, "used", 0, USDC)  # lane 0 used once: the next voucher takes SQLite's fast path
    ledger.holds.settle("used", 1_000, record=_record(0, USDC))

    after = _event("SpendCapRegistered", {**cap, "total": 4 * USDC, "nonce": 2}, 3)
    assert ledger.apply_chain_facts(lambda facts: effects.apply(facts, after, "after", symbol, "", 31337))
    session = ledger.session(account, ASSET)
    assert session is not None and session.capped_by == "after"
    assert sessions.mode(session, ledger.clock()) == sessions.CAPPED
    assert session.ended_why(ledger.clock()) == "session 1 is over: a spend cap was set after it"
    assert ledger.balance(account, ASSET).cap_remaining == 4 * USDC  # the new cap's, not the session's
    with pytest.raises(SessionClosed):  # no voucher of it is taken again, on either path
        _hold(ledger, account, "late", 0, 2 * USDC, charged=1_000)
    assert ledger.balance(account, ASSET).held == 0

    assert ledger.unwind_chain_fact("after")  # a reorg orphaned the cap: the session is current again
    session = ledger.session(account, ASSET)
    assert session is not None and session.capped_by is None and session.open_at(ledger.clock())
    assert ledger.balance(account, ASSET).cap_remaining == 5 * USDC - 1_000


def test_indexer_effects__session_registered__its_last_settlement_second_from_the_vaults_clock(ledger: Ledger):
    """The indexer reads the vault's epoch clock (genesis, epoch_length: immutable) once and
    records with each session the close of its last window (what `session_key(...)[6]`
    answers: tests/contracts/test_vault_signed.py checks the formula against the vault);
    without it the session's close is taken to be its expiry, never later than the chain's."""
    from eth_abi.abi import encode
    from indexer_fakes import followed

    from promptex.indexer.rpc import RpcClient
    from promptex.indexer.service import EPOCH_LENGTH_SELECTOR, GENESIS_SELECTOR, Indexer, IndexerError

    calls: list[tuple[str, str]] = []

    def node(request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content)
        to, data = payload["params"][0]["to"], payload["params"][0]["data"]
        calls.append((to, data))
        value = {GENESIS_SELECTOR: 1_000_000, EPOCH_LENGTH_SELECTOR: 600}.get(data)
        answer: dict[str, object] = {"jsonrpc": "2.0", "id": payload["id"]}
        if value is None or to != VAULT_CHECKSUM:
            return httpx.Response(200, json={**answer, "error": {"code": 3, "message": "execution reverted"}})
        return httpx.Response(200, json={**answer, "result": "0x" + encode(["uint256"], [value]).hex()})

    indexer = Indexer(ledger, RpcClient("http://x", transport=httpx.MockTransport(node)), followed())
    assert indexer._clock(VAULT_CHECKSUM) == (1_000_000, 600) == indexer._clock(VAULT_CHECKSUM)
    assert len(calls) == 2  # read once
    with pytest.raises(IndexerError, match="epoch clock"):
        indexer._clock(KEY_CHECKSUM)

    symbol = {TOKEN_CHECKSUM: ASSET}.__getitem__
    wallets = [Account.create() for _ in range(3)]
    expiry = 1_000_000 + 600 * 50 + 17  # in window 50: the last window is 51, closing at genesis + 52 × 600 − 1
    for i, (wallet, signed_from, clock) in enumerate(
        [(wallets[0], 9, indexer._clock), (wallets[1], 60, indexer._clock), (wallets[2], 9, None)]
    ):
        registered = _event(
            "SessionKeyRegistered",
            {"account": wallet.address, "asset": TOKEN_CHECKSUM, "key": KEY_CHECKSUM, "session": 0, "lanes": 1,
             "maximum": USDC, "expiry": expiry, "signed_from": signed_from},
            i,
        )  # fmt: skip
        assert ledger.apply_chain_facts(
            lambda facts, e=registered, c=clock: effects.apply(facts, e, f"r{e.log_index}", symbol, "", 5, c)
        )
    found = []
    for wallet in wallets:
        account = ledger.create_account().id
        message = ledger.issue_binding_challenge(account, wallet.address)
        ledger.bind_wallet(message, sign(message, wallet.key))
        found.append(ledger.session(account, ASSET))
    assert [s.settles_until for s in found] == [1_000_000 + 52 * 600 - 1, 1_000_000 + 61 * 600 - 1, None]
    assert [s.settlement_close() for s in found] == [1_000_000 + 52 * 600 - 1, 1_000_000 + 61 * 600 - 1, expiry]
    assert sessions.settlement_close(expiry, 9, 1_000_000, 600) == found[0].settles_until
    revoked = dataclasses.replace(found[0], ends_at=1_000_000 + 40 * 600 - 1)
    assert revoked.settlement_close() == 1_000_000 + 40 * 600 - 1  # a revocation ends it sooner
