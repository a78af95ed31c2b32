"""Gateway load: PROMPTEX's /v1 gateway against LiteLLM's proxy on the same fake upstream.

    python bench/gateway.py                    # both, SQLite ledger, a table
    python bench/gateway.py --ledger postgresql
    python bench/gateway.py --only promptex    # skip LiteLLM (no 740 MB install)
    python bench/gateway.py --json             # promptex_rps, litellm_rps, *_p99_added_ms, …
    python bench/gateway.py --cpu 100          # only the gateway's CPU per request at 100 RPS

Open-loop load at a fixed arrival rate: request i is due at t0 + i/rate and its latency
is measured from when it was due, so a slow server cannot slow the generator down
(no coordinated omission). Rates step up; the sustainable rate is the highest step with
< 0.1 % errors and a p99 under --max-p99-ms (a step that fails is run once more and the
better run counts, for both sides alike: a shared machine stalls now and then). Added latency is each proxy's latency
minus the fake upstream's own, measured directly at the same rate: at the rate both
sides sustain (the "added" rows, what the targets compare) and at each side's own
maximum ("at max"). Past saturation each side is offered twice its maximum: how much it
still serves and how fast it refuses the rest (429s).

The gateway (or the proxy) runs on one core; with --ledger postgresql the database
server is pinned to that core too (its work is the gateway's). The fake upstream and
this generator share the other core; the generator is a light keep-alive HTTP/1.1
client (the gateway's own upstream client, on uvloop), so it has headroom there.
LiteLLM is installed on first use into bench/.litellm/ (its own venv; never in CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
    args: list[str], env: dict[str, str], ready_url: str, headers: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0:4]} exited with {proc.returncode}")
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
            proc.wait(timeout=20)
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


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def open_loop(url: str, headers: dict[str, str], rate: int, seconds: float, timeout: float) -> Step:
    body = json.dumps(BODY).encode()
    headers = {**headers, "content-type": "application/json"}
    async with UpstreamClient(connect_timeout=timeout, timeout=timeout, max_idle_per_origin=4096) as client:
        latencies: list[float] = []
        shed: list[float] = []
        late: list[float] = []
        errors = 0
        total = int(rate * seconds)
        start = time.perf_counter() + 0.1

        async def one(due: float) -> None:
            nonlocal errors
            late.append((time.perf_counter() - due) * 1000)
            try:
                response = await client.post(url, headers, body)
                await response.read()
                if response.status_code != 200:
                    errors += 1
                    if response.status_code == 429:
                        shed.append((time.perf_counter() - due) * 1000)
                    return
            except UpstreamError:
                errors += 1
                return
            latencies.append((time.perf_counter() - due) * 1000)

        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
    return Step(
        rate, total, errors, _pct(latencies, 0.5), _pct(latencies, 0.99),
        len(shed), _pct(shed, 0.99), _pct(shed, 0.5), _pct(late, 0.99),
    )  # fmt: skip


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


def sweep(url: str, headers: dict[str, str], seconds: float, max_p99_ms: float, rates: tuple[int, ...]) -> list[Step]:
    steps = []
    for rate in rates:
        step = uvloop.run(open_loop(url, headers, rate, seconds, timeout=10))
        if not ok(step, max_p99_ms):  # once more: on a shared machine one stall fails a step
            again = uvloop.run(open_loop(url, headers, rate, seconds, timeout=10))
            step = again if (again.errors, again.p99_ms) < (step.errors, step.p99_ms) else step
        steps.append(step)
        shed = f" (429s: {step.shed}, p99 {step.shed_p99_ms:.1f} ms)" if step.shed else ""
        click.echo(
            f"  {rate:>5} RPS: errors {step.errors}/{step.sent}{shed}, "
            f"p50 {step.p50_ms:.1f} ms, p99 {step.p99_ms:.1f} ms",
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


def setup_promptex(workdir: Path, ledger_url: str, fake_url: str) -> tuple[dict[str, str], str]:
    """A ledger with a rich buyer and one listed lot on the fake upstream; returns (env, key)."""
    from eth_account import Account

    from promptex.config import Settings
    from promptex.gateway.buyers import signup
    from promptex.gateway.sellers import Capacity, add_capacity
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger
    from promptex.ledger.binding import sign
    from promptex.metering import load_catalog
    from promptex.sealing.envelope import load_master_keys

    env = {
        **os.environ,
        "PROMPTEX_LEDGER_URL": ledger_url,
        "PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS": "NORMAL",
        "PROMPTEX_GATEWAY_MASTER_KEY_FILE": str(workdir / "master.key"),
        "PROMPTEX_GATEWAY_LOT_MAX_INFLIGHT": "100000",
    }
    s = Settings(ledger_url=ledger_url, gateway_master_key_file=workdir / "master.key")
    now = int(time.time())
    with Ledger.open(ledger_url, sqlite_synchronous="NORMAL") as ledger:
        store = GatewayStore(ledger.engine)
        capacity = Capacity(
            "openai", "openai", fake_url, "sk-fake-bench", 10**15, "listed", 6000, now + 86_400, "0x" + "33" * 20, True
        )
        add_capacity(
            store, load_master_keys(None, s.gateway_master_key_file), load_catalog(), capacity, now, verify=False
        )
        new = signup(ledger, store, now)
        wallet = Account.create()
        message = ledger.issue_binding_challenge(new.account, wallet.address)
        ledger.bind_wallet(message, sign(message, wallet.key))
        ledger.credit_deposit(f"0x{secrets.token_hex(32)}:0", wallet.address, "USDC", 10**15)
        ledger.set_spend_cap(new.account, "USDC", 10**15)
    return env, new.key


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
    """One side's sweep, its streaming TTFB and its answer to twice its maximum rate."""

    steps: list[Step]
    best: Step | None
    ttfb_ms: float
    overload: Step | None


