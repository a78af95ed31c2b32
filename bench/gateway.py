"""Gateway load: PROMPTEX's /v1 gateway against LiteLLM's proxy on the same fake upstream.

    python bench/gateway.py                    # both, SQLite ledger, a table
    python bench/gateway.py --ledger postgresql
    python bench/gateway.py --only promptex    # skip LiteLLM (no 740 MB install)
    python bench/gateway.py --json             # promptex_rps, litellm_rps, *_p99_added_ms, …
    python bench/gateway.py --cpu              # only idle added latency and CPU per request (200 RPS)
    python bench/gateway.py --floor            # also the floor: bench/forwarder.py in the gateway's place

Open-loop load at a fixed arrival rate: request i is due at t0 + i/rate and its latency
is measured from when it was due, so a slow server cannot slow the generator down
(no coordinated omission). Rates step up; the sustainable rate is the highest step with
< 0.1 % errors and a p99 under --max-p99-ms (a step that fails is run once more and the
better run counts, for both sides alike: a shared machine stalls now and then).

Added latency is measured per request: each request names itself in its `user` field,
the fake upstream records when that request reached it and when it sent its last byte
(`--record-timings`, GET /_timings), and added = what the client saw − that upstream
service time; the percentiles are of those differences (subtracting percentiles of two
runs gave a −0.27 ms "added p99" once: noise). Reported at the rate every side sustains
(what the targets compare), at each side's own maximum, and idle (one request at a
time). CPU per request: the server's process CPU (with its children) ÷ requests served
at a fixed rate (`--cpu-rate`, 200), the figure that says how many requests a core
carries; with --ledger postgresql also for `gateway serve --workers 2`. Past saturation
each side is offered twice its maximum: how much it still serves and how fast it refuses
the rest (429s). The gateway runs as `gateway serve` does by default (metrics address,
request-id logs, connection guards), with the no-starvation shares lifted (the bench's
load is one key from one address).

The gateway (or the proxy) runs on one core; with --ledger postgresql the database
server is pinned to that core too (its work is the gateway's). The fake upstream and
this generator share the other core; the generator is a light keep-alive HTTP/1.1
client (the gateway's own upstream client, on uvloop), so it has headroom there.
LiteLLM is installed on first use into bench/.litellm/ (its own venv; never in CI).
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import uvloop

from promptex.gateway.upstream import UpstreamClient, UpstreamError
from promptex.serving import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LITELLM_DIR = ROOT / "bench" / ".litellm"
LITELLM_VERSION = "1.106.2"
MODEL = "gpt-5-mini"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "say something short"}], "max_tokens": 16}
RATES = (10, 25, 50, 75, 100, 150, 200, 250, 300, 350, 400, 500, 650, 800, 1000)


def cores() -> tuple[list[str], list[str]]:
    """taskset prefixes: (server core, generator + upstream core)."""
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return [], []
    return ["taskset", "-c", "0"], ["taskset", "-c", "1"]


@contextmanager
def process(
    args: list[str],
    env: dict[str, str],
    ready_url: str,
    headers: dict[str, str] | None = None,
    log: Path | None = None,
    ready_seconds: float = 120,
    stop_seconds: float = 30,
) -> Iterator[subprocess.Popen[bytes]]:
    """`args` in a session of its own, once `ready_url` answers below 500 (within
    `ready_seconds`); ended (the whole session: SIGTERM, SIGKILL after `stop_seconds`) at
    the end. `log`: its output appended there (else discarded)."""
    if log is None:
        proc = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    else:
        with log.open("ab") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_seconds
        while True:
            if proc.poll() is not None:
                tail = log.read_text()[-2000:] if log is not None else ""
                raise RuntimeError(f"{args[0:4]} exited with {proc.returncode}: {tail}")
            try:
                if httpx.get(ready_url, headers=headers or {}, timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[0:4]} did not become ready")
            time.sleep(0.2)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=stop_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Step:
    rate: int
    sent: int
    errors: int
    p50_ms: float
    p99_ms: float
    shed: int = 0  # 429s among the errors
    shed_p99_ms: float = 0.0
    shed_p50_ms: float = 0.0
    late_p99_ms: float = 0.0  # how late the generator itself sent requests (its own saturation)
    # Per request: what the client saw less the upstream's own time for that request
    # (the fake upstream's receive → last byte), percentiles of those differences.
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    error_kinds: dict[int | str, int] | None = None  # status (or exception) → how many


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_runs = iter(range(1, 1 << 30))


def fetch_timings(timings_url: str) -> dict[str, tuple[float, float]]:
    """What the fake upstream recorded since it was last asked (then forgotten there)."""
    found = httpx.get(timings_url, timeout=30).json()
    return {user: (times[0], times[1]) for user, times in found.items()}


def added_ms(seen: dict[str, tuple[float, float]], upstream: dict[str, tuple[float, float]]) -> list[float]:
    """Per request: the client's time less the upstream's own (both monotonic, one machine)."""
    return [
        ((end - start) - (upstream[user][1] - upstream[user][0])) * 1000
        for user, (start, end) in seen.items()
        if user in upstream
    ]


async def open_loop(
    url: str, headers: dict[str, str], rate: int, seconds: float, timeout: float, timings_url: str | None = None
) -> Step:
    run = next(_runs)
    headers = {**headers, "content-type": "application/json"}
    async with UpstreamClient(connect_timeout=timeout, timeout=timeout, max_idle_per_origin=4096) as client:
        latencies: list[float] = []
        shed: list[float] = []
        late: list[float] = []
        seen: dict[str, tuple[float, float]] = {}  # user → (sent, answered), monotonic
        statuses: collections.Counter[int | str] = collections.Counter()  # of the errors
        errors = 0
        total = int(rate * seconds)
        start = time.perf_counter() + 0.1

        async def one(due: float, i: int) -> None:
            nonlocal errors
            user = f"r{run}-{i}"
            body = json.dumps({**BODY, "user": user}).encode()
            late.append((time.perf_counter() - due) * 1000)
            sent = time.monotonic()
            try:
                response = await client.post(url, headers, body)
                await response.read()
                if response.status_code != 200:
                    errors += 1
                    statuses[response.status_code] += 1
                    if response.status_code == 429:
                        shed.append((time.perf_counter() - due) * 1000)
                    return
            except UpstreamError as exc:
                errors += 1
                statuses[type(exc).__name__] += 1
                return
            seen[user] = (sent, time.monotonic())
            latencies.append((time.perf_counter() - due) * 1000)

        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, i)))
        await asyncio.gather(*tasks)
        added: list[float] = []
        if timings_url is not None:
            added = added_ms(seen, fetch_timings(timings_url))
    return Step(
        rate, total, errors, _pct(latencies, 0.5), _pct(latencies, 0.99),
        len(shed), _pct(shed, 0.99), _pct(shed, 0.5), _pct(late, 0.99),
        _pct(added, 0.5) if added else None, _pct(added, 0.99) if added else None, dict(statuses),
    )  # fmt: skip


async def idle(url: str, headers: dict[str, str], timings_url: str, n: int = 200) -> float:
    """Added latency p50 with one request at a time (loopback, keep-alive): the floor."""
    run = next(_runs)
    headers = {**headers, "content-type": "application/json"}
    seen: dict[str, tuple[float, float]] = {}
    async with UpstreamClient(connect_timeout=10, timeout=10) as client:
        for i in range(n):
            user = f"i{run}-{i}"
            sent = time.monotonic()
            response = await client.post(url, headers, json.dumps({**BODY, "user": user}).encode())
            await response.read()
            if response.status_code == 200:
                seen[user] = (sent, time.monotonic())
        found = added_ms(seen, fetch_timings(timings_url))
    return _pct(found, 0.5)


async def ttfb(url: str, headers: dict[str, str], n: int = 40) -> float:
    """Median time to the first streamed content byte, at a gentle rate."""
    body = {**BODY, "stream": True}
    times = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(n):
            start = time.perf_counter()
            async with client.stream("POST", url, json=body, headers=headers) as response:
                async for line in response.aiter_lines():
                    if '"content"' in line:
                        times.append((time.perf_counter() - start) * 1000)
                        break
            await asyncio.sleep(0.05)
    return _pct(times, 0.5)


def sweep(
    url: str, headers: dict[str, str], seconds: float, max_p99_ms: float, rates: tuple[int, ...], timings: str
) -> list[Step]:
    steps = []
    for rate in rates:
        step = uvloop.run(open_loop(url, headers, rate, seconds, timeout=10, timings_url=timings))
        if not ok(step, max_p99_ms):  # once more: on a shared machine one stall fails a step
            again = uvloop.run(open_loop(url, headers, rate, seconds, timeout=10, timings_url=timings))
            step = again if (again.errors, again.p99_ms) < (step.errors, step.p99_ms) else step
        steps.append(step)
        shed = f" (429s: {step.shed}, p99 {step.shed_p99_ms:.1f} ms)" if step.shed else ""
        added = f", added p50 {step.added_p50_ms:.2f} / p99 {step.added_p99_ms:.2f} ms" if step.added_p99_ms else ""
        click.echo(
            f"  {rate:>5} RPS: errors {step.errors}/{step.sent}{shed}, "
            f"p50 {step.p50_ms:.1f} ms, p99 {step.p99_ms:.1f} ms{added}",
            err=True,
        )
        if not ok(step, max_p99_ms):
            break
    return steps


def ok(step: Step, max_p99_ms: float) -> bool:
    return step.errors <= step.sent * 0.001 and step.p99_ms <= max_p99_ms


def sustainable(steps: list[Step], max_p99_ms: float) -> Step | None:
    good = [s for s in steps if ok(s, max_p99_ms)]
    return good[-1] if good else None


def setup_promptex(
    workdir: Path, ledger_url: str, fake_url: str, synchronous: str = "NORMAL"
) -> tuple[dict[str, str], str, str]:
    """A ledger with a rich buyer, a buyer with nothing, and one listed lot on the fake
    upstream; returns (env, the rich key, the broke key). `synchronous`: SQLite's (the
    bench's NORMAL; FULL is the ledger's default, each commit waiting for the disk)."""
    from eth_account import Account

    from promptex.config import Settings
    from promptex.gateway.buyers import signup
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger
    from promptex.ledger.binding import sign
    from promptex.sealing.envelope import load_master_keys
    from promptex.sellers import Capacity, SellerStore

    env = {
        **os.environ,
        "PROMPTEX_LEDGER_URL": ledger_url,
        "PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS": synchronous,
        "PROMPTEX_GATEWAY_MASTER_KEY_FILE": str(workdir / "master.key"),
        "PROMPTEX_GATEWAY_LOT_MAX_INFLIGHT": "100000",
        # One key from one address is the whole load here: its shares (no starvation) must not bind.
        "PROMPTEX_GATEWAY_MAX_INFLIGHT_PER_KEY": "100000",
        "PROMPTEX_GATEWAY_MAX_INFLIGHT_PER_ADDRESS": "100000",
        "PROMPTEX_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "100000",
        "PROMPTEX_GATEWAY_METRICS_PORT": str(free_port()),  # everything switched on
    }
    s = Settings(ledger_url=ledger_url, gateway_master_key_file=workdir / "master.key")
    now = int(time.time())
    with Ledger.open(ledger_url, sqlite_synchronous=synchronous) as ledger:
        store = GatewayStore(ledger.engine)
        capacity = Capacity(
            "openai",
            "openai",
            fake_url,
            "sk-fake-bench",
            10**15,
            "listed",
            6000,
            now + 30 * 86_400,
            "0x" + "33" * 20,
            True,
        )
        # No chain here: the lot is recorded as the sellers' path does and marked open as the
        # chain would confirm it (as escrow lot 1), so the gateway routes it.
        sellers = SellerStore(ledger.engine)
        keys = load_master_keys(None, s.gateway_master_key_file)
        lot = sellers.record_lot(keys, capacity, route_until=capacity.expires_at, now=now)
        sellers.confirm_open(lot, 1, now)
        new = signup(ledger, store, now)
        wallet = Account.create()
        message = ledger.issue_binding_challenge(new.account, wallet.address)
        ledger.bind_wallet(message, sign(message, wallet.key))
        ledger.credit_deposit(f"0x{secrets.token_hex(32)}:0", wallet.address, "USDC", 10**15)
        ledger.set_spend_cap(new.account, "USDC", 10**15)
        broke = signup(ledger, store, now)  # never bound: no balance
    return env, new.key, broke.key


def litellm_python() -> Path:
    python = LITELLM_DIR / "bin" / "python"
    if not python.exists():
        click.echo(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_DIR} (~740 MB) …", err=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_DIR)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}", "prisma"], check=True
        )
    return python


@dataclass
class Side:
    """One side's sweep, its streaming TTFB, its answer to twice its maximum rate, its
    idle added latency and its CPU per request at the fixed rate."""

    steps: list[Step]
    best: Step | None
    ttfb_ms: float
    overload: Step | None
    idle_added_p50_ms: float | None = None
    cpu: dict[str, float] | None = None


def warm(url: str, headers: dict[str, str]) -> None:
    for _ in range(30):  # LiteLLM's first requests import lazily; pools fill
        httpx.post(url, json=BODY, headers=headers, timeout=30)


def measure(url: str, headers: dict[str, str], pid: int, args: Args, timings: str, sweep_too: bool = True) -> Side:
    warm(url, headers)
    idle_p50 = uvloop.run(idle(url, headers, timings))
    click.echo(f"  idle (one at a time): added p50 {idle_p50:.2f} ms", err=True)

    def cpu_last() -> dict[str, float]:
        # Last: a fixed rate above what a side sustains leaves it a backlog that would fail the next step.
        time.sleep(2)
        cpu = cpu_per_request(pid, url, headers, args.cpu_rate, args.seconds, timings)
        loop, ledger = wakeups(cpu)
        click.echo(
            f"  CPU at {args.cpu_rate} RPS: {cpu['cpu_ms_per_request']:.2f} ms a request, "
            f"wake-ups a request loop / ledger {loop:.2f} / {ledger:.2f} ({cpu})",
            err=True,
        )
        return cpu

    if not sweep_too:
        return Side([], None, float("nan"), None, idle_p50, cpu_last())
    steps = sweep(url, headers, args.seconds, args.max_p99_ms, args.rates, timings)
    best = sustainable(steps, args.max_p99_ms)
    ttfb_ms = uvloop.run(ttfb(url, headers))
    overload = None
    if best is not None:
        overload = uvloop.run(open_loop(url, headers, best.rate * 2, args.seconds, timeout=10, timings_url=timings))
        click.echo(
            f"  {overload.rate:>5} RPS (2x max): served {(overload.sent - overload.errors) / args.seconds:.0f}/s "
            f"(p50 {overload.p50_ms:.1f}, p99 {overload.p99_ms:.1f} ms), "
            f"429s {overload.shed}/{overload.sent} "
            f"(p50 {overload.shed_p50_ms:.1f}, p99 {overload.shed_p99_ms:.1f} ms), "
            f"other errors {overload.errors - overload.shed}; generator late p99 {overload.late_p99_ms:.1f} ms",
            err=True,
        )
    return Side(steps, best, ttfb_ms, overload, idle_p50, cpu_last())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants so far (Linux /proc: fields
    14, 15 of each stat; a LiteLLM or `--workers` parent's children count too)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    spent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        spent[int(entry.name)] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(spent.get(p, 0) for p in tree) / tick


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of `pid`, by its name (`/proc/PID/task`; the
    main thread, which runs the event loop, as "loop"; same-named threads summed), and
    each one's context switches: "<name>_wakeups" (voluntary: the thread slept, and
    something had to wake it — the unit that does not depend on the machine's load) and
    "<name>_preempted" (involuntary: another task took the CPU, which grows with load)."""
    tick = os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = "loop" if task.name == str(pid) else (task / "comm").read_text().strip()
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        spent[name] = spent.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        for key, kind in (("voluntary_ctxt_switches", "wakeups"), ("nonvoluntary_ctxt_switches", "preempted")):
            spent[f"{name}_{kind}"] = spent.get(f"{name}_{kind}", 0.0) + int(status.get(key, "0"))
    return spent


