"""No balance goes negative, on SQLite and PostgreSQL: the database refuses it (CHECK
constraints), and every path that would have taken a balance below zero — a reorg
removing a deposit already spent, an exit completing before the usage it raced settled,
a charge landing after a chain fact emptied the balance — opens an explicit debt instead,
which stops the account being served in that asset until a credit repays it.

The `ledger` fixture checks the books (debts included) after each test.
"""

from __future__ import annotations

import pytest
from ledger_helpers import debited_wallet, event_id, fund
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from promptex.ledger import AccountInDebt, AccountKind, InsufficientFunds, Ledger
from promptex.ledger import usage as usage_records
from promptex.ledger.schema import balances, budgets, debts
from promptex.protocol.units import TOKEN_UNIT as TOKEN

CLD, USDC = "CLD", "USDC"


@pytest.fixture
def buyer(ledger: Ledger) -> int:
    return ledger.create_account().id


def _deposit(ledger: Ledger, account: int, asset: str, amount: int) -> tuple[str, str]:
    """Deposit from the account's debited wallet, with a cap; returns (address, event id)."""
    address = debited_wallet(ledger, account)
    event = event_id()
    ledger.credit_deposit(event, address, asset, amount)
    ledger.set_spend_cap(account, asset, 10**30)
    return address, event


# ─── The database refuses ────────────────────────────────────────────────────


@pytest.mark.parametrize("column", ["posted", "held", "locked", "cap_remaining"])
def test_balances__negative_by_sql__refused_by_the_database(ledger, buyer, column):
    fund(ledger, buyer, CLD, TOKEN)
    with pytest.raises(IntegrityError), ledger.engine.begin() as conn:
        conn.execute(update(balances).where(balances.c.account_id == buyer).values({column: -1}))
    assert ledger.balance(buyer, CLD).posted == TOKEN


def test_budgets__negative_by_sql__refused_by_the_database(ledger, buyer):
    org = ledger.create_account(AccountKind.ORG, "acme").id
    ledger.add_member(org, buyer)
    ledger.set_member_budget(org, buyer, CLD, TOKEN)
    with pytest.raises(IntegrityError), ledger.engine.begin() as conn:
        conn.execute(update(budgets).where(budgets.c.member_id == buyer).values(remaining=-(2**70)))


def test_balances__zero_and_beyond_64_bits__accepted(ledger, buyer):
    fund(ledger, buyer, CLD, 2**80)
    with ledger.engine.begin() as conn:
        conn.execute(update(balances).where(balances.c.account_id == buyer).values(cap_remaining=0))
    assert ledger.balance(buyer, CLD).cap_remaining == 0


# ─── A reorg removes a deposit already spent ─────────────────────────────────


def test_unwind__deposit_already_spent__opens_a_debt_naming_it(ledger, buyer):
    address, deposit = _deposit(ledger, buyer, USDC, 1_000)
    ledger.reserve(buyer, USDC, 800, "req-1", ttl=60)
    ledger.settle("req-1", 700)

    ledger.unwind_chain_fact(deposit)

    balance = ledger.balance(buyer, USDC)
    assert (balance.posted, balance.held) == (0, 0)  # never below zero
    (debt,) = ledger.debts(buyer)
    assert (debt.asset, debt.amount, debt.outstanding, debt.status) == (USDC, 700, 700, "open")
    assert deposit in debt.reason and "reorg removed deposit" in debt.reason
    assert debt.source == f"unwind:deposit:{deposit}"
    assert ledger.open_debts() == [debt]
    assert ledger.system_balance("usage", USDC) == 700  # the charge stands: the debt explains it


def test_debt__open__stops_serving_the_account_in_its_asset(ledger, buyer):
    _, deposit = _deposit(ledger, buyer, USDC, 1_000)
    _deposit(ledger, buyer, CLD, TOKEN)
    ledger.reserve(buyer, USDC, 600, "req-1", ttl=60)
    ledger.settle("req-1", 600)
    ledger.unwind_chain_fact(deposit)

    with pytest.raises(AccountInDebt, match="owes 0.0006 USDC") as refused:
        ledger.reserve(buyer, USDC, 1, "req-2", ttl=60)
    assert not isinstance(refused.value, InsufficientFunds)  # so promotional credit does not pay for it
    assert ledger.hold("req-2") is None
    ledger.reserve(buyer, CLD, TOKEN, "req-3", ttl=60)  # its own CLD is not what it owes


def test_debt__later_deposit__repays_first_then_serves(ledger, buyer):
    _, deposit = _deposit(ledger, buyer, USDC, 1_000)
    ledger.reserve(buyer, USDC, 900, "req-1", ttl=60)
    ledger.settle("req-1", 900)
    ledger.unwind_chain_fact(deposit)

    _deposit(ledger, buyer, USDC, 500)  # less than owed: all of it repays
    assert ledger.balance(buyer, USDC).posted == 0
    (debt,) = ledger.debts(buyer, open_only=True)
    assert debt.outstanding == 400

    _deposit(ledger, buyer, USDC, 1_000)
    assert ledger.balance(buyer, USDC).posted == 600
    assert ledger.debts(buyer, open_only=True) == []
    (repaid,) = ledger.debts(buyer)
    assert (repaid.status, repaid.repaid) == ("repaid", 900)
    ledger.reserve(buyer, USDC, 600, "req-2", ttl=60)


