"""The redemption agent on a real anvil with the real RedemptionEscrow, DEX and Oracle and
the fake billing API in its own process: a rule fires, the escrow sells, billing adds
credits and signs, release pays the payee; a forged receipt is refused by the contract;
and kill -9 of the agent at every step leaves exactly one redemption, one purchase and
one release."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from web3 import Web3

from anvil_node import ROOT, free_port
from promptex.agent import machine
from promptex.agent.billing import HttpBilling
from promptex.agent.chain import Web3AgentChain
from promptex.agent.factory import LOCAL_AGENT_KEY, LOCAL_BILLING_SIGNER_KEY
from promptex.agent.machine import CRASH_STEPS
from promptex.agent.service import Agent
from promptex.agent.store import RECEIPTED, RELEASED
from promptex.chain.deployments import load_deployment
from promptex.ledger import Ledger
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.redemption import STATUS_OPEN, STATUS_RELEASED, provider_id, sign_receipt
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USD
from promptex.sealing.envelope import MasterKeys

MNEMONIC = " ".join(["test"] * 11 + ["junk"])
ANTHROPIC = provider_id("anthropic")
ACCOUNT = "acct_e2e"
KEYS = MasterKeys({"k": b"\x07" * 32}, "k")


def anvil_account(index):
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


ADMIN, USER = anvil_account(0), anvil_account(7)
AGENT, SIGNER = Account.from_key(LOCAL_AGENT_KEY), Account.from_key(LOCAL_BILLING_SIGNER_KEY)
PAYEE = anvil_account(6).address


class World:
    def __init__(self, url, deployments, tmp_path):
        self.url, self.deployments = url, deployments
        self.w3 = Web3(Web3.HTTPProvider(url))
        self.deployment = load_deployment("local", deployments)
        self.escrow = self.contract("RedemptionEscrow")
        self.usdc, self.cld = self.contract("USDC"), self.contract("token:CLD")
        self.router, self.oracle = self.contract("Router"), self.contract("Oracle")
        self.db = f"sqlite:///{tmp_path}/ledger.sqlite3"
        Ledger.open(self.db, sqlite_synchronous="NORMAL").close()

    def contract(self, name):
        record = self.deployment.contracts[name]
        abi = json.loads(Path(record.abi).read_text())
        return self.w3.eth.contract(address=Web3.to_checksum_address(record.address), abi=abi)

    def send(self, account, call, ok=True):
        tx = call.build_transaction(
            {"from": account.address, "nonce": self.w3.eth.get_transaction_count(account.address)}
        )
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        )
        assert (receipt["status"] == 1) == ok
        return receipt

    def now(self):
        return self.w3.eth.get_block("latest")["timestamp"]

    def warp(self, seconds):
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def twap_catches_up(self):
        """A keeper's Oracle observation at today's spot, then a TWAP window on it: the
        escrow sells only within 0.5 % of the honest price at the TWAP, so a run of
        sales into the thin $25k pool waits for the TWAP to follow the spot they moved."""
        self.warp(61)
        self.send(ADMIN, self.oracle.functions.update(self.cld.address))
        self.warp(701)
        self.send(ADMIN, self.oracle.functions.update(self.cld.address))

    def agent(self, billing_url):
        ledger = Ledger.open(self.db, sqlite_synchronous="NORMAL", migrate=False)
        chain = Web3AgentChain(self.url, self.deployment, LOCAL_AGENT_KEY)
        return Agent(ledger.engine, chain, HttpBilling(timeout=5), KEYS, billing_url=billing_url, tx_timeout=10)

    def events(self, name):
        return getattr(self.escrow.events, name)().get_logs(from_block=0)


@pytest.fixture(scope="module")
def world(seeded_anvil, tmp_path_factory):
    url, deployments = seeded_anvil  # pools $25,000 deep; the escrow trusts SIGNER for anthropic receipts
    w = World(url, deployments, tmp_path_factory.mktemp("agent"))
    assert w.escrow.functions.is_billing_signer(ANTHROPIC, SIGNER.address).call()
    # The user buys CLD on the market, then grants the agent, links an account and approves the escrow.
    w.send(USER, w.usdc.functions.mint(USER.address, 400 * USD))
    w.send(USER, w.usdc.functions.approve(w.router.address, 400 * USD))
    w.send(
        USER,
        w.router.functions.swap_exact_in(
            400 * USD, 0, [w.usdc.address, w.cld.address], [DEFAULT_FEE], USER.address, w.now() + 600
        ),
    )
    w.warp(700)  # cover the escrow's 600 s TWAP window with the seed's observation
    w.send(ADMIN, w.oracle.functions.update(w.cld.address))
    w.send(
        USER,
        w.escrow.functions.set_grant(AGENT.address, PAYEE, w.now() + 86_400, 500, [w.cld.address], [200_000 * TOKEN]),
    )
    w.send(USER, w.cld.functions.approve(w.escrow.address, 2**256 - 1))
    return w


@pytest.fixture(scope="module")
def billing(world):
    """`promptex fake-billing` (the click object) in its own process."""
    port = free_port()
    env = dict(os.environ, PROMPTEX_DEPLOYMENTS_DIR=str(world.deployments), PROMPTEX_AGENT_NETWORK="local")
    code = "from promptex.cli.fakes import fake_billing; fake_billing()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port), "--balance", f"{ACCOUNT}=5"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{url}/v1/accounts/{ACCOUNT}/balance", headers={"authorization": "Bearer x"})
            break
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def balance(url):
    r = httpx.get(f"{url}/v1/accounts/{ACCOUNT}/balance", headers={"authorization": "Bearer x"})
    return r.json()["usd_micro"]


@pytest.fixture(scope="module")
def linked(world, billing):
    """The user's anthropic account linked (agent and escrow) with a $20 top-up rule. A module
    fixture, not an earlier test: xdist may run this module's tests on two workers."""
    agent = world.agent(billing)
    account = agent.link_account(USER.address, "anthropic", ACCOUNT, "scoped-cred", email="u@example.com")
    world.send(USER, world.escrow.functions.link_account(ANTHROPIC, account.account_ref))
    agent.add_rule(USER.address, "anthropic", "CLD", 20 * USD, 20 * USD, 5_000 * TOKEN)
    return account


