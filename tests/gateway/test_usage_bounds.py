"""An upstream that reports more than its request can use (a seller's own endpoint, or a
lying one: gbreak4's finding A) is charged, recorded and paid at the request's bounds —
the input its body can hold, the output limit sent upstream — and the answer's usage
shows what was charged, plain and streamed, on every API. Before, the charge was capped
only by the hold (107x the true cost in the breaker's repro), the answer showed the
reported counts, and the usage record drew the lot (and paid its seller) their whole list
value."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptex import metering
from promptex.buyerside.answers import AnswerRefused, bounds, check_counts, usage_of
from promptex.buyerside.signer import StreamWatch
from promptex.buyerside.transport import PromptexSigningTransport
from promptex.gateway import fronts
from promptex.gateway.adapters import COMPLETIONS, OpenAIStream, ShowsCharged, anthropic_usage_of
from promptex.gateway.charges import Charge
from promptex.gateway.errors import GatewayError
from promptex.gateway.messages import FromChatStream, NativeStream, asks_reasoning, may_reason
from promptex.gateway.requests import validate
from promptex.gateway.service import LISTED, Gateway, Priced
from promptex.metering import TokenUsage, load_catalog, produced
from promptex.metering.produced import ANSWER_FRAME_BYTES, visible_bytes
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CATALOG, Fake, Harness
from .test_signed_proxy import LANES, _session, _signer
from .test_signed_shapes import Canned, canned  # noqa: F401 (the fixture)
from .test_token_accounting import HOUR_PROMPT, record_details, usdc_cost

LIE = 100_000  # tokens an upstream reports beyond what it used
HELLO = [{"role": "user", "content": "hello world"}]
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings",
         "messages": "/v1/messages", "responses": "/v1/responses"}  # fmt: skip
STREAM_USAGE = {"stream": True, "stream_options": {"include_usage": True}}


def test_within_bounds__the_excess_comes_off_the_priciest_parts() -> None:
    rates = metering.list_rates(load_catalog(CATALOG).price("fake-claude"))  # read < input < 5 m < 1 h write
    usage = TokenUsage(1000, 900, cache_read_tokens=300, cache_write_tokens=500, cache_write_1h_tokens=200,
                       reasoning_tokens=850)  # fmt: skip
    assert metering.within_bounds(rates, usage, 1000, 900) is usage  # within its bounds: itself
    # 400 in: the reads (cheapest), then 100 of the 200 uncached; no writes. Reasoning within the output.
    assert metering.within_bounds(rates, usage, 400, 100) == TokenUsage(
        400, 100, cache_read_tokens=300, reasoning_tokens=100)  # fmt: skip
    # 700 in: reads, uncached, 200 of the 300 five-minute writes, no hour's.
    assert metering.within_bounds(rates, usage, 700, 900) == TokenUsage(
        700, 900, cache_read_tokens=300, cache_write_tokens=200, reasoning_tokens=850)  # fmt: skip
    for bound in (0, 1, 299, 500, 999):
        within = metering.within_bounds(rates, usage, bound, 5)
        assert within.input_tokens == bound and within.output_tokens == 5
        assert metering.usage_cost(rates, within) <= metering.upper_bound(rates, bound, 5, cache_writes=True)
    # An embedding has no output: none is charged.
    assert metering.within_bounds(rates, TokenUsage(5, 3), 10, 0) == TokenUsage(5, 0)
    # Visible output (beyond the reasoning) at most what the answer's text holds; reasoning kept.
    visible = metering.within_bounds(rates, usage, 1000, 900, 10)
    assert visible == dataclasses.replace(usage, output_tokens=860)
    assert metering.within_bounds(rates, usage, 1000, 900, 50) is usage


def _ask(gw: Harness, key: str, endpoint: str, body: dict[str, Any]) -> tuple[httpx.Response, TokenUsage, int]:
    """One request; the usage its answer shows and the cost it carries (a stream's read
    as the signing proxy reads them: `StreamWatch`)."""
    response = httpx.post(gw.url + PATHS[endpoint], json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text
    if body.get("stream"):
        watch = StreamWatch()
        watch.feed(response.content)
        shown, cost = watch.usage(endpoint), watch.cost
    else:
        shown, cost = usage_of(endpoint, orjson.loads(response.content)), int(response.headers["x-promptex-cost-units"])
    assert shown is not None and cost is not None, response.text
    return response, shown, cost


@pytest.mark.parametrize("stream", [False, True])
def test_openai_lot__over_reported_input_output_and_reasoning__charged_and_shown_at_the_bounds(
    gw: Harness, fake: Fake, stream: bool
) -> None:
    fake.config.cache_read_tokens, fake.config.reasoning_tokens = 3, LIE
    fake.config.extra_input_tokens = fake.config.extra_output_tokens = LIE
    lot = gw.add_lot(fake)
    account, key = gw.buyer()
    requests: list[tuple[str, dict[str, Any]]] = [
        ("chat", {"model": "fake-gpt", "messages": HELLO, "max_tokens": 10}),
        ("completions", {"model": "fake-gpt", "prompt": "hello world", "max_tokens": 10}),
        ("responses", {"model": "fake-gpt", "input": "hello world", "max_output_tokens": 10}),
        ("messages", {"model": "fake-gpt", "messages": HELLO, "max_tokens": 10}),
    ]
    if not stream:
        requests.append(("embeddings", {"model": "fake-embed", "input": "hello world"}))
    spent = used = 0
    for endpoint, body in requests:
        if stream:
            body = {**body, **(STREAM_USAGE if endpoint in ("chat", "completions") else {"stream": True})}
        bound = bounds(endpoint, body)
        output = 0 if endpoint == "embeddings" else 10
        # The input's bound (3 cache reads, the cheapest, kept), the output limit, reasoning within it.
        charged = TokenUsage(bound.input_bound, output, cache_read_tokens=0 if output == 0 else 3,
                             reasoning_tokens=output)  # fmt: skip
        response, shown, cost = _ask(gw, key, endpoint, body)
        assert shown == charged, (endpoint, shown)
        check_counts(bound, shown, None)  # what the signing proxy checks an answer against, it passes
        assert cost == usdc_cost(body["model"], charged), endpoint
        spent += cost
        used += metering.usage_cost(metering.list_rates(load_catalog(CATALOG).price(body["model"])), charged)
        request_id = response.headers["x-request-id"]
        record = gw.ledger.usage_record(request_id)
        hold = gw.ledger.hold(request_id)
        assert record is not None and hold is not None and record.cost == cost <= hold.amount
        assert record_details(gw, request_id) == (charged.input_tokens, output, charged.cache_read_tokens, 0, 0,
                                                  output)  # fmt: skip
        if not stream:
            assert response.headers["x-promptex-usage-clamped"] == ("input" if output == 0 else "input, output")
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - spent
    capacity = gw.ledger.lot_capacities()[lot]
    assert (capacity.used, capacity.reserved) == (used, 0)  # the lot drew the bounded usage's list value

    # An honest upstream: charged and shown as reported, no header.
    fake.config.reasoning_tokens = fake.config.extra_input_tokens = fake.config.extra_output_tokens = 0
    body = {"model": "fake-gpt", "messages": HELLO, "max_tokens": 10, **(STREAM_USAGE if stream else {})}
    response, shown, cost = _ask(gw, key, "chat", body)
    assert shown == TokenUsage(5, 10, cache_read_tokens=3) and cost == usdc_cost("fake-gpt", shown)
    assert "x-promptex-usage-clamped" not in response.headers


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_lot__over_reported_cache_writes_and_output__charged_and_shown_at_the_bounds(
    gw: Harness, fake: Fake, stream: bool
) -> None:
    # Every reported write an hour's (2x the input rate), 2 x LIE more input than the prompt's 6.
    fake.config.cache_read_tokens, fake.config.cache_write_tokens, fake.config.cache_write_1h_tokens = 2, LIE, LIE
    fake.config.extra_input_tokens, fake.config.extra_output_tokens = 2 * LIE, LIE
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    account, key = gw.buyer()
    spent = 0
    for endpoint in ("chat", "messages"):
        body: dict[str, Any] = {"model": "fake-claude", "messages": HOUR_PROMPT, "max_tokens": 5}
        if stream:
            body = {**body, **(STREAM_USAGE if endpoint == "chat" else {"stream": True})}
        bound = bounds(endpoint, body)
        # The reads and then the uncached input fill the bound before any (pricier) write.
        charged = TokenUsage(bound.input_bound, 5, cache_read_tokens=2)
        response, shown, cost = _ask(gw, key, endpoint, body)
        assert shown == charged, (endpoint, shown)
        check_counts(bound, shown, None)
        assert cost == usdc_cost("fake-claude", charged), endpoint
        spent += cost
        assert record_details(gw, response.headers["x-request-id"]) == (bound.input_bound, 5, 2, 0, 0, 0)
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - spent


def test_native_messages_stream__message_start_shows_the_input_within_its_bound(
    gw: Harness, fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    """A native Messages stream's message_start passed the upstream's input counts on as
    sent; only the final message_delta (whose totals overwrite them) showed what was charged:
    a client reading the input at message_start (known there) saw the lie. It shows the
    input within the request's bound now (the reads kept, no write beyond the marks), the
    counts the message_delta carries; an honest start's counts are left as sent. The start
    is bounded by the request's own bound (`Gateway.bounded`, as the charge): the lot's
    over-reported input is logged once, not again at the stream's end."""
    fake.config.cache_read_tokens, fake.config.cache_write_tokens, fake.config.cache_write_1h_tokens = 2, LIE, LIE
    fake.config.extra_input_tokens = 2 * LIE
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer()
    body = {"model": "fake-claude", "messages": HOUR_PROMPT, "max_tokens": 5, "stream": True}
    bound = bounds("messages", body)
    inputs = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")

    def start_and_delta() -> tuple[dict[str, Any], dict[str, Any], str]:
        response = httpx.post(gw.url + PATHS["messages"], json=body, headers={"authorization": f"Bearer {key}"},
                              timeout=30)  # fmt: skip
        assert response.status_code == 200, response.text
        events = [orjson.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
        delta = [e for e in events if e.get("type") == "message_delta"][-1]
        return events[0]["message"]["usage"], delta["usage"], response.text

    with caplog.at_level(logging.WARNING, logger="promptex.gateway"):
        start, delta, raw = start_and_delta()
    warned = [r.getMessage() for r in caplog.records if "beyond the request's bounds" in r.getMessage()]
    assert len(warned) == 1 and f"{bound.input_bound} input" in warned[0], warned
    shown = anthropic_usage_of(start)
    assert shown is not None and shown.input_tokens == bound.input_bound, start
    assert (shown.cache_read_tokens, shown.cache_write_tokens) == (2, 0), start
    assert {k: start[k] for k in inputs} == {k: delta[k] for k in inputs}, (start, delta)
    assert str(LIE) not in raw
    # Honest: the start as the upstream sent it.
    fake.config.cache_write_tokens = fake.config.cache_write_1h_tokens = fake.config.extra_input_tokens = 0
    start, delta, _ = start_and_delta()
    shown = anthropic_usage_of(start)
    assert shown is not None and shown.input_tokens < bound.input_bound, start
    assert (shown.cache_read_tokens, shown.cache_write_tokens) == (2, 0) and "input_tokens" not in delta


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_output_inflated_within_max_tokens__visible_output_charged_within_the_answer_s_text(
    gw: Harness, fake: Fake, api: str, stream: bool
) -> None:
    """gbreak6 O1: a one-word answer whose upstream reports 1,000 output tokens (max_tokens
    1,000: within the limit) is charged, recorded, drawn from the lot and shown with its
    visible output (beyond the reasoning) at the bytes of the answer as its client got it plus
    the frame (`metering.produced`) — the bound the signing proxy checks, which it passes —
    its reasoning kept (no one sees it). A stream's bytes as its events carried them (a
    Responses stream's: its final output's), read as the signing proxy reads them
    (`StreamWatch`). Before, an unsigned buyer paid the 1,000."""
    if api == "openai":  # 100 of them reported as reasoning; its text one word ("alpha")
        fake.config.output_tokens, fake.config.reasoning_tokens, fake.config.extra_output_tokens = 101, 100, 899
        model, endpoints, reasoning = "fake-gpt", ("chat", "completions", "responses", "messages"), 100
    else:
        fake.config.output_tokens, fake.config.extra_output_tokens = 1, 999
        model, endpoints, reasoning = "fake-claude", ("chat", "messages"), 0
    lot = gw.add_lot(fake, **({"provider": "anthropic", "api": "anthropic"} if api == "anthropic" else {}))
    account, key = gw.buyer()
    rates = metering.list_rates(load_catalog(CATALOG).price(model))
    spent = used = 0
    for endpoint in endpoints:
        limit = "max_output_tokens" if endpoint == "responses" else "max_tokens"
        body: dict[str, Any] = {"model": model, limit: 1000}
        body.update({"prompt": "hello world"} if endpoint == "completions" else
                    {"input": "hello world"} if endpoint == "responses" else {"messages": HELLO})  # fmt: skip
        if stream:
            body.update(STREAM_USAGE if endpoint in ("chat", "completions") else {"stream": True})
        response = httpx.post(gw.url + PATHS[endpoint], json=body, headers={"authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        if stream:
            watch = StreamWatch()
            watch.feed(response.content)
            shown, cost, answer_bytes = watch.usage(endpoint), watch.cost, watch.produced(framed=True)
        else:
            answer = orjson.loads(response.content)
            shown, cost = usage_of(endpoint, answer), int(response.headers["x-promptex-cost-units"])
            answer_bytes = visible_bytes(endpoint, answer)
            assert response.headers["x-promptex-usage-clamped"] == "output", endpoint
        assert shown is not None and cost is not None and answer_bytes is not None, response.text
        assert answer_bytes < 200 and shown.output_tokens == reasoning + answer_bytes, (endpoint, shown, answer_bytes)
        assert shown.reasoning_tokens == reasoning
        check_counts(bounds(endpoint, body), shown, answer_bytes)  # the signing proxy's check: it passes
        assert cost == usdc_cost(model, shown), endpoint
        request_id = response.headers["x-request-id"]
        assert record_details(gw, request_id) == (shown.input_tokens, shown.output_tokens, 0, 0, 0, reasoning)
        record = gw.ledger.usage_record(request_id)
        assert record is not None and record.cost == cost
        spent += cost
        used += metering.usage_cost(rates, shown)
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - spent
    assert gw.ledger.lot_capacities()[lot].used == used


LIMIT = 300  # the output limit of the generated requests
_TEXT = st.text(max_size=40)
_REQUESTS: dict[str, dict[str, Any]] = {
    "chat": {"messages": HELLO, "max_tokens": LIMIT},
    "completions": {"prompt": "hello world", "max_tokens": LIMIT},
    "messages": {"messages": HELLO, "max_tokens": LIMIT},
    "responses": {"input": "hello world", "max_output_tokens": LIMIT},
}


@st.composite
def _openai_answers(draw: st.DrawFn, endpoint: str, counts: tuple[int, int, int]) -> dict[str, Any]:
    """A chat (or completions) answer of 1-3 choices: texts, tool calls, refusals."""
    choices: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 3))):
        if endpoint == "completions":
            choices.append({"index": i, "text": draw(_TEXT), "finish_reason": "stop", "logprobs": None})
            continue
        message: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | _TEXT)}
        if draw(st.booleans()):
            call = {"name": draw(_TEXT), "arguments": draw(_TEXT)}
            message["tool_calls"] = [{"id": "call_" + draw(_TEXT), "type": "function", "function": call}]
        if draw(st.booleans()):
            message["refusal"] = draw(st.none() | _TEXT)
        choices.append({"index": i, "message": message, "finish_reason": draw(st.sampled_from(["stop", "length"]))})
    given_, out, reasoning = counts
    usage = {
        "prompt_tokens": given_,
        "completion_tokens": out,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": choices, "usage": usage}


@st.composite
def _anthropic_answers(draw: st.DrawFn, counts: tuple[int, int, int]) -> dict[str, Any]:
    """A Messages answer: text, tool use (its input a JSON value) and thinking blocks."""
    blocks = st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, _TEXT),
        st.builds(
            lambda i, n, v: {"type": "tool_use", "id": "toolu_" + i, "name": n, "input": {"v": v}},
            _TEXT,
            _TEXT,
            st.lists(st.integers(-(10**9), 10**9), max_size=5),
        ),
        st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "sig"}, _TEXT),
    )
    given_, out, thinking = counts
    usage = {"input_tokens": given_, "output_tokens": out, "output_tokens_details": {"thinking_tokens": thinking}}
    return {"id": "msg_1", "type": "message", "role": "assistant", "content": draw(st.lists(blocks, max_size=3)),
            "stop_reason": draw(st.sampled_from(["end_turn", "max_tokens"])), "usage": usage}  # fmt: skip


