"""The whole local market for the dashboard's browser tests, in this process: the worker's
market anvil (`ape run deploy` with the fake billing signer + `ape run seed_market`), a listed OpenAI
lot opened through the gateway's own seller path, the fake upstream, the fake Anthropic
billing API, the gateway, the indexer, the coordinator and the redemption agent (stepped
in background threads) and the dashboard server; `seed_org` adds an org with a member
who has spent."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from web3 import Web3

from anvil_node import ROOT
from polling import until
from promptex.agent.billing import HttpBilling
from promptex.agent.chain import Web3AgentChain
from promptex.agent.factory import LOCAL_AGENT_KEY, LOCAL_BILLING_SIGNER_KEY
from promptex.agent.fake_billing import FakeBillingConfig, create_fake_billing
from promptex.agent.service import Agent
from promptex.chain.deployments import Deployment, load_deployment
from promptex.config import Settings
from promptex.coordinator.chain import Web3Chain
from promptex.coordinator.door import Door
from promptex.coordinator.factory import ANVIL_KEY_0
from promptex.coordinator.requests import Place
from promptex.coordinator.service import Coordinator
from promptex.dashboard import DashboardOptions, create_app
from promptex.fakes import FakeUpstreamConfig, create_fake_upstream
from promptex.gateway import create_app as create_gateway
from promptex.gateway.buyers import NewKey, member_key
from promptex.gateway.store import GatewayStore
from promptex.indexer.followed import Followed
from promptex.indexer.rpc import RpcClient
from promptex.indexer.service import Indexer
from promptex.ledger import AccountKind, Ledger
from promptex.metering import load_catalog
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.units import DAY
from promptex.protocol.units import USD_MICRO as USD
from promptex.sealing.envelope import load_master_keys
from promptex.sellers import Capacity, Onboarding, SellerChain, SellerStore
from promptex.sellers.factory import LOCAL_ATTESTOR_KEY
from promptex.serving import ServerThread

DIST = ROOT / "dashboard" / "dist"
BILLING_CREDENTIAL = "scoped-billing-credential"  # pasted once by the user; sealed on the server after that
# The keys the fake upstream accepts: the stack's own lot's, and the one a seller onboards in the browser.
UPSTREAM_KEYS = frozenset({"sk-dashboard-test", "sk-browser-seller"})


@dataclass
class Stack:
    anvil_url: str
    dashboard_url: str
    gateway_url: str
    deployment: Deployment
    w3: Web3
    settings: Settings
    upstream_url: str = ""
    agent: Any = None
    billing: Any = None  # the fake billing API's FakeBillingConfig (balances, purchases)
    ledger: Any = None

    def contract(self, name: str) -> Any:
        record = self.deployment.contracts[name]
        abi = json.loads(Path(record.abi).read_text())
        return self.w3.eth.contract(address=Web3.to_checksum_address(record.address), abi=abi)


def transact(w3: Web3, call: Any, sender: str) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    assert receipt.status == 1, f"transaction reverted: {call}"
    return receipt


class Stepper:
    """Runs `step` every `interval` seconds in a daemon thread until stopped; keeps the last error."""

    def __init__(self, name: str, step: Any, interval: float) -> None:
        self.step, self.interval = step, interval
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - shown in the test's failure, never swallowed silently
                self.errors.append(repr(exc))
            self.stop.wait(self.interval)

    def __enter__(self) -> Stepper:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # anvil's public dev account 1


def open_listed_lot(stack: Stack, ledger: Ledger, keys: Any, upstream_url: str) -> int:
    """Seller (anvil account 1) lists $1,000 of (fake) OpenAI capacity at 60 % of list on the
    one tokenize/list path: verified and sealed, the bond approved with the seller's key,
    opened in the escrow by the deployer (an attestor). Returns the escrow's lot id."""
    seller = Account.from_key(ANVIL_KEY_1).address
    chain = SellerChain(stack.anvil_url, stack.deployment, attestor_key=ANVIL_KEY_0, seller_key=ANVIL_KEY_1)
    face = 1_000 * USD
    transact(stack.w3, stack.contract("USDC").functions.mint(seller, chain.min_bond(face)), seller)
    capacity = Capacity(
        provider="openai",
        api="openai",
        base_url=upstream_url + "/v1",
        api_key="sk-dashboard-test",
        face_value_usd_micro=face,
        kind="listed",
        rate_bps=6_000,
        expires_at=chain.now() + 30 * DAY,
        seller=seller,
        resale_permitted=True,
    )
    onboarding = Onboarding(SellerStore(ledger.engine), chain, keys, load_catalog(None), posting_margin=300)
    return onboarding.add(capacity).chain_lot_id


