"""The coordinator's part of signed mode (issue 23), against the in-memory vault: it relays
wallet-signed SessionKeys as it relays spend caps, each signed transaction stored first,
and settles signed-mode usage with `settle_signed` batches — per lane, what the ledger
charged beyond what the chain settled, within the lane's highest voucher; several batches
a window; a lane the vault refuses held back alone; a lost batch planned again."""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any

import pytest
from coordinator_fakes import ADDRESSES, CHAIN_ID, VAULT, FakeChain
from eth_account import Account
from ledger_helpers import event_id, fund

from promptex.coordinator.service import Coordinator
from promptex.ledger import Ledger, Reservation, UsageRecord
from promptex.ledger.holds import ExtraTake
from promptex.ledger.lanes import NAME, Voucher
from promptex.ledger.usage import SIGNED
from promptex.protocol.escrow import KIND_LISTED
from promptex.protocol.vault import sign_voucher

LOT = 2
_requests = itertools.count()


def test_session_keys__relayed_once__refused_one_rejected__sent_again_after_a_lost_broadcast(book: Ledger) -> None:
    chain = FakeChain()
    coord = Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0)
    wallet, key = Account.create().address, Account.create().address
    args = ("USDC", key, 4, 5_000_000, chain.now() + 86_400)
    good = coord.submit_session_key(wallet, *args, 0, b"sig")
    assert coord.submit_session_key(wallet, *args, 0, b"sig") == good  # idempotent per (wallet, asset, nonce)
    bad = coord.submit_session_key(Account.create().address, *args, 0, b"bad")
    unknown = coord.store.add_session_key(wallet, "XYZ", key, 4, 5, chain.now() + 60, 0, "0x00", book.clock())
    chain.lose = True  # the first broadcast vanishes: the same signed bytes go again
    assert coord.run_once().session_keys == 0
    chain.lose = False
    assert coord.run_once().session_keys == 1
    assert chain.s.session_keys == {(wallet, "USDC"): (key, 4, 5_000_000, chain.now() + 86_400, 0)}
    statuses = {k.id: k.status for k in coord.store.session_keys(("registered", "rejected"))}
    assert statuses == {good: "registered", bad: "rejected", unknown: "rejected"}
    assert coord.run_once().session_keys == 0  # nothing sent twice


class SignedBuyer:
    """An account in signed mode: registered on the fake vault and in the ledger (as the
    indexer records it), charged lane by lane as the gateway charges."""

    def __init__(self, book: Ledger, chain: FakeChain, funds: int, lanes: int = 2, maximum: int = 10**9) -> None:
        self.book, self.account = book, book.create_account().id
        self.address = fund(book, self.account, "USDC", funds)
        chain.s.balances[(self.address, "USDC")] = funds
        self.key = Account.create()
        chain.s.sessions[(self.address, "USDC")] = (self.key.address, 1, lanes, maximum)
        book.register_session(
            event_id(), address=self.address, asset="USDC", asset_address=ADDRESSES["USDC"], chain_id=CHAIN_ID,
            vault=VAULT, key=self.key.address, session=1, lanes=lanes, maximum=maximum, expiry=book.clock() + 86_400,
            signed_from=0,
        )  # fmt: skip

    def spend(self, lane: int, cost: int, hold: int = 1_000, signer: Any = None) -> str:
        charged = self.book.lane(self.account, "USDC", 1, lane).charged
        ceiling = charged + hold
        fields = {"account": self.address, "asset": ADDRESSES["USDC"], "session": 1, "lane": lane, "ceiling": ceiling}
        signature = sign_voucher((signer or self.key).key, chain_id=CHAIN_ID, vault=VAULT, **fields)
        request_id = f"sig_{next(_requests)}"
        self.book.vouchers.plan(request_id, Voucher(1, lane, ceiling, "0x" + signature.hex()))
        self.book.holds.reserve(
            Reservation(request_id, self.account, "USDC", hold, 60, extras=(ExtraTake(NAME, ceiling),))
        )
        self.book.vouchers.plan(request_id, None)
        record = UsageRecord(
            "gpt-4o", 100, 10, cost // 3 + 1, gateway_lot_id=9, chain_lot_id=LOT, lot_kind="listed", fee_bps=500,
            mode=SIGNED, voucher_session=1, voucher_lane=lane, voucher_ceiling=ceiling,
        )  # fmt: skip
        self.book.holds.settle(request_id, cost, record=record)
        return request_id


