"""An upstream that reports more than its request can use (a seller's own endpoint, or a
lying one: gbreak4's finding A) is charged, recorded and paid at the request's bounds —
the input its body can hold, the output limit sent upstream — and the answer's usage
shows what was charged, plain and streamed, on every API. Before, the charge was capped
only by the hold (107x the true cost in the breaker's repro), the answer showed the
reported counts, and the usage record drew the lot (and paid its seller) their whole list
value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from promptex import metering
from promptex.buyerside.answers import bounds, check_counts, usage_of
from promptex.buyerside.signer import StreamWatch
from promptex.buyerside.transport import PromptexSigningTransport
from promptex.gateway.adapters import COMPLETIONS, anthropic_usage_of
from promptex.gateway.errors import GatewayError
from promptex.gateway.requests import validate
from promptex.metering import TokenUsage, load_catalog
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CATALOG, Fake, Harness
from .test_signed_proxy import LANES, _session, _signer
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


def test_native_messages_stream__message_start_shows_the_input_within_its_bound(gw: Harness, fake: Fake) -> None:
    """A native Messages stream's message_start passed the upstream's input counts on as
    sent; only the final message_delta (whose totals overwrite them) showed what was charged:
    a client reading the input at message_start (known there) saw the lie. It shows the
    input within the request's bound now (the reads kept, no write beyond the marks), the
    counts the message_delta carries; an honest start's counts are left as sent."""
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

    start, delta, raw = start_and_delta()
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
