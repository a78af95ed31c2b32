"""The coordinator against a fake chain: aggregation, quarantine, the crash-safe state
machine, the leader lease, spend caps, releases, the proof/verify commands, and the
dashboard's views of usage and of an org's desk, read through the ledger."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from coordinator_fakes import FakeChain
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from ledger_helpers import bind_new_wallet, event_id, fund
from sqlalchemy import select, update

from promptex import proofs
from promptex.cli import coordinator as coordinator_cli
from promptex.cli.usage import usage_proof, usage_verify
from promptex.config import settings
from promptex.coordinator import factory, service
from promptex.coordinator.requests import Refused
from promptex.coordinator.schema import settlement_batches
from promptex.coordinator.service import Coordinator, ReleaseRefused
from promptex.dashboard import views
from promptex.dashboard.enterprise import desk_view
from promptex.gateway.buyers import member_key
from promptex.gateway.store import ApiKey, GatewayStore
from promptex.ledger import AccountKind, InsufficientFunds, Ledger, UsageRecord
from promptex.ledger.schema import balances, usage_records
from promptex.proofs import leaf_of
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, MAX_PRUNE_LOTS, listed_credit
from promptex.protocol.merkle import LEAF_V2, MerkleTree
from promptex.protocol.units import utc_text

CLD_LOT, USDC_LOT, OTHER_USDC_LOT = 1, 2, 3
_requests = itertools.count()


class Crash(BaseException):
    """Stands in for kill -9 at a named step."""


@pytest.fixture
def chain() -> FakeChain:
    fake = FakeChain()
    fake.open_lot(CLD_LOT, KIND_TOKENIZED, "CLD")
    fake.open_lot(USDC_LOT, KIND_LISTED)
    fake.open_lot(OTHER_USDC_LOT, KIND_LISTED)
    return fake


def coordinator(book: Ledger, chain: FakeChain, holder: str = "test") -> Coordinator:
    return Coordinator(book.engine, chain, holder=holder, clock=book.clock, tx_timeout=0)


def buyer(book: Ledger, chain: FakeChain, asset: str, amount: int, *, on_chain: int | None = None) -> tuple[int, str]:
    account = book.create_account().id
    address = fund(book, account, asset, amount)
    chain.s.balances[(address, asset)] = amount if on_chain is None else on_chain
    return account, address


def spend(
    book: Ledger, account: int, asset: str, cost: int, lot: int | None, *, kind: str | None = None, **tokens: int
) -> str:
    request_id = f"req_{next(_requests)}"
    book.reserve(account, asset, cost, request_id, ttl=60)
    kind = kind or ("listed" if asset == "USDC" else "tokenized")
    record = UsageRecord(
        model="gpt-4o" if asset == "USDC" else "claude-sonnet-4-5",
        input_tokens=1_000,
        output_tokens=200,
        list_usd_micro=cost // 3 + 1,
        gateway_lot_id=9,
        chain_lot_id=lot,
        lot_kind=kind,
        fee_bps=500 if asset == "USDC" else None,
        **tokens,
    )
    book.settle(request_id, cost, record=record)
    return request_id


def crash_at(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    fired = []

    def point(name: str) -> None:
        if name == step and not fired:
            fired.append(name)
            raise Crash(name)

    monkeypatch.setattr(service, "crash_point", point)


def test_settle__usage_in_two_assets__posted_once_each_and_matches_ledger(ledger: Ledger, chain: FakeChain) -> None:
    a, a_addr = buyer(ledger, chain, "CLD", 10**21)
    b, b_addr = buyer(ledger, chain, "USDC", 50_000_000)
    cld = [spend(ledger, a, "CLD", 3 * 10**18, CLD_LOT), spend(ledger, a, "CLD", 10**18, CLD_LOT)]
    usdc = [spend(ledger, b, "USDC", 1_050_000, USDC_LOT), spend(ledger, b, "USDC", 2_100_001, OTHER_USDC_LOT)]
    coord = Coordinator(ledger.engine, chain, holder="t", clock=ledger.clock, tx_timeout=0)

    report = coord.run_once()

    assert sorted(report.confirmed) == [("CLD", 1), ("USDC", 1)]
    assert chain.s.balances[(a_addr, "CLD")] == 10**21 - 4 * 10**18 == ledger.balance(a, "CLD").posted
    assert chain.s.balances[(b_addr, "USDC")] == 50_000_000 - 3_150_001 == ledger.balance(b, "USDC").posted
    # Σ burned == Σ drawn from the token's tokenized lots, in the same settlement.
    assert chain.s.burned == {"CLD": 4 * 10**18} and chain.s.consumed[CLD_LOT] == 4 * 10**18
    # Each listed lot is drawn by the list value it served; its seller earns the lot's rate of it.
    drawn = {USDC_LOT: 1_050_000 // 3 + 1, OTHER_USDC_LOT: 2_100_001 // 3 + 1}
    for lot_id, amount in drawn.items():
        assert chain.s.consumed[lot_id] == amount
        assert chain.s.claimable[(lot_id, "USDC")] == listed_credit(0, amount, 6_000)
    assert chain.s.reserve["USDC"] == 3_150_001 - sum(listed_credit(0, a, 6_000) for a in drawn.values())
    for asset, ids in (("CLD", cld), ("USDC", usdc)):
        records = [coord.store.record(r) for r in ids]
        assert all(r is not None and r.status == "batched" and r.epoch == 1 for r in records)
        tree = MerkleTree([leaf_of(r).hash() for r in records if r is not None])
        assert chain.s.roots[(asset, 1)] == tree.root
    assert coord.run_once().confirmed == []  # nothing new; and this window is settled
    spend(ledger, a, "CLD", 5, CLD_LOT)
    assert coord.run_once().confirmed == []  # one settlement per window
    chain.next_window()
    assert coord.run_once().confirmed == [("CLD", 2)]
    assert sorted(chain.s.settlements) == [("CLD", 1), ("CLD", 2), ("USDC", 1)]


def test_quarantine__no_chain_lot_no_wallet_closed_lot__set_aside_with_reasons_rest_settled(
    book: Ledger, chain: FakeChain
) -> None:
    a, a_addr = buyer(book, chain, "USDC", 10_000_000)
    org = book.create_account().id  # an account with a balance but no bound wallet
    treasury = book.treasury().id
    fund(book, treasury, "USDC", 1_000_000)
    book.grant_promotional_credit("g1", org, "USDC", 500_000, treasury=treasury)
    ok = spend(book, a, "USDC", 1_000_000, USDC_LOT)
    no_lot = spend(book, a, "USDC", 2_000, None)
    wrong_kind = spend(book, a, "USDC", 3_000, USDC_LOT, kind="tokenized")
    chain.open_lot(7, KIND_LISTED)
    chain.close_lot(7)
    closed = spend(book, a, "USDC", 4_000, 7)
    coord = coordinator(book, chain)
    # the treasury's wallet exists, so the org's promotional spend is debited from the treasury's wallet
    promo_id = "req_promo"
    book.reserve(org, "USDC", 100, promo_id, ttl=60, payer=treasury)
    book.settle(promo_id, 100, record=UsageRecord("gpt-4o", 1, 1, 1, None, USDC_LOT, "listed", 500))
    bare = book.create_account().id
    with book.engine.begin() as conn:  # and one record whose payer has no wallet at all
        conn.execute(update(usage_records).where(usage_records.c.request_id == promo_id).values(payer_id=bare))

    report = coord.run_once()

    assert report.confirmed == [("USDC", 1)]
    reasons = {r.request_id: r.quarantine_reason or "" for r in coord.store.quarantined()}
    assert set(reasons) == {no_lot, wrong_kind, closed, promo_id}
    assert "no on-chain lot id" in reasons[no_lot]
    assert "listed lot" in reasons[wrong_kind]
    assert "lot 7: lot is not open" in reasons[closed]
    assert "no bound wallet" in reasons[promo_id]
    assert chain.s.balances[(a_addr, "USDC")] == 10_000_000 - 1_000_000
    record = coord.store.record(ok)
    assert record is not None and record.status == "batched"
    chain.next_window()
    assert coord.run_once().confirmed == []  # quarantined records are never posted


def test_quarantine__uncovered_debit__that_payer_set_aside_rest_settled(book: Ledger, chain: FakeChain) -> None:
    good, good_addr = buyer(book, chain, "CLD", 10**20)
    broke, broke_addr = buyer(book, chain, "CLD", 10**20, on_chain=0)  # the chain has nothing of it
    kept = [spend(book, good, "CLD", 10**18, CLD_LOT)]
    refused = [spend(book, broke, "CLD", 2 * 10**18, CLD_LOT), spend(book, broke, "CLD", 1, CLD_LOT)]
    coord = coordinator(book, chain)

    report = coord.run_once()

    assert report.confirmed == [("CLD", 1)] and report.quarantined == 2
    assert chain.s.balances[(good_addr, "CLD")] == 99 * 10**18
    for request_id in refused:
        record = coord.store.record(request_id)
        assert record is not None and record.status == "quarantined"
        assert "uncovered debit" in (record.quarantine_reason or "")
    record = coord.store.record(kept[0])
    assert record is not None and record.status == "batched"
    assert chain.s.roots[("CLD", 1)] == MerkleTree([leaf_of(record).hash()]).root


def test_quarantine__refusal_not_caused_by_entries__nothing_quarantined(book: Ledger, chain: FakeChain) -> None:
    a, _ = buyer(book, chain, "CLD", 10**20)
    spend(book, a, "CLD", 10, CLD_LOT)
    chain.s.last_epoch["CLD"] = 5  # someone else moved the epoch: a timing refusal, not the entries'
    chain.s.roots[("CLD", 5)] = b"\x01" * 32
    coord = coordinator(book, chain)
    assert coord.run_once().confirmed == [("CLD", 6)]  # planned from the chain's epoch; nothing lost
    assert coord.store.quarantined() == []


# ─── Quarantine resolves: settled later, or refunded with its reason ─────────


def quarantined_now(coord: Coordinator, chain: FakeChain) -> Coordinator:
    coord.run_once()
    assert coord.store.quarantined(), "the test's records were meant to be quarantined"
    chain.next_window()
    return coord


def test_quarantine__cause_that_never_goes_away__refunded_at_once_with_the_reason_shown(
    book: Ledger, chain: FakeChain
) -> None:
    a, a_addr = buyer(book, chain, "USDC", 10_000_000)

    no_lot = spend(book, a, "USDC", 2_000, None)
    wrong_kind = spend(book, a, "USDC", 3_000, USDC_LOT, kind="tokenized")
    chain.open_lot(7, KIND_LISTED)
    closed_later = spend(book, a, "USDC", 4_000, 7)
    chain.close_lot(7)
    before = book.balance(a, "USDC")
    coord = quarantined_now(coordinator(book, chain), chain)

    report = coord.run_once()

    assert report.refunded == 3 and coord.store.quarantined() == []
    after = book.balance(a, "USDC")
    assert after.posted == before.posted + 9_000 == 10_000_000 == chain.s.balances[(a_addr, "USDC")]
    assert after.cap_remaining == before.cap_remaining + 9_000
    notes = {r: usage_records_note(book, r) for r in (no_lot, wrong_kind, closed_later)}
    assert notes[no_lot] == "refunded: the lot that served it was never opened on chain"
    assert notes[wrong_kind] == "refunded: USDC usage is paid to listed lots, lot 2 is tokenized"
    assert notes[closed_later] == "refunded: lot 7 is closed: the escrow credits it no more"
    assert coord.store.unsettled(a, "USDC") == 0  # a refunded charge is owed no more
    assert coord.run_once().refunded == 0  # once


def usage_records_note(book: Ledger, request_id: str) -> str:
    from promptex.ledger.usage import settlement_note

    record = book.usage_record(request_id)
    assert record is not None
    return settlement_note(record)


def test_quarantine__lot_opened_since__requeued_with_its_escrow_lot_and_settled(book: Ledger, chain: FakeChain) -> None:
    from promptex.ledger import lots

    with book.engine.begin() as conn:  # gateway lot 9: requested, its open_lot not yet confirmed
        lots.request(conn, 9, expires_at=2_000_000_000, route_until=1_999_000_000, now=book.clock())
        lots.opening(conn, 9, "0x" + "ab" * 32, now=book.clock())
    a, a_addr = buyer(book, chain, "USDC", 10_000_000)
    served = spend(book, a, "USDC", 5_000, None)
    coord = quarantined_now(coordinator(book, chain), chain)
    assert coord.run_once().requeued == 0  # still opening: it waits (and is not refunded)
    book.confirm_lot_open(9, USDC_LOT)  # the chain confirmed it
    chain.next_window()

    report = coord.run_once()

    assert report.requeued == 1 and ("USDC", 1) in report.confirmed
    record = coord.store.record(served)
    assert record is not None and (record.status, record.chain_lot_id) == ("batched", USDC_LOT)
    assert chain.s.balances[(a_addr, "USDC")] == 10_000_000 - 5_000 == book.balance(a, "USDC").posted


def test_quarantine__payer_funded_later__retried_after_the_interval_and_settled(
    book: Ledger,
    chain: FakeChain,
    clock,  # noqa: ANN001
) -> None:
    broke, broke_addr = buyer(book, chain, "CLD", 10**20, on_chain=0)
    refused = spend(book, broke, "CLD", 10**18, CLD_LOT)
    coord = quarantined_now(coordinator(book, chain), chain)
    chain.s.balances[(broke_addr, "CLD")] = 10**20  # the deposit lands on chain
    assert coord.run_once().requeued == 0  # not before the retry interval
    clock.advance(coord.quarantine_retry)
    chain.next_window()

    report = coord.run_once()

    assert report.requeued == 1 and report.confirmed == [("CLD", 1)]
    record = coord.store.record(refused)
    assert record is not None and record.status == "batched"


def test_quarantine__cause_never_fixed__refunded_once_past_the_deadline(
    book: Ledger,
    chain: FakeChain,
    clock,  # noqa: ANN001
) -> None:
    broke, broke_addr = buyer(book, chain, "CLD", 10**20, on_chain=0)
    refused = spend(book, broke, "CLD", 10**18, CLD_LOT)
    coord = quarantined_now(coordinator(book, chain), chain)
    clock.advance(coord.quarantine_refund)

    report = coord.run_once()

    assert report.refunded == 1
    note = usage_records_note(book, refused)
    assert note.startswith("refunded: it could not be settled within 86400 s: vault refuses")
    assert book.balance(broke, "CLD").posted == 10**20  # as the vault never debited it
    assert chain.s.balances[(broke_addr, "CLD")] == 0


@pytest.mark.parametrize("step", ["planned", "settle_signed", "settle_broadcast", "confirmed"])
def test_crash__at_each_step__restart_posts_once_and_loses_nothing(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    a, _ = buyer(book, chain, "USDC", 10_000_000)
    ids = [spend(book, a, "USDC", 100_000 + i, USDC_LOT) for i in range(3)]
    crash_at(monkeypatch, step)
    with pytest.raises(Crash):
        coordinator(book, chain).run_once()

    report = coordinator(book, chain).run_once()  # a new process: same holder name, fresh state

    assert chain.s.settlements == [("USDC", 1)]
    assert report.waiting is None
    coord = coordinator(book, chain)
    [batch] = coord.store.batches(status="confirmed")
    assert {r.request_id for r in coord.store.batch_records(batch.id)} == set(ids)
    assert chain.s.consumed == {USDC_LOT: sum((100_000 + i) // 3 + 1 for i in range(3))}
    assert len(set(chain.sent)) == len(chain.receipts)  # a rebroadcast resends the same bytes only


def test_crash__broadcast_lost__same_signed_tx_sent_again(book: Ledger, chain: FakeChain) -> None:
    a, _ = buyer(book, chain, "CLD", 10**20)
    spend(book, a, "CLD", 10**18, CLD_LOT)
    chain.lose = True
    assert coordinator(book, chain).run_once().waiting is not None
    chain.lose = False
    report = coordinator(book, chain).run_once()
    assert report.confirmed == [("CLD", 1)]
    assert len(chain.sent) >= 2 and set(chain.sent) == {chain.sent[0]}


def test_crash__nonce_taken_by_another_tx__batch_failed_and_replanned(book: Ledger, chain: FakeChain) -> None:
    a, _ = buyer(book, chain, "CLD", 10**20)
    ids = {spend(book, a, "CLD", 10**18, CLD_LOT), spend(book, a, "CLD", 7, CLD_LOT)}
    chain.lose = True
    assert coordinator(book, chain).run_once().waiting is not None
    chain.lose = False
    chain.burn_nonce()

    report = coordinator(book, chain).run_once()

    assert report.failed == [("CLD", 1)] and report.confirmed == [("CLD", 1)]
    coord = coordinator(book, chain)
    assert [b.status for b in coord.store.batches("CLD")] == ["failed", "confirmed"]
    assert {r.request_id for r in coord.store.batch_records(coord.store.batches("CLD")[1].id)} == ids
    assert chain.s.settlements == [("CLD", 1)]


def test_lease__other_holder__stands_by_until_the_lease_expires(book: Ledger, chain: FakeChain, clock) -> None:  # noqa: ANN001
    a, _ = buyer(book, chain, "CLD", 10**20)
    spend(book, a, "CLD", 5, CLD_LOT)
    assert coordinator(book, chain, "one").run_once().leader
    spend(book, a, "CLD", 6, CLD_LOT)
    chain.next_window()
    assert not coordinator(book, chain, "two").run_once().leader
    assert chain.s.settlements == [("CLD", 1)]
    clock.advance(31)
    assert coordinator(book, chain, "two").run_once().confirmed == [("CLD", 2)]


def test_spend_caps__pending__registered_before_settling_bad_one_rejected(book: Ledger, chain: FakeChain) -> None:
    coord = coordinator(book, chain)
    _, address = buyer(book, chain, "CLD", 10**20)
    good = coord.submit_spend_cap(address, "CLD", 2**256 - 1, 10**19, chain.now() + 86_400, 0, b"sig")
    bad = coord.submit_spend_cap(address, "CLD", 2**256 - 1, 10**19, chain.now() + 86_400, 1, b"bad")
    assert coord.submit_spend_cap(address, "CLD", 2**256 - 1, 10**19, chain.now() + 86_400, 0, b"sig") == good
    assert coord.run_once().caps == 1
    assert chain.s.caps == [(address, "CLD", 10**19)]
    statuses = {c.id: c.status for c in coord.store.spend_caps(("registered", "rejected"))}
    assert statuses == {good: "registered", bad: "rejected"}


def test_spend_cap__another_with_a_queued_nonce_409__the_same_again_idempotent(book: Ledger, chain: FakeChain) -> None:
    """A SpendCap with the nonce of one queued and different terms was answered the first
    one's id (as if queued) while the relay registered the first; now it is refused 409
    already_queued naming the queued cap, as a SessionKey is (db72fb2). The same cap again
    is still answered its id."""
    coord = coordinator(book, chain)
    _, address = buyer(book, chain, "CLD", 10**20)
    expiry = chain.now() + 86_400
    first = coord.submit_spend_cap(address, "CLD", 2**256 - 1, 10**19, expiry, 0, b"sig")
    assert coord.submit_spend_cap(address, "CLD", 2**256 - 1, 10**19, expiry, 0, b"sig") == first
    with pytest.raises(Refused) as refused:
        coord.submit_spend_cap(address, "CLD", 2**256 - 1, 5 * 10**18, expiry, 0, b"other")
    assert (refused.value.status, refused.value.code, refused.value.fields["queued"]) == (409, "already_queued", first)
    assert f"(per epoch unlimited, total 10.00 CLD, expiry {utc_text(expiry)})" in refused.value.message
    assert "nonce 1" in refused.value.message
    assert str(10**19) not in refused.value.message and str(expiry) not in refused.value.message  # before: both
    assert [(c.id, c.total) for c in coord.store.spend_caps()] == [(first, 10**19)]


def test_release__above_free_balance__refused_within__locked_until_used_or_expired(
    book: Ledger, chain: FakeChain
) -> None:
    account, address = buyer(book, chain, "USDC", 100)
    spend(book, account, "USDC", 30, USDC_LOT)  # settled off-chain, not yet on chain
    book.reserve(account, "USDC", 5, "req_open", ttl=60)  # a request in flight
    coord = coordinator(book, chain)

    with pytest.raises(ReleaseRefused, match="only 0.000065 USDC"):  # 100 on chain − 30 settled − 5 held
        coord.sign_release(address, "USDC", 66)
    release = coord.sign_release(address, "USDC", 65)
    assert book.balance(account, "USDC").locked == 65
    with pytest.raises(ReleaseRefused, match="outstanding"):
        coord.sign_release(address, "USDC", 1)
    with pytest.raises(ReleaseRefused, match="not bound"):
        coord.sign_release("0x" + "ab" * 20, "USDC", 1)

    chain.time = release.expiry + 1
    coord.run_once()
    assert book.balance(account, "USDC").locked == 0
    book.release("req_open")
    second = coord.sign_release(address, "USDC", 10)
    chain.s.release_nonce[address] = second.nonce + 1  # the user took it
    coord.run_once()
    assert book.balance(account, "USDC").locked == 0
    assert coord.store.active_releases() == []


def test_release__beyond_the_ledger_balance__refused_nothing_locked_or_written(book: Ledger, chain: FakeChain) -> None:
    account, address = buyer(book, chain, "USDC", 100, on_chain=500)  # the chain shows more than the ledger
    chain.s.balances[(address, "CLD")] = 10**18  # and an asset the ledger holds nothing of
    coord = coordinator(book, chain)

    with pytest.raises(ReleaseRefused, match="ledger balance cannot spare 0.000101 USDC"):
        coord.sign_release(address, "USDC", 101)
    with pytest.raises(ReleaseRefused, match="ledger balance cannot spare 0.00000001 CLD"):
        coord.sign_release(address, "CLD", 1)

    assert book.balance(account, "USDC").locked == 0
    assert coord.store.active_releases() == []
    with book.engine.connect() as conn:  # the refused lock left no balance row behind either
        assert conn.execute(select(balances).where(balances.c.asset == "CLD")).all() == []
    assert coord.sign_release(address, "USDC", 100).amount == 100 == book.balance(account, "USDC").locked


def test_release__promotional_credit__never_leaves_the_vault_the_treasury_s_wallet_keeps_what_it_pays(
    book: Ledger, chain: FakeChain
) -> None:
    """README (the instant exit quick start): the demo buyer's credit is promotional, "it
    pays requests, it cannot leave the vault". Its wallet leaves with its own deposit and no
    more, however much welcome credit it has; the treasury's wallet, which pays what the
    credit served, cannot leave with that until the chain has debited it."""
    account, address = buyer(book, chain, "USDC", 20_000_000)
    treasury = book.treasury().id
    treasury_wallet = fund(book, treasury, "USDC", 50_000_000)
    chain.s.balances[(treasury_wallet, "USDC")] = 50_000_000
    book.grant_promotional_credit("welcome", account, "USDC", 10_000_000, treasury=treasury)
    book.reserve(account, "USDC", 4_000_000, "req_promo", ttl=60, payer=treasury)
    book.settle("req_promo", 4_000_000, record=UsageRecord("gpt-4o", 1, 1, 1, 9, USDC_LOT, "listed", 500))
    assert book.balance(account, "USDC").spendable == 20_000_000  # its own; the credit is the treasury's
    coord = coordinator(book, chain)

    with pytest.raises(ReleaseRefused, match=r"only 20\.00 USDC of "):
        coord.sign_release(address, "USDC", 20_000_001)
    with pytest.raises(ReleaseRefused, match=r"only 46\.00 USDC of .* unsettled 4\.00 USDC"):
        coord.sign_release(treasury_wallet, "USDC", 46_000_001)
    assert coord.sign_release(address, "USDC", 20_000_000).amount == 20_000_000


def test_second_wallet__its_deposit__not_spendable_by_the_account_the_vault_debits_the_first(
    book: Ledger, chain: FakeChain
) -> None:
    """pgbind s14 finding 4 (wallets s15): the ledger credited an account with the deposits
    of ALL its bound wallets, but settlement debits one (`first_bound`: the vault checks its
    balance and cap alone). The account spent its second wallet's deposit, the batch debiting
    the first was refused ('uncovered debit') and the records quarantined, then refunded:
    served for nothing, the seller unpaid. A second wallet's funds are now its own, like its
    cap: on its unclaimed account, which it can exit (an instant release against them alone)."""
    account, first = buyer(book, chain, "USDC", 1_000_000)
    book.set_spend_cap(account, "USDC", 10**12)  # the cap is not what stops it
    second = bind_new_wallet(book, account)
    waiting = book.credit_deposit(event_id(), second, "USDC", 5_000_000).account
    chain.s.balances[(second, "USDC")] = 5_000_000

    assert book.balance(account, "USDC").spendable == 1_000_000  # the first wallet's vault balance
    with pytest.raises(InsufficientFunds):
        book.reserve(account, "USDC", 3_000_000, "req_over", ttl=60)
    spent = spend(book, account, "USDC", 1_000_000, USDC_LOT)
    coord = coordinator(book, chain)
    assert coord.run_once().confirmed == [("USDC", 1)] and coord.store.quarantined() == []
    assert coord.store.record(spent).status == "batched"
    assert chain.s.balances[(first, "USDC")] == 0 == book.balance(account, "USDC").posted
    # The second wallet's deposit waits on its own account; an instant release takes it
    # (not refused by the account's unsettled usage: the vault never debits it for that).
    assert waiting != account and book.balance(waiting, "USDC").posted == 5_000_000
    assert coord.sign_release(second, "USDC", 5_000_000).amount == 5_000_000
    assert book.balance(waiting, "USDC").locked == 5_000_000 and book.balance(account, "USDC").locked == 0


def test_dashboard_usage__settled_and_pending__batch_state_and_tx_through_the_ledger(
    book: Ledger, chain: FakeChain
) -> None:
    a, _ = buyer(book, chain, "CLD", 10**20)
    settled = spend(book, a, "CLD", 10**15, CLD_LOT)
    coord = coordinator(book, chain)
    coord.run_once()
    pending = spend(book, a, "CLD", 2 * 10**15, CLD_LOT, cache_read_tokens=300, reasoning_tokens=20)
    other, _ = buyer(book, chain, "CLD", 10**20)
    theirs = spend(book, other, "CLD", 10**15, CLD_LOT)
    key = ApiKey(1, a, None, None, None, None, "sk-px-a")
    [batch] = coord.store.batches("CLD")

    rows = {row["request_id"]: row for row in views.usage_view(book.engine, key)}

    assert set(rows) == {settled, pending}  # not another account's
    assert (rows[settled]["batch_status"], rows[settled]["epoch"]) == ("confirmed", 1)
    assert rows[settled]["tx_hash"] == coord.store.tx(batch.tx_id).tx_hash  # type: ignore[arg-type]
    assert rows[settled]["cost"] == str(10**15) and rows[settled]["lot_id"] == CLD_LOT
    assert (rows[pending]["status"], rows[pending]["batch_status"], rows[pending]["tx_hash"]) == ("pending", None, None)
    assert (rows[pending]["cache_read_tokens"], rows[pending]["reasoning_tokens"]) == (300, 20)
    assert rows[settled]["cache_write_tokens"] == rows[settled]["cache_write_1h_tokens"] == 0
    assert views.usage_record_view(book.engine, key, settled) == rows[settled]
    with pytest.raises(views.NotFound):
        views.usage_record_view(book.engine, key, theirs)


def test_dashboard_desk__member_usage_and_budget__read_through_the_ledger(book: Ledger, chain: FakeChain) -> None:
    org = book.create_account(AccountKind.ORG, "acme").id
    fund(book, org, "USDC", 50_000_000)
    store = GatewayStore(book.engine)
    owner = store.add_api_key("o" * 64, "sk-px-o", org, 1)
    made = member_key(book, store, org, 2, name="ada", budget=("USDC", 10_000_000))
    book.reserve(made.account, "USDC", 1_000_000, "req_member", ttl=60, payer=org)
    record = UsageRecord("gpt-4o", 1_000, 200, 400_000, chain_lot_id=USDC_LOT, lot_kind="listed", fee_bps=500)
    book.settle("req_member", 1_000_000, record=record)

    desk = desk_view(book, store, owner)

    [member] = desk["members"]
    assert (member["account"], member["name"], member["joined_at"]) == (made.account, "ada", book.clock())
    assert member["budgets"] == [{"asset": "USDC", "remaining": "9000000", "held": "0"}]
    assert member["usage"] == [{"asset": "USDC", "requests": 1, "cost": "1000000", "tokens": 1_200}]
    assert [k["prefix"] for k in member["keys"]] == [made.record.prefix]


def test_cli__proof_and_verify__pass_and_fail_on_tampering(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    a, _ = buyer(book, chain, "CLD", 10**20)
    ids = [spend(book, a, "CLD", 10**15 + i, CLD_LOT) for i in range(5)]
    coordinator(book, chain).run_once()
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")  # the book's own file
    settings.cache_clear()
    request.addfinalizer(settings.cache_clear)
    monkeypatch.setattr(factory, "make_chain", lambda _s: chain)
    runner = CliRunner()

    proof = runner.invoke(usage_proof, [ids[2]])
    assert proof.exit_code == 0, proof.output
    body = json.loads(proof.output)
    assert body["root"] == "0x" + chain.s.roots[("CLD", 1)].hex() and body["epoch"] == 1
    said = runner.invoke(usage_verify, [ids[2]])  # one line for a person (newuser18: JSON only before)
    root = "0x" + chain.s.roots[("CLD", 1)].hex()
    assert said.exit_code == 0 and said.output == (
        f"verified: {ids[2]} is in the usage root the vault holds on chain for CLD epoch 1 ({root})\n"
    ), said.output
    as_json = runner.invoke(usage_verify, [ids[2], "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["verified"] is True, as_json.output
    path = tmp_path / "proof.json"
    path.write_text(proof.output)
    assert runner.invoke(usage_verify, ["--proof-file", str(path)]).exit_code == 0

    body["record"]["cost"] = str(int(body["record"]["cost"]) - 1)
    path.write_text(json.dumps(body))
    tampered = runner.invoke(usage_verify, ["--proof-file", str(path)])
    assert tampered.exit_code == 1 and tampered.output == (
        f"MISMATCH: the record of {ids[2]} does not prove into the usage root the vault holds on chain for CLD "
        "epoch 1\n"
    ), tampered.output
    with book.engine.begin() as conn:
        conn.execute(update(usage_records).where(usage_records.c.request_id == ids[2]).values(output_tokens=999))
    assert runner.invoke(usage_verify, [ids[2]]).exit_code != 0
    assert runner.invoke(usage_proof, ["req_missing"]).exit_code != 0


def test_settled_log_line__the_amount_debited_in_whole_units_beside_the_units(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture
) -> None:
    """newuser18: `up`'s terminal scrolled "USDC epoch 1 settled: 1 records, 95 debited" (smallest units)."""
    a, _ = buyer(book, chain, "USDC", 10**9)
    spend(book, a, "USDC", 1_234_567, USDC_LOT)
    with caplog.at_level(logging.INFO, logger="promptex.coordinator"):
        coordinator(book, chain).run_once()
    assert "USDC epoch 1 settled: 1 record, 1.234567 USDC debited, root 0x" in caplog.text


