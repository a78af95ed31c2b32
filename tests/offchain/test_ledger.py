"""The ledger on SQLite and PostgreSQL: holds, idempotency, the sweeper, org budgets,
promotional credit, wallet binding, chain facts and the double-entry check.

Every test runs on both databases (see conftest.py); the `ledger` fixture also checks
that the books balance after each test.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from ledger_helpers import bind_new_wallet, event_id, fund
from sqlalchemy import insert, update

from promptex.ledger import (
    AccountKind,
    BindingMessage,
    BudgetExceeded,
    ChainEventConflict,
    ExitStatus,
    ExpiredMessage,
    HoldConflict,
    HoldNotFound,
    HoldStatus,
    InsufficientFunds,
    InvalidSignature,
    Ledger,
    LedgerInconsistent,
    NonceReplayed,
    NotAMember,
    SpendCapExceeded,
    Sweeper,
    UnknownAccount,
    UnknownNonce,
    WalletAlreadyBound,
)
from promptex.ledger import wallets as _wallets
from promptex.ledger.binding import sign
from promptex.ledger.schema import balances, journal_entries, journal_lines
from promptex.protocol.units import TOKEN_UNIT as TOKEN

CLD = "CLD"
USDC = "USDC"


@pytest.fixture
def buyer(ledger: Ledger) -> int:
    return ledger.create_account().id


# ─── Holds ───────────────────────────────────────────────────────────────────


def test_reserve__funds_and_cap_cover__holds_amount(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    hold = ledger.reserve(buyer, CLD, 3 * TOKEN, "req-1", ttl=60)
    assert (hold.status, hold.amount, hold.payer) == (HoldStatus.ACTIVE, 3 * TOKEN, buyer)
    balance = ledger.balance(buyer, CLD)
    assert (balance.posted, balance.held, balance.spendable) == (10 * TOKEN, 3 * TOKEN, 7 * TOKEN)


def test_reserve__amounts_beyond_64_bits__exact(ledger, buyer):
    huge = 10**30 + 7  # a million whole tokens and 7 wei: far past SQLite's 64-bit integers
    fund(ledger, buyer, CLD, huge)
    ledger.reserve(buyer, CLD, huge - 1, "req-huge", ttl=60)
    ledger.settle("req-huge", huge - 3)
    balance = ledger.balance(buyer, CLD)
    assert (balance.posted, balance.held, balance.cap_remaining) == (3, 0, 3)
    assert ledger.system_balance("usage", CLD) == huge - 3
    assert ledger.system_balance("vault", CLD) == -huge


def test_reserve__beyond_spendable__refused_and_nothing_left_behind(ledger, buyer):
    fund(ledger, buyer, CLD, 5 * TOKEN, cap=100 * TOKEN)
    with pytest.raises(InsufficientFunds, match="can spend"):
        ledger.reserve(buyer, CLD, 5 * TOKEN + 1, "req-1", ttl=60)
    assert ledger.hold("req-1") is None
    assert ledger.balance(buyer, CLD).held == 0


def test_reserve__unknown_account__refused(ledger, buyer):
    with pytest.raises(UnknownAccount):
        ledger.reserve(9_999, CLD, 1, "req-1", ttl=60)
    with pytest.raises(UnknownAccount):
        ledger.reserve(buyer, CLD, 1, "req-1", ttl=60, payer=9_999)


def test_reserve__no_balance_in_asset__refused(ledger, buyer):
    with pytest.raises(InsufficientFunds, match="has no USDC"):
        ledger.reserve(buyer, USDC, 1, "req-1", ttl=60)


def test_reserve__beyond_spend_cap__refused(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN, cap=4 * TOKEN)
    ledger.reserve(buyer, CLD, 3 * TOKEN, "req-1", ttl=60)
    with pytest.raises(SpendCapExceeded, match="spend cap"):
        ledger.reserve(buyer, CLD, TOKEN + 1, "req-2", ttl=60)
    ledger.reserve(buyer, CLD, TOKEN, "req-3", ttl=60)  # exactly the rest of the cap


def test_reserve__no_signed_cap__refused(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN, cap=0)
    with pytest.raises(SpendCapExceeded):
        ledger.reserve(buyer, CLD, 1, "req-1", ttl=60)


def test_reserve__same_request_id__returns_existing_hold(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    first = ledger.reserve(buyer, CLD, 2 * TOKEN, "req-1", ttl=60)
    again = ledger.reserve(buyer, CLD, 2 * TOKEN, "req-1", ttl=60)
    assert again == first
    assert ledger.balance(buyer, CLD).held == 2 * TOKEN


def test_reserve__same_request_id_other_terms__conflict(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, 2 * TOKEN, "req-1", ttl=60)
    with pytest.raises(HoldConflict):
        ledger.reserve(buyer, CLD, 3 * TOKEN, "req-1", ttl=60)
    assert ledger.balance(buyer, CLD).held == 2 * TOKEN


def test_reserve__ended_request_id__returns_ended_hold(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, 2 * TOKEN, "req-1", ttl=60)
    ledger.settle("req-1", TOKEN)
    again = ledger.reserve(buyer, CLD, 2 * TOKEN, "req-1", ttl=60)
    assert again.status == HoldStatus.SETTLED
    assert ledger.balance(buyer, CLD).held == 0


@pytest.mark.parametrize("amount, ttl", [(0, 60), (-1, 60), (1, 0)])
def test_reserve__nonpositive_amount_or_ttl__value_error(ledger, buyer, amount, ttl):
    fund(ledger, buyer, CLD, TOKEN)
    with pytest.raises(ValueError):
        ledger.reserve(buyer, CLD, amount, "req-1", ttl=ttl)
    assert ledger.hold("req-1") is None


def test_settle__cost_below_hold__charges_cost_and_frees_rest(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, 3 * TOKEN, "req-1", ttl=60)
    hold = ledger.settle("req-1", TOKEN + 1)
    assert (hold.status, hold.cost, hold.charged, hold.shortfall) == (HoldStatus.SETTLED, TOKEN + 1, TOKEN + 1, 0)
    balance = ledger.balance(buyer, CLD)
    assert (balance.posted, balance.held) == (9 * TOKEN - 1, 0)
    assert balance.cap_remaining == 9 * TOKEN - 1  # settled usage counts down the signed cap
    assert ledger.system_balance("usage", CLD) == TOKEN + 1
    assert ledger.problems() == []


def test_settle__zero_cost__charges_nothing(ledger, buyer):
    fund(ledger, buyer, CLD, TOKEN)
    ledger.reserve(buyer, CLD, TOKEN, "req-1", ttl=60)
    assert ledger.settle("req-1", 0).charged == 0
    assert ledger.balance(buyer, CLD).spendable == TOKEN


def test_settle__twice_same_cost__charges_once(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, 3 * TOKEN, "req-1", ttl=60)
    first = ledger.settle("req-1", TOKEN)
    assert ledger.settle("req-1", TOKEN) == first
    assert ledger.balance(buyer, CLD).posted == 9 * TOKEN
    assert ledger.system_balance("usage", CLD) == TOKEN


def test_settle__again_with_other_cost__conflict(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, 3 * TOKEN, "req-1", ttl=60)
    ledger.settle("req-1", TOKEN)
    with pytest.raises(HoldConflict, match="settled at"):
        ledger.settle("req-1", 2 * TOKEN)


def test_settle__cost_above_hold_and_covered__charges_full_cost(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, TOKEN, "req-1", ttl=60)
    hold = ledger.settle("req-1", 4 * TOKEN)
    assert (hold.charged, hold.shortfall) == (4 * TOKEN, 0)
    assert ledger.balance(buyer, CLD).posted == 6 * TOKEN


def test_settle__cost_above_hold_uncovered__charges_hold_and_records_shortfall(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, 2 * TOKEN, "req-1", ttl=60)
    ledger.reserve(buyer, CLD, 7 * TOKEN, "req-2", ttl=60)  # 1 token left spendable
    hold = ledger.settle("req-1", 4 * TOKEN)
    assert (hold.charged, hold.shortfall) == (2 * TOKEN, 2 * TOKEN)
    balance = ledger.balance(buyer, CLD)
    assert (balance.posted, balance.held, balance.spendable) == (8 * TOKEN, 7 * TOKEN, TOKEN)


def test_settle__released_hold__conflict(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, TOKEN, "req-1", ttl=60)
    ledger.release("req-1")
    with pytest.raises(HoldConflict, match="released"):
        ledger.settle("req-1", 1)
    assert ledger.balance(buyer, CLD).posted == 10 * TOKEN


def test_settle__unknown_request__not_found(ledger):
    with pytest.raises(HoldNotFound):
        ledger.settle("nobody", 1)


def test_release__active_hold__frees_it_and_is_idempotent(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, 4 * TOKEN, "req-1", ttl=60)
    assert ledger.release("req-1").status == HoldStatus.RELEASED
    assert ledger.release("req-1").status == HoldStatus.RELEASED
    balance = ledger.balance(buyer, CLD)
    assert (balance.posted, balance.held, balance.spendable) == (10 * TOKEN, 0, 10 * TOKEN)


def test_release__settled_hold__changes_nothing(ledger, buyer):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, 4 * TOKEN, "req-1", ttl=60)
    ledger.settle("req-1", TOKEN)
    assert ledger.release("req-1").status == HoldStatus.SETTLED
    balance = ledger.balance(buyer, CLD)
    assert (balance.posted, balance.held) == (9 * TOKEN, 0)


def test_release__unknown_request__not_found(ledger):
    with pytest.raises(HoldNotFound):
        ledger.release("nobody")


def test_sweep_expired__expired_holds__released_and_live_ones_kept(ledger, buyer, clock):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, TOKEN, "short", ttl=30)
    ledger.reserve(buyer, CLD, TOKEN, "long", ttl=300)
    clock.advance(30)
    assert ledger.sweep_expired() == 1
    assert ledger.hold("short").status == HoldStatus.EXPIRED
    assert ledger.hold("long").status == HoldStatus.ACTIVE
    assert ledger.balance(buyer, CLD).held == TOKEN
    assert ledger.sweep_expired() == 0


def test_settle__after_sweep__still_charged(ledger, buyer, clock):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, TOKEN, "req-1", ttl=30)
    clock.advance(31)
    assert ledger.sweep_expired() == 1
    hold = ledger.settle("req-1", TOKEN // 2)  # the answer finished after its hold was swept
    assert (hold.status, hold.cost, hold.charged, hold.shortfall) == (HoldStatus.SETTLED, TOKEN // 2, TOKEN // 2, 0)
    balance = ledger.balance(buyer, CLD)
    assert (balance.posted, balance.held, balance.cap_remaining) == (
        10 * TOKEN - TOKEN // 2,
        0,
        10 * TOKEN - TOKEN // 2,
    )
    assert ledger.settle("req-1", TOKEN // 2) == hold  # idempotent
    assert ledger.debts(buyer) == []


def test_settle__after_sweep_and_balance_spent__charged_what_it_can_pay_the_rest_a_shortfall_no_debt(
    ledger, buyer, clock
):
    """pgdepth 4: an answer metered after its hold expired is charged no more than the buyer
    can pay then. Before, it was charged whole and what the balance lacked (the swept funds
    spent again meanwhile) became a debt: the buyer owed beyond what it had, and was refused
    (402 in debt) until a deposit repaid it. Now the rest is the hold's shortfall."""
    fund(ledger, buyer, CLD, 3 * TOKEN)
    ledger.reserve(buyer, CLD, 2 * TOKEN, "req-1", ttl=30)
    clock.advance(31)
    ledger.sweep_expired()
    ledger.reserve(buyer, CLD, 2 * TOKEN, "req-2", ttl=30)  # the swept funds were spent meanwhile
    ledger.settle("req-2", 2 * TOKEN)
    hold = ledger.settle("req-1", 2 * TOKEN)  # served, but only 1 TOKEN was left to pay it
    assert (hold.status, hold.cost, hold.charged, hold.shortfall) == (HoldStatus.SETTLED, 2 * TOKEN, TOKEN, TOKEN)
    balance = ledger.balance(buyer, CLD)
    assert (balance.posted, balance.held, balance.cap_remaining) == (0, 0, 0)
    assert ledger.debts(buyer) == []
    assert ledger.settle("req-1", 2 * TOKEN) == hold  # idempotent
    with pytest.raises(InsufficientFunds):  # an empty balance, not a debt
        ledger.reserve(buyer, CLD, 1, "req-3", ttl=30)