@given(data=st.data())
def test_plain_answers__charged_within_their_text_exactly_as_the_signing_proxy_checks(data: st.DataObject) -> None:
    """Over generated answers on every API and lot API: what the gateway charges (and shows)
    passes the signing proxy's check (`check_counts`, the answer's bytes as the proxy counts
    them); an answer whose reported usage passes that check is charged as reported, one that
    does not is clamped (`x-promptex-usage-clamped: output`), its reasoning kept. The
    gateway's `Gateway.bounded` itself, on a `Priced` as `Gateway.price` makes it."""
    endpoint, api = data.draw(st.sampled_from([(e, a) for e in _REQUESTS for a in ("openai", "anthropic")
                                               if (e, a) != ("completions", "anthropic")]))  # fmt: skip
    model = "fake-gpt" if api == "openai" else "fake-claude"
    body = {"model": model, **_REQUESTS[endpoint]}
    if endpoint == "chat" and data.draw(st.booleans()):
        body["prediction"] = {"type": "content", "content": data.draw(_TEXT)}
    if endpoint == "messages" and data.draw(st.booleans()):
        body["thinking"] = {"type": "enabled", "budget_tokens": LIMIT - 1}
    _, input_bound, _ = fronts.validate(endpoint, body)
    bound = bounds(endpoint, body)
    out = data.draw(st.integers(0, LIMIT + 20))
    counts = (data.draw(st.integers(bound.input_floor, input_bound)), out, data.draw(st.integers(0, out)))
    upstream = data.draw(_anthropic_answers(counts) if api == "anthropic" else
                         _openai_answers("completions" if endpoint == "completions" else "chat", counts))  # fmt: skip
    adapter = fronts.adapter(endpoint, api, LIMIT, body)
    adapter.call(endpoint, body, "http://upstream", "key")
    rates = metering.list_rates(load_catalog(CATALOG).price(model))
    price, asks = load_catalog(CATALOG).price(model), asks_reasoning(endpoint, body)
    unshown = produced.unshown_output(endpoint, body, may_think=may_reason(price, asks))  # as Gateway.price
    priced = Priced(price, "USDC", LISTED, [], {}, 1, output=LIMIT, input_bound=input_bound,
                    unshown_output=unshown, endpoint=endpoint, asks_reasoning=asks)  # fmt: skip
    gateway = SimpleNamespace(_list_rates=lambda _: rates)
    lot = SimpleNamespace(id=1, api=api)
    charge = functools.partial(Gateway.bounded, gateway, priced, "req", lot)  # type: ignore[arg-type]
    content, charged = adapter.answer(endpoint, orjson.dumps(upstream), model, charge)
    answer = orjson.loads(content)
    shown, answer_bytes = usage_of(endpoint, answer), visible_bytes(endpoint, answer)
    assert shown == charged and answer_bytes is not None
    check_counts(bound, charged, answer_bytes)  # never refused
    reported = usage_of("messages" if api == "anthropic" else "chat", upstream)  # as the upstream reported it
    assert reported is not None
    if api == "anthropic" and not priced.thinks:  # no thinking asked: its thinking tokens are visible output
        reported = dataclasses.replace(reported, reasoning_tokens=0)
    assert charged.reasoning_tokens == min(reported.reasoning_tokens, LIMIT)
    try:
        check_counts(bound, reported, answer_bytes)
    except AnswerRefused:
        assert charged.output_tokens < reported.output_tokens and priced.clamped == ("output",)
    else:
        assert charged == reported and priced.clamped == ()


