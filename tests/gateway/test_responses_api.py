"""/v1/responses through the official `openai` SDK: text, plain and streamed, stateless,
over OpenAI-API and Anthropic lots alike, with the same holds, metering, cost headers,
request ids and errors as chat completions."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import orjson
import pytest

from promptex import metering
from promptex.fakes import fake_text
from promptex.metering import TokenUsage, load_catalog
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CATALOG, Fake, Harness

HELLO_TOKENS = 3 + 2  # "hello world" as one user message, in the fake's count


def usdc_cost(model: str, usage: TokenUsage, rate_bps: int = 6000) -> int:
    rates = metering.usdc_rates(load_catalog(CATALOG).price(model), rate_bps, 500)
    return metering.usage_cost(rates, usage)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_responses__sync_sdk__text_answer_usage_and_exact_charge(gw: Harness, fake: Fake, api: str) -> None:
    model = "fake-claude" if api == "anthropic" else "fake-gpt"
    lot = gw.add_lot(fake, provider="anthropic" if api == "anthropic" else "openai", api=api)
    fake.config.reasoning_tokens = 2 if api == "openai" else 0
    account, key = gw.buyer()
    raw = gw.client(key).responses.with_raw_response.create(
        model=model, input="hello world", instructions="be brief", max_output_tokens=6
    )
    response = raw.parse()
    visible = 4 if api == "openai" else 6  # OpenAI's reasoning tokens are inside its 6 output tokens
    assert response.output_text == fake_text(visible) and response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.store is False and response.previous_response_id is None
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (HELLO_TOKENS + 5, 6)
    assert response.usage.output_tokens_details.reasoning_tokens == (2 if api == "openai" else 0)
    cost = usdc_cost(model, TokenUsage(10, 6, reasoning_tokens=2 if api == "openai" else 0))
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - cost
    assert (raw.headers["x-promptex-cost-units"], raw.headers["x-promptex-lot"]) == (str(cost), str(lot))
    record = gw.ledger.usage_record(raw.headers["x-request-id"])
    assert record is not None and record.output_tokens == 6


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_responses__stream_helper__events_in_order_final_response_and_charge_on_completed(
    gw: Harness, fake: Fake, api: str
) -> None:
    model = "fake-claude" if api == "anthropic" else "fake-gpt"
    gw.add_lot(fake, provider="anthropic" if api == "anthropic" else "openai", api=api)
    account, key = gw.buyer()
    with gw.client(key).responses.stream(
        model=model, input=[{"role": "user", "content": "hello world"}], max_output_tokens=100
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == fake_text(16) and final.status == "completed"
    cost = usdc_cost(model, TokenUsage(HELLO_TOKENS, 16))
    assert final.usage is not None and final.usage.output_tokens == 16
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - cost


def test_responses__async_sdk__plain_and_streamed_each_charged(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    account, key = gw.buyer()

    async def run() -> list[str]:
        client = gw.async_client(key)
        answers = await asyncio.gather(
            *(client.responses.create(model="fake-gpt", input="hello world", max_output_tokens=3) for _ in range(3))
        )
        stream = await client.responses.create(model="fake-gpt", input="hello world", max_output_tokens=3, stream=True)
        events = [e async for e in stream]
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        assert events[-1].model_extra is not None  # the charge, as an extra the SDK keeps
        assert events[-1].model_extra["promptex"]["cost_units"] == str(usdc_cost("fake-gpt", TokenUsage(5, 3)))
        return [*(a.output_text for a in answers), "".join(deltas)]

    assert asyncio.run(run()) == [fake_text(3)] * 4
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - 4 * usdc_cost("fake-gpt", TokenUsage(5, 3))


def test_responses__raw_stream__sse_event_names_and_the_last_carries_usage_and_charge(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    _, key = gw.buyer()
    with httpx.stream(
        "POST",
        gw.url + "/v1/responses",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "fake-gpt", "input": "hello world", "max_output_tokens": 2, "stream": True},
        timeout=30,
    ) as response:
        assert response.headers["x-promptex-hold-units"].isdigit()
        lines = list(response.iter_lines())
    events = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [line[7:] for line in lines if line.startswith("event: ")] == [e["type"] for e in events]
    last = events[-1]
    assert last["type"] == "response.incomplete" and last["response"]["usage"]["output_tokens"] == 2
    assert [e for e in events if "promptex" in e] == [last]


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search_preview"}]}, "tools"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"background": True}, "background"),
        ({"text": {"format": {"type": "json_object"}}}, "text"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
            "input",
        ),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "{}"}]}, "input"),
    ],
)
def test_responses__stateful_tools_or_not_text__400_and_nothing_moved(
    gw: Harness, fake: Fake, extra: dict[str, Any], param: str
) -> None:
    gw.add_lot(fake)
    account, key = gw.buyer()
    body = {"model": "fake-gpt", "input": "hello world", **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        gw.client(key).responses.create(**body)
    assert refused.value.param == param and refused.value.type == "invalid_request_error"
    assert refused.value.response.headers["x-request-id"].startswith("req_")
    assert fake.config.requests == 0 and gw.ledger.balance(account, "USDC").held == 0


def test_responses__errors__openai_shape_like_chat(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    _, key = gw.buyer()
    with pytest.raises(openai.AuthenticationError):
        gw.client("px-wrong").responses.create(model="fake-gpt", input="hi")
    with pytest.raises(openai.NotFoundError):
        gw.client(key).responses.create(model="no-such-model", input="hi")
    _, broke = gw.buyer(amount=0)
    with pytest.raises(openai.APIStatusError) as unpaid:
        gw.client(broke).responses.create(model="fake-gpt", input="hi", max_output_tokens=5)
    assert unpaid.value.status_code == 402 and unpaid.value.code == "insufficient_quota"
    with pytest.raises(openai.BadRequestError, match="reasoning"):  # an Anthropic lot cannot honour it
        gw.add_lot(fake, provider="anthropic", api="anthropic")
        gw.client(key).responses.create(model="fake-claude", input="hi", reasoning={"effort": "low"})