def test_settle__expired_but_not_swept__charges(ledger, buyer, clock):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, TOKEN, "req-1", ttl=30)
    clock.advance(31)
    assert ledger.settle("req-1", 5).charged == 5
    assert ledger.sweep_expired() == 0


def test_sweeper__batches__releases_every_expired_hold(ledger, buyer, clock):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    for i in range(5):
        ledger.reserve(buyer, CLD, 1, f"req-{i}", ttl=10)
    clock.advance(10)
    assert Sweeper(ledger, batch=2).run_once() == 5
    assert ledger.balance(buyer, CLD).held == 0


def test_sweeper_thread__expired_hold__released_then_stops(ledger, buyer, clock):
    fund(ledger, buyer, CLD, 10 * TOKEN)
    ledger.reserve(buyer, CLD, TOKEN, "req-1", ttl=10)
    clock.advance(10)
    sweeper = Sweeper(ledger, interval=3600)
    sweeper.start()
    try:
        assert sweeper.passed.wait(timeout=30), "the sweeper made no pass"
    finally:
        sweeper.stop()
    assert ledger.hold("req-1").status == HoldStatus.EXPIRED


# ─── Orgs and budgets ────────────────────────────────────────────────────────


@pytest.fixture
def org(ledger: Ledger) -> int:
    org_id = ledger.create_account(AccountKind.ORG, "acme").id
    fund(ledger, org_id, USDC, 1_000_000_000)  # $1,000
    return org_id


