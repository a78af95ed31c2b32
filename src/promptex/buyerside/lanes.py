"""The lane book: which lane is free, what each lane was charged so far, and the highest
ceiling signed on it.

A lane carries one request at a time (the gateway refuses a second with 409 lane_busy);
concurrency comes from several lanes. What a lane was charged is known exactly from the
gateway's answers; after a lost answer (a dropped connection, a crash) it is only known
to be at most the last ceiling signed, and the lane says so (`exact` False) until the
next answer tells the figure again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any


class NoFreeLane(RuntimeError):
    """Every lane is carrying a request."""


@dataclass
class Lane:
    index: int
    charged: int = 0  # exact, or (exact False) an upper bound: the last ceiling signed
    exact: bool = True
    # The lane's last exactly known total (`charged` when exact): what a new ceiling is
    # built on. Built on the upper bound instead, each answer without figures would add a
    # hold to the highest ceiling for good (ceilings rise strictly), even one shown free.
    floor: int = 0
    signed: int = 0  # the highest ceiling signed on this lane in this session
    # The highest ceiling the gateway may have ACCEPTED: `signed` less the vouchers it
    # refused (a refusal says the voucher covers nothing). A refusal naming a lane total
    # above it is a lie; counting refused ceilings as charged would let a gateway that
    # refuses forever walk the lane up one hold per refusal.
    live: int = 0
    busy: bool = False
    # Not tried again before this (time.monotonic()): the gateway answered lane_busy, a
    # request still in flight there (often a crashed gateway's, until its hold expires).
    # Each request sent on such a lane risks a hold if its connection drops, so it is
    # probed now and then, not sent every request.
    rests_until: float = 0.0
    # Answers without the lane's figures (an error naming no total, a dropped connection)
    # not shown free: `pending` of them since the lane's total `errors_from` (exactly
    # known, or a bound: `errors_from_exact`), not yet told about by a later figure, and
    # the rest shown charged by one (`errors` counts both, as events: for saying why).
    errors: int = 0
    errors_from: int = 0
    errors_from_exact: bool = True
    pending: int = 0
    pending_hold: int = 0  # the largest hold among them
    # Streams their own client closed (`Signer.closed`) since `errors_from`, not yet told
    # about: `closed` of them, `allowance` what the bytes relayed of them allow (their input
    # bound, the output their bytes allow and a slack: an honest charge), `slack` the part
    # of it the slack gives (`Signer.closed`: charged, it weighs), and `closed_weight` the
    # sum of each one's hold less its allowance without the slack.
    closed: int = 0
    allowance: int = 0
    slack: int = 0
    closed_weight: int = 0
    # What the stop rule weighs (`Signer.stop_after_errors`, in units): `lost`, the units
    # later figures showed such answers charged (they count for good: the buyer paid for
    # answers it never received), and `lost_holds`, answers counted for good by a voucher
    # log written before the rule counted units (one largest hold each).
    lost: int = 0
    lost_holds: int = 0
    largest_hold: int = 0  # the largest hold signed on the lane in this session
    # The units of the lane's answers whose cost was checked exactly (price × tokens within
    # the bounds): the stop rule allows a tolerance of them (`Signer.tolerance_bp`).
    verified: int = 0
    # The units of checked answers' reported reasoning (OpenAI's reasoning, Anthropic's
    # thinking tokens): their price is checked, their count cannot be (nothing of them is
    # relayed), so they are not `verified`; beyond `Signer.reasoning_bp` of the lane's checked
    # units they weigh in the stop rule. In the voucher log's `charged` lines, until a resume.
    reasoning: int = 0

    def count_state(self) -> dict[str, Any]:
        """The stop rule's count of the lane, as the voucher log keeps it (`errors` lines)."""
        return {"errors": self.errors, "pending": self.pending, "from": str(self.errors_from),
                "from_exact": self.errors_from_exact, "hold": str(self.pending_hold), "lost": str(self.lost),
                "lost_holds": self.lost_holds, "closed": self.closed, "allowance": str(self.allowance),
                "closed_weight": str(self.closed_weight), "slack": str(self.slack),
                "live": str(self.live)}  # fmt: skip

    def in_flight(self, hold: int, base: int | None) -> None:
        """A request whose outcome never came (it was in flight when the proxy stopped),
        signed for `hold` on the exactly known total `base` (None: a bound): counted as an
        answer without figures (`Signer._without_figures`), the lane bounded by the highest
        ceiling the gateway may have accepted (`live`: its ceiling, when the log knows it)."""
        if self.pending == 0 and self.closed == 0:
            self.errors_from, self.errors_from_exact = (self.floor, False) if base is None else (base, True)
            self.pending_hold = self.allowance = self.slack = self.closed_weight = 0
        self.pending += 1
        self.pending_hold = max(self.pending_hold, hold)
        self.errors += 1
        self.charged, self.exact = max(self.charged, self.live), False


class LaneBook:
    """Lanes of one session; thread-safe (the httpx transport may be used from threads)."""

    def __init__(self, session: int, lanes: int, maximum: int) -> None:
        if lanes < 1:
            raise ValueError("a session has at least one lane")
        self.session = session
        self.maximum = maximum
        self.lanes = [Lane(i) for i in range(lanes)]
        self._free = threading.Condition()

    def acquire(self, timeout: float | None = None) -> Lane:
        """A free lane, marked busy; waits up to `timeout` seconds for one (None: for ever).
        A resting lane (`rest`) is free only once its rest is over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._free:
            while True:
                now = time.monotonic()
                idle = [lane for lane in self.lanes if not lane.busy]
                ready = [lane for lane in idle if lane.rests_until <= now]
                if ready:
                    # An exactly known lane first: its next check compares exact figures.
                    lane = min(ready, key=lambda lane: (not lane.exact, lane.index))
                    lane.busy = True
                    return lane
                if deadline is not None and now >= deadline:
                    raise NoFreeLane(
                        f"all {len(self.lanes)} lanes are carrying a request or waiting for one still in flight"
                    )
                wake = min((lane.rests_until for lane in idle), default=None)
                if deadline is not None:
                    wake = deadline if wake is None else min(wake, deadline)
                self._free.wait(None if wake is None else max(0.0, wake - now))

    def rest(self, lane: Lane, seconds: float) -> None:
        """The gateway says `lane` is still busy: not tried again for `seconds`."""
        with self._free:
            lane.rests_until = time.monotonic() + seconds

    def release(self, lane: Lane) -> None:
        with self._free:
            lane.busy = False
            self._free.notify()

    def exposure(self, lane: Lane | None = None, ceiling: int = 0) -> int:
        """What every lane's highest voucher allows in total, with `lane` signed up to `ceiling`:
        the most a session's vouchers can let be settled."""
        return sum(max(other.signed, ceiling) if other is lane else other.signed for other in self.lanes)

    def signed_total(self) -> int:
        return sum(lane.signed for lane in self.lanes)

    def charged_total(self) -> int:
        return sum(lane.charged for lane in self.lanes)
