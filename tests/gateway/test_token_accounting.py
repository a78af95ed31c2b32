"""Exact token accounting through the gateway: Anthropic cache reads and writes at their
catalog rates, OpenAI cached input and reasoning tokens (inside the completion tokens,
never charged twice), carried by the usage record; holds stay upper bounds."""

from __future__ import annotations

import pytest

from promptex import metering
from promptex.fakes import fake_text
from promptex.gateway.adapters import CHAT, anthropic_usage_of, openai_usage
from promptex.gateway.requests import validate
from promptex.metering import TokenUsage, load_catalog
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CATALOG, Fake, Harness

# 3 words + 3 per message; the text part marks the prompt for Anthropic's cache.
CACHED_PROMPT = [
    {
        "role": "user",
        "content": [{"type": "text", "text": "hello cached world", "cache_control": {"type": "ephemeral"}}],
    }
]
CACHED_PROMPT_TOKENS = 6


def usdc_cost(model: str, usage: TokenUsage, rate_bps: int = 6000, fee_bps: int = 500) -> int:
    return metering.usage_cost(metering.usdc_rates(load_catalog(CATALOG).price(model), rate_bps, fee_bps), usage)


def record_details(gw: Harness, request_id: str) -> tuple[int, ...]:
    record = gw.ledger.usage_record(request_id)
    assert record is not None
    return (
        record.input_tokens,
        record.output_tokens,
        record.cache_read_tokens,
        record.cache_write_tokens,
        record.cache_write_1h_tokens,
        record.reasoning_tokens,
    )


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_lot__cache_reads_and_writes__charged_at_their_catalog_rates(
    gw: Harness, fake: Fake, stream: bool
) -> None:
    fake.config.cache_read_tokens, fake.config.cache_write_tokens, fake.config.cache_write_1h_tokens = 2, 3, 1
    lot = gw.add_lot(fake, provider="anthropic", api="anthropic")
    account, key = gw.buyer()
    create = gw.client(key).chat.completions.with_raw_response.create
    options = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    raw = create(model="fake-claude", messages=CACHED_PROMPT, max_tokens=5, **options)
    request_id = raw.headers["x-request-id"]
    if stream:
        chunks = list(raw.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_text(5)
        usage = chunks[-1].usage
    else:
        usage = raw.parse().usage
    # The client sees OpenAI's counts: all input tokens, the cache reads among them.
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (CACHED_PROMPT_TOKENS, 5)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 2

    used = TokenUsage(6, 5, cache_read_tokens=2, cache_write_tokens=3, cache_write_1h_tokens=1)
    # 1 plain × $3 + 2 read × $0.30 + 2 five-minute writes × $3.75 + 1 hour write × $6 + 5 × $15
    # per million = 92.1 micro-dollars, rounded up once.
    assert metering.usage_cost(metering.list_rates(load_catalog(CATALOG).price("fake-claude")), used) == 93
    cost = usdc_cost("fake-claude", used)
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - cost
    assert record_details(gw, request_id) == (6, 5, 2, 3, 1, 0)
    hold = gw.ledger.hold(request_id)
    assert hold is not None and hold.charged == cost <= hold.amount  # the hold priced the writes
    capacity = gw.ledger.lot_capacities()[lot]
    assert (capacity.used, capacity.reserved) == (93, 0)  # the lot's usage at list price, cache rates included


def test_anthropic_lot__cache_control__hold_prices_every_input_token_at_the_highest_write_rate(
    gw: Harness, fake: Fake
) -> None:
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer()
    client = gw.client(key)
    marked = client.chat.completions.with_raw_response.create(model="fake-claude", messages=CACHED_PROMPT, max_tokens=5)
    plain_prompt = [{"role": "user", "content": [{"type": "text", "text": "hello cached world"}]}]
    plain = client.chat.completions.with_raw_response.create(model="fake-claude", messages=plain_prompt, max_tokens=5)
    marked_hold = gw.ledger.hold(marked.headers["x-request-id"])
    plain_hold = gw.ledger.hold(plain.headers["x-request-id"])
    assert marked_hold is not None and plain_hold is not None
    rates = metering.usdc_rates(load_catalog(CATALOG).price("fake-claude"), 6000, 500)
    _, estimate, _ = validate(CHAT, {"model": "fake-claude", "messages": CACHED_PROMPT})
    # Every input token of the bound at the one-hour write rate ($6), not the input rate ($3).
    assert marked_hold.amount == metering.upper_bound(rates, estimate, 5, cache_writes=True)
    assert plain_hold.amount < marked_hold.amount


@pytest.mark.parametrize("stream", [False, True])
def test_openai_lot__cached_and_reasoning_tokens__reasoning_not_charged_twice(
    gw: Harness, fake: Fake, stream: bool
) -> None:
    fake.config.cache_read_tokens, fake.config.reasoning_tokens = 3, 4
    gw.add_lot(fake)
    account, key = gw.buyer()
    options = {"stream": True} if stream else {}
    raw = gw.client(key).chat.completions.with_raw_response.create(
        model="fake-gpt", messages=[{"role": "user", "content": "hello world"}], max_tokens=10, **options
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content
    assert text == fake_text(6)  # 10 completion tokens, 4 of them reasoning
    used = TokenUsage(5, 10, cache_read_tokens=3, reasoning_tokens=4)
    # 2 plain × $1 + 3 cached × $0.50 + 10 output (reasoning included, once) × $2 per million
    # = 23.5 micro-dollars at list price, rounded up once.
    assert metering.usage_cost(metering.list_rates(load_catalog(CATALOG).price("fake-gpt")), used) == 24
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - usdc_cost("fake-gpt", used)
    assert record_details(gw, raw.headers["x-request-id"]) == (5, 10, 3, 0, 0, 4)


def test_upstream_usage__parts_beyond_their_whole_or_malformed__not_metered() -> None:
    assert openai_usage({"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": None}})
    assert (
        openai_usage({"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 6}})
        is None
    )
    assert openai_usage({"prompt_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 1}}) is None
    assert openai_usage({"prompt_tokens": 5, "completion_tokens": -1}) is None
    assert anthropic_usage_of(
        {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 3}
    ) == TokenUsage(8, 2, cache_read_tokens=4, cache_write_tokens=3)
    one_hour_beyond_writes = {"input_tokens": 1, "cache_creation_input_tokens": 1, "cache_creation": {
        "ephemeral_1h_input_tokens": 2}}  # fmt: skip
    assert anthropic_usage_of(one_hour_beyond_writes) is None
    assert anthropic_usage_of({"input_tokens": "1"}) is None
