"""Lot health: a circuit breaker per lot, and the latency and error rates its seller sees.

A lot whose upstream failed (a timeout, a refused connection, a 5xx, a 429, a refused
key, no credit, an answer with no usage, a stream with no content and no usage, a stream
broken off before its end) `failures` times in a row, or `failures` times among its last
2 × `failures` answers served or failed — a lot failing every other request; a seller
serving requests of its own between buyers' failures (sbreak s17 B3), who must now pay for
more of its own than the failures it hides — is skipped for `cooldown` seconds; then
ONE request probes it (half-open) — the request that reaches it (`Gateway._in_order`): an
answer served closes the circuit, a failure opens it for another cool-down. A lot whose
key lacks the request's model (404 model_not_found) is skipped so for that model only (a
lot serves every model of its provider). A client error (any other 4xx: the request's
fault, `failure`) and a stream whose client left before its end close nothing and count
no failure: neither a buyer's doing nor a seller's own requests move the breaker
(`Gateway._once`, `Gateway.stream_done`).
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
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson
from sqlalchemy import Engine, case, select, update

from promptex.gateway.schema import lot_health
from promptex.ledger.journal import insert_ignore

KEY_REFUSED = frozenset({401, 403})
# Answered by a lot that cannot serve now, whatever the request: failed over, and a failure
# of the lot (`failure`). 402: its account is out of credit (OpenRouter).
LOT_STATUSES = frozenset({401, 402, 403, 408, 409, 429})
# A 4xx whose body decides whose fault it is (`failure`); others are the request's.
READ_STATUSES = frozenset({400, 402, 403, 404, 429})


@dataclass(frozen=True)
class Failure:
    """Why a lot's upstream answer is the lot's failure, not the request's (`failure`)."""

    what: str  # as the seller sees it (its last error) and the metrics' label
    model: bool = False  # the lot lacks the request's model: its (lot, model) circuit, not the lot's
    # The lot cannot serve THIS request (its size against the lot's own limits) and serves the
    # rest: failed over, another lot may serve it, but not counted (a buyer sends it for free).
    request: bool = False


def failure(status: int, content: bytes = b"") -> Failure | None:
    """Whether an upstream's answer (its status; for a 400, 403 or 404 its JSON body) shows
    the LOT cannot serve — failed over to the next lot and counted against this one — or
    None: it served, or refused what the request asked (a bad parameter, a prompt too long,
    input a moderation flagged), which every lot would refuse and a buyer could send on
    purpose to trip an honest seller's circuit.

    The lot's: a 5xx; 401/403 (its key refused or not permitted), 402 (out of credit), 408,
    409, 429; "Your credit balance is too low" (Anthropic answers it 400); and a model its
    key lacks — OpenAI's `model_not_found`, Anthropic's `not_found_error` "model: …", a 404
    about the `model` parameter saying it does not exist (vLLM; not OpenAI's "not supported in
    the v1/… endpoint", the request's), a LiteLLM proxy's 400 "Invalid model name" — which
    is the (lot, model)'s alone: a lot serves every model of its provider, and a key may lack
    one (sbreak s17 B4: such a lot answered every buyer of that model 404, never skipped).
    Not the lot's: a 403 that OpenRouter's moderation flagged (`metadata.flagged_input`).
    Failed over but not counted (`Failure.request`): a request larger than the lot's own
    limits allow — OpenAI's 429 "Request too large for …" (one request above the key's
    tokens-per-minute limit), OpenRouter's 402 "This request requires more credits, or fewer
    max_tokens" — which a buyer sends for free (not served anywhere: not charged) and which,
    counted, opened a low-tier lot's circuit in `failures` requests while it served the rest
    (e2break s18: the windowed breaker counts them whatever is served between).
    The fields read are the provider's (code, type, param, the message's start), never where
    a provider repeats a buyer's text."""
    if status >= 500:
        return Failure(str(status))
    if status < 400:
        return None
    error = _error_object(content) if status in READ_STATUSES else {}
    metadata = error.get("metadata")
    if status == 403 and isinstance(metadata, dict) and "flagged_input" in metadata:
        return None
    message = error.get("message")
    message = message if isinstance(message, str) else ""
    if (
        error.get("code") == "model_not_found"
        or (
            status == 404
            and (
                (error.get("param") == "model" and _NO_SUCH_MODEL.search(message) is not None)
                or (error.get("type") == "not_found_error" and message.startswith("model:"))
            )
        )
        or (status == 400 and _LITELLM_NO_MODEL.match(message))
    ):
        return Failure("model_not_found", model=True)
    if (status == 429 and message.startswith(_TOO_LARGE)) or (status == 402 and message.startswith(_TOO_COSTLY)):
        return Failure(str(status), request=True)
    if status in LOT_STATUSES:
        return Failure(str(status))
    if status == 400 and message.startswith("Your credit balance is too low"):
        return Failure("billing")
    return None