def test_stream_cut_short_after_an_inflated_usage__visible_output_charged_within_what_it_streamed(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """A stream that reported 900 output tokens (max_tokens 1,000) and broke off after
    "Sunny" is charged, and shows, its visible output within the bytes it streamed plus the
    frame — a native Messages stream (the count on its message_start) and a chat stream (on
    a usage chunk, no [DONE]). Before, the 900 reported."""
    answers, fake = canned
    gw.add_lot(fake)
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer()
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "fake-claude", "content": [],
               "usage": {"input_tokens": 10, "output_tokens": 900}}  # fmt: skip
    pieces = [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": t}}) for t in ("Sun", "ny")]  # fmt: skip
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake-gpt"}
    chat = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Sunny"}}]},
            {**chunk, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 900}}]  # fmt: skip
    answers.done = False
    for endpoint, model, events in (("messages", "fake-claude", [("message_start", {"type": "message_start",
                                                                                     "message": message}), *pieces]),
                                    ("chat", "fake-gpt", chat)):  # fmt: skip
        answers.answer = events
        body = {"model": model, "messages": HELLO, "max_tokens": 1000, **STREAM_USAGE}
        if endpoint == "messages":
            del body["stream_options"]
        response = httpx.post(gw.url + PATHS[endpoint], json=body, headers={"authorization": f"Bearer {key}",
                              "anthropic-version": "2023-06-01"}, timeout=30)  # fmt: skip
        assert response.status_code == 200, response.text
        watch = StreamWatch()
        watch.feed(response.content)
        shown = watch.usage(endpoint)
        assert shown is not None and watch.cost == usdc_cost(model, shown), response.text
        assert shown.output_tokens == len("Sunny") + ANSWER_FRAME_BYTES == watch.produced(framed=True), endpoint
        record = gw.ledger.usage_record(response.headers["x-request-id"])
        assert record is not None and (record.output_tokens, record.cost) == (shown.output_tokens, watch.cost)