def test_unwind__in_an_indexer_batch__opens_the_debt_in_the_batch(ledger, buyer):
    address, deposit = _deposit(ledger, buyer, USDC, 1_000)
    ledger.reserve(buyer, USDC, 1_000, "req-1", ttl=60)
    ledger.settle("req-1", 1_000)

    def batch(facts) -> None:  # noqa: ANN001 - a ChainBatch
        facts.unwind(deposit)
        facts.credit_deposit(event_id(), address, USDC, 250)  # the new branch's smaller deposit

    ledger.apply_chain_facts(batch)
    assert ledger.balance(buyer, USDC).posted == 0
    (debt,) = ledger.debts(buyer)
    assert (debt.amount, debt.outstanding) == (1_000, 750)


# ─── An exit races usage ─────────────────────────────────────────────────────


def test_complete_exit__beyond_the_ledger_balance__debt_then_shortfall_repays_it(ledger, buyer):
    """The chain paid the exit in full before the coordinator settled the 300 the gateway
    charged: the ledger cannot go to −300, so the account owes it; the settlement's
    shortfall (the protocol's loss, booked on chain) then gives it back, closing the debt."""
    address, _ = _deposit(ledger, buyer, USDC, 1_000)
    ledger.reserve(buyer, USDC, 300, "req-1", ttl=60)
    ledger.settle("req-1", 300)
    exit_request = event_id()
    ledger.lock_for_exit(exit_request, address, USDC, 1_000)
    exit_done = event_id()

    ledger.apply_chain_facts(lambda facts: facts.complete_exit(exit_done, address, USDC, 1_000))

    assert ledger.balance(buyer, USDC).posted == 0
    (debt,) = ledger.debts(buyer)
    assert debt.outstanding == 300 and exit_done in debt.reason
    ledger.record_shortfall(event_id(), address, USDC, 300)
    assert ledger.debts(buyer, open_only=True) == []
    assert ledger.balance(buyer, USDC).posted == 0


def test_complete_exit__single_call_path__opens_the_debt_too(ledger, buyer):
    address, _ = _deposit(ledger, buyer, USDC, 100)
    ledger.reserve(buyer, USDC, 40, "req-1", ttl=60)
    ledger.settle("req-1", 40)
    ledger.complete_exit(event_id(), address, USDC, 100)
    assert ledger.balance(buyer, USDC).posted == 0
    assert [d.outstanding for d in ledger.debts(buyer)] == [40]


# ─── A charge lands after a chain fact emptied the balance ───────────────────


def test_settle__balance_emptied_while_in_flight__charged_with_a_debt(ledger, buyer):
    _, deposit = _deposit(ledger, buyer, USDC, 1_000)
    ledger.reserve(buyer, USDC, 500, "req-1", ttl=60)
    ledger.unwind_chain_fact(deposit)  # the request is still running
    assert ledger.balance(buyer, USDC).posted == 0 and ledger.debts(buyer) == []

    hold = ledger.settle("req-1", 300)  # the fast path is refused by the database; the general one charges

    assert (hold.charged, hold.shortfall) == (300, 0)
    assert ledger.balance(buyer, USDC).posted == 0 and ledger.balance(buyer, USDC).held == 0
    (debt,) = ledger.debts(buyer)
    assert debt.outstanding == 300 and debt.source == "settle:req-1" and "req-1" in debt.reason
    assert ledger.system_balance("usage", USDC) == 300
    assert ledger.settle("req-1", 300).charged == 300  # idempotent
    assert len(ledger.debts(buyer)) == 1


def test_settle__with_usage_record__balance_emptied__record_kept(ledger, buyer):
    _, deposit = _deposit(ledger, buyer, USDC, 1_000)
    ledger.reserve(buyer, USDC, 500, "req-1", ttl=60)
    ledger.unwind_chain_fact(deposit)
    record = usage_records.UsageRecord("gpt-test", 10, 20, 30, gateway_lot_id=1, chain_lot_id=2, lot_kind="listed")
    ledger.settle("req-1", 200, record=record)
    stored = ledger.usage_record("req-1")
    assert stored is not None and stored.cost == 200


def test_settle__cap_lowered_below_the_hold__stops_at_zero(ledger, buyer):
    _deposit(ledger, buyer, USDC, 1_000)
    ledger.reserve(buyer, USDC, 500, "req-1", ttl=60)
    ledger.set_spend_cap(buyer, USDC, 100)  # the chain's cap, re-read, is below what is held
    ledger.settle("req-1", 400)
    balance = ledger.balance(buyer, USDC)
    assert (balance.posted, balance.cap_remaining) == (600, 0)
    assert ledger.debts(buyer) == []  # a limit is not money: nothing owed


