"""The /v1 API through the real openai client: served, metered and charged exactly."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from promptex import metering
from promptex.fakes import fake_text
from promptex.metering import load_catalog
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CATALOG, CHAIN_LOTS, Fake, Harness

HELLO = [{"role": "user", "content": "hello world"}]
HELLO_TOKENS = 3 + 2  # the fake's count: per-message overhead + words


def usdc_cost(model: str, rate_bps: int, n_in: int, n_out: int, fee_bps: int = 500) -> int:
    rates = metering.usdc_rates(load_catalog(CATALOG).price(model), rate_bps, fee_bps)
    return metering.message_cost(rates, n_in, n_out)


def token_cost(model: str, n_in: int, n_out: int) -> int:
    return metering.message_cost(metering.provider_token_rates(load_catalog(CATALOG).price(model)), n_in, n_out)


def test_chat__sync_client__served_and_charged_the_metered_cost(gw: Harness, fake: Fake) -> None:
    lot = gw.add_lot(fake, rate_bps=6000)
    account, key = gw.buyer(amount=10 * USDC)
    raw = gw.client(key).chat.completions.with_raw_response.create(model="fake-gpt", messages=HELLO)
    answer = raw.parse()
    assert answer.choices[0].message.content == fake_text(16)
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-promptex-lot"] == str(lot)
    cost = usdc_cost("fake-gpt", 6000, HELLO_TOKENS, 16)
    balance = gw.ledger.balance(account, "USDC")
    assert (balance.posted, balance.held) == (10 * USDC - cost, 0)
    assert gw.ledger.system_balance("usage", "USDC") == cost
    hold = gw.ledger.hold(raw.headers["x-request-id"])
    assert hold is not None and hold.charged == cost
    record = gw.ledger.usage_record(raw.headers["x-request-id"])  # written with the settlement
    assert record is not None
    assert (record.gateway_lot_id, record.asset, record.cost) == (lot, "USDC", cost)
    assert (record.input_tokens, record.output_tokens) == (HELLO_TOKENS, 16)
    assert (record.chain_lot_id, record.lot_kind, record.status) == (CHAIN_LOTS + lot, "listed", "pending")


def test_chat__async_client__concurrent_requests_each_charged(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    account, key = gw.buyer(amount=10 * USDC)

    async def run() -> list[str]:
        client = gw.async_client(key)
        answers = await asyncio.gather(
            *(client.chat.completions.create(model="fake-gpt", messages=HELLO, max_tokens=4) for _ in range(5))
        )
        return [a.choices[0].message.content or "" for a in answers]

    assert asyncio.run(run()) == [fake_text(4)] * 5
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - 5 * usdc_cost("fake-gpt", 6000, HELLO_TOKENS, 4)


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream__include_usage_or_not__text_streamed_and_charged_exactly(
    gw: Harness, fake: Fake, include_usage: bool
) -> None:
    gw.add_lot(fake)
    account, key = gw.buyer()
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(gw.client(key).chat.completions.create(model="fake-gpt", messages=HELLO, stream=True, **options))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_text(16)
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0].usage is not None
        assert usage_chunks[0].usage.completion_tokens == 16
    else:
        assert usage_chunks == []
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - usdc_cost("fake-gpt", 6000, HELLO_TOKENS, 16)


def test_completions_and_embeddings__openai_client__served_and_charged(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    account, key = gw.buyer()
    client = gw.client(key)
    completion = client.completions.create(model="fake-gpt", prompt="say three words", max_tokens=3)
    embedding = client.embeddings.create(model="fake-embed", input=["a b", "c"])
    assert completion.choices[0].text == fake_text(3)
    assert len(embedding.data) == 2
    expected = usdc_cost("fake-gpt", 6000, 3, 3) + usdc_cost("fake-embed", 6000, 3, 0)
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - expected


def test_chat__anthropic_lot__translated_with_system_prompt_and_usage(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    account, key = gw.buyer()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    answer = gw.client(key).chat.completions.create(model="fake-claude", messages=messages, max_tokens=8)
    assert answer.choices[0].message.content == fake_text(8)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5 + 5, 8)
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - usdc_cost("fake-claude", 6000, 10, 8)


def test_chat_stream__anthropic_lot__openai_chunks_with_usage(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    account, key = gw.buyer()
    chunks = list(
        gw.client(key).chat.completions.create(
            model="fake-claude", messages=HELLO, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_text(6)
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (HELLO_TOKENS, 6)
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - usdc_cost("fake-claude", 6000, HELLO_TOKENS, 6)


def test_chat__paid_in_provider_token__served_by_tokenized_lot_at_face_value(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake, kind="listed")
    tokenized = gw.add_lot(fake, kind="tokenized")
    account, key = gw.buyer(asset="GPT", amount=TOKEN)
    raw = gw.client(key, default_headers={"x-promptex-asset": "GPT"}).chat.completions.with_raw_response.create(
        model="fake-gpt", messages=HELLO, max_tokens=4
    )
    assert raw.headers["x-promptex-lot"] == str(tokenized)
    assert gw.ledger.balance(account, "GPT").posted == TOKEN - token_cost("fake-gpt", HELLO_TOKENS, 4)


def test_chat__listed_lots__cheapest_rate_then_oldest_serves(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake, rate_bps=7000)
    older_cheap = gw.add_lot(fake, rate_bps=5000)
    gw.add_lot(fake, rate_bps=5000)
    _, key = gw.buyer()
    raw = gw.client(key).chat.completions.with_raw_response.create(model="fake-gpt", messages=HELLO, max_tokens=2)
    assert raw.headers["x-promptex-lot"] == str(older_cheap)


def test_chat__tokenized_lots__nearest_expiry_first_then_oldest(gw: Harness, fake: Fake) -> None:
    # The escrow draws tokenized lots nearest-expiry first; the gateway routes in the same order.
    gw.add_lot(fake, kind="tokenized", expires_in=60 * 86_400)
    sooner = gw.add_lot(fake, kind="tokenized", expires_in=20 * 86_400)
    gw.add_lot(fake, kind="tokenized", expires_in=20 * 86_400)
    _, key = gw.buyer(asset="GPT", amount=TOKEN, default_asset="GPT")
    raw = gw.client(key).chat.completions.with_raw_response.create(model="fake-gpt", messages=HELLO, max_tokens=2)
    assert raw.headers["x-promptex-lot"] == str(sooner)


@pytest.mark.parametrize("status", [401, 429, 500])
def test_chat__cheapest_lot_fails__fails_over_and_charges_the_serving_rate(
    gw: Harness, fake: Fake, second_fake: Fake, status: int
) -> None:
    second_fake.config.fail_status = status
    gw.add_lot(second_fake, rate_bps=4000)
    serving = gw.add_lot(fake, rate_bps=6000)
    account, key = gw.buyer()
    raw = gw.client(key).chat.completions.with_raw_response.create(model="fake-gpt", messages=HELLO, max_tokens=2)
    assert raw.headers["x-promptex-lot"] == str(serving)
    assert second_fake.config.requests == 1
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - usdc_cost("fake-gpt", 6000, HELLO_TOKENS, 2)


def test_chat__lot_serves__its_capacity_used_by_list_cost_in_the_ledger(gw: Harness, fake: Fake) -> None:
    lot = gw.add_lot(fake, face_value=1_000_000)
    _, key = gw.buyer()
    gw.client(key).chat.completions.create(model="fake-gpt", messages=HELLO, max_tokens=10)
    capacity = gw.ledger.lot_capacities()[lot]
    used = -(-(1_000 * HELLO_TOKENS + 2_000 * 10) // 1000)
    assert (capacity.chain_remaining, capacity.used, capacity.reserved) == (1_000_000, used, 0)
    assert capacity.headroom == 1_000_000 - used


def test_models__catalog__lists_prices_per_asset(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake, rate_bps=5000)
    _, key = gw.buyer()
    models = {m.id: m for m in gw.client(key).models.list()}
    assert set(models) == set(load_catalog(CATALOG).models)
    pricing = models["fake-gpt"].model_extra["pricing"]  # type: ignore[index]
    # $1 / $2 per million list; listed at 50 % plus a 5 % fee (the cheapest lot's rate, said)
    assert pricing["USDC"] == {"input_per_million": "0.525", "output_per_million": "1.05", "rate_bps": 5000}
    assert "USDC" not in models["fake-claude"].model_extra["pricing"]  # type: ignore[index]


def test_stream__client_disconnects__upstream_dropped_charged_input_and_streamed_only(gw: Harness, fake: Fake) -> None:
    fake.config.chunk_delay_ms = 20
    gw.add_lot(fake)
    account, key = gw.buyer()
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "fake-gpt", "messages": HELLO, "max_tokens": 12, "stream": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        next(response.iter_lines())
    hold = None
    for _ in range(500):  # the gateway meters once it has dropped the upstream call
        hold = gw.ledger.hold(request_id)
        if hold is not None and hold.status != "active":
            break
        asyncio.run(asyncio.sleep(0.02))
    assert hold is not None and hold.status == "settled"
    record = gw.ledger.usage_record(request_id)
    assert record is not None
    # the input counted from the prompt (the fake reports usage only at the end), and
    # what was streamed before the client left: not the 12 tokens it would have produced
    assert record.input_tokens == HELLO_TOKENS and record.output_tokens < 12
    assert hold.charged == usdc_cost("fake-gpt", 6000, HELLO_TOKENS, record.output_tokens) < hold.amount
    assert gw.ledger.balance(account, "USDC").held == 0


def test_chat_stream__cheapest_lot_fails__fails_over_before_the_first_byte(
    gw: Harness, fake: Fake, second_fake: Fake
) -> None:
    second_fake.config.fail_status = 503
    gw.add_lot(second_fake, rate_bps=4000)
    serving = gw.add_lot(fake, rate_bps=6000)
    account, key = gw.buyer()
    raw = gw.client(key).chat.completions.with_raw_response.create(
        model="fake-gpt", messages=HELLO, max_tokens=3, stream=True
    )
    assert raw.headers["x-promptex-lot"] == str(serving)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == fake_text(3)
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - usdc_cost("fake-gpt", 6000, HELLO_TOKENS, 3)


def test_completions__anthropic_lot__prompt_translated_to_a_message(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    account, key = gw.buyer()
    answer = gw.client(key).completions.create(model="fake-claude", prompt="one two", max_tokens=5)
    assert answer.choices[0].text == fake_text(5)
    assert answer.usage is not None and answer.usage.prompt_tokens == 3 + 2
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - usdc_cost("fake-claude", 6000, 5, 5)
