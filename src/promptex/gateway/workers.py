"""`promptex gateway serve --workers N`: N gateway processes sharing one listening socket.

The parent makes the listening socket (and its copies, `serving.listening_sockets`),
then forks N workers that each run a whole gateway (its own event loop, ledger
connections, metrics address at port + its index) accepting from that one socket: the
kernel hands each new connection to one of them. They share money and capacity only
through the PostgreSQL ledger, as separate machines would (SQLite takes one process per
file: `--workers` > 1 is refused there). The parent only supervises: SIGTERM and SIGINT
are passed on to every worker, and a worker that dies is started again — unless it died
within `CRASH_LOOP_SECONDS` of its start, then the others are stopped too and the
command fails (a configuration error would otherwise loop forever).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("promptex.gateway")
CRASH_LOOP_SECONDS = 5.0


def _start(index: int, serve: Callable[[int], None]) -> int:
    pid = os.fork()
    if pid == 0:  # the worker
        code = 0
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            serve(index)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("gateway worker %d failed", index)
            code = 1
        finally:
            os._exit(code)
    return pid


def run_workers(count: int, serve: Callable[[int], None]) -> int:
    """Run `serve(i)` in `count` forked workers until they are stopped; the exit code."""
    children: dict[int, tuple[int, float]] = {}  # pid → (index, started)
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

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
        if stopping:
            continue
        if time.monotonic() - started < CRASH_LOOP_SECONDS:
            log.error("gateway worker %d exited (%d) just after it started: stopping the others", index, exited)
            code = 1
            stop(signal.SIGTERM, None)
            continue
        log.error("gateway worker %d exited (%d): starting it again", index, exited)
        children[_start(index, serve)] = (index, time.monotonic())
    return code