# A 404 about the `model` param that says the server has no such model (vLLM, SGLang: "The model
# `x` does not exist."). OpenAI answers 404 about `model` for a model the endpoint does not serve
# too — "This is a chat model and not supported in the v1/completions endpoint", "This is not a
# chat model …", "only supported in v1/responses" — which is the request's: every lot answers it
# so, and a buyer sending gpt-4o to /v1/completions (free: a 4xx is not charged), with a max rate
# that leaves only the cheaper lots, opened their (lot, model) circuits for every buyer (s3break s18).
_NO_SUCH_MODEL = re.compile(r"does not exist|not found", re.IGNORECASE)

# One request above what the lot's key may take at all (OpenAI: its tokens-per-minute limit; "Rate
# limit reached for" is the key's usage, the lot's), or its credit covers (OpenRouter: max_tokens).
_TOO_LARGE = "Request too large for "
_TOO_COSTLY = "This request requires more credits, or fewer max_tokens"

# A LiteLLM proxy without the model: "/chat/completions: Invalid model name passed in model=X. …",
# older ones "400: {'error': 'Invalid model name passed in model=X'}" — at the message's start.
_LITELLM_NO_MODEL = re.compile(r"(400: \{'error': ')?([\w/.]+: )?Invalid model name passed in model=")


def _error_object(content: bytes) -> dict[str, object]:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


@dataclass
class _Circuit:
    failures: int = 0  # in a row
    outcomes: int = 0  # its last outcomes, a bit each (1: failed), newest lowest (`LotHealth._window`)
    open_until: float = 0.0  # monotonic; 0: closed
    probe_at: float = 0.0  # half-open: when the one probing request was let through (0: none)


