"""The sweeper: releases holds whose request never settled before the hold expired, and
(PostgreSQL) the holds of gateway processes whose lock is free (`ledger.processes`)."""

from __future__ import annotations

import threading

from promptex.ledger.core import Ledger


class Sweeper:
    """Call `run_once` from a scheduler, or `start()` a daemon thread that sweeps every `interval` seconds."""

    def __init__(self, ledger: Ledger, *, interval: float = 30.0, batch: int = 1_000) -> None:
        self.ledger = ledger
        self.interval = interval
        self.batch = batch
        self.swept = 0
        self.passed = threading.Event()  # set after every pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Release every expired hold, a batch per transaction, end the holds of dead
        processes (PostgreSQL: status "orphaned"), then trim capacity leases (PostgreSQL:
        idle room back, dead processes' leases given back); returns how many holds."""
        total = 0
        while True:
            released = self.ledger.sweep_expired(self.batch)
            total += released
            if released < self.batch:
                break
        total += self.ledger.end_dead_processes()
        self.ledger.holds.maintain()
        self.swept += total
        self.passed.set()
        return total

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the sweeper is running already")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ledger-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)
