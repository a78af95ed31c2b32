"""Limits per API key, per org member and per org: requests per minute, tokens per minute,
requests in flight, and cost per window.

Every limit is a counter taken in the SAME ledger transaction as the request's hold,
through the hold book's extension point (`ledger.holds.extras`): a request over any
limit holds nothing (no funds, no capacity, no other counter), and requests in flight
never take a counter past its limit, in one process or many sharing PostgreSQL (the
conditional UPDATE on the counter's row is the one arbiter). Tokens and cost are taken
at their upper bound when the hold is made (the input bound from the body's size plus
the output limit sent upstream; the hold's amount) and settled to the actual usage and
charge with the hold; a released hold gives them back, an expired one keeps them in their
windows for a late answer (`LimitCounters.give_back`). A request counts
against requests per minute once admitted, whatever its end; a concurrent slot is
given back when it ends.

An API key's budget (a lifetime cost limit, on the key's own row) is taken here too, at
the hold's amount, settled to the charge and given back with a released hold. An EXPIRED
hold keeps it taken until its late answer settles it (the charge kept, the rest back) or
until its late-answer horizon — `late_seconds` after the hold was made: the gateway's
request deadline plus its margin, past which no live gateway settles a request — then
`trim` gives it back, leaving a mark on its row. A late answer metered after the horizon,
or once its row carries the mark (a process whose clock runs ahead gave it back), is
refused (`LateAnswerRefused`: nothing charged, the hold stays expired). So every charge is
settled against a take the budget's conditional UPDATE admitted, and a key's requests are
never charged beyond its budget; the price is a killed gateway's requests holding their
key's budget until their horizon.

Windows are fixed: the minute (ledger clock) for requests and tokens, `cost_window_seconds`
for cost; a refusal's retry-after is the time left in the window that refused (1 s for
requests in flight). The subjects: `key:ID`, `member:ORG:ACCOUNT` (a member key's
account at its org) and `org:ORG` (every member's requests together).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, and_, bindparam, delete, exists, insert, literal, select, update

from promptex.gateway.schema import api_keys, limit_counters, limit_takes, limits
from promptex.gateway.store import ApiKey
from promptex.ledger import HoldConflict, Refusal
from promptex.ledger.amounts import Amount, add, ge, sub
from promptex.ledger.journal import insert_ignore
from promptex.ledger.models import Hold, HoldStatus
from promptex.ledger.usage import UsageRecord

NAME = "limits"
REQUESTS, TOKENS, CONCURRENT, COST = "requests", "tokens", "concurrent", "cost"
BUDGET = "budget"  # an API key's budget: its take's row names the key (`key:ID`), window 0
# (an expired hold's kept take: its late-answer horizon)
# The mark a budget take leaves when it is given back past its horizon (amount 0; window:
# when `trim` deletes it). A late settle that finds it is refused whatever its own clock
# says: the budget went back, so a charge now would count against nothing.
BUDGET_BACK = "budget_back"
BUDGET_BACK_KEPT = 86_400  # seconds the mark stays: processes' clocks within a day agree
# Seconds an ended window's counter (and its takes) outlives the window before `trim` deletes
# it: longer than any clock skew between processes we defend and any reserve's wait for its
# transaction — a reserve still inside the window would recreate a deleted counter at 0.
WINDOW_KEPT_SECONDS = 600
MINUTE = 60
# Seconds after a hold was made that its late answer is still settled: the gateway's
# defaults, a request deadline of 600 s plus a 60 s margin (`Gateway` passes its own).
LATE_SECONDS = 660
TRIM_BATCH = 1_000  # expired holds' budget takes given back per `trim`
WHAT = {
    REQUESTS: "requests per minute",
    TOKENS: "tokens per minute",
    CONCURRENT: "requests in flight",
    COST: "cost per window",
}


@dataclass(frozen=True)
class Limits:
    """One subject's limits; None: no such limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent: int | None = None
    cost: int | None = None  # smallest units of cost_asset per window
    cost_asset: str | None = None
    cost_window_seconds: int = 3_600

    def __post_init__(self) -> None:
        for value in (self.requests_per_minute, self.tokens_per_minute, self.concurrent, self.cost):
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError("a limit is a non-negative integer")
        if (self.cost is None) != (self.cost_asset is None):
            raise ValueError("a cost limit names its asset")
        if self.cost_window_seconds <= 0:
            raise ValueError("a cost window is positive")

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.requests_per_minute, self.tokens_per_minute, self.concurrent, self.cost))