@pytest.fixture(scope="module")
def released(world, billing, linked):
    """A released redemption: the rule's, made by the first test on this worker or here."""
    agent = world.agent(billing)
    if not agent.store.redemptions():
        agent.run_once(check_rules=True)
    return agent.store.redemptions()[0]


def test_agent__rule_fires__sold_bought_released_to_payee(world, billing, linked):
    agent = world.agent(billing)
    payee_before = world.usdc.functions.balanceOf(PAYEE).call()
    report = agent.run_once(check_rules=True)
    assert report.fired and list(report.advanced.values()) == [RELEASED], report
    assert balance(billing) == 25 * USD
    assert world.usdc.functions.balanceOf(PAYEE).call() == payee_before + 20 * USD
    assert len(world.events("Redeemed")) == 1 and len(world.events("Released")) == 1
    # Balance now $25: the rule does not fire again.
    assert world.agent(billing).run_once(check_rules=True).fired == []


def test_release__forged_or_replayed_receipt__refused_by_the_escrow(world, billing, released):
    agent = world.agent(billing)
    r = released
    account = agent.store.account(r.account_id)
    sale = agent.machine._sale(r)
    redeemed = world.events("Redeemed")
    logged = [bytes(e["args"]["sale"]) for e in redeemed if e["args"]["redemption_id"] == r.chain_redemption_id]
    assert logged == [sale]  # the sale the escrow logged: the agent's key and its redeem's nonce
    args = (r.chain_redemption_id, sale, ANTHROPIC, account.account_ref, r.receipt_usd_micro, r.billing_ref)
    names = ("redemption_id", "sale", "provider", "account_ref", "usd_micro", "billing_ref")
    fields = dict(zip(names, args, strict=True))
    forged = sign_receipt("0x" + "13" * 32, chain_id=world.deployment.chain_id, escrow=world.escrow.address, **fields)
    call = world.escrow.functions.release(*args, forged)
    with pytest.raises(Exception, match="not open"):  # released already: a replay is refused
        call.call({"from": ADMIN.address})
    with pytest.raises(Exception, match="not open"):
        world.escrow.functions.release(*args, r.receipt_signature).call({"from": ADMIN.address})