def test_reserve__member_within_budget__org_pays(ledger, org, buyer):
    ledger.add_member(org, buyer)
    ledger.set_member_budget(org, buyer, USDC, 50_000_000)
    hold = ledger.reserve(buyer, USDC, 20_000_000, "req-1", ttl=60, payer=org)
    assert (hold.account, hold.payer) == (buyer, org)
    assert ledger.balance(org, USDC).held == 20_000_000
    assert ledger.budget(org, buyer, USDC).held == 20_000_000
    assert ledger.balance(buyer, USDC).held == 0


def test_reserve__member_beyond_budget__refused(ledger, org, buyer):
    ledger.add_member(org, buyer)
    ledger.set_member_budget(org, buyer, USDC, 50_000_000)
    ledger.reserve(buyer, USDC, 30_000_000, "req-1", ttl=60, payer=org)
    with pytest.raises(BudgetExceeded, match="20.00 USDC left to spend from .*, needs 20.01 USDC"):
        ledger.reserve(buyer, USDC, 20_000_001, "req-2", ttl=60, payer=org)
    assert ledger.balance(org, USDC).held == 30_000_000
    assert ledger.hold("req-2") is None


def test_reserve__member_without_budget__limited_by_org_balance(ledger, org, buyer):
    ledger.add_member(org, buyer)
    ledger.reserve(buyer, USDC, 1_000_000_000, "req-1", ttl=60, payer=org)
    with pytest.raises(InsufficientFunds):
        ledger.reserve(buyer, USDC, 1, "req-2", ttl=60, payer=org)


