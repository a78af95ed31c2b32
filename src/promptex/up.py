"""`promptex up`: the whole local market in one command.

Starts a local anvil (unless an RPC URL is given), deploys with the ape deploy script
(unless a live deployment is recorded), checks that the ledger mirrors this chain, seeds
the market, then runs the long-lived services (indexer, coordinator, fake upstreams,
gateway, fake billing API, redemption agent, web dashboard; on a new local market also the
Oracle keeper and the demo sellers' `seller finalize --watch`) as child processes with their
output prefixed by name, prints a status table and `promptex reconcile`'s verdict, and
stops everything on Ctrl-C / SIGTERM — or as soon as any service dies, so a broken market
never looks alive.

The market keeps its chain across restarts: anvil runs with its state in the market's
folder (`--state`, dumped on exit and every few seconds), so the next `promptex up` in the
same folder finds the same chain, deployment, balances and lots. `--fresh` moves the old
folder, ledger and deployment record into an archive and starts a new market.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import rich.console
import rich.table

if TYPE_CHECKING:
    from promptex.chain.deployments import Deployment
    from promptex.ready import Ready

ANVIL_NPM_BINARY = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
STOP_GRACE_SECONDS = 10.0
ANVIL_STATE = "anvil-state.json"
LOCAL_WELCOME_CREDIT = 10_000_000  # USDC smallest units: $10 of promotional credit per new wallet
INDEXED_WAIT_SECONDS = 60.0  # for the status's reconcile: how long the indexer may take to reach the head

console = rich.console.Console(highlight=False)


class UpError(RuntimeError):
    """A step of `promptex up` failed; the message says which and why."""


class UpStopped(UpError):
    """A stop was asked for (Ctrl-C, SIGTERM, SIGHUP) before the market was ready."""


@dataclass
class Service:
    name: str
    argv: list[str]
    url: str = ""
    ready: Callable[[], bool] | None = None  # None: running is ready
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's
    deferred: bool = False  # ready is awaited after the later services started (`await_ready`)
    stops_last: bool = False  # the chain: the others finish their passes against it first
    process: subprocess.Popen[str] | None = field(default=None, repr=False)


def anvil_binary() -> str:
    if ANVIL_NPM_BINARY.exists():
        return str(ANVIL_NPM_BINARY.resolve())
    found = shutil.which("anvil")
    if found is None:
        raise UpError("anvil not found: run `make setup` (installs it from npm) or pass --rpc-url")
    return found


def rpc_answers(url: str) -> bool:
    try:
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        return httpx.post(url, json=body, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def http_answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def local_billing_signer() -> str:
    """The address `promptex fake-billing` signs receipts with (its configured key)."""
    from eth_account import Account

    from promptex.agent.factory import fake_billing_key
    from promptex.config import ConfigurationError, Settings

    try:
        return str(Account.from_key(fake_billing_key(Settings())).address)
    except ConfigurationError as exc:
        raise UpError(str(exc)) from None


def local_attestor(env: dict[str, str]) -> str:
    """The dashboard's attestor key (set in `env` unless given) → its address, which the deploy
    grants the attestor role so that sellers can onboard in the browser."""
    from eth_account import Account

    from promptex.sellers.factory import LOCAL_ATTESTOR_KEY

    key = env.setdefault("PROMPTEX_ATTESTOR_PRIVATE_KEY", LOCAL_ATTESTOR_KEY)
    return str(Account.from_key(key).address)


def promptex_argv(*args: str) -> list[str]:
    """Run a promptex subcommand with this interpreter (works without the venv on PATH)."""
    return [sys.executable, "-m", "promptex.cli", *args]


def ape_argv(*args: str) -> list[str]:
    ape = Path(sys.executable).with_name("ape")
    return [str(ape) if ape.exists() else "ape", "run", *args, "--network", "ethereum:local:foundry"]


class Supervisor:
    """Runs child processes, prefixes their output, and stops them all together. Each runs
    in its own process group: a terminal's Ctrl-C (SIGINT to its foreground group) reaches
    `promptex up` alone, which stops the services in order, the chain last (`stop_all`)."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.services: list[Service] = []
        self.stopping = threading.Event()
        self._step: subprocess.Popen[str] | None = None  # the one-shot step running (deploy, seed)

    def handle_signals(self) -> None:
        """Ctrl-C, SIGTERM and a closed terminal (SIGHUP: the services, in their own process
        groups, no longer get it from the terminal) all ask for a stop; a SIGHUP ignored
        when `up` started (`nohup promptex up &`) stays ignored, as its services' was."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            signal.signal(sig, self.request_stop)

    def check(self) -> None:
        """UpStopped once a stop was asked for; UpError naming a service that died."""
        if self.stopping.is_set():
            raise UpStopped("stopped before the market was ready")
        for service in self.services:
            assert service.process is not None
            if service.process.poll() is not None:
                raise UpError(f"{service.name} exited with code {service.process.returncode} while starting")

    def halted(self) -> bool:
        """A stop was asked for, or a service died: nothing more to wait for."""
        dead = any(service.process is not None and service.process.poll() is not None for service in self.services)
        return dead or self.stopping.is_set()

    def _pipe(self, name: str, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            console.print(f"[dim]{name:>11} │[/dim] {line.rstrip()}", markup=True, soft_wrap=True)

    def run_step(self, name: str, argv: Sequence[str], timeout: float = 900.0) -> None:
        """A one-shot step (deploy, seed): its output streamed, a non-zero exit is an error; a
        stop asked for meanwhile stops it (`request_stop`) and raises UpStopped."""
        self.check()
        console.print(f"[bold]▶ {name}[/bold]")
        proc = subprocess.Popen(
            list(argv), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,
        )  # fmt: skip
        self._step = proc
        try:
            if self.stopping.is_set():  # asked for between the check and now
                _signal_group(proc, signal.SIGTERM)
            self._pipe(name, proc.stdout)
            code = proc.wait(timeout=timeout)
        finally:
            self._step = None
        self.check()
        if code != 0:
            raise UpError(f"{name} failed (exit {code}); its output is above")

    def start(self, service: Service, timeout: float = 60.0) -> None:
        self.check()
        console.print(f"[bold]▶ starting {service.name}[/bold]")
        service.process = subprocess.Popen(
            [*_dies_with_parent(), *service.argv],
            env={**self.env, **service.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: a terminal's Ctrl-C reaches `up` alone
        )
        self.services.append(service)
        threading.Thread(target=self._pipe, args=(service.name, service.process.stdout), daemon=True).start()
        if not service.deferred:
            self.await_ready(service, timeout)

    def await_ready(self, service: Service, timeout: float = 60.0) -> None:
        """Until `service` is ready; UpError at once should any service die meanwhile (not
        this one's timeout), UpStopped should a stop be asked for."""
        assert service.process is not None
        deadline = time.monotonic() + timeout
        while service.ready is not None and not service.ready():
            self.check()
            if time.monotonic() > deadline:
                raise UpError(f"{service.name} was not ready within {timeout:.0f} s")
            self.stopping.wait(0.2)
        self.check()

    def watch(self) -> int:
        """Block until a stop signal (exit 0) or a service dying (exit 1)."""
        while not self.stopping.wait(0.5):
            for service in self.services:
                assert service.process is not None
                if service.process.poll() is not None:
                    console.print(f"[red]{service.name} exited with code {service.process.returncode}[/red]")
                    return 1
        return 0

    def request_stop(self, *_args: object) -> None:
        self.stopping.set()
        step = self._step
        if step is not None:  # a deploy or seed runs for minutes: not to its end
            _signal_group(step, signal.SIGTERM)

    def stop_all(self) -> None:
        """SIGTERM in reverse start order, then SIGKILL whatever outlives the grace period; the
        chain only once the services using it are gone (a pass cut off mid-call printed a
        connection-reset traceback on every Ctrl-C)."""
        users = [service for service in reversed(self.services) if not service.stops_last]
        self._stop(users)
        self._stop([service for service in reversed(self.services) if service.stops_last])

    @staticmethod
    def _stop(services: list[Service]) -> None:
        for service in services:
            if service.process is not None and service.process.poll() is None:
                service.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for service in services:
            if service.process is None:
                continue
            try:
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(service.process, signal.SIGKILL)  # with whatever it started
                service.process.wait()

    def status_table(self) -> rich.table.Table:
        table = rich.table.Table(title="PROMPTEX local market")
        for column in ("service", "pid", "url"):
            table.add_column(column)
        for service in self.services:
            assert service.process is not None
            table.add_row(service.name, str(service.process.pid), service.url)
        return table


def _dies_with_parent() -> list[str]:
    """A prefix that has a service sent SIGTERM should `up` itself die without stopping it
    (kill -9, the OOM killer): util-linux's `setpriv --pdeathsig`, which execs the service
    (its own pid). Otherwise every service ran on for good, anvil holding the chain's port
    and the next `up` refusing it. Where there is no setpriv (not Linux): nothing."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [] if setpriv is None else [setpriv, "--pdeathsig", "TERM", "--"]


def _signal_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    """`sig` to the process group `process` leads (started with start_new_session)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # gone meanwhile
        os.killpg(process.pid, sig)


@dataclass
class UpOptions:
    rpc_url: str | None
    chain_port: int
    gateway_host: str
    gateway_port: int
    upstream_port: int
    seed: bool
    billing_port: int = 9100
    dashboard_port: int = 8090
    state_dir: Path = Path("promptex-market")
    fresh: bool = False
    door_port: int = 8086  # the coordinator's HTTP door (wallet-signed instant exits, SessionKeys)


# ─── The market's state across restarts ──────────────────────────────────────


def anvil_state_args(state_dir: Path, interval: int) -> list[str]:
    """anvil keeps its chain in the market's folder: loaded at start when present, dumped
    on exit (SIGTERM, SIGINT) and every `interval` seconds (a crash loses at most that; the
    indexer then sees the lost blocks as a reorg and rewinds them). Historical states are
    kept, so the chain can be read at the block the indexer last applied after a restart."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state = state_dir / ANVIL_STATE
    return ["--state", str(state), "--state-interval", str(interval), "--preserve-historical-states"]


def archive_market(state_dir: Path, ledger_url: str, deployment: Path, now: datetime) -> Path | None:
    """Move the market's folder, its SQLite ledger (with its WAL files) and its deployment
    record into `<folder>.archived-<UTC time>/`; returns the archive (None: nothing to move).
    A PostgreSQL ledger cannot be archived by moving a file: UpError."""
    from sqlalchemy.engine import make_url

    from promptex.ledger.db import sqlite_path

    url = make_url(ledger_url)
    if url.get_backend_name() != "sqlite":
        raise UpError(
            f"--fresh archives a SQLite ledger; this market's is {url.get_backend_name()}: "
            "point PROMPTEX_LEDGER_URL at a new database instead"
        )
    database = sqlite_path(url)  # the file the ledger's engine opens (`~`, a URI filename)
    ledger_files = (
        []
        if database is None
        else [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]
    )
    present = [path for path in (state_dir, *ledger_files, deployment) if path.exists()]
    if not present:
        return None
    archive = state_dir.with_name(f"{state_dir.name}.archived-{now.strftime('%Y%m%dT%H%M%SZ')}")
    archive.mkdir(parents=True)
    for path in present:
        if path.exists():  # (one inside the folder moved with it)
            shutil.move(str(path), archive / path.name)
    return archive


def absolute_ledger_url(ledger_url: str) -> str:
    """A SQLite ledger's URL with an absolute path (a command run elsewhere finds the same
    file, the one this process's engine opens: `ledger.db.absolute_sqlite_url`)."""
    from promptex.ledger.db import absolute_sqlite_url

    return absolute_sqlite_url(ledger_url)


def market_profile(options: UpOptions, rpc_url: str, env: dict[str, str]) -> dict[str, object]:
    """What this market is, for every later command (see `promptex.config`): the settings
    that find its chain, ledger, deployment, gateway, dashboard and billing API, and the
    URLs for people. No secrets."""
    from promptex.config import Settings

    s = Settings()
    gateway = f"http://{options.gateway_host}:{options.gateway_port}"
    return {
        "written_by": "promptex up",
        "settings": {
            "rpc_url": rpc_url,
            "ledger_url": absolute_ledger_url(s.ledger_url),
            "deployments_dir": str(s.deployments_dir.resolve()),
            "gateway_master_key_file": str(s.gateway_master_key_file.resolve()),
            "gateway_host": options.gateway_host,
            "gateway_port": options.gateway_port,
            "dashboard_host": options.gateway_host,
            "dashboard_port": options.dashboard_port,
            "dashboard_gateway_url": env["PROMPTEX_DASHBOARD_GATEWAY_URL"],
            "dashboard_seller_base_urls": json.loads(env["PROMPTEX_DASHBOARD_SELLER_BASE_URLS"]),
            "agent_billing_url": env["PROMPTEX_AGENT_BILLING_URL"],
            "agent_fake_billing_port": options.billing_port,
            "coordinator_door_url": door_url(options),
            # The local treasury is funded with test dollars (promptex.ready): $10 a new wallet.
            "welcome_credit_amount": LOCAL_WELCOME_CREDIT,
        },
        "urls": {
            "chain": rpc_url,
            "gateway": f"{gateway}/v1",
            "dashboard": f"http://{options.gateway_host}:{options.dashboard_port}/",
            "upstream": f"http://127.0.0.1:{options.upstream_port}/v1",
            "billing": f"http://127.0.0.1:{options.billing_port}",
            "door": door_url(options),
        },
    }


def door_url(options: UpOptions) -> str:
    """The coordinator's door, on the loopback address (it signs releases: never public by default)."""
    return f"http://127.0.0.1:{options.door_port}"


def write_profile(state_dir: Path, profile: dict[str, object]) -> Path:
    """Write the profile atomically into the market's folder (a reader never sees half)."""
    from promptex.config import PROFILE_FILE

    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / PROFILE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(profile, indent=2) + "\n")
    tmp.replace(path)
    return path


