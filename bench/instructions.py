"""What one gateway request runs, counted where the machine's load cannot reach: for A/B
runs on a busy machine, where CPU time a request moves by ±0.3 ms with the load.

    python bench/instructions.py                    # Python bytecodes a request, by function
    python bench/instructions.py --callgrind        # user-space instructions a request (valgrind)
    python bench/instructions.py --json --top 0     # the totals only

The gateway is set up as `bench/gateway.py` sets it up (its SQLite ledger, one listed lot on
the fake upstream, the bench's body) and served by `promptex gateway serve`; requests go one
at a time (no group commits: the same path every time). Its periodic work (the hold sweep,
lot refresh, key cache, WAL checkpoint) is moved out of the window (an hour apart).

- Bytecodes (default): this script serves the gateway itself with a tracer on every thread
  (`sys.settrace` / `threading.settrace`, opcode events), switched on by SIGUSR1 and off by
  SIGUSR2 around the requests: Python bytecodes a request, per function. Runs agree within
  ~0.2 %.
- `--callgrind`: `promptex gateway serve` under valgrind's callgrind, instrumentation on
  only around the requests (`callgrind_control -i`); the idle loop's own instructions (its
  ticks) over the same wall time are measured apart and taken off. Repeat runs agree within
  ~0.5 %; C code (SQLite, uvloop, orjson) counts too, the kernel does not.

- `--by-library`: the same callgrind run, with every instruction charged to the library whose
  code ran it: each Python frame is evaluated through a C function of its library's own
  (`bench/pyslots.c`, built here with `cc`: PEP 523's frame hook) and callgrind skips the
  interpreter's and libc's functions (`--fn-skip`, their cost goes to the caller), so a
  library's row is its Python code with all the interpreter did for it, and C libraries
  (SQLite, uvloop, httptools, orjson) are rows of their own. The hook turns off CPython's
  inlined Python-to-Python calls, so its total runs above `--callgrind`'s; the shares are
  what it is for. CPython 3.11/3.12 only.

To compare two commits, run each from its own tree (`PYTHONPATH=<tree>/src`, its own copy of
this script or this one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

QUIET = {
    f"PROMPTEX_GATEWAY_{name}_SECONDS": "3600" for name in ("SWEEP", "LOT_REFRESH", "KEY_CACHE", "SQLITE_CHECKPOINT")
}

# ─── In the gateway process (`_serve` mode): the bytecode tracer ────────────────

_counts: Counter[tuple[str, str]] = Counter()
_on = False


def _opcode(frame: Any, event: str, arg: Any) -> Any:
    if event == "opcode":
        code = frame.f_code
        _counts[(code.co_filename, code.co_qualname)] += 1
    return _opcode


def _trace(frame: Any, event: str, arg: Any) -> Any:
    if not _on:
        return None
    frame.f_trace_opcodes = True
    frame.f_trace_lines = False
    return _opcode


def _start(*_: Any) -> None:
    global _on
    _counts.clear()
    _on = True


def _stop(*_: Any) -> None:
    global _on
    _on = False
    rows = [[name, fn, n] for (name, fn), n in _counts.items()]
    Path(os.environ["PROMPTEX_INSTRUCTIONS_OUT"]).write_text(json.dumps(rows))


def serve_traced(argv: list[str]) -> None:
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    sys.settrace(_trace)
    threading.settrace(_trace)
    from promptex.cli import main as cli

    sys.argv = ["promptex", *argv]
    cli()


# ─── In the gateway process (`_serve_slots` mode): frames charged to libraries ───

STDLIB = os.path.dirname(os.__file__)


def library(filename: str, module: str | None = None) -> str:
    """The row a code object's instructions go to: `promptex.<package>.<module>`, a
    third-party distribution's top-level package, or `stdlib:<module>`. Code compiled at
    run time (a dataclass's `__init__`, a named tuple's `__new__`) goes to the module whose
    globals it runs in, marked "(generated)"."""
    path = filename.replace(os.sep, "/")
    if path.startswith("<") and not path.startswith("<frozen"):
        if module is None or module == "builtins":
            return "(generated code)"
        if module.startswith("namedtuple_"):
            return "stdlib:collections (generated)"
        if module.startswith("promptex."):
            return module + " (generated)"
        top = module.split(".")[0]
        return (f"stdlib:{top}" if top in sys.stdlib_module_names else top) + " (generated)"
    if "/promptex/" in path and "/site-packages/" not in path:
        rest = path.rsplit("/promptex/", 1)[1].removesuffix(".py").removesuffix("/__init__")
        return "promptex." + rest.replace("/", ".")
    if "/site-packages/" in path:
        top = path.rsplit("/site-packages/", 1)[1].split("/")[0]
        return top.removesuffix(".py")
    if path.startswith(STDLIB + "/"):
        return "stdlib:" + path[len(STDLIB) + 1 :].split("/")[0].removesuffix(".py")
    if path.startswith("<frozen"):
        return "stdlib:frozen"
    if path == os.path.abspath(__file__):
        return "bench"
    return "other:" + Path(path).name


def serve_slotted(argv: list[str]) -> None:
    sys.path.insert(0, os.environ["PROMPTEX_PYSLOTS_DIR"])
    import pyslots  # type: ignore[import-not-found]  # built by _build_slots

    names: dict[str, int] = {"(the classifier)": 0}
    out = Path(os.environ["PROMPTEX_INSTRUCTIONS_OUT"])

    def classify(code: Any, module: Any) -> int:
        name = library(code.co_filename, module if isinstance(module, str) else None)
        if name not in names:
            if len(names) >= 255:
                name = "(more libraries)"
            if name not in names:
                names[name] = len(names)
                with out.open("a") as f:
                    f.write(f"{names[name]}\t{name}\n")
        return names[name]

    pyslots.install(classify)
    from promptex.cli import main as cli

    sys.argv = ["promptex", *argv]
    cli()


# ─── The driver ──────────────────────────────────────────────────────────────────


def _build_slots(workdir: Path) -> Path:
    """bench/pyslots.c built into `workdir` for this interpreter."""
    import sysconfig

    target = workdir / f"pyslots{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    source = Path(__file__).with_name("pyslots.c")
    subprocess.run(["cc", "-O2", "-fPIC", "-shared", f"-I{include}", "-o", str(target), str(source)], check=True)
    return workdir


def _skipped_functions() -> list[str]:
    """--fn-skip options for every function of the interpreter and of libc (as mapped into
    this process): their instructions go to whoever called them."""
    objects = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        name = line.split()[-1]
        if "/libpython" in name or "/libc.so" in name or name == os.path.realpath(sys.executable):
            objects.add(name)
    names: set[str] = set()
    for obj in objects:
        listed = subprocess.run(["nm", obj], capture_output=True, text=True).stdout
        listed += subprocess.run(["nm", "-D", "--defined-only", obj], capture_output=True, text=True).stdout
        for row in listed.splitlines():
            parts = row.split()
            if len(parts) == 3 and parts[1] in "tTwWiI" and parts[2] != "main":
                names.update((parts[2], parts[2].split("@")[0]))
    # libc's own functions its exports call (glibc's names; callgrind knows them from debug
    # information): allocation, string copies, mutexes, futexes; and unnamed code
    names.update(LIBC_INSIDE)
    return [f"--fn-skip={name}" for name in sorted(names)]


LIBC_INSIDE = ("__mem*", "__str*", "__wcs*", "_int_*", "__pthread_*", "pthread_*", "__libc_*", "unlink_chunk*",
               "malloc_*", "__tls_get_addr", "__futex*", "__fcntl*", "__vfprintf*", "clock_gettime*", "sem_*",
               "0x*")  # fmt: skip


def _self_costs(path: Path) -> Counter[tuple[str, str]]:
    """Instructions a callgrind dump charges each (object, function) itself (a call's
    inclusive cost line excluded; recursion levels folded)."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    costs: Counter[tuple[str, str]] = Counter()
    obj = fn = ""
    after_call = False

    def named(kind: str, value: str) -> str:
        ref, _, name = value.partition(" ")
        if name:
            names[kind][ref] = name
            return name
        return names[kind].get(ref, ref)

    for line in path.read_text().splitlines():
        if not line:
            continue
        head = line[0]
        if head.isdigit() or head in "+-*":
            if after_call:
                after_call = False
            else:
                costs[(obj, fn)] += int(line.split()[-1])
        elif line.startswith("ob="):
            obj = named("ob", line[3:])
        elif line.startswith("fn="):
            fn = named("fn", line[3:]).split("'")[0]
        elif line.startswith("cob="):
            named("ob", line[4:])
        elif line.startswith("cfn="):
            named("fn", line[4:])
        elif line.startswith("calls="):
            after_call = True
    return costs


