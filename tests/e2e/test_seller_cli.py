"""A lot's life through the CLI on a real anvil (issue 20 parts 1 and 4): `promptex seller
add-capacity` refuses in one line what the chain would refuse, before anything is stored
or sent, and otherwise opens the lot on chain and prints a readable summary; the gateway
routes a lot only while the chain says it is open and stops one settlement epoch and the
posting margin before its expiry; `promptex seller lots` and `promptex seller close`;
a crash after the signed open_lot is stored is finished from the stored bytes or by the
indexer; quarantined usage ends refunded (with its reason, shown by `promptex usage
status`) or settled in a later epoch once its cause is fixed."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner, Result
from eth_account import Account
from web3 import Web3

from promptex.chain.deployments import load_deployment
from promptex.cli import main
from promptex.config import settings
from promptex.fakes import FakeUpstreamConfig, create_fake_upstream
from promptex.gateway import create_app
from promptex.gateway.buyers import signup
from promptex.gateway.store import GatewayStore
from promptex.ledger import Ledger, UsageRecord
from promptex.ledger.binding import sign
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.units import money
from promptex.protocol.vault import UNLIMITED, sign_spend_cap
from promptex.sellers import SellerStore
from promptex.serving import ServerThread

MNEMONIC = " ".join(["test"] * 11 + ["junk"])  # anvil's public development mnemonic
EPOCH = 10  # the local deploy's vault epoch length
MARGIN = 300  # the default posting margin
FACE = 250 * USD
BOND = 25 * USD  # the escrow's minimum: 10 % of face value
UPSTREAM_KEY = "sk-fake-seller-e2e"
_events = itertools.count()


def anvil_account(index: int) -> Any:
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


DEPLOYER, SELLER, BUYER = anvil_account(0), anvil_account(1), anvil_account(3)  # the deployer is an attestor
SELLER_ALIAS = "TEST::1"  # the seller as ape's test account (the same mnemonic and path)


class Market:
    """The deployed anvil, this test's own ledger, the fake upstream and the CLI."""

    def __init__(self, url: str, deployments: Path, tmp_path: Path, upstream: str) -> None:
        self.url, self.tmp_path, self.upstream = url, tmp_path, upstream
        self.w3 = Web3(Web3.HTTPProvider(url))
        self.deployment = load_deployment("local", deployments)
        self.env = {
            "PROMPTEX_DEPLOYMENTS_DIR": str(deployments),
            "PROMPTEX_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            "PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS": "NORMAL",
            "PROMPTEX_GATEWAY_MASTER_KEY_FILE": str(tmp_path / "master.key"),
            "PROMPTEX_GATEWAY_METRICS_PORT": "0",  # its gateway serves no metrics/health port (not 9464)
            "PROMPTEX_ATTESTOR_RPC_URL": url,
            "PROMPTEX_ATTESTOR_PRIVATE_KEY": DEPLOYER.key.hex(),
            "PROMPTEX_INDEXER_RPC_URL": url,
            "PROMPTEX_COORDINATOR_RPC_URL": url,
            "PROMPTEX_COORDINATOR_QUARANTINE_RETRY_SECONDS": "0",
            "PROMPTEX_SELLER_TX_TIMEOUT_SECONDS": "10",
            "PROMPTEX_COORDINATOR_TX_TIMEOUT_SECONDS": "10",
        }

    def contract(self, name: str) -> Any:
        record = self.deployment.contracts[name]
        abi = json.loads(Path(record.abi).read_text())
        return self.w3.eth.contract(address=Web3.to_checksum_address(record.address), abi=abi)

    def send(self, account: Any, call: Any) -> None:
        tx = call.build_transaction(
            {"from": account.address, "nonce": self.w3.eth.get_transaction_count(account.address)}
        )
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        )
        assert receipt["status"] == 1

    def cli(self, *args: str, seller_key: bool = False) -> Result:
        env = dict(self.env)
        if seller_key:
            env["PROMPTEX_SELLER_PRIVATE_KEY"] = SELLER.key.hex()
        with _environ(env):
            settings.cache_clear()
            try:
                return CliRunner().invoke(main, list(args))
            finally:
                settings.cache_clear()

    def add_capacity(self, *extra: str, seller_key: bool = True, expires: str = "30d", kind: str = "listed") -> Result:
        return self.cli(
            "seller", "add-capacity", "--provider", "openai", "--base-url", self.upstream, "--api-key", UPSTREAM_KEY,
            "--face-value", "250", "--kind", kind, "--rate", "0.6", "--expires", expires,
            "--seller-address", SELLER.address, "--declare-resale-permitted", *extra, seller_key=seller_key,
        )  # fmt: skip

    def ledger(self) -> Ledger:
        return Ledger.open(self.env["PROMPTEX_LEDGER_URL"])

    def escrow(self) -> Any:
        return self.contract("CreditEscrow")

    def usdc_of(self, address: str) -> int:
        return int(self.contract("USDC").functions.balanceOf(address).call())

    def next_window(self, seconds: int = EPOCH) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    @contextlib.contextmanager
    def gateway(self, clock: Any = None) -> Iterator[str]:
        with _environ(self.env):
            settings.cache_clear()
            s = settings().model_copy(update={"gateway_lot_refresh_seconds": 3600.0})
            settings.cache_clear()
        self.app = create_app(s, clock=clock)
        with ServerThread(self.app) as server:
            yield server.url

    def refresh_lots(self) -> None:
        """What the running gateway does every PROMPTEX_GATEWAY_LOT_REFRESH_SECONDS."""
        self.app.state.gateway.registry.refresh()

    def buyer(self, usdc: int, *, cap_on_chain: bool = True) -> tuple[int, str]:
        """BUYER deposits `usdc` into the vault (the indexer mirrors it), is bound to a new
        ledger account with an API key, and signs a spend cap (registered by the coordinator
        when `cap_on_chain`). Returns (account, API key)."""
        usdc_token, vault = self.contract("USDC"), self.contract("CreditsVault")
        self.send(BUYER, usdc_token.functions.mint(BUYER.address, usdc))
        self.send(BUYER, usdc_token.functions.approve(vault.address, usdc))
        self.send(BUYER, vault.functions.deposit(usdc_token.address, usdc))
        with self.ledger() as ledger:
            new = signup(ledger, GatewayStore(ledger.engine), int(time.time()))
            message = ledger.issue_binding_challenge(new.account, BUYER.address)
            ledger.bind_wallet(message, sign(message, BUYER.key))
        assert self.cli("indexer", "--once").exit_code == 0
        with self.ledger() as ledger:
            ledger.set_spend_cap(new.account, "USDC", usdc)
            assert ledger.balance(new.account, "USDC").posted == usdc
        if cap_on_chain:
            self.sign_cap(usdc)
        return new.account, new.key

    def sign_cap(self, total: int) -> None:
        from promptex.coordinator.store import CoordinatorStore

        vault = self.contract("CreditsVault")
        usdc = self.deployment.address("USDC")
        nonce = vault.functions.cap_nonce(BUYER.address, usdc).call()
        expiry = int(self.w3.eth.get_block("latest")["timestamp"]) + 86_400
        signature = sign_spend_cap(
            BUYER.key, chain_id=self.deployment.chain_id, vault=vault.address, account=BUYER.address, asset=usdc,
            per_epoch=UNLIMITED, total=total, expiry=expiry, nonce=nonce,
        )  # fmt: skip
        with self.ledger() as ledger:
            store = CoordinatorStore(ledger.engine)
            store.add_spend_cap(BUYER.address, "USDC", UNLIMITED, total, expiry, nonce, "0x" + signature.hex(), 0)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    config = FakeUpstreamConfig(output_tokens=20, api_keys=frozenset({UPSTREAM_KEY}))
    with ServerThread(create_fake_upstream(config)) as server:
        yield server.url + "/v1"


