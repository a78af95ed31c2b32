"""A fake model provider speaking the OpenAI and the Anthropic Messages APIs.

Text is deterministic (words from a fixed list, one token each), usage numbers are
real counts of what was sent and produced (one token per whitespace-separated word,
plus a few per message), so a test can compute the exact metered cost. Latency,
errors and misbehaviour (answers longer than asked, streams that die midway) are
injected by configuration, and so are a prompt cache and reasoning: up to
`cache_read_tokens` of each prompt are reported as read from the cache; a request that
marks its prompt (`cache_control`) has up to `cache_write_tokens` more reported as written
(`cache_write_1h_tokens` of them with a one-hour lifetime) — on the Messages API as
Anthropic reports them, on chat completions as LiteLLM shows an Anthropic model's
(`prompt_tokens_details.cache_creation_tokens`, inside the prompt tokens), and with
`cache_writes_unmarked` on every request, marked or not (a mistaken or lying upstream);
OpenAI answers report `reasoning_tokens` of their completion tokens as reasoning (inside
the completion tokens, as OpenAI counts them: the visible text is that much shorter).
An upstream that over-reports (a lying seller's endpoint) reports `extra_input_tokens` more
input than its prompt (its cache reads and writes may then take them up too) and
`extra_output_tokens` more output than it produced (its text unchanged).

    OpenAI-compatible:  POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models
    Anthropic:          POST /v1/messages   (x-api-key header, anthropic-version)
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
PER_MESSAGE_TOKENS = 3  # what a chat message costs beyond its words
DEFAULT_OUTPUT_TOKENS = 16
GATE_WAIT_SECONDS = 60  # a gated answer goes out anyway after this long (a test that failed first)
EMBEDDING_DIMENSIONS = 8


@dataclass
class FakeUpstreamConfig:
    latency_ms: float = 0.0  # before the first byte of every answer
    gate: threading.Event | None = None  # when set here, answers wait until it is set (tests: a request held in flight)
    chunk_delay_ms: float = 0.0  # between streamed chunks
    think_ms: float = 0.0  # chat streams: after the role chunk, before the first content (a model reasoning)
    output_tokens: int = DEFAULT_OUTPUT_TOKENS  # what a request without max_tokens produces
    fail_status: int | None = None  # answer this status instead of serving…
    fail_every: int = 1  # …on every Nth request (1: all of them)
    fail_trickle_ms: float = 0.0  # …its error body sent a byte at a time, this long apart (0: at once)
    fail_error: dict[str, Any] | None = None  # …with this error object (a provider's own shape) instead of ours
    serves: tuple[str, ...] | None = None  # the models the seller's key has (None: any); others 404 as the API does
    api_keys: frozenset[str] | None = None  # accepted keys; None accepts any non-empty key
    models: tuple[str, ...] = ("fake-model",)
    cache_read_tokens: int = 0  # of each prompt, reported as read from the cache
    cache_write_tokens: int = 0  # Messages API, prompts with cache_control: reported as written
    cache_write_1h_tokens: int = 0  # of those, with a one-hour lifetime
    cache_writes_unmarked: bool = False  # report the writes for requests that marked nothing too
    reasoning_tokens: int = 0  # OpenAI: of each answer's completion tokens, reported as reasoning
    extra_input_tokens: int = 0  # reported beyond the prompt's input tokens (a lying upstream)
    extra_output_tokens: int = 0  # reported beyond the output produced (a lying upstream)
    ignore_max_tokens: bool = False  # answer `output_tokens` whatever limit the request set
    die_after_chunks: int | None = None  # a stream breaks off (connection dropped) after this many words
    record_timings: bool = False  # keep when each request named by its `user` field arrived and ended (bench)
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)  # user → (received, last byte), monotonic
    requests: int = field(default=0)  # served so far (for tests)
    last_body: dict[str, Any] | None = None  # the last request's JSON body (for tests)


class UpstreamDied(Exception):
    """Raised inside a stream to drop its connection midway (`die_after_chunks`)."""


class _QuietDeaths(logging.Filter):
    """uvicorn logs an exception that ends a response as an error; a death we injected is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], UpstreamDied))


