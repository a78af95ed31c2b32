"""A fake signed-mode gateway following the wire in the signed-mode spec, for the buyer's
side's tests: it checks each voucher as the real one must (signer, session, lane, lane in
flight, ceiling ≥ charged so far), caps the output to the hold, charges price × tokens and
answers with the lane's total and the stored voucher. It keeps its own true-cost log, and
can misbehave on request (overcharge, inflate counts, drop the connection before or after
charging, answer an error without the lane's figures, before or after charging).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import httpx
import orjson
from eth_account import Account

from promptex import metering
from promptex.buyerside.answers import RateBook
from promptex.buyerside.lanes import LaneBook
from promptex.buyerside.signer import Session, Signer, voucher_signer
from promptex.buyerside.voucherlog import Identity, VoucherLog
from promptex.buyerside.wire import (
    COST_UNITS_HEADER,
    LANE_CHARGED_HEADER,
    LANE_HEADER,
    LANES_PATH,
    LOT_HEADER,
    LOT_RATE_HEADER,
    MAX_RATE_HEADER,
    VOUCHER_HEADER,
    Voucher,
    WireError,
    parse_voucher,
)
from promptex.gateway.errors import UNREAD, UNREAD_MARK

MODEL = "fake-model"
ASSET = "USDC"
RATES = metering.Rates(ASSET, Fraction(3_000), Fraction(6_000))  # smallest units per 1,000 tokens
BASIS_BPS = 6_000  # with lots listed, the lot rate RATES are at (`FakeSignedGateway.lots`)
WORDS = ("alpha", "bravo", "charlie", "delta")
SESSION_KEY = "0x" + "5e" * 32
WALLET = "0x000000000000000000000000000000000000bEEF"
IDENTITY = Identity(
    chain_id=31337,
    vault="0x00000000000000000000000000000000000000aa",
    account=WALLET,
    asset="0x00000000000000000000000000000000000000cc",
    key=Account.from_key(SESSION_KEY).address,
)


@dataclass
class FakeLane:
    charged: int = 0
    voucher: Voucher | None = None
    in_flight: bool = False
    told: int = 0  # the total its last answer told the buyer


@dataclass
class FakeSignedGateway:
    identity: Identity = IDENTITY
    session: int = 1
    lanes: int = 4
    output_tokens: int = 16  # what a request naming no max_tokens produces
    overcharge: int = 0  # units charged beyond price × tokens
    inflate_output: int = 0  # tokens reported beyond those produced
    drop_after_charge: bool = False  # charge, then drop the connection
    drop_before_charge: bool = False  # drop it before charging (a killed gateway: its hold is swept)
    latency: float = 0.0  # seconds a request stays in flight (the upstream's time)
    error_status: int = 0  # answer this status, without the lane's figures (0: answer)
    error_code: str | None = None  # ... with this code (e.g. 429 "capacity_busy": the load shed's)
    charge_errors: bool = False  # ... after charging the request (else before anything)
    # A charged drop or error books the lane charged its voucher's whole ceiling, not the
    # cost (a dishonest gateway: the most its voucher lets it settle).
    claim_ceiling: bool = False
    # Refuse the voucher 409 ceiling_below_charged naming as the lane's total the one its
    # last answer told (hiding what was booked since), with the stored voucher (a lie).
    hide_total: bool = False
    # Charge, then answer 200 with a body that does not decode as its content-encoding says.
    garble: bool = False
    # Stream an answer a word an event, lazily, so that its client can close it before the
    # end. Closed: an honest gateway charges its input and the words streamed so far plus
    # one (the chunk the real one holds back, or one in flight: `gateway.service.stream_done`
    # counts it, the buyer never relayed it); `close_books_ceiling` books the voucher's
    # whole ceiling instead (a dishonest one).
    lazy_stream: bool = False
    # Answer `output_tokens` words and claim the rest of what the hold allows as reasoning
    # tokens (reported inside the completion tokens and charged: nothing of them is relayed).
    claim_reasoning: bool = False
    usage_extra: dict[str, Any] = field(default_factory=dict)  # merged into a stream's usage chunk
    close_books_ceiling: bool = False
    # Listed lots at several rates (basis points of list price): /v1/models lists `lots` (id →
    # rate) and says RATES are at BASIS_BPS; each answer is charged at `charge_rate` and names
    # lot `name_lot` at `name_rate` (None: names none). Unset: one rate, nothing named.
    lots: dict[int, int] = field(default_factory=dict)
    charge_rate: int = 0  # 0: RATES as they are
    name_lot: int | None = None
    name_rate: Any = None
    max_rates: list[str | None] = field(default_factory=list)  # each request's MAX_RATE_HEADER
    usages: list[metering.TokenUsage] = field(default_factory=list)  # what each answer charged
    book: dict[int, FakeLane] = field(default_factory=dict)
    received: list[Voucher] = field(default_factory=list)  # every voucher that arrived
    true_costs: list[int] = field(default_factory=list)  # price × tokens actually produced
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.book = {i: FakeLane() for i in range(self.lanes)}

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _error(self, status: int, code: str, lane: FakeLane | None = None) -> httpx.Response:
        error: dict[str, Any] = {"message": code, "type": "invalid_request_error", "code": code}
        if lane is not None:
            error["lane_charged_units"] = str(lane.charged)
            error["voucher"] = None if lane.voucher is None else lane.voucher.header()
        return httpx.Response(status, json={"error": error})

    def lanes_report(self) -> dict[str, Any]:
        return {
            "data": [
                {
                    "session": self.session,
                    "lane": i,
                    "charged_units": str(lane.charged),
                    "settled_units": "0",
                    "voucher": None
                    if lane.voucher is None
                    else {"ceiling": str(lane.voucher.ceiling), "sig": "0x" + lane.voucher.signature.hex()},
                    "in_flight": lane.in_flight,
                }
                for i, lane in self.book.items()
            ]
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == LANES_PATH:
            return httpx.Response(200, json=self.lanes_report())
        if request.method == "GET" and request.url.path == "/v1/models":
            return httpx.Response(200, json=self.models())
        try:
            voucher = parse_voucher(request.headers[VOUCHER_HEADER])
        except (KeyError, WireError):
            return self._error(402, "voucher_required")
        if voucher.session != self.session:
            return self._error(409, "session_not_current")
        if voucher_signer(self.identity, voucher) != self.identity.key.lower():
            return self._error(403, "voucher_bad_signature")
        if voucher.lane >= self.lanes:
            return self._error(403, "voucher_bad_signature")
        lane = self.book[voucher.lane]
        with self.lock:
            self.received.append(voucher)
            if lane.in_flight:
                return self._error(409, "lane_busy", lane)
            if self.hide_total and lane.voucher is not None:
                hidden = self._error(409, "ceiling_below_charged", lane)
                error = orjson.loads(hidden.content)["error"]
                return httpx.Response(409, json={"error": {**error, "lane_charged_units": str(lane.told)}})
            if voucher.ceiling < lane.charged:
                return self._error(409, "ceiling_below_charged", lane)
            if lane.voucher is not None and voucher.ceiling <= lane.voucher.ceiling:
                return self._error(409, "voucher_used", lane)  # ceilings rise strictly: a voucher serves once
            lane.in_flight = True
        try:
            return self._serve(request, voucher, lane)
        finally:
            lane.in_flight = False

    def models(self) -> dict[str, Any]:
        """/v1/models: RATES, per million tokens in whole USDC (with `lots`: at BASIS_BPS, and the lots)."""
        pricing: dict[str, Any] = {ASSET: {"input_per_million": "3", "output_per_million": "6"}}
        entry: dict[str, Any] = {"id": MODEL, "pricing": pricing}
        if self.lots:
            pricing[ASSET]["rate_bps"] = BASIS_BPS
            entry["lots"] = [{"id": lot, "rate_bps": rate} for lot, rate in self.lots.items()]
        return {"object": "list", "data": [entry]}

    def _serve(self, request: httpx.Request, voucher: Voucher, lane: FakeLane) -> httpx.Response:
        unread = self.error_code in UNREAD and not self.charge_errors  # refused before reading: marked
        failed = httpx.Response(
            self.error_status or 500,
            json={"error": {"message": "upstream failed", "code": self.error_code}},
            headers=UNREAD_MARK if unread else None,
        )
        if self.error_status and not self.charge_errors:
            return failed
        if self.drop_before_charge:
            raise httpx.ReadError("connection dropped: the gateway died before charging")
        self.max_rates.append(request.headers.get(MAX_RATE_HEADER))
        rates = RATES.scaled(ASSET, Fraction(self.charge_rate, BASIS_BPS)) if self.charge_rate else RATES
        body = orjson.loads(request.content)
        if self.latency:
            time.sleep(self.latency)  # the upstream answering (this runs in a server's worker thread)
        messages = body["messages"]
        input_tokens = sum(3 + len(str(m["content"]).split()) for m in messages) + len(body.get("system", "").split())
        asked = body.get("max_tokens") or body.get("max_completion_tokens") or self.output_tokens
        fit = metering.largest_output(rates, input_tokens, voucher.ceiling - lane.charged, asked)
        if fit < 0:
            return self._error(402, "hold_too_small", lane)
        output = min(fit, self.output_tokens) if self.claim_reasoning else fit
        reasoning = fit - output if self.claim_reasoning else 0
        # A gateway inflating counts charges for them too (it must: the buyer checks price × tokens).
        cost = metering.usage_cost(rates, metering.TokenUsage(input_tokens, output + self.inflate_output + reasoning))
        with self.lock:
            if self.claim_ceiling and (self.drop_after_charge or self.error_status or self.garble):
                lane.charged, lane.voucher = voucher.ceiling, voucher  # nothing served
            else:
                self.true_costs.append(metering.usage_cost(rates, metering.TokenUsage(input_tokens, output)))
                self.usages.append(metering.TokenUsage(input_tokens, output + self.inflate_output + reasoning))
                lane.charged += cost + self.overcharge
                lane.voucher = voucher
        if self.drop_after_charge:
            raise httpx.ReadError("connection dropped after charging")
        if self.garble:
            return httpx.Response(200, content=b"not gzip", headers={"content-encoding": "gzip"})
        if self.error_status:
            return failed
        told, lane.told = lane.told, lane.charged
        text = " ".join(WORDS[i % len(WORDS)] for i in range(output))
        reported: dict[str, Any] = {"prompt_tokens": input_tokens,
                                    "completion_tokens": output + self.inflate_output + reasoning}  # fmt: skip
        if reasoning:
            reported["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        headers = {
            COST_UNITS_HEADER: str(cost + self.overcharge),
            LANE_HEADER: str(voucher.lane),
            LANE_CHARGED_HEADER: str(lane.charged),
            VOUCHER_HEADER: voucher.header(),
        }
        promptex: dict[str, Any] = {"cost_units": str(cost + self.overcharge), "lane_charged_units": str(lane.charged)}
        if self.name_rate is not None:  # the lot and rate the charge names (`charges.LOT_RATE`)
            headers.update({LOT_HEADER: str(self.name_lot), LOT_RATE_HEADER: str(self.name_rate)})
            promptex.update(lot=self.name_lot, lot_rate_bps=self.name_rate)
        if request.url.path.endswith("/messages"):  # Anthropic's Messages API
            answer = {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": reported["completion_tokens"]},
            }
            return httpx.Response(200, json=answer, headers=headers)
        # As the real gateway streams: the usage chunk only when its client asked for it, else
        # the charge on the last chunk with choices and no usage at all (`gateway.adapters.OpenAIStream`).
        asked = (body.get("stream_options") or {}).get("include_usage") is True
        if body.get("stream") and self.lazy_stream:
            events = self._lazy(lane, voucher, input_tokens, output, told, reported, promptex, asked)
            stream = _ClosingStream(events)
            return httpx.Response(200, stream=stream, headers={**headers, "content-type": "text/event-stream"})
        if body.get("stream"):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
            events = [
                {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]},
                {**chunk, "choices": [], "usage": reported, "promptex": promptex, **self.usage_extra}
                if asked
                else {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "promptex": promptex},
            ]
            sse = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
            return httpx.Response(200, content=sse, headers={**headers, "content-type": "text/event-stream"})
        answer = {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {**reported, "total_tokens": input_tokens + reported["completion_tokens"]},
        }
        return httpx.Response(200, json=answer, headers=headers)

    def _lazy(
        self, lane: FakeLane, voucher: Voucher, input_tokens: int, output: int, told: int,
        reported: dict[str, Any], promptex: dict[str, str], asked: bool = True,
    ) -> Generator[bytes, None, None]:  # fmt: skip
        """A stream, a word an event; its client may close it before the end."""
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
        sent = 0
        try:
            for i in range(output):
                word = ("" if i == 0 else " ") + WORDS[i % len(WORDS)]
                event = {**chunk, "choices": [{"index": 0, "delta": {"content": word}}]}
                sent += 1
                yield b"data: " + orjson.dumps(event) + b"\n\n"
        except GeneratorExit:  # its client closed it: told nothing
            with self.lock:
                lane.told = told
                full = self.true_costs.pop()
                lane.charged -= int(promptex["cost_units"])
                if self.close_books_ceiling:
                    lane.charged = voucher.ceiling
                else:
                    partial = metering.usage_cost(RATES, metering.TokenUsage(input_tokens, min(output, sent + 1)))
                    assert partial <= full
                    self.true_costs.append(partial)
                    lane.charged += partial
            raise
        last = (
            {**chunk, "choices": [], "usage": reported, "promptex": promptex}
            if asked
            else {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "promptex": promptex}
        )
        yield b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n"


class _ClosingStream(httpx.SyncByteStream):
    """A generator's bytes; closing the stream closes the generator (the client left)."""

    def __init__(self, events: Generator[bytes, None, None]) -> None:
        self.events = events

    def __iter__(self) -> Iterator[bytes]:
        yield from self.events

    def close(self) -> None:
        self.events.close()