class LimitExceeded(Refusal):
    """A request over one of its subject's limits (the gateway answers 429)."""

    def __init__(self, message: str, *, available: int, retry_after: int) -> None:
        super().__init__(message, available=available)
        self.retry_after = retry_after


class KeyBudgetExceeded(Refusal):
    """The API key's own budget does not cover the hold."""


class LateAnswerRefused(HoldConflict):
    """An expired hold's answer metered after its late-answer horizon: its request is over
    (its limits and its key's budget were given back), so it is not charged."""


def key_subject(key: ApiKey) -> str:
    return f"key:{key.id}"


def subjects(key: ApiKey) -> list[str]:
    """Whose limits a key's request counts against, in the order they are taken."""
    named = [key_subject(key)]
    if key.payer is not None:
        named += [f"member:{key.payer}:{key.account}", f"org:{key.payer}"]
    return named


# ─── Setting and reading limits ──────────────────────────────────────────────


def set_limits(engine: Engine, subject: str, new: Limits, now: int) -> None:
    """Set (or, with no limit in `new`, remove) a subject's limits."""
    values = {
        "requests_per_minute": new.requests_per_minute,
        "tokens_per_minute": new.tokens_per_minute,
        "concurrent": new.concurrent,
        "cost": new.cost,
        "cost_asset": new.cost_asset,
        "cost_window_seconds": new.cost_window_seconds,
        "updated_at": now,
    }
    with engine.begin() as conn:
        conn.execute(delete(limits).where(limits.c.subject == subject))
        if not new.empty:
            conn.execute(insert(limits).values(subject=subject, **values))


def limits_of(engine: Engine, names: Sequence[str]) -> list[tuple[str, Limits]]:
    """The limits set for any of `names`, in their order."""
    with engine.connect() as conn:
        rows = {r.subject: r for r in conn.execute(select(limits).where(limits.c.subject.in_(list(names))))}
    found = []
    for name in names:
        r = rows.get(name)
        if r is not None:
            found.append(
                (
                    name,
                    Limits(
                        r.requests_per_minute, r.tokens_per_minute, r.concurrent, r.cost, r.cost_asset,
                        r.cost_window_seconds,
                    ),
                )
            )  # fmt: skip
    return found


# ─── The extra counter taken with the hold ───────────────────────────────────

_AMOUNT = bindparam("p_amount", type_=Amount())
_KEY = and_(
    limit_counters.c.subject == bindparam("p_subject"),
    limit_counters.c.kind == bindparam("p_kind"),
    limit_counters.c.window_start == bindparam("p_window"),
)
_TAKE = (
    update(limit_counters)
    .where(_KEY, ge(bindparam("p_limit", type_=Amount()), add(limit_counters.c.used, _AMOUNT)))
    .values(used=add(limit_counters.c.used, _AMOUNT))
)
_GIVE = update(limit_counters).where(_KEY).values(used=sub(limit_counters.c.used, _AMOUNT))
_COUNT = update(limit_counters).where(_KEY).values(used=add(limit_counters.c.used, _AMOUNT))  # no limit: served
_USED = select(limit_counters.c.used).where(_KEY)
_KEY_ID = api_keys.c.id == bindparam("p_key")
_TAKE_KEY_BUDGET = (
    update(api_keys)
    .where(_KEY_ID, ge(api_keys.c.budget_remaining, _AMOUNT))
    .values(budget_remaining=sub(api_keys.c.budget_remaining, _AMOUNT))
)
_GIVE_KEY_BUDGET = update(api_keys).where(_KEY_ID).values(budget_remaining=add(api_keys.c.budget_remaining, _AMOUNT))
_KEY_BUDGET = select(api_keys.c.budget_remaining).where(_KEY_ID)
_EMPTY_KEY_BUDGET = update(api_keys).where(_KEY_ID).values(budget_remaining=0)


@dataclass(frozen=True)
class Plan:
    """What one request counts against: its subjects' limits, its token bound, and the
    API key whose budget it takes (None: the key has none)."""

    limits: Sequence[tuple[str, Limits]]
    tokens: int
    budget_key: int | None = None


