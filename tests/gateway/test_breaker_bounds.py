"""Attacks on the request bounds an answer is charged within (s16-cbreak): a buyer's body or
a seller's answer that tries to have a charge, the usage shown, the usage record and the lot's
draw disagree, or a hold fall short of what is charged. A canned upstream
(`test_signed_shapes.canned`) answers what each case sets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import orjson
import pytest

from promptex import metering
from promptex.buyerside.answers import MESSAGES, AnswerRefused, RateBook, bounds, check_cost, check_counts, usage_of
from promptex.buyerside.signer import StreamWatch
from promptex.gateway.adapters import (
    COMPLETIONS,
    EMBEDDINGS,
    AnthropicStream,
    OpenAIAdapter,
    OpenAIStream,
    StreamTranslator,
    may_write_cache,
)
from promptex.gateway.charges import Charge
from promptex.gateway.errors import GatewayError
from promptex.gateway.health import reports
from promptex.gateway.messages import NativeStream
from promptex.gateway.requests import validate
from promptex.ledger.models import HoldStatus
from promptex.metering import TokenUsage, load_catalog
from promptex.metering.produced import visible_bytes

from .conftest import CATALOG, Fake, Harness
from .test_signed_proxy import _session, _signer
from .test_signed_shapes import Canned, canned  # noqa: F401 (the fixture)
from .test_token_accounting import usdc_cost

MESSAGES_HEADERS = {"anthropic-version": "2023-06-01"}
HOUR = {"type": "ephemeral", "ttl": "1h"}
LONG = " ".join(["word"] * 3_000)


def test_cache_mark_with_an_escaped_key__held_at_the_write_rates_and_charged_as_shown(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """A mark whose key is written `"cache\\u005fcontrol"` is the key `cache_control` once
    parsed: sent upstream as a mark, its writes charged at the write rates. The hold was
    priced by the raw bytes `"cache_control"` (absent), at the input rate, and the charge
    capped at it: 4,032 units charged for usage shown (and recorded, and drawn from the lot
    at list value) costing 8,054. Now the hold is priced at the write rates and the charge
    is the shown usage's cost."""
    answers, fake = canned
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer()
    text = {"type": "text", "text": "x" * 2_000, "cache_control": HOUR}
    body = {"model": "fake-claude", "max_tokens": 1, "messages": [{"role": "user", "content": [text]}]}
    raw = orjson.dumps(body).replace(b'"cache_control"', b'"cache\\u005fcontrol"')
    assert orjson.loads(raw) == body and b'"cache_control"' not in raw
    assert may_write_cache(raw, body) and not may_write_cache(b'{"text": "\\u00e9"}', {"text": "é"})
    bound = bounds(MESSAGES, body)
    written = bound.input_bound  # every input token an hour's write (within the bound and the mark's prefix)
    usage = {"input_tokens": 0, "cache_creation_input_tokens": written, "output_tokens": 1,
             "cache_creation": {"ephemeral_1h_input_tokens": written, "ephemeral_5m_input_tokens": 0}}  # fmt: skip
    answers.answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "fake-claude",
                      "content": [{"type": "text", "text": "k"}], "stop_reason": "end_turn", "stop_sequence": None,
                      "usage": usage}  # fmt: skip
    headers = {"x-api-key": key, "content-type": "application/json", **MESSAGES_HEADERS}
    answer = httpx.post(gw.url + "/v1/messages", content=raw, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    shown = usage_of(MESSAGES, answer.json())
    assert shown is not None and shown.cache_write_1h_tokens == written
    request_id = answer.headers["x-request-id"]
    record, hold = gw.ledger.usage_record(request_id), gw.ledger.hold(request_id)
    assert record is not None and hold is not None
    cost = usdc_cost("fake-claude", shown)
    assert int(answer.headers["x-promptex-cost-units"]) == record.cost == cost <= hold.amount
    rates = metering.usdc_rates(load_catalog(CATALOG).price("fake-claude"), 6000, 500)
    check_cost(rates, shown, record.cost)  # what the signing proxy checks a charge against: it agrees
    list_rates = metering.list_rates(load_catalog(CATALOG).price("fake-claude"))
    assert record.list_usd_micro == metering.usage_cost(list_rates, shown)


def test_stream_whose_upstream_sends_nothing__not_charged(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """An upstream that answers a stream 200 and ends it with no content and no usage (nothing
    at all, [DONE] alone, or a first chunk and no more; a seller's endpoint doing so every
    time) was charged the prompt's floor — 3,003 input tokens for a 3,000-word prompt — with
    no event showing that charge; on every API. Now its hold is released: nothing charged,
    nothing drawn from the lot."""
    answers, fake = canned
    openai_lot = gw.add_lot(fake)
    anthropic_lot = gw.add_lot(fake, provider="anthropic", api="anthropic")
    account, key = gw.buyer()
    before = gw.ledger.balance(account, "USDC")
    user = [{"role": "user", "content": LONG}]
    asks = [
        ("/v1/chat/completions", {"model": "fake-gpt", "messages": user, "stream_options": {"include_usage": True}}),
        ("/v1/chat/completions", {"model": "fake-gpt", "messages": user}),
        ("/v1/chat/completions", {"model": "fake-claude", "messages": user}),
        ("/v1/completions", {"model": "fake-gpt", "prompt": LONG}),
        ("/v1/messages", {"model": "fake-claude", "messages": user}),
        ("/v1/messages", {"model": "fake-gpt", "messages": user}),
        ("/v1/responses", {"model": "fake-gpt", "input": LONG}),
    ]
    headers = {"authorization": f"Bearer {key}", "x-api-key": key, **MESSAGES_HEADERS}
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    role = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fake-gpt", "choices": [first]}
    for given, done in (([], False), ([], True), ([role], False), ([role], True)):
        answers.answer, answers.done = given, done
        for path, body in asks if (given, done) == ([], False) else asks[:1]:
            request = {**body, "max_tokens": 10, "stream": True}
            answer = httpx.post(gw.url + path, json=request, headers=headers, timeout=30)
            assert answer.status_code == 200 and b"promptex" not in answer.content, (path, body, given, done)
            request_id = answer.headers["x-request-id"]
            hold = gw.ledger.hold(request_id)
            assert hold is not None and hold.status == HoldStatus.RELEASED, (path, body["model"], hold)
            assert gw.ledger.usage_record(request_id) is None
    assert gw.ledger.balance(account, "USDC") == before
    capacities = gw.ledger.lot_capacities()
    assert (capacities[openai_lot].used, capacities[anthropic_lot].used) == (0, 0)
    # Each an upstream failure of its lot, as a 5xx is: counted in its errors, its circuit opened
    # (8 in a row). Before, each was an answer: no errors, the circuit closed.
    gw.gateway.health.flush(gw.ledger.engine)
    seen = {r.lot_id: r for r in reports(gw.ledger.engine)}
    assert [(seen[lot].requests, seen[lot].errors, seen[lot].last_error) for lot in (openai_lot, anthropic_lot)] == [
        (8, 8, "empty"),
        (2, 2, "empty"),
    ]
    assert gw.gateway.health.is_open(openai_lot)


def test_completions_echo__refused_before_any_hold() -> None:
    """An echoed prompt is relayed as the answer's text, and an answer's text bytes bound its
    visible output tokens (`metering.produced`, the signing proxy's check and the gateway's):
    echoed, a 2,000-byte prompt let an upstream report 1,000 output tokens for "Sunny" and pass.
    Refused (400, param echo) before any hold; the signing proxy reads the same `validate`."""
    body = {"model": "fake-gpt", "prompt": "word " * 400, "max_tokens": 1_000}
    assert validate(COMPLETIONS, {**body, "echo": False})[1] == validate(COMPLETIONS, body)[1]
    for echo in (True, 1, "true"):
        with pytest.raises(GatewayError) as refused:
            validate(COMPLETIONS, {**body, "echo": echo})
        assert refused.value.status == 400 and refused.value.param == "echo"
    with pytest.raises(ValueError, match="echo"):
        bounds(COMPLETIONS, {**body, "echo": True})


def test_embedding_answer_reporting_reasoning__shows_the_usage_charged() -> None:
    """An embedding is charged no output (`metering.within_bounds`): an upstream reporting
    completion and reasoning tokens for one was charged its input only, but the answer kept
    the reported `reasoning_tokens` beside the 0 completion tokens shown — a usage the buyer's
    side cannot read (reasoning beyond the output), so the charge could not be checked."""
    body = {"model": "fake-gpt", "input": "hello world"}
    adapter = OpenAIAdapter()
    adapter.call(EMBEDDINGS, body, "http://127.0.0.1:9/v1", "sk-fake")
    usage = {"prompt_tokens": 5, "completion_tokens": 50, "total_tokens": 55,
             "completion_tokens_details": {"reasoning_tokens": 5, "rejected_prediction_tokens": 0}}  # fmt: skip
    answer = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}], "usage": usage}
    rates = metering.list_rates(load_catalog(CATALOG).price("fake-gpt"))

    def bound(reported: TokenUsage, *_: object) -> TokenUsage:
        return metering.within_bounds(rates, reported, 14, 0)

    content, charged = adapter.answer(EMBEDDINGS, orjson.dumps(answer), "fake-gpt", bound)
    assert charged == TokenUsage(5, 0)
    assert usage_of(EMBEDDINGS, orjson.loads(content)) == charged


