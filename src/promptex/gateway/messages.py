"""The Anthropic Messages API (`POST /v1/messages`), so the official `anthropic` SDK works
with only its base URL and key changed.

- To an Anthropic lot the request passes through natively (tools, images and extended
  thinking included), with the output limit the hold was priced for, the standard
  service tier, and no `anthropic-beta` header (a beta may change what a token costs);
  answers and events come back as sent, but for the event that carries the charge.
- To an OpenAI-API lot it is translated to chat completions and back, for text only:
  anything else answers 400 before any money moves.

Refused everywhere (400), because the gateway could not bound or meter their cost: server
tools (web search, code execution, …: billed per use, not per token) and any typed tool
but `custom`, document blocks (a PDF's pages cost tokens its size does not bound), fast
mode, and any parameter outside `PARAMETERS` (e.g. `inference_geo`, priced apart;
`mcp_servers`, `container`). Each image is held for at most `IMAGE_TOKENS` tokens beyond
its bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from promptex.gateway.adapters import (
    CHAT,
    Bound,
    ChatTranslation,
    StreamTranslator,
    UpstreamCall,
    ViaChat,
    anthropic_call,
    anthropic_usage_of,
    as_charged,
    read_answer,
    shown_bytes,
    within_marks,
)
from promptex.gateway.charges import FIELD, Charge
from promptex.gateway.errors import GatewayError, bad_request
from promptex.gateway.requests import PER_REQUEST
from promptex.metering import ModelPrice, TokenUsage
from promptex.metering.produced import ANSWER_FRAME_BYTES, read_json, visible_bytes
from promptex.metering.produced import MESSAGES as MESSAGES

IMAGE_TOKENS = 1_600  # Anthropic resizes an image to at most ~1.15 megapixels: ≤ ~1,600 tokens
TOOLS_TOKENS = 1_000  # the system prompt Anthropic adds when tools are given (~350)
# Structured outputs (`output_config.format`, a JSON schema the answer must follow): the
# schema reaches the model as input, in a system prompt of Anthropic's whose size it does not
# publish; bounded as tools are, by the format's JSON bytes and a frame of TOOLS_TOKENS.
# What a request may carry (the Messages API's parameters that are priced per token as the
# catalog says); anything else, e.g. inference_geo (priced apart), mcp_servers, container,
# answers 400 rather than being sent to a seller's account.
PARAMETERS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
        "service_tier",
        "speed",
    }
)
NATIVE_BLOCKS = frozenset({"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"})
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return bad_request(message, param=param)


# ─── Checking a request ──────────────────────────────────────────────────────


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return []
    typed = isinstance(content, list) and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content)
    if not typed:
        raise _invalid(f"{where}: expected a string or an array of content blocks.", "messages")
    blocks: list[dict[str, Any]] = content
    return blocks


def _images(blocks: list[dict[str, Any]], where: str) -> int:
    """How many images the blocks carry (tool results included); 400 for what is refused."""
    count = 0
    for i, block in enumerate(blocks):
        kind = block["type"]
        if kind not in NATIVE_BLOCKS:
            raise _invalid(
                f"{where}.{i}: '{kind}' blocks are not supported through this gateway (their cost cannot be "
                "bounded before the call, or is not billed per token).",
                "messages",
            )
        if kind == "image":
            count += 1
        elif kind == "tool_result":
            count += _images(_blocks(block.get("content") or [], f"{where}.{i}.content"), f"{where}.{i}.content")
    return count


def validate_messages(body: dict[str, Any]) -> tuple[str, int, int | None]:
    """(model, an upper bound on the input tokens, max_tokens), or 400 in Anthropic's words."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model: Field required", "model")
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens <= 0:
        raise _invalid("max_tokens: Field required (a positive integer)", "max_tokens")
    if body.get("stream") is not None and not isinstance(body.get("stream"), bool):
        raise _invalid("stream: Input should be a valid boolean", "stream")
    for name in ("temperature", "top_p", "top_k"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _invalid(f"{name}: Input should be a valid number", name)
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise _invalid("stop_sequences: Input should be a valid list of strings", "stop_sequences")
    unknown = sorted(set(body) - PARAMETERS)
    if unknown:
        raise _invalid(
            f"{unknown[0]}: not supported through this gateway (it may change what a token costs, or keep state).",
            unknown[0],
        )
    if body.get("speed") not in (None, "standard"):
        raise _invalid("speed: only 'standard' is supported through this gateway (fast mode is priced apart).", "speed")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise _invalid("tools: Input should be a valid list", "tools")
        for i, tool in enumerate(tools):
            if tool.get("type") not in (None, "custom"):
                raise _invalid(
                    f"tools.{i}: '{tool.get('type')}' tools are not supported through this gateway (only custom "
                    "tools: server tools are billed per use, which it does not meter).",
                    "tools",
                )
    images = 0
    system = body.get("system")
    if not isinstance(system, str | None) and any(b["type"] != "text" for b in _blocks(system, "system")):
        raise _invalid("system: only text blocks are allowed.", "system")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: Field required (a non-empty array)", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'", "messages")
        images += _images(_blocks(message.get("content"), f"messages.{i}.content"), f"messages.{i}.content")
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise _invalid("output_config: Input should be a valid dictionary", "output_config")
    fmt = config.get("format") if config is not None else None
    # Every byte of what is sent is at most a token; images, the tools' prompt and the output
    # format's on top. (The format was left out: an honest structured-output request reported
    # more input than the bound, so the hold was short and the signing proxy stopped.)
    sent = orjson.dumps([system, messages, tools, body.get("tool_choice"), fmt])
    frames = (TOOLS_TOKENS if tools else 0) + (TOOLS_TOKENS if fmt else 0)
    estimate = PER_REQUEST + len(sent) + IMAGE_TOKENS * images + frames
    return model, estimate, max_tokens


