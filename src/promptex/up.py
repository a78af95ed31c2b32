"""`promptex up`: the whole local market in one command.

Starts a local anvil (unless an RPC URL is given), deploys with the ape deploy script
(unless a live deployment is recorded), checks that the ledger mirrors this chain, seeds
the market (unless its pools already have liquidity), then runs the long-lived services
(indexer, coordinator, fake upstreams, gateway, fake billing API, redemption agent, web
dashboard; on a new local market also the Oracle keeper and the demo sellers' `seller
finalize --watch`) as child processes with their output prefixed by name, prints a status
table and `promptex reconcile`'s verdict, and stops everything on Ctrl-C / SIGTERM — or as
soon as any service dies, so a broken market never looks alive.

The market keeps its chain across restarts: anvil runs with its state in the market's
folder (`--state`, dumped on exit and every few seconds), so the next `promptex up` in the
same folder finds the same chain, deployment, balances and lots, its clock going on from
its last block (`resume_chain_clock`); blocks the ledger indexed that the last dump lost
are named before the indexer rewinds them (`chain_behind_ledger`); a state file anvil cut
short mid-write is named in one line, with the copy of the one the last start loaded
(`start_chain`). One `up` runs a folder at a time (`hold_market`), and one a ledger
(`hold_ledger`: SQLite or PostgreSQL). `--fresh` moves the old folder, ledger and deployment record
into an archive and starts a new market.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import rich.console
import rich.markup
import rich.table

from promptex.files import lock_exclusively

if TYPE_CHECKING:
    from promptex.chain.deployments import Deployment
    from promptex.ledger import Ledger
    from promptex.ready import Ready

ANVIL_NPM_BINARY = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
STOP_GRACE_SECONDS = 10.0
ANVIL_STATE = "anvil-state.json"
LOADED_STATE = "anvil-state.json.loaded"  # a copy of the state file the last anvil started from (`start_chain`)
LOCK_FILE = "up.lock"  # in the market's folder: the `promptex up` running it (its pid)
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
    said: list[str] = field(default_factory=list, repr=False)  # its last lines of output (`last_words`)
    reader: threading.Thread | None = field(default=None, repr=False)  # the thread printing its output

    def last_words(self) -> list[str]:
        """Its last lines of output, once it has exited (its reader given a moment to read them all)."""
        if self.reader is not None:
            self.reader.join(timeout=2.0)
        return list(self.said)


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
        self.ran = False  # a step or service was started: what `up` made in the folder stays
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

    def _pipe(self, name: str, stream: object, said: list[str] | None = None) -> None:
        for line in stream:  # type: ignore[attr-defined]
            console.print(f"[dim]{name:>11} │[/dim] {line.rstrip()}", markup=True, soft_wrap=True)
            if said is not None:
                said[:] = [*said[-4:], line.rstrip()]

    def run_step(self, name: str, argv: Sequence[str], timeout: float = 900.0) -> None:
        """A one-shot step (deploy, seed): its output streamed, a non-zero exit is an error; a
        stop asked for meanwhile stops it (`request_stop`) and raises UpStopped."""
        self.check()
        console.print(f"[bold]▶ {name}[/bold]")
        self.ran = True
        proc = subprocess.Popen(  # SIGTERM should `up` die (kill -9): not an orphan deploying on (see `start`)
            [*_dies_with_parent(), *argv], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1, start_new_session=True,
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
        self.ran = True
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
        service.reader = threading.Thread(
            target=self._pipe, args=(service.name, service.process.stdout, service.said), daemon=True
        )
        service.reader.start()
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

    def watch(self, still_held: Callable[[], str | None] = lambda: None, check_every: int = 10) -> int:
        """Block until a stop signal (exit 0), a service dying or the ledger's hold lost to
        another `up` (`still_held`'s line, checked every `check_every` half-seconds: exit 1)."""
        ticks = 0
        while not self.stopping.wait(0.5):
            ticks += 1
            if ticks % check_every == 0 and (lost := still_held()) is not None:
                console.print(f"[red]{rich.markup.escape(lost)}[/red]", soft_wrap=True)
                return 1
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


def hold_market(state_dir: Path) -> int:
    """Hold the market's folder for this `promptex up` (an exclusive lock on its `up.lock`,
    which names this process; returns the descriptor to keep open). The kernel drops the
    lock when the process ends, however it ends. UpError, one line, when another `up` holds it:
    two `up` in one folder ran two chains dumping into one state file, or (told by the first
    one's own error to pass --rpc-url) two indexers and coordinators on one ledger, and
    `--fresh` moved the folder and ledger away from under a running market."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd, holder = lock_exclusively(state_dir / LOCK_FILE, f"{os.getpid()}")
    if fd is None:
        raise UpError(
            f"another promptex up (pid {holder}) runs the market in {state_dir}: stop it first (Ctrl-C in its "
            "terminal), or give this one another folder (--state DIR)"
        )
    return fd


def hold_linked_chain(state_dir: Path) -> int | None:
    """When the market's state file is a symbolic link into another folder, hold that folder
    too (its `up.lock`; returns the descriptor to keep open, None when the file is the
    folder's own). Each `up` held only its own folder, so a folder whose anvil-state.json
    links to another market's ran a second anvil dumping another chain into the same file
    while that market ran (and that market's next start loaded whichever dumped last).
    UpError, one line, when an `up` holds it."""
    state = state_dir / ANVIL_STATE
    if not state.is_symlink():
        return None
    target = state.resolve()
    if target.parent == state_dir.resolve():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, holder = lock_exclusively(target.parent / LOCK_FILE, f"{os.getpid()}")
    if fd is None:
        raise UpError(
            f"{state} links to {target}, the chain of the market in {target.parent}, which another promptex up "
            f"(pid {holder}) runs: stop it first, or give this market a chain of its own (a copy of the file)"
        )
    return fd


def hold_ledger(ledger_url: str, state_dir: Path) -> LedgerHold:
    """Hold the market's ledger for this `promptex up` until it ends; returns what lets it
    go. UpError, one line naming the holder, when another `up` holds it: the ledger and
    deployment record are the working directory's by default, not the folder's, so `up
    --state OTHER` beside a running market shared them — and `up --state OTHER --fresh`
    moved the running market's ledger and deployment record into OTHER's archive (its
    services writing on into the moved file, every new command on an empty ledger); with
    `--rpc-url` to the first one's chain it ran a second indexer and coordinator on its
    ledger. A SQLite ledger: an exclusive lock on `<database>.up-lock`, which names this
    process and its folder; a PostgreSQL one: a session advisory lock (`_hold_postgres`);
    a SQLite database in memory: UpError (every process of the market had its own, empty:
    the indexer's deposits were not the gateway's, the demo key `up` printed one no gateway
    knew). `LedgerHold.check` tells whether it is still held (a PostgreSQL session can end
    under a running `up`)."""
    from sqlalchemy.engine import make_url

    from promptex.ledger.db import sqlite_path

    if make_url(ledger_url).get_backend_name() == "postgresql":
        return _hold_postgres(ledger_url, state_dir)
    database = sqlite_path(ledger_url)
    if database is None:  # each of the market's processes would open a database of its own, empty
        raise UpError(
            f"the ledger {ledger_url} is a SQLite database in memory: each of the market's processes (the indexer, "
            "the gateway, ...) would have its own, empty one; set PROMPTEX_LEDGER_URL to a file "
            "(sqlite:///promptex-ledger.sqlite3) or a PostgreSQL database"
        )
    database.parent.mkdir(parents=True, exist_ok=True)
    lock = ledger_lock_path(database)
    fd, holder = lock_exclusively(lock, f"{os.getpid()}, market {state_dir.resolve()}")
    if fd is None:
        raise UpError(_ledger_taken(holder, str(database)))
    return LedgerHold(functools.partial(os.close, fd))


def ledger_lock_path(database: Path) -> Path:
    """The file a SQLite ledger's `up` holds (`hold_ledger`)."""
    return database.with_name(database.name + ".up-lock")


def forget_made(made: list[Path]) -> None:
    """Take away what a refused `up` made before anything started (`up`): the market's new
    folder when its lock is all it holds, the ledger's new lock file. A first `up` refused
    for a taken port left both in the working directory. Called while they are still held,
    so no other `up` can be holding them."""
    for path in made:
        if path.is_dir():
            if {p.name for p in path.iterdir()} <= {LOCK_FILE}:
                (path / LOCK_FILE).unlink(missing_ok=True)
                path.rmdir()
        else:
            path.unlink(missing_ok=True)


class LedgerHold:
    """The ledger held for one `promptex up`: calling it lets go. `check`: None while it is
    held, else one line saying why this `up` must stop. A file lock lasts as long as its
    descriptor; a PostgreSQL session lock can end under a running `up` (`_PostgresHold`)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release

    def __call__(self) -> None:
        self._release()

    def check(self) -> str | None:
        return None


def _ledger_taken(holder: str, ledger: str) -> str:
    return (
        f"another promptex up (pid {holder}) runs a market on the ledger {ledger}: stop it first, or give this "
        "market its own ledger and deployment record (PROMPTEX_LEDGER_URL, PROMPTEX_DEPLOYMENTS_DIR)"
    )


UP_LOCKS = 0x75706C6B  # PostgreSQL advisory locks' first key ("uplk"); the second 0: one `up` per database
_UP_LOCK_HOLDER = f"""SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {UP_LOCKS} AND l.objid = 0 AND l.objsubid = 2
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
_APPLICATION = "promptex up "  # the lock session's application_name: this prefix, then the holder
_KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}


def _hold_postgres(ledger_url: str, state_dir: Path) -> LedgerHold:
    """The PostgreSQL ledger held by a session advisory lock (`UP_LOCKS`) on a connection of
    this `up`'s own, open until it ends (PostgreSQL drops the lock when the session ends, the
    kernel closing a killed process's socket); its application_name names the holder (its
    pid, host and folder: PostgreSQL keeps 63 bytes of it) for the next `up`'s refusal.

    Only SQLite ledgers were held: two `up` on one PostgreSQL ledger (a second folder with
    `--rpc-url` to the first's chain, or a copy of a running market's folder, whose profile
    names the ledger and whose chain is a copy of the first's) ran two indexers racing on one
    cursor, two agents signing with one key, each `up` making its market ready on the same
    books; with the copied folder, two chains diverging from the copy under one ledger, each
    indexer rewinding the other's blocks as a reorg and the coordinator that leads settling
    on its own chain usage whose deposits were made on the other.

    That session can end while `up` runs (a server restart, an administrator's or a pooler's
    pg_terminate_backend, an idle timeout), and with it the lock: a second `up` was then let
    run on the same books (xbreak4 s14). `up`'s watch checks it (`_PostgresHold.check`)."""
    from sqlalchemy.engine import make_url

    from promptex.ledger.db import create_ledger_engine

    shown = make_url(ledger_url).render_as_string(hide_password=True)
    engine = create_ledger_engine(ledger_url, pool_size=1)  # (connects nothing): the URL with its connect timeout
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    engine.dispose()
    holder = f"{os.getpid()} on {socket.gethostname()}, market {state_dir.resolve()}"
    taken = _lock_session(conninfo, holder, shown)
    if isinstance(taken, str):
        raise UpError(_ledger_taken(taken, shown))
    return _PostgresHold(taken, conninfo, holder, shown)


def _lock_session(conninfo: str, holder: str, shown: str) -> Any:
    """A new session holding `UP_LOCKS` (a psycopg connection), or the name of the `up`
    that holds it (str); UpError when the database cannot be reached or locked."""
    import psycopg

    try:
        conn = psycopg.connect(conninfo, autocommit=True, application_name=(_APPLICATION + holder)[:63], **_KEEPALIVES)
    except psycopg.Error as exc:
        raise UpError(f"cannot reach the ledger {shown}: {' '.join(str(exc).split())}") from None
    try:
        if conn.info.server_version >= 140000:  # idle for its whole life by design
            conn.execute("SET idle_session_timeout = 0")
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (UP_LOCKS, 0)).fetchone()
        if row is not None and row[0]:
            return conn
        found = conn.execute(_UP_LOCK_HOLDER).fetchone()
    except psycopg.Error as exc:
        conn.close()
        raise UpError(f"cannot lock the ledger {shown} for this market: {' '.join(str(exc).split())}") from None
    conn.close()
    named = str(found[0]) if found is not None and found[0] else ""
    return named.removeprefix(_APPLICATION) or "?"


class _PostgresHold(LedgerHold):
    """The lock's session, checked: ended, it is taken again on a new one; when another `up`
    took it meanwhile, `check` names it (this `up` stops); while the server cannot be reached,
    None (its services meet the same outage; tried again at the next check)."""

    def __init__(self, conn: Any, conninfo: str, holder: str, shown: str) -> None:
        super().__init__(self._close)
        self._conn, self._conninfo, self._holder, self._shown = conn, conninfo, holder, shown

    def _close(self) -> None:
        self._conn.close()

    def check(self) -> str | None:
        import psycopg

        try:
            self._conn.execute("SELECT 1")
            return None
        except psycopg.Error:  # the session ended, and the lock with it
            self._conn.close()
        try:
            taken = _lock_session(self._conninfo, self._holder, self._shown)
        except UpError:
            return None
        if isinstance(taken, str):
            return (
                f"this market's hold on the ledger {self._shown} was lost (its session ended) and another "
                f"promptex up (pid {taken}) took it: this one stops"
            )
        self._conn = taken
        console.print("[bold]▶ the ledger's hold was lost (its session ended) and is taken again[/bold]")
        return None


def ledger_of_another_market(ledger_url: str, state_dir: Path) -> str | None:
    """One line when a market folder with no chain of its own yet (no state, no profile: a
    new market, on a new anvil) would start on a ledger that already follows a chain, which
    can only be another market's (None: nothing recorded). `up --state OTHER` in a directory
    whose ledger and deployment record another market uses deployed over that market's
    record and then stopped on the ledger's chain check, which said to start with `--fresh`:
    that archived the other market's ledger and record (OTHER's own folder held nothing)."""
    from promptex.config import PROFILE_ASIDE, PROFILE_FILE, Settings
    from promptex.ledger import Ledger

    if any((state_dir / name).exists() for name in (ANVIL_STATE, PROFILE_FILE, PROFILE_ASIDE)):
        return None
    with Ledger.from_settings(Settings(ledger_url=ledger_url)) as ledger:
        follows = ledger.chain_identity()
    if follows is None:
        return None
    return (
        f"the ledger {ledger_url} follows another market's chain ({follows.short()}) and {state_dir} has no "
        "chain yet: give this market its own ledger and deployment record (PROMPTEX_LEDGER_URL, "
        "PROMPTEX_DEPLOYMENTS_DIR), or, if no market uses them any more, archive them with --fresh"
    )


def start_chain(supervisor: Supervisor, anvil: Service, state_dir: Path) -> None:
    """Start anvil on the market's chain, keeping a copy of the state file it started from
    (`LOADED_STATE`), and UpError in one line, the file left as it is, when it cannot load it.

    anvil rewrites its state file in place (create, truncate, write: not a new file renamed
    over the old), every few seconds and on its stop: a power loss or anvil killed during a
    write leaves it cut short, and the whole chain, every balance on it, was gone — anvil
    refused the file ("anvil exited with code 2 while starting", its parser's words above),
    and the only way on that `up` knew was `--fresh`. The copy, made before anvil starts and
    kept once it has loaded the file, is a chain that loads; the line says how to go back to
    it (what came after it is lost, and the indexer rewinds it) or to start a new market. A
    whole file anvil refuses (another anvil version's state, or not anvil's) is said to be
    that, not cut short."""
    state = state_dir / ANVIL_STATE
    loading = state_dir / (LOADED_STATE + ".tmp")
    if not state.exists() and (state_dir / LOADED_STATE).exists():
        # anvil dumps its chain from its start on, so only a hand (or a tool) removed it: a new
        # chain started here was dumped over nothing at its stop, every later `up` loaded that
        # one, and the ledger's chain check sent to --fresh, the market's chain left in the copy.
        raise UpError(
            f"the market's chain {state} is missing, but {state_dir / LOADED_STATE}, the one the last `promptex "
            f"up` started from, is there: go on from it with mv {state_dir / LOADED_STATE} {state} (what came "
            "after it is lost, and the indexer rewinds it), or start a new market with --fresh"
        )
    copied = state.exists()
    if copied:
        shutil.copy2(state, loading)  # (its modification time too: the clock goes on from the dump's)
    try:
        supervisor.start(anvil)
    except UpError as exc:
        if copied:
            loading.unlink(missing_ok=True)
        exited = anvil.process is not None and anvil.process.poll() is not None
        said = anvil.last_words() if exited and not isinstance(exc, UpStopped) else []
        words = next((line for line in said if "--state" in line), "")  # clap's refusal of the file names it
        if not copied or not words:
            raise
        back = (
            f"go back to the chain the last `promptex up` started from: mv {state_dir / LOADED_STATE} {state} "
            "(what came after it is lost, and the indexer rewinds it), or start a new market with --fresh"
            if (state_dir / LOADED_STATE).exists()
            else "start a new market with --fresh (it archives the file, nothing is deleted)"
        )
        cause = (  # serde_json's words for a file that ends early (empty, or cut mid-write)
            "the file was cut short while anvil wrote it (a power loss, or anvil killed)"
            if "EOF while parsing" in words
            else "the file is whole but no chain this anvil loads (another anvil version's state, or not anvil's)"
        )
        raise UpError(
            f"anvil cannot load the market's chain {state} ({' '.join(words.split())}): {cause} and is left as it "
            f"is; {back}"
        ) from exc
    if copied:
        os.replace(loading, state_dir / LOADED_STATE)


def genesis_args(now: float) -> list[str]:
    """A new local chain's genesis a day back (HISTORY_SECONDS), so that once the day of TWAP
    history `up` seeds has moved its clock on (an Oracle observation an hour), it reads the
    wall clock's time. Before, the history left the chain a day ahead of the wall clock for
    good, and every time read from it was shown a day late: `promptex session revoke` said a
    session's vouchers settle "until 2026-12-08 17:02:04 UTC" at 17:02 on the 7th — ten
    seconds away — and the dashboard's TWAP chart ended a day in the future."""
    from promptex.ready import HISTORY_SECONDS

    return ["--timestamp", str(int(now) - HISTORY_SECONDS)]


def state_dumped_at(state_dir: Path) -> float | None:
    """When anvil last dumped the market's chain (its state file's modification time), read
    before anvil starts (it rewrites the file every few seconds once running); None: no chain kept."""
    try:
        return (state_dir / ANVIL_STATE).stat().st_mtime
    except FileNotFoundError:
        return None


def resume_chain_clock(rpc_url: str, dumped_at: float, now: float, *, history_to_come: bool = False) -> int | None:
    """Set a restarted anvil's clock to go on from its last block; returns the timestamp
    its next block gets (None: the wall clock already is past the last block, and the
    market's day of TWAP history is not `history_to_come`).

    anvil keeps no clock offset in its state: a chain whose clock was moved forward (the
    day of TWAP history a new market seeds) restarted with its next block at the wall
    clock's time, a day BEFORE its last block. The vault then refused every settlement for
    that day ("vault: epoch window already settled": its windows are counted from block
    time), and a withdrawal's thaw ran a day longer. The clock now goes on from the last
    block plus the time the market was down (since the dump), as on a chain that kept
    running, and never before the last block.

    A market whose first `up` stopped before it was ready (Ctrl-C or a failure during the
    deploy or the seeding) has its chain a day behind the wall clock (`genesis_args`) and its
    day of TWAP history still to come: its clock goes on from the last block even behind the
    wall clock (`history_to_come`). Before, its next block was at the wall clock's time and
    the history then left the chain a day AHEAD for good (as before 995eb53)."""
    from promptex.chain.node import connect

    w3 = connect(rpc_url, timeout=10)
    last = int(w3.eth.get_block("latest")["timestamp"])
    resumed = max(last + 1, last + int(now - dumped_at))
    if resumed <= int(now) and not history_to_come:
        return None
    w3.provider.make_request("evm_setTime", [resumed])  # type: ignore[arg-type]
    return resumed


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


def check_ports_free(options: UpOptions) -> None:
    """UpError, one line, naming a service's port that something already listens on (a
    service left from an earlier market, a gateway started by hand): its own service
    failed to bind only after `up` had taken the old one's answers for its readiness, so
    the market was announced ready and then stopped with "gateway exited with code 1"."""
    ports = (
        ("gateway", options.gateway_host, options.gateway_port, "--gateway-port"),
        ("fake upstream", "127.0.0.1", options.upstream_port, "--upstream-port"),
        ("fake billing API", "127.0.0.1", options.billing_port, "--billing-port"),
        ("dashboard", options.gateway_host, options.dashboard_port, "--dashboard-port"),
        ("coordinator's door", "127.0.0.1", options.door_port, "--door-port"),
    )
    for name, host, port, flag in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
            try:
                probe.bind((host, port))
            except OSError:
                raise UpError(
                    f"port {port} (the {name}'s) is taken on {host}: stop what listens there (a service left from "
                    f"an earlier market?) or pass {flag}"
                ) from None


def door_url(options: UpOptions) -> str:
    """The coordinator's door, on the loopback address (it signs releases: never public by default)."""
    return f"http://127.0.0.1:{options.door_port}"


def live_escrow(rpc_url: str, network: str) -> str | None:
    """The recorded deployment's CreditEscrow address if it has code on this chain: what
    `ape run deploy --keep-existing` would keep, read without ape's seconds of start-up.

    UpError, one line, when the escrow has code but another recorded contract has none:
    the chain's last state dump came while the deploy ran, and a power loss (or anvil
    killed -9) after the deploy recorded it lost the rest. The deploy script keeps such a
    deployment too (it looks at the escrow alone), and `up` then failed with a traceback
    reading a pool from a factory that is not there, on every start."""
    from web3 import HTTPProvider, Web3

    from promptex.chain.deployments import deployment_path, load_deployment

    if not deployment_path(network).exists():
        return None
    recorded = load_deployment(network)
    escrow = recorded.contracts.get("CreditEscrow")
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
    if escrow is None or w3.eth.chain_id != recorded.chain_id:
        return None
    if not w3.eth.get_code(Web3.to_checksum_address(escrow.address)):
        return None
    missing = [
        name
        for name, contract in recorded.contracts.items()
        if not w3.eth.get_code(Web3.to_checksum_address(contract.address))
    ]
    if missing:
        raise UpError(
            f"the recorded deployment is only partly on this chain ({', '.join(missing)}: no code; the chain's "
            "last state dump came while it was deployed): start a new market with --fresh"
        )
    return escrow.address


def pools_seeded(rpc_url: str, network: str) -> bool:
    """Every reference pool of the recorded deployment has liquidity: the seed step would
    leave each alone (its oracle updates are the keeper's work once the market runs)."""
    from web3 import HTTPProvider, Web3

    from promptex.chain.deployments import load_deployment
    from promptex.protocol.dex import DEFAULT_FEE
    from promptex.protocol.providers import REFERENCE_PRICES

    deployment = load_deployment(network)
    if "Factory" not in deployment.contracts:
        return False
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))

    def contract(address: str, abi_path: str) -> Any:
        return w3.eth.contract(address=Web3.to_checksum_address(address), abi=json.loads(Path(abi_path).read_text()))

    factory = contract(deployment.address("Factory"), deployment.contracts["Factory"].abi)
    usdc = deployment.address("USDC")
    for symbol in REFERENCE_PRICES:
        token = deployment.contracts.get(f"token:{symbol}")
        if token is None:
            return False
        pool = factory.functions.get_pool(token.address, usdc, DEFAULT_FEE).call()
        if not factory.functions.is_pool(pool).call():
            return False
        if contract(pool, deployment.contracts["PoolBlueprint"].abi).functions.totalSupply().call() == 0:
            return False
    return True