def _child(world, billing, step):
    if step is not None:
        os.environ[machine.CRASH_ENV] = step
    agent = world.agent(billing)
    if step is None:
        agent.run_once(check_rules=False)
    else:  # also "again": the same command run again, crash hook unset
        agent.redeem(USER.address, "CLD", 20 * USD, "anthropic", 6_000 * TOKEN)


def _run(world, billing, step):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _child(world, billing, step)
            code = 0
        except BaseException:
            traceback.print_exc()  # shown with the failing test
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _before(world, billing):
    """What one more redemption is counted against: events, the payee's credits, rows."""
    return (len(world.events("Redeemed")), len(world.events("Released")), balance(billing),
            len(world.agent(billing).store.redemptions()))  # fmt: skip


def _assert_one_more_released(world, billing, before) -> None:
    """Exactly one more redemption: sold once, released once, $20 of credits bought once."""
    redeemed, released, credits, count = before
    assert len(world.events("Redeemed")) == redeemed + 1
    assert len(world.events("Released")) == released + 1
    assert balance(billing) == credits + 20 * USD
    rows = world.agent(billing).store.redemptions()
    assert len(rows) == count + 1 and all(r.status == RELEASED for r in rows)


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_agent__kill_9_at_each_step__one_redemption_one_purchase_one_release(world, billing, linked, step):
    before = _before(world, billing)
    world.twap_catches_up()
    status = _run(world, billing, step)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # it did die there
    assert os.WIFEXITED(_run(world, billing, None))  # the restart finishes it
    _assert_one_more_released(world, billing, before)


@pytest.mark.parametrize("step", ["redeem_signed", "redeem_broadcast", "billing_answered", "release_broadcast"])
def test_redeem__kill_9_then_the_same_command_again__the_one_redemption_finishes(world, billing, linked, step):
    """`promptex redeem` killed mid-way, then run again (not the agent's pass): it finds
    its open redemption and finishes it; no second sale."""
    before = _before(world, billing)
    world.twap_catches_up()
    status = _run(world, billing, step)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert os.WIFEXITED(status := _run(world, billing, "again")) and os.WEXITSTATUS(status) == 0
    _assert_one_more_released(world, billing, before)


def test_redeem__the_same_command_twice_at_once__one_redemption_one_sale(world, billing, linked):
    """Two `promptex redeem` processes with the same terms at once (a double click, a
    retry while the first still runs): one redemption, sold, bought and released once."""
    before = _before(world, billing)
    world.twap_catches_up()
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _child(world, billing, "again")
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    assert all(os.WIFEXITED(s) and os.WEXITSTATUS(s) == 0 for s in statuses)
    assert os.WIFEXITED(_run(world, billing, None))  # a pass finishes whatever the two left
    _assert_one_more_released(world, billing, before)


def test_agent__release_orphaned_by_a_reorg__released_again_on_the_new_branch(world, billing, linked):
    """A reorg below the release (the credits bought, the sale still on chain) left the
    agent's redemption "released" while the escrow held it open again: the user could
    refund its USDC after the deadline and keep the credits. The agent rechecks its
    receipts each pass and re-sends the release; nothing is bought twice."""
    world.twap_catches_up()
    assert os.WIFSIGNALED(_run(world, billing, "receipted"))  # sold and bought, not yet released
    agent = world.agent(billing)
    (r,) = agent.store.redemptions([RECEIPTED])
    credits, released = balance(billing), len(world.events("Released"))
    fork = world.w3.provider.make_request("evm_snapshot", [])["result"]
    agent.run_once(check_rules=False)
    assert agent.store.get(r.id).status == RELEASED and len(world.events("Released")) == released + 1

    world.w3.provider.make_request("evm_revert", [fork])  # the release is gone: the escrow holds it open again
    world.warp(1)
    assert agent.chain.redemption(r.chain_redemption_id).status == STATUS_OPEN
    agent.run_once(check_rules=False)

    assert agent.store.get(r.id).status == RELEASED
    assert agent.chain.redemption(r.chain_redemption_id).status == STATUS_RELEASED  # released on the new branch
    assert len(world.events("Released")) == released + 1
    assert balance(billing) == credits  # bought once
