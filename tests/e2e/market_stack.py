"""The whole local market as real processes, for the market state machine
(test_market_machine.py): one anvil with the contracts deployed as `promptex up` deploys
them (once per session, then reset between examples with evm_snapshot/evm_revert), and
per example a fresh SQLite ledger with the indexer, the coordinator and the gateway
started as `promptex …` OS processes (so that a test can SIGKILL one by PID and start it
again), in front of the fake upstream (in this process, so that a rule can inject its
faults).

Nothing here decides what the market should hold: the machine's model does. This is the
plumbing: start/kill/restart, chain calls signed by fresh wallets, bounded waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

from anvil_node import ANVIL, ROOT, ape_env, ape_run, free_port
from polling import until
from promptex.chain.deployments import Deployment, load_deployment
from promptex.cli import main as cli_main
from promptex.config import settings
from promptex.fakes import FakeUpstreamConfig, create_fake_upstream
from promptex.sellers.factory import LOCAL_ATTESTOR_KEY
from promptex.serving import ServerThread

CATALOG = ROOT / "tests/gateway/catalog.toml"
DEPLOYER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil account 0
SERVICES = ("indexer", "coordinator", "gateway")
# Holds live 12 s (1 s to connect upstream, 10 s to answer, a 1 s margin): a gateway killed
# with requests in flight leaves holds that expire within one example.
HOLD_TTL_SECONDS = 12
SWEEP_SECONDS = 0.5


class StackError(AssertionError):
    """The stack did not reach the state a step waits for (the message says which)."""


@dataclass
class Chain:
    """The session's anvil and deployment, and transactions signed by local wallets."""

    url: str
    root: Path  # deployments dir
    deployment: Deployment
    w3: Web3 = field(init=False)
    _contracts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.w3 = Web3(HTTPProvider(self.url, request_kwargs={"timeout": 60}))

    def rpc(self, method: str, *params: Any) -> Any:
        answer = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        if "error" in answer:
            raise StackError(f"{method}: {answer['error']}")
        return answer["result"]

    def contract(self, name: str) -> Any:
        found = self._contracts.get(name)
        if found is None:
            record = self.deployment.contracts[name]
            abi = json.loads(Path(record.abi).read_text())
            found = self._contracts[name] = self.w3.eth.contract(address=record.address, abi=abi)
        return found

    def asset(self, symbol: str) -> Any:
        return self.contract("USDC" if symbol == "USDC" else f"token:{symbol}")

    def wallet(self) -> LocalAccount:
        """A fresh wallet with gas money."""
        account: LocalAccount = Account.create()
        self.rpc("anvil_setBalance", account.address, hex(10**20))
        return account

    def send(self, wallet: LocalAccount, call: Any, *, check: bool = True) -> bool:
        """Sign and send `call` from `wallet`, wait for it; True if it succeeded."""
        tx = call.build_transaction(
            {"from": wallet.address, "nonce": self.w3.eth.get_transaction_count(wallet.address), "gas": 3_000_000}
        )
        sent = self.w3.eth.send_raw_transaction(wallet.sign_transaction(tx).raw_transaction)
        ok = self.w3.eth.wait_for_transaction_receipt(sent, timeout=60)["status"] == 1
        if check and not ok:
            raise StackError(f"transaction {sent.hex()} reverted")
        return ok

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def advance(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")

    def snapshot(self) -> str:
        return str(self.rpc("evm_snapshot"))

    def revert(self, snapshot: str) -> None:
        if not self.rpc("evm_revert", snapshot):
            raise StackError(f"evm_revert {snapshot} refused")


@contextlib.contextmanager
def deployed_market(workdir: Path) -> Iterator[Chain]:
    """An anvil with the contracts deployed as `promptex up` deploys them (the fake billing
    signer trusted for anthropic, the dashboard's attestor granted)."""
    from anvil_node import running_anvil
    from promptex.up import local_attestor, local_billing_signer

    attestor = local_attestor({})
    signer = f"anthropic={local_billing_signer()}"
    with running_anvil() as url:
        root = workdir / "deployments"
        deploy = ape_run(
            ape_env(url, root), "deploy", "--keep-existing", "--billing-signer", signer, "--extra-attestor", attestor
        )
        assert deploy.returncode == 0, deploy.stderr[-3000:]
        yield Chain(url, root, load_deployment("local", root))


class Fake:
    """The fake upstream, served from a thread of this process: its faults are set per rule."""

    def __init__(self) -> None:
        self.config = FakeUpstreamConfig()
        # Answers still waiting out a racing rule's latency (30 s) for a gateway killed under
        # them are cancelled 1 s into the shutdown, not awaited.
        self._server = ServerThread(create_fake_upstream(self.config), timeout_graceful_shutdown=1)

    def __enter__(self) -> Fake:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    @property
    def url(self) -> str:
        return self._server.url + "/v1"

    def behave(self, *, die_after: int | None = None, longer: int | None = None) -> None:
        """Healthy (no arguments), a stream that breaks off after `die_after` words, or
        answers of `longer` tokens whatever the request's limit."""
        self.config.die_after_chunks = die_after
        self.config.ignore_max_tokens = longer is not None
        self.config.output_tokens = longer if longer is not None else 16


class Services:
    """One example's ledger and its `promptex` service processes."""

    def __init__(self, chain: Chain, workdir: Path, fake: Fake) -> None:
        self.chain = chain
        self.workdir = workdir
        self.fake = fake
        self.ledger_url = f"sqlite:///{workdir}/ledger.sqlite3"
        self.gateway_port = free_port()
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kills: dict[str, int] = dict.fromkeys(SERVICES, 0)
        self.env = self._env()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        values = {
            "PATH": f"{ANVIL.parent}{os.pathsep}{ROOT / '.venv/bin'}{os.pathsep}{env['PATH']}",
            "PROMPTEX_DEPLOYMENTS_DIR": str(self.chain.root),
            "PROMPTEX_LEDGER_URL": self.ledger_url,
            "PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS": "NORMAL",  # survives a process crash, not power loss
            "PROMPTEX_MODEL_CATALOG": str(CATALOG),
            "PROMPTEX_GATEWAY_MASTER_KEY_FILE": str(self.workdir / "master.key"),
            "PROMPTEX_GATEWAY_DEFAULT_ASSET": "USDC",
            "PROMPTEX_GATEWAY_KEY_CACHE_SECONDS": "0",
            "PROMPTEX_GATEWAY_LOT_REFRESH_SECONDS": "0.2",
            "PROMPTEX_GATEWAY_SHED_WAIT_MS": "10000",  # a busy test machine must not shed load
            "PROMPTEX_GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "1",
            "PROMPTEX_GATEWAY_UPSTREAM_TIMEOUT_SECONDS": "10",
            "PROMPTEX_GATEWAY_HOLD_MARGIN_SECONDS": "1",
            "PROMPTEX_GATEWAY_HOLD_TTL_SECONDS": str(HOLD_TTL_SECONDS),
            "PROMPTEX_GATEWAY_SWEEP_SECONDS": str(SWEEP_SECONDS),
            "PROMPTEX_GATEWAY_METRICS_PORT": "0",  # no metrics/health port: stacks run side by side
            "PROMPTEX_ATTESTOR_RPC_URL": self.chain.url,
            "PROMPTEX_ATTESTOR_PRIVATE_KEY": LOCAL_ATTESTOR_KEY,
            "PROMPTEX_INDEXER_RPC_URL": self.chain.url,
            "PROMPTEX_INDEXER_POLL_SECONDS": "0.2",
            "PROMPTEX_COORDINATOR_RPC_URL": self.chain.url,
            "PROMPTEX_COORDINATOR_POLL_SECONDS": "0.2",
            "PROMPTEX_COORDINATOR_TX_TIMEOUT_SECONDS": "10",
            "PROMPTEX_COORDINATOR_LEASE_SECONDS": "2",  # a killed coordinator's lease ends soon
            "PROMPTEX_COORDINATOR_DOOR_PORT": "0",  # no HTTP door: stacks run side by side
        }
        env.update(values)
        return env

    # ─── Processes ───────────────────────────────────────────────────────────

    def _argv(self, name: str) -> list[str]:
        args = {"indexer": ["indexer"], "coordinator": ["coordinator"],
                "gateway": ["gateway", "serve", "--port", str(self.gateway_port)]}[name]  # fmt: skip
        return [sys.executable, "-m", "promptex.cli", *args]

    def start(self, name: str) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(self._argv(name), env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)
        self.wait_ready()

    def wait_ready(self) -> None:
        """Every service running; the gateway answering HTTP."""

        def gateway_answers() -> bool:
            self.check_alive()
            try:
                return httpx.get(self.gateway_url + "/v1/models", timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        until(gateway_answers, "the gateway answers", 120, every=0.1)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with code {proc.returncode}: {self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def kill(self, name: str) -> None:
        """SIGKILL by PID, as a crash would: nothing runs after it."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.kills[name] += 1

    def restart(self, name: str) -> None:
        self.start(name)
        if name == "gateway":
            self.wait_ready()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ─── The CLI, as a seller would run it ───────────────────────────────────

    def cli(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        """`promptex ARGS` in this process with the services' settings (and `env`)."""
        settings.cache_clear()
        try:
            result = CliRunner().invoke(cli_main, list(args), env={**self.env, **(env or {})})
        finally:
            settings.cache_clear()
        return result.exit_code, result.output + (repr(result.exception) if result.exception else "")