def _sse_lines(events: list[tuple[str | None, Any]]) -> list[str]:
    lines: list[str] = []
    for name, data in events:
        lines += [*([f"event: {name}"] if name else []), "data: " + (data if isinstance(data, str) else
                  orjson.dumps(data).decode()), ""]  # fmt: skip
    return lines


@st.composite
def _chat_stream(draw: st.DrawFn, completions: bool) -> list[str]:
    """An OpenAI-shaped stream: content, tool call and refusal deltas (or completions'
    texts), a finishing chunk, a usage chunk (or usage on the finishing chunk, or twice, or
    none), [DONE]."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake-gpt"}

    def choice(delta: Any, finish: str | None = None) -> dict[str, Any]:
        if completions:
            return {**base, "choices": [{"index": 0, "text": delta, "finish_reason": finish}]}
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    deltas = st.one_of(
        st.builds(lambda t: {"content": t}, _TEXT),
        st.builds(lambda i, a: {"tool_calls": [{"index": 0, "id": i, "function": {"arguments": a}}]}, _TEXT, _TEXT),
        st.builds(lambda t: {"refusal": t}, _TEXT),
    )
    chunks: list[Any] = [] if completions else [choice({"role": "assistant", "content": ""})]
    chunks += [choice(d) for d in draw(st.lists(_TEXT if completions else deltas, max_size=6))]
    usage = {"prompt_tokens": 5, "completion_tokens": draw(st.integers(0, LIMIT))}
    finishing = choice("" if completions else {}, draw(st.sampled_from(["stop", "length"])))
    where = draw(st.sampled_from(["chunk", "finishing", "twice", "none"]))
    chunks.append({**finishing, "usage": usage} if where == "finishing" else finishing)
    if where in ("chunk", "twice"):
        chunks += [{**base, "choices": [], "usage": usage}] * (2 if where == "twice" else 1)
    return _sse_lines([(None, c) for c in chunks] + [(None, "[DONE]")])


@st.composite
def _anthropic_stream(draw: st.DrawFn) -> list[str]:
    """A Messages stream: text, tool use (partial JSON) and thinking blocks and deltas."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "fake-claude", "content": [],
               "usage": {"input_tokens": 5, "output_tokens": 1}}  # fmt: skip
    events: list[tuple[str | None, Any]] = [("message_start", {"type": "message_start", "message": message})]
    kinds = {"text": ("text_delta", "text"), "tool_use": ("input_json_delta", "partial_json"),
             "thinking": ("thinking_delta", "thinking")}  # fmt: skip
    for index, kind in enumerate(draw(st.lists(st.sampled_from(sorted(kinds)), max_size=3))):
        block: dict[str, Any] = {"type": kind, kinds[kind][1] if kind != "tool_use" else "input": ""}
        if kind == "tool_use":
            block.update(id="toolu_" + draw(_TEXT), name=draw(_TEXT), input={})
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        for piece in draw(st.lists(_TEXT, max_size=4)):
            delta = {"type": kinds[kind][0], kinds[kind][1]: piece}
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    usage = {"output_tokens": draw(st.integers(0, LIMIT))}
    stop = {"type": "message_delta", "delta": {"stop_reason": draw(st.sampled_from(["end_turn", "max_tokens"]))}}
    events += [("message_delta", {**stop, "usage": usage}), ("message_stop", {"type": "message_stop"})]
    return _sse_lines(events)