@pytest.fixture
def market(deployed_anvil: tuple[str, Path], tmp_path: Path, upstream: str) -> Iterator[Market]:
    url, deployments = deployed_anvil
    w3 = Web3(Web3.HTTPProvider(url))
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    try:
        yield Market(url, deployments, tmp_path, upstream)
    finally:
        w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]


def ask(gateway: str, key: str) -> Any:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key=key, max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], max_tokens=20
    )


# ─── add-capacity ────────────────────────────────────────────────────────────


def test_add_capacity__bond_not_approved__one_line_and_nothing_stored_or_sent(market: Market) -> None:
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    lots_before = market.escrow().functions.lot_count().call()
    nonces = {a.address: market.w3.eth.get_transaction_count(a.address) for a in (DEPLOYER, SELLER)}

    refused = market.add_capacity(seller_key=False)  # the seller's key is not given: nothing can approve

    assert refused.exit_code == 1
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.output
    assert f"the seller {SELLER.address} has approved 0.00 USDC of the 25.00 USDC bond" in lines[0]
    assert "PROMPTEX_SELLER_PRIVATE_KEY" in lines[0] and UPSTREAM_KEY not in refused.output
    assert market.escrow().functions.lot_count().call() == lots_before
    assert {a.address: market.w3.eth.get_transaction_count(a.address) for a in (DEPLOYER, SELLER)} == nonces
    with market.ledger() as ledger:
        assert GatewayStore(ledger.engine).lots() == [] and ledger.lot_states() == {}