def wakeups(cpu: dict[str, float]) -> tuple[float, float]:
    """Wake-ups a request of the event loop and of the ledger threads together."""
    loop = cpu.get("thread_loop_wakeups", 0.0)
    ledger = sum(v for k, v in cpu.items() if k.startswith("thread_ledger-") and k.endswith("_wakeups"))
    return loop, ledger


def cpu_per_request(
    pid: int, url: str, headers: dict[str, str], rate: int, seconds: float, timings: str | None = None
) -> dict[str, float]:
    """The server's CPU milliseconds per request served at a fixed rate (process CPU ÷
    requests served), and net of what the idle process spends over the same time; also
    per thread of the server's own process (`thread_ms_<name>`, and its wake-ups and
    preemptions a request, `thread_<name>_wakeups` / `_preempted`)."""
    warm(url, headers)
    idle_start = cpu_seconds(pid)
    time.sleep(seconds)
    idle_cpu = cpu_seconds(pid) - idle_start
    start = cpu_seconds(pid)
    threads_start = thread_seconds(pid)
    step = uvloop.run(open_loop(url, headers, rate, seconds, timeout=10, timings_url=timings))
    busy = cpu_seconds(pid) - start
    threads = thread_seconds(pid)
    served = step.sent - step.errors
    counts = ("_wakeups", "_preempted")
    per_thread = {
        f"thread_{name}" if name.endswith(counts) else f"thread_ms_{name}": round(
            (1 if name.endswith(counts) else 1000) * (spent - threads_start.get(name, 0.0)) / max(1, served), 3
        )
        for name, spent in threads.items()
        if spent > threads_start.get(name, 0.0)
    }
    return {
        **per_thread,
        "rate": rate,
        "served": served,
        "errors": step.errors,
        "cpu_ms_per_request": 1000 * busy / max(1, served),
        "net_cpu_ms_per_request": 1000 * (busy - idle_cpu) / max(1, served),
        "p50_ms": step.p50_ms,
        "p99_ms": step.p99_ms,
        "added_p99_ms": step.added_p99_ms if step.added_p99_ms is not None else float("nan"),
        "load_average": round(os.getloadavg()[0], 2),  # CPU a request moves with it; wake-ups hardly
    }