def check_chain_identity(rpc_url: str, network: str) -> str:
    """The ledger mirrors this chain and deployment (recorded now on a new ledger), or
    UpError in one line saying what differs and that `--fresh` starts a new market."""
    from promptex.chain.identity import check_chain
    from promptex.config import ConfigurationError, Settings
    from promptex.ledger import Ledger

    with Ledger.from_settings(Settings()) as ledger:
        try:
            identity = check_chain(ledger, service="promptex up", rpc_url=rpc_url, network=network)
        except ConfigurationError as exc:
            raise UpError(str(exc)) from None
    assert identity is not None
    return identity.short()


def reconcile_status(rpc_url: str, network: str, halted: Callable[[], bool]) -> None:
    """Once the indexer has reached the head: `promptex reconcile`'s verdict, and every
    difference it cannot explain. Not waited for once `halted` (a stop, or a service dead:
    a dead indexer never reaches the head)."""
    from promptex.config import ConfigurationError, Settings
    from promptex.ledger import Ledger
    from promptex.reconcile import summary
    from promptex.reconcile.run import ReconcileError, indexed_block, run

    def head() -> int:
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
        return int(httpx.post(rpc_url, json=body, timeout=5).json()["result"], 16)

    s = Settings()
    deadline = time.monotonic() + INDEXED_WAIT_SECONDS
    with Ledger.from_settings(s) as ledger:
        try:
            first = head()
            # Caught up: at or past the head seen now, and not past the chain's (after a crash
            # lost the last blocks, the indexer first rewinds what it had indexed of them).
            while not first <= (indexed_block(ledger) or -1) <= head() and time.monotonic() < deadline:
                if halted():
                    return
                time.sleep(0.5)
        except (httpx.HTTPError, ValueError, KeyError) as exc:  # a status line: the market keeps running
            console.print(f"[red]reconcile skipped:[/red] cannot read the head at {rpc_url} ({exc})")
            return
        try:
            report = run(s, rpc_url=rpc_url, network=network, ledger=ledger)
        except (ConfigurationError, ReconcileError) as exc:
            console.print(f"[red]reconcile failed:[/red] {exc}")
            return
    style = "green" if report.ok else "red"
    console.print(f"[{style}]{summary(report)}[/{style}]")
    for row in report.unexplained:
        console.print(f"[red]  unexplained:[/red] {row.section} of {row.subject}: {row.shown(row.unexplained)}")