def test_add_capacity__standing_approval__refused_without_the_key_approved_exactly_with_it(market: Market) -> None:
    # The escrow opens a lot only against an allowance of exactly its bond (so no attestor can
    # use a standing approval for a lot the seller never asked for): the path says so, or,
    # with the seller's key, approves exactly the bond.
    usdc, escrow = market.contract("USDC"), market.escrow()
    market.send(SELLER, usdc.functions.mint(SELLER.address, BOND))
    market.send(SELLER, usdc.functions.approve(escrow.address, 2**256 - 1))

    refused = market.add_capacity(seller_key=False)
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert "approve it first (exactly that amount" in refused.output

    opened = market.add_capacity()
    assert opened.exit_code == 0, opened.output
    assert "bond: 25.00 USDC (approved in 0x" in opened.output
    assert usdc.functions.allowance(SELLER.address, escrow.address).call() == 0


def test_add_capacity__seller_holds_no_bond_or_bond_below_minimum__one_line_each(market: Market) -> None:
    broke = market.add_capacity()
    assert (
        broke.exit_code == 1 and f"the seller {SELLER.address} holds 0.00 USDC, the bond is 25.00 USDC" in broke.output
    )
    assert "send it the USDC first (on a local market: `promptex wallet faucet" in broke.output  # the next step
    low = market.add_capacity("--bond", "10")
    assert low.exit_code == 1 and "the bond must be at least 25.00 USDC" in low.output
    # A tokenized lot takes exactly its token's bond share: more is refused too (its tokens pool).
    for bond in ("10", "30"):
        off = market.add_capacity("--bond", bond, kind="tokenized")
        assert off.exit_code == 1 and "a tokenized lot's bond is exactly 25.00 USDC" in off.output, off.output
    soon = market.add_capacity(expires="6d")  # the escrow refuses it: said before anything is sent
    assert soon.exit_code == 1 and "a lot must be valid for at least 7 days" in soon.output
    with market.ledger() as ledger:
        assert GatewayStore(ledger.engine).lots() == []


def test_add_capacity__bond_approved_by_the_path__summary_lot_open_on_chain_routed_and_listed(
    market: Market,
) -> None:
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    escrow = market.escrow()

    opened = market.add_capacity()

    assert opened.exit_code == 0, opened.output
    chain_lot = escrow.functions.lot_count().call()
    assert f"lot {chain_lot} opened on chain (CreditEscrow)" in opened.output
    assert "listed openai capacity: face value $250.00" in opened.output
    assert "bond: 25.00 USDC (approved in 0x" in opened.output
    assert UPSTREAM_KEY not in opened.output
    lot = dict(zip([c["name"] for c in _lot_abi(escrow)], escrow.functions.lots(chain_lot).call(), strict=True))
    assert (lot["seller"], lot["face_value"], lot["bond"], lot["status"]) == (SELLER.address, FACE, BOND, 1)
    assert market.usdc_of(SELLER.address) == 0  # the bond moved into the escrow
    with market.ledger() as ledger:
        (state,) = ledger.lot_states().values()
    assert (state.state, state.chain_lot_id) == ("open", chain_lot)
    expiry = lot["expiry"]
    assert state.route_until == expiry - EPOCH - MARGIN

    _account, key = market.buyer(5 * USD)
    with market.gateway() as gateway:
        answer = ask(gateway, key)
    assert answer.headers["x-promptex-chain-lot"] == str(chain_lot)

    listed = market.cli("seller", "lots")
    assert listed.exit_code == 0, listed.output
    row = listed.output.strip().splitlines()[1].split()
    assert row[:6] == [str(state.lot_id), str(chain_lot), "openai", "listed", "open", "$250.00"]
    assert "routed until" in listed.output