@contextlib.contextmanager
def market_stack(work: Path, market: tuple[str, Path]) -> Iterator[Stack]:
    """Everything around `market`, the worker's market anvil (`seeded_anvil`: deployed with
    the fake billing signer and the dashboard's attestor, as `promptex up` deploys, and seeded)."""
    anvil_url, deployments = market
    deployment = load_deployment("local", deployments)
    settings = Settings(
        deployments_dir=deployments,
        ledger_url=f"sqlite:///{work / 'ledger.sqlite3'}",
        gateway_master_key_file=work / "master.key",
        welcome_credit_amount=0,
        gateway_default_max_tokens=512,
        gateway_lot_refresh_seconds=0.5,
        gateway_metrics_port=0,  # no metrics/health port: not 9464, which another test may hold
        indexer_rpc_url=anvil_url,
        coordinator_rpc_url=anvil_url,
        attestor_private_key=LOCAL_ATTESTOR_KEY,
    )
    w3 = Web3(Web3.HTTPProvider(anvil_url))
    ledger = Ledger.from_settings(settings)
    billing_config = FakeBillingConfig(
        signer_key=LOCAL_BILLING_SIGNER_KEY, chain_id=deployment.chain_id,
        escrow=deployment.address("RedemptionEscrow"), credentials={},
    )  # fmt: skip
    upstream_config = FakeUpstreamConfig(output_tokens=40, api_keys=UPSTREAM_KEYS)
    with (
        ServerThread(create_fake_upstream(upstream_config)) as upstream,
        ServerThread(create_fake_billing(billing_config)) as billing,
    ):
        stack = Stack(anvil_url, "", "", deployment, w3, settings, upstream.url, billing=billing_config, ledger=ledger)
        keys = load_master_keys(None, settings.gateway_master_key_file)
        open_listed_lot(stack, ledger, keys, upstream.url)
        # The indexer and the coordinator each get their own ledger connection, as separate processes would.
        indexer_ledger, coordinator_ledger = Ledger.from_settings(settings), Ledger.from_settings(settings)
        agent_ledger = Ledger.from_settings(settings)
        stack.agent = Agent(
            agent_ledger.engine, Web3AgentChain(anvil_url, deployment, LOCAL_AGENT_KEY), HttpBilling(timeout=10),
            keys, billing_url=billing.url, tx_timeout=30, rules_interval=0.5,
        )  # fmt: skip
        indexer = Indexer(indexer_ledger, RpcClient(anvil_url), Followed.from_deployment(deployment))
        coordinator = Coordinator(coordinator_ledger.engine, Web3Chain(anvil_url, deployment, ANVIL_KEY_0))
        with (
            ServerThread(create_gateway(settings, ledger=ledger)) as gateway,
            Stepper("indexer", indexer.catch_up, 0.3) as indexing,
            Stepper("coordinator", coordinator.run_once, 0.5) as settling,
            # The coordinator's door, served beside its passes as `promptex coordinator` does.
            ServerThread(Door(coordinator, Place.of(deployment)).app()) as door,
            Stepper("agent", stack.agent.run_once, 0.5) as redeeming,
        ):
            options = DashboardOptions(
                rpc_url=anvil_url,
                network="local",
                gateway_url=gateway.url,
                dist=DIST,
                deployments_dir=deployments,
            )
            dashboard_settings = settings.model_copy(
                update={
                    "agent_billing_url": billing.url,
                    "dashboard_seller_base_urls": [upstream.url + "/v1"],
                    "coordinator_door_url": door.url,
                }
            )
            with ServerThread(create_app(dashboard_settings, options, ledger=ledger)) as dashboard:
                stack.dashboard_url, stack.gateway_url = dashboard.url, gateway.url
                stack.errors = {  # type: ignore[attr-defined]
                    "indexer": indexing.errors, "coordinator": settling.errors, "agent": redeeming.errors,
                }  # fmt: skip
                yield stack
        indexer_ledger.close()
        coordinator_ledger.close()
        agent_ledger.close()
    ledger.close()