class LimitCounters:
    """The `Extra` (see `ledger.holds.extras`) that takes a request's limits with its hold.

    The gateway names the request's plan (`plan`) just before it reserves, on the same
    thread; settling and giving back read only this extra's own rows, so any process's
    sweeper gives back what a dead one took."""

    name = NAME

    def __init__(self, clock: Callable[[], int], late_seconds: int = LATE_SECONDS) -> None:
        """`clock`: the ledger's (read again inside a late settle, once its takes are locked:
        a `trim` that gave them back committed before it). `late_seconds`: how long after a
        hold was made its late answer is still settled; every process the same."""
        if late_seconds < 0:
            raise ValueError("a late-answer horizon is not negative")
        self.clock = clock
        self.late_seconds = late_seconds
        self._plans: dict[str, Plan] = {}
        self._lock = threading.Lock()

    def plan(self, request_id: str, plan: Plan | None) -> None:
        with self._lock:
            if plan is None:
                self._plans.pop(request_id, None)
            else:
                self._plans[request_id] = plan

    def take(self, conn: Connection, hold: Hold, amount: int) -> None:
        with self._lock:
            plan = self._plans.get(hold.request_id)
        if plan is None:
            raise RuntimeError(f"request {hold.request_id!r} took the limits without a plan")
        now = hold.created_at
        for subject, subject_limits in plan.limits:
            for kind, limit, take, window, length in _wanted(subject_limits, hold, plan.tokens, now):
                params = {"p_subject": subject, "p_kind": kind, "p_window": window}
                insert_ignore(
                    conn,
                    limit_counters,
                    {"subject": subject, "kind": kind, "window_start": window, "ends_at": window + length, "used": 0},
                )
                taken = conn.execute(_TAKE, {**params, "p_amount": take, "p_limit": limit}).rowcount
                if taken != 1:
                    used: int = conn.execute(_USED, params).scalar_one()
                    retry = 1 if kind == CONCURRENT else max(1, window + length - now)
                    what = "this API key's" if subject.startswith("key:") else f"{subject.split(':')[0]}'s"
                    raise LimitExceeded(
                        f"{what} limit of {limit} {WHAT[kind]} is reached; retry in {retry} s",
                        available=max(0, limit - used),
                        retry_after=retry,
                    )
                conn.execute(
                    insert(limit_takes).values(
                        request_id=hold.request_id, subject=subject, kind=kind, window_start=window, amount=take
                    )
                )
        if plan.budget_key is not None:  # after the counters: one lock order with `_end`
            params = {"p_key": plan.budget_key, "p_amount": hold.amount}
            if conn.execute(_TAKE_KEY_BUDGET, params).rowcount != 1:
                left = conn.execute(_KEY_BUDGET, params).scalar()
                raise KeyBudgetExceeded("this API key's budget is spent", available=int(left or 0))
            conn.execute(
                insert(limit_takes).values(
                    request_id=hold.request_id, subject=f"key:{plan.budget_key}", kind=BUDGET, window_start=0,
                    amount=hold.amount,
                )
            )  # fmt: skip

    def settle(self, conn: Connection, hold: Hold, record: UsageRecord | None, late: bool) -> None:
        """Keep what was used: the request, the tokens it processed, what it was charged.
        A late answer past its horizon is refused (the whole settle rolls back)."""
        if late:
            # Its budget take locked first: a `trim` giving it back either skips it (and this
            # settle settles it) or committed before — and then the clock, read now, is past
            # the horizon. Only that row: trim deletes ended windows' takes while it holds
            # their counters, which this settle updates next.
            # A mark instead of the take: given back by a process whose clock or horizon
            # ran ahead of this one's — refused whatever this clock says.
            mine = (limit_takes.c.request_id == hold.request_id, limit_takes.c.kind.in_((BUDGET, BUDGET_BACK)))
            locked = conn.execute(select(limit_takes.c.kind).where(*mine).with_for_update())
            kinds: Sequence[str] = locked.scalars().all()
            if BUDGET not in kinds:
                # No take to settle: a trim may have given it back while this read waited for
                # its lock — on PostgreSQL that read's snapshot predates the trim's commit, so
                # it saw the take vanish but not the mark the trim left. Read again (a new
                # statement, a new snapshot): else this clock alone would judge, and a process
                # behind the trimming one charged the answer against a budget already back.
                kinds = conn.execute(select(limit_takes.c.kind).where(*mine)).scalars().all()
            horizon = hold.created_at + self.late_seconds
            if self.clock() > horizon or BUDGET_BACK in kinds:
                raise LateAnswerRefused(
                    f"request {hold.request_id!r} was answered after its late-answer horizon ({horizon}): not charged"
                )
        used: dict[str, int | None] = {REQUESTS: None, CONCURRENT: 0}
        if record is not None:
            used[TOKENS] = record.input_tokens + record.output_tokens
        used[COST] = used[BUDGET] = hold.charged if hold.charged is not None else hold.cost
        self._end(conn, hold.request_id, used)

    def give_back(self, conn: Connection, hold: Hold) -> None:
        """Nothing was served: every counter back but the request itself. An EXPIRED hold
        may still be answered late (its process hung, or was killed after its upstream call)
        and that answer is charged whole: so its tokens and cost stay taken in their windows
        until it settles (then to the actual) or `trim` drops its window, and its key's budget until
        it settles or its horizon passes (`trim`) — were they given back, the room or the
        budget would admit other requests and the late charge would overshoot the limit.
        Its request-in-flight slot is given back. A hold swept after its horizon gives its
        budget back at once."""
        if hold.status == HoldStatus.EXPIRED:
            horizon = hold.created_at + self.late_seconds
            waits = hold.closed_at is None or hold.closed_at <= horizon
            used: dict[str, int | None] = {REQUESTS: None, CONCURRENT: 0, TOKENS: None, COST: None}
            used[BUDGET] = None if waits else 0
            if not waits:  # its budget back at once, a mark left in its take's place
                _mark_given_back(conn, [hold.request_id], self.clock())
            keep = (TOKENS, COST, BUDGET) if waits else (TOKENS, COST, BUDGET_BACK)
            self._end(conn, hold.request_id, used, keep=keep, until=horizon)
        else:
            used = {REQUESTS: None, CONCURRENT: 0, TOKENS: 0, COST: 0, BUDGET: 0}
            self._end(conn, hold.request_id, used)

    @staticmethod
    def _end(
        conn: Connection, request_id: str, used: dict[str, int | None], *, keep: Sequence[str] = (), until: int = 0
    ) -> None:
        """Each take settled to what `used` keeps of it (None: all of it). `keep`: the kinds
        whose take rows stay for a late answer, as they are (the budget's marked with its
        horizon, `until`)."""
        rows = conn.execute(
            select(limit_takes)
            .where(limit_takes.c.request_id == request_id)
            .order_by(limit_takes.c.subject, limit_takes.c.kind)
        ).all()
        budget = None
        for row in rows:
            kept = used.get(row.kind)
            if row.kind == BUDGET:
                budget = row  # last: the key's row is locked after the counters' (and the takes')
                continue
            if kept is None:
                continue  # the request itself stays counted; tokens without a record: as held
            params = {"p_subject": row.subject, "p_kind": row.kind, "p_window": row.window_start}
            back = row.amount - min(row.amount, kept)
            if back:
                conn.execute(_GIVE, {**params, "p_amount": back})
            elif row.kind == COST and kept > row.amount:
                # Charged above its take (a late answer, charged whole; or a covered overage):
                # counted whole in its window, past the limit if need be (it was served), so
                # the window admits only what is left of it.
                conn.execute(_COUNT, {**params, "p_amount": kept - row.amount})
        # The takes before the key's row, as `trim` locks them: a settle holding the key's
        # row while it waited for a take a trim deleted (that trim then waiting for the
        # key's row to give an expired hold's budget back) deadlocked on PostgreSQL.
        if keep and rows:
            mine = limit_takes.c.request_id == request_id
            conn.execute(delete(limit_takes).where(mine, limit_takes.c.kind.not_in(keep)))
            if BUDGET in keep and budget is not None:
                conn.execute(update(limit_takes).where(mine, limit_takes.c.kind == BUDGET).values(window_start=until))
        elif rows:
            conn.execute(delete(limit_takes).where(limit_takes.c.request_id == request_id))
        if budget is not None and used.get(BUDGET) is not None:
            key = int(budget.subject.split(":", 1)[1])
            _settle_key_budget(conn, key, budget.amount, used.get(BUDGET) or 0)


