"""Where a gateway request's CPU goes: microseconds a request by component, per thread.

    python bench/profile_gateway.py                  # 200 RPS, SQLite NORMAL, 10 s: the table
    python bench/profile_gateway.py --rate 100 --seconds 20
    PROMPTEX_GATEWAY_LEDGER_INLINE=normal python bench/profile_gateway.py   # A/B a setting

The load is `bench/gateway.py --cpu`'s: the same fake upstream (20 ms), ledger set-up,
`promptex gateway serve` pinned to core 0 (generator and upstream on core 1), the same
open-loop generator at a fixed rate. Two runs, one gateway process each:

1. plain: the process's CPU per request, and each thread's, from `/proc` — the bench's
   own measure (what the table's rows add up to, apart from the instrumentation);
2. metered: the same gateway with its hot functions wrapped (this script's `_serve` mode,
   the same CLI): each wrapper reads its thread's CPU clock on entry and exit
   (`CLOCK_THREAD_CPUTIME_ID`, so a thread that waits or is preempted is not charged)
   and charges the component its exclusive time — a nested wrapper's time is its own
   row, not its caller's. Coroutines are metered step by step (only while their frames
   run: an `await` that suspends stops the clock), so a component is never charged for
   other requests' work done while it waited. The garbage collector is a row of its own
   (`gc.callbacks`). What no wrapper covers on a thread is its remainder: on the event
   loop uvloop itself (epoll, the task steps, timers, socket reads, the wake-ups from the
   ledger thread's pipe), on the ledger thread its queue, wake-ups and group bookkeeping.

Why not a sampling profiler: on this machine py-spy 0.4.3 counts a thread as busy when
it is runnable (`R`), also while it waits for the CPU — and the loop and the ledger
thread share one pinned core and wake each other several times a request, so most of
its "busy" samples were a thread waiting for the other (5,697 loop samples for 1.2 s of
loop CPU). A deterministic profiler (cProfile, yappi) times every call: thousands a
request, each clock read costing more than the small functions it times. Here about 60
clock-read pairs a request are taken; their cost is measured in the process at start
(`overhead_ns`) and subtracted per component (calls × cost), and the metered run's
totals are printed next to the plain run's.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import click

# ─── In the gateway process (`_serve` mode) ──────────────────────────────────────

_clock = time.thread_time_ns
_ns: dict[tuple[str, str], int] = defaultdict(int)  # (thread, component) → exclusive CPU ns
_calls: dict[tuple[str, str], int] = defaultdict(int)
_nested: dict[tuple[str, str], int] = defaultdict(int)  # (thread, component) → wrappers entered inside it
_local = threading.local()
REMAINDER = "(remainder)"


def _stack() -> list[list[Any]]:
    stack: list[list[Any]] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
        current = threading.current_thread()
        _local.thread = "loop" if current is threading.main_thread() else current.name
    return stack


def _enter(name: str) -> None:
    stack = _stack()
    now = _clock()
    if stack:
        top = stack[-1]
        _ns[(_local.thread, top[0])] += now - top[1]
        _nested[(_local.thread, top[0])] += 1
    else:
        _nested[(_local.thread, REMAINDER)] += 1
    stack.append([name, now])


def _leave() -> None:
    now = _clock()
    stack = _local.stack
    name, since = stack.pop()
    key = (_local.thread, name)
    _ns[key] += now - since
    _calls[key] += 1
    if stack:
        stack[-1][1] = now


def _named(name: str | Callable[[], str]) -> Callable[[], str]:
    return name if callable(name) else (lambda: name)


def _sync(name: str | Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
    label = _named(name)

    @functools.wraps(fn)
    def metered(*args: Any, **kwargs: Any) -> Any:
        _enter(label())
        try:
            return fn(*args, **kwargs)
        finally:
            _leave()

    return metered


class _Steps:
    """An awaitable that runs a coroutine with the clock on only while its frames run."""

    __slots__ = ("name", "coro")

    def __init__(self, name: str, coro: Any) -> None:
        self.name, self.coro = name, coro

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value, error = self.coro.__await__(), None, None  # a coroutine's, or another awaitable's
        while True:
            _enter(self.name)
            try:
                signal_ = coro.throw(error) if error is not None else coro.send(value)
            except StopIteration as stop:
                return stop.value
            finally:
                _leave()
            try:
                value, error = (yield signal_), None
            except BaseException as exc:  # a cancellation: into the coroutine, metered
                value, error = None, exc


def _async(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def metered(*args: Any, **kwargs: Any) -> Any:
        return _Steps(name, fn(*args, **kwargs))

    return metered


def _ledger_op() -> str:
    """The SQL's row: under the money call (reserve, settle, release) that runs it."""
    for name, _ in reversed(_local.stack):
        if name.startswith("ledger:"):
            return str(name).split(":")[1].strip().split(" ")[0] + ": SQL statements (sqlite3)"
    return "other ledger SQL"


