"""Honest answers of every shape the gateway serves, through the real gateway and the
signing transport (s12-tbreak): none may stop signing. A canned upstream answers what each
case sets — OpenAI's chat completions (tool calls, refusals, reasoning, JSON, CJK and emoji,
streams with and without usage asked) and Anthropic's Messages API (tool use, thinking) —
with the usage an honest provider reports for it; the gateway meters it and the transport
checks it as for any answer."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "offchain"))
from buyerside_fakes import IDENTITY, MODEL, FakeSignedGateway, make_signer  # noqa: E402

from promptex.buyerside.answers import ENDPOINTS, AnswerRefused, Bounds, check_counts  # noqa: E402
from promptex.buyerside.recovery import ChainSession, recover  # noqa: E402
from promptex.buyerside.signer import Signer  # noqa: E402
from promptex.buyerside.transport import PromptexSigningTransport  # noqa: E402
from promptex.buyerside.wire import lane_reports  # noqa: E402
from promptex.fakes import FakeUpstreamConfig  # noqa: E402
from promptex.metering import TokenUsage  # noqa: E402
from promptex.metering.produced import ANSWER_FRAME_BYTES  # noqa: E402
from promptex.serving import ServerThread  # noqa: E402

from .conftest import Fake, Harness  # noqa: E402
from .test_signed_proxy import LANES, _session, _signer  # noqa: E402

PROMPT = [{"role": "user", "content": "what is the weather in Paris today"}]
PROMPT_TOKENS = 14  # within the prompt's bounds (its 7 words + 3, its 34 bytes + 4 + 3)


@dataclass
class Canned:
    """What the upstream answers next: a JSON body, or a stream's events (dicts; for the
    Messages API (event name, dict) pairs); a chat stream ends with [DONE] unless `done` is
    False (an upstream that broke off, closing its answer)."""

    answer: Any = None
    done: bool = True


def _upstream(canned: Canned) -> Starlette:
    async def serve(request: Request) -> Response:
        body = orjson.loads(await request.body())
        if not body.get("stream"):
            return Response(orjson.dumps(canned.answer), media_type="application/json")
        frames = [
            b"event: " + e[0].encode() + b"\ndata: " + orjson.dumps(e[1]) + b"\n\n"
            if isinstance(e, tuple)
            else b"data: " + orjson.dumps(e) + b"\n\n"
            for e in canned.answer
        ]
        if request.url.path.endswith("/chat/completions") and canned.done:
            frames.append(b"data: [DONE]\n\n")
        return StreamingResponse(iter(frames), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/{rest:path}", serve, methods=["POST"])])


@pytest.fixture
def canned() -> Iterator[tuple[Canned, Fake]]:
    answers = Canned()
    with ServerThread(_upstream(answers)) as server:
        yield answers, Fake(FakeUpstreamConfig(), server.url + "/v1")


def _usage(prompt: int, completion: int, reasoning: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}  # fmt: skip
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def _chat(content: Any, usage: dict[str, Any], **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake-gpt",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": usage,
    }  # fmt: skip


def _message(content: list[dict[str, Any]], output: int, thinking: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": PROMPT_TOKENS, "output_tokens": output}
    if thinking:
        usage["output_tokens_details"] = {"thinking_tokens": thinking}
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "fake-claude", "content": content,
            "stop_reason": "end_turn", "stop_sequence": None, "usage": usage}  # fmt: skip


CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake-gpt"}


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {**CHUNK, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_honest_shapes__through_the_real_gateway__none_stops_signing(
    gw: Harness, canned: tuple[Canned, Fake], tmp_path: Path
) -> None:
    upstream, fake = canned
    gw.add_lot(fake)
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    client = httpx.Client(base_url=gw.url, transport=PromptexSigningTransport(signer),
                          headers={"authorization": f"Bearer {api_key}", "x-api-key": api_key,
                                   "anthropic-version": "2023-06-01"})  # fmt: skip

    relayed: list[bytes] = []

    def send(answer: Any, path: str = "/v1/chat/completions", **extra: Any) -> tuple[dict[str, Any], bytes]:
        """One request answered `answer`: its body and what the client got."""
        upstream.answer = answer
        model = "fake-claude" if path == "/v1/messages" else "fake-gpt"
        asked = {"input": PROMPT[0]["content"]} if path == "/v1/responses" else {"messages": PROMPT}
        body = {"model": model, **asked, **({"max_tokens": 1000} if path == "/v1/messages" else {})}
        body.update(extra)
        with client.stream("POST", path, json=body) as answered:
            content = answered.read()
        assert answered.status_code == 200, content
        relayed.append(content)
        return body, content

    def ask(answer: Any, path: str = "/v1/chat/completions", **extra: Any) -> list[Any]:
        """One honest answer; the stream's events the client got, if streamed."""
        body, content = send(answer, path, **extra)
        assert signer.stopped is None, (signer.stopped, body, content)
        lines = content.split(b"\n")
        return [orjson.loads(line[6:]) for line in lines if line.startswith(b"data: {")]

    # Streams: the SDKs' plain stream=True asks for no usage, so the gateway sends none; the
    # transport asks for it and checks it, and the client gets what the gateway sends a client
    # that asked none: no usage, on no chunk, and the `promptex` cost field on the chunk that
    # finishes the choice — whichever chunk the upstream reported its usage on (one of its
    # own, choices [] or left out; or its finishing chunk). Before, the field never reached
    # such a client, a usage chunk without a `choices` key did (`choices[0]` fails), and so
    # did usage on a finishing chunk.
    sunny = [_delta({"role": "assistant", "content": "Sunny"}), _delta({}, "stop")]
    usage = _usage(PROMPT_TOKENS, 2)
    for streamed in ([*sunny, {**CHUNK, "choices": [], "usage": usage}], [*sunny, {**CHUNK, "usage": usage}],
                     [sunny[0], {**sunny[1], "usage": usage}]):  # fmt: skip
        for options in ({}, {"stream_options": {"include_usage": False}}):
            events = ask(streamed, stream=True, **options)
            assert [e["choices"][0]["delta"] for e in events] == [{"role": "assistant", "content": "Sunny"}, {}]
            assert ["usage" in e for e in events] == [False, False], events
            assert ["promptex" in e for e in events] == [False, True] and int(events[-1]["promptex"]["cost_units"])
            assert relayed[-1].endswith(b"}\n\ndata: [DONE]\n\n") and b"\n\n\n" not in relayed[-1]
    streamed = [*sunny, {**CHUNK, "choices": [], "usage": usage}]
    for asked in (True, 1):  # any true value asks (as the gateway reads it)
        events = ask(streamed, stream=True, stream_options={"include_usage": asked})
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 2 and events[-1]["promptex"]
    # An upstream that sends no usage chunk (ignores stream_options) is charged a floor (the
    # prompt's lower bound, a token per content chunk): the usage chunk the client (and the
    # transport, which always asks) gets shows that, with its charge. Before, with usage
    # asked no event carried the charge: the lane was left inexact, the charge later counted
    # as lost, and signing stopped after enough such streams.
    for options in ({}, {"stream_options": {"include_usage": True}}):
        events = ask(sunny, stream=True, **options)
        assert int(events[-1]["promptex"]["cost_units"]) and ("usage" in events[-1]) == bool(options), events
        assert [e["choices"][0]["delta"] for e in events if e["choices"]] == [sunny[0]["choices"][0]["delta"], {}]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 1
    # So does the Messages API's stream served by that upstream (its message_delta showed
    # only the output streamed: no input, no usage the transport could read).
    events = ask(sunny, "/v1/messages", stream=True, model="fake-gpt")
    assert events[-2]["type"] == "message_delta" and events[-2]["usage"]["output_tokens"] == 1, events

    # Chat answers whose output is not (only) content: tool calls (name, arguments and id
    # count), a refusal, reasoning (reported inside the completion tokens: the visible rest is
    # checked), an empty answer all reasoning, CJK and emoji (3-4 bytes a token or less).
    call = {
        "id": "call_Xy1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location":"Paris, France","unit":"celsius"}'},
    }
    ask(_chat(None, _usage(PROMPT_TOKENS, 22), tool_calls=[call]))
    ask(_chat(None, _usage(PROMPT_TOKENS, 9), refusal="I'm sorry, I cannot help with that."))
    ask(_chat("Sunny.", _usage(PROMPT_TOKENS, 300, 297)), max_completion_tokens=400)
    ask(_chat("", _usage(PROMPT_TOKENS, 400, 400)), max_completion_tokens=400)
    ask(_chat("巴黎今天晴天😀", _usage(PROMPT_TOKENS, 8)))
    # Predicted Outputs: the prediction's tokens the answer did not use are billed as output
    # (`rejected_prediction_tokens`), never relayed: at most the prediction's bytes more. They
    # count within the output limit ("counted in the total completion tokens for purposes of
    # billing, output, and context window limits", OpenAI's usage reference; and the guide
    # refuses `max_completion_tokens` with a prediction): an honest answer's 70 (66 rejected)
    # come from a request whose max_tokens allows them, and are charged and shown whole. (It
    # was sent the default 64 before: not a real shape, and charged at 64 since 41c30f7.)
    draft = "The weather in Paris today is cloudy with light rain in the afternoon, 14 °C. " * 3
    rejected = {**_usage(PROMPT_TOKENS, 70), "completion_tokens_details": {"rejected_prediction_tokens": 66}}
    ask(_chat("Sunny, 21 °C.", rejected), prediction={"type": "content", "content": draft}, max_tokens=80)
    assert orjson.loads(relayed[-1])["usage"]["completion_tokens"] == 70
    tool_stream = [_delta({"role": "assistant", "content": None, "tool_calls": [
                       {"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}]}),
                   *[_delta({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                     for part in ('{"loc', 'ation":"', 'Paris"}')],
                   _delta({}, "tool_calls"), {**CHUNK, "choices": [], "usage": _usage(PROMPT_TOKENS, 12)}]  # fmt: skip
    ask(tool_stream, stream=True)

    # Prompts holding more than their messages' text, counted by the upstream as input: tool
    # definitions (~60 tokens here), a JSON schema to answer in, a conversation's earlier tool
    # call and its result (the bound the gateway holds for, and the proxy checks, left them out).
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather now in a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}]  # fmt: skip
    ask(_chat(None, _usage(PROMPT_TOKENS + 60, 22), tool_calls=[call]), tools=tools, tool_choice="auto")
    schema = {"type": "json_schema", "json_schema": {"name": "weather", "strict": True, "schema": {
        "type": "object", "properties": {"sky": {"type": "string"}, "celsius": {"type": "number"}}}}}  # fmt: skip
    ask(_chat('{"sky":"clear","celsius":21}', _usage(PROMPT_TOKENS + 30, 12)), response_format=schema)
    turns = [*PROMPT, {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": "call_Xy1", "content": "21"}]  # fmt: skip
    ask(_chat("Sunny, 21 °C.", _usage(PROMPT_TOKENS + 32 + 5, 8)), messages=turns, tools=tools)

    # Anthropic's Messages API, native: a tool call's arguments as a JSON value (60 numbers:
    # ~190 tokens, 3 bytes of strings), thinking (its tokens reported), redacted thinking.
    numbers = {"values": list(range(100, 160)), "normalize": True, "weights": None}
    ask(_message([{"type": "tool_use", "id": "toolu_01", "name": "stats", "input": numbers}], 190), "/v1/messages")
    orders = {"items": [{"sku": f"A{i}", "qty": i, "gift": False} for i in range(20)]}
    ask(_message([{"type": "tool_use", "id": "toolu_02", "name": "order", "input": orders}], 240), "/v1/messages")
    # Thinking is asked (`thinking`): its tokens count as thinking only then (`Gateway.bounded`).
    thought = {"type": "thinking", "thinking": "The user asks about the weather.", "signature": "EqQBCgIYAhIM" * 8}
    think = {"type": "enabled", "budget_tokens": 999}
    ask(_message([thought, {"type": "text", "text": "Sunny."}], 500, thinking=490), "/v1/messages", thinking=think)
    assert orjson.loads(relayed[-1])["usage"]["output_tokens"] == 500
    hidden = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix" * 10}
    ask(_message([hidden, {"type": "text", "text": "Sunny."}], 300, thinking=290), "/v1/messages", thinking=think)
    assert orjson.loads(relayed[-1])["usage"]["output_tokens"] == 300
    # Structured outputs (`output_config.format`): the schema reaches the model as input, in a
    # system prompt Anthropic adds (its size unpublished), bounded as tools are. Before, the
    # format was outside the bound: "314 input tokens reported for a prompt of 10–…", stopped.
    fmt = {"type": "json_schema", "schema": {"type": "object", "properties": {"sky": {"type": "string"}}}}
    structured = {**_message([{"type": "text", "text": '{"sky":"clear"}'}], 8),
                  "usage": {"input_tokens": PROMPT_TOKENS + 300, "output_tokens": 8}}  # fmt: skip
    ask(structured, "/v1/messages", output_config={"format": fmt})
    # The prompt cache: a system block marked for an hour, written (priced at 2× input).
    cached = [{"type": "text", "text": "You answer weather questions.", "cache_control": {"type": "ephemeral",
                                                                                       "ttl": "1h"}}]  # fmt: skip
    writes = {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 8, "output_tokens": 2,
              "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 8}}  # fmt: skip
    ask({**_message([{"type": "text", "text": "Sunny"}], 2), "usage": writes}, "/v1/messages", system=cached)
    # The prompt cache on a chat request served by an Anthropic lot: its writes (5-minute, or
    # an hour's) are charged, and shown in OpenAI's usage (LiteLLM's fields) so the charge is
    # checked. Before, the usage showed only input tokens: "charged 51 units for 14 input + 2
    # output tokens; the rate gives 46", signing stopped for an honest answer.
    text = [{"type": "text", "text": PROMPT[0]["content"], "cache_control": {"type": "ephemeral"}}]
    marked = {"model": "fake-claude", "max_tokens": 1000, "messages": [{"role": "user", "content": text}]}
    five_min = {"input_tokens": 4, "cache_creation_input_tokens": 10, "output_tokens": 2}
    ask({**_message([{"type": "text", "text": "Sunny"}], 2), "usage": five_min}, **marked)
    details = orjson.loads(relayed[-1])["usage"]["prompt_tokens_details"]
    assert details["cache_creation_tokens"] == 10 and details["cache_creation_token_details"] == {
        "ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 0}  # fmt: skip
    hour_mark = [{**text[0], "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    opening = {"type": "message_start", "message": {**_message([], 1), "usage": {**five_min, "output_tokens": 1,
               "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 6}}}}  # fmt: skip
    events = ask([("message_start", opening),
                  ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": "Sunny"}}),
                  ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                     "usage": {"output_tokens": 2}}),
                  ("message_stop", {"type": "message_stop"})],
                 **{**marked, "messages": [{"role": "user", "content": hour_mark}]}, stream=True,
                 stream_options={"include_usage": True})  # fmt: skip
    assert events[-1]["usage"]["prompt_tokens_details"]["cache_creation_token_details"][
        "ephemeral_1h_input_tokens"] == 6 and events[-1]["promptex"]  # fmt: skip
    start = {"type": "message_start", "message": {**_message([], 1), "usage": {"input_tokens": PROMPT_TOKENS,
                                                                              "output_tokens": 1}}}  # fmt: skip
    block = {"type": "tool_use", "id": "toolu_03", "name": "stats", "input": {}}
    parts = ['{"values": [', ", ".join(map(str, range(100, 160))), "]}"]
    ask([("message_start", start), ("content_block_start", {"type": "content_block_start", "index": 0,
                                                            "content_block": block}),
         *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "input_json_delta", "partial_json": p}}) for p in parts],
         ("content_block_stop", {"type": "content_block_stop", "index": 0}),
         ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                            "usage": {"output_tokens": 190}}),
         ("message_stop", {"type": "message_stop"})], "/v1/messages", stream=True)  # fmt: skip

    # Cache writes beyond what the request marked (a mistaken or lying upstream; a router that
    # adds marks of its own) are charged as what the request could write — marked nothing: as
    # plain input; marked for 5 minutes: as 5-minute writes — and the answer shows that, on
    # every path, so the transport checks the charge and signs on. Before, the gateway charged
    # the writes reported (an hour's: 2x the input rate), and only a buyer behind the
    # transport was spared (it stopped signing); a Responses answer (whose usage has no
    # writes) and an OpenAI-shaped one from an OpenAI-compatible lot stopped it too.
    hour = {**writes, "input_tokens": 0, "cache_creation_input_tokens": PROMPT_TOKENS,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": PROMPT_TOKENS}}  # fmt: skip
    sunny_message = {**_message([{"type": "text", "text": "Sunny"}], 2), "usage": hour}

    def charged_as(usage: dict[str, Any], expected: dict[str, Any]) -> None:
        assert {k: usage.get(k) for k in expected} == expected, usage

    ask(sunny_message, "/v1/messages")  # marked nothing
    charged_as(orjson.loads(relayed[-1])["usage"], {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0})
    five = [{**cached[0], "cache_control": {"type": "ephemeral"}}]
    ask(sunny_message, "/v1/messages", system=five)  # marked for 5 minutes
    five_minutes = {"ephemeral_5m_input_tokens": PROMPT_TOKENS, "ephemeral_1h_input_tokens": 0}
    charged_as(orjson.loads(relayed[-1])["usage"], {"input_tokens": 0, "cache_creation_input_tokens": PROMPT_TOKENS,
                                                    "cache_creation": five_minutes})  # fmt: skip
    start_hour = {"type": "message_start", "message": {**_message([], 1), "usage": {**hour, "output_tokens": 1}}}
    sunny_events = [("message_start", start_hour),
                    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": "Sunny"}}),
                    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                       "usage": {"output_tokens": 2}}),
                    ("message_stop", {"type": "message_stop"})]  # fmt: skip
    events = ask(sunny_events, "/v1/messages", stream=True)
    assert events[-2]["type"] == "message_delta" and events[-2]["promptex"], events
    charged_as(events[-2]["usage"], {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0,
                                     "output_tokens": 2})  # fmt: skip
    ask(sunny_message, model="fake-claude")  # chat, served by the Anthropic lot
    assert "cache_creation_tokens" not in orjson.loads(relayed[-1])["usage"].get("prompt_tokens_details", {})
    events = ask(sunny_events, model="fake-claude", stream=True, stream_options={"include_usage": True})
    assert events[-1]["usage"]["prompt_tokens"] == PROMPT_TOKENS and "prompt_tokens_details" not in events[-1]["usage"]
    for streamed in (False, True):  # Responses, served by the Anthropic lot
        events = ask(sunny_events if streamed else sunny_message, "/v1/responses", model="fake-claude", stream=streamed)
        answer = events[-1]["response"] if streamed else orjson.loads(relayed[-1])
        assert answer["usage"]["input_tokens"] == PROMPT_TOKENS and answer["status"] == "completed", answer
    # An OpenAI-compatible lot reporting writes as LiteLLM does, for a request that marked none.
    split = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": PROMPT_TOKENS}
    litellm = {**_usage(PROMPT_TOKENS, 2), "prompt_tokens_details": {
        "cached_tokens": 0, "cache_creation_tokens": PROMPT_TOKENS, "cache_creation_token_details": split}}  # fmt: skip
    ask(_chat("Sunny", litellm))
    assert orjson.loads(relayed[-1])["usage"]["prompt_tokens_details"] == {}
    asked = {"stream": True, "stream_options": {"include_usage": True}}
    events = ask([*sunny, {**CHUNK, "choices": [], "usage": litellm}], **asked)
    assert events[-1]["usage"]["prompt_tokens_details"] == {} and events[-1]["promptex"]
    # Only the usage the gateway charged reaches the client: not one it cannot count (a part
    # beyond its whole, a negative, float or string count), nor one a later usage chunk
    # replaced (reported twice, or in parts). Before, both were passed on, the transport
    # merged them into the stream's usage and read writes (or no usage) the charge never had.
    for first in ({"prompt_tokens_details": {"cache_creation_tokens": 99}}, {"prompt_tokens": -1},
                  {"prompt_tokens": 1.5, "completion_tokens": "2"}, {**usage, "prompt_tokens_details": {
                      "cached_tokens": PROMPT_TOKENS + 1}}, litellm, _usage(PROMPT_TOKENS, 0)):  # fmt: skip
        events = ask([*sunny, {**CHUNK, "choices": [], "usage": first}, {**CHUNK, "choices": [], "usage": usage}],
                     **asked)  # fmt: skip
        assert [e["usage"] for e in events if "usage" in e] == [usage], events
    # Anthropic's message_delta twice, the last reporting writes the request did not mark: the
    # last carries the charge and the usage charged (its counts overwrite the first's).
    stop = sunny_events[-1]
    late = ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                              "usage": {"output_tokens": 2, "cache_creation_input_tokens": PROMPT_TOKENS}})  # fmt: skip
    events = ask([*sunny_events[:-1], late, stop], "/v1/messages", stream=True)
    assert events[-2]["promptex"] and events[-2]["usage"]["cache_creation_input_tokens"] == 0, events
    # A Responses stream whose upstream sent no usage: charged the prompt's floor, counted as
    # the chat messages it is sent as (3 + its words a message). Before, its input's words
    # alone: "7 input tokens reported for a prompt of 10-…", signing stopped.
    events = ask(sunny, "/v1/responses", stream=True)
    assert events[-1]["response"]["usage"]["input_tokens"] == 10 and events[-1]["promptex"]
    # A native Messages stream cut short: its usage shows the output charged (a token per
    # content chunk streamed, above the 1 reported), and one cut before its message_delta gets
    # one carrying the charge. Before, the first showed the usage reported beside a charge of
    # more ("charged … the rate gives …": stopped), the second carried no charge at all.
    start = {"type": "message_start", "message": {**_message([], 1), "usage": {"input_tokens": PROMPT_TOKENS,
                                                                              "output_tokens": 1}}}  # fmt: skip
    piece = {"type": "content_block_delta", "index": 0}
    pieces = [("content_block_delta", {**piece, "delta": {"type": "text_delta", "text": t}}) for t in ("Sun", "n", "y")]
    short = {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 1}}
    events = ask([("message_start", start), *pieces, ("message_delta", short)], "/v1/messages", stream=True)
    assert events[-1]["type"] == "message_delta" and events[-1]["usage"]["output_tokens"] == 3, events
    events = ask([("message_start", start), *pieces], "/v1/messages", stream=True)
    assert events[-1]["type"] == "message_delta" and events[-1]["promptex"], events
    assert events[-1]["usage"]["output_tokens"] == 3 and events[-1]["delta"]["stop_reason"] is None
    # A chat stream that broke off (no finishing chunk, no usage, no [DONE]): charged its floor,
    # shown on a usage chunk with the charge; no [DONE] follows (the stream did not end). The
    # Messages and Responses APIs served by it show that charge too, on a message_delta with no
    # stop reason (no message_stop) and on `response.failed`; before, no event carried it.
    upstream.done = False
    events = ask([sunny[0]], stream=True, stream_options={"include_usage": True})
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 1 and events[-1]["promptex"]
    assert not relayed[-1].endswith(b"data: [DONE]\n\n")
    events = ask([sunny[0]], "/v1/messages", stream=True, model="fake-gpt")
    assert events[-1]["type"] == "message_delta" and events[-1]["delta"]["stop_reason"] is None, events
    assert events[-1]["usage"]["input_tokens"] == 10 and events[-1]["promptex"]
    events = ask([sunny[0]], "/v1/responses", stream=True)
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["usage"]["output_tokens"] == 1, events
    assert events[-1]["promptex"]
    upstream.done = True

    total = sum(gw.ledger.lane(account, "USDC", 1, i).charged for i in range(LANES))
    assert signer.book.charged_total() == total > 0 and all(lane.exact for lane in signer.book.lanes)

    # A lying upstream behind the same gateway: output beyond the answer's bytes and its
    # prediction's (the prediction is room only up to its size) is charged and shown within
    # them (`Gateway.bounded`, the rule the transport checks), so signing goes on. Before
    # (gbreak6 O1) the gateway charged the 64 reported within the output limit sent, and the
    # transport stopped signing ("… of its prediction").
    prediction = {"type": "content", "content": draft[:8]}
    _, content = send(_chat("Sunny.", _usage(PROMPT_TOKENS, 64)), prediction=prediction)
    shown = orjson.loads(content)["usage"]
    assert shown["completion_tokens"] == len("Sunny.") + ANSWER_FRAME_BYTES + 8 < 64 and signer.stopped is None, shown