logging.getLogger("uvicorn.error").addFilter(_QuietDeaths())


def count_tokens(text: str) -> int:
    return len(text.split())


def fake_text(n: int) -> str:
    """The deterministic answer of `n` tokens."""
    return " ".join(itertools.islice(itertools.cycle(WORDS), n))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def chat_input_tokens(messages: list[Any], system: Any = None) -> int:
    total = count_tokens(_content_text(system)) + (PER_MESSAGE_TOKENS if system else 0)
    for message in messages:
        if isinstance(message, dict):
            total += PER_MESSAGE_TOKENS + count_tokens(_content_text(message.get("content")))
    return total


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    return head + b"data: " + payload + b"\n\n"


def create_fake_upstream(config: FakeUpstreamConfig | None = None) -> Starlette | _Timed:
    cfg = config or FakeUpstreamConfig()

    async def gate(request: Request, anthropic: bool) -> tuple[dict[str, Any] | None, Response | None]:
        cfg.requests += 1
        if anthropic:
            key = request.headers.get("x-api-key", "")
        else:
            auth = request.headers.get("authorization", "")
            key = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not key or (cfg.api_keys is not None and key not in cfg.api_keys):
            return None, _error(401, "invalid x-api-key" if anthropic else "Incorrect API key provided", anthropic)
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        if cfg.gate is not None:
            await asyncio.to_thread(cfg.gate.wait, GATE_WAIT_SECONDS)
        if cfg.fail_status is not None and cfg.requests % max(1, cfg.fail_every) == 0:
            if cfg.fail_error is not None:
                wrapped = {"type": "error", "error": cfg.fail_error} if anthropic else {"error": cfg.fail_error}
                failure = _json(wrapped, cfg.fail_status)
            else:
                failure = _error(cfg.fail_status, f"injected failure {cfg.fail_status}", anthropic)
            return None, _trickled(failure, cfg.fail_trickle_ms) if cfg.fail_trickle_ms else failure
        if request.method == "GET":
            return {}, None
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return None, _error(400, "invalid JSON", anthropic)
        except ClientDisconnect:  # the caller went away (a killed gateway): nobody to answer
            return None, _error(499, "client closed the request", anthropic)
        if not isinstance(body, dict):
            return None, _error(400, "body must be an object", anthropic)
        cfg.last_body = body
        model = body.get("model")
        if cfg.serves is not None and model not in cfg.serves:  # a key without the model, as each API answers
            if anthropic:
                return None, _json(
                    {"type": "error", "error": {"type": "not_found_error", "message": f"model: {model}"}}, 404
                )
            message = f"The model `{model}` does not exist or you do not have access to it."
            error = {"message": message, "type": "invalid_request_error", "param": None, "code": "model_not_found"}
            return None, _json({"error": error}, 404)
        if cfg.record_timings and isinstance(body.get("user"), str):
            request.scope[TIMING_MARKER] = body["user"]
        return body, None

    def n_out(body: dict[str, Any]) -> int:
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if cfg.ignore_max_tokens or not isinstance(limit, int) or limit <= 0:
            return cfg.output_tokens
        return min(limit, cfg.output_tokens)

    def dies_at(i: int) -> None:
        if cfg.die_after_chunks is not None and i >= cfg.die_after_chunks:
            raise UpstreamDied(f"the fake upstream broke off after {i} words")

    def writes(prompt: int, read: int, body: dict[str, Any] | None) -> tuple[int, int]:
        """The cache writes reported for a prompt (all of them, and of them an hour's)."""
        marked = cfg.cache_writes_unmarked or (body is not None and b'"cache_control"' in orjson.dumps(body))
        written = min(cfg.cache_write_tokens, prompt - read) if marked else 0
        return written, min(cfg.cache_write_1h_tokens, written)

    def openai_usage(prompt: int, out: int, body: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
        """The usage of `prompt` tokens in and `out` out (reasoning included), and how many
        of `out` are visible text."""
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
        cached, reasoning = min(cfg.cache_read_tokens, prompt), min(cfg.reasoning_tokens, out)
        written, hour = writes(prompt, cached, body)
        if cached or written:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        if written:
            usage["prompt_tokens_details"].update(
                cache_creation_tokens=written,
                cache_creation_token_details={"ephemeral_5m_input_tokens": written - hour,
                                              "ephemeral_1h_input_tokens": hour},
            )  # fmt: skip
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage, out - reasoning

    def anthropic_usage(prompt: int, body: dict[str, Any]) -> dict[str, Any]:
        """The input part of an Anthropic usage: `input_tokens` without the cache's."""
        read = min(cfg.cache_read_tokens, prompt)
        written, hour = writes(prompt, read, body)
        usage: dict[str, Any] = {"input_tokens": prompt - read - written}
        if read or written:
            usage["cache_read_input_tokens"] = read
            usage["cache_creation_input_tokens"] = written
            usage["cache_creation"] = {"ephemeral_5m_input_tokens": written - hour, "ephemeral_1h_input_tokens": hour}
        return usage

    async def chat(request: Request) -> Response:
        body, error = await gate(request, anthropic=False)
        if error is not None or body is None:
            return error or _error(500, "unreachable", False)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty array", False)
        prompt, total = chat_input_tokens(messages), n_out(body)
        usage, out = openai_usage(prompt + cfg.extra_input_tokens, total + cfg.extra_output_tokens, body)
        out = max(0, out - cfg.extra_output_tokens)  # an over-report's text is not longer
        model = str(body.get("model", "fake-model"))
        rid = "chatcmpl-" + hashlib.sha256(orjson.dumps(body)).hexdigest()[:16] + str(cfg.requests)
        if not body.get("stream"):
            return _json(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": fake_text(out)},
                            "finish_reason": "length" if total < cfg.output_tokens else "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
            words = fake_text(out).split()
            yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            if cfg.think_ms:
                await asyncio.sleep(cfg.think_ms / 1000)
            for i, word in enumerate(words):
                dies_at(i)
                if cfg.chunk_delay_ms:
                    await asyncio.sleep(cfg.chunk_delay_ms / 1000)
                text = word if i == 0 else " " + word
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
            finish = "length" if total < cfg.output_tokens else "stop"
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def completions(request: Request) -> Response:
        body, error = await gate(request, anthropic=False)
        if error is not None or body is None:
            return error or _error(500, "unreachable", False)
        prompt_field = body.get("prompt")
        prompt_text = prompt_field if isinstance(prompt_field, str) else " ".join(map(str, prompt_field or []))
        prompt = count_tokens(prompt_text) + cfg.extra_input_tokens
        usage, out = openai_usage(prompt, n_out(body) + cfg.extra_output_tokens)
        out = max(0, out - cfg.extra_output_tokens)
        model = str(body.get("model", "fake-model"))
        rid = f"cmpl-{cfg.requests}"
        if not body.get("stream"):
            return _json(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "text": fake_text(out), "finish_reason": "stop", "logprobs": None}],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}
            words = fake_text(out).split()
            for i, word in enumerate(words):
                dies_at(i)
                if cfg.chunk_delay_ms:
                    await asyncio.sleep(cfg.chunk_delay_ms / 1000)
                text = word if i == 0 else " " + word
                finish = ("length" if out < cfg.output_tokens else "stop") if i == len(words) - 1 else None
                yield _sse({**base, "choices": [{"index": 0, "text": text, "finish_reason": finish}]})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        body, error = await gate(request, anthropic=False)
        if error is not None or body is None:
            return error or _error(500, "unreachable", False)
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        if not inputs:
            return _error(400, "input must be a string or an array of strings", False)
        data = []
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(str(text).encode()).digest()
            vector = [(b - 128) / 128 for b in digest[:EMBEDDING_DIMENSIONS]]
            data.append({"object": "embedding", "index": i, "embedding": vector})
        prompt = sum(count_tokens(str(text)) for text in inputs) + cfg.extra_input_tokens
        return _json(
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model", "fake-model")),
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
        )

    async def models(request: Request) -> Response:
        _, error = await gate(request, anthropic=False)
        if error is not None:
            return error
        return _json({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in cfg.models]})

    async def messages(request: Request) -> Response:
        body, error = await gate(request, anthropic=True)
        if error is not None or body is None:
            return error or _error(500, "unreachable", True)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not isinstance(body.get("max_tokens"), int):
            return _error(400, "messages and max_tokens are required", True)
        if any(isinstance(m, dict) and m.get("role") == "system" for m in msgs):
            return _error(400, "system is a top-level parameter, not a message role", True)
        prompt, out = chat_input_tokens(msgs, body.get("system")), n_out(body)
        input_usage = anthropic_usage(prompt + cfg.extra_input_tokens, body)
        reported = out + cfg.extra_output_tokens
        model = str(body.get("model", "fake-model"))
        mid = f"msg_fake{cfg.requests}"
        stop = "max_tokens" if out < cfg.output_tokens else "end_turn"
        if not body.get("stream"):
            return _json(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": fake_text(out)}],
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {**input_usage, "output_tokens": reported},
                }
            )

        async def events() -> AsyncIterator[bytes]:
            start = {
                "type": "message_start",
                "message": {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "usage": {**input_usage, "output_tokens": 1},
                },
            }
            yield _sse(start, "message_start")
            block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            yield _sse(block, "content_block_start")
            for i, word in enumerate(fake_text(out).split()):
                dies_at(i)
                if cfg.chunk_delay_ms:
                    await asyncio.sleep(cfg.chunk_delay_ms / 1000)
                delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
                yield _sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")
            yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            end = {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": reported}}
            yield _sse(end, "message_delta")
            yield _sse({"type": "message_stop"}, "message_stop")

        return StreamingResponse(events(), media_type="text/event-stream")

    async def timings(request: Request) -> Response:
        """The recorded timings, handed over once (the bench's measure of the upstream's own time)."""
        found, cfg.timings = cfg.timings, {}
        return _json({user: list(times) for user, times in found.items()})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/_timings", timings, methods=["GET"]),
        ]
    )
    return _Timed(app, cfg) if cfg.record_timings else app