# One tokenized and one listed lot per provider, served by the fake upstreams, opened
# through the sellers' own path (`promptex seller add-capacity`'s function, in this process:
# eight processes of their own cost ~25 s of start-up). Sellers: anvil accounts 1 and 2.
DEMO_PROVIDERS = ("anthropic", "openai", "google", "meta")
DEMO_SELLERS = {
    "tokenized": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "listed": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
}
DEMO_FACE_VALUE_USD = 500
DEMO_LOT_DAYS = 30
# Their keys: anvil's public development accounts 1 and 2, for their `seller finalize --watch`.
DEMO_SELLER_KEYS = {
    "tokenized": "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "listed": "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
}
FINALIZE_WATCH_SECONDS = 30  # a close's delay is hours: a check every half minute is plenty


def demo_finalizers() -> list[Service]:
    """`promptex seller finalize --watch` for each demo seller, so a lot closed with
    `promptex seller close` (or the dashboard) gives its bond back once the close delay is
    over, as a seller's own long-running finalizer would."""
    return [
        Service(
            f"finalize {kind}",
            promptex_argv("seller", "finalize", "--watch", str(FINALIZE_WATCH_SECONDS)),
            env={"PROMPTEX_SELLER_PRIVATE_KEY": DEMO_SELLER_KEYS[kind]},
        )
        for kind in DEMO_SELLERS
    ]