def _settle_key_budget(conn: Connection, key: int, taken: int, charged: int) -> None:
    """The key's budget keeps `charged` of the `taken` it gave the hold: the rest back, or
    more taken (a charge beyond the hold: an answer metered late), down to zero at most."""
    params = {"p_key": key, "p_amount": abs(taken - charged)}
    if taken > charged:
        conn.execute(_GIVE_KEY_BUDGET, params)
    elif charged > taken and conn.execute(_TAKE_KEY_BUDGET, params).rowcount != 1:
        conn.execute(_EMPTY_KEY_BUDGET, params)


def _wanted(lim: Limits, hold: Hold, tokens: int, now: int) -> list[tuple[str, int, int, int, int]]:
    """(kind, limit, amount to take, window start, window length) for each limit that applies."""
    minute = now - now % MINUTE
    wanted: list[tuple[str, int, int, int, int]] = []
    if lim.requests_per_minute is not None:
        wanted.append((REQUESTS, lim.requests_per_minute, 1, minute, MINUTE))
    if lim.tokens_per_minute is not None:
        wanted.append((TOKENS, lim.tokens_per_minute, tokens, minute, MINUTE))
    if lim.concurrent is not None:
        wanted.append((CONCURRENT, lim.concurrent, 1, 0, 2**62))
    if lim.cost is not None and lim.cost_asset == hold.asset:
        length = lim.cost_window_seconds
        wanted.append((COST, lim.cost, hold.amount, now - now % length, length))
    return sorted(wanted)  # one lock order on the counters' rows (with `subjects`' order)