def test_anthropic_lot_thinking_tokens_for_a_request_that_asks_no_thinking__visible_output_bounded_by_its_text(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """An Anthropic lot reporting thinking tokens (`output_tokens_details.thinking_tokens`) for
    a request that asks no thinking (a Messages request without `thinking`; any chat request,
    whose translation never sends one) escaped the bound on visible output: "Sunny." reported
    as 1,000 output tokens, 994 of them thinking, was charged 1,000 and passed the signing
    proxy's check (6 visible). Such tokens are visible output now, bounded by the answer's
    text; a request that asks to think keeps its thinking tokens as reported."""
    answers, fake = canned
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer()
    headers = {"authorization": f"Bearer {key}", "x-api-key": key, **MESSAGES_HEADERS}
    usage = {"input_tokens": 10, "output_tokens": 1_000, "output_tokens_details": {"thinking_tokens": 994}}
    user = [{"role": "user", "content": "the weather"}]
    thought = {"type": "thinking", "thinking": "Weather.", "signature": "EqQBCgIYAhIM"}
    for path, body, content, thinking in (
        ("/v1/messages", {"max_tokens": 1_000}, [{"type": "text", "text": "Sunny."}], False),
        ("/v1/chat/completions", {"max_tokens": 1_000}, [{"type": "text", "text": "Sunny."}], False),
        ("/v1/messages", {"max_tokens": 1_000, "thinking": {"type": "disabled"}}, [{"type": "text", "text": "Sunny."}],
         False),
        ("/v1/messages", {"max_tokens": 1_000, "thinking": {"type": "enabled", "budget_tokens": 999}},
         [thought, {"type": "text", "text": "Sunny."}], True),
    ):  # fmt: skip
        answers.answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "fake-claude",
                          "content": content, "stop_reason": "end_turn", "usage": usage}  # fmt: skip
        request = {"model": "fake-claude", "messages": user, **body}
        answer = httpx.post(gw.url + path, json=request, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        endpoint = "messages" if path == "/v1/messages" else "chat"
        shown = usage_of(endpoint, answer.json())
        record = gw.ledger.usage_record(answer.headers["x-request-id"])
        assert shown is not None and record is not None
        assert (record.output_tokens, record.reasoning_tokens) == (shown.output_tokens, shown.reasoning_tokens)
        if thinking:
            assert (shown.output_tokens, shown.reasoning_tokens) == (1_000, 994), path
            assert "x-promptex-usage-clamped" not in answer.headers
        else:
            assert shown.reasoning_tokens == 0 and shown.output_tokens == 6 + 48, (path, body)
            assert answer.headers["x-promptex-usage-clamped"] == "output"
        produced = visible_bytes(endpoint, answer.json())
        check_counts(bounds(endpoint, request), shown, produced)  # the signing proxy passes what is charged
    # Streamed (native): its message_delta shows the usage charged, no thinking tokens left showing.
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "fake-claude",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1, "output_tokens_details": {"thinking_tokens": 1}},
        },
    }
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Sunny."}}
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": usage}
    answers.answer = [("message_start", start), ("content_block_delta", delta), ("message_delta", end),
                      ("message_stop", {"type": "message_stop"})]  # fmt: skip
    request = {"model": "fake-claude", "messages": user, "max_tokens": 1_000, "stream": True}
    answer = httpx.post(gw.url + "/v1/messages", json=request, headers=headers, timeout=30)
    watch = StreamWatch()
    watch.feed(answer.content)
    shown = watch.usage("messages")
    record = gw.ledger.usage_record(answer.headers["x-request-id"])
    assert shown is not None and record is not None and shown.reasoning_tokens == record.reasoning_tokens == 0
    assert (shown.output_tokens, str(record.cost)) == (record.output_tokens, str(watch.cost))