def open_demo_lots(options: UpOptions, rpc_url: str, deployment: Deployment) -> None:
    """The demo lots, one after the other in this process, each bond approved exactly before its lot."""
    from promptex.config import ConfigurationError, Settings
    from promptex.metering import provider_token
    from promptex.protocol.units import USD_MICRO
    from promptex.ready import approve_bond, bond_for
    from promptex.sellers import Capacity, CapacityRefused, LotNotOpened, LotPending
    from promptex.sellers.factory import open_capacity

    console.print(f"[bold]▶ {len(DEMO_PROVIDERS) * len(DEMO_SELLERS)} demo lots[/bold]")
    upstream = f"http://127.0.0.1:{options.upstream_port}/v1"
    face = DEMO_FACE_VALUE_USD * USD_MICRO
    # A tokenized lot's bond is its token's share (the only one the escrow takes), a listed
    # lot's the minimum; each seller is minted the bond of every lot it opens.
    bonds = {
        (provider, kind): bond_for(
            rpc_url,
            deployment,
            seller,
            face,
            1,
            deployment.address(f"token:{provider_token(provider).symbol}") if kind == "tokenized" else None,
        )
        for provider in DEMO_PROVIDERS
        for kind, seller in DEMO_SELLERS.items()
    }
    expires = int(time.time()) + DEMO_LOT_DAYS * 86_400
    capacities = [
        Capacity(
            provider=provider, api="anthropic" if provider == "anthropic" else "openai", base_url=upstream,
            api_key=f"demo-{provider}-key", face_value_usd_micro=face, kind=kind, rate_bps=6_000,
            expires_at=expires, seller=seller, resale_permitted=True, bond_usdc=bonds[provider, kind],
        )
        for provider in DEMO_PROVIDERS
        for kind, seller in DEMO_SELLERS.items()
    ]  # fmt: skip

    def approve(capacity: Capacity) -> None:  # exactly this lot's bond
        approve_bond(rpc_url, deployment, capacity.seller, capacity.bond_usdc)

    try:
        for opened in open_capacity(Settings(), capacities, before_each=approve):
            for line in opened.summary():
                console.print(f"[dim]{'demo lots':>11} │[/dim] {line}", soft_wrap=True)
    except (ConfigurationError, CapacityRefused, LotNotOpened, LotPending) as exc:
        raise UpError(f"a demo lot was refused: {exc}") from None