def trim(engine: Engine, now: int) -> int:
    """Delete counters of windows that ended `WINDOW_KEPT_SECONDS` ago (a request still in
    flight that took from one gives back nothing there: the window is over), and the takes
    in them (an expired hold's, kept for a late answer that never came); give back the key
    budget expired holds kept past their horizon, deleting their takes. Returns how many
    counters. Not at the window's end: a reserve whose clock was read inside the window
    (before this trim committed, or on a process behind this one) would then create the
    window's counter afresh at 0, and the window would admit its limit twice (mbreak)."""
    with engine.begin() as conn:
        ended = limit_counters.c.ends_at < now - WINDOW_KEPT_SECONDS
        done = delete(limit_counters).where(limit_counters.c.kind != CONCURRENT, ended)
        count = int(conn.execute(done).rowcount or 0)
        counted = exists().where(
            limit_counters.c.subject == limit_takes.c.subject,
            limit_counters.c.kind == limit_takes.c.kind,
            limit_counters.c.window_start == limit_takes.c.window_start,
        )
        conn.execute(delete(limit_takes).where(limit_takes.c.kind.in_((REQUESTS, TOKENS, COST)), ~counted))
        conn.execute(delete(limit_takes).where(limit_takes.c.kind == BUDGET_BACK, limit_takes.c.window_start < now))
        _past_horizon(conn, now)  # after the counters and takes: a settle locks counters, takes, then keys
        return count


def _past_horizon(conn: Connection, now: int) -> None:
    """Expired holds' budget takes whose horizon passed (an active hold's is at 0): given
    back to their keys, each row left as a mark (`BUDGET_BACK`). Rows a late settle has
    locked are skipped: it settles or refuses them itself."""
    rows = conn.execute(
        select(limit_takes.c.request_id, limit_takes.c.subject, limit_takes.c.amount)
        .where(limit_takes.c.kind == BUDGET, limit_takes.c.window_start > 0, limit_takes.c.window_start < now)
        .order_by(limit_takes.c.request_id)
        .limit(TRIM_BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return
    given = [r.request_id for r in rows]
    _mark_given_back(conn, given, now)
    conn.execute(delete(limit_takes).where(limit_takes.c.kind == BUDGET, limit_takes.c.request_id.in_(given)))
    back: dict[int, int] = {}
    for row in rows:
        key = int(row.subject.split(":", 1)[1])
        back[key] = back.get(key, 0) + int(row.amount)
    for key, amount in sorted(back.items()):  # one lock order on the keys' rows
        if amount:
            conn.execute(_GIVE_KEY_BUDGET, {"p_key": key, "p_amount": amount})


def _mark_given_back(conn: Connection, request_ids: Sequence[str], now: int) -> None:
    """A mark beside each of these requests' budget take, which is being given back (the
    caller deletes the take); `trim` deletes the mark `BUDGET_BACK_KEPT` seconds on."""
    conn.execute(
        insert(limit_takes).from_select(
            ["request_id", "subject", "kind", "window_start", "amount"],
            select(
                limit_takes.c.request_id,
                limit_takes.c.subject,
                literal(BUDGET_BACK),
                literal(now + BUDGET_BACK_KEPT),
                literal(0),
            ).where(limit_takes.c.kind == BUDGET, limit_takes.c.request_id.in_(request_ids)),
        )
    )
