"""/v1/messages through the official `anthropic` SDK (only base_url and api_key changed):
passed through natively to Anthropic lots, translated for text to OpenAI-API lots, with
the same holds, metering, cost headers and request ids as chat completions, and errors in
Anthropic's shape."""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import orjson
import pytest

from promptex import metering
from promptex.fakes import fake_text
from promptex.gateway.errors import GatewayError
from promptex.metering import TokenUsage, load_catalog
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CATALOG, Fake, Harness

HELLO = [{"role": "user", "content": "hello world"}]
HELLO_TOKENS = 3 + 2  # the fake's count: per-message overhead + words


def usdc_cost(model: str, usage: TokenUsage, rate_bps: int = 6000) -> int:
    rates = metering.usdc_rates(load_catalog(CATALOG).price(model), rate_bps, 500)
    return metering.usage_cost(rates, usage)


def anthropic_lot(gw: Harness, fake: Fake) -> int:
    return gw.add_lot(fake, provider="anthropic", api="anthropic")


def test_messages__sync_sdk__native_to_anthropic_lot_charged_exactly(gw: Harness, fake: Fake) -> None:
    lot = anthropic_lot(gw, fake)
    account, key = gw.buyer()
    raw = gw.anthropic(key).messages.with_raw_response.create(
        model="fake-claude", max_tokens=5, system="be brief", messages=HELLO
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == fake_text(5)
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == ("max_tokens", 10, 5)
    request_id = raw.headers["x-request-id"]
    assert raw.headers["request-id"] == request_id and message._request_id == request_id  # the SDK reads it
    cost = usdc_cost("fake-claude", TokenUsage(10, 5))
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - cost
    assert (raw.headers["x-promptex-cost-units"], raw.headers["x-promptex-lot"]) == (str(cost), str(lot))
    record = gw.ledger.usage_record(request_id)
    assert record is not None and (record.model, record.input_tokens, record.output_tokens) == ("fake-claude", 10, 5)


def test_messages__stream_helper__native_events_final_message_and_charge_on_message_delta(
    gw: Harness, fake: Fake
) -> None:
    anthropic_lot(gw, fake)
    account, key = gw.buyer()
    with gw.anthropic(key).messages.stream(model="fake-claude", max_tokens=6, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
        hold = int(stream.response.headers["x-promptex-hold-units"])
    assert text == fake_text(6) and final.usage.output_tokens == 6 and final.usage.input_tokens == HELLO_TOKENS
    cost = usdc_cost("fake-claude", TokenUsage(HELLO_TOKENS, 6))
    assert 0 < cost <= hold
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - cost
    charged = gw.ledger.hold(request_id)
    assert charged is not None and charged.charged == cost
    # The raw events: Anthropic's own, the message_delta carrying the exact charge.
    with httpx.stream(
        "POST",
        gw.url + "/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": "fake-claude", "max_tokens": 3, "messages": HELLO, "stream": True},
        timeout=30,
    ) as response:
        lines = list(response.iter_lines())
    events = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    assert names == [e["type"] for e in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert [e for e in events if "promptex" in e] == [events[-2]]
    assert events[-2]["promptex"]["cost_units"] == str(usdc_cost("fake-claude", TokenUsage(HELLO_TOKENS, 3)))


def test_messages__async_sdk__concurrent_requests_each_charged(gw: Harness, fake: Fake) -> None:
    anthropic_lot(gw, fake)
    account, key = gw.buyer()

    async def run() -> list[str]:
        client = gw.async_anthropic(key)
        answers = await asyncio.gather(
            *(client.messages.create(model="fake-claude", max_tokens=4, messages=HELLO) for _ in range(4))
        )
        texts = [a.content[0].text for a in answers if a.content[0].type == "text"]
        stream = await client.messages.create(model="fake-claude", max_tokens=4, messages=HELLO, stream=True)
        deltas = [
            e.delta.text async for e in stream if e.type == "content_block_delta" and e.delta.type == "text_delta"
        ]
        return [*texts, "".join(deltas)]

    assert asyncio.run(run()) == [fake_text(4)] * 5
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - 5 * usdc_cost("fake-claude", TokenUsage(5, 4))


@pytest.mark.parametrize("stream", [False, True])
def test_messages__openai_lot__translated_for_text_and_back(gw: Harness, fake: Fake, stream: bool) -> None:
    gw.add_lot(fake)  # fake-gpt: OpenAI's API
    fake.config.cache_read_tokens = 2
    account, key = gw.buyer()
    client = gw.anthropic(key)
    kwargs = {"model": "fake-gpt", "max_tokens": 4, "system": [{"type": "text", "text": "be brief"}], "messages": HELLO}
    if stream:
        with client.messages.stream(**kwargs) as s:  # type: ignore[arg-type]
            text = "".join(s.text_stream)
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)  # type: ignore[arg-type]
        text = message.content[0].text if message.content[0].type == "text" else ""
    assert text == fake_text(4) and message.stop_reason == "max_tokens"
    # OpenAI counts its cached tokens inside the prompt; Anthropic's words count them apart.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (8, 2, 4)
    cost = usdc_cost("fake-gpt", TokenUsage(10, 4, cache_read_tokens=2))
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - cost


def test_messages__cache_control_to_anthropic_lot__reads_and_writes_charged_at_their_rates(
    gw: Harness, fake: Fake
) -> None:
    fake.config.cache_read_tokens, fake.config.cache_write_tokens = 2, 2
    anthropic_lot(gw, fake)
    account, key = gw.buyer()
    system = [{"type": "text", "text": "you are terse", "cache_control": {"type": "ephemeral"}}]
    message = gw.anthropic(key).messages.create(model="fake-claude", max_tokens=3, system=system, messages=HELLO)
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (7, 2, 2)
    cost = usdc_cost("fake-claude", TokenUsage(11, 3, cache_read_tokens=2, cache_write_tokens=2))
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - cost


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "only custom tools"),
        ({"inference_geo": "us"}, "inference_geo"),
        ({"speed": "fast"}, "fast mode"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "x"}}]}]},
            "'document' blocks",
        ),
    ],
)
def test_messages__cost_it_cannot_bound__400_invalid_request_nothing_moved(
    gw: Harness, fake: Fake, kwargs: dict[str, object], message: str
) -> None:
    anthropic_lot(gw, fake)
    account, key = gw.buyer()
    body = {"model": "fake-claude", "max_tokens": 5, "messages": HELLO, **kwargs}
    with pytest.raises(anthropic.BadRequestError, match=message) as caught:
        gw.anthropic(key).messages.create(**body)  # type: ignore[arg-type]
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert fake.config.requests == 0
    assert gw.ledger.balance(account, "USDC").held == 0