def test_proofs__unprovable_or_malformed__domain_errors_the_cli_and_dashboard_map(
    book: Ledger, chain: FakeChain
) -> None:
    a, _ = buyer(book, chain, "CLD", 10**20)
    settled = spend(book, a, "CLD", 10**15, CLD_LOT)
    orphan = spend(book, a, "CLD", 10**15, None)  # no lot on chain: quarantined
    coord = coordinator(book, chain)
    coord.run_once()
    pending = spend(book, a, "CLD", 10**15, CLD_LOT)  # after the pass: in no batch yet
    store = coord.store

    proof = proofs.build_proof(store, settled)
    assert proofs.verify_proof(proof, chain).verified is True
    assert proofs.verify_proof({**proof, "epoch": 2}, chain).verified is False  # a result, not an error
    with pytest.raises(proofs.NoUsageRecord):
        proofs.build_proof(store, "req_missing")
    with pytest.raises(proofs.NotProvable, match="held back from settlement: served by gateway lot"):
        proofs.build_proof(store, orphan)
    with pytest.raises(proofs.NotProvable, match="in no settlement batch: waiting for the next settlement"):
        proofs.build_proof(store, pending)
    with pytest.raises(proofs.MalformedProof):
        proofs.verify_proof({**proof, "record": {"request_id": settled}}, chain)
    with book.engine.begin() as conn:
        conn.execute(update(usage_records).where(usage_records.c.request_id == settled).values(cost=1))
    with pytest.raises(proofs.BatchTampered):
        proofs.build_proof(store, settled)