def measure(url: str, headers: dict[str, str], seconds: float, max_p99_ms: float, rates: tuple[int, ...]) -> Side:
    for _ in range(30):  # warm up (LiteLLM's first requests import lazily; pools fill)
        httpx.post(url, json=BODY, headers=headers, timeout=30)
    steps = sweep(url, headers, seconds, max_p99_ms, rates)
    best = sustainable(steps, max_p99_ms)
    ttfb_ms = uvloop.run(ttfb(url, headers))
    overload = None
    if best is not None:
        overload = uvloop.run(open_loop(url, headers, best.rate * 2, seconds, timeout=10))
        click.echo(
            f"  {overload.rate:>5} RPS (2x max): served {(overload.sent - overload.errors) / seconds:.0f}/s "
            f"(p50 {overload.p50_ms:.1f}, p99 {overload.p99_ms:.1f} ms), "
            f"429s {overload.shed}/{overload.sent} "
            f"(p50 {overload.shed_p50_ms:.1f}, p99 {overload.shed_p99_ms:.1f} ms), "
            f"other errors {overload.errors - overload.shed}; generator late p99 {overload.late_p99_ms:.1f} ms",
            err=True,
        )
    return Side(steps, best, ttfb_ms, overload)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux: /proc/<pid>/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(pid: int, url: str, headers: dict[str, str], rate: int, seconds: float) -> dict[str, float]:
    """The gateway's CPU milliseconds per request at a fixed rate well below saturation, net
    of what the idle process spends (its background loops) over the same time."""
    for _ in range(30):
        httpx.post(url, json=BODY, headers=headers, timeout=30)
    idle_start = cpu_seconds(pid)
    time.sleep(seconds)
    idle = cpu_seconds(pid) - idle_start
    start = cpu_seconds(pid)
    step = uvloop.run(open_loop(url, headers, rate, seconds, timeout=10))
    busy = cpu_seconds(pid) - start
    served = step.sent - step.errors
    return {
        "rate": rate,
        "served": served,
        "errors": step.errors,
        "cpu_ms_per_request": 1000 * busy / max(1, served),
        "net_cpu_ms_per_request": 1000 * (busy - idle) / max(1, served),
        "p50_ms": step.p50_ms,
        "p99_ms": step.p99_ms,
    }


def pin_postgres(postgres: object, core: list[str]) -> None:
    """Pin the database server (the postmaster; backends fork from it) to the gateway's core."""
    root = getattr(postgres, "root", None)
    if not core or root is None:
        return
    pid = (Path(root) / "data" / "postmaster.pid").read_text().split()[0]
    subprocess.run(["taskset", "-a", "-p", "-c", core[-1], pid], check=True, stdout=subprocess.DEVNULL)


def summarize(
    sides: dict[str, Side], base: dict[int, Step], base_ttfb: float, seconds: float
) -> dict[str, dict[str, float | None]]:
    """Per side: max RPS; added p50/p99 at the rate every side sustains and at its own max;
    added TTFB; past saturation: what it still served and its 429s' p99."""
    bests = [side.best.rate for side in sides.values() if side.best is not None]
    common = min(bests) if bests else None
    results: dict[str, dict[str, float | None]] = {}
    for name, side in sides.items():

        def added(step: Step | None) -> tuple[float | None, float | None]:
            if step is None:
                return None, None
            ref = base.get(step.rate) or list(base.values())[-1]
            return step.p50_ms - ref.p50_ms, step.p99_ms - ref.p99_ms

        at_common = next((step for step in side.steps if step.rate == common), None)
        p50, p99 = added(at_common)
        p50_max, p99_max = added(side.best)
        over = side.overload
        results[name] = {
            "rps": side.best.rate if side.best else 0,
            "common_rps": common,
            "p50_added_ms": p50,
            "p99_added_ms": p99,
            "p50_added_at_max_ms": p50_max,
            "p99_added_at_max_ms": p99_max,
            "ttfb_added_ms": side.ttfb_ms - base_ttfb,
            "overload_offered_rps": over.rate if over else None,
            "overload_served_rps": (over.sent - over.errors) / seconds if over else None,
            "overload_429_share": over.shed / over.sent if over else None,
            "overload_429_p50_ms": over.shed_p50_ms if over and over.shed else None,
            "overload_429_p99_ms": over.shed_p99_ms if over and over.shed else None,
            "overload_generator_late_p99_ms": over.late_p99_ms if over else None,
        }
    return results


