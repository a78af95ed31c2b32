"""Lot health: a circuit breaker per lot, and the latency and error rates its seller sees.

A lot whose upstream failed `failures` times in a row (a timeout, a refused connection,
a 5xx, a 429, a refused key, an answer with no usage, a stream with no content and no
usage, a stream broken off before its end) is skipped for `cooldown` seconds; then ONE
request probes it (half-open): an answer served closes the circuit, a failure opens it
for another cool-down. A client error (4xx: the request's fault) and a stream whose
client left before its end close nothing and count no failure: neither a buyer's doing
nor a seller's own requests move the breaker (`Gateway._once`, `Gateway.stream_done`).
Requests are never refused because of it while another lot can serve them; when every
candidate is open the request still tries them (the breaker saves latency, it must not
invent an outage).

Counts per lot (requests, errors, the last error and when, latency of answers) are kept
in memory and added to the `gateway_lot_health` table by `flush` (with the lots'
refresh, every process adding its own), where `promptex seller health` and the
dashboard read them. A 401/403 from the upstream is recorded as the seller's key being
refused: the seller sees it. Health never slashes a bond and moves no money: the table is
the report the attestor reads.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Engine, select, update

from promptex.gateway.schema import lot_health
from promptex.ledger.journal import insert_ignore

KEY_REFUSED = frozenset({401, 403})


@dataclass
class _Lot:
    failures: int = 0  # in a row
    open_until: float = 0.0  # monotonic; 0: closed
    probe_at: float = 0.0  # half-open: when the one probing request was let through (0: none)
    # since the last flush:
    requests: int = 0
    errors: int = 0
    latency_ms_total: float = 0.0
    answered: int = 0
    last_error: str | None = None
    last_error_at: int | None = None
    key_refused_at: int | None = None
    recent: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=256))


@dataclass(frozen=True)
class LotReport:
    """What the seller sees of one lot (from the table: every process's counts)."""

    lot_id: int
    requests: int
    errors: int
    mean_latency_ms: int | None
    last_error: str | None
    last_error_at: int | None
    key_refused_at: int | None
    circuit_open_until: int | None
    updated_at: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class LotHealth:
    def __init__(
        self,
        failures: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.failures = max(1, failures)
        self.cooldown = cooldown
        self._clock = clock
        self._wall = wall
        self._lots: dict[int, _Lot] = collections.defaultdict(_Lot)

    # ─── The breaker ─────────────────────────────────────────────────────────

    def allows(self, lot_id: int) -> bool:
        """Whether a request may try the lot now (an open circuit past its cool-down lets
        exactly one probe through)."""
        state = self._lots.get(lot_id)
        if state is None or not state.open_until:
            return True
        now = self._clock()
        # A probe that never reported (its request ended before the upstream) is not waited for forever.
        if now < state.open_until or (state.probe_at and now < state.probe_at + self.cooldown):
            return False
        state.probe_at = now
        return True

    def order(self, lot_ids: list[int]) -> list[int]:
        """`lot_ids` without those whose circuit is open; all of them if every one is."""
        allowed = [lot for lot in lot_ids if self.allows(lot)]
        return allowed or lot_ids

    def succeeded(self, lot_id: int, latency_s: float, *, closes: bool = True) -> None:
        """The lot answered, in `latency_s`. `closes=False`: a stream's head, whose end
        decides (`closed`, or `failed(..., counted=True)` for one that brought nothing)."""
        state = self._lots[lot_id]
        state.requests += 1
        state.answered += 1
        state.latency_ms_total += latency_s * 1000
        state.recent.append(latency_s)
        if closes:
            self.closed(lot_id)

    def closed(self, lot_id: int) -> None:
        """The lot served: its failures in a row end, its circuit closes."""
        state = self._lots[lot_id]
        state.failures = 0
        state.open_until = state.probe_at = 0.0

    def failed(self, lot_id: int, what: str, status: int | None = None, *, counted: bool = False) -> None:
        """A failure of the lot's upstream. `counted`: its request is counted already (a
        stream whose head came, `succeeded(..., closes=False)`, and then nothing)."""
        state = self._lots[lot_id]
        state.requests += 0 if counted else 1
        state.errors += 1
        state.failures += 1
        state.last_error = what
        state.last_error_at = int(self._wall())
        if status in KEY_REFUSED:
            state.key_refused_at = state.last_error_at
        if state.probe_at or state.failures >= self.failures:
            state.open_until = self._clock() + self.cooldown
        state.probe_at = 0.0

    def is_open(self, lot_id: int) -> bool:
        state = self._lots.get(lot_id)
        return bool(state and state.open_until and self._clock() < state.open_until)

    def circuits(self) -> Iterator[tuple[int, bool]]:
        for lot_id in list(self._lots):
            yield lot_id, self.is_open(lot_id)

    # ─── The report ──────────────────────────────────────────────────────────

    def flush(self, engine: Engine) -> None:
        """Add this process's counts since the last flush to the table (blocking)."""
        now = int(self._wall())
        for lot_id, state in list(self._lots.items()):
            opened = int(now + state.open_until - self._clock()) if self.is_open(lot_id) else None
            if not (state.requests or state.key_refused_at or opened):
                continue
            counts = (state.requests, state.errors, state.answered, state.latency_ms_total)
            error, error_at, refused = state.last_error, state.last_error_at, state.key_refused_at
            state.requests = state.errors = state.answered = 0
            state.latency_ms_total = 0.0
            state.key_refused_at = None
            with engine.begin() as conn:
                insert_ignore(
                    conn,
                    lot_health,
                    {"lot_id": lot_id, "requests": 0, "errors": 0, "answered": 0, "latency_ms_total": 0,
                     "updated_at": now},
                )  # fmt: skip
                c = lot_health.c
                values: dict[str, object] = {
                    "requests": c.requests + counts[0],
                    "errors": c.errors + counts[1],
                    "answered": c.answered + counts[2],
                    "latency_ms_total": c.latency_ms_total + round(counts[3]),
                    "circuit_open_until": opened,
                    "updated_at": now,
                }
                if error is not None:
                    values.update(last_error=error, last_error_at=error_at)
                if refused is not None:
                    values["key_refused_at"] = refused
                conn.execute(update(lot_health).where(c.lot_id == lot_id).values(**values))


def reports(engine: Engine, lot_ids: list[int] | None = None) -> list[LotReport]:
    """Every lot's health as recorded (or those of `lot_ids`)."""
    query = select(lot_health).order_by(lot_health.c.lot_id)
    if lot_ids is not None:
        query = query.where(lot_health.c.lot_id.in_(lot_ids))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        LotReport(
            r.lot_id, r.requests, r.errors, round(r.latency_ms_total / r.answered) if r.answered else None,
            r.last_error, r.last_error_at, r.key_refused_at, r.circuit_open_until, r.updated_at,
        )
        for r in rows
    ]  # fmt: skip