class UnreadableGateway(FakeSignedGateway):
    """Serves one request honestly; then books each voucher charged its whole ceiling and
    answers it in a way this side cannot read (`mode`), and refuses the next voucher 409
    ceiling_below_charged naming the total it booked (within the vouchers it accepted, with
    its stored voucher: it verifies); and again. `mode`: "gzip" a 200 whose body is not
    the gzip its content-encoding says; "gzip-stream" the same for a stream; "digit" a
    stream whose last event's cost is "²" (`str.isdigit` passes it, `int` raises); "shape"
    a stream whose last event's `choices` is not a list."""

    mode: str = "gzip"
    turn: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        self.turn += 1
        if self.turn == 1:
            return super().handle(request)
        voucher = parse_voucher(request.headers[VOUCHER_HEADER])
        self.received.append(voucher)
        lane = self.book[voucher.lane]
        assert lane.voucher is not None
        if self.turn % 2 == 0 and voucher.ceiling > lane.voucher.ceiling:
            lane.charged, lane.voucher = voucher.ceiling, voucher  # booked in full, nothing served
            cost = "\u00b2" if self.mode == "digit" else "1"
            figures = {"cost_units": cost, "lane_charged_units": str(lane.charged)}
            event = {"choices": 1 if self.mode == "shape" else [], "promptex": figures}
            sse = b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n"
            if self.mode.startswith("gzip"):
                sse, kind = (
                    b"not gzip at all",
                    ("text/event-stream" if self.mode == "gzip-stream" else "application/json"),
                )
                return httpx.Response(200, content=sse, headers={"content-encoding": "gzip", "content-type": kind})
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        error = {"message": "below", "type": "conflict_error", "code": "ceiling_below_charged",
                 "lane_charged_units": str(lane.charged), "voucher": lane.voucher.header()}  # fmt: skip
        return httpx.Response(409, json={"error": error})


def asgi_app(gateway: FakeSignedGateway) -> Any:
    """The fake served over HTTP (for a `promptex proxy` process in front of it)."""
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def serve(request: Request) -> Response:
        call = httpx.Request(
            request.method, str(request.url), headers=request.headers.raw, content=await request.body()
        )
        answer = await anyio.to_thread.run_sync(gateway.handle, call)
        headers = {k: v for k, v in answer.headers.items() if k not in ("content-length", "content-encoding")}
        return Response(answer.content, status_code=answer.status_code, headers=headers)

    return Starlette(routes=[Route("/v1/{rest:path}", serve, methods=["GET", "POST"])])


def make_signer(log_path: Any, *, lanes: int = 4, maximum: int = 10**12, session: int = 1, **kwargs: Any) -> Signer:
    book = LaneBook(session, lanes, maximum)
    s = Session(IDENTITY, SESSION_KEY, session, lanes, maximum, ASSET)
    return Signer(s, book, VoucherLog(log_path, IDENTITY), RateBook({(MODEL, ASSET): RATES}), **kwargs)
