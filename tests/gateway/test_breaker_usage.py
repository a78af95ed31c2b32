"""Attacks on usage billing (s15-gbreak6): upstreams whose streams or usage objects try to
have a buyer charged more than its request used, or an answer show other usage than was
charged. A canned upstream (`test_signed_shapes.canned`) answers what each case sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from promptex.buyerside.answers import MESSAGES, AnswerRefused, bounds, check_counts
from promptex.buyerside.opening import open_signer
from promptex.buyerside.transport import PromptexSigningTransport
from promptex.gateway.adapters import CHAT, AnthropicAdapter, cache_marks, openai_usage, within_marks
from promptex.gateway.requests import CHAT_IMAGE_TOKENS, validate
from promptex.metering import TokenUsage, load_catalog, parse_catalog

from .conftest import CATALOG, Fake, Harness
from .test_signed_proxy import LANES, _session
from .test_signed_shapes import Canned, _chat, _usage, canned  # noqa: F401 (the fixture)
from .test_token_accounting import usdc_cost

MESSAGES_HEADERS = {"anthropic-version": "2023-06-01"}


def _message_start(usage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "fake-claude", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    return "message_start", {"type": "message_start", "message": message}


def _text_delta(text: str) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": text}}  # fmt: skip


def _events(raw: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]


def test_native_stream_cut_short__empty_deltas__not_charged_as_output(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """A native Messages stream cut short is charged at least one output token per content
    piece it streamed: 500 empty text deltas (and 3 with text) before the upstream broke off
    were charged 500 output tokens (one per event), 3 now."""
    answers, fake = canned
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    account, key = gw.buyer()
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    answers.answer = [_message_start({"input_tokens": 10, "output_tokens": 1}), ("content_block_start", block),
                      *[_text_delta("")] * 500, *map(_text_delta, ("Sun", "n", "y"))]  # fmt: skip
    body = {"model": "fake-claude", "max_tokens": 1_000, "stream": True,
            "messages": [{"role": "user", "content": "the weather"}]}  # fmt: skip
    answer = httpx.post(gw.url + "/v1/messages", json=body, headers={"x-api-key": key, **MESSAGES_HEADERS}, timeout=30)
    assert answer.status_code == 200, answer.text
    record = gw.ledger.usage_record(answer.headers["x-request-id"])
    assert record is not None and (record.input_tokens, record.output_tokens) == (10, 3)
    delta = [e for e in _events(answer.text) if e.get("type") == "message_delta"][-1]
    assert delta["usage"]["output_tokens"] == 3 and delta["promptex"]["cost_units"] == str(record.cost)
    assert record.cost == usdc_cost("fake-claude", TokenUsage(10, 3))


# A long prompt whose one cache mark ends a short system prompt: a provider can write to its
# cache only that prefix (tools, system, messages, in that order, up to the last mark).
LONG = " ".join(["word"] * 2_000)
FIVE = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


def test_cache_writes_beyond_the_marked_prefix__charged_as_plain_input_and_refused_by_the_signer() -> None:
    """An upstream reporting every input token of a 2,000-word prompt as written to the cache,
    for a request whose one mark ends an 8-byte system prompt, was charged 2,005 writes (1.25x
    the input rate; an hour's 2x): any mark let writes up to the whole input through. Now the
    writes are bounded by the prefix the marks end (the hour's by the hour's marks), the rest
    charged as plain input; the signing proxy refuses an answer showing more."""
    usage = TokenUsage(2_010, 5, cache_write_tokens=2_005, cache_write_1h_tokens=2_000)
    one_mark = {"model": "fake-claude", "max_tokens": 5, "system": [{"type": "text", "text": "be brief",
                "cache_control": HOUR}], "messages": [{"role": "user", "content": LONG}]}  # fmt: skip
    marks = cache_marks(one_mark)
    assert marks.marked and marks.hour and marks.prefix is not None and marks.prefix < 200
    charged = within_marks(usage, one_mark)
    assert charged == TokenUsage(2_010, 5, cache_write_tokens=marks.prefix, cache_write_1h_tokens=marks.prefix)
    # Two marks: an hour's on the system prompt, five minutes' at the end of the long message.
    two_marks = {**one_mark, "messages": [{"role": "user", "content": [{"type": "text", "text": LONG,
                 "cache_control": FIVE}]}]}  # fmt: skip
    assert within_marks(usage, two_marks) == TokenUsage(
        2_010, 5, cache_write_tokens=2_005, cache_write_1h_tokens=marks.prefix)  # fmt: skip
    # Anthropic's automatic caching (a top-level mark) may write the whole prompt.
    assert within_marks(usage, {**one_mark, "cache_control": HOUR}) == usage
    # The signing proxy, from the same request: its bounds refuse the writes beyond the prefix.
    bound = bounds(MESSAGES, one_mark)
    assert (bound.cache_prefix, bound.cache_prefix_1h) == (marks.prefix, marks.prefix)
    with pytest.raises(AnswerRefused, match="its request's marks can write"):
        check_counts(bound, usage, None)
    check_counts(bound, charged, None)
    # A chat request's system message marked, sent to an Anthropic lot as a system block.
    chat = {"model": "fake-claude", "messages": [{"role": "system", "content": [{"type": "text", "text": "be brief",
            "cache_control": FIVE}]}, {"role": "user", "content": LONG}]}  # fmt: skip
    adapter = AnthropicAdapter()
    adapter.call(CHAT, chat, "http://127.0.0.1:9/v1", "sk-fake")
    answer = {"id": "msg_1", "content": [{"type": "text", "text": "Sunny"}], "stop_reason": "end_turn",
              "usage": {"input_tokens": 5, "cache_creation_input_tokens": 2_005, "output_tokens": 5}}  # fmt: skip
    content, shown = adapter.answer(CHAT, orjson.dumps(answer), "fake-claude")
    assert 0 < shown.cache_write_tokens < 300 and shown.input_tokens == 2_010
    assert openai_usage(orjson.loads(content)["usage"]) == shown
    with pytest.raises(AnswerRefused, match="its request's marks can write"):
        check_counts(bounds(CHAT, chat), TokenUsage(2_010, 5, cache_write_tokens=2_005), None)


def test_cache_control_named_where_no_provider_reads_a_mark__no_writes_charged() -> None:
    """An object named `cache_control` that is no mark — a tool's parameter (an HTTP tool's
    Cache-Control header), a tool call's input, the request's metadata — made the request
    count as marked: an upstream's writes for the whole input were charged at the write
    rates, and the signing proxy accepted them."""
    header = {"cache_control": {"type": "string", "ttl": "1h"}}
    tool = {"name": "http_get", "input_schema": {"type": "object", "properties": header}}
    call = {"type": "tool_use", "id": "toolu_1", "name": "http_get", "input": header}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "200 OK"}
    body = {"model": "fake-claude", "max_tokens": 5, "tools": [tool], "metadata": {"user_id": "u"},
            "messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": [call]},
                         {"role": "user", "content": [result]}]}  # fmt: skip
    usage = TokenUsage(2_010, 5, cache_write_tokens=2_005, cache_write_1h_tokens=2_005)
    assert not cache_marks(body).marked
    assert within_marks(usage, body) == TokenUsage(2_010, 5)
    with pytest.raises(AnswerRefused, match="marks no cache_control"):
        check_counts(bounds(MESSAGES, body), usage, None)
    # A mark on a block inside a tool result is one (its prefix: up to that result's end).
    marked = {**result, "content": [{"type": "text", "text": "200 OK", "cache_control": FIVE}]}
    marks = cache_marks({**body, "messages": [*body["messages"][:2], {"role": "user", "content": [marked]}]})
    assert marks.marked and not marks.hour and marks.prefix is not None and marks.prefix > 10_000


def test_chat_stream_from_an_anthropic_lot_cut_short__its_charge_and_usage_shown(gw: Harness, fake: Fake) -> None:
    """A chat stream served by an Anthropic lot whose upstream broke off is charged its input
    and the output streamed, and now ends, as an OpenAI lot's does, with a chunk carrying the
    charge (and the usage charged, when asked) and no [DONE]. Before, nothing followed the
    last text: the buyer was charged with no usage or charge shown."""
    fake.config.die_after_chunks = 3
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer()
    for include_usage in (True, False):
        body = {"model": "fake-claude", "max_tokens": 20, "stream": True, "messages": [{"role": "user",
                "content": "hi there"}], "stream_options": {"include_usage": include_usage}}  # fmt: skip
        answer = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        record = gw.ledger.usage_record(answer.headers["x-request-id"])
        assert record is not None and (record.input_tokens, record.output_tokens) == (5, 3)
        assert "[DONE]" not in answer.text
        last = _events(answer.text)[-1]
        assert last["promptex"]["cost_units"] == str(record.cost), include_usage
        if include_usage:
            assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
        else:
            assert "usage" not in last and last["choices"][0]["finish_reason"] is None


def test_native_stream__message_delta_usage_unreadable__shows_what_was_charged(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """A native Messages stream whose message_delta reports counts the gateway cannot read (a
    string, a negative number) is metered as last read (its message_start's) — and its
    message_delta now shows that usage. Before, it passed on as sent: the client's usage said
    500 output tokens ("500") where 1 was charged."""
    answers, fake = canned
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer()
    body = {"model": "fake-claude", "max_tokens": 1_000, "stream": True,
            "messages": [{"role": "user", "content": "the weather"}]}  # fmt: skip
    for lie in ({"output_tokens": "500"}, {"output_tokens": 500, "input_tokens": -1}):
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": lie}
        answers.answer = [_message_start({"input_tokens": 10, "output_tokens": 1}), ("content_block_start", block),
                          _text_delta("Sunny"), ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                          ("message_delta", end), ("message_stop", {"type": "message_stop"})]  # fmt: skip
        headers = {"x-api-key": key, **MESSAGES_HEADERS}
        answer = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=30)
        record = gw.ledger.usage_record(answer.headers["x-request-id"])
        assert record is not None and (record.input_tokens, record.output_tokens) == (10, 1)
        delta = [e for e in _events(answer.text) if e.get("type") == "message_delta"][-1]
        assert (delta["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == (10, 1), lie
        assert delta["promptex"]["cost_units"] == str(record.cost)


def test_chat_image_part_to_an_openai_lot__its_tokens_within_the_bound__charged_as_reported(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """A chat request with an image part (a 30-byte URL; ~800 tokens for the model) had an
    input bound of its bytes: since usage is charged within the request's bounds, an honest
    answer's 800 input tokens were charged as 133 (the seller unpaid for the rest; the
    signing proxy, checking the same bound, stopped signing). Each image part is now held
    for its tokens; audio and file parts, whose cost no size bounds, are refused before any
    hold."""
    answers, fake = canned
    gw.add_lot(fake)
    account, key = gw.buyer()
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}}
    body = {"model": "fake-gpt", "max_tokens": 50,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this"}, image]}]}  # fmt: skip
    answers.answer = _chat("A cat.", _usage(800, 3))
    headers = {"authorization": f"Bearer {key}"}
    answer = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200 and "x-promptex-usage-clamped" not in answer.headers
    record = gw.ledger.usage_record(answer.headers["x-request-id"])
    assert record is not None and (record.input_tokens, answer.json()["usage"]["prompt_tokens"]) == (800, 800)
    check_counts(bounds(CHAT, body), TokenUsage(800, 3), None)  # the signing proxy's bound too
    # Marked for the cache (a router serving another provider's model), the image's tokens are
    # within the prefix its mark ends, as within the input bound.
    marked = {**body, "messages": [{"role": "user", "content": [{**image, "cache_control": FIVE}]}]}
    assert (cache_marks(marked).prefix or 0) >= CHAT_IMAGE_TOKENS
    before = gw.ledger.balance(account, "USDC")
    for part in ({"type": "file", "file": {"file_id": "file-1"}},
                 {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}):  # fmt: skip
        refused = httpx.post(gw.url + "/v1/chat/completions", headers=headers, timeout=30,
                             json={**body, "messages": [{"role": "user", "content": [part]}]})  # fmt: skip
        assert refused.status_code == 400 and "cannot be bounded" in refused.json()["error"]["message"]
    assert gw.ledger.balance(account, "USDC") == before


def test_chat_image_to_a_model_with_multiplied_image_tokens__held_and_bounded_at_its_catalog_allowance(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
    tmp_path: Path,
) -> None:
    """gpt-4o-mini's image tokens are multiplied (2,833 + 5,667 per 512-px tile: 25,501 for a
    1024 x 1024 image). Held for the chat front's 4,000 per image, an honest answer was
    charged at the bound (the seller unpaid for ~21,500 tokens). The catalog's allowance for
    the model (fake-gpt-mini lists gpt-4o-mini's: 48,169, 2,833 at "detail": "low") is now
    what the gateway holds and bounds for, and what the signing proxy checks (the same
    function, with the allowance the gateway advertises): charged in full, signing goes on."""
    answers, fake = canned
    gw.add_lot(fake)
    catalog = load_catalog(CATALOG)
    text = {"type": "text", "text": "what is this"}
    url = "https://example.com/cat.png"

    def asking(detail: str | None, model: str = "fake-gpt-mini") -> dict[str, Any]:
        image = {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}
        return {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": [text, image]}]}

    for detail, allowance in ((None, 48_169), ("auto", 48_169), ("high", 48_169), ("low", 2_833)):
        body = asking(detail)
        bytes_bound = validate(CHAT, body)[1] - CHAT_IMAGE_TOKENS  # without the catalog: the default's
        assert validate(CHAT, body, catalog)[1] == bounds(CHAT, body, catalog).input_bound == bytes_bound + allowance
        other = asking(detail, "fake-gpt")  # a model without its own: the default, at any detail
        assert validate(CHAT, other, catalog)[1] == validate(CHAT, other)[1]

    # The signing proxy holds and bounds by what the gateway advertises (/v1/models), even with
    # a local catalog that lists no allowance for the model (noted when the signer opens).
    models = httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {gw.buyer()[1]}"}).json()["data"]
    assert {m["id"]: m.get("image_tokens") for m in models}["fake-gpt-mini"] == {"high": 48_169, "low": 2_833}
    assert all("image_tokens" not in m for m in models if m["id"] != "fake-gpt-mini")
    own = parse_catalog("\n".join(line for line in CATALOG.read_text().splitlines() if "image_tokens" not in line))
    grant, account, api_key = _session(gw, tmp_path)
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {api_key}"}) as plain:
        opened = open_signer(grant, plain, tmp_path, catalog=own)
    signer = opened.signer
    assert any("fake-gpt-mini image for 48169 tokens" in note for note in opened.notes), opened.notes
    client = httpx.Client(base_url=gw.url, transport=PromptexSigningTransport(signer),
                          headers={"authorization": f"Bearer {api_key}"})  # fmt: skip
    for detail, reported in ((None, 25_520), ("low", 2_845)):  # a 1024 x 1024 image and the words
        answers.answer = _chat("A cat.", _usage(reported, 3))
        answer = client.post("/v1/chat/completions", json=asking(detail))
        assert answer.status_code == 200 and "x-promptex-usage-clamped" not in answer.headers, answer.text
        assert signer.stopped is None, signer.stopped
        record = gw.ledger.usage_record(answer.headers["x-request-id"])
        assert record is not None and (record.input_tokens, answer.json()["usage"]["prompt_tokens"]) == (reported,) * 2
        assert record.cost == usdc_cost("fake-gpt-mini", TokenUsage(reported, 3))
    lanes = sum(gw.ledger.lane(account, "USDC", 1, i).charged for i in range(LANES))
    assert signer.book.charged_total() == lanes


def test_chat_parameters_priced_apart_from_the_catalog__400_before_any_hold(gw: Harness, fake: Fake) -> None:
    """The priority tier, audio output and web search are billed to the seller's upstream
    account above (or apart from) the catalog's per-token rates the buyer pays: passed
    through to an OpenAI lot, the seller paid the difference. Refused now, as the Messages
    API's non-standard tier is, before any hold; the standard tiers pass."""
    gw.add_lot(fake)
    account, key = gw.buyer()
    base = {"model": "fake-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    before, sent = gw.ledger.balance(account, "USDC"), fake.config.requests
    for change, param in (({"service_tier": "priority"}, "service_tier"), ({"modalities": ["text", "audio"],
                          "audio": {"voice": "alloy", "format": "wav"}}, "modalities"), ({"audio": {}}, "audio"),
                          ({"web_search_options": {}}, "web_search_options")):  # fmt: skip
        answer = httpx.post(gw.url + "/v1/chat/completions", json={**base, **change},
                            headers={"authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, change
    assert (gw.ledger.balance(account, "USDC"), fake.config.requests) == (before, sent)
    for tier in ("default", "flex"):
        ok = httpx.post(gw.url + "/v1/chat/completions", json={**base, "service_tier": tier},
                        headers={"authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
        assert ok.status_code == 200, ok.text
