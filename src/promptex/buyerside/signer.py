"""The signer: one object that decides each request's hold, picks a lane, signs the lane's
new ceiling, writes it to the voucher log (fsync'd) and only then lets the request go; and
that checks each answer against what was signed, stopping — saying why — when one is
beyond what its request allows.

    ticket = signer.begin("/v1/chat/completions", body)     # raises Refused
    headers[VOUCHER_HEADER] = ticket.voucher.header()
    … send …
    signer.finish(ticket, status, headers, content)
    # or, when no answer came: signer.unsent(ticket) (no connection was made),
    # signer.dropped(ticket) (the connection broke after the request left), signer.closed(ticket,
    # bytes relayed) (the client left before the end)

The transport (`transport`) and the local proxy (`proxy`) are thin layers over it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from promptex import metering
from promptex.buyerside import answers
from promptex.buyerside.answers import AnswerRefused, Bounds, RateBook
from promptex.buyerside.lanes import Lane, LaneBook, NoFreeLane
from promptex.buyerside.voucherlog import Identity, Stop, VoucherLog, VoucherLogError
from promptex.buyerside.wire import (
    COST_UNITS_HEADER,
    LANE_CHARGED_HEADER,
    LANE_HEADER,
    LOT_HEADER,
    LOT_RATE_HEADER,
    VOUCHER_HEADER,
    Voucher,
    WireError,
    units,
    voucher_of,
)
from promptex.gateway.adapters import finishes_choice, may_write_cache
from promptex.gateway.charges import FIELD as PROMPTEX_FIELD  # the cost field on a stream's last event
from promptex.gateway.errors import (
    OVERLOADED,
    SIGNED_CROSS_TOKEN,
    TOO_MANY_CONNECTIONS,
    UNREAD,
    UNREAD_HEADER,
    percent,
    signed_cross_token_message,
)
from promptex.metering.produced import ANSWER_FRAME_BYTES, event_bytes, read_json, unshown_output, visible_bytes
from promptex.protocol.units import BPS, money_exact
from promptex.protocol.vault import recover_voucher_signer, sign_voucher

log = logging.getLogger("promptex.buyerside")
DEFAULT_OUTPUT_TOKENS = 1_024  # the output a request naming no max_tokens is held for
# N: the holds a lane may give beyond the true cost of the answers received, in the worst
# case, before signing stops. Answers without the lane's figures (an error naming no lane
# total, a stream ending without its last event, a connection dropped after the request
# left) cannot be checked, so a gateway answering errors, or charging and dropping every
# connection, would otherwise walk the lane up one hold per request. Such an answer weighs
# its whole hold until a later figure of the lane, measured from an exactly known total,
# tells what it charged: then exactly that, for good (a killed gateway's swept hold: 0,
# forgiven; a gateway killed after its settle committed: what it charged; "N−1 errors, one
# answer" forever adds up too). Signing stops when they weigh more than N − 1 of the
# lane's largest hold: with the hold of the request in flight, N holds. So N answers
# without figures in a row stop it, as N charged in full do; an honest gateway's crash
# that charged a quarter of a hold uses a quarter.
STOP_AFTER_ERRORS = 3
# A stream its own client closed was charged, by an honest gateway, its input and the output
# it streamed so far (`gateway.service.Gateway.stream_done`: at least a token per content
# chunk). This side saw the bytes it relayed; what the gateway sent and counted that this
# side never relayed — the chunk it holds back for its charge, chunks in the socket between
# the two when the close reached the gateway — is a few chunks, a token or so each. So a
# closed stream's allowance (what it may honestly have cost) is its input bound and its
# relayed bytes as output tokens plus this many. Each close a gateway can induce (stall until
# the client gives up) gives it at most this slack's output cost, never a hold.
CLOSE_SLACK_TOKENS = 32
# The stop rule's tolerance, in basis points of the lane's exactly checked units
# (`Lane.verified`): the threshold is N − 1 largest holds plus this share of them. Without
# it the weight never decays: an honest gateway killed now and then after a settle commits
# (a real loss each, of what it charged) stops a long session's lane once those add up to
# N − 2 holds. With it, such small losses may add up to 1 % of what the lane's checked
# answers cost before they count against the holds; a dishonest gateway gains at most that
# 1 % beyond the N holds. 0: no tolerance (the rule before it).
STOP_TOLERANCE_BP = 100
BASIS_POINTS = 10_000
# Reported reasoning tokens (OpenAI's `reasoning_tokens`, Anthropic's `thinking_tokens`) are
# inside an answer's output tokens, but nothing of them is relayed: the answer check takes
# them out of the output it checks against the relayed bytes, and bounds them only by the
# request's own output limit (`max_tokens`, `max_completion_tokens`, …) or, naming none, its
# voucher's ceiling. Honest reasoning may be nearly all of an answer (a one-word answer
# after 500 reasoning tokens) and is on by default on today's reasoning models, so no rule
# can tell a gateway claiming reasoning on every answer from an honest one: their units are
# kept apart (`Lane.reasoning`), never counted as checked (the tolerance's base), and may
# make up this share of what the lane's checked answers cost, reasoning included, before
# the rest weighs in the stop rule as an answer without figures does. The default, the
# whole share, never stops an honest reasoning model (the loss bound then excludes claimed
# reasoning: each answer's is bounded by its own limit alone); 0 for a session that uses no
# reasoning model stops a gateway claiming reasoning within N holds and the tolerance.
REASONING_BP = BASIS_POINTS
LANE_BUSY = "lane_busy"
# A 503 after the gateway accepted the voucher and then ended its hold uncharged (its process
# lost its ledger session): it names the lane's total, unchanged, and the voucher stays the
# lane's highest accepted one (not a voucher refusal: `live` keeps it).
HOLD_ENDED = "hold_ended"
# A lane the gateway answered lane_busy on is not tried again for this long: a crashed
# gateway's hold keeps it busy until the hold expires, and every request sent on it meanwhile
# is one more answer that may be lost (and counted) if a connection drops again.
LANE_BUSY_REST_SECONDS = 1.0
# Refusals no later voucher of this grant can pass (the gateway's codes, gateway.vouchers).
HOPELESS = frozenset(
    {"session_unknown", "session_ended", "session_ending", "session_not_current", "voucher_bad_signature",
     "voucher_malformed", "lane_out_of_range", "voucher_required"}
)  # fmt: skip
MAX_CEILING = 2**128 - 1  # a settle_signed entry packs the ceiling in 128 bits


class Refused(Exception):
    """This side will not sign the request. `status` and `code` shape the error answer;
    `retry_after` (seconds), when set, goes out as its Retry-After header."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json"} | (
            {} if self.retry_after is None else {"retry-after": str(self.retry_after)}
        )


