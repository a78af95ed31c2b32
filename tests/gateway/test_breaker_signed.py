"""Breaker attacks on the buyer's side of signed mode (issue 23): a dishonest gateway
against the signing transport, in process. The promise attacked (README, "Signed mode:
what each party can lose"): the buyer loses at most the true cost plus one hold per lane,
plus what token counts inside the stated tolerance let through — visible output tokens at
most the answer's UTF-8 bytes — before the check stops signing.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "offchain"))
from buyerside_fakes import IDENTITY, MODEL, RATES, FakeSignedGateway, _ClosingStream, make_signer  # noqa: E402

from promptex import metering  # noqa: E402
from promptex.buyerside.answers import ENDPOINTS  # noqa: E402
from promptex.buyerside.recovery import ChainSession, recover  # noqa: E402
from promptex.buyerside.signer import CLOSE_SLACK_TOKENS  # noqa: E402
from promptex.buyerside.transport import PromptexSigningTransport  # noqa: E402
from promptex.buyerside.wire import (  # noqa: E402
    COST_UNITS_HEADER,
    LANE_CHARGED_HEADER,
    LANE_HEADER,
    VOUCHER_HEADER,
    Voucher,
    lane_reports,
    parse_voucher,
)

from .conftest import Fake, Harness  # noqa: E402
from .test_signed_attacks import HoldEndedGateway, _client  # noqa: E402
from .test_signed_proxy import LANES, _session, _signer  # noqa: E402

PROMPT = [{"role": "user", "content": "hello hello hello"}]
TRIES = 12


def _taken(gateway: FakeSignedGateway, request: httpx.Request) -> tuple[Voucher, Any]:
    """A signed request's voucher, recorded as received, and its lane's book."""
    voucher = parse_voucher(request.headers[VOUCHER_HEADER])
    gateway.received.append(voucher)
    return voucher, gateway.book[voucher.lane]


def _stream(client: openai.OpenAI) -> str | None:
    """One streamed request read to its end; its text, or None if refused."""
    try:
        chunks = client.chat.completions.create(
            model=MODEL, messages=PROMPT, stream=True, stream_options={"include_usage": True}
        )  # type: ignore[call-overload]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    except openai.APIStatusError:
        return None


def test_breaker__streamed_answers_report_more_output_than_their_text__signing_stops(tmp_path: Path) -> None:
    """A gateway that reports (and charges) 200 output tokens beyond what each streamed
    answer holds — 16 tokens of text, ~90 bytes — and stays within each hold: in a plain
    answer the bytes check stops signing at once; in a stream it must too, else the gateway
    takes 200 tokens more of every request, a hold per lane many times over."""
    gateway = FakeSignedGateway(lanes=1, inflate_output=200)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    texts = [_stream(client) for _ in range(TRIES)]
    served = [t for t in texts if t is not None]
    assert served and all(len(t.encode()) < 200 for t in served)  # what the buyer received
    hold = signer.hold_for(ENDPOINTS["/v1/chat/completions"], {"model": MODEL, "messages": PROMPT})[0]
    overcharged = gateway.book[0].charged - sum(gateway.true_costs)
    assert signer.stopped is not None and "bytes of answer" in signer.stopped, (signer.stopped, overcharged, hold)
    assert overcharged <= hold
    assert overcharged == metering.usage_cost(RATES, metering.TokenUsage(0, 200))  # the first one, then stopped


def test_breaker__honest_anthropic_stream_through_the_real_gateway__checked_without_a_false_stop(
    gw: Harness, fake: Fake, tmp_path: Path
) -> None:
    """The stream's byte count must not stop an honest gateway: Anthropic's Messages API
    streamed (content blocks and their deltas), through the real gateway, many sizes."""
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    client = httpx.Client(base_url=gw.url, transport=PromptexSigningTransport(signer))
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    for limit in (1, 2, 7, 30):
        body = {"model": "fake-claude", "max_tokens": limit, "stream": True,
                "messages": [{"role": "user", "content": "say something"}]}  # fmt: skip
        with client.stream("POST", "/v1/messages", json=body, headers=headers) as answer:
            assert answer.status_code == 200, answer.read().decode()
            events = b"".join(answer.iter_bytes())
        assert b"content_block_delta" in events
        assert signer.stopped is None, signer.stopped
    total = sum(gw.ledger.lane(account, "USDC", 1, i).charged for i in range(LANES))
    assert signer.book.charged_total() == total > 0 and all(lane.exact for lane in signer.book.lanes)


class ClaimAndDrop(FakeSignedGateway):
    """Serves nothing: takes each voucher, books the lane charged its whole ceiling (its
    stored voucher covers that, so its lane report verifies), then drops the connection."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        if VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        voucher = parse_voucher(request.headers[VOUCHER_HEADER])
        with self.lock:
            self.received.append(voucher)
            lane = self.book[voucher.lane]
            lane.charged, lane.voucher = voucher.ceiling, voucher
        raise httpx.ReadError("connection dropped after charging")


