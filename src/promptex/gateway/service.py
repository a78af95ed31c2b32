"""One /v1 request, end to end:

    authenticate → check the body → price → pick lots → hold an upper bound: the
    buyer's funds and the first lot's capacity, in one ledger transaction
    → call upstream with that bound as its output limit (failing over on
    401/429/5xx/timeouts, moving the capacity along) → settle the metered cost and the
    lot's usage; any failure before an answer releases the hold.

A hold is a true upper bound: its output limit is sent upstream, and a limit beyond what
the balance, the spend cap or the lot covers is a 402 naming the largest that fits,
never silently lowered. An answer cut short is charged its input (a lower bound counted
from the prompt when the upstream reported nothing) and what was streamed. Holds of
requests still in flight are extended while they run; expired holds (of a gateway that
died) are swept by every running gateway (`maintain_holds`).

Ledger calls are blocking SQL: they run on a few ledger threads (`ledger_threads`), one
hop per phase. The chain is never called here: a payment in another provider's token
uses the Oracle TWAP cached by `twap` (read in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

import anyio
import orjson
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from promptex import metering
from promptex.config import ConfigurationError, Settings
from promptex.gateway import errors, fronts, limits, vouchers
from promptex.gateway.adapters import EMBEDDINGS, MissingUsage, ShowsCharged, StreamTranslator, may_write_cache
from promptex.gateway.admission import Admission
from promptex.gateway.charges import ASSET, DEADLINE, MAX_RATE, Charge, SignedLane, raw_headers
from promptex.gateway.errors import GatewayError
from promptex.gateway.guard import BODY_RECEIVED
from promptex.gateway.health import LotHealth, failure
from promptex.gateway.keys import bearer, hash_key
from promptex.gateway.ledger_threads import LedgerThreads
from promptex.gateway.limits import KeyBudgetExceeded, LimitExceeded, Plan
from promptex.gateway.messages import MESSAGES, asks_reasoning, may_reason
from promptex.gateway.metrics import GatewayMetrics
from promptex.gateway.overload import OverloadDetector, ShedLimits
from promptex.gateway.requests import CHAT_IMAGE_TOKENS, parse_body, prompt_floor
from promptex.gateway.responses import RESPONSES
from promptex.gateway.routing import LISTED, TOKENIZED, LiveLot, LotRegistry
from promptex.gateway.store import ApiKey, GatewayStore
from promptex.gateway.twap import Twap, TwapCache
from promptex.gateway.upstream import UpstreamClient, UpstreamError, UpstreamResponse, UpstreamTimeout
from promptex.ledger import (
    AccountInDebt,
    BudgetExceeded,
    ExtraTake,
    Hold,
    HoldOrphaned,
    InsufficientFunds,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    LotCapacityExceeded,
    LotClaim,
    NotAMember,
    Refusal,
    Reservation,
    SpendCapExceeded,
    Sweeper,
    UsageRecord,
    processes,
)
from promptex.ledger.lanes import NAME as LANES
from promptex.ledger.lanes import (
    CeilingBelowCharged,
    ChargedTooLate,
    Lane,
    LaneBusy,
    LaneRefusal,
    SessionClosed,
    Voucher,
    VoucherAboveBalance,
    VoucherUsed,
)
from promptex.ledger.sessions import NEITHER, SessionKey, mode
from promptex.ledger.sessions import SIGNED as SIGNED_MODE
from promptex.ledger.usage import SIGNED
from promptex.metering import TokenUsage, produced
from promptex.metering.assets import token_by_symbol
from promptex.protocol.providers import PROVIDER_TOKENS
from promptex.protocol.units import BPS, TOKEN_UNIT, USDC_SYMBOL, money, span_text, utc_text
from promptex.protocol.vault import recover_voucher_signer

ASSET_HEADER = ASSET
AFFORDABLE_HEADER = "x-promptex-max-affordable-tokens"
# On a plain answer whose upstream reported usage beyond the request's bounds: the sides
# ("input", "output") charged, and shown, at their bound (`Gateway.bounded`).
CLAMPED_HEADER = b"x-promptex-usage-clamped"
DEADLINE_HEADER = DEADLINE.encode()
# The output limits a request may name (the first wins, as each API reads them).
OUTPUT_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
# AccountInDebt is not retried on promotional credit: an account that owes is not served.
REFUSALS = (InsufficientFunds, SpendCapExceeded, BudgetExceeded, NotAMember, AccountInDebt)
JSON = "application/json"
MODEL_SCOPE = "promptex.model"  # the request's model, in its ASGI scope once its body is read
STREAM_END_GRACE_SECONDS = 5.0  # for the last bytes of a stream read up to its [DONE]
log = logging.getLogger("promptex.gateway")


def presented_key(request: Request, endpoint: str) -> str | None:
    """The API key a request presents: its bearer token, or on `/v1/messages` Anthropic's
    `x-api-key` header (its SDK's default)."""
    key = bearer(request.headers.get("authorization"))
    if key is None and endpoint == MESSAGES:
        key = request.headers.get("x-api-key") or None
    return key


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def register_extras(settings: Settings, ledger: Ledger) -> limits.LimitCounters:
    """Register with `ledger`'s holds the extras a gateway's holds take (its limits; the
    ledger registers signed lanes itself): every process that ends holds, a sweeper of
    another process's too, gives back through them."""
    # An expired hold's late answer is settled until its horizon: the request deadline
    # (past which this process answers nothing) plus the margin for its settle.
    late = math.ceil(settings.gateway_request_deadline_seconds + settings.gateway_hold_margin_seconds)
    counters = limits.LimitCounters(ledger.clock, late)
    ledger.holds.register(counters)
    # No signed charge lands later than its session's close less the coordinator's time.
    ledger.vouchers.settle_seconds = math.ceil(settings.gateway_signed_settle_seconds)
    return counters


def end_dead_workers(settings: Settings, pids: Sequence[int], *, wait: float = 5.0) -> int:
    """`--workers`' parent, after reaping `pids`: end the holds of dead gateway processes
    (the reaped ones', and any other's) as any process's sweep does — nothing charged,
    funds, capacity, limits and signed lanes back, their leases given back — on a ledger
    opened and closed here (no connection outlives the call, none is kept across a fork).
    A reaped worker's lock session ends when PostgreSQL reads its closed socket: until
    then (up to `wait` seconds) the sweep is tried again. Returns how many holds ended.
    So a worker that nothing replaces (the command stopping, or the last of its young
    kills) leaves no holds for the next gateway's first sweep or their lifetime."""
    host = socket.gethostname()
    ended = 0
    with Ledger.open(
        settings.ledger_url, migrate=False, pool_size=1, connect_timeout=settings.ledger_connect_timeout_seconds
    ) as ledger:
        if ledger.engine.dialect.name != "postgresql":  # one process per SQLite file: no workers
            return 0
        register_extras(settings, ledger)
        give_up = time.monotonic() + wait
        while True:
            ended += ledger.end_dead_processes()
            with ledger.engine.connect() as conn:
                left = [pid for pid in pids if processes.registered(conn, host, pid)]
            if not left or time.monotonic() >= give_up:
                break
            time.sleep(0.05)
        ledger.holds.maintain()  # their leases' idle room back to the lots
    if left:
        log.warning("gateway workers %s still hold their ledger locks: their holds wait for a sweep", left)
    return ended


def check_hold_lifetime(settings: Settings) -> None:
    """A hold must outlive the upstream call it covers, or a slow answer would be metered
    after its funds and capacity were given to others: at least the upstream timeouts (a
    short request's longest wait) plus the margin. A longer wait (a long plain answer or a
    stream, `Gateway.upstream_wait`: up to the request's deadline) keeps its hold by the
    running gateway's extensions (`maintain_holds`), not by its lifetime, which bounds how
    long a dead gateway's holds last."""
    if settings.gateway_upstream_floor_tokens_per_second <= 0:
        raise ConfigurationError("PROMPTEX_GATEWAY_UPSTREAM_FLOOR_TOKENS_PER_SECOND must be positive")
    margin = settings.gateway_hold_margin_seconds
    needed = settings.gateway_upstream_connect_timeout_seconds + settings.gateway_upstream_timeout_seconds + margin
    if settings.gateway_request_deadline_seconds <= 0:
        raise ConfigurationError("PROMPTEX_GATEWAY_REQUEST_DEADLINE_SECONDS must be positive")
    if settings.gateway_signed_min_deadline_seconds <= 0:
        raise ConfigurationError("PROMPTEX_GATEWAY_SIGNED_MIN_DEADLINE_SECONDS must be positive")
    if margin < 0 or settings.gateway_hold_ttl_seconds < needed:
        raise ConfigurationError(
            f"PROMPTEX_GATEWAY_HOLD_TTL_SECONDS is {settings.gateway_hold_ttl_seconds}: a hold must live at least "
            f"the upstream timeouts plus PROMPTEX_GATEWAY_HOLD_MARGIN_SECONDS ({needed:g} s); raise it or lower them"
        )


@dataclass
class Priced:
    price: metering.ModelPrice
    asset: str
    kind: str
    lots: list[LiveLot]
    rates: dict[int, metering.Rates]  # per lot id
    hold: int
    output: int = 0  # the output limit held for (and sent upstream); 0: embeddings
    input_bound: int = 0  # the input tokens held for (an upper bound from the body's size)
    prompt_floor: int = 0  # a lower bound of the input tokens (for a stream cut short; 0 otherwise)
    capacity: int = 0  # the lot capacity held (USD micro at list price)
    limit_param: str | None = None  # the output limit the client named, if any
    cache_writes: bool = False  # it may write to a prompt cache (held at the write rate)
    endpoint: str = ""
    lot_id: int | None = None  # the lot whose capacity the hold has (set at reserve)
    upstream_seconds: float = 0.0  # the answering upstream call's time (non-streamed)
    streaming: bool = False  # a stream handed over: its end tells its lot's breaker (`stream_done`)
    probe: int | None = None  # the lot whose half-open probe the attempt claimed (`LotHealth.claim`), if any
    hold_seconds: float = 0.0  # the loop's wait for its hold (ledger thread, commit)
    settle_seconds: float = 0.0  # and for its settle: both in `server-timing`
    claims: list[LotClaim] = field(default_factory=list)
    voucher: Voucher | None = None  # signed mode: the voucher its hold is (ceiling − lane_charged)
    lane_charged: int = 0  # signed mode: the lane's total charged before it
    deadline: float = math.inf  # the event loop's time when the request is cut off (`_serve`)
    deadline_seconds: float = 0.0  # that deadline, in seconds from its arrival (`_serve`)
    # Signed mode, the session's last stretch: the deadline cut to fit its last charge second
    # (`Gateway._settles_in_time`; said in `x-promptex-deadline-seconds`). None: not cut.
    deadline_cut: int | None = None
    clamped: tuple[str, ...] = ()  # the sides of its upstream's usage charged at their bound (`Gateway.bounded`)
    unshown_output: int = 0  # output tokens its answer may be billed beyond its text (`produced.unshown_output`)
    asks_reasoning: bool = False  # it asks its model to reason (`messages.asks_reasoning`: `Gateway.bounded`)
    # Signed mode, lots at several rates: each lot's output limit within the voucher's hold
    # (`output` is then the largest, and the limit of the lot being tried: `for_lot`).
    outputs: dict[int, int] | None = None

    def for_lot(self, endpoint: str, body: dict[str, Any], lot: LiveLot) -> tuple[dict[str, Any], int]:
        """The body sent to `lot` and its output limit: the one its rates fit in the hold
        (signed mode; `output` set to it, the bound its answer is charged within), else
        `body` and `output` as they are."""
        if self.outputs is None:
            return body, self.output
        self.output = self.outputs[lot.id]
        return fronts.upstream_body(endpoint, body, self.output), self.output

    @property
    def thinks(self) -> bool:
        """A Messages request that asks to think (`messages.thinks`): only its answer, from an
        Anthropic lot, may hold thinking tokens (`Gateway.bounded`)."""
        return self.endpoint == MESSAGES and self.asks_reasoning

    def lane_state(self) -> dict[str, Any] | None:
        """Signed mode: its lane, the lane's total before it and its voucher, for a refusal
        after its hold was ended uncharged (`errors.hold_ended`)."""
        if self.voucher is None:
            return None
        return {
            "lane": self.voucher.lane,
            "lane_charged_units": str(self.lane_charged),
            "voucher": self.voucher.fields(),
        }


class Gateway:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        store: GatewayStore,
        registry: LotRegistry,
        catalog: metering.Catalog,
        client: UpstreamClient,
        twaps: TwapCache | None = None,
    ) -> None:
        self.s = settings
        self.ledger = ledger
        self.store = store
        self.registry = registry
        self.catalog = catalog
        self.client = client
        self.twaps = twaps
        sqlite = ledger.engine.dialect.name == "sqlite"  # one writer at a time: one thread
        self.metrics = GatewayMetrics(price.model for price in catalog)
        self.health = LotHealth(settings.gateway_lot_breaker_failures, settings.gateway_lot_breaker_cooldown_seconds)
        mode = settings.gateway_ledger_inline
        inline = sqlite and (mode == "always" or (mode == "normal" and not ledger.commits_wait_for_disk))
        self.threads = LedgerThreads(
            1 if sqlite else settings.gateway_ledger_threads,
            observe=self.metrics.ledger_wait.observe,
            # Group commit (SQLite: PostgreSQL's one-statement fast paths commit on their own).
            grouper=ledger.group if sqlite else None,
            max_group=settings.gateway_ledger_group_max,
            per_thread=ledger.pinned_connection,
            # Writes that find the ledger idle run on the loop (`LedgerThreads._inline`).
            inline=ledger.try_writes if inline else None,
            inline_gap=settings.gateway_ledger_inline_gap_ms / 1000,
        )
        self.shed = 0  # requests refused for overload
        self.inflight = 0
        self.holding: dict[str, int] = {}  # request id → when its hold expires, for requests in flight
        self.streams: dict[str, MeteredStream] = {}  # request id → its stream, while it is read
        self.plains: dict[str, Callable[[], object]] = {}  # request id → what cuts its upstream call, while it runs
        self.sweeper = Sweeper(ledger, interval=settings.gateway_sweep_seconds)
        self.overloaded = False  # set by `watch_load`
        # An expired hold's late answer is settled until its horizon: the request deadline
        # (past which this process answers nothing) plus the margin for its settle.
        self.counters = register_extras(settings, ledger)
        self._limits: dict[int, list[tuple[str, limits.Limits]]] = {}  # key id → its subjects' limits
        self.admission = Admission(settings.gateway_max_inflight_per_key, settings.gateway_max_inflight_per_address)
        self.timed_out = 0  # bodies that did not arrive within the body timeout
        self._keys: dict[str, tuple[ApiKey | None, float]] = {}
        self._treasury: int | None = None
        self._rates = lru_cache(maxsize=4096)(self._rates_uncached)
        self._list_rates = lru_cache(maxsize=1024)(lambda model: metering.list_rates(self.catalog.price(model)))
        self.epochs: dict[str, int] = {}  # asset → the epoch a charge settled now is expected in
        self.signed_epochs: dict[str, int] = {}  # ... a signed-mode charge (the next settle_signed batch)
        # (payer, asset) → its newest session key (None: never one), until
        self._modes: dict[tuple[int, str], tuple[SessionKey | None, float]] = {}

    # ─── Setup ───────────────────────────────────────────────────────────────

    def treasury(self) -> int:
        """The promotional treasury's account (found or created once, at startup)."""
        if self._treasury is None:
            try:
                self._treasury = self.ledger.treasury(self.s.welcome_credit_treasury).id
            except (LedgerError, IntegrityError):  # another process created it just now
                self._treasury = self.ledger.treasury(self.s.welcome_credit_treasury).id
        return self._treasury

    def refresh_epochs(self) -> None:
        """Read each asset's expected settlement epoch (blocking; with the lots' refresh)."""
        assets = [USDC_SYMBOL, *(token.symbol for token in PROVIDER_TOKENS)]
        self.epochs = {symbol: self.ledger.next_epoch(symbol) for symbol in assets}
        self.signed_epochs = {symbol: self.ledger.next_signed_epoch(symbol) for symbol in assets}

    # Not coroutines themselves: each hands back the ledger call's own coroutine, so an
    # await of it resumes one frame fewer at every suspension (profile: a ledger call went
    # through three coroutines before it reached `LedgerThreads._submit`).
    def _thread(self, fn: Callable[..., Any], *args: Any) -> Coroutine[Any, Any, Any]:
        return self.threads.run(fn, *args)

    def _money(self, key: ApiKey, fn: Callable[..., Any], *args: Any) -> Coroutine[Any, Any, Any]:
        """A hold's reserve, settle or release on a ledger thread, in a group commit with
        others queued meanwhile — unless the key has a budget of its own (kept in the
        gateway's store: a write outside the ledger's transaction)."""
        if key.budget_asset is not None:
            return self.threads.run(fn, key, *args)
        return self.threads.run_grouped(fn, key, *args)

    def close(self) -> None:
        self.threads.close()

    # ─── Authentication ──────────────────────────────────────────────────────

    async def authenticate(self, request: Request, endpoint: str = "", digest: str | None = None) -> ApiKey:
        """The key the request presents (`digest`: its hash, when the caller has it already)."""
        if digest is None:
            key = presented_key(request, endpoint)
            if key is not None:
                digest = hash_key(key)
        if not digest:
            where = "x-api-key or Authorization: Bearer …" if endpoint == MESSAGES else "Authorization: Bearer …"
            raise errors.GatewayError(401, f"You didn't provide an API key ({where}).", code="missing_api_key")
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[1] > now:
            record = cached[0]
        else:
            record = await self._thread(self._lookup, digest)
            if len(self._keys) > 100_000:
                self._keys.clear()
            self._keys[digest] = (record, now + self.s.gateway_key_cache_seconds)
        if record is None:
            raise errors.invalid_key()
        return record

    def _lookup(self, digest: str) -> ApiKey | None:
        """A key and the limits its requests count against (blocking; cached with the key)."""
        record = self.store.api_key(digest)
        if record is not None:
            found = limits.limits_of(self.ledger.engine, limits.subjects(record))
            if found:
                self._limits[record.id] = found
            else:
                self._limits.pop(record.id, None)
        return record

    # ─── Pricing ─────────────────────────────────────────────────────────────

    def _rates_uncached(self, model: str, asset: str, rate_bps: int, twap: Twap | None) -> metering.Rates:
        twaps = None if twap is None else {twap.symbol: twap.usdc_per_token}
        return metering.rates_for(
            self.catalog.price(model), asset, lot_rate_bps=rate_bps, fee_bps=self.s.protocol_fee_bps, twaps=twaps
        )

    def paying_asset(self, request: Request, key: ApiKey, price: metering.ModelPrice) -> tuple[str, str, Twap | None]:
        """(asset symbol, lot kind, the TWAP a payment across tokens converts at).

        In the model's own provider token a request is served by a tokenized lot: its
        tokens are that lot's claims, burned as it is drawn down. In USDC, by a listed
        lot, whose seller is owed USDC at the rate they set (plus the protocol fee).
        In ANOTHER provider's token (Claude paid in GPT) it is served by a listed lot of
        the model's provider too, priced exactly as in USDC and converted into the paying
        token at that token's Oracle TWAP: the party owed is the listed seller, in USDC.
        Not a tokenized lot: burning GPT retires no CLD claim, so a CLD lot drawn down
        against GPT would leave CLD holders with more claims than capacity, and the
        model's own token's price would not enter what the buyer owes anyway.
        """
        own = metering.provider_token(price.provider).symbol
        symbol = self.asked_asset(request, key, price.provider) or own
        if symbol == USDC_SYMBOL:
            return symbol, LISTED, None
        if symbol == own:
            return symbol, TOKENIZED, None
        if token_by_symbol(symbol) is not None:
            if request.headers.get(vouchers.VOUCHER_HEADER) is not None:  # not built (`errors.SIGNED_CROSS_TOKEN`):
                raise errors.signed_cross_token(price.model, symbol, own)  # before the TWAP is even looked at
            if self.twaps is None:
                raise errors.bad_request(
                    f"`{price.model}` is paid in {own} or USDC here: this gateway does not convert {symbol} "
                    f"(no Oracle configured).",
                    param=ASSET_HEADER,
                    code="conversion_unavailable",
                )
            twap = self.twaps.fresh(symbol)
            if twap is None:
                raise errors.price_unavailable(symbol, own)
            return symbol, LISTED, twap
        raise errors.bad_request(
            f"`{price.model}` is paid in {own}, USDC or another provider's token, not {symbol!r} ({ASSET_HEADER}).",
            param=ASSET_HEADER,
        )

    def asked_asset(self, request: Request, key: ApiKey, provider: str | None) -> str | None:
        """The symbol of the asset the request asks to pay in: its `x-promptex-asset`, else
        its key's default, else the gateway's; "provider" is the model's `provider`'s token
        (None while the provider is unknown: the model not read, or not in the catalog)."""
        wanted = request.headers.get(ASSET_HEADER) or key.default_asset or self.s.gateway_default_asset
        if wanted.lower() == "provider":
            return None if provider is None else metering.provider_token(provider).symbol
        return wanted.upper()

    def price(
        self, request: Request, key: ApiKey, endpoint: str, body: dict[str, Any], *, cache_writes: bool = False
    ) -> tuple[Priced, int]:
        """The lots that may serve the request, their rates and the hold: the most it can
        cost (`cache_writes`: it may write to a prompt cache, see `metering.upper_bound`)."""
        model, input_estimate, requested = fronts.validate(endpoint, body, self.catalog)
        try:
            price = self.catalog.price(model)
        except metering.UnknownModel:
            raise errors.unknown_model(model) from None
        asset, kind, twap = self.paying_asset(request, key, price)
        lots = self.registry.candidates(price.provider, kind)
        if not lots:
            raise errors.no_capacity(model, asset)
        most = max_rate(request) if kind == LISTED else None  # a tokenized lot's rate is not the buyer's
        if most is not None:
            within = [lot for lot in lots if lot.rate_bps <= most]
            if not within:
                raise errors.above_max_rate(model, asset, most, min(lot.rate_bps for lot in lots))
            lots = within
        free = [lot for lot in lots if lot.inflight < self.s.gateway_lot_max_inflight]
        if not free:  # before the voucher's check (`_serve`): unread
            raise errors.busy(unread=True)
        limit_param = next((name for name in OUTPUT_LIMITS if body.get(name) is not None), None)
        cap = self.s.gateway_max_output_tokens
        if endpoint == EMBEDDINGS:
            output = 0
        elif requested is None:
            output = min(self.s.gateway_default_max_tokens, cap)
        elif requested > cap:
            raise errors.bad_request(
                f"'{limit_param}' is too large: {requested}. This gateway holds for at most {cap} output tokens.",
                param=limit_param,
                code="max_tokens_too_large",
            )
        else:
            output = requested
        # Only the lots that can serve the body as asked are priced: before, one that could not
        # (an Anthropic lot for a chat request with tools) was left out after its rates made the
        # hold, and the 402s' amounts (review s17).
        free = _translatable(endpoint, body, free)
        rates = {lot.id: self._rates(model, asset, lot.rate_bps, twap) for lot in free}
        hold = max(metering.upper_bound(r, input_estimate, output, cache_writes=cache_writes) for r in rates.values())
        bound = max(1, metering.upper_bound(self._list_rates(model), input_estimate, output, cache_writes=cache_writes))
        asks = asks_reasoning(endpoint, body)
        priced = Priced(
            price,
            asset,
            kind,
            free,
            rates,
            max(hold, 1),
            output=output,
            input_bound=input_estimate,
            # Read only when a stream is cut short (`stream_done`): a plain answer is metered
            # from its usage or not at all, and counting a long prompt's words costs.
            prompt_floor=prompt_floor(endpoint, body) if body.get("stream") else 0,
            capacity=bound,
            limit_param=limit_param,
            cache_writes=cache_writes,
            endpoint=endpoint,
            claims=[LotClaim(lot.id, bound) for lot in free],
            unshown_output=produced.unshown_output(endpoint, body, may_think=may_reason(price, asks)),
            asks_reasoning=asks,
        )
        return priced, output

    # ─── Signed mode (issue 23; the wire is `gateway.vouchers`) ───────────────

    async def signed_mode(self, request: Request, key: ApiKey, priced: Priced) -> Priced:
        """Check the request's voucher against the account's current session and lane and
        hold exactly ceiling − charged, lowering the output limit so the cost fits. An
        account without a session key in the asset, or with a spend cap set after its newest
        one, is served in capped mode, unchanged; one whose session takes vouchers is never
        served without a voucher, nor one whose session is over before a cap is set after it
        (the vault would settle such a request neither way: `ledger.sessions.mode`)."""
        header = request.headers.get(vouchers.VOUCHER_HEADER)
        payer = key.paying_account
        if header is None:
            found = await self._newest_session(payer, priced.asset)
            paying = mode(found, self.ledger.clock())
            if paying == SIGNED_MODE and priced.kind == LISTED and priced.asset != USDC_SYMBOL:
                # Paid across tokens (`paying_asset`): no voucher could be served either.
                raise errors.signed_cross_token(priced.price.model, priced.asset,
                                                metering.provider_token(priced.price.provider).symbol)  # fmt: skip
            if paying == SIGNED_MODE:
                raise vouchers.refusal(
                    402,
                    "voucher_required",
                    f"This account pays in {priced.asset} in signed mode: each request carries a voucher "
                    f"({vouchers.VOUCHER_HEADER}), e.g. through `promptex proxy`, while its session key is in force "
                    f"(to leave: `promptex session revoke --asset {priced.asset}`, then, once the session has ended "
                    f"on chain, `promptex wallet spend-cap --asset {priced.asset} …`).",
                )
            if paying == NEITHER:
                assert found is not None
                raise self._between_modes(found, priced.asset)
            return priced
        voucher = vouchers.parse(header)
        session, lane = await self._thread(self.ledger.signed_state, payer, priced.asset, voucher.lane)
        now = self.ledger.clock()
        if session is None:
            raise vouchers.refusal(
                403, "session_unknown", f"This account has no session key in {priced.asset}: send no voucher."
            )
        if voucher.session != session.session:
            raise vouchers.refusal(
                409,
                "session_not_current",
                f"The voucher names session {voucher.session}; the account's current session is {session.session}.",
                session=session.session,
            )
        ended = session.ended_why(now)
        if ended is not None:
            after = ": send no voucher, requests are served under it" if session.capped_by is not None else ""
            raise vouchers.refusal(403, "session_ended", f"The voucher's {ended}{after}.", session=session.session)
        if lane is None:
            raise vouchers.refusal(
                400,
                "lane_out_of_range",
                f"Lane {voucher.lane} is not one of session {session.session}'s {session.lanes} lanes.",
                lanes=session.lanes,
            )
        signer = recover_voucher_signer(
            vouchers.signature_bytes(voucher),
            chain_id=session.chain_id,
            vault=session.vault,
            account=session.address,
            asset=session.asset_address,
            session=voucher.session,
            lane=voucher.lane,
            ceiling=voucher.ceiling,
        )
        if signer is None or signer.lower() != session.key.lower():
            raise vouchers.refusal(
                403, "voucher_bad_signature", "The voucher is not signed by this account's session key.", lane
            )
        priced.deadline_cut = self._settles_in_time(session, now, lane)
        if lane.inflight is not None:
            raise vouchers.refusal(409, "lane_busy", f"Lane {voucher.lane} has a request in flight.", lane)
        if voucher.ceiling < lane.charged:
            raise vouchers.refusal(
                409,
                "ceiling_below_charged",
                f"The voucher's ceiling {voucher.ceiling} is below the {lane.charged} lane {voucher.lane} was charged.",
                lane,
            )
        if lane.voucher is not None and voucher.ceiling <= lane.voucher.ceiling:
            raise vouchers.refusal(  # (checked again in the hold's transaction: `ledger.lanes`)
                409,
                "voucher_used",
                f"The voucher's ceiling {voucher.ceiling} is not above the {lane.voucher.ceiling} lane {voucher.lane} "
                f"accepted before: each voucher is good for one request, sign a higher one.",
                lane,
            )
        hold = voucher.ceiling - lane.charged
        p, cache = priced.price, priced.cache_writes
        outputs: dict[int, int] | None = None
        lots = priced.lots
        if priced.output:
            # Each lot gets the most output its rates fit in the hold: the one that serves
            # (the cheapest first) is not cut to a pricier one's fit — a failover to a pricier
            # lot sends that lot's own, lower limit (`Priced.for_lot`); a lot whose rates do
            # not fit even the input is left out. (Before, every lot got the priciest's fit.)
            fits = {
                lot.id: metering.largest_output(priced.rates[lot.id], priced.input_bound, hold, priced.output,
                                                cache_writes=cache)
                for lot in priced.lots
            }  # fmt: skip
            lots = [lot for lot in priced.lots if fits[lot.id] >= 1]
            most = max(fits.values(), default=-1)
            output = most
            if len(set(fits.values())) > 1:
                outputs = {lot.id: fits[lot.id] for lot in lots}
        else:  # embeddings: no output to lower; each lot checked at its own rates, as above
            # (before, every lot at the priciest's: a hold fitting the cheapest lot was refused)
            lots = [lot for lot in priced.lots if self._least_hold(priced, lot) <= hold]
            most = 1 if lots else -1
            output = 0
        if most < 1:  # the least a lot the request would go to needs: that lot would serve it
            need = min(self._least_hold(priced, lot) for lot in self._healthy(priced))
            refusal = vouchers.refusal(
                402,
                "voucher_below_input",
                f"The voucher holds {self.human(priced.asset, hold)} (ceiling − charged), less than this request's "
                f"input alone may cost: hold at least {need} units.",
                lane,
                minimum_hold_units=str(need),
            )
            refusal.headers[AFFORDABLE_HEADER] = "0"
            raise refusal
        bound = max(1, metering.upper_bound(self._list_rates(p.model), priced.input_bound, output, cache_writes=cache))
        return dataclasses.replace(
            priced,
            lots=lots,
            hold=hold,
            output=output,
            outputs=outputs,
            capacity=bound,
            claims=[LotClaim(lot.id, bound) for lot in lots],
            voucher=voucher,
            lane_charged=lane.charged,
        )

    def _least_hold(self, priced: Priced, lot: LiveLot) -> int:
        """The least hold `lot` serves the request within (signed mode): its input's bound and
        one output token (none for an embedding) at the lot's rates."""
        output = 1 if priced.output else 0
        return max(1, metering.upper_bound(priced.rates[lot.id], priced.input_bound, output,
                                           cache_writes=priced.cache_writes))  # fmt: skip

    def _healthy(self, priced: Priced) -> list[LiveLot]:
        """The request's lots it could try now (`LotHealth.may_try`: neither the lot's circuit
        nor its (lot, model)'s open), as `_in_order` tries them; all of them if none could."""
        model = priced.price.model
        return [lot for lot in priced.lots if self.health.may_try(lot.id, model)] or priced.lots

    async def _name_lane(self, request: Request, key: ApiKey, refusal: GatewayError) -> None:
        """A refusal before any hold (no lot within the request's max rate, all lots busy, …)
        of a request carrying a voucher names the lane's total and stored voucher, as a voucher
        refusal does (`vouchers.refusal`): the signing proxy then knows the voucher took
        nothing. Without them it weighed such an answer as one that may have cost its whole
        hold, and three in a row stopped signing. Not named when unknown: no current session
        or lane, a voucher of another session, a request in flight on the lane (its total
        may still grow)."""
        header = request.headers.get(vouchers.VOUCHER_HEADER)
        if header is None or refusal.extra:
            return
        model = request.scope.get(MODEL_SCOPE)  # (once its body was read)
        price = self.catalog.models.get(model) if isinstance(model, str) else None
        asset = self.asked_asset(request, key, None if price is None else price.provider)
        if asset is None:
            return
        try:
            voucher = vouchers.parse(header)
        except GatewayError:
            return
        await self._name_voucher_lane(key, asset, voucher.session, voucher.lane, refusal)

    async def _name_voucher_lane(
        self, key: ApiKey, asset: str, session_id: int, index: int, refusal: GatewayError
    ) -> None:
        """`_name_lane` for the voucher of session `session_id`, lane `index`."""
        if refusal.extra:
            return
        try:
            payer = key.paying_account
            session, lane = await self._thread(self.ledger.signed_state, payer, asset, index)
        except (GatewayError, LedgerError, SQLAlchemyError):  # best effort: the refusal goes out as it is
            return
        if session is None or lane is None or session_id != session.session or lane.inflight is not None:
            return
        refusal.extra = vouchers.refusal(refusal.status, "", "", lane).extra

    async def lanes(self, request: Request) -> bytes:
        """`GET /v1/promptex/lanes[?asset=]`: the paying account's current session in the
        asset and each of its lanes — charged (ledger), settled (chain), the highest
        voucher stored, whether a request is in flight — for a proxy to recover from."""
        key = await self.authenticate(request)
        wanted = request.query_params.get("asset") or key.default_asset or self.s.gateway_default_asset
        asset = wanted.upper()
        if asset != USDC_SYMBOL and token_by_symbol(asset) is None:
            raise errors.bad_request(f"No asset {wanted!r}: USDC or a provider token's symbol.", param="asset")
        payer = key.paying_account
        session, lanes = await self._thread(self.ledger.lanes, payer, asset)
        body: dict[str, Any] = {"object": "list", "asset": asset, "session": None, "data": []}
        if session is not None:
            body.update(
                session=session.session,
                key=session.key,
                lanes=session.lanes,
                maximum=str(session.maximum),
                expiry=session.expiry,
                open=session.open_at(self.ledger.clock()),
                data=[lane.fields() for lane in lanes],
            )
        return orjson.dumps(body)

    async def _newest_session(self, payer: int, asset: str) -> SessionKey | None:
        """The account's newest session key in `asset` (cached like API keys: a new
        registration, revocation or spend cap is seen within `gateway_key_cache_seconds`)."""
        now = time.monotonic()
        cached = self._modes.get((payer, asset))
        if cached is not None and cached[1] > now:
            return cached[0]
        found: SessionKey | None = await self._thread(self.ledger.session, payer, asset)
        if len(self._modes) > 100_000:
            self._modes.clear()
        self._modes[(payer, asset)] = (found, now + self.s.gateway_key_cache_seconds)
        return found

    def _settles_in_time(self, session: SessionKey, now: int, lane: Lane) -> int | None:
        """The deadline a voucher's request is served under when its whole one would let it
        be charged too late to be settled (None: the whole deadline fits). The vault settles
        a session's vouchers until the close of its last window (`SessionKey.settlement_close`),
        the coordinator is given `gateway_signed_settle_seconds` before it — no charge lands
        on the lane later than that, its last charge second (the ledger refuses it:
        `ledger.lanes.ChargedTooLate`) — and a request may be charged until its arrival + its
        deadline + the hold margin (its answer's settle). So in the session's last stretch the
        deadline is cut to the last charge second less the margin less now, counted from the
        request's arrival (before now); the upstream wait, its cut-off and the late answers of
        a hold swept at it all end within it. Below `gateway_signed_min_deadline_seconds` the
        voucher is refused (403 session_ending, nothing held): a request given less is cut off
        more often than served. Before (9508f89), every voucher whose WHOLE deadline did not
        fit was refused: on the local market's 10 s windows the last ~13 minutes of a session."""
        s = self.s
        close = session.settlement_close()
        last_charge = close - math.ceil(s.gateway_signed_settle_seconds)
        fits = math.floor(last_charge - s.gateway_hold_margin_seconds - now)
        if fits >= s.gateway_request_deadline_seconds:
            return None
        least = s.gateway_signed_min_deadline_seconds
        if fits >= least:
            return fits
        last = last_charge - math.ceil(s.gateway_hold_margin_seconds + least)
        raise vouchers.refusal(
            403,
            "session_ending",
            f"Session {session.session}'s vouchers settle on chain only until {utc_text(close)}, and a request "
            f"taken now would have {max(0, fits)} s to be answered, less than the least deadline of {least:g} s: "
            f"none is taken after {utc_text(last)}. Go on after {utc_text(close)} with a new session (`promptex "
            f"session create --asset {session.asset}`) or a spend cap (`promptex wallet spend-cap --asset "
            f"{session.asset} …`).",
            lane,
            settles_until=close,
        )

    def _between_modes(self, session: SessionKey, asset: str) -> GatewayError:
        """A plain request of an account whose session is over and that set no spend cap since:
        the vault would settle it neither by a voucher nor under a cap. Says how to go on, and
        until when (UTC, and in how long) the vault settles the session's vouchers: the vault
        takes a spend cap only after that (`SessionKey.known_close`; unknown for a session
        indexed before migration 0026: at least one window after its expiry)."""
        ended = "was revoked" if session.revoked_at is not None else f"expired at {utc_text(session.expiry)}"
        close, now = session.known_close(), self.ledger.clock()
        if close is None:
            settles = "its vouchers settle on chain until the close of the settlement window after its expiry"
        elif now <= close:
            settles = f"its vouchers settle on chain until {utc_text(close)} (in {span_text(close - now)})"
        else:
            settles = f"its vouchers settled on chain until {utc_text(close)} ({span_text(now - close)} ago)"
        over = f"{ended}; {settles}"
        return vouchers.refusal(
            402,
            "spend_cap_required",
            f"This account's session {session.session} in {asset} {over}, and no spend cap was set since: plain "
            f"requests are served again once one is (`promptex wallet spend-cap --asset {asset} --per-epoch … "
            f"--total …`, accepted by the vault from then on), or sign vouchers of a new session (`promptex session "
            f"create --asset {asset}`, then `promptex proxy`).",
            session=session.session,
        )

    async def _lane_refused(self, key: ApiKey, priced: Priced, exc: LedgerError) -> GatewayError:
        """The ledger refused a voucher's hold: say why, with the lane as it is now."""
        voucher = priced.voucher
        assert voucher is not None
        payer = key.paying_account
        lane = await self._thread(self.ledger.lane, payer, priced.asset, voucher.session, voucher.lane)
        if isinstance(exc, LaneBusy):
            return vouchers.refusal(409, "lane_busy", f"Lane {voucher.lane}: {exc}.", lane)
        if isinstance(exc, VoucherUsed):
            return vouchers.refusal(409, "voucher_used", f"{exc}.", lane)
        if isinstance(exc, CeilingBelowCharged):
            return vouchers.refusal(409, "ceiling_below_charged", f"{exc}.", lane)
        if isinstance(exc, SessionClosed):
            return vouchers.refusal(403, "session_ended", f"{exc}.", lane)
        if isinstance(exc, SpendCapExceeded):
            return vouchers.refusal(402, "session_maximum_reached", f"The session's maximum is spent: {exc}.", lane)
        available = exc.available if isinstance(exc, VoucherAboveBalance) else None
        if isinstance(exc, InsufficientFunds):  # the hold itself is more than is spendable, and
            _, lanes = await self._thread(self.ledger.lanes, payer, priced.asset)  # idle lanes keep their slack
            slack = sum(
                other.voucher.ceiling - other.charged
                for other in lanes
                if other.lane != voucher.lane and other.inflight is None and other.voucher is not None
            )
            available = lane.charged + max(0, (exc.available or 0) - slack)
        extra = {} if available is None else {"available_units": str(available)}
        return vouchers.refusal(
            402, "voucher_above_balance", f"The voucher's ceiling is too high: {exc}.", lane, **extra
        )

    # ─── Money ───────────────────────────────────────────────────────────────

    def _reserve(self, key: ApiKey, priced: Priced, request_id: str) -> Hold:
        """Hold the upper bound and the lot capacity: from the key's org, else the account's
        own balance, else its promotional credit; and from the key's own budget, if it has one."""
        asset, amount = priced.asset, priced.hold
        if key.budget_asset is not None and key.budget_asset != asset:
            raise KeyBudgetExceeded(f"this API key may only spend {key.budget_asset}", available=0)
        holds = self.ledger.holds
        ttl = self.s.gateway_hold_ttl_seconds
        limited = self._limits.get(key.id, ())
        budgeted = key.budget_asset is not None
        extras: tuple[ExtraTake, ...] = ()
        if limited or budgeted:  # taken in the hold's own transaction (`gateway.limits`), swept with it
            tokens = priced.input_bound + priced.output
            self.counters.plan(request_id, Plan(limited, tokens, key.id if budgeted else None))
            extras = (ExtraTake(limits.NAME, tokens),)
        if priced.voucher is not None:  # its lane, taken in the hold's transaction (`ledger.lanes`)
            self.ledger.vouchers.plan(request_id, priced.voucher)
            extras = (*extras, ExtraTake(LANES, priced.voucher.ceiling))
        mine = Reservation(
            request_id, key.account, asset, amount, ttl, payer=key.payer, lots=priced.claims, extras=extras
        )
        try:
            if key.payer is not None or priced.voucher is not None:  # a voucher is the account's own: no promotions
                return holds.reserve(mine)
            try:
                return holds.reserve(mine)
            except (InsufficientFunds, SpendCapExceeded) as own:
                try:
                    return holds.reserve(dataclasses.replace(mine, payer=self.treasury()))
                except REFUSALS as other:
                    if isinstance(other, Refusal) and (other.available or 0) > (own.available or 0):
                        own.available = other.available  # the most either could pay
                    raise own from None
        finally:
            if limited or budgeted:
                self.counters.plan(request_id, None)
            if priced.voucher is not None:
                self.ledger.vouchers.plan(request_id, None)

    def _settle(self, key: ApiKey, request_id: str, cost: int, record: UsageRecord, served: bool = False) -> Hold:
        self.holding.pop(request_id, None)
        return self.ledger.holds.settle(request_id, cost, record=record, served=served)

    def _release(self, key: ApiKey, request_id: str, amount: int) -> None:
        self.holding.pop(request_id, None)
        self.ledger.holds.release(request_id)

    async def reserve(self, key: ApiKey, priced: Priced, request_id: str) -> Hold:
        try:
            return await self._reserve_or_refuse(key, priced, request_id)
        except GatewayError as exc:
            # Refused in the hold's own transaction (a limit on the key, its budget, the lots'
            # capacity, …): a voucher's lane took nothing, so the refusal names the lane as a
            # voucher refusal does (`_name_lane`). Before, a signed buyer over its key's
            # requests-per-minute got 429s without the lane's figures, each weighed as a hold,
            # and signing stopped after three on a lane. Not a ledger that did not answer: a
            # hold made all the same may have taken the lane.
            if priced.voucher is not None and exc.code != "ledger_unavailable":
                voucher = priced.voucher
                await self._name_voucher_lane(key, priced.asset, voucher.session, voucher.lane, exc)
            raise

    async def _reserve_or_refuse(self, key: ApiKey, priced: Priced, request_id: str) -> Hold:
        began = time.perf_counter()
        try:
            hold: Hold = await self._money(key, self._reserve, priced, request_id)
        except LotCapacityExceeded as exc:
            for claim in priced.claims:
                self.registry.full(claim.lot_id, exc.available or 0)
            raise self._refused(key, priced, exc) from None
        except LimitExceeded as exc:
            raise errors.rate_limited(str(exc), exc.retry_after) from None
        except (LaneRefusal, InsufficientFunds, SpendCapExceeded) as exc:
            if priced.voucher is None:
                raise self._refused(key, priced, exc) from None
            raise await self._lane_refused(key, priced, exc) from None
        except (*REFUSALS, KeyBudgetExceeded) as exc:
            raise self._refused(key, priced, exc) from None
        except LedgerUnavailable as exc:  # a hold made all the same is the ledger's to release (`Holds.end_dead`)
            log.warning("a reserve failed, the ledger unreachable: %s", exc)
            raise errors.ledger_unavailable() from None
        priced.hold_seconds = time.perf_counter() - began
        priced.lot_id = hold.lot_id
        self.holding[request_id] = hold.expires_at
        return hold

    def _refused(self, key: ApiKey, priced: Priced, exc: LedgerError) -> GatewayError:
        """The 402 (or 503: no lot has room even for the input) that says what would fit:
        the largest output limit the balance, cap, budget or lot covers, never lowered silently,
        and whose it is (`_short`)."""
        if isinstance(exc, NotAMember):  # its holder is not in the org (any more): nothing about the org
            return errors.insufficient_balance(
                "This API key spends from an org its account is not a member of: ask the org for a new key."
            )
        if isinstance(exc, AccountInDebt):
            whose = "Your account is" if key.payer is None else "The org this API key spends from is"
            return errors.insufficient_balance(f"{whose} not served in {priced.asset} until it repays: {exc}")
        available = exc.available if isinstance(exc, Refusal) else None
        if isinstance(exc, LotCapacityExceeded):
            p = priced.price
            most = metering.largest_output(
                self._list_rates(p.model), priced.input_bound, available or 0, priced.output,
                cache_writes=priced.cache_writes,
            )  # fmt: skip
            if most < 1 and priced.output:
                return errors.no_capacity(p.model, priced.asset)
            what = "the capacity its lots have left"
        else:
            most = min(
                metering.largest_output(
                    priced.rates[lot.id], priced.input_bound, available or 0, priced.output,
                    cache_writes=priced.cache_writes,
                )
                for lot in priced.lots  # the lots it may go to (signed mode: those its voucher fits)
            ) if available is not None else -1  # fmt: skip
            what = _short(key, exc)
        param = priced.limit_param or ("max_output_tokens" if priced.endpoint == RESPONSES else "max_tokens")
        if not priced.output or most < 1:
            message = (
                f"This request's upper bound of {self.human(priced.asset, priced.hold)} is more than {what} "
                f"covers, even for its input: {exc}"
            )
            return errors.insufficient_balance(message)
        if priced.limit_param is None:
            message = (
                f"Without '{param}' this request holds for {priced.output} output tokens, more than {what} covers "
                f"({exc}); set '{param}' to at most {most}."
            )
        else:
            message = (
                f"'{param}' is {priced.output}, more than {what} covers ({exc}): the largest '{param}' it covers "
                f"is {most}."
            )
        refusal = errors.insufficient_balance(message)
        refusal.param = param
        refusal.headers[AFFORDABLE_HEADER] = str(most)
        return refusal

    async def finish(
        self, key: ApiKey, priced: Priced, request_id: str, lot: LiveLot, usage: TokenUsage, *, streamed: bool = False
    ) -> Charge:
        """Settle the hold at the metered cost; the usage record (which lot served, at what
        list value: the lot's usage, with its cached and reasoning tokens) is written in the
        same ledger transaction, for the coordinator. `streamed`: the client has the answer
        already (a stream, metered as it ends): a settle that cannot reach the database
        but had committed stays charged (a plain request's is given back: it is answered
        503, "nothing is charged")."""
        # Within the request's bounds (`bounded`: its callers' answers show this usage
        # already): an upstream that reports more output than the limit sent, or more input
        # than the body can hold (a seller's own endpoint may), is charged, recorded and
        # paid the bound, no more. Before, the charge was capped only at the hold (107x the
        # true cost in the breaker's repro) and the record drew the lot, and paid its
        # seller, the whole list value reported. Never beyond the hold (and so the voucher)
        # either: within the bounds the cost is at most the hold, which priced them.
        usage = self.bounded(priced, request_id, lot, usage)
        metered = metering.usage_cost(priced.rates[lot.id], usage)
        cost = min(metered, priced.hold)
        if cost < metered:  # charged the hold, less than its usage's cost (the record keeps the usage)
            log.warning(
                "request %s: lot %d's usage costs %d %s units, more than its hold of %d: charged the hold",
                request_id, lot.id, metered, priced.asset, priced.hold,
            )  # fmt: skip
        voucher = priced.voucher
        p = priced.price
        usd = metering.usage_cost(self._list_rates(p.model), usage)
        record = UsageRecord(
            model=p.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            list_usd_micro=usd,
            gateway_lot_id=lot.id,
            chain_lot_id=lot.chain_lot_id,
            lot_kind=lot.kind,
            fee_bps=self.s.protocol_fee_bps if priced.kind == LISTED else None,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            reasoning_tokens=usage.reasoning_tokens,
        )
        if voucher is not None:
            record = dataclasses.replace(
                record,
                mode=SIGNED,
                voucher_session=voucher.session,
                voucher_lane=voucher.lane,
                voucher_ceiling=voucher.ceiling,
            )
        began = time.perf_counter()
        try:
            hold: Hold = await self._money(key, self._settle, request_id, cost, record, streamed)
        except limits.LateAnswerRefused:  # metered past its horizon (this process stalled): not served
            raise errors.deadline_passed(priced.deadline_seconds) from None
        except ChargedTooLate:  # metered past its session's last charge second (this process stalled)
            with anyio.CancelScope(shield=True):  # an active hold: its lane freed now, not at its expiry
                await self.release(key, priced, request_id)
            raise errors.deadline_passed(priced.deadline_seconds) from None
        except HoldOrphaned:  # a sweeper found this process's ledger lock free and ended the hold
            raise errors.hold_ended(priced.lane_state()) from None
        except LedgerUnavailable as exc:  # not served; a hold it left active is released by the ledger's sweep
            log.warning("a settle failed, the ledger unreachable: %s", exc)
            raise errors.ledger_unavailable("settle") from None
        priced.settle_seconds = time.perf_counter() - began
        self.registry.used(lot, usd)
        charged = cost if hold.charged is None else hold.charged
        signed = None
        if voucher is not None:
            signed = SignedLane(voucher.lane, priced.lane_charged + charged, voucher.header())
        return self.charge(request_id, priced.asset, charged, lot, signed)

    def bounded(
        self, priced: Priced, request_id: str, lot: LiveLot, usage: TokenUsage, produced_bytes: int | None = None
    ) -> TokenUsage:
        """`usage` as the request can have used it (`metering.within_bounds`): input at most
        its body's bound (`priced.input_bound`, cache reads and writes inside it), output at
        most the limit sent upstream (`priced.output`; an embedding's none), and visible
        output (beyond the reasoning) at most what its answer's text can hold: the
        `produced_bytes` of the answer as its client gets it (`produced.visible_bytes`, a
        stream's as its translator passed them on) and the request's prediction's bytes —
        the bounds the hold priced and the signing proxy checks an answer against
        (`buyerside.answers`), so an answer charged here is never one the proxy refuses.
        Before, an upstream reporting 1,000 output tokens for "Sunny." (max_tokens 1,000)
        was charged 1,000 to a buyer not behind the proxy. An upstream's usage beyond them
        is logged (the lot, the counts) and noted on `priced.clamped`
        (`x-promptex-usage-clamped` on a plain answer), once a side: a native Messages
        stream's message_start is bounded too (`messages.NativeStream`, no answer's text yet).

        Reasoning is kept only where the model can reason: not for a model the catalog says
        never does (`reasoning = false`: gpt-4o, gpt-4.1, Llama, …); an Anthropic model only
        when the request asks it to (`messages.asks_reasoning`), and on an Anthropic lot
        only when the body sent asks it to think (a Messages request's `thinking`; the chat
        translation never sends one). Reasoning tokens reported otherwise are
        visible output, bounded by the answer's text as any. Before, they escaped that
        bound: "Sunny." reported as 1,000 output tokens, 994 of them reasoning (or
        thinking), was charged 1,000, and the signing proxy passed it (6 visible)."""
        visible = None if produced_bytes is None else produced.visible_limit(produced_bytes, priced.unshown_output)
        rates = self._list_rates(priced.price.model)
        reported = usage
        price = priced.price
        reasons = may_reason(price, priced.asks_reasoning) and (lot.api != "anthropic" or priced.thinks)
        if usage.reasoning_tokens and not reasons:
            usage = dataclasses.replace(usage, reasoning_tokens=0)
        within = metering.within_bounds(rates, usage, priced.input_bound, priced.output, visible)
        if within is usage:  # within its bounds (its thinking, if it could not think, as visible output)
            return within
        sides = ("input",) * (within.input_tokens < reported.input_tokens)
        sides += ("output",) * (within.output_tokens < reported.output_tokens)
        if set(sides) <= set(priced.clamped):  # a native stream's message_start was bounded: logged then
            return within
        priced.clamped = tuple(dict.fromkeys((*priced.clamped, *sides)))
        log.warning(
            "request %s: lot %d reported %d input and %d output tokens (%d of them reasoning), beyond the request's "
            "bounds (%d input, %d output, %s visible output for its answer's text): charged at the bounds",
            request_id, lot.id, reported.input_tokens, reported.output_tokens, reported.reasoning_tokens,
            priced.input_bound,
            priced.output, "no bound on" if visible is None else visible,
        )  # fmt: skip
        return within

    async def release(self, key: ApiKey, priced: Priced, request_id: str) -> None:
        try:
            await self._money(key, self._release, request_id, priced.hold)
        except LedgerUnavailable as exc:  # the ledger's own sweep releases it once it answers (`Holds.end_dead`)
            log.warning("a release failed, the ledger unreachable: %s", exc)

    def human(self, asset: str, units: int) -> str:
        """An amount for the people who read error messages: whole units, and a provider
        token's dollar value when the Oracle's TWAP is fresh (exact units stay in fields)."""
        twap = self.twaps.fresh(asset) if self.twaps is not None and asset != USDC_SYMBOL else None
        return money(units, asset, twap=None if twap is None else twap.price)

    def usd_micro(self, asset: str, units: int) -> int:
        """`units` of `asset` in USD micro-units, rounded up: USDC as is, a provider token at
        its Oracle TWAP when one is fresh, else at its face value."""
        if asset == USDC_SYMBOL:
            return units
        twap = self.twaps.fresh(asset) if self.twaps is not None else None
        token = token_by_symbol(asset)
        if twap is not None:
            per_token = twap.usdc_per_token
        elif token is not None:
            per_token = Fraction(token.face_value_usd_micro)
        else:
            return 0
        value = units * per_token / TOKEN_UNIT
        return -(-value.numerator // value.denominator)

    def charge(self, request_id: str, asset: str, units: int, lot: LiveLot, signed: SignedLane | None = None) -> Charge:
        """`units` of `asset` (a charge, or a hold) as told to the buyer (`gateway.charges`)."""
        epoch = (self.epochs if signed is None else self.signed_epochs).get(asset, 1)
        usd = self.usd_micro(asset, units)
        rate = lot.rate_bps if lot.kind == LISTED else None  # what the charge is at (the proxy checks it)
        return Charge(request_id, asset, units, usd, lot.id, lot.chain_lot_id, epoch, signed, rate)

    # ─── Serving ─────────────────────────────────────────────────────────────

    async def serve(
        self, endpoint: str, request: Request, request_id: str, digest: str | None = None
    ) -> PlainAnswer | MeteredStream:
        """One request. Its key is checked and its whole body read (within the body
        timeout) before it takes one of the process's slots: a slow client holds only its
        own key's and address's share (`admission`, counted by the caller). `digest`: the
        presented key's hash ("" for none), if the caller has it. A database it cannot reach
        at a step the hold's own paths do not map (the key's lookup, a lane's read) is a 503
        `ledger_unavailable`, as theirs are, never a 500: a hold made before is released on
        `_serve`'s way out (or by the ledger's own sweep), nothing charged."""
        try:
            key = await self.authenticate(request, endpoint, digest)
            try:
                raw = await self.read(request)
            except GatewayError as exc:  # too large, too slow: a voucher's lane named (`_name_lane`)
                await self._name_lane(request, key, exc)
                raise
            if self.overloaded or self.inflight >= self.s.gateway_max_inflight:
                self.shed += 1
                raise errors.busy("The gateway is at capacity; retry shortly.", unread=True)
            self.inflight += 1
            start = time.perf_counter()
            try:
                return await self._serve(endpoint, request, request_id, key, raw, start)
            finally:
                self.inflight -= 1
        except OperationalError as exc:
            log.warning("a request failed, the ledger unreachable: %s", type(exc.orig).__name__)
            raise errors.ledger_unavailable() from None

    async def read(self, request: Request) -> bytes:
        """The whole body, or 408 (and the connection closed) if it takes longer than the body
        timeout. (asyncio's timeout: half the CPU of anyio's cancel scope; and none at all
        for a body the server has whole already, `guard.BODY_RECEIVED`: nothing to wait for.)"""
        if request.scope.get(BODY_RECEIVED):
            return await read_body(request, self.s.gateway_max_body_bytes)
        try:
            async with asyncio.timeout(self.s.gateway_body_timeout_seconds):
                return await read_body(request, self.s.gateway_max_body_bytes)
        except TimeoutError:
            self.timed_out += 1
            raise GatewayError(
                408,
                f"The request body did not arrive within {self.s.gateway_body_timeout_seconds:g} seconds.",
                code="request_timeout",
                headers={"connection": "close"},
            ) from None

    async def _serve(
        self, endpoint: str, request: Request, request_id: str, key: ApiKey, raw: bytes, start: float
    ) -> PlainAnswer | MeteredStream:
        # Anthropic's prompt cache is written only where a request marks it (`cache_control`),
        # at rates above the input rate (`may_write_cache`: a mention anywhere only makes
        # the hold larger; a key written with escapes counts).
        try:
            body = parse_body(raw, self.s.gateway_max_json_depth)
            request.scope[MODEL_SCOPE] = body.get("model")  # the metrics' label (`GatewayApp`)
            priced, output = self.price(request, key, endpoint, body, cache_writes=may_write_cache(raw, body))
        except GatewayError as exc:
            await self._name_lane(request, key, exc)
            raise
        priced = await self.signed_mode(request, key, priced)
        output = priced.output
        upstream_body = fronts.upstream_body(endpoint, body, output)
        # The deadline counts from the request's arrival (before its hold is made, so it
        # ends before its hold's late-answer horizon: `limits.LimitCounters`; and before the
        # session's last charge second when signed mode cut it: `_settles_in_time`).
        cut = priced.deadline_cut
        seconds = priced.deadline_seconds = self.s.gateway_request_deadline_seconds if cut is None else cut
        loop_now = asyncio.get_running_loop().time()
        priced.deadline = loop_now - (time.perf_counter() - start) + seconds
        await self.reserve(key, priced, request_id)
        stream = bool(body.get("stream")) and endpoint != EMBEDDINGS
        try:
            if stream:  # added before the stream starts: the gateway's part of its first byte
                metered = await self._stream(endpoint, key, priced, upstream_body, request_id, output)
                self.metrics.added.observe(time.perf_counter() - start - priced.upstream_seconds)
                return metered
            response = await self._once(endpoint, key, priced, upstream_body, request_id, output)
            upstream = priced.upstream_seconds
            added = time.perf_counter() - start - upstream
            self.metrics.added.observe(added)
            # The gateway's part, and of it the waits for the ledger's hold and settle.
            timing = (
                f"upstream;dur={upstream * 1000:.3f}, gateway;dur={added * 1000:.3f}, "
                f"hold;dur={priced.hold_seconds * 1000:.3f}, settle;dur={priced.settle_seconds * 1000:.3f}"
            )
            response.raw_headers.append((b"server-timing", timing.encode()))
            return response
        except BaseException as exc:
            if isinstance(exc, GatewayError) and exc.code == "ledger_unavailable":
                self.holding.pop(request_id, None)  # given up: the ledger's own sweep releases the hold,
                raise  # not one more connect timeout here
            with anyio.CancelScope(shield=True):
                await self.release(key, priced, request_id)
                if isinstance(exc, GatewayError) and priced.voucher is not None:
                    # Its hold given back (every lot failed, the upstream refused it, …): the
                    # refusal names the lane as the ledger has it now, its voucher accepted
                    # and the total unchanged, as `errors.hold_ended` does. Before, the
                    # signing proxy weighed each such error as a hold: an upstream outage, or
                    # three requests the upstream refused, stopped signing for good.
                    voucher = priced.voucher
                    await self._name_voucher_lane(key, priced.asset, voucher.session, voucher.lane, exc)
            raise

    def upstream_wait(self, output: int, deadline: float | None = None) -> float:
        """How long an upstream call may go without its answer: a plain answer's whole, a
        stream's first content (a lot that does not answer within it failed: failover). The
        upstream timeout plus the output limit at PROMPTEX_GATEWAY_UPSTREAM_FLOOR_TOKENS_PER_SECOND,
        within the request's deadline (`deadline`, its seconds: the gateway's unless signed
        mode cut it, `Priced.deadline_seconds`; which also bounds it: no failover past it). Before
        (sbreak s17 B2) it was the upstream timeout alone: an honest answer longer than it (a
        long answer, a model reasoning) was a failure of every lot in turn — each seller's
        upstream generated it, unpaid — and a 504 for the buyer."""
        wait = self.client.timeout + output / self.s.gateway_upstream_floor_tokens_per_second
        return min(wait, self.s.gateway_request_deadline_seconds if deadline is None else deadline)

    def _in_order(self, priced: Priced) -> Iterator[LiveLot]:
        """The lots to try: the one whose capacity the hold has first, then those after it
        (the ones before it had no room when the hold was made), without those whose circuit
        — or whose (lot, model)'s — is open (all of them when every one is). A lot past its
        cool-down is this request's probe only when the request reaches it: before (health
        s18), listing the lots claimed it, so a pricier lot's probe went to every request the
        cheaper lot served — never tried, skipped on failover while the cheaper one failed."""
        ids = [lot.id for lot in priced.lots]
        start = ids.index(priced.lot_id) if priced.lot_id in ids else 0
        lots = priced.lots[start:]
        model = priced.price.model
        if not any(self.health.may_try(lot.id, model) for lot in lots):
            yield from lots  # the breaker saves latency: it must not invent an outage
            return
        for lot in lots:
            claimed = self.health.claim(lot.id, model)
            if claimed is not None:
                priced.probe = lot.id if claimed else None
                try:
                    yield lot
                finally:  # its attempt is over (the next lot asked for, or the request ended) —
                    if claimed and not priced.streaming:  # a stream's goes on: its end decides (`stream_done`)
                        self.health.released(lot.id, model)

    def _failed(
        self,
        lot: LiveLot,
        what: str,
        failures: list[str],
        status: int | None = None,
        model: str | None = None,
        *,
        breaker: bool = True,
    ) -> None:
        """The lot failed the request (failed over). `breaker=False`: not counted against the
        lot (`health.Failure.request`: THIS request is beyond the lot's own limits)."""
        failures.append(what)
        if breaker:
            self.health.failed(lot.id, what, status, model=model)
        self.metrics.upstream_errors.labels(str(lot.id), what).inc()

    def _failed_answered(self, lot: LiveLot, what: str) -> None:
        """A failure of a lot whose answer's head was counted (`LotHealth.succeeded(closes=False)`):
        a stream that brought nothing or broke off, an answer with no usage."""
        self.health.failed(lot.id, what, counted=True)
        self.metrics.upstream_errors.labels(str(lot.id), what).inc()

    async def _holds_capacity(self, priced: Priced, request_id: str, lot: LiveLot) -> bool:
        """Move the hold's capacity to `lot` before failing over to it; False if it has no room."""
        if priced.lot_id == lot.id:
            return True
        try:
            moved = await self._thread(self.ledger.holds.move, request_id, LotClaim(lot.id, priced.capacity))
        except HoldOrphaned:
            raise errors.hold_ended(priced.lane_state()) from None
        except LedgerUnavailable:
            raise errors.ledger_unavailable("settle") from None
        if moved is None:
            return False
        priced.lot_id = lot.id
        return True

    async def _once(
        self, endpoint: str, key: ApiKey, priced: Priced, body: dict[str, Any], request_id: str, output: int
    ) -> PlainAnswer:
        failures: list[str] = []
        for lot in self._in_order(priced):
            if not await self._holds_capacity(priced, request_id, lot):
                failures.append("capacity")
                continue
            sent, output = priced.for_lot(endpoint, body, lot)
            adapter = fronts.adapter(endpoint, lot.api, output or self.s.gateway_default_max_tokens, sent)
            call = adapter.call(endpoint, sent, lot.base_url, lot.secret)
            lot.inflight += 1
            began = time.perf_counter()
            deadline = asyncio.timeout_at(priced.deadline)
            cut = _Cut(deadline)  # `cut_orphaned_streams`: its hold was ended under it
            self.plains[request_id] = functools.partial(asyncio.get_running_loop().call_soon_threadsafe, cut)
            wait = self.upstream_wait(output, priced.deadline_seconds)
            try:
                async with deadline:
                    answer = await self.client.post(call.url, call.headers, call.content, timeout=wait)
                    await answer.read(wait - (time.perf_counter() - began))
            except UpstreamTimeout:
                self._failed(lot, "timeout", failures)
                continue
            except UpstreamError:
                self._failed(lot, "error", failures)
                continue
            except TimeoutError:  # the request's deadline (not the lot's failure): no failover
                if cut.cut:  # its answer would be refused: not waited for
                    log.warning(
                        "request %s cut: its hold was ended under it (this process's ledger lock was lost)", request_id
                    )
                    raise errors.hold_ended(priced.lane_state()) from None
                raise errors.deadline_passed(priced.deadline_seconds) from None
            finally:
                lot.inflight -= 1
                self.plains.pop(request_id, None)
            priced.upstream_seconds = elapsed = time.perf_counter() - began
            status = answer.status_code
            if (fault := failure(status, answer.content)) is not None:  # the lot's, not the request's
                model = priced.price.model if fault.model else None
                self._failed(lot, fault.what, failures, status, model, breaker=not fault.request)
                continue
            # The lot answered; whether it served, its answer decides. A client error is the
            # client's: it neither counts against the lot nor closes its circuit; nor does an
            # answer with no usage, a failure (sbreak s17: before, each closed it — any buyer's
            # refused request, a half-open probe the lot answered 4xx — and a lot answering
            # every request 200 with no usage was at one failure in a row for good, never skipped).
            self.health.succeeded(lot.id, elapsed, closes=False)
            if status >= 400:
                raise _client_error(answer, lot)
            # The answer shows the usage charged: within the request's bounds (`bounded`).
            bound = functools.partial(self.bounded, priced, request_id, lot)
            try:
                content, usage = adapter.answer(endpoint, answer.content, priced.price.model, bound)
            except MissingUsage:
                failures.append("unmetered")
                self._failed_answered(lot, "unmetered")  # its request counted already, as a stream's
                continue
            self.health.closed(lot.id, priced.price.model)
            # Not in a shield of its own: its one wait (the settle) is shielded by `LedgerThreads`.
            charge = await self.finish(key, priced, request_id, lot, usage)
            more = raw_headers(charge.cost_headers())
            if priced.deadline_cut is not None:
                more.append((DEADLINE_HEADER, str(priced.deadline_cut).encode()))
            if priced.clamped:
                more.append((CLAMPED_HEADER, ", ".join(priced.clamped).encode()))
            return PlainAnswer(content, fronts.raw_id_headers(endpoint, request_id), more)
        raise _all_failed(failures)

    async def _stream(
        self, endpoint: str, key: ApiKey, priced: Priced, body: dict[str, Any], request_id: str, output: int
    ) -> MeteredStream:
        failures: list[str] = []
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for lot in self._in_order(priced):
            if not await self._holds_capacity(priced, request_id, lot):
                failures.append("capacity")
                continue
            sent, output = priced.for_lot(endpoint, body, lot)
            adapter = fronts.adapter(endpoint, lot.api, output or self.s.gateway_default_max_tokens, sent)
            call = adapter.call(endpoint, sent, lot.base_url, lot.secret)
            lot.inflight += 1
            handed_over = False
            began = time.perf_counter()
            try:
                async with asyncio.timeout_at(priced.deadline):
                    # Its head (status line and headers) within the upstream timeout: a lot
                    # silent past it failed (failover, counted), as a connect timeout is.
                    # Before (slowlot s18) the head had the first content's long wait: a
                    # cheapest lot that accepts connections and never answers held every
                    # stream with a large output limit until its deadline (504, not the lot's
                    # failure: never skipped). Except for a model that may reason: some
                    # providers send a stream's head only with its first visible token (Azure
                    # OpenAI, Novita; llama.cpp's server before 2026-05), after the whole
                    # think, so its head has the long wait (e2break s18: else every think past
                    # the timeout failed over lot after lot, opening honest lots' circuits, and
                    # a buyer opened them so for free: nothing streamed, nothing charged).
                    # Then until its first content, as long as a plain answer (a reasoning
                    # model sends its role chunk, then nothing while it reasons); then between
                    # chunks, the upstream timeout again (`MeteredStream`).
                    wait = self.upstream_wait(output, priced.deadline_seconds)
                    head = wait if may_reason(priced.price, priced.asks_reasoning) else None
                    upstream = await self.client.post(call.url, call.headers, call.content, timeout=head)
                    upstream.timeout = wait
                    status = upstream.status_code
                    if 400 <= status < 500:  # its body says whose fault it is (`failure`); read within the
                        await upstream.read(wait - (time.perf_counter() - began))  # deadline (review s17)
                if (fault := failure(status, upstream.content)) is not None:  # the lot's
                    upstream.close()
                    model = priced.price.model if fault.model else None
                    self._failed(lot, fault.what, failures, status, model, breaker=not fault.request)
                    continue
                priced.upstream_seconds = elapsed = time.perf_counter() - began  # to its response's head
                # A stream's end decides whether it served (`stream_done`); a client error is the
                # client's, and closes nothing either (as a plain request's).
                self.health.succeeded(lot.id, elapsed, closes=False)
                if status >= 400:
                    raise _client_error(upstream, lot)
                # A native Messages stream's message_start shows its input within the bounds.
                bound = functools.partial(self.bounded, priced, request_id, lot)
                translator = adapter.translator(endpoint, priced.price.model, include_usage, bound)
                handed_over = priced.streaming = True
                return MeteredStream(self, key, priced, request_id, lot, upstream, translator, endpoint)
            except UpstreamTimeout:
                self._failed(lot, "timeout", failures)
            except UpstreamError:
                self._failed(lot, "error", failures)
            except TimeoutError:  # the request's deadline, before the stream began
                raise errors.deadline_passed(priced.deadline_seconds) from None
            finally:
                if not handed_over:
                    lot.inflight -= 1
        raise _all_failed(failures)

    def _probe_back(self, stream: MeteredStream) -> None:
        """A stream that ended neither served nor failed gives back the probe IT claimed — only
        that: one that reached the lot with its circuit closed, or through `_in_order`'s
        every-lot-blocked fallback, claimed none, and giving one back cleared another request's
        probe still in flight (review1 F7: a second request probed the lot meanwhile)."""
        if stream.priced.probe == stream.lot.id:
            self.health.released(stream.lot.id, stream.priced.price.model)

    async def stream_done(self, stream: MeteredStream) -> Charge | None:
        """Meter a stream that ended, completed or not. A stream cut short (the upstream
        broke off, or the client left and the upstream call was dropped) is charged its
        input — as the upstream reported it, else a lower bound counted from the prompt —
        and the output streamed so far (what the upstream reported, or at least one token
        per content chunk), never more than its hold. One whose upstream produced no content
        and reported no usage (it ended, even with [DONE], or its deadline came), its client
        still there, is not charged: its hold is released (None). Before, it was charged
        the prompt's floor with no event to show it (a seller's endpoint answering every
        stream with a 200 and nothing, or [DONE] alone, was paid the floor of each: 3,003
        input tokens for a 3,000-word prompt)."""
        tr = stream.translator
        try:
            stream.upstream.close(grace=STREAM_END_GRACE_SECONDS if tr.finished else 0)
        finally:
            stream.lot.inflight -= 1
        # Whether the lot served, for its circuit breaker: a stream its client left, or the
        # gateway cut (`cut_orphaned_streams`), says nothing either way; one the upstream ended
        # without its end (broken off, or closed early) is a failure of the lot even with
        # content (charged all the same, below). Before (sbreak s17), a stream whose client left
        # before anything came closed the lot's circuit — a half-open probe too, for a lot
        # that had sent nothing — and one that sent a chunk and broke off was a success: a
        # lot whose every stream died after its first chunk was never skipped. The request's
        # deadline is not the lot's failure either (as for a plain request, `_once`): since
        # bc55cdc a stream may wait for its first content up to it (`upstream_wait`).
        neutral = stream.disconnected or stream.orphaned or stream.timed_out
        if tr.usage is None and tr.produced == 0 and not stream.disconnected:
            log.warning("stream %s: lot %d sent no content and no usage: not charged", stream.request_id, stream.lot.id)
            if not neutral:  # an upstream failure, as a 5xx is: in the lot's errors and its circuit breaker
                self._failed_answered(stream.lot, "empty")
            else:
                self._probe_back(stream)
            await self.release(stream.key, stream.priced, stream.request_id)
            return None
        if tr.finished or stream.timed_out:
            self.health.closed(stream.lot.id, stream.priced.price.model)
        elif not neutral:
            self._failed_answered(stream.lot, "broken")
        else:  # its client left, or the gateway cut it: a probe it was is given back (`LotHealth.released`)
            self._probe_back(stream)
        usage = tr.usage
        if usage is None or not tr.finished:
            # Cut short: the input as reported (with its cached parts) and the output
            # reported or streamed, whichever is more.
            out = max(usage.output_tokens if usage is not None else 0, tr.produced)
            if usage is None:
                usage = TokenUsage(stream.priced.prompt_floor, out)
            else:
                usage = dataclasses.replace(
                    usage, input_tokens=usage.input_tokens or stream.priced.prompt_floor, output_tokens=out
                )
        # Its visible output within the text its events carried, as the signing proxy counts it.
        usage = self.bounded(stream.priced, stream.request_id, stream.lot, usage, tr.produced_bytes)
        if isinstance(tr, ShowsCharged):  # its usage event shows what is charged, not what was reported
            tr.charged(usage)
        return await self.finish(stream.key, stream.priced, stream.request_id, stream.lot, usage, streamed=True)

    # ─── Holds in flight, and the sweeper ────────────────────────────────────

    def maintain_holds(self) -> int:
        """Extend the holds of requests still in flight that would expire before the next
        pass, then sweep every expired hold (any process's: a gateway that died leaves
        its holds to the others, or to itself once restarted) and trim capacity leases.
        Blocking: run on a ledger thread. Returns how many holds were swept."""
        ttl = self.s.gateway_hold_ttl_seconds
        now = self.ledger.clock()
        soon = now + 2 * self.s.gateway_sweep_seconds + self.s.gateway_hold_margin_seconds
        due = [rid for rid, expires in list(self.holding.items()) if expires <= soon]
        if due:
            self.ledger.holds.extend(due, ttl)
            for rid in due:
                if rid in self.holding:
                    self.holding[rid] = now + ttl
        limits.trim(self.ledger.engine, now)
        swept = self.sweeper.run_once()
        self.cut_orphaned_streams()
        return swept

    def cut_orphaned_streams(self) -> int:
        """Cut at once the streams — and plain requests' upstream calls (answered 503
        hold_ended at once) — whose hold another process's sweeper ended as orphaned
        (PostgreSQL: it found this process's lock free — a database restart, a cut lock
        connection): their settle will be refused, so what they would still stream (for
        minutes, maybe) is served for nothing. Read after this pass's own sweep, which first
        registers this process again, taking along its holds no one has ended. A cut stream
        ends as a refused one does (no charge event, no [DONE]). Blocking (a ledger read,
        PostgreSQL only, while streams are in flight); returns how many were cut."""
        cuts: dict[str, Callable[[], object]] = {rid: stream.cut for rid, stream in list(self.streams.items())}
        cuts.update(list(self.plains.items()))
        if not cuts:
            return 0
        ended = self.ledger.holds.orphaned(list(cuts))
        for request_id in ended:
            with contextlib.suppress(RuntimeError):  # its loop closed: the request is over
                cuts[request_id]()
        return len(ended)

    async def keep_holds(self) -> None:
        """`maintain_holds` every `gateway_sweep_seconds`, for as long as the gateway serves."""
        while True:
            try:
                if await self._thread(self.maintain_holds):  # their lots' capacity is back: routed to
                    await anyio.to_thread.run_sync(self.registry.refresh)  # now, not at the next refresh
            except Exception as exc:  # a database hiccup: the next pass catches up
                log.warning("sweeping holds failed: %s", type(exc).__name__)
            await anyio.sleep(self.s.gateway_sweep_seconds)

    async def watch_load(self, backlog: Callable[[], int] | None = None, interval: float = 0.01) -> None:
        """Every `interval` (ten times that while too few requests are in flight to shed
        any), sample the event loop's lateness, the accept queue (`backlog`,
        when the caller made the listening sockets) and the ledger threads' wait, and set
        `overloaded` (see `promptex.gateway.overload`). New settings take effect at once."""
        settings: Settings | None = None
        detector: OverloadDetector | None = None
        while True:
            start = time.perf_counter()
            # Sampled every `interval` only while at least half the requests in flight that
            # shedding needs are: below that the detector cannot shed, and each wake-up costs
            # (~75 us on this kind of machine: 7.5 ms of CPU a second, idle or at 200 RPS).
            # Ten times slower meanwhile: a rise in flight is seen within one slow pause.
            fast = 2 * self.inflight >= self.s.gateway_shed_min_inflight
            pause = interval if fast else 10 * interval
            await asyncio.sleep(pause)  # (not anyio's: the same on asyncio, without its backend lookup)
            if detector is None or self.s is not settings:
                settings = s = self.s
                window = round(s.gateway_shed_window_ms / 1000 / interval)
                detector = OverloadDetector(
                    ShedLimits(
                        s.gateway_shed_wait_ms / 1000,
                        s.gateway_shed_accept_backlog,
                        s.gateway_shed_min_inflight,
                        window,
                    )
                )
            self.overloaded = detector.observe(
                loop_lag=time.perf_counter() - start - pause,
                accept_backlog=backlog() if backlog is not None else 0,
                ledger_wait=self.threads.wait,
                inflight=self.inflight,
            )

    # ─── /v1/models ──────────────────────────────────────────────────────────

    def models(self) -> bytes:
        data = []
        fee = self.s.protocol_fee_bps
        for price in self.catalog:
            token = metering.provider_token(price.provider)
            own = metering.provider_token_rates(price)
            pricing: dict[str, Any] = {token.symbol: _per_million(own, 18)}
            listed = self.registry.candidates(price.provider, LISTED)
            if listed:
                # The cheapest lot's rates, saying which rate they are at (`rate_bps`): a lot at
                # another rate charges them × its rate ÷ this one (the signing proxy's check).
                cheapest = min(lot.rate_bps for lot in listed)
                usdc = metering.usdc_rates(price, cheapest, fee)
                pricing[USDC_SYMBOL] = {**_per_million(usdc, 6), "rate_bps": cheapest}
                for other in PROVIDER_TOKENS:  # other providers' tokens, at their current TWAP
                    twap = self.twaps.fresh(other.symbol) if self.twaps and other.symbol != token.symbol else None
                    if twap is not None:
                        converted = metering.usdc_to_token_rates(usdc, other.symbol, twap.usdc_per_token)
                        pricing[other.symbol] = {**_per_million(converted, 18), "rate_bps": cheapest}
            entry: dict[str, Any] = {
                "id": price.model,
                "object": "model",
                "created": 0,
                "owned_by": price.provider,
                "pricing": pricing,
                "capacity": {
                    TOKENIZED: bool(self.registry.candidates(price.provider, TOKENIZED)),
                    LISTED: bool(listed),
                },
                # The listed lots that serve it now and their rates (basis points of list price):
                # a charge names its lot and rate, which the signing proxy checks against these.
                "lots": [{"id": lot.id, "rate_bps": lot.rate_bps} for lot in listed],
            }
            if price.image_tokens is not None or price.image_tokens_low is not None:
                # A chat image part is held for this (`requests.image_tokens`), and the signing
                # proxy bounds an answer by what it reads here.
                images = self.catalog.image_tokens(price.model, CHAT_IMAGE_TOKENS)
                entry["image_tokens"] = {"high": images.high, "low": images.low}
            data.append(entry)
        return orjson.dumps({"object": "list", "data": data})


def _translatable(endpoint: str, body: dict[str, Any], lots: list[LiveLot]) -> list[LiveLot]:
    """The lots that can serve the body as asked (`fronts.check`: e.g. Anthropic lots chat only
    if it is text only), in their order; none: the 400 that says why (before any hold: a
    refusal moves nothing)."""
    refusals: dict[str, GatewayError | None] = {}
    for api in {lot.api for lot in lots}:
        try:
            fronts.check(endpoint, body, api)
            refusals[api] = None
        except GatewayError as exc:
            refusals[api] = exc
    if not any(refusals.values()):
        return lots
    able = [lot for lot in lots if refusals[lot.api] is None]
    if not able:
        raise next(exc for exc in refusals.values() if exc is not None)
    return able


def max_rate(request: Request) -> int | None:
    """The most a listed lot may charge the request (`charges.MAX_RATE`: basis points of list
    price, 1–10,000), or None when it names none (any lot)."""
    given = request.headers.get(MAX_RATE)
    if given is None:
        return None
    text = given.strip()
    # At most 5 digits before int(): a longer run (Python refuses past 4,300 digits) is no rate.
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 0 < int(text) <= BPS:
        raise errors.bad_request(
            f"{MAX_RATE} is the most a lot may charge in basis points of list price, 1 to {BPS}: not {given[:40]!r}.",
            param=MAX_RATE,
        )
    return int(text)


def _per_million(rates: metering.Rates, decimals: int) -> dict[str, str]:
    """Whole units of the asset per million tokens, as decimal strings rounded up at 12 places;
    a price those do not give exactly is also given exactly, as a fraction ("500/739":
    `<side>_per_million_exact`). A provider token's price is list ÷ its face value ($3.695 a
    GPT): its decimals do not end, and the signing side checks each charge to the unit at the
    rates it reads here, so before (session 18) every model's first answer paid in its own
    token stopped signing."""
    priced: dict[str, str] = {}
    for side, per_1k in (("input", rates.input_per_1k), ("output", rates.output_per_1k)):
        scaled = per_1k * 1000 / 10**decimals
        units = -(-scaled.numerator * 10**12 // scaled.denominator)
        priced[f"{side}_per_million"] = f"{units // 10**12}.{units % 10**12:012d}".rstrip("0").rstrip(".")
        if scaled.numerator * 10**12 % scaled.denominator:
            priced[f"{side}_per_million_exact"] = f"{scaled.numerator}/{scaled.denominator}"
    return priced


def _client_error(answer: UpstreamResponse, lot: LiveLot) -> GatewayError:
    message = "The upstream provider refused the request."
    try:
        body = orjson.loads(answer.content)
        found = body.get("error", {}).get("message") if isinstance(body, dict) else None
        if isinstance(found, str) and found:
            message = found.replace(lot.secret, "***")[:500]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    status = answer.status_code if answer.status_code in (400, 404, 413, 422) else 400
    return GatewayError(status, message, code="upstream_refused")


def _all_failed(failures: list[str]) -> GatewayError:
    if failures and all(f == "429" for f in failures):
        return errors.busy()
    return errors.upstream_failed(timeout=bool(failures) and failures[-1] == "timeout")


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise GatewayError(413, f"The request body exceeds {limit} bytes.", code="request_too_large")
    # The ASGI messages themselves, as Starlette's `Request.stream` reads them, without its
    # async generator (a few microseconds a request); nothing reads the body after this.
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.disconnect":
            raise GatewayError(400, "The client disconnected before sending the whole body.")
        if kind != "http.request":
            continue
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, f"The request body exceeds {limit} bytes.", code="request_too_large")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class PlainAnswer:
    """A metered JSON answer as two ASGI messages, with the headers Starlette's `Response`
    would send in its order (the ids, content-length, content-type, then `more`), built
    from bytes without its per-header conversions: a profile's few per cent of the loop."""

    status_code = 200

    def __init__(self, body: bytes, ids: list[tuple[bytes, bytes]], more: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        length = (b"content-length", str(len(body)).encode())
        self.raw_headers = [*ids, length, (b"content-type", b"application/json"), *more]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


class _Cut:
    """Cuts a plain request's upstream call at once (`Gateway.cut_orphaned_streams`, through
    the loop's `call_soon_threadsafe`): its deadline's timer brought forward to now, so the
    call ends as at its deadline, `cut` telling the two apart. After the call (the timer
    spent or left), nothing. The request's own timer rather than a cancel scope of its own:
    an anyio `CancelScope` cost every plain request ~400 Python bytecodes (its task lookup,
    backend and weak references: 3 % of all the gateway ran for one, both threads)."""

    __slots__ = ("deadline", "cut")

    def __init__(self, deadline: asyncio.Timeout) -> None:
        self.deadline = deadline
        self.cut = False

    def __call__(self) -> None:
        deadline = self.deadline
        if not deadline.expired():
            try:
                deadline.reschedule(-math.inf)  # on the next loop iteration
            except RuntimeError:  # not (or no longer) entered: the call is over
                return
            self.cut = True


class MeteredStream:
    """An SSE response fed from an upstream stream, metered when it ends — also when the
    client disconnects first (the disconnect is watched; the upstream call is then dropped)."""

    def __init__(
        self,
        gateway: Gateway,
        key: ApiKey,
        priced: Priced,
        request_id: str,
        lot: LiveLot,
        upstream: UpstreamResponse,
        translator: StreamTranslator,
        endpoint: str = "",
    ) -> None:
        self.gateway = gateway
        self.endpoint = endpoint
        self.key = key
        self.priced = priced
        self.request_id = request_id
        self.lot = lot
        self.upstream = upstream
        self.translator = translator
        self.broken = False
        self.disconnected = False
        self.orphaned = False  # cut: its hold was ended under it (`Gateway.cut_orphaned_streams`)
        self.timed_out = False  # cut off at the request's deadline
        self._cut: Callable[[], object] | None = None  # cancels its reading, from any thread

    def cut(self) -> None:
        """Stop reading the upstream at once (safe from any thread): the hold was ended as
        orphaned, so the answer would not be charged. Metered as a stream cut short, whose
        settle is then refused."""
        self.orphaned = True
        log.warning("stream %s cut: its hold was ended under it (this process's ledger lock was lost)", self.request_id)
        cut = self._cut
        if cut is not None:
            with contextlib.suppress(RuntimeError):  # its loop closed: the stream is over
                cut()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        voucher = self.priced.voucher
        signed = None if voucher is None else SignedLane(voucher.lane, None, voucher.header())
        hold = self.gateway.charge(self.request_id, self.priced.asset, self.priced.hold, self.lot, signed)
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            *raw_headers(list(fronts.id_headers(self.endpoint, self.request_id).items())),
            *raw_headers(hold.hold_headers()),
        ]
        if self.priced.deadline_cut is not None:
            headers.append((DEADLINE_HEADER, str(self.priced.deadline_cut).encode()))
        metered = False
        try:
            async with anyio.create_task_group() as tg:
                # Cut off at the request's deadline like a client that left: metered as it is.
                reading = anyio.CancelScope(deadline=self.priced.deadline)

                async def watch() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            # Stop the upstream call: what it would still produce nobody
                            # receives, and it is not charged.
                            self.disconnected = True
                            reading.cancel()
                            return

                tg.start_soon(watch)
                lost = False

                async def deliver(message: Message) -> None:
                    """`send`, a connection found gone read as its client leaving: uvicorn tells
                    only the last request parsed on a connection that it closed, so a stream
                    with a request pipelined behind it never hears `http.disconnect`, and its
                    next write raises on the closed transport (uvloop). Before (xbreak s18)
                    that error ended the stream as the lot's — 'broken', or 'empty' before its
                    first content: a buyer opened a lot's circuit for a few units a stream."""
                    nonlocal lost
                    if lost:
                        return
                    try:
                        await send(message)
                    except RuntimeError:
                        lost = self.disconnected = True
                        reading.cancel()

                loop = asyncio.get_running_loop()
                self._cut = lambda: loop.call_soon_threadsafe(reading.cancel)
                self.gateway.streams[self.request_id] = self  # from now on `cut` may stop it
                started = False
                with reading:
                    # Its head within the deadline too: uvicorn's send waits while its client
                    # does not read (a pipelined request behind an unread answer), and before
                    # (xbreak s18) that wait held the hold, the lot's capacity and the upstream
                    # call for as long as the client kept its connection, extended every sweep.
                    await deliver({"type": "http.response.start", "status": 200, "headers": headers})
                    started = True
                    waiting = True  # for its first content: `Gateway.upstream_wait` until then
                    try:
                        async for line in self.upstream.lines():
                            for chunk in self.translator.feed(line):
                                await deliver({"type": "http.response.body", "body": chunk, "more_body": True})
                            if self.translator.finished:
                                break
                            if waiting and self.translator.produced:
                                waiting = False
                                self.upstream.timeout = self.gateway.client.timeout  # between chunks
                    except UpstreamError:
                        self.broken = True
                self.timed_out = reading.cancelled_caught and not (self.disconnected or self.orphaned)
                # Metered before the stream ends: its last event carries the exact charge,
                # and a client that saw the end sees the charge in its balance.
                with anyio.CancelScope(shield=True):
                    metered = True
                    try:
                        charge: Charge | None = await self.gateway.stream_done(self)
                    except GatewayError as exc:  # its settle refused: past its late-answer horizon
                        log.warning("stream %s ended uncharged: %s", self.request_id, exc.message)
                        charge = None
                # Uncharged, it ends without its charge event (the client sees no charge).
                ended = self.disconnected or charge is None
                tail = b"" if ended else b"".join(self.translator.finish(charge))
                if started:
                    await deliver({"type": "http.response.body", "body": tail, "more_body": False})
                elif not self.disconnected:  # nothing sent, nothing charged: its refusal, if it ever reads
                    if self.orphaned:
                        refusal = errors.hold_ended(self.priced.lane_state())
                    else:
                        refusal = errors.deadline_passed(self.priced.deadline_seconds)
                        refusal.extra = dict(self.priced.lane_state() or {})  # the lane as it was, as hold_ended
                    await fronts.error_response(self.endpoint, refusal, self.request_id)(scope, receive, deliver)
                tg.cancel_scope.cancel()
        finally:
            self.gateway.streams.pop(self.request_id, None)
            if not metered:
                with anyio.CancelScope(shield=True):
                    await self.gateway.stream_done(self)


def _short(key: ApiKey, exc: LedgerError) -> str:
    """What a refused hold found short, named for the key's holder: the key's budget, its own
    balance (with any promotional credit), or — for an org member's key — its budget in the
    org or the org's balance or spend cap (the org by its name: a member knows it; a
    NotAMember refusal never gets here)."""
    if isinstance(exc, KeyBudgetExceeded):
        return "this API key's budget"
    payer = exc.payer if isinstance(exc, Refusal) else None
    if key.payer is None or payer is None:
        return "your balance"
    if isinstance(exc, BudgetExceeded):
        return f"your budget in {payer}"
    return f"the {'spend cap' if isinstance(exc, SpendCapExceeded) else 'balance'} of {payer}"
