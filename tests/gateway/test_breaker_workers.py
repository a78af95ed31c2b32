"""Breaker attacks on `promptex gateway serve --workers 2` (`gateway/workers.py`) with money in
flight: real processes, a real PostgreSQL ledger, a fake upstream, real HTTP.

The promises attacked: no worker keeps serving after its parent is gone; nothing is charged
twice or lost (every hold of a killed process ends: settled, released, or expired and swept;
the books check); a restarted `--workers` command serves again on the same port.

- the parent killed with kill -9 under 50 requests in flight (plain and streamed), a new
  `--workers 2` started at once on the same port;
- one worker killed with kill -9 mid-stream, again each time it is started, until the
  restart budget stops the command;
- SIGTERM to the parent while streams never end (the request deadline bounds the wait);
- a worker stopped with SIGSTOP (the other serves and sweeps its holds; continued, its
  clients get 504 and nothing is charged twice);
- Ctrl-C at a terminal: SIGINT to the parent and every worker at once;
- the parent killed between fork and PR_SET_PDEATHSIG (the race prctl(2) warns of), without
  a gateway as test_workers.py does (in CI, ~1 s).

The five gateway attacks need 5-50 s of processes each: behind HYPOTHESIS_PROFILE=deep.

Found: a gateway stopped gracefully (SIGTERM; streams that never end cut at the request
deadline) left its capacity leases' idle room reserved on the lot (39,849 of a lot here)
until the leases expired a hold's lifetime later and another gateway trimmed them — with no
gateway running, never. A stopping gateway now trims its own leases; the cheap test below
(in CI) shows it in-process.

Found: Ctrl-C at a terminal (SIGINT to the whole process group) cut streams off mid-way
(2 of 10 here), unsettled until their holds expired: each worker got the terminal's SIGINT
and the parent's copy of it, and uvicorn takes a second SIGINT as "force quit". The parent
now passes any stop on as SIGTERM (a cheap test in CI, the deep one with a gateway).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from polling import until
from promptex.config import Settings
from promptex.ledger import Ledger
from promptex.ledger.local_postgres import LocalPostgres
from promptex.ledger.schema import holds
from promptex.protocol.units import USD_MICRO as USDC
from promptex.serving import free_port

from .conftest import Fake, _harness
from .test_breaker_kills import _age, _children
from .test_holds_processes import DEEP, FLAT_OUT, HELLO, _env, _holds_by_status, _market

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + PR_SET_PDEATHSIG: Linux")
deep = pytest.mark.skipif(
    not DEEP, reason="HYPOTHESIS_PROFILE=deep: --workers 2 processes on PostgreSQL (15-50 s each)"
)
FUNDS = 10 * USDC


@contextlib.contextmanager
def _database(postgres: LocalPostgres) -> Iterator[tuple[Ledger, str]]:
    url = postgres.create_database(f"bworkers_{os.getpid()}_{time.monotonic_ns()}", template="ledger_template")
    ledger = Ledger.open(url)
    try:
        yield ledger, url
    finally:
        ledger.close()
        postgres.drop_database(url.rsplit("/", 1)[1])


def _command(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "promptex.cli", "gateway", "serve", "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("a"), text=True,
    )  # fmt: skip


def _serving(proc: subprocess.Popen[str], port: int, log: Path) -> bool:
    assert proc.poll() is None, log.read_text()
    try:
        up = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False
    return up and len(_children(proc.pid)) == 2


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Client(threading.Thread):
    """One request, plain or streamed: what its client heard (status, request id, whether
    the answer came whole, the cost header of a plain one)."""

    def __init__(self, port: int, key: str, stream: bool, max_tokens: int = FLAT_OUT) -> None:
        super().__init__(daemon=True)
        self.port, self.key, self.stream, self.max_tokens = port, key, stream, max_tokens
        self.status = 0
        self.request_id = ""
        self.whole = False
        self.cost: int | None = None
        self.error = ""

    def run(self) -> None:
        body = {"model": "fake-flat", "messages": HELLO, "max_tokens": self.max_tokens, "stream": self.stream}
        headers = {"authorization": f"Bearer {self.key}", "connection": "close"}
        try:
            with httpx.stream(
                "POST", f"http://127.0.0.1:{self.port}/v1/chat/completions", json=body, headers=headers, timeout=120
            ) as answer:
                self.status = answer.status_code
                self.request_id = answer.headers.get("x-request-id", "")
                if not self.stream:
                    answer.read()
                    if "x-promptex-cost-units" in answer.headers:
                        self.cost = int(answer.headers["x-promptex-cost-units"])
                    self.whole = self.status == 200 and bool(json.loads(answer.text)["choices"])
                    return
                for line in answer.iter_lines():
                    if line == "data: [DONE]":
                        self.whole = True
        except httpx.HTTPError as exc:
            self.error = type(exc).__name__


def _books(ledger: Ledger, account: int, lot: int, clients: list[Client]) -> None:
    """Nothing active, every whole answer settled once, the balance its charges, the books check."""
    assert "active" not in _holds_by_status(ledger)
    for c in clients:
        if c.whole:
            hold = ledger.holds.get(c.request_id)
            assert hold is not None and hold.status.value == "settled", (c.request_id, hold)
            if c.cost is not None:
                assert hold.charged == c.cost
    with ledger.engine.connect() as conn:
        charged = conn.execute(
            select(func.coalesce(func.sum(holds.c.charged), 0)).where(holds.c.status == "settled")
        ).scalar_one()
    balance = ledger.balance(account, "USDC")
    assert (balance.posted, balance.held) == (FUNDS - int(charged), 0)
    assert ledger.lot_capacities()[lot].reserved == 0
    ledger.check()


@deep
def test_parent_kill9_with_50_in_flight__new_workers_2_at_once_on_the_port__orphans_finish__books_right(
    postgres: LocalPostgres, tmp_path: Path, fake: Fake
) -> None:
    fake.config.latency_ms = 4_000  # every answer in flight 4 s; streams then 16 words 50 ms apart
    fake.config.chunk_delay_ms = 50
    log = tmp_path / "gateway.log"
    with _database(postgres) as (ledger, url):
        lot, account, key = _market(ledger, tmp_path, fake, face_value=1_000 * USDC, funds=FUNDS)
        env = _env(tmp_path, url, gateway_hold_ttl_seconds=12, gateway_upstream_timeout_seconds=10,
                   gateway_hold_margin_seconds=1, gateway_upstream_connect_timeout_seconds=1,
                   gateway_sweep_seconds=0.2)  # fmt: skip
        port = free_port()
        first = _command(env, port, log)
        second: subprocess.Popen[str] | None = None
        try:
            until(lambda: _serving(first, port, log), "the first command serving", 90)
            orphans = _children(first.pid)
            clients = [Client(port, key, stream=i % 2 == 1) for i in range(50)]
            for c in clients:
                c.start()
            until(lambda: _holds_by_status(ledger).get("active", 0) == 50, "50 holds in flight", 90)
            first.kill()
            first.wait()
            second = _command(env, port, log)  # at once, on the same port
            unanswered = -1

            def watch() -> None:  # how many of the orphans' requests were still running when it served
                nonlocal unanswered
                until(lambda: _serving(second, port, log), "the new command serving on the same port", 90)
                unanswered = sum(c.is_alive() for c in clients)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            for c in clients:
                c.join(timeout=60)
            heard = [(c.status, c.whole, c.error) for c in clients]
            # the orphans finished every request they had (SIGTERM from the kernel: graceful)
            assert heard == [(200, True, "")] * 50, heard
            until(lambda: not any(_alive(pid) for pid in orphans), "the orphans stopped", 90)
            until(lambda: _serving(second, port, log), "the new command serving on the same port", 90)
            print(f"orphans' clients unanswered when the new command first answered: {unanswered}")  # noqa: T201
            assert not set(orphans) & set(_children(second.pid))
            again = [Client(port, key, stream=i % 2 == 1) for i in range(10)]
            for c in again:
                c.start()
            for c in again:
                c.join(timeout=60)
            assert [(c.status, c.whole) for c in again] == [(200, True)] * 10
            _books(ledger, account, lot, clients + again)
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=60)
        assert second is not None and second.returncode == 0, log.read_text()


@deep
def test_worker_kill9_mid_stream_each_start__restart_budget_stops_the_command__others_finish__restart_sweeps(
    postgres: LocalPostgres, tmp_path: Path, fake: Fake
) -> None:
    from promptex.gateway.workers import CRASH_LOOP_SECONDS, MAX_YOUNG_KILLS

    fake.config.chunk_delay_ms = 150  # a stream of 16 words lasts ~2.4 s
    log = tmp_path / "gateway.log"
    with _database(postgres) as (ledger, url):
        lot, account, key = _market(ledger, tmp_path, fake, face_value=1_000 * USDC, funds=FUNDS)
        env = _env(tmp_path, url, gateway_hold_ttl_seconds=4, gateway_upstream_timeout_seconds=2,
                   gateway_upstream_connect_timeout_seconds=1, gateway_hold_margin_seconds=1,
                   gateway_sweep_seconds=0.2)  # fmt: skip
        port = free_port()
        proc = _command(env, port, log)
        clients: list[Client] = []
        stop = threading.Event()

        def traffic() -> None:  # streams, a new connection each, 8 at a time
            while not stop.is_set():
                batch = [Client(port, key, stream=True) for _ in range(8)]
                for c in batch:
                    c.start()
                clients.extend(batch)
                for c in batch:
                    c.join(timeout=60)

        try:
            until(lambda: _serving(proc, port, log), "the command serving", 90)
            survivor, victim = sorted(_children(proc.pid))
            pump = threading.Thread(target=traffic, daemon=True)
            pump.start()
            kills = 0
            while proc.poll() is None and kills < MAX_YOUNG_KILLS + 1:
                # serving streams a while (its share of the 8), yet young: a kill counts toward the budget
                until(lambda: proc.poll() is not None or _age(victim) >= CRASH_LOOP_SECONDS - 1.5, "streams", 90)
                if proc.poll() is not None:
                    break
                os.kill(victim, signal.SIGKILL)
                kills += 1

                def restarted() -> bool:
                    nonlocal victim
                    if proc.poll() is not None:
                        return True
                    now = [p for p in _children(proc.pid) if p not in (survivor, victim)]
                    if now:
                        victim = now[0]
                    return bool(now)

                until(restarted, f"worker restarted after kill {kills}", 90)
            assert proc.wait(timeout=60) == 1, log.read_text()
            stop.set()
            pump.join(timeout=60)
            assert not _alive(survivor)
            assert "just after it started: stopping the others" in log.read_text()
            cut = [c for c in clients if not c.whole]
            how = sorted({(c.status, c.error) for c in cut})
            print(f"kills {kills}, {len(clients)} streams, {len(cut)} not whole: {how}")  # noqa: T201
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
        # A new command's sweeper ends what the kills left.
        proc = _command(env, port, log)
        try:
            until(lambda: _serving(proc, port, log), "the restarted command serving", 90)
            until(lambda: "active" not in _holds_by_status(ledger), "the dead worker's holds swept", 90)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        _books(ledger, account, lot, clients)


@deep
def test_sigterm_parent_with_streams_that_never_end__the_request_deadline_ends_them__charged_what_streamed(
    postgres: LocalPostgres, tmp_path: Path, fake: Fake
) -> None:
    fake.config.chunk_delay_ms = 100
    fake.config.ignore_max_tokens = True
    fake.config.output_tokens = 1_000_000  # ~28 hours of words
    log = tmp_path / "gateway.log"
    with _database(postgres) as (ledger, url):
        lot, account, key = _market(ledger, tmp_path, fake, face_value=1_000 * USDC, funds=FUNDS)
        env = _env(tmp_path, url, gateway_request_deadline_seconds=6, gateway_sweep_seconds=0.2)
        port = free_port()
        proc = _command(env, port, log)
        try:
            until(lambda: _serving(proc, port, log), "the command serving", 90)
            clients = [Client(port, key, stream=True, max_tokens=10_000) for _ in range(6)]
            for c in clients:
                c.start()
            until(lambda: _holds_by_status(ledger).get("active", 0) == 6, "6 endless streams", 90)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()
            waited = time.monotonic() - began
            print(f"SIGTERM to exit: {waited:.1f} s")  # noqa: T201
            assert waited < 6 + 10  # the deadline, and some
        finally:
            if proc.poll() is None:
                proc.kill()
        for c in clients:
            c.join(timeout=30)
        _books(ledger, account, lot, clients)
        assert _holds_by_status(ledger) == {"settled": 6}


@deep
def test_worker_sigstopped__the_other_serves_and_sweeps_its_holds__continued_it_settles_late_once(
    postgres: LocalPostgres, tmp_path: Path, fake: Fake
) -> None:
    fake.config.latency_ms = 1_000
    log = tmp_path / "gateway.log"
    with _database(postgres) as (ledger, url):
        lot, account, key = _market(ledger, tmp_path, fake, face_value=1_000 * USDC, funds=FUNDS)
        env = _env(tmp_path, url, gateway_hold_ttl_seconds=4, gateway_upstream_timeout_seconds=2,
                   gateway_upstream_connect_timeout_seconds=1, gateway_hold_margin_seconds=1,
                   gateway_sweep_seconds=0.2)  # fmt: skip
        port = free_port()
        proc = _command(env, port, log)
        stopped = 0
        try:
            until(lambda: _serving(proc, port, log), "the command serving", 90)
            clients = [Client(port, key, stream=i % 2 == 1) for i in range(20)]
            for c in clients:
                c.start()
            until(lambda: _holds_by_status(ledger).get("active", 0) == 20, "20 holds in flight", 90)
            stopped = sorted(_children(proc.pid))[0]
            os.kill(stopped, signal.SIGSTOP)
            # its holds are no longer kept: they expire and the other worker sweeps them
            until(lambda: _holds_by_status(ledger).get("active", 0) == 0, "the stopped worker's holds swept", 30)
            assert _holds_by_status(ledger).get("expired", 0) > 0
            # the other worker serves new connections from the one listening socket
            more = [Client(port, key, stream=False) for _ in range(6)]
            for c in more:
                c.start()
            for c in more:
                c.join(timeout=30)
            assert [c.status for c in more] == [200] * 6
            assert proc.poll() is None and stopped in _children(proc.pid)  # nobody noticed the stop
            os.kill(stopped, signal.SIGCONT)
            for c in clients:
                c.join(timeout=60)
            print([(c.status, c.whole, c.error) for c in clients])  # noqa: T201
        finally:
            if stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        _books(ledger, account, lot, clients + more)


def test_gateway_stopped_gracefully__its_leases_idle_room_back_to_the_lot_at_once(
    postgres: LocalPostgres, settings: Settings, fake: Fake
) -> None:
    url = postgres.create_database(f"bleases_{os.getpid()}_{time.monotonic_ns()}", template="ledger_template")
    try:
        running = _harness(settings, url)
        gw = next(running)
        lot = gw.add_lot(fake)
        _, key = gw.buyer()
        body = {"model": "fake-gpt", "messages": HELLO, "max_tokens": 16}
        answer = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        assert answer.status_code == 200
        assert gw.ledger.lot_capacities()[lot].reserved > 0  # the process's lease: idle room, reserved whole
        with contextlib.suppress(StopIteration):
            next(running)  # the server stops (lifespan shutdown), the harness checks the books
        with Ledger.open(url) as after:
            assert after.lot_capacities()[lot].reserved == 0
    finally:
        postgres.drop_database(url.rsplit("/", 1)[1])


RACE = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("workers", {path!r})
workers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workers)
out = {out!r}
ask = workers._stop_with_parent

def late(parent):  # the parent dies between the fork and the prctl
    open(os.path.join(out, f"forked-{{os.getpid()}}"), "w").close()
    time.sleep(1.0)
    ask(parent)

workers._stop_with_parent = late

def serve(index):
    open(os.path.join(out, f"served-{{os.getpid()}}"), "w").close()
    while True:
        time.sleep(60)

sys.exit(workers.run_workers(2, serve))
"""