def test_settle__member_budget_lowered_below_the_hold__stops_at_zero(ledger, buyer):
    org = ledger.create_account(AccountKind.ORG, "acme").id
    _deposit(ledger, org, USDC, 1_000)
    ledger.add_member(org, buyer)
    ledger.set_member_budget(org, buyer, USDC, 500)
    ledger.reserve(buyer, USDC, 500, "req-1", ttl=60, payer=org)
    ledger.set_member_budget(org, buyer, USDC, 100)
    ledger.settle("req-1", 300)
    budget = ledger.budget(org, buyer, USDC)
    assert budget is not None and (budget.remaining, budget.held) == (0, 0)
    assert ledger.balance(org, USDC).posted == 700


# ─── Unclaimed addresses ─────────────────────────────────────────────────────


def test_bind_wallet__unclaimed_address_owes__debt_moves_and_is_repaid(ledger, buyer):
    """An unbound address exits more than the ledger credited it (its deposit was removed
    by a reorg after the exit was requested): its unclaimed account owes; binding the
    address as the account's first wallet moves the debt to the account, whose deposit
    repays it. Bound as a later wallet, whose funds stay its own, its debt stays too."""
    from eth_account import Account

    from promptex.ledger.binding import sign

    def owing() -> Account:
        wallet = Account.create()
        deposit = event_id()
        ledger.credit_deposit(deposit, wallet.address, USDC, 100)
        ledger.complete_exit(event_id(), wallet.address, USDC, 100)
        ledger.credit_deposit(event_id(), wallet.address, USDC, 30)  # the chain paid 100 of a 30 balance:
        ledger.unwind_chain_fact(deposit)  # the 100 deposit was on an orphaned branch
        return wallet

    first = owing()
    (owed,) = ledger.open_debts()
    assert owed.outstanding == 70
    message = ledger.issue_binding_challenge(buyer, first.address)
    ledger.bind_wallet(message, sign(message, first.key))
    _deposit(ledger, buyer, USDC, 1_000)  # from the first wallet

    assert ledger.open_debts() == []
    assert ledger.balance(buyer, USDC).posted == 930
    with ledger.engine.connect() as conn:
        assert conn.execute(select(debts.c.account_id)).scalar_one() == buyer

    later = owing()
    message = ledger.issue_binding_challenge(buyer, later.address)
    ledger.bind_wallet(message, sign(message, later.key))
    (still,) = ledger.open_debts()
    assert still.account != buyer and still.outstanding == 70
    assert ledger.balance(buyer, USDC).posted == 930


# ─── The coordinator's unsettled sum ─────────────────────────────────────────


def test_unsettled__totals_beyond_two_to_the_63__exact(ledger, buyer):
    """Regression: the sum was SQL's, over amounts stored as text on SQLite: past 2**63
    (about 9.2 whole 18-decimal tokens) it overflowed or came back as an inexact float."""
    _deposit(ledger, buyer, CLD, 100 * TOKEN)
    odd = 7 * TOKEN + 1  # 7.000000000000000001 CLD: a float cannot carry the last unit
    record = usage_records.UsageRecord("claude-test", 1, 1, 1, gateway_lot_id=1, chain_lot_id=1, lot_kind="tokenized")
    for i in range(2):
        ledger.reserve(buyer, CLD, odd, f"settled-{i}", ttl=60)
        ledger.settle(f"settled-{i}", odd, record=record)
    for i in range(3):
        ledger.reserve(buyer, CLD, odd, f"active-{i}", ttl=60)
    expected = 5 * odd
    assert expected > 2**63

    from promptex.coordinator.schema import settlement_batches

    with ledger.engine.connect() as conn:
        confirmed = select(settlement_batches.c.id).where(settlement_batches.c.id < 0)  # none confirmed
        assert usage_records.unsettled(conn, buyer, CLD, confirmed) == expected


def test_cli__buyer_debts__lists_open_debts_with_reason_in_whole_units(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from promptex.cli import main
    from promptex.config import settings

    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", url)
    settings.cache_clear()
    with Ledger.open(url, sqlite_synchronous="NORMAL") as book:
        account = book.create_account().id
        _, deposit = _deposit(book, account, USDC, 12_500_000)
        book.reserve(account, USDC, 2_250_000, "req-1", ttl=60)
        book.settle("req-1", 2_250_000)
        book.unwind_chain_fact(deposit)
    try:
        listed = CliRunner().invoke(main, ["buyer", "debts"])
        one = CliRunner().invoke(main, ["buyer", "debts", "--account", str(account)])
    finally:
        settings.cache_clear()
    assert listed.exit_code == 0, listed.output
    assert f"account {account} owes 2.25 USDC of 2.25 USDC — a reorg removed deposit {deposit}" in listed.output
    assert one.exit_code == 0 and "owes 2.25 USDC" in one.output