def test_cli__release__signed_within_free_balance_refused_beyond(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    address = buyer(book, chain, "USDC", 100)[1]
    # `release` opens the market's ledger as every command does (0836895): the book's own file
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    settings.cache_clear()
    request.addfinalizer(settings.cache_clear)
    monkeypatch.setattr(factory, "ledger_engine", lambda _s, _open=None: book.engine)
    monkeypatch.setattr(factory, "make_chain", lambda _s: chain)
    monkeypatch.setattr(factory, "check_ledger_chain", lambda _s, _engine: None)  # a fake chain has no genesis
    runner = CliRunner()

    release_cmd = ["release", "--address", address, "--asset"]
    refused = runner.invoke(coordinator_cli.coordinator, [*release_cmd, "usdc", "--amount", "101"])
    assert refused.exit_code == 1 and "release refused: only 0.0001 USDC" in refused.output
    signed = runner.invoke(coordinator_cli.coordinator, [*release_cmd, "USDC", "--amount", "60"])
    assert signed.exit_code == 0, signed.output
    release = json.loads(signed.output)
    assert (release["address"], release["asset"], release["amount"]) == (address, "USDC", "60")
    expected = chain.sign_release(address, "USDC", 60, release["nonce"], release["expiry"])
    assert release["signature"] == "0x" + expected.hex()
    # The 60 are locked until used or expired: a second release cannot take them again.
    again = runner.invoke(coordinator_cli.coordinator, [*release_cmd, "USDC", "--amount", "1"])
    assert again.exit_code == 1 and "outstanding" in again.output


def test_capacity__listed_lot_overdrawn__records_past_its_remaining_quarantined_rest_settled(
    book: Ledger,
    chain: FakeChain,
    clock,  # noqa: ANN001
) -> None:
    a, a_addr = buyer(book, chain, "USDC", 10_000_000)
    chain.open_lot(8, KIND_LISTED, capacity=1_000)  # USD micro of list value left
    fits, costs = [], (1_500, 1_200)  # draw 501 + 401, oldest first
    for cost in costs:
        fits.append(spend(book, a, "USDC", cost, 8))
        clock.advance(1)
    over = spend(book, a, "USDC", 600, 8)  # would draw 201 more: past the 98 left
    other = spend(book, a, "USDC", 3_000, USDC_LOT)
    coord = coordinator(book, chain)

    report = coord.run_once()

    assert report.confirmed == [("USDC", 1)] and report.quarantined == 1
    assert chain.s.consumed[8] == 902 and chain.s.consumed[USDC_LOT] == 1_001
    [record] = coord.store.quarantined()
    assert record.request_id == over and "lot 8 has $0.000098 of capacity left" in (record.quarantine_reason or "")
    for request_id in (*fits, other):
        kept = coord.store.record(request_id)
        assert kept is not None and kept.status == "batched"
    assert chain.s.balances[(a_addr, "USDC")] == 10_000_000 - 5_700


def test_capacity__token_draws_past_its_tokenized_lots__quarantined_rest_settled(
    book: Ledger,
    chain: FakeChain,
    clock,  # noqa: ANN001
) -> None:
    a, _ = buyer(book, chain, "CLD", 10**21)
    chain.open_lot(CLD_LOT, KIND_TOKENIZED, "CLD", capacity=5 * 10**18, expiry=chain.now() + 1_000)
    chain.open_lot(9, KIND_TOKENIZED, "CLD", capacity=2 * 10**18, expiry=chain.now() + 500)
    kept = []
    for cost in (4 * 10**18, 2 * 10**18):  # oldest first
        kept.append(spend(book, a, "CLD", cost, CLD_LOT))
        clock.advance(1)
    over = spend(book, a, "CLD", 2 * 10**18, CLD_LOT)  # 1 CLD left of the 7
    coord = coordinator(book, chain)

    report = coord.run_once()

    assert report.confirmed == [("CLD", 1)] and report.quarantined == 1
    assert chain.s.burned == {"CLD": 6 * 10**18}
    assert chain.s.consumed == {9: 2 * 10**18, CLD_LOT: 4 * 10**18}  # nearest expiry first
    [record] = coord.store.quarantined()
    assert record.request_id == over and "drawable capacity" in (record.quarantine_reason or "")
    assert all(coord.store.record(r).status == "batched" for r in kept)  # type: ignore[union-attr]


def test_capacity__a_crowd_of_lots_past_expiry_leads_the_draw_order__pruned_first_nothing_quarantined(
    book: Ledger,
    chain: FakeChain,
    clock,  # noqa: ANN001
) -> None:
    """The dust-lot freeze (issue 19) at the coordinator: 600 lots past their expiry lead
    CLD's draw order, more than one draw unlinks by itself, so `drawable` reads 0 while an
    honest lot holds 5 CLD. The coordinator sends `CreditEscrow.prune` (anyone may) before
    it sizes the batch, and the records settle against the honest lot: none quarantined
    (before: every one, "the token's drawable capacity ($0 left)")."""
    a, _ = buyer(book, chain, "CLD", 10**21)
    chain.open_lot(CLD_LOT, KIND_TOKENIZED, "CLD", capacity=5 * 10**18)
    for i in range(600):
        chain.open_lot(100 + i, KIND_TOKENIZED, "CLD", capacity=10**18, expiry=chain.now() - 1)
    assert chain.drawable("CLD") == 0 and chain.prunable("CLD")
    kept = []
    for cost in (2 * 10**18, 10**18):
        kept.append(spend(book, a, "CLD", cost, CLD_LOT))
        clock.advance(1)
    coord = coordinator(book, chain)

    report = coord.run_once()

    assert report.confirmed == [("CLD", 1)] and report.quarantined == 0
    assert chain.s.pruned == MAX_PRUNE_LOTS  # one prune, then the settle's own draw unlinked more
    assert chain.s.consumed == {CLD_LOT: 3 * 10**18} and chain.s.burned == {"CLD": 3 * 10**18}
    assert all(coord.store.record(r).status == "batched" for r in kept)  # type: ignore[union-attr]


def test_capacity__a_crowd_of_1500_lots_past_expiry__pruned_until_the_walk_reaches_capacity(
    book: Ledger,
    chain: FakeChain,
    clock,  # noqa: ANN001
) -> None:
    """The crowd sibling (session 6's breaker): 1,500 lots past expiry. One prune leaves
    1,244, still more than one draw's prune and walk (512), so `drawable` stayed 0 and the
    pass quarantined every record. The coordinator now prunes until the walk reaches
    capacity (4 prunes here, at most MAX_PRUNES_PER_PASS) and the batch settles."""
    a, _ = buyer(book, chain, "CLD", 10**21)
    chain.open_lot(CLD_LOT, KIND_TOKENIZED, "CLD", capacity=5 * 10**18)
    for i in range(1_500):
        chain.open_lot(100 + i, KIND_TOKENIZED, "CLD", capacity=10**18, expiry=chain.now() - 1)
    kept = spend(book, a, "CLD", 2 * 10**18, CLD_LOT)
    coord = coordinator(book, chain)

    report = coord.run_once()

    assert report.confirmed == [("CLD", 1)] and report.quarantined == 0
    assert chain.s.pruned == 4 * MAX_PRUNE_LOTS
    assert chain.s.consumed == {CLD_LOT: 2 * 10**18}
    assert coord.store.record(kept).status == "batched"  # type: ignore[union-attr]


# ─── Leaf versions: old epochs still verify ──────────────────────────────────


def _round_one_leaf(r: dict[str, object]) -> bytes:
    """A usage leaf exactly as round 1 hashed it (before leaves had a version)."""
    types = ["string", "address", "string", "uint256", "uint256", "uint256", "uint256"]
    values = [r["request_id"], r["account"], r["model"], r["input_tokens"], r["output_tokens"], r["cost"], r["lot_id"]]
    return keccak(keccak(encode(types, values)))


def test_proofs__version_1_epoch__still_proves_and_verifies(book: Ledger, chain: FakeChain) -> None:
    a, address = buyer(book, chain, "CLD", 10**20)
    ids = [spend(book, a, "CLD", 10**15 + i, CLD_LOT) for i in range(3)]
    coord = coordinator(book, chain)
    coord.run_once()
    # Turn the epoch into one posted before leaf versions: its root made of round-1 leaves,
    # on chain and in the batch, which records version 1 (as migration 0006 leaves it).
    records = [
        {"request_id": r, "account": address, "model": "claude-sonnet-4-5", "input_tokens": 1_000,
         "output_tokens": 200, "cost": 10**15 + i, "lot_id": CLD_LOT}
        for i, r in enumerate(ids)
    ]  # fmt: skip
    old_root = MerkleTree([_round_one_leaf(r) for r in records]).root
    chain.s.roots[("CLD", 1)] = old_root
    with book.engine.begin() as conn:
        conn.execute(update(settlement_batches).values(leaf_version=1, usage_root="0x" + old_root.hex()))

    proof = proofs.build_proof(coord.store, ids[1])
    assert proof["leaf_version"] == 1 and proof["root"] == "0x" + old_root.hex()
    assert proof["leaf"] == "0x" + _round_one_leaf(records[1]).hex()
    assert "cache_read_tokens" not in proof["record"]
    assert proofs.verify_proof(proof, chain).verified is True
    # A document written by round 1's `usage proof` (no leaf_version) verifies too.
    round_one = {k: v for k, v in proof.items() if k != "leaf_version"}
    assert proofs.verify_proof(round_one, chain).verified is True
    round_one["record"] = {**proof["record"], "cost": str(10**15)}  # another cost
    assert proofs.verify_proof(round_one, chain).verified is False
    # Read as version 2, the same record does not prove into the old root.
    assert proofs.verify_proof({**proof, "leaf_version": 2, "record": {**proof["record"], **dict.fromkeys(
        ("cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens"), 0)}},
        chain).verified is False  # fmt: skip


def test_proofs__cached_and_reasoning_tokens__committed_by_the_version_2_leaf(book: Ledger, chain: FakeChain) -> None:
    a, _ = buyer(book, chain, "CLD", 10**20)
    details = {
        "cache_read_tokens": 600,
        "cache_write_tokens": 300,
        "cache_write_1h_tokens": 100,
        "reasoning_tokens": 50,
    }
    ids = [spend(book, a, "CLD", 10**15, CLD_LOT, **details), spend(book, a, "CLD", 10**15, CLD_LOT)]
    coord = coordinator(book, chain)
    coord.run_once()
    assert [b.leaf_version for b in coord.store.batches("CLD")] == [LEAF_V2]

    proof = proofs.build_proof(coord.store, ids[0])
    assert proof["leaf_version"] == LEAF_V2
    assert {k: proof["record"][k] for k in details} == details
    assert proof["root"] == "0x" + chain.s.roots[("CLD", 1)].hex()
    assert proofs.verify_proof(proof, chain).verified is True
    for name in details:  # each count is committed: changing one breaks the proof
        changed = {**proof, "record": {**proof["record"], name: details[name] - 1}}
        assert proofs.verify_proof(changed, chain).verified is False
    with pytest.raises(proofs.MalformedProof):  # a version-2 document must carry them
        proofs.verify_proof(
            {**proof, "record": {k: v for k, v in proof["record"].items() if k != "reasoning_tokens"}}, chain
        )
    with pytest.raises(proofs.MalformedProof):
        proofs.verify_proof({**proof, "leaf_version": 3}, chain)


def test_expire__lot_past_expiry_and_grace__expired_once__within_grace_or_not_ours_untouched(
    book: Ledger, chain: FakeChain
) -> None:
    """The coordinator ends the market's lots past their expiry and the escrow's settlement
    grace (`CreditEscrow.expire`, which anyone may call); a lot still inside the grace is
    left to be drawn, and an escrow lot no gateway lot of this ledger opened is not ours."""
    import dataclasses

    from coordinator_fakes import GRACE

    from promptex.ledger import lots
    from promptex.protocol.escrow import STATUS_EXPIRED, STATUS_OPEN

    now = chain.time
    due, in_grace = now - GRACE - 1, now - 10
    for chain_lot, expiry in ((USDC_LOT, due), (OTHER_USDC_LOT, in_grace), (CLD_LOT, due)):
        chain.s.lots[chain_lot] = dataclasses.replace(chain.s.lots[chain_lot], expiry=expiry)
    with book.engine.begin() as conn:  # gateway lots 11 and 12; CLD_LOT is no lot of this market's
        for lot_id, expiry in ((11, due), (12, in_grace)):
            lots.request(conn, lot_id, expires_at=expiry, route_until=expiry - 600, now=book.clock())
    book.confirm_lot_open(11, USDC_LOT)
    book.confirm_lot_open(12, OTHER_USDC_LOT)
    coord = coordinator(book, chain)

    assert coord.run_once().expired == [USDC_LOT]
    assert chain.s.expired == [USDC_LOT] and chain.lot(USDC_LOT).status == STATUS_EXPIRED
    assert chain.lot(OTHER_USDC_LOT).status == STATUS_OPEN and chain.lot(CLD_LOT).status == STATUS_OPEN
    assert coord.run_once().expired == []  # the chain says it ended (before the indexer tells the ledger)
    assert [tx.purpose for tx in coord.store.landed_txs(0, 0)] == ["expire"]

    chain.time += GRACE  # the second lot's grace is over too
    assert coord.run_once().expired == [OTHER_USDC_LOT]
    assert chain.s.expired == [USDC_LOT, OTHER_USDC_LOT] and chain.lot(CLD_LOT).status == STATUS_OPEN