def check_chain_identity(rpc_url: str, network: str) -> str:
    """The ledger mirrors this chain and deployment (recorded now on a new ledger), or
    UpError in one line saying what differs and that `--fresh` starts a new market; and
    a warning line when the chain lost blocks the ledger indexed (`chain_behind_ledger`)."""
    from promptex.chain.identity import check_chain
    from promptex.config import ConfigurationError, Settings
    from promptex.ledger import Ledger

    with Ledger.from_settings(Settings()) as ledger:
        try:
            identity = check_chain(ledger, service="promptex up", rpc_url=rpc_url, network=network)
        except ConfigurationError as exc:
            raise UpError(str(exc)) from None
        lost = chain_behind_ledger(rpc_url, ledger)
    if lost is not None:
        console.print(f"[bold red]▶ {lost}[/bold red]", soft_wrap=True)
    assert identity is not None
    return identity.short()


def chain_behind_ledger(rpc_url: str, ledger: Ledger) -> str | None:
    """One line when the chain lost blocks the ledger indexed (None: it has them all).

    anvil dumps its chain every few seconds: a power loss, or the chain killed with kill -9,
    loses what came after the last dump, which the ledger (written at once) may have
    indexed. The indexer then rewinds those blocks as a reorg, undoing their events on the
    books too (funds already spent become debts): right, as the chain no longer has them,
    but nothing told the user that their last transactions were gone."""
    from promptex.indexer import store
    from promptex.indexer.reorg import ReorgTooDeep, find_fork_point
    from promptex.indexer.rpc import RpcClient

    with ledger.engine.connect() as conn:
        cursor = store.load_cursor(conn)
        lowest = store.lowest_block(conn)
    if cursor is None or cursor.block_hash is None or lowest is None:
        return None
    with RpcClient(rpc_url, timeout=10) as rpc:
        tip = rpc.headers([cursor.block_number], missing_ok=True).get(cursor.block_number)
        if tip is not None and tip.hash == cursor.block_hash:
            return None

        def stored(low: int, high: int) -> dict[int, str]:
            with ledger.engine.connect() as conn:
                return store.block_hashes(conn, low, high)

        def chain(low: int, high: int) -> dict[int, str]:
            return {n: h.hash for n, h in rpc.headers(range(low, high + 1), missing_ok=True).items()}

        try:
            fork = find_fork_point(cursor.block_number, lowest, cursor.start_block, stored, chain)
        except ReorgTooDeep:
            fork = lowest - 1
    with ledger.engine.connect() as conn:
        events = len(store.events_after(conn, fork))
    return (
        f"the chain lost blocks {fork + 1}..{cursor.block_number} that the ledger indexed ({events} events): its "
        "last state dump came before it stopped (a power loss or kill -9). The indexer rewinds them as a reorg; "
        "their transactions are undone on the books too: send again what they did (`promptex indexer reorgs`)"
    )


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


