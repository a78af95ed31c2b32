"""Throughput for the log: blocks/s, events/s and how far behind the head the indexer is."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Totals:
    """What one run did: blocks and events indexed, events undone by reorgs, where it stands."""

    blocks: int = 0
    events: int = 0
    undone: int = 0
    rewinds: int = 0
    block: int = -1  # the last indexed block
    head: int = -1
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    @property
    def lag(self) -> int:
        return max(0, self.head - self.block)


@dataclass
class Progress:
    """Logs a line every `every` seconds (and on demand) from running totals."""

    log: logging.Logger
    every: float = 10.0
    clock: Callable[[], float] = time.monotonic
    totals: Totals = field(default_factory=Totals)
    _last: float = field(default=0.0, init=False)
    _last_blocks: int = field(default=0, init=False)
    _last_events: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._last = self.clock()

    def tick(self, *, force: bool = False) -> None:
        now = self.clock()
        elapsed = now - self._last
        if not force and elapsed < self.every:
            return
        t = self.totals
        elapsed = max(elapsed, 1e-9)
        self.log.info(
            "indexed to block %d (head %d, lag %d): %.0f blocks/s, %.0f events/s; %d events in all",
            t.block,
            t.head,
            t.lag,
            (t.blocks - self._last_blocks) / elapsed,
            (t.events - self._last_events) / elapsed,
            t.events,
        )
        self._last, self._last_blocks, self._last_events = now, t.blocks, t.events