def _by_library(costs: Counter[tuple[str, str]], slots: dict[int, str]) -> Counter[str]:
    rows: Counter[str] = Counter()
    for (obj, fn), n in costs.items():
        base = Path(obj).name
        if fn.startswith("px_slot_"):
            rows[slots.get(int(fn[8:], 8), fn)] += n  # named in octal
        elif fn == "px_hook" or base.startswith("pyslots"):
            rows["(the frame hook)"] += n
        elif base.startswith("libsqlite3"):
            rows["sqlite3 (libsqlite3)"] += n
        elif base.startswith("_sqlite3"):
            rows["sqlite3 (the _sqlite3 module)"] += n
        elif "/uvloop/" in obj:
            rows["uvloop (C: loop, libuv)"] += n
        elif "/httptools/" in obj:
            rows["httptools (C: HTTP parser)"] += n
        elif "/orjson/" in obj:
            rows["orjson (C)"] += n
        elif base.startswith("libpython") or base.startswith("python"):
            rows["(interpreter, thread roots)"] += n
        else:
            rows[f"C: {base.split('.')[0]}"] += n
    return rows


# --by-library's rows summed into the components the README's table names (first match)
COMPONENTS = (
    ("sqlite3", "SQLite: libsqlite3 and the _sqlite3 module (C)"),
    ("promptex.ledger", "the ledger's Python (holds, journal, usage records, models)"),
    ("promptex.gateway.ledger_threads", "hand-offs to the ledger thread (promptex.gateway.ledger_threads)"),
    ("promptex.gateway.upstream", "the upstream client (promptex.gateway.upstream: asyncio + httptools)"),
    ("promptex.gateway.metrics", "metrics (prometheus_client, promptex.gateway.metrics)"),
    ("prometheus_client", "metrics (prometheus_client, promptex.gateway.metrics)"),
    ("promptex.gateway.logs", "logs (promptex.gateway.logs, logging)"),
    ("stdlib:logging", "logs (promptex.gateway.logs, logging)"),
    ("promptex.gateway.guard", "connection guard and admission"),
    ("promptex.gateway.admission", "connection guard and admission"),
    ("promptex.metering", "metering and pricing (promptex.metering, promptex.protocol)"),
    ("promptex.protocol", "metering and pricing (promptex.metering, promptex.protocol)"),
    ("promptex.", "the gateway's request logic (promptex.gateway: service, app, requests, adapters, …)"),
    ("uvicorn", "HTTP server: uvicorn and httptools"),
    ("httptools", "HTTP server: uvicorn and httptools"),
    ("starlette", "starlette (Request, Headers)"),
    ("uvloop", "event loop: uvloop, asyncio (Python and C)"),
    ("stdlib:asyncio", "event loop: uvloop, asyncio (Python and C)"),
    ("C: _asyncio", "event loop: uvloop, asyncio (Python and C)"),
    ("anyio", "anyio, sniffio (cancel scopes)"),
    ("sniffio", "anyio, sniffio (cancel scopes)"),
    ("orjson", "JSON (orjson)"),
    ("(the", "(the measuring hook itself)"),
    ("stdlib:", "other standard library (contextlib, weakref, enum, …)"),
    ("", "other (libc, ld.so, the interpreter's thread roots, …)"),
)


