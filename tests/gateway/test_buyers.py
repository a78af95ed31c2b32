"""Buyers: signup, wallet binding by signature, welcome credit, per-key budgets, org keys."""

from __future__ import annotations

import httpx
import pytest
from eth_account import Account

from promptex.gateway.buyers import bind_wallet, challenge_json, member_key, message_from_json, signup
from promptex.ledger import AccountKind, InvalidSignature
from promptex.ledger.binding import sign
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import Fake, Harness, event_id
from .test_api import usdc_cost

HOLD = usdc_cost("fake-gpt", 6000, 3 + 4 + len("hello world"), 4)  # the gateway's upper bound
COST = usdc_cost("fake-gpt", 6000, 3 + 2, 4)  # what the fake's usage costs
ONE_REQUEST = HOLD + COST - 1  # covers the first request's hold, not a second one after it

HELLO = [{"role": "user", "content": "hello world"}]


def fund(gw: Harness, account: int, amount: int) -> None:
    wallet = Account.create()
    message = gw.ledger.issue_binding_challenge(account, wallet.address)
    gw.ledger.bind_wallet(message, sign(message, wallet.key))
    gw.ledger.credit_deposit(event_id(), wallet.address, "USDC", amount)
    gw.ledger.set_spend_cap(account, "USDC", amount)


def chat(gw: Harness, key: str, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "fake-gpt", "messages": HELLO, "max_tokens": max_tokens},
        timeout=30,
    )


def test_signup__wallet_bound_by_signature__welcome_credit_pays_from_treasury(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    treasury = gw.ledger.treasury("promotions").id
    fund(gw, treasury, 100 * USDC)
    new = signup(gw.ledger, gw.store, gw.now())
    wallet = Account.create()
    message = message_from_json(challenge_json(gw.ledger.issue_binding_challenge(new.account, wallet.address)))
    bind_wallet(
        gw.ledger, message, sign(message, wallet.key), welcome_asset="USDC", welcome_amount=USDC, treasury="promotions"
    )
    assert gw.ledger.wallets(new.account) == [wallet.address]
    response = chat(gw, new.key)
    assert response.status_code == 200, response.text
    spent = 100 * USDC - gw.ledger.balance(treasury, "USDC").posted
    assert spent > 0
    budget = gw.ledger.budget(treasury, new.account, "USDC")
    assert budget is not None and budget.remaining == USDC - spent
    assert gw.ledger.balance(new.account, "USDC").posted == 0  # spend-only: nothing to withdraw


def test_bind__signed_by_another_wallet__refused_and_no_welcome_credit(gw: Harness) -> None:
    new = signup(gw.ledger, gw.store, gw.now())
    victim, attacker = Account.create(), Account.create()
    message = gw.ledger.issue_binding_challenge(new.account, victim.address)
    with pytest.raises(InvalidSignature):
        bind_wallet(
            gw.ledger,
            message,
            sign(message, attacker.key),
            welcome_asset="USDC",
            welcome_amount=USDC,
            treasury="promotions",
        )
    assert gw.ledger.wallets(new.account) == []
    assert gw.ledger.budget(gw.ledger.treasury("promotions").id, new.account, "USDC") is None


def test_signup__welcome_credit_spent__402(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    fund(gw, gw.ledger.treasury("promotions").id, 100 * USDC)
    new = signup(gw.ledger, gw.store, gw.now())
    wallet = Account.create()
    message = gw.ledger.issue_binding_challenge(new.account, wallet.address)
    bind_wallet(
        gw.ledger, message, sign(message, wallet.key), welcome_asset="USDC", welcome_amount=10, treasury="promotions"
    )
    response = chat(gw, new.key)
    assert response.status_code == 402 and response.headers["x-should-retry"] == "false"


def test_key_budget__covers_one_request__second_refused_402(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    account, _ = gw.buyer(amount=10 * USDC)
    key, record = gw.api_key(account, budget=("USDC", ONE_REQUEST))
    assert chat(gw, key).status_code == 200
    left = gw.store.key_by_id(record.id)
    assert left is not None and left.budget_remaining == ONE_REQUEST - COST
    assert chat(gw, key).status_code == 402
    assert gw.store.key_by_id(record.id) == left  # the refused request took nothing


def test_org_member_key__spends_from_org_within_member_budget(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    org = gw.ledger.create_account(AccountKind.ORG).id
    fund(gw, org, 10 * USDC)
    capped = member_key(gw.ledger, gw.store, org, gw.now(), budget=("USDC", ONE_REQUEST))
    free = member_key(gw.ledger, gw.store, org, gw.now())
    assert chat(gw, capped.key).status_code == 200
    assert chat(gw, capped.key).status_code == 402
    assert chat(gw, free.key).status_code == 200
    assert gw.ledger.balance(capped.account, "USDC").posted == 0
    assert gw.ledger.balance(org, "USDC").posted < 10 * USDC


def test_402__names_what_is_short__the_org_s_balance_or_the_member_s_budget__nothing_to_a_non_member(
    gw: Harness, fake: Fake
) -> None:
    """The 402 said "more than your balance covers" also when the org's balance or the member's
    budget in it was short; a key spending from an org its account is not in learns nothing of it."""
    gw.add_lot(fake)
    org = gw.ledger.create_account(AccountKind.ORG, "acme").id
    fund(gw, org, COST)  # less than one request's hold
    member = member_key(gw.ledger, gw.store, org, gw.now())
    budgeted = member_key(gw.ledger, gw.store, org, gw.now(), budget=("USDC", COST))
    _, own = gw.buyer(amount=COST)
    stranger, _ = gw.buyer(amount=10 * USDC)
    outsider, _ = gw.api_key(stranger, payer=org)

    def says(key: str) -> str:
        response = chat(gw, key, max_tokens=4_000)
        assert response.status_code == 402, response.text
        return response.json()["error"]["message"]

    assert "more than the balance of org 'acme' covers" in says(member.key)
    assert "more than your budget in org 'acme' covers" in says(budgeted.key)
    assert "more than your balance covers" in says(own)
    refused = says(outsider)
    assert "acme" not in refused and str(org) not in refused and "not a member" in refused, refused


def test_bind__org_wallet__bound_without_welcome_credit(gw: Harness) -> None:
    treasury = gw.ledger.treasury("promotions").id
    fund(gw, treasury, 100 * USDC)
    org = gw.ledger.create_account(AccountKind.ORG).id
    wallet = Account.create()
    message = gw.ledger.issue_binding_challenge(org, wallet.address)
    bind_wallet(gw.ledger, message, sign(message, wallet.key), welcome_asset="USDC", welcome_amount=USDC,
                treasury="promotions")  # fmt: skip
    assert gw.ledger.wallets(org) == [wallet.address]
    assert gw.ledger.budget(treasury, org, "USDC") is None  # welcome credit is for people
    assert gw.ledger.balance(treasury, "USDC").posted == 100 * USDC