def test_breaker__charge_and_drop_across_proxy_restarts__within_n_holds_per_lane(tmp_path: Path) -> None:
    """The stop rule counts answers without figures per lane; a restart (`promptex proxy`
    started again, the voucher log kept) recovers the lanes from the chain, the gateway's
    verified report and the log. A gateway that only ever charges and drops gets one drop
    per lane per run: the count must survive the restart, else each restart gives it a
    hold more, forever (the README's buyer row: at most N = 3 holds per lane)."""
    gateway = ClaimAndDrop(lanes=1)
    chain = ChainSession(IDENTITY.key, 1, 1, 10**12, 0, (0,))
    hold = 0
    for _ in range(6):  # six runs of the proxy, one request each
        signer = make_signer(tmp_path / "v.log", lanes=1)
        signer.book = recover(IDENTITY, chain, lane_reports(gateway.lanes_report()), signer.log).book
        hold = max(hold, signer.hold_for(ENDPOINTS["/v1/chat/completions"], {"model": MODEL, "messages": PROMPT})[0])
        with contextlib.suppress(openai.APIStatusError, openai.APIConnectionError):  # dropped, or refused
            _client(gateway, signer).chat.completions.create(model=MODEL, messages=PROMPT)  # type: ignore[call-overload]
        signer.log.close()
    taken = gateway.book[0].charged  # what settle_signed could take: nothing was served
    assert taken <= 3 * hold, (taken, hold, len(gateway.received), signer.stopped)
    assert len(gateway.received) == 3  # the third drop stopped signing, and the stop outlives restarts
    assert signer.stopped is not None and "3 answers on lane 0 came without the lane's total" in signer.stopped


class PaddingGateway(FakeSignedGateway):
    """Streams a two-byte answer ("hi") and then `pad` events whose delta is empty (`{}`:
    no text, 12 bytes of JSON each), reporting and charging as output the most the stream's
    JSON would allow (up to max_tokens). `stall`: it never ends the stream, so the client
    closes it after the padding; the lane is then booked its voucher's whole ceiling, and
    the next voucher refused 409 ceiling_below_charged naming that total (with the stored
    voucher: it verifies)."""

    pad: int = 100
    stall: bool = False
    turn: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        voucher, lane = _taken(self, request)
        self.turn += 1
        if self.stall and self.turn % 2 == 0:
            assert lane.voucher is not None
            error = {"message": "below", "type": "conflict_error", "code": "ceiling_below_charged",
                     "lane_charged_units": str(lane.charged), "voucher": lane.voucher.header()}  # fmt: skip
            return httpx.Response(409, json={"error": error})
        body = orjson.loads(request.content)
        prompt = sum(3 + len(str(m["content"]).split()) for m in body["messages"])
        self.true_costs.append(metering.usage_cost(RATES, metering.TokenUsage(prompt, 1)))  # "hi": a token
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
        events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]}]
        events += [{**chunk, "choices": [{"index": 0, "delta": {}}]}] * self.pad
        framed = sum(len(orjson.dumps({"delta": e["choices"][0]["delta"]})) for e in events)
        output = min(body["max_tokens"], framed)
        cost = metering.usage_cost(RATES, metering.TokenUsage(prompt, output))
        assert lane.charged + cost <= voucher.ceiling
        sse = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
        if self.stall:

            def stalled() -> Generator[bytes, None, None]:
                try:
                    yield from sse
                    yield b""  # then nothing, until the client gives up
                except GeneratorExit:
                    lane.charged, lane.voucher = voucher.ceiling, voucher
                    raise

            return httpx.Response(200, stream=_ClosingStream(stalled()), headers={"content-type": "text/event-stream"})
        lane.charged += cost
        lane.voucher = voucher
        figures = {"cost_units": str(cost), "lane_charged_units": str(lane.charged), "voucher": voucher.header()}
        usage = {"prompt_tokens": prompt, "completion_tokens": output}
        sse.append(b"data: " + orjson.dumps({**chunk, "choices": [], "usage": usage, "promptex": figures}) + b"\n\n")
        sse.append(b"data: [DONE]\n\n")
        return httpx.Response(200, content=b"".join(sse), headers={"content-type": "text/event-stream"})


PADDED = {"model": MODEL, "messages": PROMPT, "max_tokens": 1024, "stream": True}


