"""Upstream adapters: how one OpenAI-shaped request is sent to a provider's API and how
its answer (and its usage) comes back in OpenAI's shapes.

- `OpenAIAdapter`: any OpenAI-compatible API; bodies pass through, streaming requests
  get `stream_options.include_usage` forced on so every request is metered exactly.
- `AnthropicAdapter`: the Messages API; system messages become the `system` field,
  streaming events become chat.completion.chunk objects, input_tokens/output_tokens
  become prompt_tokens/completion_tokens.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import orjson

from promptex.gateway.charges import FIELD, Charge
from promptex.gateway.errors import bad_request
from promptex.metering import TokenUsage, anthropic_usage
from promptex.metering.produced import ANSWER_FRAME_BYTES, event_bytes, read_json, visible_bytes
from promptex.metering.produced import CHAT as CHAT
from promptex.metering.produced import COMPLETIONS as COMPLETIONS
from promptex.metering.produced import EMBEDDINGS as EMBEDDINGS

ANTHROPIC_VERSION = "2023-06-01"
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
    tokens with their reasoning part (both already inside; never added again), and the
    prompt cache's writes inside the prompt tokens as LiteLLM shows an Anthropic model's
    (and the gateway an Anthropic lot's, `openai_usage_json`):
    `prompt_tokens_details.cache_creation_tokens`, the one-hour part in its
    `cache_creation_token_details.ephemeral_1h_input_tokens`. One reading for the gateway's
    metering (an OpenAI-compatible upstream's writes charged at the write rates, as an
    Anthropic lot's) and the buyer's answer check (which bounds them by the request's marks)."""
    if not isinstance(usage, dict) or type(usage.get("prompt_tokens")) is not int:
        return None
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    try:
        writes = writes_1h = 0
        if isinstance(prompt, dict):
            writes = _count(prompt.get("cache_creation_tokens"))
            split = prompt.get("cache_creation_token_details")
            writes_1h = _count(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else 0
        return TokenUsage(
            _count(usage["prompt_tokens"]),
            _count(usage.get("completion_tokens")),
            cache_read_tokens=_count(prompt.get("cached_tokens")) if isinstance(prompt, dict) else 0,
            cache_write_tokens=writes,
            cache_write_1h_tokens=writes_1h,
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


CACHE_CONTROL = "cache_control"
_CACHE_CONTROL_KEY = f'"{CACHE_CONTROL}"'.encode()


def may_write_cache(raw: bytes, body: Any) -> bool:
    """Whether a request's hold is priced at the prompt cache's write rates: its body names
    `cache_control` as a key. Read from the raw bytes (a mention anywhere only makes the hold
    larger; inside a string the quotes are escaped and do not match), and, when the body
    escapes characters (`\\u`), from the body as parsed and sent on: a key written
    `"cache\\u005fcontrol"` is the same key once parsed, reaches the upstream as a real mark
    and has its writes charged (`within_marks`). Before, its hold was priced at the input
    rate, the charge capped at that hold (half the shown usage's cost for an hour's writes),
    and the usage record drew the lot the whole writes' list value."""
    if _CACHE_CONTROL_KEY in raw:
        return True
    return b"\\u" in raw and _CACHE_CONTROL_KEY in orjson.dumps(body)


class CacheMarks(NamedTuple):
    """What a request body marks for the prompt cache (`cache_marks`)."""

    marked: bool  # any mark
    hour: bool  # any mark asks an hour's lifetime (`"ttl": "1h"`)
    # Upper bounds of the prompt's tokens up to the last mark (the most a provider can write
    # to its cache: only the prefix a mark ends), and up to the last hour's mark; None: the
    # whole prompt (Anthropic's top-level automatic caching, or no mark of the kind).
    prefix: int | None = None
    prefix_1h: int | None = None


def _mark(item: Any) -> tuple[bool, bool]:
    mark = item.get(CACHE_CONTROL) if isinstance(item, dict) else None
    return isinstance(mark, dict), isinstance(mark, dict) and mark.get("ttl") == "1h"


def _part_size(part: Any) -> tuple[int, bool, bool]:
    """A content block's bound (its JSON's bytes, an image's tokens beyond them) and whether
    it, or a block inside it (a tool result's content), is marked, and for an hour."""
    from promptex.gateway.messages import IMAGE_TOKENS
    from promptex.gateway.requests import CHAT_IMAGE_TOKENS

    images = {"image": IMAGE_TOKENS, "image_url": CHAT_IMAGE_TOKENS}  # as each API's input bound holds them
    size = len(orjson.dumps(part))
    marked, hour = _mark(part)
    inner = part.get("content") if isinstance(part, dict) else None
    for item in [part, *(inner if isinstance(inner, list) else ())]:
        if isinstance(item, dict):
            size += images.get(str(item.get("type")), 0)
        if item is not part:
            m, h = _mark(item)
            marked, hour = marked or m, hour or h
    return size, marked, hour


def cache_marks(body: Any) -> CacheMarks:
    """Where a request body marks its prompt for the cache: a `cache_control` object where a
    provider reads one (the body's top level, a tool, a system block, a message (LiteLLM's), a
    content block or a tool result's block), not any object so named (a tool's parameter, a
    tool call's input, metadata: before, one there let writes be charged for a request that
    marked nothing). The prompt is read in the order a provider caches it (tools, system,
    messages; a chat request's system messages, lifted to the front, count before any), and
    each mark bounds the prefix it ends by the request's own input bound for it (bytes as
    tokens, images and the tools' and format's prompts as `gateway.messages` holds them)."""
    from promptex.gateway.messages import TOOLS_TOKENS
    from promptex.gateway.requests import PER_MESSAGE, PER_REQUEST, PROMPT_FIELDS_FRAME

    if not isinstance(body, dict):
        return CacheMarks(False, False)
    given_tools, system, given_messages = body.get("tools"), body.get("system"), body.get("messages")
    tools: list[Any] = given_tools if isinstance(given_tools, list) else []
    messages: list[Any] = given_messages if isinstance(given_messages, list) else []
    lifted = [m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")]
    fields = [body.get(name) for name in ("tool_choice", "output_config", "response_format")]
    total = PER_REQUEST + PROMPT_FIELDS_FRAME + len(orjson.dumps([fields, lifted]))
    total += (TOOLS_TOKENS if tools else 0) + (TOOLS_TOKENS if any(fields[1:]) else 0)
    total += len(orjson.dumps(system)) if not isinstance(system, list) else 0
    marked, hour = _mark(body)  # automatic caching: the whole prompt
    prefix = prefix_1h = None
    last = last_1h = -1

    def seen(size: int, mark: tuple[bool, bool]) -> None:
        nonlocal total, last, last_1h
        total += size
        last = total if mark[0] else last
        last_1h = total if mark[1] else last_1h

    for tool in tools:
        seen(len(orjson.dumps(tool)), _mark(tool))
    for block in system if isinstance(system, list) else ():
        size, m, h = _part_size(block)
        seen(size, (m, h))
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if message.get("role") in ("system", "developer"):
            for part in content if isinstance(content, list) else ():  # counted in `lifted`
                seen(0, _part_size(part)[1:])
            seen(0, _mark(message))
            continue
        rest = {k: v for k, v in message.items() if k != "content"}
        seen(PER_MESSAGE + len(orjson.dumps(rest)), (False, False))
        if isinstance(content, list):
            for part in content:
                size, m, h = _part_size(part)
                seen(size, (m, h))
        else:
            seen(len(orjson.dumps(content)), (False, False))
        seen(0, _mark(message))
    if not marked:
        prefix = last if last >= 0 else None
        prefix_1h = last_1h if last_1h >= 0 else None
    any_mark = marked or last >= 0
    return CacheMarks(any_mark, hour or last_1h >= 0, prefix, None if hour else prefix_1h)


def within_marks(usage: TokenUsage, sent: Any) -> TokenUsage:
    """`usage` as a request whose upstream body was `sent` can have used it: a provider writes
    to its prompt cache only what a request marks (`cache_marks`), for an hour only what it
    marks so, and no more than the prefix its last mark (hour's mark) ends. Writes reported
    beyond that (a mistaken or lying upstream, or a router that adds marks of its own) are
    charged as what the request asked: unmarked, as plain input; an hour's beyond an hour's
    marks, as five-minute writes. Before, the gateway charged them at the write rates (up to
    2x the input rate, capped only at the hold) — for a request whose one mark ended a short
    system prompt, every input token — and only a buyer behind the signing proxy (which
    refuses such answers) was not overcharged. The body is walked only when writes are reported."""
    if not usage.cache_write_tokens:
        return usage
    marks = cache_marks(sent)
    if not marks.marked:
        return dataclasses.replace(usage, cache_write_tokens=0, cache_write_1h_tokens=0)
    writes = usage.cache_write_tokens if marks.prefix is None else min(usage.cache_write_tokens, marks.prefix)
    hour = usage.cache_write_1h_tokens if marks.hour else 0
    hour = min(hour, writes, *(() if marks.prefix_1h is None else (marks.prefix_1h,)))
    if (writes, hour) == (usage.cache_write_tokens, usage.cache_write_1h_tokens):
        return usage
    return dataclasses.replace(usage, cache_write_tokens=writes, cache_write_1h_tokens=hour)


Bound = Callable[[TokenUsage, int | None], TokenUsage]
"""A request's bounds on what its answer may be charged (`Gateway.bounded`: the input its
body can hold, the output limit sent, and the visible output the answer's text can hold,
given the UTF-8 bytes the answer as its client gets it produced: `produced.visible_bytes`,
None for none countable): a usage reported beyond them, as charged."""


def as_charged(reported: TokenUsage, sent: Any, bound: Bound | None, produced_bytes: int | None = None) -> TokenUsage:
    """An upstream's reported usage as charged: its cache writes within the marks of the
    body `sent` (`within_marks`), then within the request's bounds (`bound`, if given) for
    an answer of `produced_bytes`."""
    usage = within_marks(reported, sent)
    return usage if bound is None else bound(usage, produced_bytes)


def openai_usage_json(usage: TokenUsage) -> dict[str, Any]:
    """`usage` as an OpenAI chat/completions `usage` object."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.cache_read_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    if usage.cache_write_tokens:
        # Inside the prompt tokens, as LiteLLM shows an Anthropic provider's cache writes on
        # OpenAI's usage: without them the charge (writes priced above input) cannot be checked.
        five, hour = usage.cache_write_5m_tokens, usage.cache_write_1h_tokens
        out.setdefault("prompt_tokens_details", {"cached_tokens": 0}).update(
            cache_creation_tokens=usage.cache_write_tokens,
            cache_creation_token_details={"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour},
        )
    if usage.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


_PROMPT_CACHE_FIELDS = ("cached_tokens", "cache_creation_tokens", "cache_creation_token_details")
_REASONING = ("reasoning_tokens",)


def shown_openai_usage(reported: dict[str, Any], usage: TokenUsage) -> dict[str, Any]:
    """An upstream's OpenAI `usage` object showing `usage` (what was charged) instead: its
    counts and its cache's fields as charged (a cache write it reported and was not charged
    for no longer shows), its reasoning as charged (an embedding's reported reasoning stayed
    beside the 0 output charged: a usage no one can read), its other fields (e.g. audio or
    prediction tokens) kept."""
    fresh = openai_usage_json(usage)
    shown = {**reported, **fresh}
    for name, replaced in (("prompt_tokens_details", _PROMPT_CACHE_FIELDS), ("completion_tokens_details", _REASONING)):
        details = reported.get(name)
        if isinstance(details, dict):
            kept = {k: v for k, v in details.items() if k not in replaced}
            shown[name] = {**kept, **fresh.get(name, {})}
    return shown


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
    def produced_bytes(self) -> int:
        """The UTF-8 bytes of text the events passed on (and those held for the end) produced,
        framed once, as the signing proxy's stream reader counts them (`shown_bytes`,
        `buyerside.signer.StreamWatch.produced`): the visible output the stream is charged
        at most (`Gateway.bounded`)."""
        ...

    @property
    def finished(self) -> bool: ...

    def feed(self, line: str) -> list[bytes]: ...

    def finish(self, charge: Charge | None) -> list[bytes]: ...


@runtime_checkable
class ShowsCharged(Protocol):
    """A translator told the usage the gateway charged (`charged`, before `finish`): a stream
    whose upstream reported no usage (or was cut short) is charged a floor of its own, and
    the client that asked for usage gets that, on the event that carries the charge."""

    def charged(self, usage: TokenUsage) -> None: ...


class Adapter(Protocol):
    """How one request is sent to a lot and read back: `call`, then `answer` or `translator`
    (an adapter serves one request: its usage is read against the body `call` sent,
    `within_marks`)."""

    def call(self, endpoint: str, body: dict[str, Any], base_url: str, secret: str) -> UpstreamCall: ...

    def answer(self, endpoint: str, content: bytes, model: str, bound: Bound | None = None) -> tuple[bytes, TokenUsage]:
        """The answer as the client gets it, and its usage as charged (`as_charged`): the
        answer's usage shows that, not what the upstream reported."""
        ...

    def translator(
        self, endpoint: str, model: str, include_usage: bool, bound: Bound | None = None
    ) -> StreamTranslator:
        """The stream's translator; `bound` (the request's, as `answer` gets it) for one that
        shows usage before the stream ends (a native Messages stream's message_start): the
        charge at the end is bounded by the gateway."""
        ...

    def probe(self, base_url: str, secret: str, model: str) -> UpstreamCall: ...


def shown_bytes(event: Any) -> int:
    """What an event passed on produced (`produced.event_bytes`); 0 for one of a shape the
    signing proxy cannot read either (it skips it: e.g. `choices` a number)."""
    try:
        return event_bytes(event)
    except (TypeError, ValueError, AttributeError):
        return 0


class MissingUsage(Exception):
    """An upstream answer without usage numbers: it cannot be metered."""


class ViaChat:
    """An adapter for a request of another API (`endpoint`) that `inner`, the lot's adapter,
    serves as chat completions: sent translated (`chat_body`), its answer translated back
    (`answer_of`) and bounded by what that shows — its text or output items, not the chat
    answer's parts — its usage shown as charged (`usage_json`). /v1/messages to an
    OpenAI-API lot (`messages.ToChatAdapter`), /v1/responses to any (`responses.ToChatAdapter`);
    each has its own stream translator."""

    endpoint = ""

    def __init__(self, inner: Adapter, output: int) -> None:
        self.inner = inner
        self.output = output

    def chat_body(self, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def answer_of(self, chat: dict[str, Any], usage: TokenUsage, model: str) -> dict[str, Any]:
        raise NotImplementedError

    def usage_json(self, usage: TokenUsage) -> dict[str, Any]:
        raise NotImplementedError

    def call(self, endpoint: str, body: dict[str, Any], base_url: str, secret: str) -> UpstreamCall:
        return self.inner.call(CHAT, self.chat_body(body), base_url, secret)

    def answer(self, endpoint: str, content: bytes, model: str, bound: Bound | None = None) -> tuple[bytes, TokenUsage]:
        chat, usage = self.inner.answer(CHAT, content, model)
        out = self.answer_of(read_json(chat), usage, model)
        if bound is not None:
            usage = bound(usage, visible_bytes(self.endpoint, out))
            out["usage"] = self.usage_json(usage)
        return orjson.dumps(out), usage

    def probe(self, base_url: str, secret: str, model: str) -> UpstreamCall:
        return self.inner.probe(base_url, secret, model)


def read_answer(content: bytes, usage_of: Callable[[Any], TokenUsage | None]) -> tuple[dict[str, Any], TokenUsage]:
    """An upstream answer's JSON object and its usage (read by `usage_of`), or MissingUsage."""
    try:
        body = read_json(content)
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
    the events that end the stream once it is metered (`end`), through `emit` — also for a
    stream cut short that was charged (`finished` False), so that its charge is shown."""

    def __init__(self, inner: StreamTranslator) -> None:
        self.inner = inner
        self._events: list[bytes] = []
        self._charged: TokenUsage | None = None
        self._bytes = 0  # produced by the events emitted (`shown_bytes`)

    @property
    def usage(self) -> TokenUsage | None:
        """What the inner translator read; once metered (`charged`), what was charged."""
        return self._charged if self._charged is not None else self.inner.usage

    @property
    def produced(self) -> int:
        return self.inner.produced

    @property
    def produced_bytes(self) -> int:
        """What its own events produced (not the inner chunks': their parts it does not
        translate never reach the client), framed once."""
        return self._bytes + ANSWER_FRAME_BYTES

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def emit(self, kind: str, event: dict[str, Any]) -> None:
        """One SSE event, named and serialized at once (its objects may change after)."""
        self._bytes += shown_bytes(event)
        self._events.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")

    def chunk(self, chunk: dict[str, Any]) -> None:
        raise NotImplementedError

    def end(self, charge: Charge | None) -> None:
        raise NotImplementedError

    def _read(self, frames: list[bytes]) -> list[bytes]:
        for raw in frames:
            if raw.startswith(b"data: {"):
                self.chunk(read_json(raw[6:]))
        out, self._events = self._events, []
        return out

    def feed(self, line: str) -> list[bytes]:
        return self._read(self.inner.feed(line))

    def charged(self, usage: TokenUsage) -> None:
        self._charged = usage  # `end` shows it

    def finish(self, charge: Charge | None) -> list[bytes]:
        self._read(self.inner.finish(None))
        if self.inner.finished or charge is not None:
            self.end(charge)
        return self._read([])


# ─── OpenAI-compatible ───────────────────────────────────────────────────────


def finishes_choice(chunk: dict[str, Any]) -> bool:
    """Whether a chat chunk finishes its choice: for a client that asked no usage, the chunk
    the gateway holds to the end and puts the cost field on (`OpenAIStream`); the buyer's
    side reads the same chunk by this rule (`buyerside.signer.StreamWatch`)."""
    choices = chunk.get("choices")
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


class OpenAIStream:
    """Chunks pass through as sent, but the one that carries the charge is held until the
    end: the usage chunk when the client asked for usage, else the chunk that finishes the
    choice (the last with choices). Usage chunks the client did not ask for are dropped
    (the gateway asks the upstream for them, to meter exactly)."""

    def __init__(self, include_usage: bool, sent: Any = None) -> None:
        self.include_usage = include_usage
        self.sent = sent  # the body sent upstream (its cache marks bound the writes charged)
        self.usage: TokenUsage | None = None  # as charged from what was reported (`within_marks`)
        self._reported: TokenUsage | None = None  # as the upstream reported it
        self.produced = 0
        self.finished = False
        self._bytes = 0  # produced by the chunks passed on (`shown_bytes`)
        self._held: dict[str, Any] | None = None
        self._held_bytes = 0  # and by the one held
        self._last: dict[str, Any] | None = None  # the last chunk with choices passed on
        self._shell: dict[str, Any] | None = None  # the first chunk's id, object, created and model
        self._charged: TokenUsage | None = None  # the usage the gateway charged (`charged`)

    def feed(self, line: str) -> list[bytes]:
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.finished = True
            return []
        try:
            chunk = read_json(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(chunk, dict):
            return []
        if self._shell is None:
            self._shell = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        usage = openai_usage(chunk.get("usage"))
        if usage is not None:
            self._reported, self.usage = usage, within_marks(usage, self.sent)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if (isinstance(delta, dict) and delta.get("content")) or (isinstance(choice, dict) and choice.get("text")):
                self.produced += 1
        # A usage the gateway did not count (unreadable: a count not a non-negative integer,
        # a part beyond its whole) is not shown either: passed on, it reached clients and the
        # signing proxy (which merges a stream's usage objects) beside the one charged, and
        # made an honest charge look wrong.
        uncounted = usage is None and chunk.get("usage") is not None
        stripped = (not self.include_usage or uncounted) and "usage" in chunk
        if stripped:
            if not chunk.get("choices"):
                return []
            del chunk["usage"]
        # What the signing proxy counts of it: not a usage chunk without choices, which it
        # keeps from a client that asked no usage (`StreamWatch`).
        counted = 0 if "usage" in chunk and not chunk.get("choices") else shown_bytes(chunk)
        if chunk.get("choices"):
            self._last = chunk
        if usage is not None if self.include_usage else finishes_choice(chunk):
            out = self._superseded() if self.include_usage else self._release(None)
            self._held, self._held_bytes = chunk, counted
            return out
        self._bytes += counted
        return [sse(chunk) if stripped else b"data: " + data.encode() + b"\n\n"]

    @property
    def produced_bytes(self) -> int:
        return self._bytes + self._held_bytes + ANSWER_FRAME_BYTES

    def charged(self, usage: TokenUsage) -> None:
        self._charged = usage

    def _superseded(self) -> list[bytes]:
        """The usage chunk held, once a later one replaces it (an upstream that reported its
        usage twice, or in parts): the gateway meters the last, and so the client sees only
        that one — before, both reached it, and the signing proxy (which merges a stream's
        usage objects) read fields of the first that the charge did not have. Its choices,
        if it had any, are passed on."""
        held, self._held = self._held, None
        counted, self._held_bytes = self._held_bytes, 0
        if held is None or not held.get("choices"):
            return []
        del held["usage"]
        self._bytes += counted
        return [sse(held)]

    def _release(self, charge: Charge | None) -> list[bytes]:
        held, self._held = self._held, None
        self._bytes, self._held_bytes = self._bytes + self._held_bytes, 0
        if held is None and charge is not None and self._last is not None and not self.include_usage:
            # An upstream that never finished its choice: one empty chunk with a choice carries it.
            choice = self._last["choices"][0]
            empty: dict[str, Any] = {"delta": {}} if isinstance(choice, dict) and "delta" in choice else {"text": ""}
            held = {**self._last, "choices": [{"index": 0, **empty, "finish_reason": None}]}
        elif held is None and charge is not None and self._shell is not None and not self.include_usage:
            # No choice ever came (only usage chunks, kept from a client that asked none): the
            # charge went unseen. One chunk with an empty choice, in the first chunk's frame.
            empty = {"text": ""} if self._shell.get("object") == "text_completion" else {"delta": {}}
            held = {**self._shell, "choices": [{"index": 0, **empty, "finish_reason": None}]}
        charged = self._charged
        if self.include_usage and charge is not None and charged is not None and charged != self._reported:
            # Charged other than reported: no usage chunk (an upstream that ignored
            # stream_options, or broke off), cut short (its output counted as streamed), or
            # cache writes beyond the request's marks (`within_marks`). The usage chunk shows
            # what was charged, its cost on it as always.
            if held is None and self._last is not None:
                held = {k: v for k, v in self._last.items() if k not in ("choices", "usage")}
                held["choices"] = []
            if held is not None:
                reported = held.get("usage")
                held["usage"] = shown_openai_usage(reported if isinstance(reported, dict) else {}, charged)
        if held is None:
            return []
        if charge is not None:
            held[FIELD] = charge.fields()
        return [sse(held)]

    def finish(self, charge: Charge | None) -> list[bytes]:
        return [*self._release(charge), *([_DONE] if self.finished else [])]


class OpenAIAdapter:
    def __init__(self) -> None:
        self.sent: Any = None  # the body `call` sent (`within_marks`)

    def call(self, endpoint: str, body: dict[str, Any], base_url: str, secret: str) -> UpstreamCall:
        if body.get("stream"):
            options = body.get("stream_options")
            body = {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}
        self.sent = body
        return UpstreamCall(
            base_url.rstrip("/") + _OPENAI_PATHS[endpoint],
            {"authorization": f"Bearer {secret}", "content-type": "application/json"},
            orjson.dumps(body),
        )

    def answer(self, endpoint: str, content: bytes, model: str, bound: Bound | None = None) -> tuple[bytes, TokenUsage]:
        body, reported = read_answer(content, openai_usage)
        usage = as_charged(reported, self.sent, bound, None if bound is None else visible_bytes(endpoint, body))
        if usage is reported or usage == reported:
            return content, usage  # as sent (the common case: not parsed again nor compared field by field)
        # Charged other than reported (writes beyond the marks, counts beyond the bounds):
        # the answer shows what was charged, which the buyer (and the signing proxy) can check.
        return orjson.dumps({**body, "usage": shown_openai_usage(body["usage"], usage)}), usage

    def translator(
        self, endpoint: str, model: str, include_usage: bool, bound: Bound | None = None
    ) -> StreamTranslator:
        return OpenAIStream(include_usage, self.sent)

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


def _marked_parts(content: Any) -> bool:
    """Whether a message's content parts mark any for the prompt cache."""
    parts = content if isinstance(content, list) else []
    return any(isinstance(p, dict) and isinstance(p.get(CACHE_CONTROL), dict) for p in parts)


def _system_blocks(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A chat request's system messages as the Messages API's system text blocks, each part's
    cache mark kept: joined into one string, a buyer's `cache_control` on a system part never
    reached the Anthropic lot (no cache, none of its savings). Empty texts are left out
    (Anthropic refuses an empty text block)."""
    blocks: list[dict[str, Any]] = []
    for message in chat:
        if message.get("role") not in ("system", "developer"):
            continue
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": _text(content)}]
        for part in parts:
            if isinstance(part, dict) and part.get("type") == "text" and part.get("text"):
                mark = part.get(CACHE_CONTROL)
                blocks.append({"type": "text", "text": str(part["text"]), **({CACHE_CONTROL: mark} if mark else {})})
    return blocks


def anthropic_body(endpoint: str, body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    # The gateway checks check_anthropic_translatable once, before the hold (service.py).
    if endpoint == EMBEDDINGS:
        raise bad_request("This model does not serve embeddings.", param="model")
    marked = False  # a system message marks a part for the prompt cache
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
                marked = marked or _marked_parts(message.get("content"))
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
        out["system"] = _system_blocks(body["messages"]) if marked else "\n\n".join(system)
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
    def __init__(self, endpoint: str, model: str, include_usage: bool, sent: Any = None) -> None:
        self.endpoint = endpoint
        self.include_usage = include_usage
        self.sent = sent  # the body sent upstream (`within_marks`)
        self.usage: TokenUsage | None = None
        self.produced = 0
        self.finished = False
        self._bytes = 0  # produced by the chunks passed on (`shown_bytes`)
        self._reported: dict[str, Any] = {}  # Anthropic's usage numbers so far (each event may update some)
        self._charged: TokenUsage | None = None  # the usage the gateway charged (`charged`)
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
        chunk = self._choice_chunk(delta, text, finish)
        self._bytes += shown_bytes(chunk)
        return sse(chunk)

    @property
    def produced_bytes(self) -> int:
        """Its text chunks' (the chunks `finish` adds carry none), framed once."""
        return self._bytes + ANSWER_FRAME_BYTES

    def feed(self, line: str) -> list[bytes]:
        if not line.startswith("data:"):
            return []
        try:
            event = read_json(line[5:].strip())
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

    def charged(self, usage: TokenUsage) -> None:
        self._charged = usage

    def finish(self, charge: Charge | None) -> list[bytes]:
        # Cut short but charged: its charge (and the usage charged, when asked) on a last chunk
        # with no finish reason and no [DONE], as `OpenAIStream` ends one. Before, nothing
        # followed the last text: the client that asked for usage never saw what it was
        # charged (nor the signing proxy a charge to check). Also one that never sent its
        # message_start (text or usage without one: a charge no event showed; a stream with
        # neither is not charged, `Gateway.stream_done`).
        cut = not self.finished and charge is not None
        if not self.finished and not cut:
            return []
        last = self._choice_chunk({}, "", None if cut else self._finish or "stop")
        tail = [last]
        usage = self._charged if charge is not None and self._charged is not None else self.usage
        if self.include_usage and usage is not None:
            last = {**self._base, "choices": [], "usage": openai_usage_json(usage)}
            tail = [last] if cut else [*tail, last]
        if charge is not None:
            last[FIELD] = charge.fields()
        return [*(sse(chunk) for chunk in tail), *(() if cut else (_DONE,))]

    def _update(self, usage: Any) -> None:
        """message_start reports the input (and the cache's) numbers, message_delta the
        output so far (and, in newer versions, the input's again): the latest of each counts."""
        if not isinstance(usage, dict):
            return
        self._reported.update({k: v for k, v in usage.items() if v is not None})
        reported = anthropic_usage_of(self._reported)
        self.usage = within_marks(reported, self.sent) if reported is not None else self.usage


class AnthropicAdapter:
    def __init__(self, default_max_tokens: int = 4096) -> None:
        self.default_max_tokens = default_max_tokens
        self.sent: Any = None  # the body `call` sent (`within_marks`)

    def call(self, endpoint: str, body: dict[str, Any], base_url: str, secret: str) -> UpstreamCall:
        self.sent = anthropic_body(endpoint, body, self.default_max_tokens)
        return anthropic_call(base_url, secret, self.sent)

    def answer(self, endpoint: str, content: bytes, model: str, bound: Bound | None = None) -> tuple[bytes, TokenUsage]:
        body, reported = read_answer(content, anthropic_usage_of)
        text = _text(body.get("content"))
        finish = _FINISH.get(str(body.get("stop_reason")), "stop")
        common = {"id": "chatcmpl-" + str(body.get("id", "")), "created": int(time.time()), "model": model}
        if endpoint == CHAT:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            out = {**common, "object": "chat.completion", "choices": [choice]}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            out = {**common, "object": "text_completion", "choices": [choice]}
        # Bounded by what this answer shows (its text), not by the upstream's blocks.
        usage = as_charged(reported, self.sent, bound, None if bound is None else visible_bytes(endpoint, out))
        out["usage"] = openai_usage_json(usage)
        return orjson.dumps(out), usage

    def translator(
        self, endpoint: str, model: str, include_usage: bool, bound: Bound | None = None
    ) -> StreamTranslator:
        return AnthropicStream(endpoint, model, include_usage, self.sent)

    def probe(self, base_url: str, secret: str, model: str) -> UpstreamCall:
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        return self.call(CHAT, body, base_url, secret)


def adapter_for(api: str, default_max_tokens: int = 4096) -> Adapter:
    if api == "openai":
        return OpenAIAdapter()
    if api == "anthropic":
        return AnthropicAdapter(default_max_tokens)
    raise ValueError(f"unknown upstream API {api!r} (openai or anthropic)")