def closing_panel(options: UpOptions, ready: Ready) -> str:
    """What to do now: the dashboard, a working openai snippet (the demo buyer's key, its
    welcome credit), the next commands."""
    from promptex.protocol.units import money
    from promptex.ready import DEMO_ORG

    gateway = f"http://{options.gateway_host}:{options.gateway_port}/v1"
    dashboard = f"http://{options.gateway_host}:{options.dashboard_port}/"
    return "\n".join(
        [
            "",
            "[bold green]The market is ready.[/bold green]",
            f"  dashboard   {dashboard}",
            f"  gateway     {gateway}  (OpenAI- and Anthropic-compatible)",
            f"  demo buyer  account {ready.buyer_account}, wallet {ready.buyer_wallet}: "
            f"{money(ready.welcome_usd_micro, 'USDC')} of promotional credit",
            f"  demo org    {DEMO_ORG} (account {ready.org_account}), owner {ready.org_owner}",
            "",
            "Try it (pip install openai):",
            "",
            "  from openai import OpenAI",
            f'  client = OpenAI(base_url="{gateway}", api_key="{ready.buyer_key}")',
            '  answer = client.chat.completions.create(model="gpt-4o-mini",',
            '                                          messages=[{"role": "user", "content": "Hello"}])',
            "  print(answer.choices[0].message.content)",
            "",
            "Next:",
            f"  promptex buyer balance --account {ready.buyer_account}    # what the demo buyer can spend",
            f"  promptex buyer usage --account {ready.buyer_account}      # what it spent, per model and day",
            "  promptex status                       # vault, lots, pools",
            "  promptex seller lots                  # the lots and their state",
            "  promptex reconcile                    # the books against the chain",
            "",
        ]
    )