@dataclass
class Ticket:
    """One signed request on its way."""

    endpoint: str
    lane: Lane
    voucher: Voucher
    hold: int
    bounds: Bounds
    rates: metering.Rates
    charged_before: int  # what the lane was charged before it (an upper bound unless exact_before)
    exact_before: bool
    done: bool = field(default=False)
    live_before: int = 0  # the lane's `live` before this voucher (restored if it is refused)
    # The gateway refused it 409 lane_busy (checked: the lane's total within what it
    # accepted): it took nothing, so the request may be signed again on another lane (`again`).
    lane_busy: bool = False
    tries: int = 1  # lanes this request was signed on so far
    output: int = 0  # the output tokens its hold is for
    cache_writes: bool = False  # held at the prompt cache's write rates
    # The most a listed lot may charge it (basis points of list price, sent as
    # `MAX_RATE_HEADER`; None: none sent, its charge is checked at the advertised rates),
    # and those rates (`rates` are the max rate's: what the hold is for).
    max_rate: int | None = None
    advertised: metering.Rates | None = None
    book: RateBook | None = None  # the rate book it was signed with (its answer is checked by it)


@dataclass(frozen=True)
class Session:
    """The session key and the session it signs for."""

    identity: Identity
    private_key: str  # the session key's (bounded by the session maximum; see the README)
    session: int
    lanes: int
    maximum: int
    asset_symbol: str


def header_int(text: str | None) -> int | str | None:
    """A header's integer (its text when it is not one: refused where it is read)."""
    if text is None:
        return None
    return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else text


def voucher_signer(identity: Identity, voucher: Voucher) -> str:
    """Who signed a voucher for `identity`'s account and asset (lowercase address; "" for none)."""
    signer = recover_voucher_signer(
        voucher.signature,
        chain_id=identity.chain_id,
        vault=identity.vault,
        account=identity.account,
        asset=identity.asset,
        session=voucher.session,
        lane=voucher.lane,
        ceiling=voucher.ceiling,
    )
    return "" if signer is None else signer.lower()


def unread(status: int, headers: Mapping[str, str], body: Any, content: bytes) -> bool:
    """Whether an error answer that names no lane is one the gateway sends before it reads
    the request's voucher (`gateway.errors.UNREAD`): its load shed, 429 `capacity_busy`
    (Anthropic's shape: 529 `overloaded_error`), its admission's 429 `too_many_in_flight`
    (Anthropic's shape: 429 `rate_limit_error`, no code), or its connection guard's
    plain-text 429 — each marked so (`gateway.errors.UNREAD_HEADER`). The mark is what an
    honest gateway says to tell these apart from the same codes answered after a hold (429
    `capacity_busy` when every lot rate-limited it, its lane not named when the ledger
    blipped): that voucher was stored, and taking it for unread signed the next at or below
    it — refused `voucher_used`, signing stopped. What it says is the gateway's word, the
    mark too: `Signer.refused_unread` argues why believing it loses nothing. Other answers
    without figures (a 5xx, a 429 of another shape or unmarked, e.g. from something
    between) weigh as before."""
    if headers.get(UNREAD_HEADER) != "1":
        return False
    if status == 429 and body is None:
        return content.strip() == TOO_MANY_CONNECTIONS.encode()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return False
    code = error.get("code")
    if status == 429 and isinstance(code, str) and code in UNREAD:
        return True
    anthropic = body.get("type") == "error" and "code" not in error
    return anthropic and (status, error.get("type")) in ((OVERLOADED, "overloaded_error"), (429, "rate_limit_error"))