def test_settle_signed__lanes_within_their_vouchers__several_batches_a_window__bad_lane_alone_held(
    book: Ledger,
) -> None:
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED, "USDC")
    coord = Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0)
    a, b = SignedBuyer(book, chain, 10_000), SignedBuyer(book, chain, 10_000)
    a.spend(0, 300), a.spend(0, 200), a.spend(1, 50), b.spend(0, 400)
    report = coord.run_once()
    assert report.confirmed == [("USDC", 1)] and chain.s.settlements == [("USDC", 1)]
    assert chain.lane_settled(a.address, "USDC", 0) == 500 and chain.lane_settled(a.address, "USDC", 1) == 50
    assert chain.balance_of(a.address, "USDC") == 10_000 - 550 and chain.balance_of(b.address, "USDC") == 9_600
    assert book.lane(a.account, "USDC", 1, 0).settled == 500  # what GET /v1/promptex/lanes reports
    assert coord.run_once().confirmed == []  # nothing twice

    a.spend(0, 100)  # the same window: signed batches are not one per window
    bad = b.spend(1, 70, signer=Account.create())  # a voucher the vault refuses: its lane alone waits
    assert coord.run_once().confirmed == [("USDC", 2)]
    assert chain.lane_settled(a.address, "USDC", 0) == 600 and chain.lane_settled(b.address, "USDC", 1) == 0
    held = book.usage_record(bad)
    assert (
        held is not None
        and held.status == "quarantined"
        and "not signed by the session key" in (held.quarantine_reason or "")
    )


def test_settle_signed__killed_as_the_batch_is_confirmed__the_lanes_settled_totals_set_after_the_restart(
    book: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coordinator killed as it records a landed signed batch (its lanes' settled totals
    unread): the restart's pass finds the batch landed and sets them from the chain. Before
    (xbreak s18) the batch was confirmed first, then the lanes set: killed between the two,
    the ledger's lane (what GET /v1/promptex/lanes reports) stayed behind the chain for good."""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED, "USDC")
    a = SignedBuyer(book, chain, 10_000)
    a.spend(0, 300), a.spend(1, 50)

    class Killed(BaseException):
        """Stands in for kill -9 there."""

    def killed(_self: Coordinator, _batch: Any) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Coordinator, "_lanes_settled", killed)
        with pytest.raises(Killed):
            Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0).run_once()
    Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0).run_once()  # restarted
    assert chain.s.settlements == [("USDC", 1)]  # posted once
    assert [book.lane(a.account, "USDC", 1, lane).settled for lane in (0, 1)] == [300, 50]
    assert [chain.lane_settled(a.address, "USDC", lane) for lane in (0, 1)] == [300, 50]


@pytest.mark.parametrize("deep", [False, True], ids=["within_the_window", "deeper_than_the_window"])
def test_settle_signed__a_reorg_orphans_the_landed_batch__the_lanes_settled_totals_follow_the_chain(
    book: Ledger, deep: bool
) -> None:
    """A reorg orphans a landed signed batch: its batch is reopened — found by the receipt
    re-check (`_orphaned`), or, deeper than its window, by the epoch re-check
    (`_recheck_confirmed`) — and its lanes' settled totals go back to what the vault now
    holds (until it lands again, or fails and its records are planned again). Before (xbreak
    s18), they stayed at the orphaned settle's: GET /v1/promptex/lanes reported them
    settled, and the unanswered-settle give-back's lane guard (`charged - cost < settled`)
    read a total the chain no longer had."""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED, "USDC")
    coord = Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0)
    a = SignedBuyer(book, chain, 10_000)
    a.spend(0, 300), a.spend(1, 50)
    fork = copy.deepcopy(chain.s), dict(chain.receipts)
    assert coord.run_once().confirmed == [("USDC", 1)]
    assert [book.lane(a.account, "USDC", 1, lane).settled for lane in (0, 1)] == [300, 50]
    if deep:  # its receipt sinks below the receipt re-check's window
        chain.mine_blocks(coord.reorg_window + 1)
        coord.run_once()
    chain.s, chain.receipts = copy.deepcopy(fork[0]), dict(fork[1])  # a reorg: the settle orphaned
    chain.hold = True  # its bytes, sent again, wait in the mempool
    if deep:  # and its nonce taken on the new branch: only the epoch re-check sees it gone
        chain.burn_nonce()
    coord.run_once()
    assert [chain.lane_settled(a.address, "USDC", lane) for lane in (0, 1)] == [0, 0]
    assert [book.lane(a.account, "USDC", 1, lane).settled for lane in (0, 1)] == [0, 0]  # before: [300, 50]
    chain.hold = False
    chain.mine()  # it lands again (deep: its batch fails, its records are planned again and land)
    for _ in range(4):
        chain.mine_blocks(coord.reorg_window)
        coord.run_once()
    assert chain.s.settlements == [("USDC", 1)]
    assert [book.lane(a.account, "USDC", 1, lane).settled for lane in (0, 1)] == [300, 50]


