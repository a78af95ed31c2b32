"""The cost on every answer: `x-promptex-*` headers on plain answers; on streams the hold
in the headers and the exact charge in the usage chunk (when asked for) or the last chunk
with choices, never in a chunk without choices. The openai SDK reads it all unchanged."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import update

from promptex.fakes import fake_text
from promptex.gateway.adapters import OpenAIStream
from promptex.gateway.charges import Charge
from promptex.ledger.schema import usage_records
from promptex.protocol.providers import PROVIDER_TOKENS
from promptex.protocol.units import PRICE_SCALE
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CHAIN_LOTS, Fake, FakeTwaps, Harness

HELLO = [{"role": "user", "content": "hello world"}]


def charged(gw: Harness, request_id: str) -> int:
    hold = gw.ledger.hold(request_id)
    assert hold is not None and hold.charged is not None
    return hold.charged


def test_plain_answer__cost_headers__equal_the_ledger_charge(gw: Harness, fake: Fake) -> None:
    lot = gw.add_lot(fake, rate_bps=6000)
    _, key = gw.buyer()
    raw = gw.client(key).chat.completions.with_raw_response.create(model="fake-gpt", messages=HELLO, max_tokens=4)
    assert raw.parse().choices[0].message.content == fake_text(4)  # the SDK parses the answer as before
    h = raw.headers
    cost = charged(gw, h["x-request-id"])
    assert (h["x-promptex-asset"], h["x-promptex-cost-units"]) == ("USDC", str(cost))
    assert h["x-promptex-cost"] == f"0.{cost:06d}".rstrip("0")  # whole USDC, exact
    assert h["x-promptex-cost-usd"] == h["x-promptex-cost"]  # USDC is dollars
    assert (h["x-promptex-lot"], h["x-promptex-epoch"]) == (str(lot), "1")
    assert h["x-promptex-chain-lot"] == str(CHAIN_LOTS + lot)  # only lots open on chain are routed


def test_plain_answer__epochs_batched__expected_epoch_is_the_next(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    _, key = gw.buyer()
    client = gw.client(key)
    first = client.chat.completions.with_raw_response.create(model="fake-gpt", messages=HELLO, max_tokens=2)
    with gw.ledger.engine.begin() as conn:  # what the coordinator does when it batches epoch 4
        conn.execute(update(usage_records).values(status="batched", epoch=4))
    gw.gateway.refresh_epochs()  # with the lots' refresh
    second = client.chat.completions.with_raw_response.create(model="fake-gpt", messages=HELLO, max_tokens=2)
    assert (first.headers["x-promptex-epoch"], second.headers["x-promptex-epoch"]) == ("1", "5")
    assert gw.gateway.epochs["CLD"] == 1  # per asset


def test_plain_answer__paid_in_provider_token__usd_at_face_value_then_at_the_twap(
    gw_twap: Harness, fake: Fake, twaps: FakeTwaps
) -> None:
    gw = gw_twap
    gw.add_lot(fake, kind="tokenized")
    _, key = gw.buyer(asset="GPT", amount=TOKEN, default_asset="GPT")
    gpt = next(t for t in PROVIDER_TOKENS if t.symbol == "GPT")
    client = gw.client(key)

    at_face = client.chat.completions.with_raw_response.create(model="fake-gpt", messages=HELLO, max_tokens=4).headers
    units = int(at_face["x-promptex-cost-units"])
    assert at_face["x-promptex-asset"] == "GPT" and units == charged(gw, at_face["x-request-id"])
    assert Fraction(at_face["x-promptex-cost"]) == Fraction(units, TOKEN)  # whole GPT, exact
    usd = Fraction(units * gpt.face_value_usd_micro, TOKEN)
    assert Fraction(at_face["x-promptex-cost-usd"]) * USDC == -(-usd.numerator // usd.denominator)

    twaps.prices = {"GPT": 2 * gpt.face_value_usd_micro * PRICE_SCALE // TOKEN}  # Oracle.consult: twice the face value
    gw.gateway.twaps.refresh()  # type: ignore[union-attr]
    at_twap = client.chat.completions.with_raw_response.create(model="fake-gpt", messages=HELLO, max_tokens=4).headers
    assert at_twap["x-promptex-cost-units"] == str(units)  # the charge does not follow the market…
    assert Fraction(at_twap["x-promptex-cost-usd"]) * USDC == -(-2 * usd.numerator // usd.denominator)  # …its value


def sse_events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(orjson.loads(line[6:]))
    return events


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("include_usage", [True, False])
def test_stream__hold_in_headers_exact_cost_in_the_last_event__never_a_chunk_without_choices(
    gw: Harness, fake: Fake, api: str, include_usage: bool
) -> None:
    provider = "anthropic" if api == "anthropic" else "openai"
    model = "fake-claude" if api == "anthropic" else "fake-gpt"
    lot = gw.add_lot(fake, provider=provider, api=api)
    _, key = gw.buyer()
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    body = {"model": model, "messages": HELLO, "max_tokens": 6, "stream": True, **options}
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body, timeout=30
    ) as response:
        h = response.headers
        assert "x-promptex-cost" not in h  # unknown until the end
        assert (h["x-promptex-asset"], h["x-promptex-lot"], h["x-promptex-epoch"]) == ("USDC", str(lot), "1")
        hold = int(h["x-promptex-hold-units"])
        assert Fraction(h["x-promptex-hold"]) == Fraction(hold, USDC) == Fraction(h["x-promptex-hold-usd"])
        events = sse_events(response)
    cost = charged(gw, h["x-request-id"])
    assert 0 < cost <= hold
    carriers = [e for e in events if "promptex" in e]
    assert len(carriers) == 1 and carriers[0] is events[-1]
    ext = carriers[0]["promptex"]
    assert (ext["cost_units"], ext["asset"], ext["lot"], ext["epoch"]) == (str(cost), "USDC", lot, 1)
    assert (ext["request_id"], Fraction(ext["cost"])) == (h["x-request-id"], Fraction(cost, USDC))
    if include_usage:
        assert carriers[0]["choices"] == [] and carriers[0]["usage"]["completion_tokens"] == 6
    else:
        assert all(e["choices"] for e in events)  # never a chunk with empty choices
        assert carriers[0]["choices"][0]["finish_reason"] is not None
        assert not any("usage" in e for e in events)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == fake_text(6)


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream__openai_sdk__unchanged_and_reads_the_charge_as_an_extra(
    gw: Harness, fake: Fake, include_usage: bool
) -> None:
    gw.add_lot(fake)
    _, key = gw.buyer()
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = gw.client(key).chat.completions.with_raw_response.create(
        model="fake-gpt", messages=HELLO, max_tokens=3, stream=True, **options
    )
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_text(3)
    last = chunks[-1]
    assert last.model_extra is not None
    assert last.model_extra["promptex"]["cost_units"] == str(charged(gw, raw.headers["x-request-id"]))
    assert (last.usage is not None) == include_usage


def test_completions_stream__without_usage__charge_on_the_finishing_chunk(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    _, key = gw.buyer()
    stream = gw.client(key).completions.create(model="fake-gpt", prompt="say it", max_tokens=3, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == fake_text(3)
    assert [c for c in chunks if c.model_extra and "promptex" in c.model_extra] == [chunks[-1]]


def test_stream__upstream_never_finishes_its_choice__charge_on_one_extra_chunk_with_a_choice() -> None:
    stream = OpenAIStream(include_usage=False)
    out = [*stream.feed('data: {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": '
                        '{"content": "hi"}, "finish_reason": null}]}'),
           *stream.feed('data: {"id": "c1", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}'),
           *stream.feed("data: [DONE]")]  # fmt: skip
    assert len(out) == 1 and stream.usage is not None and stream.finished
    charge = Charge("req_1", "USDC", 42, 42, 3, None, 1)
    tail = stream.finish(charge)
    assert tail[-1] == b"data: [DONE]\n\n"
    last = orjson.loads(tail[0][6:])
    assert last["choices"] == [{"index": 0, "delta": {}, "finish_reason": None}] and last["id"] == "c1"
    assert last["promptex"]["cost_units"] == "42"
