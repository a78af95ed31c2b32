"""`promptex reconcile`'s comparison on SQLite and PostgreSQL, against a chain given as
plain numbers: a healthy ledger has no differences; a charge the chain has not debited
yet is explained by its request id, an open debt by the debt, and the explanations add
up to the difference exactly; a balance edited by SQL or a pending exit the chain does
not have is unexplained, naming the account or address."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from ledger_helpers import bind_new_wallet, event_id
from sqlalchemy import insert, update

from promptex.coordinator.store import CoordinatorStore
from promptex.indexer.schema import chain_events
from promptex.ledger import Ledger, UsageRecord
from promptex.ledger.schema import balances
from promptex.protocol.escrow import KIND_LISTED
from promptex.reconcile import reconcile, summary
from promptex.reconcile.chain import LotState, RedemptionState
from promptex.reconcile.report import BALANCE, CLAIMABLE, EXIT

USDC_ADDRESS, CLD_ADDRESS = "0x" + "aa" * 20, "0x" + "cc" * 20
RECORD = UsageRecord("gpt-test", 100, 10, 50, gateway_lot_id=1, chain_lot_id=None, lot_kind="listed")


@dataclass
class FakeChain:
    block: int = 10
    balances: dict[tuple[str, str], int] = field(default_factory=dict)
    exits: dict[tuple[str, str], int] = field(default_factory=dict)
    lots: list[LotState] = field(default_factory=list)
    claimables: dict[str, int] = field(default_factory=dict)

    def assets(self) -> dict[str, int]:
        return {"USDC": 6, "CLD": 18}

    def asset_address(self, symbol: str) -> str:
        return USDC_ADDRESS if symbol == "USDC" else CLD_ADDRESS

    def balance_of(self, address: str, symbol: str) -> int:
        return self.balances.get((address, symbol), 0)

    def pending_exit(self, address: str, symbol: str) -> int:
        return self.exits.get((address, symbol), 0)

    def claimable(self, address: str, symbol: str) -> int:
        return self.claimables.get(address, 0) if symbol == "USDC" else 0

    def lot_count(self) -> int:
        return len(self.lots)

    def lot(self, lot_id: int) -> LotState:
        return self.lots[lot_id - 1]

    def redemption(self, redemption_id: int) -> RedemptionState | None:
        return None


@pytest.fixture
def buyer(ledger: Ledger) -> tuple[int, str, str]:
    """An account with 1,000 USDC deposited from its wallet: (account, wallet, deposit event)."""
    account = ledger.create_account().id
    wallet = bind_new_wallet(ledger, account)
    deposit = event_id()
    ledger.credit_deposit(deposit, wallet, "USDC", 1_000)
    ledger.set_spend_cap(account, "USDC", 1_000)
    return account, wallet, deposit


def _spend(ledger: Ledger, account: int, request_id: str, cost: int) -> None:
    ledger.reserve(account, "USDC", cost, request_id, ttl=60)
    ledger.settle(request_id, cost, record=RECORD)


def test_reconcile__ledger_as_the_chain__no_differences(ledger, buyer):
    account, wallet, _ = buyer
    report = reconcile(ledger, FakeChain(balances={(wallet, "USDC"): 1_000}), agent=False)
    assert report.ok and report.differences == []
    assert report.checked[BALANCE] == 2 and report.checked[EXIT] == 2  # USDC and CLD, for one wallet
    assert "no differences" in summary(report)


def test_reconcile__served_not_yet_settled__explained_by_request_ids(ledger, buyer):
    account, wallet, _ = buyer
    _spend(ledger, account, "req-1", 300)
    _spend(ledger, account, "req-2", 45)

    report = reconcile(ledger, FakeChain(balances={(wallet, "USDC"): 1_000}), agent=False)

    assert report.ok
    (row,) = report.differences
    assert (row.section, row.asset, row.books, row.chain, row.difference) == (BALANCE, "USDC", 655, 1_000, 345)
    assert sorted((e.kind, e.ref, e.amount) for e in row.explanations) == [
        ("unsettled request", "req-1", 300),
        ("unsettled request", "req-2", 45),
    ]
    assert row.unexplained == 0
    assert "each explained by named records (`promptex reconcile --all` lists them)" in summary(report)  # which
    # What was compared, not "N pending exits" (read as withdrawals under way) nor "1 claimables".
    assert "(2 balances, pending exits of 2 wallet/asset pairs, 0 lots, claimables of 0 sellers)" in summary(report)


def test_reconcile__deposit_removed_after_spending__request_and_debt_explain(ledger, buyer):
    account, wallet, deposit = buyer
    _spend(ledger, account, "req-1", 700)
    ledger.unwind_chain_fact(deposit)  # a reorg: the vault never had it
    (debt,) = ledger.debts(account)

    report = reconcile(ledger, FakeChain(), agent=False)

    assert report.ok
    (row,) = report.differences
    assert row.difference == 0 and row.books == 0
    assert sorted((e.kind, e.ref, e.amount) for e in row.explanations) == [
        ("debt", f"debt {debt.id}", -700),
        ("unsettled request", "req-1", 700),
    ]


def test_reconcile__balance_edited_by_sql__unexplained_naming_the_account(ledger, buyer):
    account, wallet, _ = buyer
    _spend(ledger, account, "req-1", 100)
    with ledger.engine.begin() as conn:
        conn.execute(update(balances).where(balances.c.account_id == account).values(posted=850))

    report = reconcile(ledger, FakeChain(balances={(wallet, "USDC"): 1_000}), agent=False)

    assert not report.ok
    (row,) = report.unexplained
    assert row.subject.startswith(f"account {account} (") and row.asset == "USDC"
    assert (row.difference, row.explained, row.unexplained) == (150, 100, 50)
    assert "1 unexplained difference" in summary(report)
    with ledger.engine.begin() as conn:  # put it back, so the fixture's books check passes
        conn.execute(update(balances).where(balances.c.account_id == account).values(posted=900))


def test_reconcile__pending_exit_the_chain_lacks__unexplained(ledger, buyer):
    account, wallet, _ = buyer
    ledger.lock_for_exit(event_id(), wallet, "USDC", 400)

    report = reconcile(ledger, FakeChain(balances={(wallet, "USDC"): 1_000}), agent=False)

    (row,) = report.unexplained
    assert (row.section, row.subject, row.books, row.chain) == (EXIT, f"exit of {wallet}", 400, 0)
    json_row = report.to_json()["differences"][0]
    assert (json_row["books"], json_row["unexplained"]) == ("400", "-400")  # exact units, as strings


def test_reconcile__unbound_depositor__compared_by_its_address(ledger):
    stranger = "0x" + "5a" * 20
    ledger.credit_deposit(event_id(), stranger, "CLD", 10**18)
    report = reconcile(ledger, FakeChain(balances={(ledger_address(stranger), "CLD"): 10**18 - 1}), agent=False)
    (row,) = report.unexplained
    assert row.asset == "CLD" and row.unexplained == -1


def ledger_address(address: str) -> str:
    from promptex.ledger.binding import checksum_address

    return checksum_address(address)


SELLER = "0x" + "5e" * 20


def _claimed(ledger: Ledger, block: int, amount: int) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(chain_events).values(
                tx_hash=f"0x{block:064x}", log_index=0, block_number=block, block_hash="0x" + "00" * 32,
                contract="0x" + "11" * 20, source="CreditsVault", name="Claimed",
                args=json.dumps({"account": SELLER, "asset": USDC_ADDRESS, "amount": amount}),
            )
        )  # fmt: skip


def test_reconcile__a_seller_claimed_part_of_what_it_earned__no_difference(ledger, monkeypatch):
    """The books' claimable is what the seller's listed lots earned less its claims (README):
    a claim the indexer applied by the compared block is no difference (before: a difference
    'explained' by the claim's tx, after every claim, on every reconcile and up's panel)."""
    lot = LotState(SELLER, USDC_ADDRESS, KIND_LISTED, 0, 5_000, 10_000_000, 1_000_000)  # 50 %, 1.00 drawn
    batch = SimpleNamespace(payload=SimpleNamespace(credits={1: 1_000_000}, burn=0), asset="USDC")
    monkeypatch.setattr(CoordinatorStore, "settled_batches", lambda self, block: [(batch, "0x" + "ba" * 32)])
    _claimed(ledger, 9, 300_000)
    _claimed(ledger, 11, 200_000)  # after the compared block (10): not in the chain's view either

    report = reconcile(ledger, FakeChain(lots=[lot], claimables={SELLER: 200_000}), agent=False)

    (row,) = [r for r in report.rows if r.section == CLAIMABLE]
    assert (row.books, row.chain, row.explanations) == (200_000, 200_000, [])  # earned 500,000 less 300,000
    assert report.ok and report.differences == [] and "no differences" in summary(report)

    short = reconcile(ledger, FakeChain(lots=[lot], claimables={SELLER: 150_000}), agent=False)
    (wrong,) = short.unexplained  # the vault pays less than earned less claimed: still caught
    assert (wrong.section, wrong.books, wrong.chain) == (CLAIMABLE, 200_000, 150_000)