def test_breaker__stream_padded_with_empty_events__output_checked_against_its_text__signing_stops(
    tmp_path: Path,
) -> None:
    """A stream's output tokens are checked against the bytes it produced; those were its
    events' JSON (`{"delta":{}}`: 12 bytes each), so a gateway that streamed "hi" and 100
    empty events reported and charged 1,024 output tokens, checked, every request (20
    requests: 123,120 units for 360, never stopped). Now only text counts (and a plain
    answer's frame once): the first such answer stops signing."""
    gateway = PaddingGateway(lanes=1)
    _first_padded_answer_stops_signing(gateway, tmp_path, PADDED)


def test_breaker__stream_padded_then_stalled_until_the_client_closes__allowed_its_text__stopped_within_n_holds(
    tmp_path: Path,
) -> None:
    """A stream its client closes is allowed what its relayed bytes allow (input, output
    as many tokens as bytes, a slack). Counted with their JSON, 100 empty events allowed
    the whole hold: a gateway that padded, stalled until the client closed, booked the
    ceiling and refused the next voucher naming it took a hold per two requests, never
    stopped. Now the closes weigh their holds less the text's allowance: stopped within N."""
    gateway = PaddingGateway(lanes=1)
    gateway.stall = True
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    hold, n = signer.hold_for(ENDPOINTS["/v1/chat/completions"], PADDED)[0], signer.stop_after_errors
    for _ in range(2 * (n + 2)):
        with client.stream("POST", "http://gateway.test/v1/chat/completions", json=PADDED) as answer:
            if answer.status_code == 200:
                chunks = answer.iter_bytes()
                for _ in range(1 + gateway.pad):  # the client reads what came, then gives up
                    next(chunks)
            else:
                answer.read()
        if signer.stopped is not None:
            break
    assert signer.stopped is not None and "a stream its client closed" in signer.stopped, signer.stopped
    assert gateway.book[0].charged <= max(v.ceiling for v in gateway.received) <= n * hold


class PaddedAnswerGateway(FakeSignedGateway):
    """Answers "hi" (a token) in a plain answer padded with JSON of no text — 100 empty
    choices (`{"message":{}}`) or 400 empty objects in its message — and reports (and
    charges) 1,024 output tokens."""

    padding: str = "choices"

    def handle(self, request: httpx.Request) -> httpx.Response:
        if VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        voucher, lane = _taken(self, request)
        body = orjson.loads(request.content)
        prompt = sum(3 + len(str(m["content"]).split()) for m in body["messages"])
        self.true_costs.append(metering.usage_cost(RATES, metering.TokenUsage(prompt, 1)))
        message: dict[str, object] = {"role": "assistant", "content": "hi"}
        choices: list[dict[str, object]] = [{"index": 0, "message": message, "finish_reason": "stop"}]
        if self.padding == "choices":
            choices += [{"message": {}}] * 100
        else:
            message["annotations"] = [{}] * 400
        output = body["max_tokens"]
        cost = metering.usage_cost(RATES, metering.TokenUsage(prompt, output))
        lane.charged, lane.voucher = lane.charged + cost, voucher
        usage = {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
        answer = {"id": "c1", "object": "chat.completion", "created": 0, "model": MODEL, "choices": choices,
                  "usage": usage}  # fmt: skip
        figures = {COST_UNITS_HEADER: str(cost), LANE_HEADER: str(voucher.lane),
                   LANE_CHARGED_HEADER: str(lane.charged), VOUCHER_HEADER: voucher.header()}  # fmt: skip
        return httpx.Response(200, json=answer, headers=figures)


@pytest.mark.parametrize("padding", ["choices", "objects"])
def test_breaker__plain_answer_padded_with_json_of_no_text__output_checked_against_its_text__signing_stops(
    tmp_path: Path, padding: str
) -> None:
    """A plain answer's output tokens were checked against its produced parts' JSON, so
    syntax the gateway adds at will counted as answer bytes: "hi" with 100 empty choices or
    400 empty objects in its message passed for 1,024 output tokens, every request (20
    requests: 123,120 units for 360, never stopped). Now only text counts, and the frame
    once: the first such answer stops signing."""
    gateway = PaddedAnswerGateway(lanes=1)
    gateway.padding = padding
    _first_padded_answer_stops_signing(gateway, tmp_path, {"model": MODEL, "messages": PROMPT, "max_tokens": 1024})


class SlackTaker(FakeSignedGateway):
    """Sends a streamed request's first word, then stalls until its client closes it, and
    books it charged its whole allowance (its input bound and its relayed text's bytes as
    output tokens plus CLOSE_SLACK_TOKENS) — an honest gateway charges its input and the
    word sent plus the one held back; plain requests it serves honestly."""

    signer: Any = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content) if request.content else {}
        if VOUCHER_HEADER not in request.headers or not body.get("stream"):
            return super().handle(request)
        voucher, lane = _taken(self, request)
        hold, bound, rates = self.signer.hold_for(ENDPOINTS["/v1/chat/completions"], body)
        prompt = sum(3 + len(str(m["content"]).split()) for m in body["messages"])
        event = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                 "choices": [{"index": 0, "delta": {"content": "alpha"}}]}  # fmt: skip
        first = b"data: " + orjson.dumps(event) + b"\n\n"
        output = min(body["max_tokens"], len(b"alpha") + CLOSE_SLACK_TOKENS)
        allowance = min(hold, metering.upper_bound(rates, bound.input_bound, output))

        def stalled() -> Generator[bytes, None, None]:
            try:
                yield first
                yield b""  # then nothing, until the client gives up
            except GeneratorExit:
                lane.charged, lane.voucher = lane.charged + allowance, voucher
                self.true_costs.append(metering.usage_cost(RATES, metering.TokenUsage(prompt, 2)))
                raise

        return httpx.Response(200, stream=_ClosingStream(stalled()), headers={"content-type": "text/event-stream"})