def test_answer_check__cache_writes_beyond_the_marks__refused() -> None:
    """The transport still refuses an answer that shows cache writes its request did not mark
    (a lying gateway: the real one charges them as what was marked, `within_marks`)."""
    usage = TokenUsage(PROMPT_TOKENS, 2, cache_write_tokens=PROMPT_TOKENS, cache_write_1h_tokens=PROMPT_TOKENS)
    for marks, refusal in (((False, False), "no cache_control"), ((True, False), "no 1h ttl")):
        with pytest.raises(AnswerRefused, match=refusal):
            check_counts(Bounds("fake-claude", 10, 100, None, *marks), usage, None)
    check_counts(Bounds("fake-claude", 10, 100, None, True, True), usage, None)


# ─── Dishonest: reasoning claimed on every answer ────────────────────────────


def _reasoning_claims(tmp_path: Path, **signer_options: Any) -> tuple[FakeSignedGateway, Signer, int]:
    """A gateway that answers 16 words and claims the rest of each hold as reasoning
    (charged: nothing of it is relayed), 12 requests of max_tokens 1,000 on one lane; the
    gateway, the signer and the request's hold."""
    gateway = FakeSignedGateway(lanes=1, claim_reasoning=True)
    signer = make_signer(tmp_path / "v.log", lanes=1, **signer_options)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello hello hello"}], "max_tokens": 1_000}
    for _ in range(12):
        client.post("http://gateway.test/v1/chat/completions", json=body)
    return gateway, signer, signer.hold_for(ENDPOINTS["/v1/chat/completions"], body)[0]


