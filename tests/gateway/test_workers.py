"""`gateway/workers.py`'s supervision, without a gateway: workers that only sleep.

Each test runs `run_workers` in its own Python process (it installs signal handlers and
forks), loading workers.py by path so the process starts in a fraction of a second. A
worker writes its pid to a file named after its index and start, then sleeps until a
signal ends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import promptex.gateway.workers as workers
from polling import until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + PR_SET_PDEATHSIG: Linux")

SUPERVISOR = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("workers", {path!r})
workers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workers)
workers.CRASH_LOOP_SECONDS = {young}
out = {out!r}

def serve(index):
    with open(os.path.join(out, f"{{index}}-{{time.monotonic_ns()}}"), "w") as f:
        f.write(str(os.getpid()))
    if {exit_at_start}:
        raise SystemExit(3)
    while True:
        time.sleep(60)

def reaped(pids):
    with open({reaped!r}, "a") as f:
        f.write("".join(f"{{pid}}\\n" for pid in pids))
    raise RuntimeError("the ledger is down")  # logged; the command goes on

sys.exit(workers.run_workers(2, serve, reaped) if {reaped!r} else workers.run_workers(2, serve))
"""


def _supervise(
    tmp_path: Path, *, young: float = 30.0, exit_at_start: bool = False, reaped: Path | None = None
) -> subprocess.Popen[str]:
    script = SUPERVISOR.format(
        path=workers.__file__, young=young, out=str(tmp_path), exit_at_start=exit_at_start,
        reaped=str(reaped) if reaped else "",
    )  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)


def _pids(tmp_path: Path) -> dict[int, list[int]]:
    """Worker index → the pids it has had, in start order."""
    started: dict[int, list[tuple[int, int]]] = {}
    for f in tmp_path.iterdir():
        text = f.read_text()
        if text:
            index, at = f.name.split("-")
            started.setdefault(int(index), []).append((int(at), int(text)))
    return {i: [pid for _, pid in sorted(runs)] for i, runs in started.items()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie nobody reaped yet has stopped too


def test_parent_killed_9__every_worker_gets_sigterm_and_stops__no_orphan_serves(tmp_path: Path) -> None:
    proc = _supervise(tmp_path)
    try:
        until(lambda: len(_pids(tmp_path)) == 2, "two workers")
        workers_now = [runs[-1] for runs in _pids(tmp_path).values()]
        assert all(_alive(pid) for pid in workers_now)
        proc.kill()
        proc.wait(timeout=10)
        until(lambda: not any(_alive(pid) for pid in workers_now), "the orphaned workers to stop")
    finally:
        for runs in _pids(tmp_path).values():
            for pid in runs:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_worker_killed_just_after_start__started_again__until_max_young_kills_in_a_row(tmp_path: Path) -> None:
    proc = _supervise(tmp_path)
    try:
        until(lambda: len(_pids(tmp_path)) == 2, "two workers")
        for kill in range(1, workers.MAX_YOUNG_KILLS + 1):
            victim = _pids(tmp_path)[0][-1]
            os.kill(victim, signal.SIGKILL)
            if kill < workers.MAX_YOUNG_KILLS:
                until(lambda k=kill: len(_pids(tmp_path)[0]) == k + 1, f"worker 0 restarted ({kill})")
                assert proc.poll() is None
        # the fifth young kill in a row reads as a crash loop: the others stop, the command fails
        assert proc.wait(timeout=20) == 1
        assert len(_pids(tmp_path)[0]) == workers.MAX_YOUNG_KILLS
        assert not any(_alive(pid) for runs in _pids(tmp_path).values() for pid in runs)
        assert "just after it started: stopping the others" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_worker_killed_after_its_young_period__restarted_and_the_count_starts_again(tmp_path: Path) -> None:
    proc = _supervise(tmp_path, young=0.2)
    try:
        until(lambda: len(_pids(tmp_path)) == 2, "two workers")
        for kill in range(1, workers.MAX_YOUNG_KILLS + 2):  # more kills than the young limit
            time.sleep(0.25)  # past its young period: each kill is an ordinary death
            os.kill(_pids(tmp_path)[0][-1], signal.SIGKILL)
            until(lambda k=kill: len(_pids(tmp_path)[0]) == k + 1, f"worker 0 restarted ({kill})")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_worker_exiting_on_its_own_at_start__a_configuration_error__stops_the_command(tmp_path: Path) -> None:
    proc = _supervise(tmp_path, exit_at_start=True)
    assert proc.wait(timeout=20) == 1
    assert "just after it started: stopping the others" in (proc.stderr.read() if proc.stderr else "")


def test_reaped_hook__every_worker_reaped_passed_to_it__killed_or_stopped__a_failing_hook_stops_nothing(
    tmp_path: Path,
) -> None:
    """The parent's hook (`gateway serve --workers` ends a reaped worker's holds there:
    `service.end_dead_workers`) gets every reaped worker's pid: one killed (and started
    again), and those stopped with the command, which nothing replaces. A hook that fails
    is logged; the worker is started again all the same and the command stops cleanly."""
    out, log = tmp_path / "pids", tmp_path / "reaped"
    out.mkdir()
    proc = _supervise(out, reaped=log)
    try:
        until(lambda: len(_pids(out)) == 2, "two workers")
        victim = _pids(out)[0][-1]
        os.kill(victim, signal.SIGKILL)
        until(lambda: log.exists() and log.read_text().split() == [str(victim)], "the killed worker passed to the hook")
        until(lambda: len(_pids(out)[0]) == 2, "worker 0 started again")  # the hook's failure stopped nothing
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        every = sorted(pid for runs in _pids(out).values() for pid in runs)
        assert sorted(int(pid) for pid in log.read_text().split()) == every and len(every) == 3
        assert "ending gateway worker 0's holds failed" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