def test_messages__not_text_to_an_openai_lot__400_before_any_hold(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    account, key = gw.buyer()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError, match="only text blocks"):
        gw.anthropic(key).messages.create(
            model="fake-gpt", max_tokens=5, messages=[{"role": "user", "content": [image]}]
        )
    with pytest.raises(anthropic.BadRequestError, match="tools"):
        gw.anthropic(key).messages.create(
            model="fake-gpt", max_tokens=5, messages=HELLO, tools=[{"name": "f", "input_schema": {"type": "object"}}]
        )
    assert fake.config.requests == 0 and gw.ledger.balance(account, "USDC").held == 0


def test_messages__errors__anthropic_shape_types_and_request_ids(gw: Harness, fake: Fake) -> None:
    anthropic_lot(gw, fake)
    _, key = gw.buyer()
    with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
        gw.anthropic("px-wrong").messages.create(model="fake-claude", max_tokens=5, messages=HELLO)
    assert unauthenticated.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert unauthenticated.value.request_id and unauthenticated.value.request_id.startswith("req_")
    with pytest.raises(anthropic.NotFoundError) as unknown:
        gw.anthropic(key).messages.create(model="no-such-model", max_tokens=5, messages=HELLO)
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    # What the SDK would not send (it requires max_tokens itself), in Anthropic's shape.
    response = httpx.post(
        gw.url + "/v1/messages", headers={"x-api-key": key}, json={"model": "fake-claude", "messages": HELLO}
    )
    error = response.json()
    assert response.status_code == 400 and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error" and "max_tokens" in error["error"]["message"]
    assert response.headers["request-id"] == error["request_id"]
    _, broke = gw.buyer(amount=0)
    with pytest.raises(anthropic.PaymentRequiredError) as unpaid:  # 402: billing_error
        gw.anthropic(broke).messages.create(model="fake-claude", max_tokens=5, messages=HELLO)
    assert unpaid.value.status_code == 402 and unpaid.value.body["error"]["type"] == "billing_error"  # type: ignore[index]


def test_messages__gateway_at_capacity__529_overloaded_error_with_retry_after(gw: Harness, fake: Fake) -> None:
    anthropic_lot(gw, fake)
    _, key = gw.buyer()
    gw.gateway.s = gw.gateway.s.model_copy(update={"gateway_max_inflight": 0})
    with pytest.raises(anthropic.OverloadedError) as shed:
        gw.anthropic(key).messages.create(model="fake-claude", max_tokens=5, messages=HELLO)
    assert shed.value.status_code == 529 and shed.value.response.headers["retry-after"] == "1"
    assert shed.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    # On the OpenAI APIs the same shed stays OpenAI's 429.
    with pytest.raises(Exception) as openai_shed:
        gw.client(key).chat.completions.create(model="fake-claude", messages=HELLO, max_tokens=5)
    assert getattr(openai_shed.value, "status_code", None) == 429


def test_anthropic_error_shape__caller_limit_stays_429_rate_limit_error() -> None:
    limit = GatewayError(429, "Too many requests for this key.", type="rate_limit_error", code="rate_limit_exceeded")
    response = limit.anthropic_response("req_1")
    body = orjson.loads(response.body)
    assert response.status_code == 429 and body["error"]["type"] == "rate_limit_error"
    assert body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": limit.message},
        "request_id": "req_1",
    }


def test_messages__bearer_key_too_and_no_key__401(gw: Harness, fake: Fake) -> None:
    anthropic_lot(gw, fake)
    _, key = gw.buyer()
    bearer = anthropic.Anthropic(base_url=gw.url, auth_token=key, max_retries=0)  # Authorization: Bearer
    assert bearer.messages.create(model="fake-claude", max_tokens=2, messages=HELLO).usage.output_tokens == 2
    response = httpx.post(gw.url + "/v1/messages", json={"model": "fake-claude", "max_tokens": 2, "messages": HELLO})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


def test_messages__unknown_path_or_method_under_it__anthropic_error_shape(gw: Harness) -> None:
    count = httpx.post(gw.url + "/v1/messages/count_tokens", json={})
    assert count.status_code == 404 and count.json()["error"]["type"] == "not_found_error"
    listing = httpx.get(gw.url + "/v1/messages")
    assert listing.status_code == 405 and listing.json()["type"] == "error"
    assert httpx.get(gw.url + "/v1/nothing").json()["error"]["type"] == "invalid_request_error"  # OpenAI's, elsewhere