def test_route_until__lot_reaching_expiry_less_epoch_and_margin__no_longer_routed(market: Market) -> None:
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    assert market.add_capacity().exit_code == 0
    with market.ledger() as ledger:
        (state,) = ledger.lot_states().values()
    _account, key = market.buyer(5 * USD)
    now = [state.route_until - 1]
    with market.gateway(clock=lambda: now[0]) as gateway:
        assert ask(gateway, key).http_response.status_code == 200
        now[0] = state.route_until  # one epoch and the posting margin before expiry
        with pytest.raises(openai.APIStatusError) as stopped:
            ask(gateway, key)
    assert stopped.value.status_code == 503 and "No capacity" in stopped.value.message


def test_seller_close__routing_stops_at_once__bond_released_only_after_finalize(market: Market) -> None:
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    assert market.add_capacity().exit_code == 0
    with market.ledger() as ledger:
        (state,) = ledger.lot_states().values()
    chain_lot = state.chain_lot_id
    assert chain_lot is not None
    _account, key = market.buyer(5 * USD)
    with market.gateway() as gateway:
        assert ask(gateway, key).http_response.status_code == 200

        requested = market.cli("seller", "close", str(chain_lot), seller_key=True)

        assert requested.exit_code == 0, requested.output
        assert f"lot {chain_lot}: close requested in 0x" in requested.output
        assert "it is no longer routed" in requested.output and "finalize_close is due from" in requested.output
        market.refresh_lots()  # the gateway's next refresh: no request reaches the lot any more
        with pytest.raises(openai.APIStatusError) as stopped:
            ask(gateway, key)
    assert stopped.value.status_code == 503
    lot = _lot(market, chain_lot)
    assert lot["status"] == 1 and lot["close_at"] > 0  # open on chain, close requested
    assert market.usdc_of(SELLER.address) == 0  # the bond stays in the escrow
    listed = market.cli("seller", "lots")
    assert "closing" in listed.output and "close requested; finalize from" in listed.output
    # The market's overview: when the close may finish as a date (was unix time), face value in dollars.
    overview = market.cli("status", "--rpc-url", market.url)
    assert overview.exit_code == 0, overview.output
    closing = next(line for line in overview.output.splitlines() if line.strip().startswith(f"#{chain_lot} "))
    assert re.search(r"closing \(from 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC\) face \$250\.00,", closing), closing

    early = market.cli("seller", "close", str(chain_lot), seller_key=True)
    assert early.exit_code == 1 and "finalize_close is due from" in early.output
    assert market.usdc_of(SELLER.address) == 0

    market.next_window(2 * EPOCH)  # the escrow's close delay: two vault windows
    finalized = market.cli("seller", "close", str(chain_lot), seller_key=True)

    assert finalized.exit_code == 0, finalized.output
    assert f"lot {chain_lot}: closed in 0x" in finalized.output
    assert "bond released to the seller: 25.00 USDC" in finalized.output  # nothing consumed on chain yet
    assert _lot(market, chain_lot)["status"] == 2 and market.usdc_of(SELLER.address) == BOND
    with market.ledger() as ledger:
        assert ledger.lot_states()[state.lot_id].state == "closed"
    again = market.cli("seller", "close", str(chain_lot), seller_key=True)
    assert again.exit_code == 1 and f"lot {chain_lot} is closed already" in again.output


def test_tokenized__summary_in_whole_tokens__close_takes_back_the_sellers_share_then_pays_the_bond(
    market: Market,
) -> None:
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    gpt = market.contract("token:GPT")

    opened = market.add_capacity(kind="tokenized")

    assert opened.exit_code == 0, opened.output
    chain_lot = market.escrow().functions.lot_count().call()
    lot = _lot(market, chain_lot)
    minted = gpt.functions.balanceOf(SELLER.address).call()
    assert minted == lot["seller_minted"] > 0
    assert f"minted: {money(minted, 'GPT')} to the seller (+ " in opened.output  # whole tokens, not wei
    assert str(minted) not in opened.output

    assert market.cli("seller", "close", str(chain_lot), seller_key=True).exit_code == 0
    market.next_window(2 * EPOCH)
    finalized = market.cli("seller", "close", str(chain_lot), seller_key=True)

    assert finalized.exit_code == 0, finalized.output
    assert f"approved {money(minted, 'GPT')} (the seller's share) in 0x" in finalized.output
    assert gpt.functions.balanceOf(SELLER.address).call() == 0  # its whole share, burned
    released = market.usdc_of(SELLER.address)
    assert 0 < released < BOND  # the fee share's bond goes to the insurance fund
    assert f"bond released to the seller: {money(released, 'USDC')}" in finalized.output
    assert _lot(market, chain_lot)["status"] == 2


