"""Blocking ledger calls off the event loop, on a few threads sized to the database.

Why not `anyio.to_thread`: in a profile of the gateway at load, handing each ledger call
to anyio's worker threads (a capacity limiter, a queue and a condition per call, one
wake-up of the loop per result) cost about as much CPU as the SQL it ran. Here the
threads share one queue and results go back through a deque and one byte on a pipe,
written only when the loop has drained the previous ones (so one wake-up serves every
result that finished meanwhile). Not `call_soon_threadsafe`: on uvloop, libuv's `uv_async_send` spins while
the loop thread handles the previous wake-up — holding the GIL the loop thread needs —
which showed as a quarter of the process's GIL time. SQLite has one writer at a time,
so it gets one thread; PostgreSQL as many as configured (at most its connection pool).
`wait` (how long calls wait for a thread, smoothed) tells the gateway when to shed load.

Group commit (`run_grouped`, with a `grouper` such as `Ledger.group`): calls that queued
up while the thread was busy run together in one transaction, each in a savepoint of its
own, and their callers hear of them only once it has committed — so what a caller is
told happened is as durable as before, and one commit (and one write of each page the
calls share) serves them all. No wait is added to form a group: a call that finds the
thread idle runs alone, so groups grow with the load, where they pay. A call that raises
is rolled back alone and raises to its caller; if the group's commit fails, nothing of
it happened and each call runs again alone (every grouped call is idempotent).

Inline (`inline`, such as `Ledger.try_writes`): a grouped call that finds the ledger idle —
nothing queued, grouped calls coming less often than one each `inline_gap` on average,
the write lock free at once — runs on the event loop itself, its writes committed before
its caller hears of it, exactly as on the thread. Why: at a low rate every call woke the
sleeping ledger thread and then the loop, and on an idle virtual machine a wake-up from
sleep costs more CPU than the call's SQL. At a high rate calls still go to the thread,
where they queue and share group commits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import anyio

from promptex.ledger.errors import WriterBusy

T = TypeVar("T")
_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...], float, bool]
_Result = tuple[asyncio.Future[Any], bool, Any]
MAX_GROUP = 64  # calls in one group commit at most (a bound on how long its first waits)
INLINE_GAP = 0.001  # seconds: grouped calls closer than this on average go to the thread


class LedgerThreads:
    def __init__(
        self,
        threads: int,
        name: str = "ledger",
        observe: Callable[[float], None] | None = None,
        grouper: Callable[[], AbstractContextManager[Any]] | None = None,
        max_group: int = MAX_GROUP,
        per_thread: Callable[[], AbstractContextManager[Any]] | None = None,
        inline: Callable[[], AbstractContextManager[Any] | None] | None = None,
        inline_gap: float = INLINE_GAP,
    ) -> None:
        # `inline`: the caller's writes begun at once, or None (`Ledger.try_writes`; `_inline`).
        self._inline_group = inline if grouper is not None and max_group > 1 else None
        self._inline_gap = inline_gap
        self._last_grouped = 0.0  # when the last grouped call was submitted
        self._gap = 0.0  # seconds between grouped calls, smoothed (`_inline`): none yet, as if fast
        self.inlined = 0  # grouped calls run on the event loop itself
        # `per_thread`: entered by each thread for as long as it lives (`Ledger.pinned_connection`).
        self._per_thread = per_thread or contextlib.nullcontext
        self._observe = observe  # each call's wait for a thread (the metrics)
        self._grouper = grouper if max_group > 1 else None
        self._max_group = max_group
        self.groups = 0  # group commits of more than one call, and the calls in them
        self.grouped = 0
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: collections.deque[_Result] = collections.deque()
        self._signalled = False
        self.wait = 0.0  # smoothed seconds a call waits for a thread: overload shows here first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> Coroutine[Any, Any, T]:
        """`fn(*args)` on a ledger thread, when awaited. The call runs to its end even if the
        caller is cancelled meanwhile (and the caller waits for it): money that moved is
        known. (`_submit`'s own coroutine: one frame fewer to resume at every wait.)"""
        return self._submit(fn, args, False)

    def run_grouped(self, fn: Callable[..., T], *args: Any) -> Coroutine[Any, Any, T]:
        """As `run`, but `fn` may share a group commit with other calls queued meanwhile.
        Only for idempotent ledger writes that write nothing outside the ledger's own
        transaction (see `Ledger.group`)."""
        return self._submit(fn, args, self._grouper is not None)

    async def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], grouped: bool) -> T:
        if grouped and self._inline_group is not None:
            outcome = self._inline(fn, args)
            if outcome is not None:
                ok, value = outcome
                if ok:
                    return value  # type: ignore[no-any-return]
                raise value
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                raise RuntimeError("LedgerThreads serves one event loop")
            self._loop = loop
            loop.add_reader(self._rfd, self._drain)
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((future, fn, args, time.perf_counter(), grouped))
        with anyio.CancelScope(shield=True):
            result = await future
        return result

    def _inline(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any] | None:
        """`fn(*args)` on the caller's thread while the ledger is idle (see the module's
        docstring): (True, its result) or (False, what it raised), its writes committed or
        rolled back as on the thread; None when the ledger is not idle, or a write found
        SQLite's lock taken by another process (nothing of it done: the thread runs it).
        It runs to its end on the loop, so a cancelled caller cannot leave it half done."""
        now = time.perf_counter()
        # The mean gap between grouped calls, smoothed: below `inline_gap` they come fast
        # enough to queue on the thread and share its group commits. Each gap counts at
        # most 4 × `inline_gap`, so that after a pause a burst reaches the thread within
        # a dozen calls.
        self._gap = 0.9 * self._gap + 0.1 * min(now - self._last_grouped, 4 * self._inline_gap)
        self._last_grouped = now
        if self._gap < self._inline_gap or not self._queue.empty() or self._inline_group is None:
            return None
        writes = self._inline_group()
        if writes is None:
            return None
        self._waited(now)  # it waited for no thread (the overload watch reads these waits)
        with writes:
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except WriterBusy:
                return None
            except Exception as exc:  # rolled back; the caller's, as on the thread
                outcome = (False, exc)
        self.inlined += 1
        return outcome

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._rfd)
        os.close(self._rfd)
        os.close(self._wfd)

    def _drain(self) -> None:
        """On the loop: hand the finished calls' results to their callers."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._rfd, 4096)
        self._signalled = False  # before draining: a result added from now on signals again
        done = self._done
        while done:
            future, ok, value = done.popleft()
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _work(self) -> None:
        _name_os_thread(threading.current_thread().name)
        with self._per_thread():
            self._serve()

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job[4]:
                self._done.append(self._call(job))
                self._signal()
                continue
            group: list[_Job] = [job]
            others: list[_Job] = []
            stop = False
            while len(group) < self._max_group:  # what queued meanwhile, taken without waiting
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                (group if more[4] else others).append(more)
            self._done.extend(self._group(group))
            self._signal()
            for other in others:
                self._done.append(self._call(other))
                self._signal()
            if stop:
                return

    def _call(self, job: _Job) -> _Result:
        future, fn, args, queued, _ = job
        self._waited(queued)
        try:
            return (future, True, fn(*args))
        except BaseException as exc:  # handed to the caller, like any result
            return (future, False, exc)

    def _group(self, jobs: list[_Job]) -> list[_Result]:
        """`jobs` in one transaction (a savepoint each); their results only once it committed."""
        if len(jobs) == 1 or self._grouper is None:
            return [self._call(job) for job in jobs]
        results: list[_Result] = []
        try:
            with self._grouper():
                results = [self._call(job) for job in jobs]
        except Exception:  # not committed: none of it happened; each runs alone (idempotent)
            return [self._call(job) for job in jobs]
        self.groups += 1
        self.grouped += len(jobs)
        return results

    def _waited(self, queued: float) -> None:
        waited = time.perf_counter() - queued
        self.wait = 0.9 * self.wait + 0.1 * waited
        if self._observe is not None:
            self._observe(waited)

    def _signal(self) -> None:
        if not self._signalled:
            self._signalled = True
            with contextlib.suppress(OSError):  # closed: nobody waits any more
                os.write(self._wfd, b"\0")


def _name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the OS too (Linux: `/proc/PID/task/TID/comm`,
    `top -H`), so its CPU can be told apart from the event loop's (bench/gateway.py)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: nothing to name
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