def test_attack__reasoning_claimed_on_every_answer__reasoning_bp_0__stopped_within_n_holds_and_the_tolerance(
    tmp_path: Path,
) -> None:
    """With no reasoning allowed (`reasoning_bp` 0: a session using no reasoning model), what
    answers claim as reasoning weighs as answers without figures do: the gateway takes at
    most N holds and the tolerance, then signing stops. Before, every answer passed the
    check (its visible output within its bytes, its reasoning within max_tokens): a hold per
    request, never stopped."""
    gateway, signer, hold = _reasoning_claims(tmp_path, reasoning_bp=0)
    lane = signer.book.lanes[0]
    overcharged = gateway.book[0].charged - sum(gateway.true_costs)
    assert signer.stopped is not None and "reasoning" in signer.stopped, signer.stopped
    assert len(gateway.received) == 3  # the third claim stops it (N = 3)
    assert 0 < overcharged <= 3 * hold + signer.tolerated(lane), (overcharged, hold)


def test_attack__reasoning_claimed_across_proxy_restarts__reasoning_bp_0__the_units_outlive_the_restart(
    tmp_path: Path,
) -> None:
    """The reasoning units are in the voucher log: a proxy restarted after two claims (each
    weighing just under a hold) stops at the third, as without the restart; kept in memory,
    each restart gave the gateway N holds more."""
    gateway = FakeSignedGateway(lanes=1, claim_reasoning=True)
    chain = ChainSession(IDENTITY.key, 1, 1, 10**12, 0, (0,))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello hello hello"}], "max_tokens": 1_000}
    for asks in (2, 2):  # two runs of the proxy on one voucher log
        signer = make_signer(tmp_path / "v.log", lanes=1, reasoning_bp=0)
        signer.book = recover(IDENTITY, chain, lane_reports(gateway.lanes_report()), signer.log).book
        client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
        for _ in range(asks):
            client.post("http://gateway.test/v1/chat/completions", json=body)
        signer.log.close()
    hold = signer.hold_for(ENDPOINTS["/v1/chat/completions"], body)[0]
    assert signer.stopped is not None and "reasoning" in signer.stopped, signer.stopped
    assert len(gateway.received) == 3
    assert gateway.book[0].charged - sum(gateway.true_costs) <= 3 * hold + signer.tolerated(signer.book.lanes[0])