def plan_services(options: UpOptions, rpc_url: str, *, local_market: bool = False) -> list[Service]:
    """The long-lived services after the chain: the indexer and the coordinator (which follow
    the chain), the fake upstreams, the gateway, the fake billing API and the redemption
    agent that buys credits from it, then the web dashboard; on a seeded local market also
    the Oracle keeper (it signs with an anvil development account). None needs another to be
    ready to start (each reaches the others per request or pass), so all start at once and are
    awaited together: their imports overlap on the cores."""
    upstream = f"http://127.0.0.1:{options.upstream_port}"
    gateway = f"http://{options.gateway_host}:{options.gateway_port}"
    billing = f"http://127.0.0.1:{options.billing_port}"
    dashboard = f"http://{options.gateway_host}:{options.dashboard_port}"
    return [
        Service("indexer", promptex_argv("indexer"), url=rpc_url),
        Service(  # its door is awaited once the rest started (its chain check runs meanwhile)
            "coordinator",
            promptex_argv("coordinator"),
            url=door_url(options),
            ready=lambda: http_answers(f"{door_url(options)}/v1/health"),
            deferred=True,
        ),
        Service(
            "upstream",
            promptex_argv("fake-upstream", "--port", str(options.upstream_port)),
            url=f"{upstream}/v1",
            ready=lambda: http_answers(f"{upstream}/v1/models"),
            deferred=True,
        ),
        Service(
            "gateway",
            promptex_argv("gateway", "serve", "--host", options.gateway_host, "--port", str(options.gateway_port)),
            url=f"{gateway}/v1",
            ready=lambda: http_answers(f"{gateway}/v1/models"),
            deferred=True,
        ),
        Service(
            "billing",
            promptex_argv("fake-billing", "--port", str(options.billing_port)),
            url=billing,
            ready=lambda: http_answers(f"{billing}/v1/accounts/probe/balance"),
            deferred=True,
        ),
        Service("agent", promptex_argv("agent", "run"), url=rpc_url),
        Service(
            "dashboard",
            promptex_argv("dashboard", "--host", options.gateway_host, "--port", str(options.dashboard_port)),
            url=f"{dashboard}/",
            ready=lambda: http_answers(f"{dashboard}/api/config"),
            deferred=True,
        ),
        *(local_services(rpc_url) if local_market else []),
    ]


def local_services(rpc_url: str) -> list[Service]:
    """The Oracle keeper: it signs with anvil's development account 3."""
    return [Service("keeper", promptex_argv("keeper"), url=rpc_url)]