@given(data=st.data())
def test_streams__their_text_counted_as_the_signing_proxy_counts_it(data: st.DataObject) -> None:
    """Over generated streams on every API and lot API, whole or cut short, read as the
    signing proxy reads them (asking usage for a client that asked none, or not): the bytes a
    translator counts before its charge (`produced_bytes`, what `stream_done` bounds the
    visible output by) are those the proxy counts of what it sent (`StreamWatch.produced`),
    so a stream the gateway charges is never one the proxy refuses."""
    endpoint, api = data.draw(st.sampled_from([(e, a) for e in _REQUESTS for a in ("openai", "anthropic")]))
    model = "fake-gpt" if api == "openai" else "fake-claude"
    body = {"model": model, **_REQUESTS[endpoint], "stream": True}
    asked, hide = False, False  # a client that asked usage; the proxy asking it for one that did not
    if endpoint in ("chat", "completions"):
        asked, hide = data.draw(st.sampled_from([(True, False), (True, True), (False, False)]))
    lines = data.draw(_anthropic_stream() if api == "anthropic" else _chat_stream(endpoint == "completions"))
    lines = lines[: data.draw(st.integers(0, len(lines)))] if data.draw(st.booleans()) else lines  # cut short?
    adapter = fronts.adapter(endpoint, api, LIMIT, body)
    adapter.call(endpoint, body, "http://upstream", "key")
    translator = adapter.translator(endpoint, model, asked)
    sent: list[bytes] = []
    for line in lines:
        sent += translator.feed(line)
        if translator.finished:
            break
    counted = translator.produced_bytes
    if isinstance(translator, ShowsCharged):
        translator.charged(TokenUsage(5, 1))
    sent += translator.finish(Charge("req", "USDC", 1, 1, 1, None, 1))
    watch = StreamWatch(hide_usage=hide)
    watch.feed(b"".join(sent))
    watch.rest()
    assert counted == watch.produced(framed=True), (sent, counted)