def test_tokenized__lot_expiring_between_two_others__opened_with_the_insertion_hint_in_its_place(
    market: Market,
) -> None:
    """The attestor's path sends open_lot's hint (the lot before it in the token's draw
    order, found by paging `insert_hint`): the 35-day lot goes between the 30- and 40-day
    ones. Without a hint a crowd of 514 lots would refuse it (test_escrow_walk_attacks).
    A lot expiring last (the 40-day one) goes without: the tail as hint costs gas."""
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, 3 * BOND))
    escrow, gpt = market.escrow(), market.contract("token:GPT")
    ids = []
    for expires in ("30d", "40d", "35d"):
        opened = market.add_capacity(kind="tokenized", expires=expires)
        assert opened.exit_code == 0, opened.output
        ids.append(escrow.functions.lot_count().call())
    order = escrow.functions.draw_order(gpt.address, 256).call()
    assert order.index(ids[0]) < order.index(ids[2]) < order.index(ids[1])
    sent = {}
    for lot in ids:
        log = escrow.events.LotOpened().get_logs(from_block=0, argument_filters={"lot_id": lot})[0]
        _, sent[lot] = escrow.decode_function_input(market.w3.eth.get_transaction(log["transactionHash"])["input"])
    assert sent[ids[2]]["hint"] == order[order.index(ids[2]) - 1] == ids[0]
    assert "hint" not in sent[ids[0]] and "hint" not in sent[ids[1]]  # the eight-argument open_lot


def _lot(market: Market, chain_lot: int) -> dict[str, Any]:
    escrow = market.escrow()
    return dict(zip([c["name"] for c in _lot_abi(escrow)], escrow.functions.lots(chain_lot).call(), strict=True))


def _lot_abi(escrow: Any) -> list[dict[str, Any]]:
    fn = next(f for f in escrow.abi if f.get("type") == "function" and f.get("name") == "lots")
    return list(fn["outputs"][0]["components"])


# ─── A crash after the signed open_lot is stored ─────────────────────────────