def test_reserve__members_share_one_org_balance(ledger, org, buyer):
    other = ledger.create_account().id
    for member in (buyer, other):
        ledger.add_member(org, member)
        ledger.set_member_budget(org, member, USDC, 800_000_000)
    ledger.reserve(buyer, USDC, 600_000_000, "req-1", ttl=60, payer=org)
    with pytest.raises(InsufficientFunds):  # within its budget, beyond the org's balance
        ledger.reserve(other, USDC, 600_000_000, "req-2", ttl=60, payer=org)
    assert ledger.budget(org, other, USDC).held == 0


def test_reserve__member_of_an_org_without_the_asset__refusal_names_the_org(ledger, buyer):
    empty = ledger.create_account(AccountKind.ORG, "acme-empty").id  # its members know it by name, not by id
    ledger.add_member(empty, buyer)
    with pytest.raises(InsufficientFunds, match="^org 'acme-empty' has no USDC$") as refused:
        ledger.reserve(buyer, USDC, 1, "req-1", ttl=60, payer=empty)
    assert refused.value.available == 0


def test_reserve__member_beyond_the_org_s_balance__refusal_names_the_org(ledger, org, buyer):
    ledger.add_member(org, buyer)
    with pytest.raises(InsufficientFunds, match="^org 'acme' can spend 1,000.00 USDC, needs 1,000.01 USDC$"):
        ledger.reserve(buyer, USDC, 1_000_010_000, "req-1", ttl=60, payer=org)


def test_reserve__member_beyond_budget__refusal_names_the_org(ledger, org, buyer):
    ledger.add_member(org, buyer)
    ledger.set_member_budget(org, buyer, USDC, 50_000_000)
    with pytest.raises(BudgetExceeded, match=f"^account {buyer} has 50.00 USDC left to spend from org 'acme', needs"):
        ledger.reserve(buyer, USDC, 50_000_001, "req-1", ttl=60, payer=org)


def test_reserve__non_member_from_org__refused(ledger, org, buyer):
    with pytest.raises(NotAMember, match=f"^account {buyer} may not spend from org 'acme'$"):
        ledger.reserve(buyer, USDC, 1, "req-1", ttl=60, payer=org)


def test_settle__member__budget_counts_down(ledger, org, buyer):
    ledger.add_member(org, buyer)
    ledger.set_member_budget(org, buyer, USDC, 50_000_000)
    ledger.reserve(buyer, USDC, 20_000_000, "req-1", ttl=60, payer=org)
    ledger.settle("req-1", 15_000_000)
    budget = ledger.budget(org, buyer, USDC)
    assert (budget.remaining, budget.held) == (35_000_000, 0)
    assert ledger.balance(org, USDC).posted == 985_000_000


def test_release__member__budget_freed(ledger, org, buyer):
    ledger.add_member(org, buyer)
    ledger.set_member_budget(org, buyer, USDC, 50_000_000)
    ledger.reserve(buyer, USDC, 20_000_000, "req-1", ttl=60, payer=org)
    ledger.release("req-1")
    assert ledger.budget(org, buyer, USDC).held == 0
    assert ledger.balance(org, USDC).held == 0


def test_set_member_budget__with_active_holds__counts_them(ledger, org, buyer):
    ledger.add_member(org, buyer)
    ledger.reserve(buyer, USDC, 20_000_000, "req-1", ttl=60, payer=org)
    ledger.set_member_budget(org, buyer, USDC, 25_000_000)
    assert ledger.budget(org, buyer, USDC).held == 20_000_000
    with pytest.raises(BudgetExceeded):
        ledger.reserve(buyer, USDC, 5_000_001, "req-2", ttl=60, payer=org)
    ledger.release("req-1")
    assert ledger.budget(org, buyer, USDC).held == 0


def test_set_member_budget__none__lifts_the_limit(ledger, org, buyer):
    ledger.add_member(org, buyer)
    ledger.set_member_budget(org, buyer, USDC, 1)
    ledger.set_member_budget(org, buyer, USDC, None)
    ledger.reserve(buyer, USDC, 500_000_000, "req-1", ttl=60, payer=org)
    assert ledger.budget(org, buyer, USDC) is None


# ─── Promotional credit ──────────────────────────────────────────────────────


@pytest.fixture
def treasury(ledger: Ledger) -> int:
    treasury_id = ledger.treasury().id
    fund(ledger, treasury_id, CLD, 1_000 * TOKEN)  # funded on-chain like any account
    return treasury_id


def test_grant_promotional_credit__user_spends__treasury_balance_settles(ledger, treasury, buyer):
    ledger.grant_promotional_credit("welcome:1", buyer, CLD, 5 * TOKEN)
    ledger.reserve(buyer, CLD, 2 * TOKEN, "req-1", ttl=60, payer=treasury)
    hold = ledger.settle("req-1", TOKEN)
    assert hold.payer == treasury
    assert ledger.balance(treasury, CLD).posted == 999 * TOKEN
    assert ledger.balance(buyer, CLD).posted == 0
    assert ledger.budget(treasury, buyer, CLD).remaining == 4 * TOKEN
    assert ledger.system_balance("usage", CLD) == TOKEN
    assert ledger.problems() == []


