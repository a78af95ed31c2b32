"""A sliding-window count per key: how the dashboard caps new accounts per client address,
and the coordinator's door the requests of each wallet.

A binding challenge for a wallet nobody has bound yet creates an (empty) account for it
to sign for; without a cap, a script could create accounts without end. A wallet asking
again reuses its pending account, so only new wallets count.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class Throttle:
    """At most `limit` events per `window` seconds for each key (e.g. a client's address)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one event for `key` if it is under the limit; False (nothing counted) if not."""
        now = self.clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            if len(self._events) > 10_000:  # forget clients that have gone quiet
                self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - self.window}
            return True

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may count one more event (0 when it may now)."""
        now = self.clock()
        with self._lock:
            events = self._events.get(key)
            if not events or len(events) < self.limit:
                return 0.0
            return max(0.0, events[-self.limit] + self.window - now)