def up(options: UpOptions) -> int:
    # This market's profile is the one `up` and its services read (not another folder's).
    os.environ["PROMPTEX_UP_STATE_DIR"] = str(options.state_dir)
    env = dict(os.environ)
    supervisor = Supervisor(env)
    supervisor.handle_signals()
    try:
        from promptex.chain.deployments import deployment_path, load_deployment
        from promptex.config import DEFAULT_MARKET_DIR, Settings
        from promptex.ready import is_local_chain, make_ready, read_ready, seed_twap_history

        network = Settings().indexer_network
        if options.fresh:
            archived = archive_market(
                options.state_dir, Settings().ledger_url, deployment_path(network), datetime.now(UTC)
            )
            if archived is not None:
                console.print(f"[bold]▶ the previous market is archived in {archived}[/bold]")
        rpc_url = options.rpc_url
        if rpc_url is None:
            rpc_url = f"http://127.0.0.1:{options.chain_port}"
            if rpc_answers(rpc_url):
                raise UpError(f"something already answers on {rpc_url}: pass --rpc-url {rpc_url} to use it")
            state = anvil_state_args(options.state_dir, Settings().up_state_interval_seconds)
            supervisor.start(
                Service(
                    "anvil",
                    [anvil_binary(), "--host", "127.0.0.1", "--port", str(options.chain_port), "--silent", *state],
                    url=rpc_url,
                    ready=lambda: rpc_answers(rpc_url),
                    stops_last=True,
                )
            )
        elif not rpc_answers(rpc_url):
            raise UpError(f"no JSON-RPC node answers on {rpc_url}")
        # Not the gateway's TWAP endpoint: paying a model in another provider's token stays off
        # (the coordinator cannot settle such payments on chain yet; see the README).
        for variable in ("ATTESTOR", "INDEXER", "COORDINATOR", "AGENT"):
            env[f"PROMPTEX_{variable}_RPC_URL"] = rpc_url
        env["PROMPTEX_AGENT_BILLING_URL"] = f"http://127.0.0.1:{options.billing_port}"
        # Sellers may onboard the local fake upstream from the dashboard, besides the providers.
        fake = f"http://127.0.0.1:{options.upstream_port}/v1"
        env["PROMPTEX_DASHBOARD_SELLER_BASE_URLS"] = json.dumps([*Settings().dashboard_seller_base_urls, fake])
        env["PROMPTEX_DASHBOARD_GATEWAY_URL"] = f"http://127.0.0.1:{options.gateway_port}"
        env["APE_FOUNDRY_HOST"] = rpc_url
        if http_answers(f"{door_url(options)}/v1/health"):
            raise UpError(f"something already answers on {door_url(options)}: pass --door-port")
        env["PROMPTEX_COORDINATOR_DOOR_HOST"] = "127.0.0.1"
        env["PROMPTEX_COORDINATOR_DOOR_PORT"] = str(options.door_port)
        # RedemptionEscrow trusts the local fake billing API's key for anthropic receipts.
        signer = f"anthropic={local_billing_signer()}"
        attestor = local_attestor(env)
        # This process opens the demo lots itself, with the settings its children get.
        os.environ.update(env)
        supervisor.run_step(
            "deploy",
            # The live network's Oracle period and TWAP windows: the history seeded below covers them.
            ape_argv(
                "deploy",
                "--keep-existing",
                "--billing-signer",
                signer,
                "--extra-attestor",
                attestor,
                "--live-parameters",
            ),  # fmt: skip
        )
        console.print(f"[bold]▶ the ledger follows {check_chain_identity(rpc_url, network)}[/bold]")
        profile = write_profile(options.state_dir, market_profile(options, rpc_url, env))
        console.print(f"[bold]▶ promptex commands run here follow this market ({profile})[/bold]")
        if options.state_dir.resolve() != Path(DEFAULT_MARKET_DIR).resolve():
            console.print(f"  elsewhere, or with --state: export PROMPTEX_UP_STATE_DIR={options.state_dir.resolve()}")
        if options.seed:
            supervisor.run_step("seed market", ape_argv("seed_market"))
        ready = options.seed and is_local_chain(rpc_url)
        new_market = ready and read_ready(options.state_dir) is None
        if new_market:
            console.print("[bold]▶ a day of TWAP history (the local clock advanced with Oracle updates)[/bold]")
            supervisor.check()
            seed_twap_history(rpc_url, load_deployment(network))
        services = plan_services(options, rpc_url, local_market=ready)
        for service in services:
            supervisor.start(service)
        for service in services:
            if service.deferred:
                supervisor.await_ready(service)
        if new_market:
            supervisor.check()
            open_demo_lots(options, rpc_url, load_deployment(network))
        made = None
        if ready:
            for finalizer in demo_finalizers():  # the demo sellers' keys are anvil's
                supervisor.start(finalizer)
            deployment = load_deployment(network)
            s = Settings()
            supervisor.check()
            made = make_ready(rpc_url, deployment, options.state_dir, welcome_asset=s.welcome_credit_asset,
                              welcome_amount=LOCAL_WELCOME_CREDIT, treasury=s.welcome_credit_treasury)  # fmt: skip
        console.print(supervisor.status_table())
        if made is not None:  # unwrapped: the snippet must copy and paste as printed
            console.print(closing_panel(options, made), soft_wrap=True)
        reconcile_status(rpc_url, network, supervisor.halted)
        console.print("Ctrl-C stops everything.")
        return supervisor.watch()
    except UpStopped:  # asked for: nothing failed
        console.print("[bold]▶ stopped before the market was ready[/bold]")
        return 0
    except UpError as exc:  # one line on stderr, as every command's failure
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        supervisor.stop_all()