def test_parent_killed_between_fork_and_pdeathsig__the_worker_sees_it_and_never_serves(tmp_path: Path) -> None:
    import promptex.gateway.workers as workers

    script = RACE.format(path=workers.__file__, out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    forked: list[int] = []
    try:
        until(lambda: len(list(tmp_path.glob("forked-*"))) == 2, "two workers forked", 30)
        forked = [int(f.name.split("-")[1]) for f in tmp_path.glob("forked-*")]
        proc.kill()  # while both sleep before their prctl
        proc.wait(timeout=10)
        until(lambda: not any(_alive(pid) for pid in forked), "the orphans stopped", 30)
        assert list(tmp_path.glob("served-*")) == []
    finally:
        for pid in forked:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


@deep
def test_ctrl_c_at_the_terminal__sigint_to_the_process_group__workers_finish_their_streams(
    postgres: LocalPostgres, tmp_path: Path, fake: Fake
) -> None:
    fake.config.chunk_delay_ms = 150  # a stream of 16 words lasts ~2.4 s
    log = tmp_path / "gateway.log"
    with _database(postgres) as (ledger, url):
        lot, account, key = _market(ledger, tmp_path, fake, face_value=1_000 * USDC, funds=FUNDS)
        env = _env(tmp_path, url, gateway_sweep_seconds=0.2)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "promptex.cli", "gateway", "serve", "--port", str(port), "--workers", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=log.open("a"), text=True, start_new_session=True,
        )  # fmt: skip
        try:
            until(lambda: _serving(proc, port, log), "the command serving", 90)
            clients = [Client(port, key, stream=True) for _ in range(10)]
            for c in clients:
                c.start()
            until(lambda: _holds_by_status(ledger).get("active", 0) == 10, "10 streams in flight", 90)
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the parent and every worker
            assert proc.wait(timeout=60) == 0, log.read_text()
            for c in clients:
                c.join(timeout=30)
            heard = [(c.status, c.whole, c.error) for c in clients]
            assert heard == [(200, True, "")] * 10, heard
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        _books(ledger, account, lot, clients)