def test_reserve__promotional_credit_exhausted__refused(ledger, treasury, buyer):
    ledger.grant_promotional_credit("welcome:1", buyer, CLD, 5 * TOKEN)
    ledger.reserve(buyer, CLD, 5 * TOKEN, "req-1", ttl=60, payer=treasury)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(buyer, CLD, 1, "req-2", ttl=60, payer=treasury)


def test_reserve__treasury_without_grant__refused(ledger, treasury, buyer):
    with pytest.raises(NotAMember):
        ledger.reserve(buyer, CLD, 1, "req-1", ttl=60, payer=treasury)
    ledger.grant_promotional_credit("welcome:1", buyer, USDC, 1)  # a member, but with no CLD credit
    with pytest.raises(BudgetExceeded, match="no promotional credit"):
        ledger.reserve(buyer, CLD, 1, "req-2", ttl=60, payer=treasury)


def test_grant_promotional_credit__same_grant_id__granted_once(ledger, treasury, buyer):
    ledger.grant_promotional_credit("welcome:1", buyer, CLD, 5 * TOKEN)
    again = ledger.grant_promotional_credit("welcome:1", buyer, CLD, 5 * TOKEN)
    assert again.remaining == 5 * TOKEN
    with pytest.raises(ChainEventConflict):
        ledger.grant_promotional_credit("welcome:1", buyer, CLD, 6 * TOKEN)


def test_grant_promotional_credit__more_than_treasury_holds__reserve_refused(ledger, buyer):
    treasury = ledger.treasury().id
    fund(ledger, treasury, CLD, TOKEN)
    ledger.grant_promotional_credit("welcome:1", buyer, CLD, 5 * TOKEN)
    with pytest.raises(InsufficientFunds):
        ledger.reserve(buyer, CLD, 2 * TOKEN, "req-1", ttl=60, payer=treasury)


# ─── Wallet binding ──────────────────────────────────────────────────────────


def test_bind_wallet__valid_signature__binds_and_credits_waiting_deposits(ledger, buyer):
    wallet = Account.create()
    deposit = ledger.credit_deposit(event_id(), wallet.address, CLD, 7 * TOKEN)
    assert deposit.account != buyer
    assert ledger.account(deposit.account).kind == AccountKind.UNCLAIMED
    assert ledger.account_of(wallet.address) is None

    message = ledger.issue_binding_challenge(buyer, wallet.address)
    assert ledger.bind_wallet(message, sign(message, wallet.key)) == buyer
    assert ledger.account_of(wallet.address) == buyer
    assert ledger.wallets(buyer) == [wallet.address]
    assert ledger.balance(buyer, CLD).posted == 7 * TOKEN
    assert ledger.balance(deposit.account, CLD).posted == 0
    ledger.credit_deposit(event_id(), wallet.address, CLD, TOKEN)  # later deposits go straight to the account
    assert ledger.balance(buyer, CLD).posted == 8 * TOKEN


def test_credit_deposit__unbound_address__credited_to_no_one(ledger, buyer):
    wallet = Account.create()
    ledger.credit_deposit(event_id(), wallet.address, CLD, 7 * TOKEN)
    assert ledger.balance(buyer, CLD).posted == 0
    with pytest.raises(InsufficientFunds):
        ledger.reserve(buyer, CLD, 1, "req-1", ttl=60)
    assert ledger.system_balance("vault", CLD) == -7 * TOKEN


def test_reserve__from_unclaimed_funds__refused(ledger):
    deposit = ledger.credit_deposit(event_id(), Account.create().address, CLD, 7 * TOKEN)
    with pytest.raises(SpendCapExceeded):
        ledger.reserve(deposit.account, CLD, 1, "req-1", ttl=60)
    with pytest.raises(UnknownAccount, match="unclaimed"):
        ledger.set_spend_cap(deposit.account, CLD, TOKEN)


def test_bind_wallet__wrong_signer__refused(ledger, buyer):
    wallet, attacker = Account.create(), Account.create()
    message = ledger.issue_binding_challenge(buyer, wallet.address)
    with pytest.raises(InvalidSignature, match="not by the wallet"):
        ledger.bind_wallet(message, sign(message, attacker.key))
    assert ledger.account_of(wallet.address) is None


def test_bind_wallet__malformed_signature__refused(ledger, buyer):
    wallet = Account.create()
    message = ledger.issue_binding_challenge(buyer, wallet.address)
    with pytest.raises(InvalidSignature, match="malformed"):
        ledger.bind_wallet(message, b"\x01" * 10)


def test_bind_wallet__expired_message__refused(ledger, buyer, clock):
    wallet = Account.create()
    message = ledger.issue_binding_challenge(buyer, wallet.address, ttl=60)
    signature = sign(message, wallet.key)
    clock.advance(61)
    with pytest.raises(ExpiredMessage, match="expired"):
        ledger.bind_wallet(message, signature)
    assert ledger.account_of(wallet.address) is None


def test_bind_wallet__replayed_nonce__refused(ledger, buyer):
    wallet = Account.create()
    message = ledger.issue_binding_challenge(buyer, wallet.address)
    signature = sign(message, wallet.key)
    ledger.bind_wallet(message, signature)
    with pytest.raises(NonceReplayed, match="used already"):
        ledger.bind_wallet(message, signature)