def _sse(events: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [line for name, event in events for line in (f"event: {name}", "data: " + orjson.dumps(event).decode())]


def test_streams_of_unusual_shape__their_charge_shown() -> None:
    """Every charged stream ends with an event carrying its charge. Found by a random check of
    every translator's shown cost against the charge: an OpenAI stream whose client asked no
    usage and whose upstream sent only a usage chunk (no choice), an Anthropic stream (chat
    translation, or native) with text but no message_start, cut short or not — each was
    charged, and no event carried the charge; and a native stream whose shown message_start
    (within its bounds) and reported message_delta merged into other usage than charged."""
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    only_usage = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fake-gpt", "usage": usage}
    text = _sse([("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": "Sunny."}})])  # fmt: skip
    stop = _sse([("message_stop", {"type": "message_stop"})])
    # A native stream whose message_start was shown within the bounds (1,000,000 reads: 40), then
    # a message_delta reporting counts within them: the delta passed on as sent, and merged
    # into the start's shown counts, showed input 0 for the 1 charged.
    rates = metering.list_rates(load_catalog(CATALOG).price("fake-claude"))
    bounded = NativeStream(bound=lambda usage, _bytes: metering.within_bounds(rates, usage, 40, 30))
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
             "usage": {"input_tokens": 1, "cache_read_input_tokens": 1_000_000, "output_tokens": 1}}}  # fmt: skip
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"output_tokens": 5, "cache_read_input_tokens": 0}}  # fmt: skip
    cases: list[tuple[str, StreamTranslator, list[str]]] = [
        ("messages", bounded, [*_sse([("message_start", start), ("message_delta", delta)]), *stop]),
        ("chat", OpenAIStream(False), ["data: " + orjson.dumps(only_usage).decode(), "data: [DONE]"]),
        ("chat", AnthropicStream("chat", "fake-claude", False), text),
        ("chat", AnthropicStream("chat", "fake-claude", True), text),
        ("messages", NativeStream(), text),
        ("messages", NativeStream(), [*text, *stop]),
    ]
    for endpoint, translator, lines in cases:
        frames = [frame for line in lines for frame in translator.feed(line)]
        charged = translator.usage if translator.usage is not None else TokenUsage(4, translator.produced)
        translator.charged(charged)  # type: ignore[attr-defined]
        frames += translator.finish(Charge("req_1", "USDC", 27, 27, 1, None, 1))
        watch = StreamWatch()
        watch.feed(b"".join(frames))
        assert watch.cost == 27, (endpoint, type(translator).__name__, lines)
        if endpoint == "messages":
            assert watch.usage(endpoint) == charged