def test_attack__reasoning_claimed_on_every_answer__default__accepted_but_never_counted_as_checked(
    tmp_path: Path,
) -> None:
    """By default reported reasoning is accepted (an honest reasoning model's may be nearly
    all of every answer), but never counted among the checked units that the stop rule's
    tolerance grows with: claimed on every answer, it gave the gateway 1 % of it to take in
    drops and closes beyond the N holds."""
    gateway, signer, hold = _reasoning_claims(tmp_path)
    lane = signer.book.lanes[0]
    assert signer.stopped is None and len(gateway.received) == 12
    assert lane.verified == sum(gateway.true_costs)  # only what the check could see
    assert lane.reasoning == gateway.book[0].charged - sum(gateway.true_costs) > 11 * hold // 2


def test_attack__text_in_the_usage_chunk_kept_from_the_client__not_counted_as_produced(tmp_path: Path) -> None:
    """A stream whose client asked no usage is sent asking for it, and its usage chunk is
    kept from the client. A gateway that puts 2,000 bytes of text in that chunk under
    another API's key (an Anthropic content_block_delta) and reports 1,000 output tokens
    more: the client never received those bytes, so they are no room for output tokens."""
    pad = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x" * 2_000}}
    gateway = FakeSignedGateway(lanes=1, inflate_output=1_000, usage_extra=pad)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}  # held for 1,024 out
    with client.stream("POST", "http://gateway.test/v1/chat/completions", json=body) as answer:
        relayed = answer.read()
    assert b"x" * 100 not in relayed  # the chunk was kept from the client
    assert signer.stopped is not None and "bytes of answer" in signer.stopped, signer.stopped