def never_left(exc: BaseException) -> bool:
    """Whether a send failed before any of the request could reach the gateway (no
    connection was made, or none was free): its voucher was never seen."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def broke(exc: BaseException) -> bool:
    """Whether reading an answer failed on the gateway's side: its connection broke, or its
    bytes cannot be decoded as its own content-encoding says (`httpx.DecodingError` is no
    `TransportError`: read as the caller's own abandoning, a gateway that booked the whole
    hold and answered a garbled gzip body walked the lane a hold per two requests, weighing
    nothing)."""
    return isinstance(exc, (httpx.TransportError, httpx.DecodingError))


def failed(signer: Signer, ticket: Ticket, exc: BaseException) -> None:
    """A request whose send or read raised `exc`: never sent, dropped by the connection (or
    answered with undecodable bytes), or abandoned by the caller (anything else: a
    cancellation, an interrupt)."""
    if never_left(exc):
        signer.unsent(ticket)
    elif broke(exc):
        signer.dropped(ticket)
    else:
        signer.closed(ticket, None)


class Signer:
    """Signs, logs and checks the requests of one session; thread-safe."""

    def __init__(
        self,
        session: Session,
        book: LaneBook,
        voucher_log: VoucherLog,
        rates: RateBook,
        *,
        max_hold: int | None = None,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        lane_wait_seconds: float | None = 30.0,
        stop_after_errors: int = STOP_AFTER_ERRORS,
        lane_busy_rest_seconds: float = LANE_BUSY_REST_SECONDS,
        tolerance_bp: int = STOP_TOLERANCE_BP,
        reasoning_bp: int = REASONING_BP,
        max_rate_bps: int | None = None,
    ) -> None:
        if stop_after_errors < 1:
            raise ValueError("stop_after_errors is at least 1")
        if not 0 <= tolerance_bp <= BASIS_POINTS:
            raise ValueError("tolerance_bp is 0–10,000 basis points")
        if not 0 <= reasoning_bp <= BASIS_POINTS:
            raise ValueError("reasoning_bp is 0–10,000 basis points")
        if max_rate_bps is not None and not 0 < max_rate_bps <= BPS:
            raise ValueError(f"max_rate_bps is 1–{BPS} basis points of list price")
        self.tolerance_bp = tolerance_bp
        self.reasoning_bp = reasoning_bp
        # The most a listed lot may charge a request, basis points of list price (None: the
        # highest rate /v1/models listed for its model, `max_rate`).
        self.max_rate_bps = max_rate_bps
        # Without one: each model's default, fixed once (`max_rate`), and the book it is read
        # from — the one this side opened with (`rates` until the first `refresh`).
        self._default_max: dict[str, int] = {}
        self._opened: RateBook | None = None
        self.session = session
        self.book = book
        self.log = voucher_log
        self.rates = rates
        self.max_hold = max_hold
        self.default_output_tokens = default_output_tokens
        self.lane_wait_seconds = lane_wait_seconds
        self.lane_busy_rest_seconds = lane_busy_rest_seconds
        self.stop_after_errors = stop_after_errors
        # Why signing stopped, once it has: a stop is on disk (the voucher log), so a
        # restarted signer stays stopped until `resume` (`promptex proxy --resume`).
        recorded = voucher_log.stopped
        self.stopped: str | None = None if recorded is None else recorded.reason
        self.shed = 0  # requests the gateway refused before reading them (`refused_unread`)
        self._sign = threading.Lock()
        self._refreshing = threading.Lock()  # one `refresh` at a time updates the books

    # ─── Before a request ────────────────────────────────────────────────────

    def _shown(self, units: int) -> str:
        """An amount of the session's asset in a message a person reads (a refusal, why
        signing stopped): whole units, every digit (`money_exact`)."""
        return money_exact(units, self.session.asset_symbol)

    def stop(self, reason: str, lane: int | None = None) -> None:
        """Stop signing, saying why in one line; the stop is written to the voucher log
        (fsync'd) so that a restart does not sign again."""
        if self.stopped is not None:
            return
        self.stopped = reason
        log.error("signing stopped: %s", reason)
        try:
            self.log.write_stop(Stop(reason, lane, int(time.time())))
        except VoucherLogError as exc:  # stopped here all the same; a restart cannot know
            log.error("the stop is not on disk: %s", exc)

    def close(self) -> None:
        """Let the voucher log go: until then (or the process's end) no other signer opens it."""
        self.log.close()

    def resume(self) -> Stop | None:
        """Sign again after a stop (the user looked at why); returns the stop cleared."""
        cleared = self.log.resume(int(time.time()))
        self.stopped = None
        for lane in self.book.lanes:
            lane.errors = lane.pending = lane.lost = lane.lost_holds = 0
            lane.closed = lane.allowance = lane.slack = lane.closed_weight = lane.reasoning = 0
        return cleared

    def hold_for(
        self, endpoint: str, body: dict[str, Any], raw: bytes = b"", book: RateBook | None = None
    ) -> tuple[int, Bounds, metering.Rates]:
        """A request's hold, its bounds and the rates the hold is at (`book`: the rate book
        to read, one for the whole request: `rates` may be replaced meanwhile, `refresh`)."""
        book = book or self.rates
        try:
            bound = answers.bounds(endpoint, body, book)
        except ValueError as exc:
            raise Refused(400, "invalid_request", str(exc)) from None
        if not book.reasons(bound.model, endpoint, body):  # its reported reasoning is visible output,
            # and its thinking budget no room (`produced.unshown_output`), as the gateway charges
            unshown = unshown_output(endpoint, body, may_think=False)
            bound = dataclasses.replace(bound, reasoning=False, unshown_output=unshown)
        own = book.own_token(bound.model, self.session.asset_symbol)
        if own is not None:  # before any voucher: the gateway would refuse it (its message, `SIGNED_CROSS_TOKEN`)
            message = signed_cross_token_message(bound.model, self.session.asset_symbol, own)
            raise Refused(400, SIGNED_CROSS_TOKEN, message)
        rates = book.get(bound.model, self.session.asset_symbol)
        if rates is None:
            raise Refused(400, "unknown_rate", f"no {self.session.asset_symbol} rate for {bound.model}: not signing")
        most = self.max_rate(bound.model, book)
        if most is not None:  # held for a lot at the most it pays: any lot within it may serve
            rates = book.at(bound.model, self.session.asset_symbol, most) or rates
        hold = metering.upper_bound(
            rates, bound.input_bound, self._output(endpoint, bound), cache_writes=may_write_cache(raw, body)
        )
        if self.max_hold is not None and hold > self.max_hold:
            raise Refused(
                402,
                "hold_above_limit",
                f"this request may cost {self._shown(hold)}, above the per-request limit {self._shown(self.max_hold)}",
            )
        return hold, bound, rates

    def max_rate(self, model: str, book: RateBook | None = None) -> int | None:
        """The most a listed lot may charge a request to `model` (basis points of list price,
        sent with it: the gateway routes it only to lots at or below it): the one set
        (`max_rate_bps`), else the model's default — the highest rate /v1/models listed for
        it when this side opened (a model it listed none for then: when its first request
        came), fixed then: `refresh` may lower it (the request's `book` lists no lot as
        pricey), never raise it. Before (cbreak s17 C4-1), it followed every read of
        /v1/models — the gateway's word: one listing a lot at list price made every later
        request payable at list price. None: no lot listed."""
        if self.max_rate_bps is not None:
            return self.max_rate_bps
        book = book or self.rates
        listed = book.highest(model)
        fixed = self._default_max.get(model)
        if fixed is None:
            fixed = (self._opened.highest(model) if self._opened is not None else None) or listed
            if fixed is None:
                return None
            fixed = self._default_max.setdefault(model, fixed)
        return fixed if listed is None else min(fixed, listed)

    def default_max_rates(self) -> dict[str, int]:
        """Each listed model's default max rate (`max_rate`), fixed now for those not yet."""
        if self.max_rate_bps is not None:
            return {}
        book = self._opened or self.rates
        return {model: most for model in sorted(book.lots) if (most := self.max_rate(model, book)) is not None}

    def refresh(self, models: Any) -> None:
        """Read the gateway's /v1/models answer again (`RateBook.from_models`, with the same
        local catalog): the lots and rates requests signed from now on are held and checked at
        (one in flight keeps the max rate it was signed with); the default max rates are not
        raised (`max_rate`), nor the list prices read when the proxy opened
        (`RateBook.not_above`). The proxy does it every `proxy.RATES_REFRESH_SECONDS`; an
        answer listing no model keeps the book."""
        book = RateBook.from_models(models, self.rates.catalog)
        if book.rates:
            # One at a time: two threads refreshing at once (transports sharing a signer) each
            # built the opened book from what it read before the other's was added, and the
            # last one kept lost the other's models first read then (s3break s18): a later
            # read could raise their price.
            with self._refreshing:
                if self._opened is None:
                    self._opened = self.rates
                self.rates = book.not_above(self._opened)  # a list price raised since is not taken
                self._opened = self._opened.adding(self.rates)  # nor one first read now, from the next read on

    def charge_rates(self, ticket: Ticket, lot: Any, rate: Any) -> metering.Rates:
        """The rates an answer's charge is checked at: those of the rate the gateway names
        with it (`rate`, of lot `lot`), when it is within the request's max rate and, for a
        lot /v1/models listed, the rate it gave that lot; raises AnswerRefused otherwise.
        Without a max rate: the advertised. Naming none: the advertised when /v1/models
        said no rate they are at (one price: a tokenized lot, the only lot that names none),
        else those of the lower of that rate and the max (`unnamed_rates`)."""
        advertised = ticket.advertised or ticket.rates
        if ticket.max_rate is None:
            return advertised
        if rate is None:
            return self.unnamed_rates(ticket, ticket.max_rate, advertised)
        if type(rate) is not int or type(lot) is not int or rate <= 0:
            raise AnswerRefused(f"the charge names lot {str(lot)[:40]!r} at rate {str(rate)[:40]!r}: not readable")
        if rate > ticket.max_rate:
            raise AnswerRefused(
                f"the charge names lot {lot}'s rate {percent(rate)} of list price, above the "
                f"{percent(ticket.max_rate)} this side pays at most"
            )
        model, book = ticket.bounds.model, ticket.book or self.rates
        listed = book.lot_rate(model, lot)
        if listed is not None and listed != rate:
            raise AnswerRefused(
                f"the charge names lot {lot}'s rate {percent(rate)} of list price; /v1/models gave it {percent(listed)}"
            )
        return book.at(model, self.session.asset_symbol, rate) or advertised

    def unnamed_rates(self, ticket: Ticket, most: int, advertised: metering.Rates) -> metering.Rates:
        """What a charge naming no lot rate is checked at, the request's max rate `most`:
        the advertised rates when /v1/models said no rate they are at, else those at the
        lower of that rate (its cheapest listed lot's) and the max. Before (review s17), the
        advertised at any rate: a re-read of /v1/models saying its prices are at 95 % (scaled
        so the list price is unchanged) let a gateway naming no rate charge 95 % to a buyer
        whose max is 80 %, up to the hold. A listed lot's charge always names its rate (the
        gateway's `Gateway.charge`); one naming none is not refused — a charge within the max
        loses the buyer nothing the max does not allow — only held to it."""
        model, book = ticket.bounds.model, ticket.book or self.rates
        basis = book.basis(model, self.session.asset_symbol)
        if basis is None or basis <= most:
            return advertised
        return book.at(model, self.session.asset_symbol, most) or advertised

    def _output(self, endpoint: str, bound: Bounds) -> int:
        """The output tokens a request's hold is for."""
        if endpoint == answers.ENDPOINTS["/v1/embeddings"]:
            return 0
        return bound.output_limit if bound.output_limit is not None else self.default_output_tokens

    def begin(self, path: str, body: dict[str, Any], raw: bytes = b"") -> Ticket:
        """Sign a request's voucher, durably logged; raises Refused instead."""
        return self._begin(path, body, raw, self.lane_wait_seconds)

    def again(self, ticket: Ticket, path: str, body: dict[str, Any], raw: bytes = b"") -> Ticket:
        """The request of `ticket`, which the gateway refused 409 lane_busy (it took
        nothing), signed on another lane that is free now (ValueError for a ticket not
        refused so: its voucher may have been charged). The refused lane rests, so the next
        is another; raises Refused (429 no_free_lane, Retry-After) when none is free now or
        every lane was tried: the client is told to come back, not that a lane it never
        chose is busy. Never waits for a lane."""
        if not ticket.lane_busy:
            raise ValueError("only a request refused lane_busy is signed again")
        rest = max(1, math.ceil(self.lane_busy_rest_seconds))
        busy = Refused(
            429,
            "no_free_lane",
            f"the gateway says lane {ticket.lane.index} is busy (a request still in flight there, e.g. a crashed "
            f"gateway's until its hold ends) and no other lane is free now: retry in {rest} s",
            retry_after=rest,
        )
        if ticket.tries >= len(self.book.lanes):
            raise busy
        try:
            again = self._begin(path, body, raw, 0.0)
        except Refused as refused:
            if refused.code != "no_free_lane":
                raise
            raise busy from None
        again.tries = ticket.tries + 1
        return again

    def _begin(self, path: str, body: dict[str, Any], raw: bytes, wait: float | None) -> Ticket:
        if self.stopped is not None:
            raise Refused(402, "signing_stopped", f"signing stopped: {self.stopped}")
        endpoint = answers.ENDPOINTS.get(path)
        if endpoint is None:
            raise Refused(404, "not_metered", f"{path} is not a metered path")
        book = self.rates  # one book for the whole request (`refresh` may replace it meanwhile)
        hold, bound, rates = self.hold_for(endpoint, body, raw, book)
        try:
            lane = self.book.acquire(wait)
        except NoFreeLane as exc:
            raise Refused(429, "no_free_lane", str(exc)) from None
        try:
            if self.weight(lane) > self._threshold(lane):  # e.g. after a restart: requests in flight then
                self.stop(
                    f"answers on lane {lane.index} without the lane's total (of them {lane.pending} in flight or "
                    f"dropped, not yet told about) may have cost {self._shown(self.weight(lane))}: with the next "
                    f"request's hold more than {self.stop_after_errors} of the lane's largest hold, "
                    f"{self._shown(max(1, lane.largest_hold))}, and the {self._shown(self.tolerated(lane))} tolerated",
                    lane.index,
                )
                raise Refused(402, "signing_stopped", f"signing stopped: {self.stopped}")
            # Ceilings rise strictly per lane (the gateway serves a voucher once: 409
            # voucher_used): above every ceiling the gateway may have accepted (`live`), even
            # when this request's hold is smaller than the last one's less its cost. Built on
            # the last exactly known total (`floor`), not on an upper bound after an answer
            # without figures: what such an answer charged comes out of this request's hold
            # (the gateway caps the output to what is left, or refuses with the lane's
            # total), so the highest ceiling never runs more than a hold ahead of a known total.
            ceiling = max(lane.floor + hold, lane.live + 1)
            if ceiling > MAX_CEILING:
                raise Refused(
                    402, "ceiling_too_large", f"lane {lane.index} would need a ceiling of {self._shown(ceiling)}"
                )
            s = self.session
            with self._sign:
                exposure = self.book.exposure(lane, ceiling)
                if exposure > self.book.maximum:
                    raise Refused(
                        402,
                        "session_maximum",
                        f"signing {self._shown(ceiling)} on lane {lane.index} would let {self._shown(exposure)} be "
                        f"settled, above the session maximum {self._shown(self.book.maximum)}",
                    )
                signature = sign_voucher(
                    s.private_key,
                    chain_id=s.identity.chain_id,
                    vault=s.identity.vault,
                    account=s.identity.account,
                    asset=s.identity.asset,
                    session=s.session,
                    lane=lane.index,
                    ceiling=ceiling,
                )
                voucher = Voucher(s.session, lane.index, ceiling, signature)
                self.log.write(voucher, hold, lane.charged if lane.exact else None)  # on disk before it may leave
                live_before = lane.live
                lane.signed = max(lane.signed, ceiling)
                lane.live = max(lane.live, ceiling)
                lane.largest_hold = max(lane.largest_hold, hold)
        except BaseException:
            self.book.release(lane)
            raise
        return Ticket(
            endpoint, lane, voucher, hold, bound, rates, lane.charged, lane.exact, live_before=live_before,
            output=self._output(endpoint, bound), cache_writes=may_write_cache(raw, body),
            max_rate=self.max_rate(bound.model, book), advertised=book.get(bound.model, self.session.asset_symbol),
            book=book,
        )  # fmt: skip

    # ─── After it ────────────────────────────────────────────────────────────

    def _release(self, ticket: Ticket) -> None:
        if not ticket.done:
            ticket.done = True
            self.book.release(ticket.lane)

    def _without_figures(self, ticket: Ticket, what: str, allowance: int | None = None, slack: int = 0) -> None:
        """An answer that does not tell the lane's total: the lane is bounded by the ceiling
        (`lost`), and once such answers on the lane weigh more than N − 1 of its largest
        hold (`weight`) signing stops. With an `allowance`, a stream its client closed
        (`closed`): what it may honestly have cost does not weigh, but for its `slack`."""
        lane = ticket.lane
        if lane.pending == 0 and lane.closed == 0:
            lane.errors_from, lane.errors_from_exact = ticket.charged_before, ticket.exact_before
            lane.pending_hold = lane.allowance = lane.slack = lane.closed_weight = 0
        if allowance is None:
            lane.pending += 1
            lane.pending_hold = max(lane.pending_hold, ticket.hold)
        else:
            lane.closed += 1
            lane.allowance += allowance
            lane.slack += slack
            lane.closed_weight += max(0, ticket.hold - (allowance - slack))
        lane.errors += 1
        self.lost(ticket)
        self._save_errors(lane)
        weight, hold, tolerated = self.weight(lane), max(1, lane.largest_hold), self.tolerated(lane)
        if weight > self._threshold(lane):
            self.stop(
                f"{lane.errors} answers on lane {lane.index} came without the lane's total (the last: {what}), "
                f"none shown to be free by a later answer: they may have cost {self._shown(weight)} "
                f"({self._shown(lane.lost)} shown charged by later answers), with the next request's hold more than "
                f"{self.stop_after_errors} of the lane's largest hold, {self._shown(hold)}, and the "
                f"{self._shown(tolerated)} tolerated of its {self._shown(lane.verified)} checked",
                lane.index,
            )

    def _threshold(self, lane: Lane) -> int:
        """What answers without figures on the lane may weigh before signing stops."""
        return (self.stop_after_errors - 1) * max(1, lane.largest_hold) + self.tolerated(lane)

    def tolerated(self, lane: Lane) -> int:
        """What the stop rule lets answers without figures weigh beyond N − 1 holds: the
        tolerance's share of the lane's exactly checked units."""
        return self.tolerance_bp * lane.verified // BASIS_POINTS

    def weight(self, lane: Lane) -> int:
        """What the lane's answers without figures may have cost, for the stop rule: the
        units later figures showed them to charge (`lost`; a voucher log of the old rule's
        counted answers: a largest hold each), and for those not yet told about each its
        largest hold, or all the lane's accepted ceilings allow above the total they were
        measured from when that is more (a small request after a larger one is signed just
        above the larger one's ceiling: ceilings rise strictly).

        Streams their client closed are not the gateway's choice, so they add no hold each:
        from an exactly known total they weigh only what the accepted ceilings allow above
        it beyond their allowances (new ceilings are built on that total, so closes in a row
        move the highest ceiling a unit each, and an honest gateway's closes weigh nothing
        however many); from a bound, each its hold less its allowance."""
        pending = lane.pending * lane.pending_hold
        if lane.pending or lane.closed:
            if lane.errors_from_exact:
                pending = max(pending, lane.live - lane.errors_from - lane.allowance)
            else:
                pending += lane.closed_weight
        return lane.lost + lane.lost_holds * max(1, lane.largest_hold) + pending + self.unseen(lane)

    def unseen(self, lane: Lane) -> int:
        """What the lane's reported reasoning weighs in the stop rule: its units beyond
        `reasoning_bp` of what the lane's checked answers cost, reasoning included."""
        return max(0, lane.reasoning - self.reasoning_bp * (lane.verified + lane.reasoning) // BASIS_POINTS)

    def _told(self, lane: Lane, before: int) -> None:
        """A figure of the lane: `before`, its total before the request now answered. From
        an exactly known total `errors_from`, the answers without figures since then cost
        `before − errors_from` together: exactly that weighs for good (`lost`; nothing when
        it did not grow), and as many of them count as charged (`errors`, for saying why)
        as that takes of their largest hold, the others forgiven. From a bound, a total
        within it proves nothing (its slack may be their charge): each weighs its hold. So
        a figure never makes them weigh more than they did (`weight`: at most the ceilings
        above `errors_from`), and the stop is decided when they happen."""
        events = lane.pending + lane.closed
        if events == 0:
            return
        if lane.errors_from_exact:
            # Closed streams' allowances are what they may honestly have cost: only growth
            # beyond them weighs (an honest gateway charging what it streamed: nothing), and
            # growth into their slack (`Signer.closed`: free, a gateway inducing closes took
            # it every time, never stopped).
            grown = max(0, before - lane.errors_from - (lane.allowance - lane.slack))
            charged = min(events, -(-grown // max(1, lane.pending_hold or lane.largest_hold)))
            lane.errors -= events - charged
            lane.lost += grown
        else:
            lane.lost += lane.pending * lane.pending_hold + lane.closed_weight
        lane.pending = lane.closed = lane.allowance = lane.slack = lane.closed_weight = 0
        self._save_errors(lane)

    def _outcome(self, lane: Lane) -> None:
        """The lane's last voucher was answered without changing what the lane counts (a
        lane_busy refusal, a request that never left, a stream whose cost alone was told):
        written, so a restart does not take it for a request in flight then (`recovery`)."""
        if lane.exact and self.stopped is None:
            self.log.write_charged(self.session.session, lane.index, lane.charged, lane.verified, lane.reasoning)
        else:
            self._save_errors(lane)

    def _save_errors(self, lane: Lane) -> None:
        """The lane's count on disk (the voucher log): a restart recovers it (`recovery`)."""
        try:
            self.log.write_errors(self.session.session, lane.index, lane.count_state())
        except VoucherLogError as exc:  # a restart could not go on counting: stop here instead
            self.stop(f"the lane's count of answers without figures is not on disk: {exc}", lane.index)

    def lost(self, ticket: Ticket) -> None:
        """No answer this side can use (one it cannot read, a refusal of the whole grant: both
        stop signing): the lane may have been charged up to the ceiling signed. A client
        leaving is `closed`; a connection the gateway's side broke is `dropped`."""
        lane = ticket.lane
        lane.charged, lane.exact = max(lane.charged, ticket.voucher.ceiling), False
        self._release(ticket)

    def closed(self, ticket: Ticket, produced: int | None) -> None:
        """The client left before the answer was complete: it closed a stream after
        `produced` bytes of answer were relayed (as `StreamWatch.produced` counts them), or
        gave up a plain answer (None: it may have been served whole, so it is allowed its
        hold). A gateway can bring this about (stall until the client's deadline), so it is
        an answer without figures, but with an ALLOWANCE: what its relayed bytes allow (its
        input bound, its bytes as output tokens, the bound `answers.check_counts` uses, plus
        `CLOSE_SLACK_TOKENS`), never more than its hold. Taken for the client's doing
        alone, it weighed nothing, and a gateway that booked each such stream's whole
        ceiling and then refused the next voucher naming the booked total walked the lane
        a hold per two requests (ubreak's Open A).

        The slack's part of the allowance does not weigh while the close is not told about
        (the stop is not hastened by it), but what a later figure shows charged into it
        weighs for good, as a loss the tolerance absorbs: free, a gateway that induced
        closes and booked each one's whole allowance took the slack every time (234 units
        a close here, 3.8 holds over 100 closes, never stopped). An honest gateway's close
        rarely reaches it: the relayed text's bytes and the input bound already exceed the
        tokens it charges."""
        slack = 0
        if produced is None:
            allowance = ticket.hold
        else:
            bound = [
                metering.upper_bound(
                    ticket.rates,
                    ticket.bounds.input_bound,
                    min(ticket.output, output),
                    cache_writes=ticket.cache_writes,
                )
                for output in (produced + CLOSE_SLACK_TOKENS, produced)
            ]
            allowance = min(ticket.hold, bound[0])
            slack = allowance - min(ticket.hold, bound[1])
        what = "a plain answer its client gave up" if produced is None else "a stream its client closed"
        self._without_figures(ticket, f"{what} ({allowance} of its {ticket.hold} allowed)", allowance, slack)

    def dropped(self, ticket: Ticket, what: str = "a connection dropped after the request left") -> None:
        """The connection broke after the request left, before its answer was complete: the
        gateway may have charged it and cannot be checked, so it counts like an answer
        without the lane's figures (a gateway that charges, then drops every connection,
        would otherwise walk the lane one hold per request). A killed gateway's hold is
        swept with nothing charged, and the lane's next figure shows it free."""
        self._without_figures(ticket, what)

    def unsent(self, ticket: Ticket) -> None:
        """The request never left (no connection could be made): the gateway never saw
        this voucher, so the lane keeps its figure and the voucher counts for nothing."""
        if not ticket.done:
            ticket.lane.live = ticket.live_before
            self._outcome(ticket.lane)
        self._release(ticket)

    def refused_unread(self, ticket: Ticket) -> None:
        """The gateway refused the request before reading it (`unread`: its load shed or its
        admission, under load): taken as a voucher that did not take, as `unsent` takes one
        that never left — the lane keeps its figure (`live` back to what it was before this
        voucher), nothing counts toward the stop rule, and the outcome is written (a restart
        does not take it for a request in flight). The answer goes to the client as it came:
        its Retry-After, which the SDKs honour. Weighed as an answer without figures (a
        hold each, before), three in a row on a lane stopped signing for good: a load
        spike stopped every signed buyer.

        Why this loses nothing, whatever a dishonest gateway charges under such an answer:
        vouchers are cumulative ceilings, and the lane's next voucher is built on the same
        known total (`floor`) and `live` as this one was, so it signs a ceiling no higher
        than max(this one, that total + its own hold) — however many such answers in a
        row, the lane's highest signed ceiling exceeds its known total by at most ONE hold
        (the largest), never one per answer, and the signed ceilings bound what can ever be
        settled. A gateway that charged under the label takes at most that hold, and the
        lane's next figure shows it: from an exactly known total any growth stops signing
        (`_charged`, `_refusal`: not forgiven, as an answer without figures' would be
        when it later shows free), from a bound growth beyond it does; a voucher it kept
        comes back above the ones accepted (`_refusal`: stops). A dishonest gateway may
        set the mark (`gateway.errors.UNREAD_HEADER`) on any answer: the argument above
        holds whatever the mark says. The mark is for honest gateways: one never charges a
        request it did not read, and never marks a refusal made after a hold (its voucher
        stored), so the next voucher is never built below one the gateway holds."""
        self.shed += 1
        self.unsent(ticket)

    def _ours(self, raw: Any, ticket: Ticket) -> Voucher | None:
        """A voucher the gateway returned, if it is one this key signed for this lane."""
        if raw is None:
            return None
        try:
            voucher = voucher_of(raw, session=ticket.voucher.session, lane=ticket.lane.index)
        except WireError:
            return None
        if voucher.session != self.session.session or voucher.lane != ticket.lane.index:
            return None
        if voucher_signer(self.session.identity, voucher) != self.session.identity.key.lower():
            return None
        return voucher

    def _adopt(self, ticket: Ticket, charged: int, ceiling: int) -> None:
        """The lane's charged figure as told by the gateway, within a voucher of ours."""
        lane = ticket.lane
        if charged > ceiling:
            self.stop(
                f"the gateway says lane {lane.index} was charged {self._shown(charged)}, above the ceiling "
                f"{self._shown(ceiling)} signed",
                lane.index,
            )
            lane.charged, lane.exact = ceiling, False
            return
        if lane.exact and charged < lane.charged:  # charged totals never go down
            self.stop(
                f"the gateway says lane {lane.index} was charged {self._shown(charged)}, below the "
                f"{self._shown(lane.charged)} it said before",
                lane.index,
            )
        lane.charged, lane.exact, lane.floor = charged, True, charged
        if self.stopped is None:  # for recovery: what the gateway may not inflate on a restart
            # (and the checked units so far: this answer's own are added once it is checked,
            # so a restart may forget one answer's: the tolerance only smaller)
            self.log.write_charged(self.session.session, lane.index, charged, lane.verified, lane.reasoning)

    def finish(self, ticket: Ticket, status: int, headers: Mapping[str, str], content: bytes) -> None:
        """Check a complete answer and update its lane; stops signing when it is beyond
        what the request allows (the lane is freed either way)."""
        try:
            if status == 200:
                self._answer(ticket, headers, content)
            else:
                self._refusal(ticket, status, headers, content)
        except Exception as exc:
            self._unreadable(ticket, exc)
        finally:
            self._release(ticket)

    def _unreadable(self, ticket: Ticket, exc: Exception) -> None:
        """An answer whose reading raised: a shape no check foresaw, the gateway's doing.
        Not checked, so signing stops (the lane bounded by its ceiling). Raised out of
        `finish` instead, a 200 whose `choices` was `true` had its total adopted and its
        cost never checked: a hold per request, never stopped."""
        log.exception("an answer on lane %s this side cannot read", ticket.lane.index)
        self.lost(ticket)
        lane = ticket.lane.index
        self.stop(f"an answer on lane {lane} this side cannot read ({exc!r}): not checked", lane)

    def _answer(self, ticket: Ticket, headers: Mapping[str, str], content: bytes) -> None:
        try:
            body = read_json(content)
        except orjson.JSONDecodeError:
            body = None
        cost, after = units(headers.get(COST_UNITS_HEADER)), units(headers.get(LANE_CHARGED_HEADER))
        if cost is None or after is None:
            self.lost(ticket)
            self.stop(
                "an answer came without its cost and lane total (is this gateway in signed mode?)", ticket.lane.index
            )
            return
        self._charged(ticket, cost, after, headers.get(LANE_HEADER), headers.get(VOUCHER_HEADER))
        named = (header_int(headers.get(LOT_HEADER)), header_int(headers.get(LOT_RATE_HEADER)))
        self._check(ticket, cost, answers.usage_of(ticket.endpoint, body), visible_bytes(ticket.endpoint, body), named)

    def _charged(self, ticket: Ticket, cost: int, after: int, lane_text: str | None, returned: Any) -> None:
        lane = ticket.lane
        if lane_text is not None and lane_text != str(lane.index):
            self.stop(f"an answer on lane {lane.index} names lane {lane_text}", lane.index)
        ours = None if returned is None else self._ours(returned, ticket)
        ceiling = ticket.voucher.ceiling
        if returned is not None and ours is None:
            self.stop(f"the voucher returned on lane {lane.index} is not one this session key signed", lane.index)
        elif ours is not None and ours.ceiling > ceiling:
            # An honest gateway returns the voucher the request carried. One of ours above it is
            # one the gateway keeps though it did not accept it with this request: a voucher it
            # said it shed unread (`refused_unread`: the lane's `live` went back below it), which
            # it may settle up to while this side builds on the lower figure (s3break s18: not
            # checked on a 200; `_refusal` stops on the same).
            self.stop(
                f"the gateway charged lane {lane.index}'s answer on a voucher for {self._shown(ours.ceiling)}, above "
                f"the {self._shown(ceiling)} this request signed: it keeps a voucher it did not accept with it",
                lane.index,
            )
        before = after - cost
        if before < 0 or (ticket.exact_before and before != ticket.charged_before):
            self.stop(
                f"lane {lane.index} was charged {self._shown(ticket.charged_before)} before this answer, but the "
                f"gateway's total {self._shown(after)} less the cost {self._shown(cost)} is {self._shown(before)}",
                lane.index,
            )
        elif not ticket.exact_before and before > ticket.charged_before:
            self.stop(
                f"lane {lane.index} had at most {self._shown(ticket.charged_before)} charged, the gateway says "
                f"{self._shown(before)}",
                lane.index,
            )
        self._told(lane, before)
        self._adopt(ticket, after, ceiling)

    def _check(
        self,
        ticket: Ticket,
        cost: int,
        usage: metering.TokenUsage | None,
        produced: int | None,
        named: tuple[Any, Any] = (None, None),
    ) -> None:
        """Check an answer's charge and counts; `named`: the lot and rate the charge names."""
        if usage is None:
            self.stop(
                f"an answer on lane {ticket.lane.index} reports no usage: its cost {self._shown(cost)} cannot be "
                "checked",
                ticket.lane.index,
            )
            return
        try:
            rates = self.charge_rates(ticket, *named)
            answers.check_cost(rates, usage, cost)
            answers.check_counts(ticket.bounds, usage, produced)
        except AnswerRefused as exc:
            self.stop(str(exc), ticket.lane.index)
            return
        lane = ticket.lane
        reasoning = 0
        if usage.reasoning_tokens:  # its price is checked, its count cannot be (`REASONING_BP`)
            seen = dataclasses.replace(usage, output_tokens=usage.output_tokens - usage.reasoning_tokens,
                                       reasoning_tokens=0)  # fmt: skip
            reasoning = cost - metering.usage_cost(rates, seen)
        lane.verified += cost - reasoning
        lane.reasoning += reasoning
        if reasoning and lane.exact and self.stopped is None:  # on disk at once: a restart goes on from it
            self.log.write_charged(self.session.session, lane.index, lane.charged, lane.verified, lane.reasoning)
        if reasoning and self.weight(lane) > self._threshold(lane):
            self.stop(
                f"answers on lane {lane.index} reported reasoning this side cannot see of "
                f"{self._shown(lane.reasoning)}, above {self.reasoning_bp} basis points of the "
                f"{self._shown(lane.verified + lane.reasoning)} its checked answers cost: with what answers without "
                f"figures weigh, {self._shown(self.weight(lane))}, more than {self.stop_after_errors - 1} of the "
                f"lane's largest hold, {self._shown(max(1, lane.largest_hold))}, and the "
                f"{self._shown(self.tolerated(lane))} tolerated",
                lane.index,
            )

    def _refusal(self, ticket: Ticket, status: int, headers: Mapping[str, str], content: bytes) -> None:
        """An error answer: the gateway may name the lane's total and its stored voucher
        (voucher refusals); else the lane may have been charged up to the ceiling."""
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        code = code if isinstance(code, str) else None
        if code in HOPELESS:  # no voucher of this grant can pass: say why, once
            self.lost(ticket)
            self.stop(f"the gateway refuses this session's vouchers: {code} ({error.get('message')})")  # type: ignore[union-attr]
            return
        found = [d for d in (error, body) if isinstance(d, dict) and "lane_charged_units" in d]
        charged = units(found[0]["lane_charged_units"] if found else headers.get(LANE_CHARGED_HEADER))
        if charged is None:
            if unread(status, headers, body, content):
                self.refused_unread(ticket)
            else:
                self._without_figures(ticket, f"{status} {code or 'without an error code'}")
            return
        # A voucher refusal: this voucher covers nothing, so the lane's total is within the
        # vouchers the gateway accepted before it (`live`), never the refused ceiling. (A
        # hold ended uncharged, or given back when the upstream failed — the gateway returns
        # this very voucher as the lane's stored one: it was accepted, and its request took
        # nothing. `live` keeps its ceiling, the larger bound.)
        lane = ticket.lane
        stored = self._ours(found[0].get("voucher"), ticket) if found else None
        accepted = code == HOLD_ENDED or (stored is not None and stored.ceiling == ticket.voucher.ceiling)
        if not accepted:
            lane.live = ticket.live_before
        elif charged > ticket.live_before:  # the total before it: within the vouchers accepted before it
            self.stop(
                f"the gateway says lane {lane.index}'s hold {'ended' if code == HOLD_ENDED else 'was given back'} "
                f"uncharged yet names the lane's total {charged}, "
                f"above the {ticket.live_before} of every voucher it accepted before it",
                lane.index,
            )
            return
        if charged > lane.live:
            self.stop(
                f"the gateway refused lane {lane.index}'s voucher yet says the lane was charged {charged}, "
                f"above the {lane.live} of every voucher it accepted",
                lane.index,
            )
            return
        if ticket.exact_before and charged > ticket.charged_before:
            # Every request signed on the lane was answered, the last saying the total: more
            # now is a lie (or another process signing with this key). Adopting it would let a
            # gateway that serves, then refuses claiming the whole hold, take every hold.
            self.stop(
                f"the gateway says lane {lane.index} was charged {charged}, but every request signed on it was "
                f"answered, the last leaving it at {ticket.charged_before}",
                lane.index,
            )
            return
        if code == LANE_BUSY:
            self.book.rest(lane, self.lane_busy_rest_seconds)
            ticket.lane_busy = True
            # A request still in flight there (e.g. of a crashed proxy) adds at most up to the
            # accepted vouchers, which an inexact `charged` already bounds. An exactly known
            # lane has nothing of this side in flight: the lane keeps its figure, so a gateway
            # answering lane_busy forever gets the same ceiling again, not one hold more each time.
            if not ticket.exact_before:
                lane.charged = max(lane.charged, charged)
            self._outcome(lane)
            return
        if stored is not None and stored.ceiling > lane.live:
            # Signed by this key but not accepted here: the refused voucher itself, or
            # another process shares the key.
            self.stop(
                f"the gateway holds a voucher of lane {lane.index} for {stored.ceiling}, above any it accepted",
                lane.index,
            )
            return
        self._told(lane, charged)  # the refused request took nothing: this was the total before it
        self._adopt(ticket, charged, lane.live)

    def finish_stream(self, ticket: Ticket, headers: Mapping[str, str], watch: StreamWatch) -> None:
        """Check a streamed answer from what its events said."""
        try:
            if watch.cost is None:  # cut short before its last event: charged at most its ceiling
                if watch.ended:  # the gateway ended it so, not the client nor the connection
                    self._without_figures(ticket, "a stream that ended without its last event")
                elif watch.broken:  # the connection broke under it
                    self.dropped(ticket, "a stream whose connection dropped before its last event")
                else:  # the client closed it
                    self.closed(ticket, watch.produced())
                return
            after = watch.lane_charged
            if after is None:
                after = ticket.charged_before + watch.cost
                if not ticket.exact_before:
                    lane = ticket.lane
                    lane.charged, lane.exact = min(after, ticket.voucher.ceiling), False
                    self._check(ticket, watch.cost, watch.usage(ticket.endpoint), watch.produced(framed=True),
                                watch.named)  # fmt: skip
                    self._outcome(lane)
                    return
            self._charged(ticket, watch.cost, after, headers.get(LANE_HEADER), watch.voucher)
            self._check(ticket, watch.cost, watch.usage(ticket.endpoint), watch.produced(framed=True), watch.named)
        except Exception as exc:
            self._unreadable(ticket, exc)
        finally:
            self._release(ticket)


USAGE_ASKED = ("/v1/chat/completions", "/v1/completions")  # OpenAI's streams: usage only when asked


def asking_usage(path: str, body: dict[str, Any], raw: bytes) -> tuple[bytes, bool]:
    """The bytes to send for a request, and whether its stream's usage is to be kept from its
    client. An OpenAI-shaped stream (chat, completions) reports its usage only when asked
    (`stream_options.include_usage`, read as the gateway reads it: any true value), and the
    gateway drops the usage a client did not ask for; without it the stream's cost cannot be
    checked, so a client's plain `stream=True` (the SDKs' default) stopped signing at its
    first answer, honest or not. Such a request is sent asking for usage, and its client gets
    the stream it asked for (`StreamWatch`): a client that did not ask may read `choices[0]`
    of every chunk."""
    options = body.get("stream_options")
    if (
        body.get("stream") is not True
        or path not in USAGE_ASKED
        or (isinstance(options, dict) and bool(options.get("include_usage")))
    ):
        return raw, False
    asked = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps({**body, "stream_options": asked}), True


class StreamWatch:
    """Reads a stream's server-sent events as they pass, for the gateway's last-event
    `promptex` field (the exact cost), the usage the events report and the UTF-8 bytes of
    what the answer produced (its output tokens are checked against them, as a plain
    answer's are: else a stream could report any output up to its hold, every time).

    `hide_usage`: the request asked for usage its client did not (`asking_usage`), and the
    client gets what the gateway sends a client that asked none: `feed` passes on whole
    lines; a usage chunk without choices is kept from it (choices `[]`, null or none: the
    gateway's rule; before, only `[]` was, and a usage chunk without a `choices` key reached a
    client reading `choices[0]`), `usage` is taken off a chunk with choices (an upstream
    may report it on its finishing chunk), and the chunk that finishes the choice waits for
    the next event, so the `promptex` cost field of the usage chunk kept back goes onto it
    (before, such a client never got the field)."""

    def __init__(self, hide_usage: bool = False) -> None:
        self.hide_usage = hide_usage
        self._pending = b""
        self.cost: int | None = None
        self.lane_charged: int | None = None
        self.voucher: Any = None
        self.named: tuple[Any, Any] = (None, None)  # the lot and rate its charge names
        self.ended = False  # the gateway's stream ran to its end (not cut by a client or a drop)
        self.broken = False  # reading it failed: the connection dropped (not the client's close)
        self._usage: dict[str, Any] = {}
        self._produced = 0  # bytes of the chat and Messages events' produced parts, summed
        self._completed: int | None = None  # a Responses stream: its final output's bytes
        # `hide_usage`: the finishing chunk waiting for the next event, the cost field of a
        # usage chunk kept back not yet on a chunk, and whether the next blank line (the end
        # of an event kept back or waiting) is left out.
        self._held: dict[str, Any] | None = None
        self._field: Any = None
        self._skip_blank = False

    def feed(self, chunk: bytes) -> bytes:
        """Read a chunk of the stream; returns what is passed on to the client (the chunk
        itself, unless `hide_usage`)."""
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        passed = [self._line(line) for line in lines]
        return b"".join(passed) if self.hide_usage else chunk

    def rest(self) -> bytes:
        """What is left to pass on once the stream ended (`hide_usage`: the finishing chunk
        still waiting, and a last line without its newline)."""
        return self._release() + self._pending if self.hide_usage else b""

    def _release(self) -> bytes:
        """The finishing chunk waiting, with the cost field kept back if one came, as an event."""
        held, self._held = self._held, None
        if held is None:
            return b""
        if self._field is not None:
            held, self._field = {**held, PROMPTEX_FIELD: self._field}, None
        return b"data: " + orjson.dumps(held) + b"\n\n"

    def _line(self, raw: bytes) -> bytes:
        """Read one line; what of it is passed on (`hide_usage`)."""
        line, out = raw.strip(), raw + b"\n"
        if not line:  # an event's end
            skip, self._skip_blank = self._skip_blank, False
            return b"" if skip else out
        self._skip_blank = False
        if not line.startswith(b"data:"):
            return out
        try:
            event = read_json(line[5:])
        except orjson.JSONDecodeError:
            return self._release() + out  # [DONE]
        if not isinstance(event, dict):
            return self._release() + out
        # Kept from the client, so nothing in it counts as produced: what is not relayed is
        # no room for output tokens (a usage chunk carrying a text under another key would
        # otherwise pass for output its client never saw).
        hidden = self.hide_usage and "usage" in event and not event.get("choices")
        try:
            self._event(event, counted=not hidden)
        except (TypeError, ValueError, AttributeError):
            # An event of another shape than its API's: passed on, not read (a cost
            # in it is not known, so the stream counts as one without its figures).
            log.warning("a stream event this side cannot read: %s", line[:200])
            return self._release() + out
        if not self.hide_usage:
            return out
        if hidden:
            self._skip_blank = True
            if event.get(PROMPTEX_FIELD) is not None:
                self._field = event[PROMPTEX_FIELD]
            return self._release() if self._held is not None else b""
        if "usage" in event:  # on a chunk with choices: the client asked none
            event = {k: v for k, v in event.items() if k != "usage"}
            out = b"data: " + orjson.dumps(event) + b"\n"
        released = self._release()
        if finishes_choice(event):
            self._held, self._skip_blank = event, True
            return released
        return released + out

    def _event(self, event: dict[str, Any], counted: bool = True) -> None:
        if counted:
            self._count(event)
        for holder in (event, event.get("message"), event.get("response")):
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if isinstance(usage, dict):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
        extra = event.get(PROMPTEX_FIELD)
        if isinstance(extra, dict):
            cost, charged = units(extra.get("cost_units")), units(extra.get("lane_charged_units"))
            if cost is not None:
                self.cost = cost
            if charged is not None:
                self.lane_charged = charged
            self.voucher = extra.get("voucher", self.voucher)
            if "lot_rate_bps" in extra:
                self.named = (extra.get("lot"), extra.get("lot_rate_bps"))

    def _count(self, event: dict[str, Any]) -> None:
        """Add what the event produced (`metering.produced.event_bytes`: the UTF-8 bytes of its
        text, never its JSON frame), and a Responses stream's final output as
        `visible_bytes` counts a plain answer."""
        self._produced += event_bytes(event)
        response = event.get("response")
        if isinstance(response, dict) and response.get("output"):
            self._completed = visible_bytes(answers.ENDPOINTS["/v1/responses"], response)

    def produced(self, framed: bool = False) -> int:
        """The UTF-8 bytes of text the answer produced, as its events showed them; `framed`:
        with a plain answer's JSON frame once (`ANSWER_FRAME_BYTES`: the bound a complete
        answer's output tokens are checked against)."""
        if self._completed is not None:
            return self._completed
        return self._produced + (ANSWER_FRAME_BYTES if framed else 0)

    def usage(self, endpoint: str) -> metering.TokenUsage | None:
        return answers.usage_of(endpoint, {"usage": self._usage})


def error_body(path: str, refused: Refused) -> bytes:
    """A refusal in the API's own error shape (OpenAI's, or Anthropic's on /v1/messages)."""
    if path == "/v1/messages":
        return orjson.dumps({"type": "error", "error": {"type": refused.code, "message": refused.message}})
    return orjson.dumps(
        {"error": {"message": refused.message, "type": "promptex_signing", "param": None, "code": refused.code}}
    )