def component(row: str) -> str:
    return next(name for prefix, name in COMPONENTS if row.startswith(prefix))


def _callgrind_total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _dump(pid: int, prefix: Path, label: str) -> Path:
    before = set(prefix.parent.glob(prefix.name + "*"))
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(prefix.parent.glob(prefix.name + "*")) - before
        if new:
            time.sleep(0.5)  # written whole
            return max(new, key=lambda p: p.stat().st_mtime)
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def _instrument(pid: int, on: bool) -> None:
    if on:
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)], check=True, stdout=subprocess.DEVNULL)


@contextmanager
def _gateway(
    callgrind: bool, by_library: bool, workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, dict[str, str]]]:
    from gateway import BIN, process, setup_promptex  # bench/gateway.py
    from promptex.serving import free_port

    fake_port = free_port()
    fake_url = f"http://127.0.0.1:{fake_port}/v1"
    fake = [str(BIN / "promptex"), "fake-upstream", "--port", str(fake_port), "--latency-ms", "2"]
    with process(fake, dict(os.environ), fake_url + "/models", {"authorization": "Bearer sk-fake-bench"}):
        env, key, _ = setup_promptex(workdir, f"sqlite:///{workdir}/ledger.sqlite3", fake_url, "NORMAL")
        env.update(QUIET)
        env["PROMPTEX_INSTRUCTIONS_OUT"] = str(workdir / "bytecodes.json")
        port = free_port()
        serve = ["gateway", "serve", "--port", str(port)]
        valgrind = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={workdir / 'callgrind.out'}",
        ]
        if by_library:
            env["PROMPTEX_PYSLOTS_DIR"] = str(_build_slots(workdir))
            env["PROMPTEX_INSTRUCTIONS_OUT"] = str(workdir / "slots.tsv")
            args = [*valgrind, *_skipped_functions(), sys.executable, __file__, "_serve_slots", *serve]
        elif callgrind:
            args = [*valgrind, str(BIN / "promptex"), *serve]
        else:
            args = [sys.executable, __file__, "_serve", *serve]
        url = f"http://127.0.0.1:{port}/v1"
        headers = {"authorization": f"Bearer {key}"}
        # valgrind starts slowly, and writes its counts as it exits
        with process(args, env, url + "/models", headers, ready_seconds=600, stop_seconds=60) as proc:
            yield proc, url + "/chat/completions", headers