@click.command()
@click.option("--only", type=click.Choice(["promptex", "litellm"]), help="measure one side only")
@click.option(
    "--ledger", "ledger_kind", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True
)
@click.option("--seconds", default=10.0, show_default=True, help="length of each rate step")
@click.option("--upstream-latency-ms", default=20.0, show_default=True)
@click.option("--max-p99-ms", default=500.0, show_default=True, help="a step above this p99 is not sustainable")
@click.option("--rates", default=",".join(map(str, RATES)), show_default=True, help="the arrival rates to step through")
@click.option("--json", "as_json", is_flag=True)
@click.option("--cpu", "cpu_rate", type=int, help="only measure the gateway's CPU per request at this rate")
def main(
    only: str | None,
    ledger_kind: str,
    seconds: float,
    upstream_latency_ms: float,
    max_p99_ms: float,
    rates: str,
    as_json: bool,
    cpu_rate: int | None,
) -> None:
    try:
        steps = tuple(sorted(int(r) for r in rates.split(",")))
    except ValueError:
        raise click.BadParameter(f"{rates!r}: comma-separated integers", param_hint="--rates") from None
    server_core, load_core = cores()
    sides: dict[str, Side] = {}
    with tempfile.TemporaryDirectory(prefix="promptex-bench-") as tmp:
        workdir = Path(tmp)
        fake_port = free_port()
        fake_url = f"http://127.0.0.1:{fake_port}/v1"
        fake_args = [
            *load_core,
            str(BIN / "promptex"),
            "fake-upstream",
            "--port",
            str(fake_port),
            "--latency-ms",
            str(upstream_latency_ms),
        ]
        fake_headers = {"authorization": "Bearer sk-fake-bench"}
        if load_core:
            os.sched_setaffinity(0, {1})
        with process(fake_args, dict(os.environ), fake_url + "/models", fake_headers):
            if cpu_rate is not None:
                ledger_url = f"sqlite:///{workdir}/ledger.sqlite3"
                env, key = setup_promptex(workdir, ledger_url, fake_url)
                port = free_port()
                url = f"http://127.0.0.1:{port}/v1"
                headers = {"authorization": f"Bearer {key}"}
                args = [*server_core, str(BIN / "promptex"), "gateway", "serve", "--port", str(port)]
                with process(args, env, url + "/models", headers) as gateway:
                    figures = cpu_per_request(gateway.pid, url + "/chat/completions", headers, cpu_rate, seconds)
                click.echo(json.dumps(figures) if as_json else figures)
                return
            click.echo("fake upstream alone:", err=True)
            base = {s.rate: s for s in sweep(fake_url + "/chat/completions", fake_headers, seconds, max_p99_ms, steps)}
            base_ttfb = uvloop.run(ttfb(fake_url + "/chat/completions", fake_headers))

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
                    env, key = setup_promptex(workdir, ledger_url, fake_url)
                    port = free_port()
                    url = f"http://127.0.0.1:{port}/v1"
                    headers = {"authorization": f"Bearer {key}"}
                    args = [*server_core, str(BIN / "promptex"), "gateway", "serve", "--port", str(port)]
                    with process(args, env, url + "/models", headers):
                        click.echo("promptex gateway:", err=True)
                        sides["promptex"] = measure(url + "/chat/completions", headers, seconds, max_p99_ms, steps)
                finally:
                    if postgres is not None:
                        postgres.stop()

            if only in (None, "litellm"):
                python = litellm_python()
                master = "sk-" + secrets.token_hex(16)
                config = workdir / "litellm.yaml"
                config.write_text(
                    "model_list:\n"
                    f"  - model_name: {MODEL}\n"
                    f"    litellm_params: {{model: openai/{MODEL}, api_base: '{fake_url}', api_key: sk-fake-bench}}\n"
                    "litellm_settings: {telemetry: false, drop_params: true}\n"
                    "general_settings: {master_key: os.environ/LITELLM_MASTER_KEY}\n"
                )
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
                args = [
                    *server_core,
                    str(python.parent / "litellm"),
                    "--config",
                    str(config),
                    "--port",
                    str(port),
                    "--num_workers",
                    "1",
                ]
                with process(args, env, url + "/models", headers):
                    click.echo("litellm proxy:", err=True)
                    sides["litellm"] = measure(url + "/chat/completions", headers, seconds, max_p99_ms, steps)

    results = summarize(sides, base, base_ttfb, seconds)
    if as_json:
        flat: dict[str, object] = {
            f"{side}_{name}": value for side, row in results.items() for name, value in row.items()
        }
        flat["cores"] = "server core 0, upstream + generator core 1" if server_core else "unpinned"
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
        "p50_added_ms": (f"added p50 ms at {common} RPS", "down"),
        "p99_added_ms": (f"added p99 ms at {common} RPS", "down"),
        "p50_added_at_max_ms": ("added p50 ms at own max", "down"),
        "p99_added_at_max_ms": ("added p99 ms at own max", "down"),
        "ttfb_added_ms": ("added stream TTFB ms", "down"),
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
    Console().print(table)


if __name__ == "__main__":
    main()