def test_stream_past_its_output_limit_then_cut_short__charged_the_limit(gw: Harness, fake: Fake) -> None:
    """An upstream that streams past the output limit sent and breaks off before its usage:
    charged its output as streamed (a token per content chunk) — at most the limit."""
    fake.config.ignore_max_tokens, fake.config.output_tokens, fake.config.die_after_chunks = True, 40, 30
    gw.add_lot(fake)
    _, key = gw.buyer()
    body = {"model": "fake-gpt", "messages": HELLO, "max_tokens": 10, **STREAM_USAGE}
    response, shown, cost = _ask(gw, key, "chat", body)
    assert shown.output_tokens == 10 and cost == usdc_cost("fake-gpt", shown)
    assert record_details(gw, response.headers["x-request-id"])[1] == 10


def test_completions_best_of__refused_as_n_is() -> None:
    """`best_of` has the upstream generate that many candidates, all billed as output: beyond
    the one output limit the hold covers, and charged at that limit, a buyer got best_of
    times the work for it. Refused (400) before any hold, as `n` is."""
    body = {"model": "fake-gpt", "prompt": "hello world", "max_tokens": 10}
    assert validate(COMPLETIONS, {**body, "best_of": 1}) == ("fake-gpt", 14, 10)
    for best_of in (2, 0, "3"):
        with pytest.raises(GatewayError) as refused:
            validate(COMPLETIONS, {**body, "best_of": best_of})
        assert refused.value.status == 400 and refused.value.param == "best_of"


