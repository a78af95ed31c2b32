"""`promptex gateway serve --workers N`: N gateway processes sharing one listening socket.

The parent makes the listening socket (and its copies, `serving.listening_sockets`),
then forks N workers that each run a whole gateway (its own event loop, ledger
connections, metrics address at port + its index) accepting from that one socket: the
kernel hands each new connection to one of them. They share money and capacity only
through the PostgreSQL ledger, as separate machines would (SQLite takes one process per
file: `--workers` > 1 is refused there). The parent only supervises: SIGTERM and SIGINT
reach every worker as SIGTERM (a graceful stop), and a worker that dies is started again. A worker that
EXITS within `CRASH_LOOP_SECONDS` of its start (a configuration error: it would loop
forever) stops the others and fails the command; one KILLED by a signal that young (an
operator, the OOM killer) is started again, up to `MAX_YOUNG_KILLS` times in a row.
On Linux a worker whose parent dies (even by kill -9) gets SIGTERM and stops as it would
on the parent's: its requests in flight finish and settle, and no orphan keeps serving.
After reaping a worker the parent calls `reaped` (`service.end_dead_workers`: the dead
worker's holds ended at once, on a ledger opened and closed for it), also when nothing
replaces the worker (the command stopping, or the last young kill).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("promptex.gateway")
CRASH_LOOP_SECONDS = 5.0
MAX_YOUNG_KILLS = 5  # a worker killed this many times in a row just after it started: stop
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux only; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("gateway worker: prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _start(index: int, serve: Callable[[int], None]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 0
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _stop_with_parent(parent)
            serve(index)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("gateway worker %d failed", index)
            code = 1
        finally:
            os._exit(code)
    return pid


def run_workers(count: int, serve: Callable[[int], None], reaped: Callable[[list[int]], object] | None = None) -> int:
    """Run `serve(i)` in `count` forked workers until they are stopped; the exit code.
    `reaped(pids)` runs in this process after each worker is reaped (and started again,
    if it is): a failure there is logged, never stops the command. It must not leave a
    connection open: workers forked later would share it."""
    children: dict[int, tuple[int, float]] = {}  # pid → (index, started)
    young_kills = [0] * count  # per worker index: killed just after starting, in a row
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # SIGTERM whichever signal came: a terminal's Ctrl-C sends SIGINT to every worker
        # too, and uvicorn takes a second SIGINT as "force quit" (streams cut off unsettled).
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for i in range(count):
        children[_start(i, serve)] = (i, time.monotonic())
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index, started = children.pop(pid)
        exited = os.waitstatus_to_exitcode(status)
        if not stopping:
            young = time.monotonic() - started < CRASH_LOOP_SECONDS
            killed = exited < 0  # by a signal, not its own exit
            young_kills[index] = young_kills[index] + 1 if young and killed else 0
            if young and (not killed or young_kills[index] >= MAX_YOUNG_KILLS):
                log.error("gateway worker %d exited (%d) just after it started: stopping the others", index, exited)
                code = 1
                stop(signal.SIGTERM, None)
            else:
                log.error("gateway worker %d exited (%d): starting it again", index, exited)
                children[_start(index, serve)] = (index, time.monotonic())
        if reaped is not None:  # after its replacement is started: no connection across that fork
            try:
                reaped([pid])
            except Exception:
                log.exception("ending gateway worker %d's holds failed: the next sweep will", index)
    return code
