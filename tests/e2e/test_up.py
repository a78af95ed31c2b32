"""`promptex up` starts the local market, serves the gateway, reconciles its books, stops
it all on Ctrl-C — and, started again in the same folder, finds the same chain: balances,
lots and deployment kept, nothing rewound, the books still reconciling."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from web3 import HTTPProvider, Web3

from anvil_node import ANVIL, ROOT, free_port
from human_units import assert_human
from promptex.indexer import store as indexer_store
from promptex.ledger import Ledger
from promptex.protocol.dex import LIVE_ORACLE_PERIOD
from promptex.protocol.options import LIVE_TWAP_WINDOW as OPTIONS_WINDOW
from promptex.protocol.perp import LIVE_TWAP_WINDOW as PERP_WINDOW
from promptex.protocol.redemption import LIVE_TWAP_WINDOW as REDEMPTION_WINDOW
from promptex.protocol.units import USD_MICRO
from quickstarts import quickstarts, run_quickstart


class Up:
    """One `promptex up` process, its output collected as it runs."""

    def __init__(self, env: dict[str, str], ports: dict[str, int], *extra: str) -> None:
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "promptex.cli", "up", "--chain-port", str(ports["chain"]),
             "--gateway-port", str(ports["gateway"]), "--upstream-port", str(ports["upstream"]),
             "--billing-port", str(ports["billing"]), "--dashboard-port", str(ports["dashboard"]),
             "--door-port", str(ports["door"]), *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=lambda: self.output.extend(self.process.stdout), daemon=True).start()  # type: ignore[arg-type]

    def wait_for(self, text: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while text not in "".join(self.output) and time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.2)
        log = "".join(self.output)
        assert text in log, log[-3000:]
        return log

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=30) == 0, "".join(self.output)[-3000:]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


def flat(log: str) -> str:
    """up's output with its whitespace runs as single spaces: the console wraps a long line
    (the reconcile verdict) at its width, wherever a word ends."""
    return " ".join(log.split())


def _contract(w3: Web3, root: Path, name: str) -> Any:
    record = json.loads((root / "local.json").read_text())["contracts"][name]
    return w3.eth.contract(address=record["address"], abi=json.loads(Path(record["abi"]).read_text()))


def test_up__fresh_machine__serves_then_stops_everything_on_ctrl_c__and_restarts_on_the_same_chain(tmp_path):
    ports = {name: free_port() for name in ("chain", "gateway", "upstream", "billing", "dashboard", "door")}
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    env = dict(os.environ)
    env.update(
        PATH=f"{ANVIL.parent}{os.pathsep}{ROOT / '.venv/bin'}{os.pathsep}{env['PATH']}",
        PROMPTEX_DEPLOYMENTS_DIR=str(tmp_path / "deployments"),
        PROMPTEX_LEDGER_URL=ledger_url,
        PROMPTEX_GATEWAY_MASTER_KEY_FILE=str(tmp_path / "master.key"),
        PROMPTEX_UP_STATE_DIR=str(tmp_path / "market"),
        PROMPTEX_GATEWAY_METRICS_PORT="0",  # its gateway: no metrics/health port (not 9464, maybe taken)
    )
    chain = f"http://127.0.0.1:{ports['chain']}"
    up = Up(env, ports)
    try:
        log = flat(up.wait_for("Ctrl-C stops everything", 300))
        assert "CLD/USDC" in log  # the market was seeded
        assert "the ledger follows chain 31337 (genesis 0x" in log
        assert "books reconcile with the chain at block" in log and "no differences" in log

        gateway = f"http://127.0.0.1:{ports['gateway']}/v1"
        response = httpx.get(f"{gateway}/models", timeout=5)
        assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
        assert response.headers["x-request-id"]
        assert (tmp_path / "deployments/local.json").exists()
        # The escrow trusts the fake billing API's signer (anvil account 9) for anthropic receipts.
        assert "billing signer anthropic: 0xa0Ee7A142d267C1f36714E4a8F75612F20a79720" in log
        billing = f"http://127.0.0.1:{ports['billing']}/v1/accounts/acct_demo/balance"
        assert httpx.get(billing, headers={"authorization": "Bearer any"}, timeout=5).json()["usd_micro"] == 0
        dashboard = f"http://127.0.0.1:{ports['dashboard']}"
        config = httpx.get(f"{dashboard}/api/config", timeout=5).json()
        assert config["chain_id"] == 31337 and f":{ports['chain']}" not in json.dumps(config)  # node URL kept back
        assert "<title>" in httpx.get(f"{dashboard}/", timeout=5).text  # the built front end
        door = f"http://127.0.0.1:{ports['door']}"  # the coordinator's door, in the profile for every command
        assert httpx.get(f"{door}/v1/health", timeout=5).json() == {"ok": True}
        assert json.loads((tmp_path / "market/profile.json").read_text())["settings"]["coordinator_door_url"] == door
        up.wait_for("agent address 0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f", 60)  # anvil account 8, running

        # A deposit the indexer credits, and the seeded lots: both must outlive a restart.
        w3 = Web3(HTTPProvider(chain))
        root = tmp_path / "deployments"
        vault, usdc, escrow = (_contract(w3, root, name) for name in ("CreditsVault", "USDC", "CreditEscrow"))
        depositor = w3.eth.accounts[3]
        with Ledger.open(ledger_url) as ledger:
            in_vault = ledger.system_balance("vault", "USDC")  # the treasury's deposit, the bonds' are not
        # Each mined before the next is sent: the next one's gas estimate reads its effect
        # (under load, anvil answered the deposit's estimate before the approve was mined).
        for call in (
            usdc.functions.mint(depositor, 7 * USD_MICRO),
            usdc.functions.approve(vault.address, 7 * USD_MICRO),
            vault.functions.deposit(usdc.address, 7 * USD_MICRO),
        ):
            sent = call.transact({"from": depositor})
            assert w3.eth.wait_for_transaction_receipt(sent, timeout=30)["status"] == 1
        lots = escrow.functions.lot_count().call()
        assert lots > 0
        with Ledger.open(ledger_url) as ledger:
            deadline = time.monotonic() + 60
            while ledger.system_balance("vault", "USDC") != in_vault - 7 * USD_MICRO and time.monotonic() < deadline:
                time.sleep(0.5)
            assert ledger.system_balance("vault", "USDC") == in_vault - 7 * USD_MICRO  # indexed

        # A ready market: the closing panel's openai snippet answers with the demo buyer's
        # key, paid by its $10 of promotional credit from the funded treasury; a tokenized
        # and a listed lot per provider; a day of TWAP history.
        assert "The market is ready." in log and "10.00 USDC of promotional credit" in log
        assert_human(log, "promptex up's output")
        ready = json.loads((tmp_path / "market" / "ready.json").read_text())
        assert f'api_key="{ready["buyer_key"]}"' in log  # on one line: it copies and pastes
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{ports['gateway']}/v1", api_key=ready["buyer_key"])
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
        assert answer.choices[0].message.content and answer.usage.total_tokens > 0
        with Ledger.open(ledger_url) as ledger:
            treasury = ledger.treasury("promotions").id
            assert ledger.budget(treasury, ready["buyer_account"], "USDC").remaining < 10 * USD_MICRO  # it paid
        w3 = Web3(HTTPProvider(chain))
        escrow = _contract(w3, tmp_path / "deployments", "CreditEscrow")
        # seed_market's 4 (no upstream behind them) + anthropic, openai, google, meta × tokenized, listed
        assert escrow.functions.lot_count().call() == 4 + 8
        oracle = _contract(w3, tmp_path / "deployments", "Oracle")
        cld = json.loads((tmp_path / "deployments/local.json").read_text())["contracts"]["token:CLD"]["address"]
        assert oracle.functions.consult(cld, 86_400).call() > 0  # a day's TWAP, at once
        # ... and after it the chain's clock reads the wall clock's time (its genesis a day back):
        # before, the history left it a day ahead, and every time read from it was shown a day late.
        assert abs(w3.eth.get_block("latest")["timestamp"] - time.time()) < 600
        # The live network's Oracle period and TWAP windows (the seeded history covers them), kept
        # current by the keeper, a supervised service of its own like the demo sellers' finalizers.
        assert oracle.functions.period().call() == LIVE_ORACLE_PERIOD
        windows = {name: _contract(w3, root, name).functions.twap_window().call()
                   for name in ("RedemptionEscrow", "Perp", "Options")}  # fmt: skip
        assert windows == {"RedemptionEscrow": REDEMPTION_WINDOW, "Perp": PERP_WINDOW, "Options": OPTIONS_WINDOW}
        assert oracle.functions.consult(cld, OPTIONS_WINDOW).call() > 0
        assert f"oracle keeper: Oracle.update for CLD, GPT, GEM, LLM every {LIVE_ORACLE_PERIOD} s" in log
        services = ("keeper", "finalize tokenized", "finalize listed")
        assert all(re.search(rf"│ {name} +│ \d+", log) for name in services), log[-3000:]

        # Other commands follow the market's profile alone: no chain, ledger or deployment
        # in their environment (only the folder is named), run outside the checkout (the
        # ape-signed ones read the ABIs the deployment recorded), and no warning noise.
        assert json.loads((tmp_path / "market" / "profile.json").read_text())["settings"]["rpc_url"] == chain
        bare = {k: v for k, v in env.items() if not k.startswith("PROMPTEX_") and k != "APE_FOUNDRY_HOST"}
        bare["PROMPTEX_UP_STATE_DIR"] = str(tmp_path / "market")
        # (the tokenized lots' seller, anvil account 1, holds every provider token: in dollars at the TWAP)
        seller = ["wallet", "balances", "--account", "TEST::1"]
        commands = ((["status"], "chain 31337, vault 0x"), (["reconcile"], "books reconcile"), (seller, "total: $"))
        for command, expected in commands:
            done = subprocess.run([sys.executable, "-m", "promptex.cli", *command], cwd=tmp_path, env=bare,
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
            assert done.returncode == 0 and expected in done.stdout, done.stdout + done.stderr
            assert "Warning" not in done.stderr, done.stderr
            assert_human(done.stdout, " ".join(command))
            if command == seller:
                assert re.search(r"CLD \(\$[\d,.]+\)", done.stdout) and "not counted" not in done.stdout

        # The README's quick-starts, as written, with what a user has after `promptex up`:
        # the venv's commands on PATH and (this market's folder not being the default) its place.
        found = quickstarts(ROOT / "README.md")
        # (instant_exit: the demo buyer's wallet gets test dollars from `promptex wallet faucet`)
        assert [qs.name for qs in found] == ["buyer", "seller", "org", "instant_exit"]
        workdir = tmp_path / "user"
        workdir.mkdir()
        for qs in found:
            assert_human(run_quickstart(qs, bare, workdir), f"quick-start {qs.name}")
        up.stop()
    finally:
        up.kill()
    try:
        httpx.post(chain, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1)
        raise AssertionError("anvil still answers after promptex up stopped")
    except httpx.ConnectError:
        pass
    assert (tmp_path / "market" / "anvil-state.json").exists()

    again = Up(env, ports)  # the same folder: the same chain
    try:
        log = flat(again.wait_for("Ctrl-C stops everything", 300))
        # Kept as they were, read over JSON-RPC (no ape step: a restart is seconds faster).
        assert "live deployment kept" in log and "every pool already has liquidity: left alone" in log
        assert "The market is ready." in log and ready["buyer_key"] in log  # the same demo buyer, shown again
        assert "books reconcile with the chain at block" in log and "unexplained" not in log
        w3 = Web3(HTTPProvider(chain))
        vault, usdc, escrow = (_contract(w3, root, name) for name in ("CreditsVault", "USDC", "CreditEscrow"))
        assert vault.functions.balance_of(w3.eth.accounts[3], usdc.address).call() == 7 * USD_MICRO
        assert escrow.functions.lot_count().call() == lots
        with Ledger.open(ledger_url) as ledger, ledger.engine.connect() as conn:
            assert indexer_store.reorgs(conn) == []  # nothing was rewound: the chain is the one it indexed
            assert ledger.problems() == []
        again.stop()
    finally:
        again.kill()
