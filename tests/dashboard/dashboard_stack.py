"""The whole local market for the dashboard's browser tests, in this process: anvil,
`ape run deploy` + `ape run seed_market`, a listed OpenAI lot opened through the gateway's
own seller path, the fake upstream, the gateway, the indexer and the coordinator (stepped
in background threads) and the dashboard server."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

from anvil_node import ROOT, ape_env, ape_run, running_anvil
from promptex.chain.deployments import Deployment, load_deployment
from promptex.config import Settings
from promptex.coordinator.chain import Web3Chain
from promptex.coordinator.cli import ANVIL_KEY_0
from promptex.coordinator.service import Coordinator
from promptex.dashboard import DashboardOptions, create_app
from promptex.fakes import FakeUpstreamConfig, create_fake_upstream
from promptex.gateway import create_app as create_gateway
from promptex.gateway.envelope import load_master_keys
from promptex.gateway.sellers import Capacity, add_capacity
from promptex.gateway.store import GatewayStore
from promptex.indexer.followed import Followed
from promptex.indexer.rpc import RpcClient
from promptex.indexer.service import Indexer
from promptex.ledger import Ledger
from promptex.metering import load_catalog
from promptex.serving import ServerThread

DIST = ROOT / "dashboard" / "dist"
DAY = 86_400
USD = 10**6


@dataclass
class Stack:
    anvil_url: str
    dashboard_url: str
    gateway_url: str
    deployment: Deployment
    w3: Web3
    settings: Settings

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


def open_listed_lot(stack: Stack, store: GatewayStore, keys: Any, upstream_url: str, seller: str) -> int:
    """A seller lists $1,000 of (fake) OpenAI capacity at 60 % of list: verified and sealed
    by the gateway, opened in the escrow by the attestor (the deployer), as in the demo."""
    w3 = stack.w3
    usdc, escrow = stack.contract("USDC"), stack.contract("CreditEscrow")
    now = int(w3.eth.get_block("latest")["timestamp"])
    face = 1_000 * USD
    bond = escrow.functions.min_bond(face).call()
    capacity = Capacity(
        provider="openai",
        api="openai",
        base_url=upstream_url + "/v1",
        api_key="sk-dashboard-test",
        face_value_usd_micro=face,
        kind="listed",
        rate_bps=6_000,
        expires_at=now + 30 * DAY,
        seller=seller,
        resale_permitted=True,
        bond_usdc=bond,
    )
    gateway_lot, att = add_capacity(store, keys, load_catalog(None), capacity, now, verify=True)
    transact(w3, usdc.functions.mint(seller, bond), seller)
    transact(w3, usdc.functions.approve(escrow.address, bond), seller)
    token = stack.deployment.address(f"token:{att['token']}")
    receipt = transact(
        w3,
        escrow.functions.open_lot(
            att["seller"], token, att["kind"], att["face_value"], att["expiry"], att["bond"],
            bytes.fromhex(att["terms_hash"][2:]), att["rate_bps"],
        ),
        stack.deployment.deployer,
    )  # fmt: skip
    lot_id = int(escrow.functions.lot_count().call())
    store.set_attestation(gateway_lot, json.dumps(att), receipt["transactionHash"].hex(), chain_lot_id=lot_id)
    return lot_id


@contextlib.contextmanager
def market_stack(work: Path) -> Iterator[Stack]:
    deployments = work / "deployments"
    with running_anvil() as anvil_url:
        env = ape_env(anvil_url, deployments)
        for script in ("deploy", "seed_market"):
            done = ape_run(env, script)
            assert done.returncode == 0, f"ape run {script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        deployment = load_deployment("local", deployments)
        settings = Settings(
            deployments_dir=deployments,
            ledger_url=f"sqlite:///{work / 'ledger.sqlite3'}",
            gateway_master_key_file=work / "master.key",
            welcome_credit_amount=0,
            gateway_default_max_tokens=512,
            gateway_lot_refresh_seconds=0.5,
            indexer_rpc_url=anvil_url,
            coordinator_rpc_url=anvil_url,
        )
        w3 = Web3(Web3.HTTPProvider(anvil_url))
        ledger = Ledger.from_settings(settings)
        store = GatewayStore(ledger.engine)
        with ServerThread(create_fake_upstream(FakeUpstreamConfig(output_tokens=40))) as upstream:
            stack = Stack(anvil_url, "", "", deployment, w3, settings)
            keys = load_master_keys(None, settings.gateway_master_key_file)
            open_listed_lot(stack, store, keys, upstream.url, seller=w3.eth.accounts[1])
            # The indexer and the coordinator each get their own ledger connection, as separate processes would.
            indexer_ledger, coordinator_ledger = Ledger.from_settings(settings), Ledger.from_settings(settings)
            indexer = Indexer(indexer_ledger, RpcClient(anvil_url), Followed.from_deployment(deployment))
            coordinator = Coordinator(coordinator_ledger.engine, Web3Chain(anvil_url, deployment, ANVIL_KEY_0))
            with (
                ServerThread(create_gateway(settings, ledger=ledger)) as gateway,
                Stepper("indexer", indexer.catch_up, 0.3) as indexing,
                Stepper("coordinator", coordinator.run_once, 0.5) as settling,
            ):
                options = DashboardOptions(
                    rpc_url=anvil_url,
                    network="local",
                    gateway_url=gateway.url,
                    dist=DIST,
                    deployments_dir=deployments,
                )
                with ServerThread(create_app(settings, options, ledger=ledger)) as dashboard:
                    stack.dashboard_url, stack.gateway_url = dashboard.url, gateway.url
                    stack.errors = {"indexer": indexing.errors, "coordinator": settling.errors}  # type: ignore[attr-defined]
                    yield stack
            indexer_ledger.close()
            coordinator_ledger.close()
        ledger.close()


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