_UNTRANSLATED = ("tools", "tool_choice", "thinking", "top_k", "output_config")


def check_translatable(body: dict[str, Any]) -> None:
    """400 unless an OpenAI-API lot can answer it as asked: text only (and no top_k)."""
    for name in _UNTRANSLATED:
        if body.get(name):
            raise _invalid(f"{name}: not supported for this model through this gateway (text only).", name)
    system = body.get("system")
    if isinstance(system, list) and any(b.get("type") != "text" for b in system):
        raise _invalid("system: only text blocks are supported for this model.", "system")
    for i, message in enumerate(body["messages"]):
        content = message.get("content")
        if isinstance(content, list) and any(b.get("type") != "text" for b in content):
            raise _invalid(f"messages.{i}.content: only text blocks are supported for this model.", "messages")


def thinks(body: dict[str, Any]) -> bool:
    """Whether a Messages request asks the model to think (`thinking` of a type other than
    "disabled"): only then may an Anthropic lot's answer hold thinking tokens (`Gateway.bounded`)."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") != "disabled"


# What a chat, completions or Responses request may ask a model's reasoning with (a router
# serving an Anthropic model through the OpenAI API maps them to its thinking).
REASONING_PARAMS = ("reasoning_effort", "thinking", "reasoning")


def asks_reasoning(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether a request asks its model to reason: a Messages request's `thinking`, another
    API's reasoning parameters. An Anthropic model reasons only when asked (`Gateway.bounded`
    and the signing proxy count its reported reasoning as visible output otherwise)."""
    if endpoint == MESSAGES:
        return thinks(body)
    return any(body.get(name) not in (None, False, "none", "") for name in REASONING_PARAMS)


def may_reason(price: ModelPrice, asks: bool) -> bool:
    """Whether `price`'s model may reason for a request (`asks`: it asks its model to,
    `asks_reasoning`): never a model the catalog says does not (`reasoning = false`: gpt-4o,
    gpt-4.1, Llama, …), an Anthropic model only when asked. Its reasoning reported otherwise
    is visible output, bounded by the answer's text as any: the one rule of the gateway
    (`Gateway.bounded`) and the signing proxy (`RateBook.reasons`)."""
    return price.reasoning and (asks or price.provider.lower() != "anthropic")


def native_body(body: dict[str, Any], output: int) -> dict[str, Any]:
    """What an Anthropic lot is sent: the output limit the hold was priced for, and the
    standard tier (priority capacity is priced above the catalog)."""
    return {**body, "max_tokens": output, "service_tier": "standard_only"}


# ─── Usage in Anthropic's words ──────────────────────────────────────────────


def delta_usage_json(usage: TokenUsage) -> dict[str, Any]:
    """`usage` whole, as a message_delta shows it when it replaces what the stream's
    message_start reported (the counts there are totals that overwrite the start's; the
    split of the cache writes too, and the thinking tokens, so none reported before is left
    showing)."""
    return {
        **usage_json(usage),
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        },
        "output_tokens_details": {"thinking_tokens": usage.reasoning_tokens},
    }


def usage_json(usage: TokenUsage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": usage.uncached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
    }
    if usage.cache_write_tokens:
        out["cache_creation"] = {
            "ephemeral_5m_input_tokens": usage.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        }
    if usage.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return out