def test_reasoning_tokens_for_a_model_that_never_reasons__visible_output_bounded_by_its_text(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
    tmp_path: Path,
) -> None:
    """An OpenAI-API lot reporting reasoning tokens for a model the catalog says never reasons
    (`reasoning = false`: gpt-4o, gpt-4.1, Llama, …) escaped the bound on visible output:
    "Sunny." reported as 1,000 completion tokens, 994 of them reasoning, was charged 1,000 and
    passed the signing proxy's check. They are visible output now, bounded by the answer's
    text; a model that may reason keeps them as reported."""
    answers, fake = canned
    gw.add_lot(fake)
    _, key = gw.buyer()
    usage = {"prompt_tokens": 10, "completion_tokens": 1_000, "completion_tokens_details": {"reasoning_tokens": 994}}
    answers.answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m", "usage": usage,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny."},
                                   "finish_reason": "stop"}]}  # fmt: skip
    for model, charged in (("fake-gpt-plain", TokenUsage(10, 6 + 48)), ("fake-gpt", TokenUsage(10, 1_000,
                           reasoning_tokens=994))):  # fmt: skip
        request = {"model": model, "max_tokens": 1_000, "messages": [{"role": "user", "content": "the weather"}]}
        answer = httpx.post(gw.url + "/v1/chat/completions", json=request, headers={"authorization": f"Bearer {key}"},
                            timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
        record = gw.ledger.usage_record(answer.headers["x-request-id"])
        assert record is not None and usage_of("chat", answer.json()) == charged, model
        assert (record.output_tokens, record.reasoning_tokens) == (charged.output_tokens, charged.reasoning_tokens)
        check_counts(bounds("chat", request), charged, visible_bytes("chat", answer.json()))
    # The signing proxy, from its local catalog: a gateway showing that reasoning for a model
    # that never reasons is refused (it passed: 6 visible); a model that may reason passes.
    book = RateBook(catalog=load_catalog(CATALOG))
    assert not book.reasons("fake-gpt-plain") and book.reasons("fake-gpt") and book.reasons("not-listed")
    claimed, produced = TokenUsage(10, 1_000, reasoning_tokens=994), 6 + 48
    grant, _, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    plain = signer.hold_for("chat", {**request, "model": "fake-gpt-plain"})[1]
    assert not plain.reasoning and signer.hold_for("chat", request)[1].reasoning
    with pytest.raises(AnswerRefused, match="1000 output tokens reported for 54 bytes"):
        check_counts(plain, claimed, produced)
    check_counts(bounds("chat", request), claimed, produced)


def test_anthropic_model_reasoning_not_asked__visible_output_on_any_lot_and_at_the_signing_proxy(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
    tmp_path: Path,
) -> None:
    """An Anthropic model reasons only when its request asks it to (a Messages request's
    `thinking`; another API's `reasoning_effort`, `thinking` or `reasoning`, which a router
    serving it through the OpenAI API maps to its thinking). An OpenAI-API lot (a router)
    reporting reasoning for a chat request to fake-claude that asked none was charged it
    whole ("Sunny.": 1,000 of which 994 reasoning), and the signing proxy passed it. Now it
    is visible output, bounded by the text, on the gateway and at the proxy; asked, kept."""
    answers, fake = canned
    gw.add_lot(fake, provider="anthropic", api="openai")
    _, key = gw.buyer()
    usage = {"prompt_tokens": 10, "completion_tokens": 1_000, "completion_tokens_details": {"reasoning_tokens": 994}}
    answers.answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m", "usage": usage,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny."},
                                   "finish_reason": "stop"}]}  # fmt: skip
    request = {"model": "fake-claude", "max_tokens": 1_000, "messages": [{"role": "user", "content": "the weather"}]}
    grant, _, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    for extra, charged in (({}, TokenUsage(10, 6 + 48)), ({"reasoning_effort": "low"}, TokenUsage(10, 1_000,
                           reasoning_tokens=994))):  # fmt: skip
        body = {**request, **extra}
        answer = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"},
                            timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert usage_of("chat", answer.json()) == charged, extra
        bound = signer.hold_for("chat", body)[1]
        assert bound.reasoning == bool(extra)
        check_counts(bound, charged, visible_bytes("chat", answer.json()))  # what is charged passes
    with pytest.raises(AnswerRefused, match="1000 output tokens reported for 54 bytes"):
        check_counts(signer.hold_for("chat", request)[1], TokenUsage(10, 1_000, reasoning_tokens=994), 54)
    thinking = {"model": "fake-claude", "max_tokens": 1_000, "messages": request["messages"],
                "thinking": {"type": "enabled", "budget_tokens": 999}}  # fmt: skip
    assert signer.hold_for("messages", thinking)[1].reasoning
    assert not signer.hold_for("messages", {**thinking, "thinking": {"type": "disabled"}})[1].reasoning