def test_bind_wallet__message_not_issued__refused(ledger, buyer, clock):
    wallet = Account.create()
    forged = BindingMessage(buyer, wallet.address, "0x" + "ab" * 32, clock(), clock() + 60, 31337)
    with pytest.raises(UnknownNonce):
        ledger.bind_wallet(forged, sign(forged, wallet.key))


def test_bind_wallet__terms_changed_and_resigned__refused(ledger, buyer):
    wallet = Account.create()
    issued = ledger.issue_binding_challenge(buyer, wallet.address, ttl=60)
    stretched = BindingMessage(**{**issued.__dict__, "expires_at": issued.expires_at + 10**6})
    with pytest.raises(InvalidSignature, match="differs from the challenge"):
        ledger.bind_wallet(stretched, sign(stretched, wallet.key))


def test_bind_wallet__signed_for_other_chain__refused(ledger, buyer):
    wallet = Account.create()
    issued = ledger.issue_binding_challenge(buyer, wallet.address)
    other_chain = BindingMessage(**{**issued.__dict__, "chain_id": 1})
    with pytest.raises(InvalidSignature, match="chain 1"):
        ledger.bind_wallet(other_chain, sign(other_chain, wallet.key))


def test_bind_wallet__bound_to_other_account__refused(ledger, buyer):
    wallet = Account.create()
    first = ledger.issue_binding_challenge(buyer, wallet.address)
    ledger.bind_wallet(first, sign(first, wallet.key))
    other = ledger.create_account().id
    second = ledger.issue_binding_challenge(other, wallet.address)
    with pytest.raises(WalletAlreadyBound) as refused:  # which account, not only "another" (newuser18)
        ledger.bind_wallet(second, sign(second, wallet.key))
    assert str(refused.value).startswith(f"wallet {wallet.address} is bound to another account: account {buyer}")
    assert ledger.account_of(wallet.address) == buyer


@pytest.mark.parametrize("later", [0, -1], ids=["same_second", "clock_behind"])
def test_bind_wallet__second_wallet_bound_in_the_same_second_or_by_a_clock_behind__debited_wallet_unchanged(
    ledger, buyer, clock, later
):
    """cbreak2's item 5, tried (cbreak3 s13): the wallet settlements debit is the account's
    first bound, read as the lowest (bound_at, address). A second wallet with a lower
    address bound in the same second (or by a gateway whose clock is a second behind) became
    "first": batches planned after it debit another wallet than those planned before, and
    a failed batch that lands after all fails `_reattach`'s root proof (its entries
    recomputed with the new wallet). The first binding stays the debited wallet."""
    first = bind_new_wallet(ledger, buyer, (75).to_bytes(32, "big"))
    clock.advance(later)
    second = bind_new_wallet(ledger, buyer, (130).to_bytes(32, "big"))
    assert first.startswith("0xFF") and second.startswith("0x00")  # lower in any collation
    with ledger.engine.connect() as conn:
        assert _wallets.first_bound(conn, buyer) == first
        assert _wallets.bindings(conn)[buyer] == [first, second]


def test_spend_cap__registered_by_a_bound_wallet_settlements_do_not_debit__not_the_accounts_cap(ledger, buyer):
    """pgbind s14: the vault checks only the cap of the wallet it debits (`first_bound`). A cap
    the account's second wallet registered became the account's: the gateway served under it,
    the batch debiting the first wallet was refused beyond its own cap, and the records were
    quarantined, then refunded a day later (the seller unpaid). The second wallet's cap, set
    before or after the first's, and its unwinding leave the account's cap alone; so does
    its session key."""
    first, second = bind_new_wallet(ledger, buyer), bind_new_wallet(ledger, buyer)
    caps = [event_id() for _ in range(3)]
    ledger.apply_chain_facts(lambda facts: facts.register_spend_cap(caps[0], second, CLD, 500 * TOKEN))
    assert ledger.balance(buyer, CLD).cap_remaining == 0  # the debited wallet signed no cap yet
    ledger.apply_chain_facts(lambda facts: facts.register_spend_cap(caps[1], first, CLD, 5 * TOKEN))
    ledger.apply_chain_facts(lambda facts: facts.register_spend_cap(caps[2], second, CLD, 700 * TOKEN))
    assert ledger.balance(buyer, CLD).cap_remaining == 5 * TOKEN
    ledger.apply_chain_facts(lambda facts: facts.unwind(caps[2]))  # a reorg took the second's cap off
    assert ledger.balance(buyer, CLD).cap_remaining == 5 * TOKEN
    # Signed mode's session keys alike: the second wallet's session is not the account's
    # (the coordinator holds records under a session of another wallet than it debits).
    ledger.register_session(
        event_id(), address=second, asset=CLD, asset_address="0x" + "cd" * 20, chain_id=31337,
        vault="0x" + "ab" * 20, key="0x" + "ef" * 20, session=1, lanes=1, maximum=900 * TOKEN,
        expiry=ledger.clock() + 86_400, signed_from=2,
    )  # fmt: skip
    assert ledger.session(buyer, CLD) is None and ledger.balance(buyer, CLD).cap_remaining == 5 * TOKEN
    revoked = ledger.revoke_session(event_id(), address=second, asset=CLD, session=1, ends_at=ledger.clock() + 60)
    assert revoked is not None and revoked.address == second  # found where it was registered