def test_completions_suffix__inside_the_input_bound() -> None:
    """An insertion's `suffix` is read by the model as input: its bytes are in the bound (the
    hold's and the answer check's), else an honest answer's input is charged at a bound short
    of it. A suffix that is not a string is refused."""
    body = {"model": "fake-gpt", "prompt": "hello world", "max_tokens": 10}
    assert validate(COMPLETIONS, {**body, "suffix": "and the rest"})[1] == validate(COMPLETIONS, body)[1] + 12
    with pytest.raises(GatewayError) as refused:
        validate(COMPLETIONS, {**body, "suffix": 7})
    assert refused.value.param == "suffix"


def test_signed_mode__lying_upstream__charged_the_bounded_usage_within_the_voucher_and_signing_goes_on(
    gw: Harness, fake: Fake, tmp_path: Path
) -> None:
    """Signed mode: the voucher's hold (its output limit lowered to fit) is the bound the buyer
    agreed to; a lying upstream's answer is charged and shown within the request's bounds,
    which the signing proxy checks, so its lane's book agrees with the gateway's and it signs
    on. Before, the gateway charged the whole hold and showed the lie; the proxy refused the
    answer (input beyond its bound) and stopped signing, the hold taken."""
    fake.config.extra_input_tokens = fake.config.extra_output_tokens = LIE
    gw.add_lot(fake)
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    client = httpx.Client(base_url=gw.url, transport=PromptexSigningTransport(signer),
                          headers={"authorization": f"Bearer {api_key}"})  # fmt: skip
    body = {"model": "fake-gpt", "messages": HELLO, "max_tokens": 10}
    charged = TokenUsage(bounds("chat", body).input_bound, 10)
    for stream in (False, True):
        answer = client.post("/v1/chat/completions", json={**body, **(STREAM_USAGE if stream else {})})
        assert answer.status_code == 200 and signer.stopped is None, (answer.text, signer.stopped)
        record = gw.ledger.usage_record(answer.headers["x-request-id"])
        assert record is not None and record.cost == usdc_cost("fake-gpt", charged)
        assert (record.input_tokens, record.output_tokens) == (charged.input_tokens, 10)
    lanes = sum(gw.ledger.lane(account, "USDC", 1, i).charged for i in range(LANES))
    assert signer.book.charged_total() == lanes == 2 * usdc_cost("fake-gpt", charged)