@click.command()
@click.option("--requests", "count", default=200, show_default=True, help="measured requests (after 60 to warm)")
@click.option("--callgrind", is_flag=True, help="user-space instructions under valgrind, not Python bytecodes")
@click.option("--by-library", is_flag=True, help="callgrind, instructions charged to the library that ran them")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), help="--callgrind: copy its dumps here")
@click.option("--idle-seconds", default=20.0, show_default=True, help="--callgrind: the idle loop measured this long")
@click.option("--top", default=30, show_default=True, help="bytecodes: the functions listed")
@click.option("--json", "as_json", is_flag=True)
def main(
    count: int, callgrind: bool, by_library: bool, keep: Path | None, idle_seconds: float, top: int, as_json: bool
) -> None:
    import httpx

    from gateway import BODY  # bench/gateway.py

    with tempfile.TemporaryDirectory(prefix="promptex-instructions-") as tmp:
        workdir = Path(tmp)
        callgrind = callgrind or by_library
        with _gateway(callgrind, by_library, workdir) as (proc, url, headers), httpx.Client(timeout=120) as client:

            def send(n: int) -> None:
                for _ in range(n):
                    answer = client.post(url, headers=headers, json=BODY)
                    if answer.status_code != 200:
                        raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")

            send(60)
            result: dict[str, Any] = {"requests": count}
            if callgrind:
                prefix = workdir / "callgrind.out"
                _instrument(proc.pid, True)
                began = time.monotonic()
                time.sleep(idle_seconds)
                _instrument(proc.pid, False)
                idle_wall = time.monotonic() - began
                idle_dump = _dump(proc.pid, prefix, "idle")
                _instrument(proc.pid, True)
                began = time.monotonic()
                send(count)
                _instrument(proc.pid, False)
                wall = time.monotonic() - began
                busy_dump = _dump(proc.pid, prefix, "requests")
                idle, busy = _callgrind_total(idle_dump), _callgrind_total(busy_dump)
                if keep is not None:  # for callgrind_annotate
                    keep.mkdir(parents=True, exist_ok=True)
                    for dump in (idle_dump, busy_dump):
                        shutil.copy(dump, keep / dump.name)
                result["instructions_a_request"] = round((busy - idle * wall / idle_wall) / count)
                result["idle_instructions_a_second"] = round(idle / idle_wall)
                if by_library:
                    lines = (workdir / "slots.tsv").read_text().splitlines()
                    slots = {0: "(the classifier)"} | {int(n): name for n, name in (line.split("\t") for line in lines)}
                    idle_rows = _by_library(_self_costs(idle_dump), slots)
                    rows = _by_library(_self_costs(busy_dump), slots)
                    rows.subtract({name: round(n * wall / idle_wall) for name, n in idle_rows.items()})
                    result["libraries"] = {name: round(n / count) for name, n in rows.most_common()}
                    components: Counter[str] = Counter()
                    for name, n in rows.items():
                        components[component(name)] += n
                    result["components"] = {name: round(n / count) for name, n in components.most_common()}
            else:
                out = workdir / "bytecodes.json"
                os.kill(proc.pid, signal.SIGUSR1)
                time.sleep(0.5)
                send(count)
                os.kill(proc.pid, signal.SIGUSR2)
                deadline = time.monotonic() + 30
                while not out.exists() or not out.read_text().endswith("]"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the traced gateway did not answer SIGUSR2")
                    time.sleep(0.1)
                rows = json.loads(out.read_text())
                result["bytecodes_a_request"] = round(sum(n for _, _, n in rows) / count)
                by_function = sorted(rows, key=lambda r: -r[2])[:top]
                result["functions"] = {f"{Path(name).name}:{fn}": round(n / count, 1) for name, fn, n in by_function}
    if as_json:
        click.echo(json.dumps(result))
        return
    for name, value in result.items():
        if name not in ("functions", "libraries", "components"):
            click.echo(f"{name}: {value}")
    for function, n in result.get("functions", {}).items():
        click.echo(f"  {n:8.1f}  {function}")
    for table in ("components", "libraries"):
        rows = result.get(table, {})
        whole = sum(rows.values()) or 1
        if rows:
            click.echo(f"{table} (instructions a request, share):")
        for name, n in rows.items():
            click.echo(f"  {n:10,d}  {100 * n / whole:5.1f} %  {name}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_traced(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_serve_slots":
        serve_slotted(sys.argv[2:])
    else:
        sys.path.insert(0, str(Path(__file__).parent))  # bench/gateway.py
        main()
