"""Exact token accounting through the gateway: Anthropic cache reads and writes at their
catalog rates, OpenAI cached input and reasoning tokens (inside the completion tokens,
never charged twice), carried by the usage record; holds stay upper bounds."""

from __future__ import annotations

import orjson
import pytest

from promptex import metering
from promptex.fakes import fake_text
from promptex.gateway.adapters import CHAT, AnthropicAdapter, anthropic_usage_of, openai_usage, within_marks
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
# The same prompt marked for the cache for an hour (`"ttl": "1h"`): only such a mark may be
# charged one-hour writes (`adapters.within_marks`).
HOUR_PROMPT = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "hello cached world", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
    }
]


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
    raw = create(model="fake-claude", messages=HOUR_PROMPT, max_tokens=5, **options)
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
    # The cache writes too, inside the prompt tokens (LiteLLM's fields; the SDK keeps them):
    # without them the charge could not be checked from the answer.
    writes = usage.model_dump()["prompt_tokens_details"]
    assert (writes["cache_creation_tokens"], writes["cache_creation_token_details"]) == (
        3, {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 1})  # fmt: skip
    assert openai_usage(usage.model_dump()) == TokenUsage(
        6, 5, cache_read_tokens=2, cache_write_tokens=3, cache_write_1h_tokens=1)  # fmt: skip

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
    # Cache writes in OpenAI's usage (LiteLLM's fields), inside the prompt tokens, within their whole.
    details = {"cached_tokens": 1, "cache_creation_tokens": 3,
               "cache_creation_token_details": {"ephemeral_1h_input_tokens": 2}}  # fmt: skip
    assert openai_usage({"prompt_tokens": 5, "prompt_tokens_details": details}) == TokenUsage(
        5, 0, cache_read_tokens=1, cache_write_tokens=3, cache_write_1h_tokens=2)  # fmt: skip
    for beyond in ({**details, "cache_creation_tokens": 5}, {**details, "cache_creation_token_details": {
            "ephemeral_1h_input_tokens": 4}}, {**details, "cache_creation_tokens": -1}):  # fmt: skip
        assert openai_usage({"prompt_tokens": 5, "prompt_tokens_details": beyond}) is None


def test_openai_compatible_lot__cache_writes__charged_at_the_write_rates_only_where_marked(
    gw: Harness, fake: Fake
) -> None:
    """An OpenAI-compatible upstream serving an Anthropic model (LiteLLM, a router) reports its
    cache writes in OpenAI's usage (`prompt_tokens_details.cache_creation_tokens`): charged at
    the write rates for a request that marked its prompt, plain and streamed. Reported for a
    request that marked nothing (a mistaken or lying upstream), they are charged as plain
    input and the answer shows them so: before, the gateway charged them at the write rates
    (here up to 2x the input rate), and a buyer without the signing proxy paid it."""
    fake.config.cache_read_tokens, fake.config.cache_write_tokens, fake.config.cache_write_1h_tokens = 2, 3, 1
    lot = gw.add_lot(fake, provider="anthropic", api="openai")
    account, key = gw.buyer()
    create = gw.client(key).chat.completions.with_raw_response.create
    plain_prompt = [{"role": "user", "content": [{"type": "text", "text": "hello cached world"}]}]
    cases = [  # (prompt, writes reported unmarked too, the usage charged and shown)
        (HOUR_PROMPT, False, TokenUsage(6, 5, cache_read_tokens=2, cache_write_tokens=3, cache_write_1h_tokens=1)),
        # Marked for 5 minutes, an hour's write reported: charged as a 5-minute write.
        (CACHED_PROMPT, False, TokenUsage(6, 5, cache_read_tokens=2, cache_write_tokens=3)),
        (plain_prompt, True, TokenUsage(6, 5, cache_read_tokens=2)),  # marked nothing: as plain input
    ]
    spent = 0
    for prompt, unmarked, charged in cases:
        fake.config.cache_writes_unmarked = unmarked
        for stream in (False, True):
            options = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
            raw = create(model="fake-claude", messages=prompt, max_tokens=5, **options)
            usage = [c for c in raw.parse() if c.usage][-1].usage if stream else raw.parse().usage
            assert usage is not None and openai_usage(usage.model_dump()) == charged, (prompt, stream, usage)
            request_id = raw.headers["x-request-id"]
            spent += usdc_cost("fake-claude", charged)
            assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - spent, (prompt, stream)
            assert record_details(gw, request_id) == (6, 5, 2, charged.cache_write_tokens,
                                                      charged.cache_write_1h_tokens, 0)  # fmt: skip
    assert gw.ledger.lot_capacities()[lot].reserved == 0


def test_cache_writes_beyond_the_marks_of_the_body_sent__charged_as_what_it_marked() -> None:
    """A provider writes to its cache only what the request it received marks (`cache_control`,
    an hour only with `"ttl": "1h"`): writes reported beyond that are charged as plain input
    (nothing marked) or as 5-minute writes (no hour marked). A mention in a text is no mark."""
    usage = TokenUsage(10, 2, cache_read_tokens=1, cache_write_tokens=6, cache_write_1h_tokens=4)
    part = {"type": "text", "text": "hi"}
    five = {"messages": [{"role": "user", "content": [{**part, "cache_control": {"type": "ephemeral"}}]}]}
    hour = {"system": [{**part, "cache_control": {"type": "ephemeral", "ttl": "1h"}}], "messages": []}
    automatic = {"cache_control": {"type": "ephemeral"}, "messages": []}  # Anthropic's top-level caching
    unmarked = [{"messages": [{"role": "user", "content": '"cache_control": {"type": "ephemeral", "ttl": "1h"}'}]},
                {"cache_control": None, "messages": []}]  # fmt: skip
    for body in unmarked:
        assert within_marks(usage, body) == TokenUsage(10, 2, cache_read_tokens=1)
    for body in (five, automatic):
        assert within_marks(usage, body) == TokenUsage(10, 2, cache_read_tokens=1, cache_write_tokens=6)
    assert within_marks(usage, hour) == usage
    # A chat request's system messages marked for the cache reach an Anthropic lot as text
    # blocks with their marks (before: joined into one string, the marks lost, nothing
    # cached); unmarked, as one string as before. Writes reported for a body whose marks
    # did not arrive (the plain string) were never asked for.
    answer = {"id": "msg_1", "content": [{"type": "text", "text": "Sunny"}], "stop_reason": "end_turn",
              "usage": {"input_tokens": 4, "cache_creation_input_tokens": 6, "output_tokens": 2}}  # fmt: skip
    mark = {"type": "ephemeral"}
    for system, sent, charged in (
        ([{**part, "cache_control": mark}, {**part, "text": "be brief"}],
         [{**part, "cache_control": mark}, {**part, "text": "be brief"}], TokenUsage(10, 2, cache_write_tokens=6)),
        ("you are terse", "you are terse", TokenUsage(10, 2)),
    ):  # fmt: skip
        adapter = AnthropicAdapter()
        chat = {"model": "fake-claude", "messages": [{"role": "system", "content": system},
                                                     {"role": "user", "content": "hi"}]}  # fmt: skip
        call = adapter.call(CHAT, chat, "http://127.0.0.1:9/v1", "sk-fake")
        assert orjson.loads(call.content)["system"] == sent
        content, usage = adapter.answer(CHAT, orjson.dumps(answer), "fake-claude")
        assert usage == charged and openai_usage(orjson.loads(content)["usage"]) == charged