def test_spend_cap__set_before_its_wallet_was_bound_then_orphaned_by_a_reorg__the_account_s_cap_undone(ledger, buyer):
    """wbreak s15: a wallet that set its cap on chain before its binding has it carried to
    the account when bound (`wallets._claim`), but the cap's record stayed on the wallet's
    unclaimed account: a reorg that orphaned the cap undid it there, and the account kept
    a cap the chain no longer has (the gateway serving what the vault refuses to settle).
    A wallet bound second keeps its cap on its unclaimed account, undone there."""
    wallet, later = Account.create(), Account.create()
    caps = [event_id(), event_id()]
    ledger.apply_chain_facts(lambda facts: facts.register_spend_cap(caps[0], wallet.address, CLD, 500 * TOKEN))
    ledger.apply_chain_facts(lambda facts: facts.register_spend_cap(caps[1], later.address, CLD, 700 * TOKEN))
    bind_new_wallet(ledger, buyer, wallet.key)
    bind_new_wallet(ledger, buyer, later.key)
    assert ledger.balance(buyer, CLD).cap_remaining == 500 * TOKEN  # the debited wallet's, carried over
    ledger.apply_chain_facts(lambda facts: facts.unwind(caps[0]))  # a reorg took it off the chain
    assert ledger.balance(buyer, CLD).cap_remaining == 0
    ledger.apply_chain_facts(lambda facts: facts.unwind(caps[1]))
    assert ledger.balance(buyer, CLD).cap_remaining == 0
    with ledger.engine.connect() as conn:
        unclaimed = _wallets.governed_account(conn, later.address, ledger.clock())
    assert unclaimed != buyer and ledger.balance(unclaimed, CLD).cap_remaining == 0


def test_later_wallet__deposit_before_binding_unwound_after__debits_its_own_account_not_the_accounts(ledger, buyer):
    """wallets s15: a later wallet's funds stay its own (settlement debits the first). Its
    deposit made before its binding stays on its unclaimed account; a reorg that removes it
    after the binding debits that account, never the bound account's (whose funds are the
    first wallet's) — `owner_of` had it as moved there."""
    first = fund(ledger, buyer, USDC, 1_000)
    later = Account.create()
    deposit = event_id()
    waiting = ledger.credit_deposit(deposit, later.address, USDC, 400).account
    message = ledger.issue_binding_challenge(buyer, later.address)
    ledger.bind_wallet(message, sign(message, later.key))
    assert ledger.balance(buyer, USDC).posted == 1_000 and ledger.balance(waiting, USDC).posted == 400
    ledger.apply_chain_facts(lambda facts: facts.unwind(deposit))
    assert ledger.balance(buyer, USDC).posted == 1_000 and ledger.balance(waiting, USDC).posted == 0
    assert ledger.open_debts() == [] and ledger.debited_wallet(buyer) == first


def test_issue_binding_challenge__not_an_address__value_error(ledger, buyer):
    with pytest.raises(ValueError, match="not an Ethereum address"):
        ledger.issue_binding_challenge(buyer, "0x1234")


# ─── Chain facts: deposits and exits ─────────────────────────────────────────


def test_credit_deposit__same_event__credited_once(ledger, buyer):
    address = bind_new_wallet(ledger, buyer)
    event = event_id()
    first = ledger.credit_deposit(event, address, USDC, 5_000_000)
    assert ledger.credit_deposit(event, address.lower(), USDC, 5_000_000) == first
    assert ledger.balance(buyer, USDC).posted == 5_000_000


def test_credit_deposit__same_event_other_amount__conflict(ledger, buyer):
    address = bind_new_wallet(ledger, buyer)
    event = event_id()
    ledger.credit_deposit(event, address, USDC, 5_000_000)
    with pytest.raises(ChainEventConflict):
        ledger.credit_deposit(event, address, USDC, 6_000_000)


def test_lock_for_exit__then_complete__debits_and_unlocks(ledger, buyer):
    address = fund(ledger, buyer, USDC, 10_000_000)
    ledger.lock_for_exit("req-exit", address, USDC, 4_000_000)
    balance = ledger.balance(buyer, USDC)
    assert (balance.locked, balance.spendable) == (4_000_000, 6_000_000)
    with pytest.raises(InsufficientFunds):
        ledger.reserve(buyer, USDC, 6_000_001, "req-1", ttl=60)
    closed = ledger.complete_exit("done-exit", address, USDC, 4_000_000)
    assert (closed.event_id, closed.status) == ("req-exit", ExitStatus.COMPLETED)
    balance = ledger.balance(buyer, USDC)
    assert (balance.posted, balance.locked, balance.spendable) == (6_000_000, 0, 6_000_000)
    assert ledger.system_balance("vault", USDC) == -6_000_000
    assert ledger.complete_exit("done-exit", address, USDC, 4_000_000) == closed  # idempotent
    assert ledger.balance(buyer, USDC).posted == 6_000_000