def twap_history_recorded(rpc_url: str, deployment: Deployment) -> bool:
    """Every provider token's TWAP already answers over a day. A start stopped after the
    history and before the market was recorded ready (the history runs in this process, to
    its end, whatever a stop asked meanwhile) made every next `up` record it again: 100 more
    Oracle updates and the chain's clock another day ahead, each time."""
    from web3.exceptions import ContractLogicError

    from promptex.chain.node import connect, deployed_contract
    from promptex.ready import HISTORY_HOURS

    w3 = connect(rpc_url, timeout=30)
    oracle = deployed_contract(w3, deployment, "Oracle")
    for symbol in deployment.token_symbols():
        try:
            oracle.functions.consult(deployment.address(f"token:{symbol}"), (HISTORY_HOURS - 1) * 3_600).call()
        except ContractLogicError:  # "oracle: window not covered"
            return False
    return True


def demo_lots_open(rpc_url: str, deployment: Deployment) -> set[tuple[str, str]]:
    """The (provider, kind) demo lots the chain already has open, by their demo sellers. A
    start stopped after the demo lots and before the market was recorded ready (Ctrl-C or
    SIGTERM while the lots open: they run in this process, to their end; or a crash) made
    the next `up` open all eight again, with their bonds: 16 demo lots, then 24."""
    from promptex.chain.node import connect, deployed_contract
    from promptex.metering import provider_token
    from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, STATUS_OPEN

    w3 = connect(rpc_url, timeout=30)
    escrow = deployed_contract(w3, deployment, "CreditEscrow")
    providers = {deployment.address(f"token:{provider_token(p).symbol}").lower(): p for p in DEMO_PROVIDERS}
    kinds = {KIND_TOKENIZED: "tokenized", KIND_LISTED: "listed"}
    sellers = {seller.lower(): kind for kind, seller in DEMO_SELLERS.items()}
    found = set()
    for lot_id in range(1, int(escrow.functions.lot_count().call()) + 1):
        seller, token, kind, status = escrow.functions.lots(lot_id).call()[:4]
        provider = providers.get(str(token).lower())
        if status == STATUS_OPEN and provider is not None and sellers.get(str(seller).lower()) == kinds.get(kind):
            found.add((provider, kinds[kind]))
    return found