def frame(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


# ─── Native: to Anthropic lots ───────────────────────────────────────────────


def _carries_output(delta: Any) -> bool:
    """Whether a content_block_delta carries output (a non-empty string beside its type:
    text, a tool's partial JSON, thinking): each such piece is at least one token, what a
    stream cut short is charged for at least. An empty one is none: before, each counted
    one, and an upstream that sent 500 empty text deltas and broke off was paid 500 output
    tokens for nothing streamed."""
    return isinstance(delta, dict) and any(isinstance(v, str) and v for k, v in delta.items() if k != "type")


class NativeStream:
    """Anthropic's events as sent, reading usage from message_start and message_delta; the
    message_delta (and the message_stop after it) wait for the charge. Its usage shows what
    was charged (`charged`, before `finish`) when that is not what the upstream reported: a
    stream cut short (its output counted as streamed) or cache writes beyond the request's
    marks (`within_marks`); a stream cut short before its message_delta gets one, carrying
    the charge (before, no event carried it). The message_start shows its usage within the
    request's bounds (`bound`, the gateway's `Gateway.bounded`) and marks: the input
    is known there, and a client reading it there saw an upstream's over-reported counts
    (only the message_delta, whose totals overwrite them, showed what was charged)."""

    def __init__(self, sent: Any = None, bound: Bound | None = None) -> None:
        self.sent = sent  # the body sent upstream (`within_marks`)
        self.bound = bound  # the request's bounds (`Gateway.bounded`)
        self.usage: TokenUsage | None = None
        self.produced = 0
        self.finished = False
        self._bytes = 0  # produced by the events passed on or held (`shown_bytes`)
        self._event = ""
        self._reported: dict[str, Any] = {}
        self._reported_usage: TokenUsage | None = None
        self._charged: TokenUsage | None = None
        self._held: list[tuple[str, dict[str, Any]]] = []
        self._start_shown = False  # its message_start passed on with usage other than reported

    def feed(self, line: str) -> list[bytes]:
        if line.startswith("event:"):
            self._event = line[6:].strip()
            return []
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        try:
            event = read_json(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        name = self._event or str(kind)
        self._bytes += shown_bytes(event)  # every event read is passed on, now or at `finish`
        if kind == "message_start":
            message = event.get("message")
            self._update(message.get("usage") if isinstance(message, dict) else None)
            shown = self._start_usage(message)
            if shown is not None:
                self._start_shown = True
                return [frame(name, orjson.dumps({**event, "message": {**event["message"], "usage": shown}}))]
        elif kind == "content_block_delta" and _carries_output(event.get("delta")):
            self.produced += 1
        elif kind in ("message_delta", "message_stop"):
            if kind == "message_delta":
                self._update(event.get("usage"))
            else:
                self.finished = True
            self._held.append((name, event))
            return []
        return [frame(name, data.encode())]

    def _update(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._reported.update({k: v for k, v in usage.items() if v is not None})
            reported = anthropic_usage_of(self._reported)
            if reported is not None:
                self._reported_usage, self.usage = reported, within_marks(reported, self.sent)
            else:
                # Unreadable now (a count that is no non-negative integer): metered as last
                # read, and the message_delta shows that. Before, it passed on as sent: a
                # `"output_tokens": "500"` reached the client, charged for 1.
                self._reported_usage = None

    def _start_usage(self, message: Any) -> dict[str, Any] | None:
        """The message_start's usage to show in place of the upstream's (None: as sent): its
        counts within the request's marks and bounds, when those are not what it reported."""
        if self._reported_usage is None or self.usage is None or not isinstance(message, dict):
            return None
        shown = self.bound(self.usage, None) if self.bound is not None else self.usage  # no answer's text yet
        if shown == self._reported_usage:
            return None
        return {**message["usage"], **delta_usage_json(shown)}

    @property
    def produced_bytes(self) -> int:
        return self._bytes + ANSWER_FRAME_BYTES

    def charged(self, usage: TokenUsage) -> None:
        self._charged = usage

    def finish(self, charge: Charge | None) -> list[bytes]:
        held, self._held = self._held, []
        # The last message_delta carries the charge (and, if need be, the usage charged): its
        # counts overwrite those of any before it, as the client and the signing proxy read them.
        delta = next((event for _, event in reversed(held) if event.get("type") == "message_delta"), None)
        if charge is not None and delta is None:
            # Cut short before its message_delta (or an upstream that sent none, or text with no
            # message_start): one carries the charge, with no stop reason when the message did not stop.
            delta = {"type": "message_delta", "delta": {"stop_reason": None, "stop_sequence": None}}
            held.insert(0, ("message_delta", delta))
        if charge is not None and delta is not None:
            charged = self._charged if self._charged is not None else self.usage
            # Whole when the message_start showed other counts than reported (a client merges
            # the delta's into the start's: those reported as sent left them showing).
            if charged is not None and (charged != self._reported_usage or "usage" not in delta or self._start_shown):
                delta["usage"] = delta_usage_json(charged)
            delta[FIELD] = charge.fields()
        return [frame(name, orjson.dumps(event)) for name, event in held]


class NativeAdapter:
    """/v1/messages to an Anthropic lot: the Messages API on both sides."""

    def __init__(self, output: int) -> None:
        self.output = output
        self.sent: Any = None  # the body `call` sent (`within_marks`)

    def call(self, endpoint: str, body: dict[str, Any], base_url: str, secret: str) -> UpstreamCall:
        self.sent = native_body(body, self.output)
        return anthropic_call(base_url, secret, self.sent)

    def answer(self, endpoint: str, content: bytes, model: str, bound: Bound | None = None) -> tuple[bytes, TokenUsage]:
        body, reported = read_answer(content, anthropic_usage_of)
        usage = as_charged(reported, self.sent, bound, None if bound is None else visible_bytes(MESSAGES, body))
        if usage == reported:
            return content, usage  # as sent
        # Charged other than reported: the answer shows what was charged.
        return orjson.dumps({**body, "usage": {**body["usage"], **delta_usage_json(usage)}}), usage

    def translator(
        self, endpoint: str, model: str, include_usage: bool, bound: Bound | None = None
    ) -> StreamTranslator:
        return NativeStream(self.sent, bound)

    def probe(self, base_url: str, secret: str, model: str) -> UpstreamCall:
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        return self.call(MESSAGES, body, base_url, secret)


# ─── Translated: to OpenAI-API lots ──────────────────────────────────────────


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))


def to_chat(body: dict[str, Any], output: int) -> dict[str, Any]:
    """A text-only Messages request (`check_translatable`) as a chat completions request."""
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text(body["system"])})
    messages += [{"role": m["role"], "content": _text(m.get("content"))} for m in body["messages"]]
    chat: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": output}
    for name in ("temperature", "top_p", "stream"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if isinstance(user, str):
        chat["user"] = user
    return chat


def _message(message_id: str, model: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }


def from_chat(chat: dict[str, Any], usage: TokenUsage, model: str) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    out = _message("msg_" + str(chat.get("id", "")).removeprefix("chatcmpl-"), model)
    out["content"] = [{"type": "text", "text": text}] if text else []
    out["stop_reason"] = _STOP.get(str(choice.get("finish_reason")), "end_turn")
    out["usage"] = usage_json(usage)
    return out


class FromChatStream(ChatTranslation):
    """Chat completion chunks as Anthropic's events; the message_delta that ends them
    carries the usage and the charge."""

    def __init__(self, inner: StreamTranslator, model: str) -> None:
        super().__init__(inner)
        self.model = model
        self._started = False
        self._block = False
        self._stop = "end_turn"

    def _event(self, event: dict[str, Any]) -> None:
        self.emit(str(event["type"]), event)

    def chunk(self, chunk: dict[str, Any]) -> None:
        if not self._started:
            self._started = True
            message = _message("msg_" + str(chunk.get("id", "")).removeprefix("chatcmpl-"), self.model)
            message["usage"] = {"input_tokens": 0, "output_tokens": 0}  # known at the end (message_delta)
            self._event({"type": "message_start", "message": message})
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                if not self._block:
                    self._block = True
                    block = {"type": "text", "text": ""}
                    self._event({"type": "content_block_start", "index": 0, "content_block": block})
                self._event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
            if choice.get("finish_reason"):
                self._stop = _STOP.get(str(choice["finish_reason"]), "end_turn")

    def end(self, charge: Charge | None) -> None:
        whole = self.finished  # else cut short: its charge shown, no stop reason, no message_stop
        if not whole and not self._started:
            return
        if self._block:
            self._event({"type": "content_block_stop", "index": 0})
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop if whole else None, "stop_sequence": None},
            "usage": usage_json(self.usage) if self.usage is not None else {"output_tokens": self.produced},
        }
        if charge is not None:
            delta[FIELD] = charge.fields()
        self._event(delta)
        if whole:
            self._event({"type": "message_stop"})


class ToChatAdapter(ViaChat):
    """/v1/messages to an OpenAI-API lot: translated to chat completions and back."""

    endpoint = MESSAGES

    def chat_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return to_chat(body, self.output)

    def answer_of(self, chat: dict[str, Any], usage: TokenUsage, model: str) -> dict[str, Any]:
        return from_chat(chat, usage, model)

    def usage_json(self, usage: TokenUsage) -> dict[str, Any]:
        return usage_json(usage)

    def translator(
        self, endpoint: str, model: str, include_usage: bool, bound: Bound | None = None
    ) -> StreamTranslator:
        return FromChatStream(self.inner.translator(CHAT, model, True), model)