def test_finish__usage_costing_more_than_the_hold__charged_the_hold_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where the hold caps the cost (`min(usage cost, hold)` in `Gateway.finish`), the record
    keeps the whole usage: a warning names the request, the lot, the cost and the hold.
    Before, the cap bit silently."""
    price = load_catalog(CATALOG).price("fake-gpt")
    rates = metering.list_rates(price)
    usage = TokenUsage(1_000, 1_000)
    cost = metering.usage_cost(rates, usage)
    priced = Priced(price, "USDC", LISTED, [], {7: rates}, cost - 1, output=1_000, input_bound=1_000)
    settled: list[int] = []

    async def money(_key: Any, _op: Any, _request_id: str, charged: int, *_: Any) -> Any:
        settled.append(charged)
        return SimpleNamespace(charged=None)

    gateway = SimpleNamespace(
        bounded=lambda *a: usage, _list_rates=lambda _: rates, _money=money, _settle=None,
        s=SimpleNamespace(protocol_fee_bps=0), registry=SimpleNamespace(used=lambda *a: None),
        charge=lambda *a: a,
    )  # fmt: skip
    lot = SimpleNamespace(id=7, chain_lot_id=70, kind="listed")
    with caplog.at_level(logging.WARNING, logger="promptex.gateway"):
        asyncio.run(Gateway.finish(gateway, None, priced, "req-cap", lot, usage))  # type: ignore[arg-type]
    assert settled == [cost - 1]
    warned = [r.getMessage() for r in caplog.records if r.name == "promptex.gateway"]
    assert warned == [f"request req-cap: lot 7's usage costs {cost} USDC units, more than its hold of {cost - 1}: "
                      "charged the hold"]  # fmt: skip


def test_stream_with_a_lone_surrogate__relayed_and_counted_alike_by_the_gateway_and_the_signing_proxy() -> None:
    """An upstream's text with an unpaired UTF-16 surrogate escape (an emoji cut in two at a
    token's edge): orjson refuses it, so the gateway dropped the chunk (its client never got
    it, its bytes not counted: output charged as if not produced, the seller's loss) and the
    signing proxy took it for the stream's end. Now read with U+FFFD (3 bytes), relayed as sent."""
    text_bytes = len("a\ufffd b".encode())
    chat = ('data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
            '"delta":{"content":"a\\ud83d b"},"finish_reason":null}]}')  # fmt: skip
    stream = OpenAIStream(include_usage=False)
    relayed = stream.feed(chat)
    assert relayed == [chat.encode() + b"\n\n"] and stream.produced == 1
    assert stream.produced_bytes == text_bytes + ANSWER_FRAME_BYTES
    watch = StreamWatch()
    watch.feed(relayed[0])
    assert watch.produced(framed=True) == stream.produced_bytes and not watch.ended

    event = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\\udc00 b"}}'
    native = NativeStream()
    native.feed("event: content_block_delta")
    relayed = native.feed("data: " + event)
    assert relayed == [b"event: content_block_delta\ndata: " + event.encode() + b"\n\n"] and native.produced == 1
    assert native.produced_bytes == text_bytes + ANSWER_FRAME_BYTES
    watch = StreamWatch()
    watch.feed(relayed[0])
    assert watch.produced(framed=True) == native.produced_bytes

    translated = FromChatStream(OpenAIStream(include_usage=False), "m")  # a Messages request on a chat lot
    shown = b"".join(translated.feed(chat))
    assert "a\ufffd b".encode() in shown and translated.produced_bytes == text_bytes + ANSWER_FRAME_BYTES


def test_lone_surrogate_then_deep_nesting__refused_as_any_unreadable_json_not_read_by_the_standard_reader() -> None:
    """read_json read an event orjson refused for a lone surrogate with the standard library's
    reader, which has no depth limit of its own: a seller's answer with "\\ud800" and then
    nested arrays overflowed the C stack where the recursion limit is raised (py_ecc's
    100,000, also under pytest: 200,000 deep killed the process) and raised RecursionError
    elsewhere (a 500, no failover). Now read again by orjson with the lone escapes replaced:
    refused at orjson's depth limit as any unreadable JSON. Escapes are read as JSON reads
    them: an escaped backslash before "ud800" is text, a pair is an emoji."""
    deep = b'{"a":"\\ud800","b":' + b"[" * 2_000 + b"]" * 2_000 + b"}"
    with pytest.raises(orjson.JSONDecodeError):  # before: parsed (a recursion limit of 100,000)
        produced.read_json(deep)
    assert produced.read_json(b'{"t":"x\\ud800y","p":"\\ud83d\\ude00","e":"\\\\ud800","l":"\\udc00"}') == {
        "t": "x\ufffdy", "p": "\U0001f600", "e": "\\ud800", "l": "\ufffd"
    }  # fmt: skip
    assert produced.read_json('{"t":"a\ud800b"}') == {"t": "a\ufffdb"}  # a str's own lone surrogate