def test_lock_for_exit__then_cancel__spendable_again(ledger, buyer):
    address = fund(ledger, buyer, USDC, 10_000_000)
    ledger.lock_for_exit("req-exit", address, USDC, 4_000_000)
    assert ledger.cancel_exit("cancel-exit", address, USDC).status == ExitStatus.CANCELLED
    assert ledger.cancel_exit("cancel-exit", address, USDC).status == ExitStatus.CANCELLED
    balance = ledger.balance(buyer, USDC)
    assert (balance.posted, balance.locked) == (10_000_000, 0)


def test_lock_for_exit__same_event__locked_once(ledger, buyer):
    address = fund(ledger, buyer, USDC, 10_000_000)
    ledger.lock_for_exit("req-exit", address, USDC, 4_000_000)
    ledger.lock_for_exit("req-exit", address, USDC, 4_000_000)
    assert ledger.balance(buyer, USDC).locked == 4_000_000
    with pytest.raises(ChainEventConflict):
        ledger.lock_for_exit("req-exit", address, USDC, 5_000_000)


def test_complete_exit__instant_withdrawal_without_lock__debits(ledger, buyer):
    address = fund(ledger, buyer, USDC, 10_000_000)
    assert ledger.complete_exit("withdrawn", address, USDC, 3_000_000) is None
    assert ledger.balance(buyer, USDC).posted == 7_000_000


def test_lock_for_exit__unbound_then_bound__lock_moves_with_funds(ledger, buyer):
    wallet = Account.create()
    ledger.credit_deposit(event_id(), wallet.address, USDC, 10_000_000)
    ledger.lock_for_exit("req-exit", wallet.address, USDC, 4_000_000)
    message = ledger.issue_binding_challenge(buyer, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    balance = ledger.balance(buyer, USDC)
    assert (balance.posted, balance.locked) == (10_000_000, 4_000_000)
    ledger.complete_exit("done-exit", wallet.address, USDC, 4_000_000)
    balance = ledger.balance(buyer, USDC)
    assert (balance.posted, balance.locked) == (6_000_000, 0)


# ─── The books ───────────────────────────────────────────────────────────────


def test_check__many_operations__books_balance(ledger, buyer, clock):
    address = fund(ledger, buyer, CLD, 100 * TOKEN)
    for i in range(10):
        ledger.reserve(buyer, CLD, 3 * TOKEN, f"req-{i}", ttl=60)
    for i in range(0, 10, 3):
        ledger.settle(f"req-{i}", TOKEN + i)
    ledger.release("req-1")
    ledger.lock_for_exit("exit", address, CLD, 10 * TOKEN)
    clock.advance(60)
    ledger.sweep_expired()
    ledger.complete_exit("exit-done", address, CLD, 10 * TOKEN)
    assert ledger.problems() == []
    charged = sum(TOKEN + i for i in range(0, 10, 3))
    assert ledger.balance(buyer, CLD).posted == 90 * TOKEN - charged
    assert ledger.system_balance("usage", CLD) == charged


def test_check__unbalanced_entry__reported(ledger, buyer):
    fund(ledger, buyer, CLD, TOKEN)
    with ledger.engine.begin() as conn:
        entry = conn.execute(
            insert(journal_entries).values(ref="forged", kind="forged", created_at=0).returning(journal_entries.c.id)
        ).scalar_one()
        conn.execute(insert(journal_lines).values(entry_id=entry, account_id=buyer, asset=CLD, amount=5))
    problems = ledger.problems()
    assert any("off by 5 CLD" in p for p in problems)
    assert any("not the sum of its journal lines" in p for p in problems)
    with pytest.raises(LedgerInconsistent):
        ledger.check()
    with ledger.engine.begin() as conn:  # undo, so the fixture's own check passes
        conn.execute(journal_lines.delete().where(journal_lines.c.entry_id == entry))
        conn.execute(journal_entries.delete().where(journal_entries.c.id == entry))


def test_check__held_out_of_step__reported(ledger, buyer):
    fund(ledger, buyer, CLD, TOKEN)
    with ledger.engine.begin() as conn:
        conn.execute(update(balances).where(balances.c.account_id == buyer).values(held=1))
    assert any("held 1 is not the sum of its active holds" in p for p in ledger.problems())
    with ledger.engine.begin() as conn:
        conn.execute(update(balances).where(balances.c.account_id == buyer).values(held=0))


def test_local_postgres__no_server_binaries__fails_saying_make_test_installs_them(monkeypatch):
    from promptex.ledger import local_postgres

    monkeypatch.setattr(local_postgres.shutil, "which", lambda _name: None)
    monkeypatch.setattr(local_postgres.glob, "glob", lambda _pattern: [])
    with pytest.raises(local_postgres.PostgresUnavailable, match="`make test` installs them"):
        local_postgres.LocalPostgres()


# ─── Migrations ──────────────────────────────────────────────────────────────


def test_open__existing_ledger__keeps_data(ledger_url, clock):
    with Ledger.open(ledger_url, clock=clock) as first:
        account = first.create_account().id
    with Ledger.open(ledger_url, clock=clock) as again:
        assert again.account(account).kind == AccountKind.USER
        assert again.problems() == []
