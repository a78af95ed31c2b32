"""When to shed load: the gateway refuses new requests (fast 429s) while a queue stands.

Three queues show that the CPU (or the database) is saturated and that admitting more
work would only add latency: the event loop waking up late (callbacks wait for it), new
connections waiting in the listening socket's accept queue (requests the loop has not
even read), and ledger calls waiting for a thread. Each is judged by its minimum over a
short window, CoDel's idea: a burst makes a queue that drains by itself and shedding it
would refuse work the gateway can do, while a queue that never drained during the whole
window is overload.

With few requests in flight none of this is overload: a process descheduled on a busy
machine sees lag too, and a handful of clients connecting at once fill the accept queue.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class ShedLimits:
    wait: float  # seconds: the loop's lag and the ledger threads' wait
    accept_backlog: int  # connections
    min_inflight: int
    window: int  # samples


class OverloadDetector:
    def __init__(self, limits: ShedLimits) -> None:
        self.limits = limits
        size = self._size = max(1, limits.window)
        self._lags: collections.deque[float] = collections.deque(maxlen=size)
        self._waits: collections.deque[float] = collections.deque(maxlen=size)
        self._backlogs: collections.deque[int] = collections.deque(maxlen=size)

    def observe(self, *, loop_lag: float, accept_backlog: int, ledger_wait: float, inflight: int) -> bool:
        """Add one sample; True while the gateway should shed new requests."""
        self._lags.append(loop_lag)
        self._waits.append(ledger_wait)
        self._backlogs.append(accept_backlog)
        limits = self.limits
        if inflight < limits.min_inflight or len(self._lags) < self._size:
            return False  # not overload, or not yet a whole window seen
        late = min(self._lags) > limits.wait or min(self._waits) > limits.wait
        return late or min(self._backlogs) > limits.accept_backlog
