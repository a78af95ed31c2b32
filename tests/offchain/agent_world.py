"""A ledger, the fake escrow chain, the fake billing API and an agent wired together."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from agent_fakes import BILLING_KEY, BILLING_SIGNER, CHAIN_ID, ESCROW, USER, FakeAgentChain

from promptex.agent.billing import HttpBilling
from promptex.agent.fake_billing import FakeBillingConfig
from promptex.agent.service import Agent
from promptex.agent.store import LinkedAccount
from promptex.ledger import Ledger
from promptex.protocol.redemption import provider_id
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USD
from promptex.sealing.envelope import MasterKeys

ACCOUNT = "acct_user_1"
CREDENTIAL = "sk-billing-scoped-secret"
ANTHROPIC = provider_id("anthropic")


class Clock:
    def __init__(self, chain: FakeAgentChain) -> None:
        self.chain = chain

    def __call__(self) -> int:
        return self.chain.time


@dataclass
class World:
    ledger: Ledger
    chain: FakeAgentChain
    billing: FakeBillingConfig
    url: str
    keys: MasterKeys
    account: LinkedAccount | None = None

    def agent(self, **options: Any) -> Agent:
        """A fresh agent process: new objects over the same database, chain and billing API."""
        return Agent(
            self.ledger.engine, self.chain, HttpBilling(timeout=options.pop("timeout", 2.0)), self.keys,
            clock=Clock(self.chain), billing_url=self.url, retry_seconds=5, retry_max_seconds=60,
            purchase_margin=600, tx_timeout=0, **options,
        )  # fmt: skip

    def link(self) -> LinkedAccount:
        self.account = self.agent().link_account(USER, "anthropic", ACCOUNT, CREDENTIAL, email="user@example.com")
        self.chain.s.linked[(USER, ANTHROPIC)] = self.account.account_ref
        return self.account


def make_world(db_file: Any, url: str, billing: FakeBillingConfig) -> World:
    chain = FakeAgentChain()
    chain.market("CLD", 25_000 * USD * TOKEN // 4_218, 25_000 * USD)  # $25k a side at $0.004218
    chain.user_setup(USER, "CLD", 100_000 * TOKEN, limit=20_000 * TOKEN, slippage=200)
    chain.s.signers[ANTHROPIC] = BILLING_SIGNER
    ledger = Ledger.open(f"sqlite:///{db_file}", sqlite_synchronous="NORMAL", migrate=False)
    world = World(ledger, chain, billing, url, MasterKeys({"k1": os.urandom(32)}, "k1"))
    world.link()
    return world


def billing_config() -> FakeBillingConfig:
    return FakeBillingConfig(
        signer_key=BILLING_KEY, chain_id=CHAIN_ID, escrow=ESCROW, credentials={ACCOUNT: CREDENTIAL},
        balances={ACCOUNT: 5 * USD},
    )  # fmt: skip