def ledger_lot_count() -> int:
    """How many lots this market's ledger has recorded (its gateway's, of any status)."""
    from promptex.config import Settings
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger

    with Ledger.from_settings(Settings()) as ledger:
        return len(GatewayStore(ledger.engine).lots())


def demo_lots_wanted(
    rpc_url: str, deployment: Deployment, *, new_market: bool, ledger_lots: int
) -> list[tuple[str, str]]:
    """The demo lots (provider, kind) this `up` opens: on a new market those the chain does
    not have open yet (`demo_lots_open`); on a market made ready before, none (a demo lot
    its seller closed stays closed) — unless the ledger has recorded no lot at all
    (`ledger_lots`): then the demo lots the chain has open were opened through another
    ledger, whose gateway serves them, and this one's would serve nothing. A market folder
    kept while its ledger changed (`ready.make_ready` makes the demo accounts and key again
    on the new ledger) opened no lot: its panel's key was answered "no capacity" for every
    model (wbreak s15). Every demo lot is opened again then (the other ledger's stay open on
    the chain, served by nobody here)."""
    every = [(provider, kind) for provider in DEMO_PROVIDERS for kind in DEMO_SELLERS]
    if ledger_lots == 0:
        return every
    if not new_market:
        return []
    already = demo_lots_open(rpc_url, deployment)
    return [lot for lot in every if lot not in already]