def test_settle_signed__lost_batch__its_records_planned_again_nothing_lost(book: Ledger) -> None:
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED, "USDC")
    coord = Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0)
    a = SignedBuyer(book, chain, 10_000)
    first = a.spend(0, 300)
    chain.lose = True  # broadcast, never mined: the batch cannot land
    coord.run_once()
    chain.burn_nonce()  # its nonce goes to another transaction: the batch fails, its records back to pending
    chain.lose = False
    coord.run_once()
    coord.run_once()
    assert chain.lane_settled(a.address, "USDC", 0) == 300  # settled once, under a later epoch
    record = book.usage_record(first)
    assert record is not None and record.status == "batched"


def test_way_back__capped_records_after_the_cap_and_the_old_sessions_lanes__each_in_its_own_batch_once(
    book: Ledger,
) -> None:
    """After an account left signed mode (a spend cap after its session), its records of one
    asset are of both modes: the session's lane charges settle by `settle_signed` (their
    voucher), the requests served capped since by `settle` (the cap) — each record in one
    batch, each debited once. (The vault refuses the session's vouchers after its last window
    and any cap before it, so the two never overlap on chain; the coordinator plans by each
    record's mode, and `session_lanes` takes the newest session, ended or not.)"""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED, "USDC")
    coord = Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0)
    a = SignedBuyer(book, chain, 10_000)
    signed = [a.spend(0, 300), a.spend(1, 50)]  # not settled yet when the session ends
    book.revoke_session(event_id(), address=a.address, asset="USDC", session=1, ends_at=book.clock())
    book.apply_chain_facts(lambda facts: facts.register_spend_cap(event_id(), a.address, "USDC", 5_000))
    capped = f"cap_{next(_requests)}"
    book.holds.reserve(Reservation(capped, a.account, "USDC", 1_000, 60))
    record = UsageRecord("gpt-4o", 100, 10, 70, gateway_lot_id=9, chain_lot_id=LOT, lot_kind="listed", fee_bps=500)
    book.holds.settle(capped, 200, record=record)

    assert coord.run_once().confirmed == [("USDC", 1), ("USDC", 2)]  # the capped batch first, then the signed one
    assert chain.lane_settled(a.address, "USDC", 0) == 300 and chain.lane_settled(a.address, "USDC", 1) == 50
    assert chain.balance_of(a.address, "USDC") == 10_000 - 350 - 200  # each charge debited once
    modes = {}
    for request_id in (*signed, capped):
        stored = book.usage_record(request_id)
        assert stored is not None and stored.status == "batched"
        modes[request_id] = (stored.mode, stored.epoch)
    assert modes == {signed[0]: ("signed", 2), signed[1]: ("signed", 2), capped: ("capped", 1)}
    assert coord.run_once().confirmed == []  # nothing twice


def test_settle_signed__confirmed_after_the_buyer_s_next_session__the_batch_s_lanes_never_lowered(
    book: Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """review1 F6: the vault reads the lanes of the account's LAST registered session. A
    coordinator killed between landing a batch and confirming it, restarted after the buyer's
    next session was registered on chain (not yet indexed): before, the restart's pass wrote
    the new session's lane totals (0) onto the ledger's current session — the batch's own —
    and `set_settled` overwrote: lane 0's 300, settled by an earlier batch, went to 0 (the
    unanswered give-back's guard then reads a total below what the chain settled). Now the
    lane is read only while the vault's session is the batch's, and a total is never lowered
    but by a reorg (`test_settle_signed__a_reorg_orphans…`)."""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED, "USDC")
    a = SignedBuyer(book, chain, 10_000)
    a.spend(0, 300)
    Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0).run_once()
    assert book.lane(a.account, "USDC", 1, 0).settled == 300
    a.spend(0, 100)

    class Killed(BaseException):
        """Stands in for kill -9 there."""

    def killed(_self: Coordinator, _batch: Any, **_: Any) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Coordinator, "_lanes_settled", killed)
        with pytest.raises(Killed):
            Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0).run_once()
    assert chain.lane_settled(a.address, "USDC", 0) == 400
    # The buyer's next session registered on chain: the vault's lane views now read its lanes (0).
    chain.s.sessions[(a.address, "USDC")] = (Account.create().address, 2, 2, 10**9)
    chain.s.lane_settled[(a.address, "USDC", 0)] = 0
    with caplog.at_level(logging.WARNING, logger="promptex.coordinator"):
        Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0).run_once()  # restarted
    assert len(chain.s.settlements) == 2  # each batch posted once
    assert book.lane(a.account, "USDC", 1, 0).settled == 300  # before: 0
    assert book.lane(a.account, "USDC", 2, 0).settled == 0  # nothing written onto a session the ledger lacks
    assert any("session 1 not read: the vault now reads session 2" in r.getMessage() for r in caplog.records)