def test_responses_answer__its_item_id_and_status_are_no_room_for_output(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """A Responses answer's text bytes bound its visible output (`metering.produced`), and its
    output item's id (`msg_` and 48 hex digits) and status, which the gateway writes, counted
    as text: "Sunny." reported as 1,000 output tokens was charged 115 (6 + 48 + 61), not 54."""
    answers, fake = canned
    gw.add_lot(fake)
    _, key = gw.buyer()
    usage = {"prompt_tokens": 10, "completion_tokens": 1_000}
    answers.answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m", "usage": usage,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny."},
                                   "finish_reason": "stop"}]}  # fmt: skip
    request = {"model": "fake-gpt", "input": "the weather", "max_output_tokens": 1_000}
    answer = httpx.post(gw.url + "/v1/responses", json=request, headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert visible_bytes("responses", answer.json()) == 6 + 48
    assert usage_of("responses", answer.json()) == TokenUsage(10, 6 + 48)


def test_summarized_thinking__billed_whole_within_its_budget__charged_and_the_signing_proxy_agrees(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Anthropic reports one `output_tokens`, thinking inside it, and Claude 4 shows a summary
    of its thinking, billed whole. An honest answer — 4,000 tokens of thinking summarized in
    35 bytes, then "42." — was charged 401 of its 4,003 output tokens (its shown bytes + 48):
    the seller, billed 4,003 by Anthropic, paid a tenth (sbreak s17). Now a Messages request's
    thinking budget is room beyond the text, on the gateway and at the signing proxy; beyond
    it, bounded as before."""
    answers, fake = canned
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer()
    content = [{"type": "thinking", "thinking": "The user asks for 6*7. Computed it.", "signature": "EqQBCkYIBxgC"},
               {"type": "text", "text": "42."}]  # fmt: skip
    headers = {"x-api-key": key, **MESSAGES_HEADERS}
    request = {"model": "fake-claude", "max_tokens": 8_000, "messages": [{"role": "user", "content": "6*7?"}],
               "thinking": {"type": "enabled", "budget_tokens": 5_000}}  # fmt: skip
    for budget, reported, charged in ((5_000, 4_003, 4_003), (1_024, 4_003, 1_024 + 3 + 35 + 12 + 48)):
        answers.answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "fake-claude",
                          "content": content, "stop_reason": "end_turn", "stop_sequence": None,
                          "usage": {"input_tokens": 8, "output_tokens": reported}}  # fmt: skip
        body = {**request, "thinking": {"type": "enabled", "budget_tokens": budget}}
        answer = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        shown = usage_of(MESSAGES, answer.json())
        assert shown is not None and shown.output_tokens == charged, budget
        record = gw.ledger.usage_record(answer.headers["x-request-id"])
        assert record is not None and record.output_tokens == charged
        check_counts(bounds(MESSAGES, body), shown, visible_bytes(MESSAGES, answer.json()))  # the proxy agrees
    with pytest.raises(AnswerRefused, match="4003 output tokens reported"):  # asked no thinking: no room
        check_counts(bounds(MESSAGES, {**request, "thinking": {"type": "disabled"}}), TokenUsage(8, 4_003), 98)
    # A model the catalog says never reasons has no thinking to bill: no room, on either side.
    plain = dataclasses.replace(load_catalog(CATALOG).price("fake-claude"), reasoning=False)
    monkeypatch.setitem(gw.gateway.catalog.models, "fake-claude", plain)
    answer = httpx.post(gw.url + "/v1/messages", json=request, headers=headers, timeout=30)
    shown = usage_of(MESSAGES, answer.json())
    assert answer.status_code == 200 and shown is not None and shown.output_tokens == 35 + 12 + 3 + 48
    grant, _, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    assert signer.hold_for(MESSAGES, request)[1].unshown_output == 5_000
    monkeypatch.setitem(signer.rates.catalog.models, "fake-claude", plain)  # type: ignore[union-attr]
    assert signer.hold_for(MESSAGES, request)[1].unshown_output == 0


def test_long_stop_sequence__its_tokens_billed_and_not_shown__charged_and_the_signing_proxy_agrees(
    gw: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """The stop sequence a model stops at is generated (billed among its output tokens) and
    taken off the text (OpenAI returns none of it; Anthropic names it in `stop_sequence`, not
    the content). "OK" ended by "END " × 25 (100 bytes, 50 tokens) was charged 50 of its 51
    output tokens (2 bytes + 48). Now a request's longest stop sequence's bytes are room
    beyond the text, on the gateway and at the signing proxy, as a prediction's are."""
    answers, fake = canned
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer()
    stop = "END " * 25
    answers.answer = {"id": "msg_2", "type": "message", "role": "assistant", "model": "fake-claude",
                      "content": [{"type": "text", "text": "OK"}], "stop_reason": "stop_sequence",
                      "stop_sequence": stop, "usage": {"input_tokens": 8, "output_tokens": 51}}  # fmt: skip
    body = {"model": "fake-claude", "max_tokens": 200, "stop_sequences": ["\n\n", stop],
            "messages": [{"role": "user", "content": "say OK"}]}  # fmt: skip
    headers = {"x-api-key": key, **MESSAGES_HEADERS}
    answer = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=30)
    shown = usage_of(MESSAGES, answer.json())
    assert answer.status_code == 200 and shown is not None and shown.output_tokens == 51
    check_counts(bounds(MESSAGES, body), shown, visible_bytes(MESSAGES, answer.json()))  # the proxy agrees
    assert bounds("chat", {"model": "fake-gpt", "messages": body["messages"], "stop": stop}).unshown_output == 100
    answers.answer = {**answers.answer, "usage": {"input_tokens": 8, "output_tokens": 200}}  # beyond it: clamped
    answer = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=30)
    shown = usage_of(MESSAGES, answer.json())
    assert shown is not None and shown.output_tokens == 2 + 48 + 100