def _slow_bodies(port: int, key: str, count: int, source: str, stop: Any, counts: Any) -> None:
    """The attacker, in its own process (not the generator's GIL): keeps `count`
    connections open, each with a request's headers and a body trickled one byte every
    5 s; a connection the gateway answers or closes is opened again a second later."""
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: 1000\r\n\r\n{{"
    ).encode()
    conns: dict[socket.socket, float] = {}  # → when it last sent a byte
    retry_at: list[float] = []
    while not stop.is_set():
        now = time.monotonic()
        while len(conns) + len(retry_at) < count:
            retry_at.append(now)
        for due in [t for t in retry_at if t <= now]:
            retry_at.remove(due)
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
                conn.sendall(head)
                conn.setblocking(False)
                conns[conn] = now
            except OSError:
                counts[1] += 1
                retry_at.append(now + 1)
        readable, _, _ = select.select(list(conns), [], [], 0.2) if conns else ([], [], [])
        for conn in readable:  # answered (429, 408) or closed
            counts[1] += 1
            del conns[conn]
            conn.close()
            retry_at.append(time.monotonic() + 1)
        for conn, sent in list(conns.items()):
            if now - sent >= 5:
                try:
                    conn.send(b" ")
                    conns[conn] = now
                except OSError:
                    del conns[conn]
                    conn.close()
                    retry_at.append(now + 1)
        counts[0] = len(conns)
    for conn in conns:
        conn.close()


def under_attack(
    url: str, port: int, headers: dict[str, str], broke: str, count: int, args: Args, timings: str
) -> dict[str, Any]:
    """The funded buyer's added latency (one at a time, and at 50 RPS) while `count` slow
    bodies from an unfunded key hold connections; measured, never asserted."""
    warm(url, headers)
    stop = multiprocessing.Event()
    counts = multiprocessing.Array("q", 2)  # connections open now, answered or closed so far
    attacker = multiprocessing.Process(target=_slow_bodies, args=(port, broke, count, "127.0.0.2", stop, counts))
    attacker.start()
    try:
        time.sleep(3)  # the attack in place
        idle_p50 = uvloop.run(idle(url, headers, timings))
        step = uvloop.run(open_loop(url, headers, 50, args.seconds, timeout=10, timings_url=timings))
        held, refused = counts[0], counts[1]
    finally:
        stop.set()
        attacker.join(timeout=10)
    return {
        "attack_connections": count,
        "attack_held": held,
        "attack_refused_or_closed": refused,
        "attack_idle_added_p50_ms": idle_p50,
        "attack_added_p50_ms": step.added_p50_ms if step.added_p50_ms is not None else float("nan"),
        "attack_added_p99_ms": step.added_p99_ms if step.added_p99_ms is not None else float("nan"),
        "attack_errors": step.errors,
        "attack_error_kinds": str(step.error_kinds or {}),
        "attack_sent": step.sent,
    }


def pin_postgres(postgres: object, core: list[str]) -> None:
    """Pin the database server (the postmaster; backends fork from it) to the gateway's core."""
    root = getattr(postgres, "root", None)
    if not core or root is None:
        return
    pid = (Path(root) / "data" / "postmaster.pid").read_text().split()[0]
    subprocess.run(["taskset", "-a", "-p", "-c", core[-1], pid], check=True, stdout=subprocess.DEVNULL)


def summarize(sides: dict[str, Side], base_ttfb: float, seconds: float) -> dict[str, dict[str, float | None]]:
    """Per side: max RPS; per-request added p50/p99 at the rate every side sustains and at
    its own max; added TTFB; idle added p50; CPU per request at the fixed rate; past
    saturation: what it still served and its 429s."""
    bests = [side.best.rate for side in sides.values() if side.best is not None]
    common = min(bests) if bests else None
    results: dict[str, dict[str, float | None]] = {}
    for name, side in sides.items():
        at_common = next((step for step in side.steps if step.rate == common), None)
        over = side.overload
        results[name] = {
            "rps": side.best.rate if side.best else 0,
            "common_rps": common,
            "p50_added_ms": at_common.added_p50_ms if at_common else None,
            "p99_added_ms": at_common.added_p99_ms if at_common else None,
            "p50_added_at_max_ms": side.best.added_p50_ms if side.best else None,
            "p99_added_at_max_ms": side.best.added_p99_ms if side.best else None,
            "ttfb_added_ms": side.ttfb_ms - base_ttfb if side.ttfb_ms == side.ttfb_ms else None,  # NaN: not run
            "idle_added_p50_ms": side.idle_added_p50_ms,
            "cpu_ms_per_request": side.cpu["cpu_ms_per_request"] if side.cpu else None,
            "wakeups_loop": wakeups(side.cpu)[0] if side.cpu else None,
            "wakeups_ledger": wakeups(side.cpu)[1] if side.cpu else None,
            "cpu_load_average": side.cpu["load_average"] if side.cpu else None,
            "overload_offered_rps": over.rate if over else None,
            "overload_served_rps": (over.sent - over.errors) / seconds if over else None,
            "overload_429_share": over.shed / over.sent if over else None,
            "overload_429_p50_ms": over.shed_p50_ms if over and over.shed else None,
            "overload_429_p99_ms": over.shed_p99_ms if over and over.shed else None,
            "overload_generator_late_p99_ms": over.late_p99_ms if over else None,
        }
    return results


@dataclass
class Args:
    seconds: float
    max_p99_ms: float
    rates: tuple[int, ...]
    cpu_rate: int


def litellm_config(workdir: Path, fake_url: str) -> Path:
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        f"    litellm_params: {{model: openai/{MODEL}, api_base: '{fake_url}', api_key: sk-fake-bench}}\n"
        "litellm_settings: {telemetry: false, drop_params: true}\n"
        "general_settings: {master_key: os.environ/LITELLM_MASTER_KEY}\n"
    )
    return config