_statement_names: dict[int, str] = {}


def _by_statement(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The SQL rows one per statement (`PROMPTEX_PROFILE_STATEMENTS=1`): `_run(cur, conn,
    stmt, …)` and `_driver(conn, text)`, named by their first words (named once: the
    naming is outside the meter)."""

    @functools.wraps(fn)
    def metered(*args: Any, **kwargs: Any) -> Any:
        stmt = args[2] if len(args) > 2 else args[1]
        name = _statement_names.get(id(stmt))
        if name is None:
            words = " ".join(str(stmt).split())
            name = _statement_names[id(stmt)] = "SQL: " + (words[:60] if isinstance(stmt, str) else words[:60])
        _enter(f"{_ledger_op().split(':')[0]} {name}")
        try:
            return fn(*args, **kwargs)
        finally:
            _leave()

    return metered


# Each row: the functions whose exclusive CPU it is (module, attribute path).
LOOP_ROWS: dict[str, list[tuple[str, str, str]]] = {
    # (module, "Class.method" or "function", "sync" | "async")
    "HTTP server: parse, connections (uvicorn httptools, guard)": [
        ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.data_received", "sync"),
        ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.connection_made", "sync"),
        ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.connection_lost", "sync"),
        ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_response_complete", "sync"),
    ],
    "HTTP server: ASGI receive/send (uvicorn, socket writes)": [
        ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle.send", "async"),
        ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle.receive", "async"),
    ],
    "ASGI entry (GatewayApp: Request, admission, status)": [
        ("promptex.gateway.app", "GatewayApp._serve", "async"),
        ("promptex.gateway.admission", "Admission.enter", "sync"),
        ("promptex.gateway.admission", "Admission.leave", "sync"),
    ],
    "request id (secrets: urandom)": [
        ("promptex.gateway.app", "new_request_id", "sync"),
    ],
    "auth: key (header, SHA-256, cache)": [
        ("promptex.gateway.app", "presented_key", "sync"),
        ("promptex.gateway.app", "hash_key", "sync"),
        ("promptex.gateway.service", "Gateway.authenticate", "async"),
    ],
    "body read (ASGI messages)": [
        ("promptex.gateway.service", "Gateway.read", "async"),
        ("promptex.gateway.service", "read_body", "async"),
    ],
    "JSON decode (request body, depth check)": [
        ("promptex.gateway.service", "parse_body", "sync"),
    ],
    "pricing and limits (price, rates, bounds, signed mode)": [
        ("promptex.gateway.service", "Gateway.price", "sync"),
        ("promptex.gateway.service", "Gateway.signed_mode", "async"),
        ("promptex.gateway.service", "Gateway._translatable", "sync"),
    ],
    "routing (lot order, health, adapter, upstream body)": [
        ("promptex.gateway.service", "Gateway._in_order", "sync"),
        ("promptex.gateway.service", "Gateway._holds_capacity", "async"),
        ("promptex.gateway.fronts", "upstream_body", "sync"),
        ("promptex.gateway.fronts", "adapter", "sync"),
        ("promptex.gateway.adapters", "OpenAIAdapter.call", "sync"),
        ("promptex.gateway.health", "LotHealth.succeeded", "sync"),
        ("promptex.gateway.health", "LotHealth.may_try", "sync"),
        ("promptex.gateway.health", "LotHealth.allows", "sync"),
    ],
    "upstream client (request, response parse, waits)": [
        ("promptex.gateway.upstream", "UpstreamClient.post", "async"),
        ("promptex.gateway.upstream", "UpstreamResponse.read", "async"),
        ("promptex.gateway.upstream", "_Connection.data_received", "sync"),
        ("promptex.gateway.upstream", "_Connection.wait", "async"),
    ],
    "upstream answer decode (JSON, usage)": [
        ("promptex.gateway.adapters", "OpenAIAdapter.answer", "sync"),
    ],
    "asyncio timeout (the request's deadline)": [
        ("asyncio.timeouts", "Timeout.__aenter__", "async"),
        ("asyncio.timeouts", "Timeout.__aexit__", "async"),
    ],
    "hand-off to the ledger thread (future, queue.put, shield)": [
        ("promptex.gateway.ledger_threads", "LedgerThreads._submit", "async"),
    ],
    "hand-off back (pipe read, futures' results)": [
        ("promptex.gateway.ledger_threads", "LedgerThreads._drain", "sync"),
    ],
    "hold and settle, loop side (cost, usage record, charge)": [
        ("promptex.gateway.service", "Gateway.reserve", "async"),
        ("promptex.gateway.service", "Gateway.finish", "async"),
        ("promptex.gateway.service", "Gateway.charge", "sync"),
        ("promptex.gateway.routing", "LotRegistry.used", "sync"),
    ],
    "response (cost headers, server-timing, answer)": [
        ("promptex.gateway.charges", "Charge.cost_headers", "sync"),
        ("promptex.gateway.service", "raw_headers", "sync"),
        ("promptex.gateway.fronts", "raw_id_headers", "sync"),
        ("promptex.gateway.service", "PlainAnswer.__init__", "sync"),
        ("promptex.gateway.service", "PlainAnswer.__call__", "async"),
    ],
    "request flow (Gateway.serve, _serve, _once: their own lines)": [
        ("promptex.gateway.service", "Gateway.serve", "async"),
        ("promptex.gateway.service", "Gateway._serve", "async"),
        ("promptex.gateway.service", "Gateway._once", "async"),
    ],
    "metrics (prometheus_client)": [
        ("promptex.gateway.metrics", "GatewayMetrics.answered", "sync"),
        ("prometheus_client.metrics", "Histogram.observe", "sync"),
        ("prometheus_client.metrics", "Counter.inc", "sync"),
        ("prometheus_client.metrics", "Gauge.set", "sync"),
    ],
    "logs (request-id context, access log)": [
        ("promptex.gateway.logs", "bind", "sync"),
        ("promptex.gateway.logs", "unbind", "sync"),
        ("promptex.gateway.logs", "access", "sync"),
    ],
}
LEDGER_ROWS: dict[str, list[tuple[str, str, str]]] = {
    "ledger: reserve (Python: holds, checks, claims)": [
        ("promptex.gateway.service", "Gateway._reserve", "sync"),
    ],
    "ledger: settle (Python: hold, journal, usage record)": [
        ("promptex.gateway.service", "Gateway._settle", "sync"),
    ],
    "ledger: release": [
        ("promptex.gateway.service", "Gateway._release", "sync"),
    ],
    "BEGIN / COMMIT (driver; the commit's WAL writes)": [
        ("promptex.ledger.core", "_driver", "sync"),
    ],
    "ledger thread: wake the loop (pipe write), wait metric": [
        ("promptex.gateway.ledger_threads", "LedgerThreads._signal", "sync"),
        ("promptex.gateway.ledger_threads", "LedgerThreads._waited", "sync"),
    ],
}
SQL = ("promptex.ledger.holds.sqlite", "_run")  # the raw statements, named by their caller's row


def _resolve(module: str, path: str) -> tuple[Any, str, Any]:
    import importlib

    owner: Any = importlib.import_module(module)
    *outer, attr = path.split(".")
    for part in outer:
        owner = getattr(owner, part)
    return owner, attr, owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)


def install() -> None:
    """Wrap the rows' functions (and the SQL, and the collector), in this process."""
    rows = {**LOOP_ROWS, **LEDGER_ROWS}
    for row, targets in rows.items():
        for module, path, kind in targets:
            owner, attr, fn = _resolve(module, path)
            wrap = _sync if kind == "sync" else _async
            if isinstance(fn, staticmethod):
                setattr(owner, attr, staticmethod(wrap(row, fn.__func__)))
            else:
                setattr(owner, attr, wrap(row, fn))
    owner, attr, fn = _resolve(*SQL)
    setattr(owner, attr, _by_statement(fn) if os.environ.get("PROMPTEX_PROFILE_STATEMENTS") else _sync(_ledger_op, fn))
    if os.environ.get("PROMPTEX_PROFILE_STATEMENTS"):
        owner, attr, fn = _resolve("promptex.ledger.core", "_driver")
        setattr(owner, attr, _by_statement(fn))
    # The guard's subclass of uvicorn's protocol: its own lines are the HTTP server's too.
    from promptex.gateway import guard

    made = guard.guarded_protocol

    def guarded(g: Any) -> Any:
        cls = made(g)
        for name in ("connection_made", "connection_lost", "data_received"):
            setattr(cls, name, _sync(next(iter(LOOP_ROWS)), cls.__dict__[name]))
        return cls

    guard.guarded_protocol = guarded

    def collect(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _enter("garbage collector")
        elif getattr(_local, "stack", None):
            _leave()

    gc.callbacks.append(collect)
    signal.signal(signal.SIGUSR1, _dump)


def _overhead_ns() -> float:
    """What one enter/leave pair costs (its clock reads and bookkeeping), nested once."""
    _enter("(calibration)")
    rounds = 20_000
    start = _clock()
    for _ in range(rounds):
        _enter("(calibration inner)")
        _leave()
    spent = (_clock() - start) / rounds
    _leave()
    for key in [k for k in _ns if k[1].startswith("(calibration")]:
        _ns.pop(key)
        _calls.pop(key, None)
    return spent


def _dump(*_: Any) -> None:
    """SIGUSR1: every thread's components and CPU so far, to $PROMPTEX_PROFILE_OUT."""
    threads: dict[str, int] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        name = "loop" if thread is threading.main_thread() else thread.name
        try:
            spent = time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
        except OSError:
            continue
        threads[name] = threads.get(name, 0) + spent
    state = {
        "ns": [[t, c, v] for (t, c), v in list(_ns.items())],
        "calls": [[t, c, v] for (t, c), v in list(_calls.items())],
        "nested": [[t, c, v] for (t, c), v in list(_nested.items())],
        "threads": threads,
        "overhead_ns": OVERHEAD,
    }
    Path(os.environ["PROMPTEX_PROFILE_OUT"]).write_text(json.dumps(state))


OVERHEAD = 0.0


def serve_metered(argv: list[str]) -> None:
    """`promptex <argv>` with the wrappers installed (this script's `_serve` mode)."""
    global OVERHEAD
    if os.environ.get("PROMPTEX_PROFILE_STDERR"):  # the bench's processes write to /dev/null
        os.dup2(os.open(os.environ["PROMPTEX_PROFILE_STDERR"], os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
    install()
    OVERHEAD = _overhead_ns()
    from promptex.cli import main as cli

    sys.argv = ["promptex", *argv]
    cli()


# ─── The driver ──────────────────────────────────────────────────────────────────


def _dump_of(pid: int, path: Path) -> dict[str, Any]:
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().endswith("}"):
        if time.monotonic() > deadline:
            raise RuntimeError("the metered gateway did not answer SIGUSR1")
        time.sleep(0.05)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _diff(before: dict[str, Any], after: dict[str, Any], field: str) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for t, c, v in after.get(field, []):
        counts[(t, c)] += v
    for t, c, v in before.get(field, []):
        counts[(t, c)] -= v
    return counts


def _table(before: dict[str, Any], after: dict[str, Any], served: int, plain: dict[str, float]) -> list[str]:
    """Per thread, its rows: µs a request net of the meters, and scaled to the plain run.

    A meter pair's cost falls half in the component it meters (the clock read on entry
    onwards, up to the read on exit) and half in the component around it (the wrapper's
    call up to the entry's read, and the exit's bookkeeping after its read), so each row
    is charged calls × half a pair for itself and nested × half a pair for what it
    wraps; the remainder likewise for the wrappers entered at the top of the thread."""
    ns, calls, nested = _diff(before, after, "ns"), _diff(before, after, "calls"), _diff(before, after, "nested")
    half = after["overhead_ns"] / 2
    threads = {name: after["threads"][name] - before["threads"].get(name, 0) for name in after["threads"]}
    lines: list[str] = []
    metered_all = plain_all = 0.0
    order = sorted(threads, key=lambda n: (n != "loop", not n.startswith("ledger"), n))
    for thread in order:
        spent = threads[thread]
        rows = {c: float(v - (calls[(t, c)] + nested[(t, c)]) * half) for (t, c), v in ns.items() if t == thread}
        if spent <= 0 or not rows:
            continue
        rows[REMAINDER] = spent - sum(v for (t, _), v in ns.items() if t == thread) - nested[(thread, REMAINDER)] * half
        net = sum(rows.values())
        plain_ms = plain.get(f"thread_ms_{thread}")
        scale = plain_ms * 1e6 * served / net if plain_ms and net > 0 else float("nan")
        metered_all += net
        plain_all += (plain_ms or 0.0) * 1000
        lines.append(
            f"{thread}: {net / served / 1000:6.1f} µs a request metered, net of the meters"
            + (f"; plain run {plain_ms * 1000:6.1f} µs (rows scaled ×{scale:.2f})" if plain_ms else "")
        )
        for row, v in sorted(rows.items(), key=lambda kv: -kv[1]):
            n = calls.get((thread, row), 0) / served
            inner = nested.get((thread, row), 0) / served
            scaled = f"{v * scale / served / 1000:7.1f}" if scale == scale else "      —"
            lines.append(f"  {v / served / 1000:7.1f} {scaled}  {n:5.1f}× {inner:5.1f}  {row}")
    others = {
        name: ms for name, ms in plain.items()
        if name.startswith("thread_ms_") and name[10:] not in order[:2] and name[10:] != "loop"
    }  # fmt: skip
    for name, ms in others.items():
        lines.append(f"{name[10:]}: plain run {ms * 1000:6.1f} µs a request (not metered)")
    lines.append(
        f"process: metered {metered_all / served / 1000:.1f} µs a request net of the meters "
        f"(a meter pair costs {2 * half:.0f} ns); plain run {plain['cpu_ms_per_request'] * 1000:.1f} µs"
    )
    return lines


def _metered_run(
    env: dict[str, str],
    serve: list[str],
    url: str,
    headers: dict[str, str],
    out: Path,
    rate: int,
    seconds: float,
    timings: str,
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    import uvloop

    from gateway import open_loop, process, warm  # bench/gateway.py

    with process(serve, {**env, "PROMPTEX_PROFILE_OUT": str(out)}, url + "/models", headers) as gateway:
        warm(url + "/chat/completions", headers)
        time.sleep(1)
        before = _dump_of(gateway.pid, out)
        step = uvloop.run(open_loop(url + "/chat/completions", headers, rate, seconds, 10, timings))
        after = _dump_of(gateway.pid, out)
    return before, after, step


@click.command()
@click.option("--rate", default=200, show_default=True)
@click.option("--seconds", default=10.0, show_default=True)
@click.option("--sqlite-synchronous", type=click.Choice(["NORMAL", "FULL"]), default="NORMAL", show_default=True)
@click.option("--plain/--no-plain", default=True, show_default=True, help="also the unmetered run (the rows' scale)")
def main(rate: int, seconds: float, sqlite_synchronous: str, plain: bool) -> None:
    from gateway import BIN, cores, cpu_per_request, process, setup_promptex  # bench/gateway.py
    from promptex.serving import free_port

    server_core, load_core = cores()
    with tempfile.TemporaryDirectory(prefix="promptex-profile-") as tmp:
        workdir = Path(tmp)
        fake_port = free_port()
        fake_url = f"http://127.0.0.1:{fake_port}/v1"
        timings = f"http://127.0.0.1:{fake_port}/_timings"
        if load_core:
            os.sched_setaffinity(0, {1})
        fake = [*load_core, str(BIN / "promptex"), "fake-upstream", "--port", str(fake_port),
                "--latency-ms", "20", "--record-timings"]  # fmt: skip
        with process(fake, dict(os.environ), fake_url + "/models", {"authorization": "Bearer sk-fake-bench"}):
            ledger_url = f"sqlite:///{workdir}/ledger.sqlite3"
            env, key, _ = setup_promptex(workdir, ledger_url, fake_url, sqlite_synchronous)
            headers = {"authorization": f"Bearer {key}"}
            plain_cpu: dict[str, float] = {"cpu_ms_per_request": float("nan")}
            if plain:
                port = free_port()
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                serve = [*server_core, str(BIN / "promptex"), "gateway", "serve", "--port", str(port)]
                with process(serve, env, url.replace("chat/completions", "models"), headers) as gateway:
                    plain_cpu = cpu_per_request(gateway.pid, url, headers, rate, seconds, timings)
                click.echo(f"plain: {plain_cpu}", err=True)
            port = free_port()
            serve = [*server_core, sys.executable, __file__, "_serve", "gateway", "serve", "--port", str(port)]
            out = workdir / "profile.json"
            url = f"http://127.0.0.1:{port}/v1"
            before, after, step = _metered_run(env, serve, url, headers, out, rate, seconds, timings)
    served = step.sent - step.errors
    click.echo(
        f"{rate} RPS for {seconds:g} s, SQLite {sqlite_synchronous}: served {served}, errors {step.errors}, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    click.echo(
        "µs a request (exclusive CPU: metered net, then scaled to the plain run), calls a request, meters nested "
        "in it a request (a row with many carries more of the meters' residual cost), component:"
    )
    for line in _table(before, after, served, plain_cpu):
        click.echo(line)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_metered(sys.argv[2:])
    else:
        main()