TIMING_MARKER = "promptex.fake.timing"


class _Timed:
    """Times each request from its arrival to its last byte sent (`record_timings`), per
    its `user` field: the upstream's own service time, which the bench subtracts from
    what its client saw to get what a gateway in between added."""

    def __init__(self, app: Starlette, cfg: FakeUpstreamConfig) -> None:
        self.app = app
        self.cfg = cfg

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = time.monotonic()

        async def timed(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                marker = scope.get(TIMING_MARKER)
                if marker is not None:
                    self.cfg.timings[marker] = (received, time.monotonic())

        await self.app(scope, receive, timed)


def _trickled(response: Response, delay_ms: float) -> Response:
    """`response` with its body sent a byte every `delay_ms` (its length said up front)."""
    body = bytes(response.body)

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(len(body)):
            yield body[i : i + 1]
            await asyncio.sleep(delay_ms / 1000)

    headers = {"content-length": str(len(body))}
    return StreamingResponse(trickle(), response.status_code, headers, media_type=response.media_type)


def _error(status: int, message: str, anthropic: bool) -> Response:
    if anthropic:
        kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
        return _json({"type": "error", "error": {"type": kind.get(status, "api_error"), "message": message}}, status)
    return _json({"error": {"message": message, "type": "fake_error", "param": None, "code": str(status)}}, status)