SIGNALS = """
import importlib.util, os, signal, sys, time
spec = importlib.util.spec_from_file_location("workers", {path!r})
workers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workers)
out = {out!r}

def serve(index):
    def note(signum, _frame):
        with open(os.path.join(out, str(os.getpid())), "a") as f:
            f.write(signal.Signals(signum).name + " ")
    signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)
    open(os.path.join(out, str(os.getpid())), "a").close()
    while True:
        time.sleep(60)

sys.exit(workers.run_workers(2, serve))
"""


def test_ctrl_c__sigint_to_the_process_group__each_worker_gets_one_sigint_and_a_sigterm_never_two_sigints(
    tmp_path: Path,
) -> None:
    """uvicorn force-quits on a second SIGINT (streams cut off unsettled): the parent passes
    a stop on as SIGTERM. Without a gateway (the deep test above shows it with one)."""
    import promptex.gateway.workers as workers

    script = SIGNALS.format(path=workers.__file__, out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        until(lambda: len(list(tmp_path.iterdir())) == 2, "two workers", 30)
        os.killpg(proc.pid, signal.SIGINT)
        heard = lambda: {f.name: sorted(f.read_text().split()) for f in tmp_path.iterdir()}  # noqa: E731
        until(lambda: all(len(v) == 2 for v in heard().values()), "each worker heard both", 30)
        assert list(heard().values()) == [["SIGINT", "SIGTERM"]] * 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