@click.command()
@click.option("--only", type=click.Choice(["promptex", "litellm", "floor"]), help="measure one side only")
@click.option(
    "--ledger", "ledger_kind", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True
)
@click.option("--seconds", default=10.0, show_default=True, help="length of each rate step")
@click.option("--upstream-latency-ms", default=20.0, show_default=True)
@click.option("--max-p99-ms", default=500.0, show_default=True, help="a step above this p99 is not sustainable")
@click.option("--rates", default=",".join(map(str, RATES)), show_default=True, help="the arrival rates to step through")
@click.option("--cpu-rate", default=200, show_default=True, help="the fixed rate CPU per request is measured at")
@click.option("--json", "as_json", is_flag=True)
@click.option("--cpu", "cpu_only", is_flag=True, help="only idle added latency and CPU per request (no sweep)")
@click.option(
    "--sqlite-synchronous", type=click.Choice(["NORMAL", "FULL"]), default="NORMAL", show_default=True,
    help="the SQLite ledger's synchronous (FULL, the ledger's default, waits for the disk at each commit)",
)  # fmt: skip
@click.option("--attack", default=0, show_default=True, help="also measure under N slow-body connections (promptex)")
@click.option(
    "--floor", "floor_too", is_flag=True,
    help="also measure the floor: bench/forwarder.py (the gateway's server and upstream client, nothing else)",
)  # fmt: skip
def main(
    only: str | None,
    ledger_kind: str,
    seconds: float,
    upstream_latency_ms: float,
    max_p99_ms: float,
    rates: str,
    cpu_rate: int,
    as_json: bool,
    cpu_only: bool,
    sqlite_synchronous: str,
    attack: int,
    floor_too: bool,
) -> None:
    try:
        steps = tuple(sorted(int(r) for r in rates.split(",")))
    except ValueError:
        raise click.BadParameter(f"{rates!r}: comma-separated integers", param_hint="--rates") from None
    args = Args(seconds, max_p99_ms, steps, cpu_rate)
    server_core, load_core = cores()
    sides: dict[str, Side] = {}
    two_processes: dict[str, float] | None = None
    under: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="promptex-bench-") as tmp:
        workdir = Path(tmp)
        fake_port = free_port()
        fake_url = f"http://127.0.0.1:{fake_port}/v1"
        timings = f"http://127.0.0.1:{fake_port}/_timings"
        fake_args = [
            *load_core, str(BIN / "promptex"), "fake-upstream", "--port", str(fake_port),
            "--latency-ms", str(upstream_latency_ms), "--record-timings",
        ]  # fmt: skip
        fake_headers = {"authorization": "Bearer sk-fake-bench"}
        if load_core:
            os.sched_setaffinity(0, {1})
        with process(fake_args, dict(os.environ), fake_url + "/models", fake_headers):
            base_ttfb = uvloop.run(ttfb(fake_url + "/chat/completions", fake_headers))

            if floor_too or only == "floor":  # idle, CPU and added latency at the fixed rate: no sweep
                port = free_port()
                url = f"http://127.0.0.1:{port}/v1"
                forward = [
                    *server_core, sys.executable, str(ROOT / "bench" / "forwarder.py"), "--port", str(port),
                    "--upstream", fake_url,
                ]  # fmt: skip
                with process(forward, dict(os.environ), url + "/models") as floor:
                    click.echo("floor (bench/forwarder.py):", err=True)
                    sides["floor"] = measure(url + "/chat/completions", {}, floor.pid, args, timings, sweep_too=False)

            if only in (None, "promptex"):
                postgres = None
                if ledger_kind == "postgresql":
                    from promptex.ledger.local_postgres import LocalPostgres

                    postgres = LocalPostgres().start()
                    pin_postgres(postgres, server_core)
                    ledger_url = postgres.create_database("bench")
                else:
                    ledger_url = f"sqlite:///{workdir}/ledger.sqlite3"
                try:
                    env, key, broke = setup_promptex(workdir, ledger_url, fake_url, sqlite_synchronous)
                    port = free_port()
                    url = f"http://127.0.0.1:{port}/v1"
                    headers = {"authorization": f"Bearer {key}"}
                    serve = [*server_core, str(BIN / "promptex"), "gateway", "serve", "--port", str(port)]
                    with process(serve, env, url + "/models", headers) as gateway:
                        click.echo("promptex gateway:", err=True)
                        sides["promptex"] = measure(
                            url + "/chat/completions", headers, gateway.pid, args, timings, sweep_too=not cpu_only
                        )
                    if attack:  # the default shares for others than the bench's one buyer
                        port = free_port()
                        url = f"http://127.0.0.1:{port}/v1"
                        serve = [*server_core, str(BIN / "promptex"), "gateway", "serve", "--port", str(port)]
                        attacked = {**env, "PROMPTEX_GATEWAY_MAX_INFLIGHT_PER_ADDRESS": "128",
                                    "PROMPTEX_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "256"}  # fmt: skip
                        with process(serve, attacked, url + "/models", headers):
                            click.echo(f"promptex gateway under attack ({attack} slow bodies):", err=True)
                            under = under_attack(url + "/chat/completions", port, headers, broke, attack, args, timings)
                            click.echo(f"  {under}", err=True)
                    if postgres is not None:  # two processes on the one core: CPU per request, both serving
                        port = free_port()
                        url = f"http://127.0.0.1:{port}/v1"
                        serve = [*server_core, str(BIN / "promptex"), "gateway", "serve", "--port", str(port)]
                        with process([*serve, "--workers", "2"], env, url + "/models", headers) as gateway:
                            click.echo("promptex gateway, --workers 2:", err=True)
                            two_processes = cpu_per_request(
                                gateway.pid, url + "/chat/completions", headers, cpu_rate, seconds, timings
                            )
                            click.echo(f"  CPU at {cpu_rate} RPS: {two_processes}", err=True)
                finally:
                    if postgres is not None:
                        postgres.stop()

            if only in (None, "litellm"):
                python = litellm_python()
                master = "sk-" + secrets.token_hex(16)
                config = litellm_config(workdir, fake_url)
                env = {
                    **os.environ,
                    "LITELLM_MASTER_KEY": master,
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_TELEMETRY": "False",
                    "LITELLM_LOG": "ERROR",
                }
                port = free_port()
                url = f"http://127.0.0.1:{port}/v1"
                headers = {"authorization": f"Bearer {master}"}
                serve = [
                    *server_core, str(python.parent / "litellm"), "--config", str(config), "--port", str(port),
                    "--num_workers", "1",
                ]  # fmt: skip
                click.echo(f"litellm proxy {LITELLM_VERSION}, one worker, config:\n{config.read_text()}", err=True)
                with process(serve, env, url + "/models", headers) as proxy:
                    sides["litellm"] = measure(
                        url + "/chat/completions", headers, proxy.pid, args, timings, sweep_too=not cpu_only
                    )

    results = summarize(sides, base_ttfb, seconds)
    if as_json:
        flat: dict[str, object] = {
            f"{side}_{name}": value for side, row in results.items() for name, value in row.items()
        }
        flat["promptex_cpu_ms_per_request_2proc"] = two_processes["cpu_ms_per_request"] if two_processes else None
        flat.update({f"promptex_{name}": value for name, value in under.items()})
        flat["cores"] = "server core 0, upstream + generator core 1" if server_core else "unpinned"
        flat["load_average"] = os.getloadavg()[0]
        click.echo(json.dumps(flat))
        return
    from rich.console import Console
    from rich.table import Table

    pinned = "gateway/proxy on core 0, upstream + load on core 1" if server_core else "not pinned"
    table = Table(title=f"gateway load, {ledger_kind} ledger, upstream {upstream_latency_ms:g} ms, {pinned}")
    table.add_column("")
    for side in results:
        table.add_column(side, justify="right")
    both = {"promptex", "litellm"} <= set(results)
    if both:
        table.add_column("ratio", justify="right")
    common = next(iter(results.values()))["common_rps"] if results else None
    names = {
        "rps": ("max RPS (< 0.1 % errors)", "up"),
        "p50_added_ms": (f"added p50 ms at {common} RPS (per request)", "down"),
        "p99_added_ms": (f"added p99 ms at {common} RPS (per request)", "down"),
        "p50_added_at_max_ms": ("added p50 ms at own max", "down"),
        "p99_added_at_max_ms": ("added p99 ms at own max", "down"),
        "ttfb_added_ms": ("added stream TTFB ms", "down"),
        "idle_added_p50_ms": ("idle added p50 ms (one at a time)", "down"),
        "cpu_ms_per_request": (f"CPU ms per request at {cpu_rate} RPS", "down"),
        "overload_served_rps": ("at 2x max: served RPS", "up"),
        "overload_429_share": ("at 2x max: 429 share", None),
        "overload_429_p50_ms": ("at 2x max: 429 p50 ms", None),
        "overload_429_p99_ms": ("at 2x max: 429 p99 ms", None),
        "overload_generator_late_p99_ms": ("at 2x max: generator late p99 ms", None),
    }
    for name, (label, better) in names.items():
        cells = [f"{results[side][name]:.2f}" if results[side][name] is not None else "—" for side in results]
        if both:
            a, b = results["promptex"][name], results["litellm"][name]
            ratio = None
            if better and a and b and a > 0 and b > 0:
                ratio = a / b if better == "up" else b / a
            cells.append(f"{ratio:.1f}×" if ratio else "—")
        table.add_row(label, *cells)
        if name == "cpu_ms_per_request":  # next to it: the wake-ups, which the load hardly moves
            table.add_row(
                f"wake-ups a request at {cpu_rate} RPS, loop / ledger",
                *(
                    f"{results[side]['wakeups_loop']:.2f} / {results[side]['wakeups_ledger']:.2f}"
                    if results[side]["wakeups_loop"] is not None
                    else "—"
                    for side in results
                ),
                *(["—"] if both else []),
            )
            table.add_row(
                "load average during the CPU measure",
                *(f"{results[side]['cpu_load_average'] or '—'}" for side in results),
                *(["—"] if both else []),
            )
    Console().print(table)
    if under:
        click.echo(f"under attack: {under}")
    if two_processes:
        click.echo(f"two processes (--workers 2): CPU {two_processes['cpu_ms_per_request']:.2f} ms a request")
    click.echo(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