def open_billing_account(stack: Stack, account_id: str, usd_micro: int) -> str:
    """The user's account at the (fake) Anthropic billing API, with a scoped credential the
    user pastes in the browser to link it (the server seals it for the agent). Returns it."""
    stack.billing.credentials[account_id] = BILLING_CREDENTIAL
    stack.billing.balances[account_id] = usd_micro
    return BILLING_CREDENTIAL


def seed_org(stack: Stack, owner: str, name: str = "Acme Research") -> NewKey:
    """An org whose account `owner`'s wallet is bound to (signed by anvil's unlocked
    account), 200 USDC deposited with a spend cap, and a member with a 25 USDC budget who
    has made one request through the gateway. Returns the member's key."""
    w3, ledger = stack.w3, stack.ledger
    org = ledger.create_account(AccountKind.ORG, name).id
    message = ledger.issue_binding_challenge(org, owner)
    signed = w3.provider.make_request("eth_signTypedData_v4", [owner, json.dumps(message.typed_data())])
    ledger.bind_wallet(message, signed["result"])
    usdc, vault = stack.contract("USDC"), stack.contract("CreditsVault")
    transact(w3, usdc.functions.mint(owner, 200 * USD), owner)
    transact(w3, usdc.functions.approve(vault.address, 200 * USD), owner)
    transact(w3, vault.functions.deposit(usdc.address, 200 * USD), owner)
    expiry = int(w3.eth.get_block("latest")["timestamp"]) + 30 * DAY
    transact(w3, vault.functions.set_spend_cap(usdc.address, 2**256 - 1, 100 * USD, expiry), owner)
    until(lambda: ledger.balance(org, "USDC").cap_remaining > 0, "the org's deposit and cap indexed", 30, every=0.2)
    store, now = GatewayStore(ledger.engine), int(time.time())
    member = member_key(ledger, store, org, now, name="ada", budget=("USDC", 25 * USD))
    answer = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {member.key}", "x-promptex-asset": "USDC"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello from the org"}], "max_tokens": 32},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return member


def leave_unbacked(stack: Stack, holder: str, symbol: str = "GEM", face: int = 100 * USD) -> int:
    """A tokenized lot of `symbol` opened for anvil's account 4 (its bond approved exactly),
    its tokens handed to `holder`, then slashed by the attestor: what `holder` holds is
    unbacked, and the lot's bond is in the provider's insurance fund. Returns the tokens."""
    w3 = stack.w3
    seller, attestor = w3.eth.accounts[4], Account.from_key(LOCAL_ATTESTOR_KEY).address
    usdc, escrow, token = stack.contract("USDC"), stack.contract("CreditEscrow"), stack.contract(f"token:{symbol}")
    bond = escrow.functions.tokenized_bond(token.address, face).call()  # its token's share: the only bond taken
    transact(w3, usdc.functions.mint(seller, bond), seller)
    transact(w3, usdc.functions.approve(escrow.address, bond), seller)
    expiry = int(w3.eth.get_block("latest")["timestamp"]) + 30 * DAY
    before = token.functions.balanceOf(seller).call()
    opened = escrow.functions.open_lot(seller, token.address, KIND_TOKENIZED, face, expiry, bond, b"\x11" * 32, 0)
    transact(w3, opened, attestor)
    minted = token.functions.balanceOf(seller).call() - before
    transact(w3, token.functions.transfer(holder, minted), seller)
    transact(w3, escrow.functions.slash(escrow.functions.lot_count().call()), attestor)
    return int(minted)