def open_demo_lots(options: UpOptions, rpc_url: str, deployment: Deployment, wanted: list[tuple[str, str]]) -> None:
    """The demo lots `wanted` (`demo_lots_wanted`), one after the other in this process,
    each bond approved exactly before its lot."""
    from promptex.config import ConfigurationError, Settings
    from promptex.metering import provider_token
    from promptex.protocol.units import USD_MICRO
    from promptex.ready import approve_bond, bond_for
    from promptex.sellers import Capacity, CapacityRefused, LotNotOpened, LotPending
    from promptex.sellers.factory import open_capacity

    if not wanted:
        console.print("[bold]▶ demo lots:[/bold] all already open: left alone")
        return
    kept = len(DEMO_PROVIDERS) * len(DEMO_SELLERS) - len(wanted)
    console.print(f"[bold]▶ {len(wanted)} demo lots{f' ({kept} already open)' if kept else ''}[/bold]")
    upstream = f"http://127.0.0.1:{options.upstream_port}/v1"
    face = DEMO_FACE_VALUE_USD * USD_MICRO
    # A tokenized lot's bond is its token's share (the only one the escrow takes), a listed
    # lot's the minimum; each seller is minted the bond of every lot it opens.
    bonds = {
        (provider, kind): bond_for(
            rpc_url,
            deployment,
            DEMO_SELLERS[kind],
            face,
            1,
            deployment.address(f"token:{provider_token(provider).symbol}") if kind == "tokenized" else None,
        )
        for provider, kind in wanted
    }
    expires = int(time.time()) + DEMO_LOT_DAYS * 86_400
    capacities = [
        Capacity(
            provider=provider, api="anthropic" if provider == "anthropic" else "openai", base_url=upstream,
            api_key=f"demo-{provider}-key", face_value_usd_micro=face, kind=kind, rate_bps=6_000,
            expires_at=expires, seller=DEMO_SELLERS[kind], resale_permitted=True, bond_usdc=bonds[provider, kind],
        )
        for provider, kind in wanted
    ]  # fmt: skip

    def approve(capacity: Capacity) -> None:  # exactly this lot's bond
        approve_bond(rpc_url, deployment, capacity.seller, capacity.bond_usdc)

    try:
        for opened in open_capacity(Settings(), capacities, before_each=approve):
            for line in opened.summary():
                console.print(f"[dim]{'demo lots':>11} │[/dim] {line}", soft_wrap=True)
    except (ConfigurationError, CapacityRefused, LotNotOpened, LotPending) as exc:
        raise UpError(f"a demo lot was refused: {exc}") from None


