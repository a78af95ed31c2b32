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

To compare two commits, run each from its own tree (`PYTHONPATH=<tree>/src`, its own copy of
this script or this one).
"""

from __future__ import annotations

import json
import os
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


# ─── The driver ──────────────────────────────────────────────────────────────────


def _callgrind_total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _dump(pid: int, prefix: Path, label: str) -> int:
    before = set(prefix.parent.glob(prefix.name + "*"))
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(prefix.parent.glob(prefix.name + "*")) - before
        if new:
            time.sleep(0.5)  # written whole
            return _callgrind_total(max(new, key=lambda p: p.stat().st_mtime))
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def _instrument(pid: int, on: bool) -> None:
    if on:
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)], check=True, stdout=subprocess.DEVNULL)


@contextmanager
def _gateway(callgrind: bool, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, dict[str, str]]]:
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
        if callgrind:
            args = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={workdir / 'callgrind.out'}", str(BIN / "promptex"), *serve]  # fmt: skip
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
@click.option("--idle-seconds", default=20.0, show_default=True, help="--callgrind: the idle loop measured this long")
@click.option("--top", default=30, show_default=True, help="bytecodes: the functions listed")
@click.option("--json", "as_json", is_flag=True)
def main(count: int, callgrind: bool, idle_seconds: float, top: int, as_json: bool) -> None:
    import httpx

    from gateway import BODY  # bench/gateway.py

    with tempfile.TemporaryDirectory(prefix="promptex-instructions-") as tmp:
        workdir = Path(tmp)
        with _gateway(callgrind, workdir) as (proc, url, headers), httpx.Client(timeout=120) as client:

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
                idle = _dump(proc.pid, prefix, "idle")
                _instrument(proc.pid, True)
                began = time.monotonic()
                send(count)
                _instrument(proc.pid, False)
                wall = time.monotonic() - began
                busy = _dump(proc.pid, prefix, "requests")
                result["instructions_a_request"] = round((busy - idle * wall / idle_wall) / count)
                result["idle_instructions_a_second"] = round(idle / idle_wall)
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
        if name != "functions":
            click.echo(f"{name}: {value}")
    for function, n in result.get("functions", {}).items():
        click.echo(f"  {n:8.1f}  {function}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_traced(sys.argv[2:])
    else:
        sys.path.insert(0, str(Path(__file__).parent))  # bench/gateway.py
        main()