@dataclass
class _Lot(_Circuit):
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
        self._window = (1 << 2 * self.failures) - 1  # the last 2 × `failures` outcomes
        self.cooldown = cooldown
        self._clock = clock
        self._wall = wall
        self._lots: dict[int, _Lot] = collections.defaultdict(_Lot)
        self._models: dict[tuple[int, str], _Circuit] = {}  # a lot lacking a model (`Failure.model`)

    # ─── The breaker ─────────────────────────────────────────────────────────

    def _blocked(self, state: _Circuit | None, now: float) -> bool:
        # A probe that never reported (its request ended before the upstream) is not waited for forever.
        return bool(
            state is not None
            and state.open_until
            and (now < state.open_until or (state.probe_at and now < state.probe_at + self.cooldown))
        )

    def may_try(self, lot_id: int, model: str | None = None) -> bool:
        """Whether a request (for `model`) could try the lot now: neither its circuit nor its
        (lot, model)'s is open, or one past its cool-down has no probe in flight. Claims nothing."""
        now = self._clock()
        return not self._blocked(self._lots.get(lot_id), now) and (
            model is None or not self._blocked(self._models.get((lot_id, model)), now)
        )

    def allows(self, lot_id: int, model: str | None = None) -> bool:
        """Whether a request (for `model`) may try the lot now: an open circuit past its
        cool-down lets exactly one probe through — claimed here, by the request about to call
        the lot (`Gateway._in_order` asks lot by lot, as it reaches each)."""
        return self.claim(lot_id, model) is not None

    def claim(self, lot_id: int, model: str | None = None) -> bool | None:
        """`allows`, saying what it let through: None (may not try), True (this request claimed
        a probe: its to give back, `released`), False (tried without one: a closed circuit)."""
        if not self.may_try(lot_id, model):
            return None
        now = self._clock()
        claimed = False
        for state in (self._lots.get(lot_id), self._models.get((lot_id, model)) if model is not None else None):
            if state is not None and state.open_until:
                state.probe_at, claimed = now, True
        return claimed

    def released(self, lot_id: int, model: str | None = None) -> None:
        """A request's attempt at the lot ended: a probe it claimed and that neither served nor
        failed (a 4xx the request's, its client gone, no capacity) is given back, so the next
        request probes. Before (health s18), it stayed claimed for a whole cool-down: a buyer
        sending a bad request as each cool-down ended kept a recovered lot skipped, for free."""
        for state in (self._lots.get(lot_id), self._models.get((lot_id, model)) if model is not None else None):
            if state is not None:
                state.probe_at = 0.0

    def order(self, lot_ids: list[int], model: str | None = None) -> list[int]:
        """`lot_ids` without those a request may not try now (`may_try`); all of them if
        every one is open. Claims no probe."""
        allowed = [lot for lot in lot_ids if self.may_try(lot, model)]
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

    def closed(self, lot_id: int, model: str | None = None) -> None:
        """The lot served (`model`): its failures in a row end, its circuit closes (and the
        (lot, model)'s)."""
        for state in (self._lots[lot_id], self._models.get((lot_id, model)) if model is not None else None):
            if state is not None:
                # Its failures stay in the window: a lot closed by its probe is on probation — a
                # failure before enough successes pushed them out opens it again (health s18: it
                # started afresh, so a lot serving its probe and failing the rest cost buyers
                # `failures` failed requests each cool-down).
                state.outcomes = (state.outcomes << 1) & self._window
                state.failures = 0
                state.open_until = state.probe_at = 0.0

    def failed(
        self,
        lot_id: int,
        what: str,
        status: int | None = None,
        *,
        counted: bool = False,
        model: str | None = None,
    ) -> None:
        """A failure of the lot's upstream. `counted`: its request is counted already (a
        stream whose head came, `succeeded(..., closes=False)`, and then nothing). `model`:
        the lot lacks that model (`Failure.model`): in the lot's counts, its (lot, model)
        circuit's alone."""
        state = self._lots[lot_id]
        state.requests += 0 if counted else 1
        state.errors += 1
        state.last_error = (what if model is None else f"{what}: {model}")[:64]
        state.last_error_at = int(self._wall())
        if status in KEY_REFUSED and model is None:
            state.key_refused_at = state.last_error_at
        circuit: _Circuit = state if model is None else self._models.setdefault((lot_id, model), _Circuit())
        circuit.failures += 1
        circuit.outcomes = ((circuit.outcomes << 1) | 1) & self._window
        if circuit.probe_at or circuit.failures >= self.failures or circuit.outcomes.bit_count() >= self.failures:
            circuit.open_until = self._clock() + self.cooldown
        circuit.probe_at = 0.0

    def is_open(self, lot_id: int) -> bool:
        state = self._lots.get(lot_id)
        return bool(state and state.open_until and self._clock() < state.open_until)

    def circuits(self) -> Iterator[tuple[int, bool]]:
        for lot_id in list(self._lots):
            yield lot_id, self.is_open(lot_id)

    # ─── The report ──────────────────────────────────────────────────────────

    def flush(self, engine: Engine) -> None:
        """Add this process's counts since the last flush to the table (blocking). Each
        process has its own breaker: the table keeps the latest time any of them skips the
        lot until (before (health s18), a process where its circuit was closed wrote it back
        to none, so the seller and the attestor's review saw an open circuit only when the
        process skipping it had flushed last)."""
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
                    "updated_at": now,
                }
                if opened is not None:  # the latest any process skips it until; one where it is closed clears nothing
                    later = c.circuit_open_until > opened
                    values["circuit_open_until"] = case((later, c.circuit_open_until), else_=opened)
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