def restore_treasury(rpc_url: str, deployment: Deployment) -> bool:
    """Fund the welcome-credit treasury again when the chain lost its funding; True if it did.

    `ready.json` records a market made ready, but a power loss (or anvil killed -9) within
    the seconds after the panel loses the treasury's mint, deposit and spend cap with the
    blocks after anvil's last dump. The restart printed the panel again ("$10 of
    promotional credit") over a treasury with nothing on chain, and once the indexer
    rewound its deposit the demo buyer's requests were refused. The spend cap is the
    funding's last step and settlements never remove it (a treasury its welcome credits
    drained keeps it): the steps the chain lacks are done again (`ready.fund_treasury`; a
    deposit kept without its cap, a dump cut between the two, gets its cap)."""
    from promptex.ready import fund_treasury

    return fund_treasury(rpc_url, deployment)[1]


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
            f"{money(ready.welcome_usd_micro, 'USDC')} of promotional credit granted",  # not what is left now
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
    held: list[Callable[[], None]] = []  # the folder and ledger, let go once every service stopped (anvil dumps then)
    new_paths: list[Path] = []  # what this `up` made before starting anything: taken away if it stops there
    try:
        from promptex.chain.deployments import deployment_path, load_deployment
        from promptex.config import (
            DEFAULT_MARKET_DIR,
            ConfigurationError,
            Settings,
            set_aside_unreadable_profile,
            write_profile,
        )
        from promptex.ready import is_local_chain, make_ready, read_ready, seed_twap_history

        if not options.state_dir.exists():
            new_paths.append(options.state_dir)
        if options.state_dir.exists() or not options.fresh:  # first: nothing in it moves under another `up`
            held.append(functools.partial(os.close, hold_market(options.state_dir)))
            # --fresh archives the link (not the file it names) and starts a chain of its own: the
            # folder linked to is none of this market's (before, it was held, or the up refused,
            # for as long as this one ran)
            if not options.fresh and (linked := hold_linked_chain(options.state_dir)) is not None:
                held.append(functools.partial(os.close, linked))
        try:  # before any setting is read: every one is read through the profile
            damaged = set_aside_unreadable_profile(options.state_dir)
        except ConfigurationError as exc:
            raise UpError(str(exc)) from None
        if damaged is not None:
            console.print(f"[bold]▶ {rich.markup.escape(damaged)}[/bold]", soft_wrap=True)
        network = Settings().indexer_network
        from promptex.ledger.db import sqlite_path

        if (database := sqlite_path(Settings().ledger_url)) is not None and not ledger_lock_path(database).exists():
            new_paths.append(ledger_lock_path(database))
        ledger_hold = hold_ledger(Settings().ledger_url, options.state_dir)
        held.append(ledger_hold)  # before --fresh moves it
        if options.fresh:
            archived = archive_market(
                options.state_dir, Settings().ledger_url, deployment_path(network), datetime.now(UTC)
            )
            if archived is not None:
                console.print(f"[bold]▶ the previous market is archived in {archived}[/bold]")
            held.append(functools.partial(os.close, hold_market(options.state_dir)))  # the new folder
        check_ports_free(options)
        rpc_url = options.rpc_url
        if rpc_url is None:
            if (another := ledger_of_another_market(Settings().ledger_url, options.state_dir)) is not None:
                raise UpError(another)
            rpc_url = f"http://127.0.0.1:{options.chain_port}"
            if rpc_answers(rpc_url):
                raise UpError(f"something already answers on {rpc_url}: pass --rpc-url {rpc_url} to use it")
            dumped_at = state_dumped_at(options.state_dir)
            state = anvil_state_args(options.state_dir, Settings().up_state_interval_seconds)
            history_to_come = options.seed and read_ready(options.state_dir) is None
            if dumped_at is None and history_to_come:
                state += genesis_args(time.time())  # a new chain: the day of TWAP history to come
            anvil = Service(
                "anvil",
                [anvil_binary(), "--host", "127.0.0.1", "--port", str(options.chain_port), "--silent", *state],
                url=rpc_url,
                ready=lambda: rpc_answers(rpc_url),
                stops_last=True,
            )
            start_chain(supervisor, anvil, options.state_dir)
            if dumped_at is not None and (
                resumed := resume_chain_clock(rpc_url, dumped_at, time.time(), history_to_come=history_to_come)
            ):
                stamp = datetime.fromtimestamp(resumed, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                console.print(f"[bold]▶ the chain's clock goes on from its last block: {stamp}[/bold]")
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
        kept = live_escrow(rpc_url, network)
        if kept is not None:  # a restart: the same words as the deploy script's
            console.print(f"[bold]▶ deploy:[/bold] live deployment kept (CreditEscrow at {kept})")
        else:
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
        if options.seed and kept is not None and pools_seeded(rpc_url, network):
            console.print("[bold]▶ seed market:[/bold] every pool already has liquidity: left alone")
        elif options.seed:
            supervisor.run_step("seed market", ape_argv("seed_market"))
        ready = options.seed and is_local_chain(rpc_url)
        new_market = ready and read_ready(options.state_dir) is None
        if new_market and twap_history_recorded(rpc_url, load_deployment(network)):
            console.print("[bold]▶ a day of TWAP history:[/bold] already recorded: left alone")
        elif new_market:
            console.print("[bold]▶ a day of TWAP history (the local clock advanced with Oracle updates)[/bold]")
            supervisor.check()
            seed_twap_history(rpc_url, load_deployment(network))
        services = plan_services(options, rpc_url, local_market=ready)
        for service in services:
            supervisor.start(service)
        for service in services:
            if service.deferred:
                supervisor.await_ready(service)
        if ready:
            lots = demo_lots_wanted(rpc_url, load_deployment(network), new_market=new_market,
                                    ledger_lots=ledger_lot_count())  # fmt: skip
            if not new_market and lots:
                console.print("[bold]▶ this ledger has no lot: the demo lots the chain has open were opened through "
                              "another ledger (the market's folder kept while its ledger changed)[/bold]",
                              soft_wrap=True)  # fmt: skip
            if new_market or lots:
                supervisor.check()
                open_demo_lots(options, rpc_url, load_deployment(network), lots)
        made = None
        if ready:
            for finalizer in demo_finalizers():  # the demo sellers' keys are anvil's
                supervisor.start(finalizer)
            deployment = load_deployment(network)
            s = Settings()
            supervisor.check()
            made = make_ready(rpc_url, deployment, options.state_dir, welcome_asset=s.welcome_credit_asset,
                              welcome_amount=LOCAL_WELCOME_CREDIT, treasury=s.welcome_credit_treasury)  # fmt: skip
            if not new_market and restore_treasury(rpc_url, deployment):
                console.print("[bold]▶ the welcome-credit treasury's funding was not on the chain (lost with its "
                              "last state dump): funded again[/bold]", soft_wrap=True)  # fmt: skip
        console.print(supervisor.status_table())
        if made is not None:  # unwrapped: the snippet must copy and paste as printed
            console.print(closing_panel(options, made), soft_wrap=True)
        reconcile_status(rpc_url, network, supervisor.halted)
        console.print("Ctrl-C stops everything.")
        return supervisor.watch(ledger_hold.check)
    except UpStopped:  # asked for: nothing failed
        console.print("[bold]▶ stopped before the market was ready[/bold]")
        return 0
    except UpError as exc:  # one line on stderr, as every command's failure
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        supervisor.stop_all()
        if not supervisor.ran:  # refused (or stopped) before anything started: nothing left behind
            forget_made(new_paths)
        for release in held:
            release()
