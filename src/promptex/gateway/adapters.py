"""Upstream adapters: how one OpenAI-shaped request is sent to a provider's API and how
its answer (and its usage) comes back in OpenAI's shapes.

- `OpenAIAdapter`: any OpenAI-compatible API; bodies pass through, streaming requests
  get `stream_options.include_usage` forced on so every request is metered exactly.
- `AnthropicAdapter`: the Messages API; system messages become the `system` field,
  streaming events become chat.completion.chunk objects, input_tokens/output_tokens
  become prompt_tokens/completion_tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from promptex.gateway.charges import FIELD, Charge
from promptex.gateway.errors import bad_request
from promptex.metering import TokenUsage, anthropic_usage

ANTHROPIC_VERSION = "2023-06-01"
CHAT, COMPLETIONS, EMBEDDINGS = "chat", "completions", "embeddings"
_OPENAI_PATHS = {CHAT: "/chat/completions", COMPLETIONS: "/completions", EMBEDDINGS: "/embeddings"}
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class UpstreamCall:
    url: str
    headers: dict[str, str]
    content: bytes


def sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _count(value: Any) -> int:
    """A reported count: a non-negative int, or absent/null (0); anything else is refused."""
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise ValueError("a token count is a non-negative integer")
    return value


def openai_usage(usage: Any) -> TokenUsage | None:
    """An OpenAI `usage` object as counted: prompt tokens with their cached part, completion
    tokens with their reasoning part (both already inside; never added again)."""
    if not isinstance(usage, dict) or type(usage.get("prompt_tokens")) is not int:
        return None
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    try:
        return TokenUsage(
            _count(usage["prompt_tokens"]),
            _count(usage.get("completion_tokens")),
            cache_read_tokens=_count(prompt.get("cached_tokens")) if isinstance(prompt, dict) else 0,
            reasoning_tokens=_count(completion.get("reasoning_tokens")) if isinstance(completion, dict) else 0,
        )
    except ValueError:
        return None


def anthropic_usage_of(usage: Any) -> TokenUsage | None:
    """An Anthropic `usage` object as counted (its input tokens exclude the cache's)."""
    if not isinstance(usage, dict) or type(usage.get("input_tokens")) is not int:
        return None
    creation = usage.get("cache_creation")
    details = usage.get("output_tokens_details")
    try:
        return anthropic_usage(
            _count(usage["input_tokens"]),
            _count(usage.get("output_tokens")),
            cache_read=_count(usage.get("cache_read_input_tokens")),
            cache_write=_count(usage.get("cache_creation_input_tokens")),
            cache_write_1h=_count(creation.get("ephemeral_1h_input_tokens")) if isinstance(creation, dict) else 0,
            thinking=_count(details.get("thinking_tokens")) if isinstance(details, dict) else 0,
        )
    except ValueError:
        return None


def openai_usage_json(usage: TokenUsage) -> dict[str, Any]:
    """`usage` as an OpenAI chat/completions `usage` object."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.cache_read_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    if usage.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


class StreamTranslator(Protocol):
    """Turns an upstream stream, line by line, into the client's events. It holds back the
    event that will carry the charge (`gateway.charges`) until `finish`, called once the
    request is metered (with None when nothing was charged), which returns the rest."""

    @property
    def usage(self) -> TokenUsage | None: ...

    @property
    def produced(self) -> int:
        """Content pieces passed on so far (output already produced)."""
        ...

    @property
    def finished(self) -> bool: ...

    def feed(self, line: str) -> list[bytes]: ...

    def finish(self, charge: Charge | None) -> list[bytes]: ...


class Adapter(Protocol):
    def call(self, endpoint: str, body: dict[str, Any], base_url: str, secret: str) -> UpstreamCall: ...

    def answer(self, endpoint: str, content: bytes, model: str) -> tuple[bytes, TokenUsage]: ...

    def translator(self, endpoint: str, model: str, include_usage: bool) -> StreamTranslator: ...

    def probe(self, base_url: str, secret: str, model: str) -> UpstreamCall: ...


class MissingUsage(Exception):
    """An upstream answer without usage numbers: it cannot be metered."""


def read_answer(content: bytes, usage_of: Callable[[Any], TokenUsage | None]) -> tuple[dict[str, Any], TokenUsage]:
    """An upstream answer's JSON object and its usage (read by `usage_of`), or MissingUsage."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise MissingUsage("the upstream answer is not JSON") from None
    usage = usage_of(body.get("usage")) if isinstance(body, dict) else None
    if usage is None:
        raise MissingUsage("the upstream answer has no usage")
    return body, usage


def anthropic_call(base_url: str, secret: str, body: dict[str, Any]) -> UpstreamCall:
    """A Messages API request to an Anthropic lot."""
    headers = {"x-api-key": secret, "anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
    return UpstreamCall(base_url.rstrip("/") + "/messages", headers, orjson.dumps(body))


class ChatTranslation:
    """Base of the translators that turn chat completion chunks into another API's events
    (the Messages and Responses APIs served by chat completions): the inner translator
    (which always includes usage) meters; a subclass reads each chunk (`chunk`) and adds
    the events that end the stream once it is metered (`end`), through `emit`."""

    def __init__(self, inner: StreamTranslator) -> None:
        self.inner = inner
        self._events: list[bytes] = []

    @property
    def usage(self) -> TokenUsage | None:
        return self.inner.usage

    @property
    def produced(self) -> int:
        return self.inner.produced

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def emit(self, kind: str, event: dict[str, Any]) -> None:
        """One SSE event, named and serialized at once (its objects may change after)."""
        self._events.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")

    def chunk(self, chunk: dict[str, Any]) -> None:
        raise NotImplementedError

    def end(self, charge: Charge | None) -> None:
        raise NotImplementedError

    def _read(self, frames: list[bytes]) -> list[bytes]:
        for raw in frames:
            if raw.startswith(b"data: {"):
                self.chunk(orjson.loads(raw[6:]))
        out, self._events = self._events, []
        return out

    def feed(self, line: str) -> list[bytes]:
        return self._read(self.inner.feed(line))

    def finish(self, charge: Charge | None) -> list[bytes]:
        self._read(self.inner.finish(None))
        if self.inner.finished:
            self.end(charge)
        return self._read([])


# ─── OpenAI-compatible ───────────────────────────────────────────────────────


def _finishes(chunk: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and c.get("finish_reason") for c in chunk.get("choices") or ())


class OpenAIStream:
    """Chunks pass through as sent, but the one that carries the charge is held until the
    end: the usage chunk when the client asked for usage, else the chunk that finishes the
    choice (the last with choices). Usage chunks the client did not ask for are dropped
    (the gateway asks the upstream for them, to meter exactly)."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage: TokenUsage | None = None
        self.produced = 0
        self.finished = False
        self._held: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None  # the last chunk with choices passed on

    def feed(self, line: str) -> list[bytes]:
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.finished = True
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(chunk, dict):
            return []
        usage = openai_usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if (isinstance(delta, dict) and delta.get("content")) or (isinstance(choice, dict) and choice.get("text")):
                self.produced += 1
        stripped = not self.include_usage and "usage" in chunk
        if stripped:
            if not chunk.get("choices"):
                return []
            del chunk["usage"]
        if chunk.get("choices"):
            self._last = chunk
        if usage is not None if self.include_usage else _finishes(chunk):
            out = self._release(None)
            self._held = chunk
            return out
        return [sse(chunk) if stripped else b"data: " + data.encode() + b"\n\n"]

    def _release(self, charge: Charge | None) -> list[bytes]:
        held, self._held = self._held, None
        if held is None and charge is not None and self._last is not None and not self.include_usage:
            # An upstream that never finished its choice: one empty chunk with a choice carries it.
            choice = self._last["choices"][0]
            empty: dict[str, Any] = {"delta": {}} if isinstance(choice, dict) and "delta" in choice else {"text": ""}
            held = {**self._last, "choices": [{"index": 0, **empty, "finish_reason": None}]}
        if held is None:
            return []
        if charge is not None:
            held[FIELD] = charge.fields()
        return [sse(held)]

    def finish(self, charge: Charge | None) -> list[bytes]:
        return [*self._release(charge), *([_DONE] if self.finished else [])]


class OpenAIAdapter:
    def call(self, endpoint: str, body: dict[str, Any], base_url: str, secret: str) -> UpstreamCall:
        if body.get("stream"):
            options = body.get("stream_options")
            body = {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}
        return UpstreamCall(
            base_url.rstrip("/") + _OPENAI_PATHS[endpoint],
            {"authorization": f"Bearer {secret}", "content-type": "application/json"},
            orjson.dumps(body),
        )

    def answer(self, endpoint: str, content: bytes, model: str) -> tuple[bytes, TokenUsage]:
        return content, read_answer(content, openai_usage)[1]

    def translator(self, endpoint: str, model: str, include_usage: bool) -> StreamTranslator:
        return OpenAIStream(include_usage)

    def probe(self, base_url: str, secret: str, model: str) -> UpstreamCall:
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        return self.call(CHAT, body, base_url, secret)


# ─── Anthropic Messages API ──────────────────────────────────────────────────

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


_UNTRANSLATED_PARAMS = ("tools", "tool_choice", "functions", "function_call", "response_format")


def check_anthropic_translatable(endpoint: str, body: dict[str, Any]) -> None:
    """400 for what the Anthropic translation does not cover (it is text only), rather than
    dropping it and answering something else than was asked: tools and function calls,
    structured output, and content parts other than text (images, audio, files)."""
    if endpoint == EMBEDDINGS:
        raise bad_request("This model does not serve embeddings.", param="model")
    for name in _UNTRANSLATED_PARAMS:
        if body.get(name):
            raise bad_request(
                f"'{name}' is not supported for this model through this gateway yet (its Anthropic translation "
                "is text only).",
                param=name,
            )
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            raise bad_request(
                f"Invalid 'messages[{i}]': tool and function messages are not supported for this model yet.",
                param="messages",
            )
        content = message.get("content")
        if isinstance(content, list) and any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise bad_request(
                f"Invalid 'messages[{i}].content': only text parts are supported for this model yet.",
                param="messages",
            )


def anthropic_body(endpoint: str, body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    # The gateway checks check_anthropic_translatable once, before the hold (service.py).
    if endpoint == EMBEDDINGS:
        raise bad_request("This model does not serve embeddings.", param="model")
    if endpoint == COMPLETIONS:
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else "".join(map(str, prompt or []))
        messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
        system: list[str] = []
    else:
        system = []
        messages = []
        for message in body["messages"]:
            role = message.get("role")
            if role in ("system", "developer"):
                system.append(_text(message.get("content")))
            else:
                messages.append(
                    {
                        "role": "assistant" if role == "assistant" else "user",
                        "content": message.get("content") if isinstance(message.get("content"), (str, list)) else "",
                    }
                )
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or default_max_tokens,
    }
    if system:
        out["system"] = "\n\n".join(system)
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    return out


class AnthropicStream:
    def __init__(self, endpoint: str, model: str, include_usage: bool) -> None:
        self.endpoint = endpoint
        self.include_usage = include_usage
        self.usage: TokenUsage | None = None
        self.produced = 0
        self.finished = False
        self._reported: dict[str, Any] = {}  # Anthropic's usage numbers so far (each event may update some)
        self._finish: str | None = None
        self._base: dict[str, Any] = {
            "id": "chatcmpl-anthropic",
            "object": "chat.completion.chunk" if endpoint == CHAT else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def _choice_chunk(self, delta: dict[str, Any] | None, text: str | None, finish: str | None) -> dict[str, Any]:
        if self.endpoint == CHAT:
            choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
        return {**self._base, "choices": [choice]}

    def _chunk(self, delta: dict[str, Any] | None, text: str | None, finish: str | None) -> bytes:
        return sse(self._choice_chunk(delta, text, finish))

    def feed(self, line: str) -> list[bytes]:
        if not line.startswith("data:"):
            return []
        try:
            event = orjson.loads(line[5:].strip())
        except orjson.JSONDecodeError:
            return []
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._base["id"] = "chatcmpl-" + str(message.get("id", "anthropic"))
            self._update(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""}, "", None)] if self.endpoint == CHAT else []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                self.produced += 1
                return [self._chunk({"content": delta["text"]}, delta["text"], None)]
            return []
        if kind == "message_delta":
            self._update(event.get("usage"))
            reason = (event.get("delta") or {}).get("stop_reason")
            self._finish = _FINISH.get(str(reason), "stop")
            return []
        if kind == "message_stop":
            self.finished = True  # the finishing chunk (and the usage chunk) wait for the charge
        return []

    def finish(self, charge: Charge | None) -> list[bytes]:
        if not self.finished:
            return []
        last = self._choice_chunk({}, "", self._finish or "stop")
        tail = [last]
        if self.include_usage and self.usage is not None:
            last = {**self._base, "choices": [], "usage": openai_usage_json(self.usage)}
            tail.append(last)
        if charge is not None:
            last[FIELD] = charge.fields()
        return [*(sse(chunk) for chunk in tail), _DONE]

    def _update(self, usage: Any) -> None:
        """message_start reports the input (and the cache's) numbers, message_delta the
        output so far (and, in newer versions, the input's again): the latest of each counts."""
        if not isinstance(usage, dict):
            return
        self._reported.update({k: v for k, v in usage.items() if v is not None})
        self.usage = anthropic_usage_of(self._reported) or self.usage


class AnthropicAdapter:
    def __init__(self, default_max_tokens: int = 4096) -> None:
        self.default_max_tokens = default_max_tokens

    def call(self, endpoint: str, body: dict[str, Any], base_url: str, secret: str) -> UpstreamCall:
        return anthropic_call(base_url, secret, anthropic_body(endpoint, body, self.default_max_tokens))

    def answer(self, endpoint: str, content: bytes, model: str) -> tuple[bytes, TokenUsage]:
        body, usage = read_answer(content, anthropic_usage_of)
        text = _text(body.get("content"))
        finish = _FINISH.get(str(body.get("stop_reason")), "stop")
        usage_body = openai_usage_json(usage)
        common = {"id": "chatcmpl-" + str(body.get("id", "")), "created": int(time.time()), "model": model}
        if endpoint == CHAT:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            out = {**common, "object": "chat.completion", "choices": [choice], "usage": usage_body}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            out = {**common, "object": "text_completion", "choices": [choice], "usage": usage_body}
        return orjson.dumps(out), usage

    def translator(self, endpoint: str, model: str, include_usage: bool) -> StreamTranslator:
        return AnthropicStream(endpoint, model, include_usage)

    def probe(self, base_url: str, secret: str, model: str) -> UpstreamCall:
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        return self.call(CHAT, body, base_url, secret)


def adapter_for(api: str, default_max_tokens: int = 4096) -> Adapter:
    if api == "openai":
        return OpenAIAdapter()
    if api == "anthropic":
        return AnthropicAdapter(default_max_tokens)
    raise ValueError(f"unknown upstream API {api!r} (openai or anthropic)")