def test_breaker__closes_booked_their_whole_allowance__the_slack_weighs__stopped_within_n_holds_and_the_tolerance(
    tmp_path: Path,
) -> None:
    """A closed stream's allowance has a slack (CLOSE_SLACK_TOKENS output tokens) for
    chunks in flight at the close. Free, it was a gift per close, unbounded in count: a
    gateway that stalled every stream until its client closed it after one word and booked
    the whole allowance, an honest plain answer between, took 234 units a close beyond the
    honest charge (100 closes: 23,400, 3.8 holds of 6,180, against a tolerance of 36),
    never stopped. Now what a figure shows charged into the slack weighs for good: stopped
    within N holds and the tolerance."""
    signer = make_signer(tmp_path / "v.log", lanes=1)
    gateway = SlackTaker(lanes=1)
    gateway.signer = signer
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    stream = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1024, "stream": True}
    plain = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    hold, n = signer.hold_for(ENDPOINTS["/v1/chat/completions"], stream)[0], signer.stop_after_errors
    for _ in range(100):
        with client.stream("POST", "http://gateway.test/v1/chat/completions", json=stream) as answer:
            next(answer.iter_bytes(), None)
        client.post("http://gateway.test/v1/chat/completions", json=plain).read()
        if signer.stopped is not None:
            break
    assert signer.stopped is not None and "a stream its client closed" in signer.stopped, signer.stopped
    tolerated = signer.tolerated(signer.book.lanes[0])
    assert max(v.ceiling for v in gateway.received) <= sum(gateway.true_costs) + n * hold + tolerated


def test_breaker__hold_ended_naming_a_total_above_the_vouchers_before_it__signing_stops(tmp_path: Path) -> None:
    """A 503 hold_ended says the request's hold ended uncharged and names the lane's total:
    the one before it, so within the vouchers accepted before it. After a drop (the lane
    only bounded) it was checked against the ceilings including its own voucher, so a
    gateway could name this voucher's whole ceiling as the total before it — a charge for
    a request it says took nothing — and the lie was only weighed, never named. Now it
    stops signing."""
    gateway = HoldEndedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    assert client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=4)  # type: ignore[call-overload]
    gateway.drop_before_charge = True
    with contextlib.suppress(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=4)  # type: ignore[call-overload]
    lane = signer.book.lanes[0]
    assert not lane.exact and lane.pending == 1 and signer.stopped is None
    before = lane.live
    gateway.drop_before_charge, gateway.ending, gateway.claim = False, True, before + 1
    with contextlib.suppress(openai.APIStatusError):
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=4)  # type: ignore[call-overload]
    assert gateway.received[-1].ceiling > before
    assert signer.stopped is not None and "hold ended uncharged" in signer.stopped, signer.stopped


def _first_padded_answer_stops_signing(gateway: FakeSignedGateway, tmp_path: Path, body: dict[str, Any]) -> None:
    """Sends `body` through a one-lane signer until it stops (at most TRIES): the first
    padded answer must stop it (its output above its text's bytes), the lane charged at
    most one hold above what was truly served."""
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    hold = signer.hold_for(ENDPOINTS["/v1/chat/completions"], body)[0]
    for _ in range(TRIES):
        client.post("http://gateway.test/v1/chat/completions", json=body).read()
        if signer.stopped is not None:
            break
    assert signer.stopped is not None and "bytes of answer" in signer.stopped, signer.stopped
    assert len(gateway.received) == 1 and gateway.book[0].charged - sum(gateway.true_costs) <= hold