def _add_capacity_killed(market: Market, step: str) -> None:
    env = {
        **os.environ,
        **market.env,
        "PROMPTEX_SELLER_PRIVATE_KEY": SELLER.key.hex(),
        "PROMPTEX_SELLER_CRASH_AT": step,
    }
    done = subprocess.run(
        [sys.executable, "-m", "promptex.cli", "seller", "add-capacity", "--provider", "openai", "--base-url",
         market.upstream, "--api-key", UPSTREAM_KEY, "--face-value", "250", "--kind", "listed", "--expires", "30d",
         "--declare-resale-permitted"],
        env=env, capture_output=True, text=True, timeout=120, cwd=market.tmp_path,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr[-2000:]


@pytest.mark.parametrize("step", ["open_lot_signed", "open_lot_broadcast"])
def test_add_capacity__killed_after_open_lot_stored__finished_from_stored_bytes_or_by_the_indexer(
    market: Market, step: str
) -> None:
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    lots_before = market.escrow().functions.lot_count().call()
    _add_capacity_killed(market, step)
    with market.ledger() as ledger:
        (state,) = ledger.lot_states().values()
    assert state.state == "opening" and state.open_tx is not None  # stored before broadcast; serves nothing

    if step == "open_lot_broadcast":  # on chain already: the indexer's LotOpened names its tx
        assert market.cli("indexer", "--once").exit_code == 0
    else:  # never sent: `seller lots` sends the same signed bytes
        assert market.cli("seller", "lots").exit_code == 0

    with market.ledger() as ledger:
        (state,) = ledger.lot_states().values()
    assert (state.state, state.chain_lot_id) == ("open", lots_before + 1)
    assert market.escrow().functions.lot_count().call() == lots_before + 1  # opened once


# ─── Quarantine resolves ─────────────────────────────────────────────────────


def _charge(market: Market, account: int, cost: int, *, gateway_lot: int, chain_lot: int | None) -> str:
    """A request the gateway served and settled on a lot, as it writes it."""
    request_id = f"req_e2e_{next(_events)}"
    with market.ledger() as ledger:
        ledger.reserve(account, "USDC", cost, request_id, ttl=600)
        record = UsageRecord(
            "gpt-4o-mini", 100, 20, cost // 2, gateway_lot_id=gateway_lot, chain_lot_id=chain_lot,
            lot_kind="listed", fee_bps=500,
        )  # fmt: skip
        ledger.settle(request_id, cost, record=record)
    return request_id


def test_quarantine__served_by_a_lot_that_never_opened__refunded_to_the_payer_with_its_reason(
    market: Market,
) -> None:
    account, _key = market.buyer(5 * USD)
    with market.ledger() as ledger:  # a round-1 lot: recorded, served, never opened on chain
        sellers = SellerStore(ledger.engine)
        from promptex.sealing.envelope import load_master_keys
        from promptex.sellers import Capacity

        keys = load_master_keys(None, Path(market.env["PROMPTEX_GATEWAY_MASTER_KEY_FILE"]))
        capacity = Capacity("openai", "openai", market.upstream, UPSTREAM_KEY, FACE, "listed", 6000,
                            int(time.time()) + 30 * 86_400, SELLER.address, True)  # fmt: skip
        lot = sellers.record_lot(keys, capacity, route_until=capacity.expires_at - 1000, now=int(time.time()))
        sellers.fail(lot, "open_lot reverted: escrow: bond transfer failed", int(time.time()))
    request_id = _charge(market, account, 1_000, gateway_lot=lot, chain_lot=None)
    with market.ledger() as ledger:
        assert ledger.balance(account, "USDC").posted == 5 * USD - 1_000  # below the vault's

    market.next_window()
    assert market.cli("coordinator", "--once").exit_code == 0  # quarantines it
    held = market.cli("usage", "status", request_id)
    assert "held back from settlement" in held.output and "no on-chain lot id" in held.output
    assert market.cli("coordinator", "--once").exit_code == 0  # refunds it

    status = market.cli("usage", "status", request_id)
    assert status.exit_code == 0, status.output
    assert "refunded: the lot that served it never opened on chain (open_lot reverted" in status.output
    vault = market.contract("CreditsVault").functions.balance_of(BUYER.address, market.deployment.address("USDC"))
    with market.ledger() as ledger:
        assert ledger.balance(account, "USDC").posted == 5 * USD == vault.call()  # the ledger equals the vault
        record = ledger.usage_record(request_id)
        assert record is not None and record.status == "refunded"
        ledger.check()


def test_quarantine__cause_fixed__settled_in_a_later_epoch(market: Market) -> None:
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    assert market.add_capacity().exit_code == 0
    with market.ledger() as ledger:
        (state,) = ledger.lot_states().values()
    account, _key = market.buyer(5 * USD, cap_on_chain=False)  # no spend cap on chain yet
    request_id = _charge(market, account, 1_000, gateway_lot=state.lot_id, chain_lot=state.chain_lot_id)

    market.next_window()
    assert market.cli("coordinator", "--once").exit_code == 0
    with market.ledger() as ledger:
        held = ledger.usage_record(request_id)
    assert held is not None and held.status == "quarantined" and "spend cap" in (held.quarantine_reason or "")

    market.sign_cap(5 * USD)  # the cause is fixed: the buyer's cap is registered next pass
    market.next_window()
    assert market.cli("coordinator", "--once").exit_code == 0  # registers the cap, requeues, settles
    market.next_window()
    assert market.cli("coordinator", "--once").exit_code == 0

    status = market.cli("usage", "status", request_id)
    assert "settled on chain in epoch" in status.output, status.output
    vault = market.contract("CreditsVault").functions.balance_of(BUYER.address, market.deployment.address("USDC"))
    assert vault.call() == 5 * USD - 1_000


# ─── Loose ends of a lot's life: remaining, finalize by itself, expire ───────


def _remaining_of(market: Market, chain_lot: int) -> str:
    listed = market.cli("seller", "lots")
    assert listed.exit_code == 0, listed.output
    row = next(line.split() for line in listed.output.splitlines()[1:] if line.split()[1] == str(chain_lot))
    return row[6]  # lot, chain, provider, kind, state, face value, remaining


def test_seller_lots__usage_served_not_yet_settled__remaining_less_it_once(market: Market) -> None:
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    assert market.add_capacity().exit_code == 0
    with market.ledger() as ledger:
        (state,) = ledger.lot_states().values()
    assert state.chain_lot_id is not None
    assert _remaining_of(market, state.chain_lot_id) == "$250.00"
    account, _key = market.buyer(5 * USD)
    _charge(market, account, 2 * USD, gateway_lot=state.lot_id, chain_lot=state.chain_lot_id)  # $1 at list

    assert _remaining_of(market, state.chain_lot_id) == "$249.00"  # served, not yet drawn on chain

    market.next_window()
    assert market.cli("coordinator", "--once").exit_code == 0
    assert _lot(market, state.chain_lot_id)["consumed"] == 1 * USD  # the settlement drew it
    assert _remaining_of(market, state.chain_lot_id) == "$249.00"  # counted once, not twice


def test_seller_finalize__before_the_delay_nothing__after_it_closed_by_itself_bond_back(market: Market) -> None:
    """Signed with the seller's ape account (--account, as `buyer bind`'s: smalls s17, before only
    PROMPTEX_SELLER_PRIVATE_KEY) for the bond's approval, the close and the first finalize."""
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    opened = market.add_capacity("--account", SELLER_ALIAS, "--yes", seller_key=False)
    assert opened.exit_code == 0, opened.output
    with market.ledger() as ledger:
        (state,) = ledger.lot_states().values()
    chain_lot = state.chain_lot_id
    assert chain_lot is not None
    no_key = market.cli("seller", "finalize")
    assert no_key.exit_code == 1 and "--account ALIAS" in no_key.output, no_key.output
    assert "PROMPTEX_SELLER_PRIVATE_KEY" in no_key.output
    nobody = market.cli("seller", "close", str(chain_lot), "--account", "TEST::999")
    assert nobody.exit_code == 1 and nobody.output.strip() == "Error: no test account TEST::999", nobody.output
    closed = market.cli("seller", "close", str(chain_lot), "--account", SELLER_ALIAS, "--yes")
    assert closed.exit_code == 0, closed.output

    early = market.cli("seller", "finalize", "--account", SELLER_ALIAS)

    assert early.exit_code == 0, early.output
    assert "no close is due to finalize; the next is due from" in early.output
    assert _lot(market, chain_lot)["status"] == 1 and market.usdc_of(SELLER.address) == 0

    market.next_window(2 * EPOCH)  # the escrow's close delay
    done = market.cli("seller", "finalize", seller_key=True)

    assert done.exit_code == 0, done.output
    assert f"lot {chain_lot}: closed in 0x" in done.output and "bond released to the seller: 25.00 USDC" in done.output
    assert _lot(market, chain_lot)["status"] == 2 and market.usdc_of(SELLER.address) == BOND
    again = market.cli("seller", "finalize", seller_key=True)
    assert again.exit_code == 0 and again.output.strip() == "no close is due to finalize"
    assert market.usdc_of(SELLER.address) == BOND


def test_coordinator__lot_past_expiry__expired_only_after_the_grace_bond_back_ledger_follows(market: Market) -> None:
    market.send(SELLER, market.contract("USDC").functions.mint(SELLER.address, BOND))
    assert market.add_capacity(expires="8d").exit_code == 0
    with market.ledger() as ledger:
        (state,) = ledger.lot_states().values()
    chain_lot = state.chain_lot_id
    assert chain_lot is not None
    grace = market.escrow().functions.SETTLEMENT_GRACE().call()
    now = int(market.w3.eth.get_block("latest")["timestamp"])

    market.next_window(_lot(market, chain_lot)["expiry"] - now + 1)  # expired, but settlements may still draw it
    assert market.cli("coordinator", "--once").exit_code == 0
    assert _lot(market, chain_lot)["status"] == 1 and market.usdc_of(SELLER.address) == 0

    market.next_window(grace)  # the grace is over
    assert market.cli("coordinator", "--once").exit_code == 0

    assert _lot(market, chain_lot)["status"] == 3  # expired
    assert market.usdc_of(SELLER.address) == BOND  # a listed lot returns its whole bond
    assert market.cli("indexer", "--once").exit_code == 0
    with market.ledger() as ledger:
        assert ledger.lot_states()[state.lot_id].state == "expired"
    assert market.cli("coordinator", "--once").exit_code == 0  # nothing more to do
