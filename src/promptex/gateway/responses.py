"""The OpenAI Responses API (`POST /v1/responses`), text only and stateless, so the
official `openai` SDK's `client.responses` works against the gateway.

Every request is translated to chat completions (which every lot serves, OpenAI-API and
Anthropic alike, with the same holds, metering and routing) and its answer back into a
Response object or the Responses stream's events. Nothing is stored: `store: true`,
`previous_response_id`, `conversation` and `background` answer 400, and so do tools
(built-in or function), non-text input (images, files, audio) and non-text output
formats — rather than being dropped, which would answer something else than was asked.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from promptex.gateway.adapters import (
    CHAT,
    Adapter,
    Bound,
    ChatTranslation,
    StreamTranslator,
    ViaChat,
)
from promptex.gateway.charges import FIELD, Charge
from promptex.gateway.errors import GatewayError, bad_request
from promptex.gateway.requests import PER_MESSAGE, PER_REQUEST
from promptex.gateway.requests import RESPONSES as RESPONSES  # named where the prompt floor reads it
from promptex.metering import TokenUsage
from promptex.metering.produced import visible_bytes

ROLES = frozenset({"user", "assistant", "system", "developer"})
TEXT_PARTS = frozenset({"input_text", "output_text"})
_STATEFUL = ("previous_response_id", "conversation", "background", "prompt")
CUT_SHORT = "The upstream stream ended before its answer was complete; charged for what it streamed."


def _invalid(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return bad_request(message, param=param, code=code)


# ─── Checking a request ──────────────────────────────────────────────────────


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(f"Invalid '{where}': expected a string or an array of content parts.", "input")
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise _invalid(
                f"Invalid '{where}[{i}]': only text parts (input_text, output_text) are supported through this "
                f"gateway, not {kind!r}.",
                "input",
            )
        texts.append(part["text"])
    return "".join(texts)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The request's instructions and input as chat messages (checked)."""
    out: list[dict[str, str]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _invalid("Invalid 'instructions': expected a string.", "instructions")
        out.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str) and given:
        return [*out, {"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise _invalid("Invalid 'input': expected a non-empty string or array of input items.", "input")
    for i, item in enumerate(given):
        if not isinstance(item, dict) or item.get("type", "message") != "message" or item.get("role") not in ROLES:
            kind = item.get("type") if isinstance(item, dict) else None
            raise _invalid(
                f"Invalid 'input[{i}]': only messages (role user, assistant, system or developer) are supported "
                f"through this gateway, not {kind!r} items.",
                "input",
            )
        role = "system" if item["role"] == "developer" else item["role"]
        out.append({"role": role, "content": _text(item.get("content"), f"input[{i}].content")})
    return out


def validate_responses(body: dict[str, Any]) -> tuple[str, int, int | None]:
    """(model, an upper bound on the input tokens, max_output_tokens or None); 400 for
    what a stateless, text-only gateway cannot answer as asked."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("You must provide a model parameter.", "model")
    if body.get("store") is True:
        raise _invalid(
            "'store' must be false: this gateway keeps no responses (it is stateless).", "store", "unsupported_value"
        )
    for name in _STATEFUL:
        if body.get(name):
            raise _invalid(f"'{name}' is not supported: this gateway keeps no responses (it is stateless).", name)
    if body.get("tools"):
        raise _invalid("'tools' are not supported through this gateway (text only, no built-in tools).", "tools")
    if body.get("tool_choice") not in (None, "none", "auto"):
        raise _invalid("'tool_choice' is not supported through this gateway (text only).", "tool_choice")
    text = body.get("text")
    if text is not None:
        kind = (text.get("format") or {}).get("type", "text") if isinstance(text, dict) else None
        if kind != "text":
            raise _invalid("Only text output ('text.format.type': 'text') is supported through this gateway.", "text")
    if body.get("stream") is not None and not isinstance(body.get("stream"), bool):
        raise _invalid("Invalid 'stream': expected a boolean.", "stream")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _invalid(f"Invalid '{name}': expected a number.", name)
    limit = body.get("max_output_tokens")
    if limit is not None and (type(limit) is not int or limit <= 0):
        raise _invalid("Invalid 'max_output_tokens': expected a positive integer.", "max_output_tokens")
    messages = _messages(body)
    estimate = PER_REQUEST + sum(PER_MESSAGE + len(m["content"].encode()) for m in messages)
    return model, estimate, limit


def check_translatable(body: dict[str, Any], api: str) -> None:
    """Reasoning effort is an OpenAI parameter: an Anthropic lot cannot honour it."""
    if body.get("reasoning") and api != "openai":
        raise _invalid("'reasoning' is not supported for this model through this gateway.", "reasoning")


# ─── Translation ─────────────────────────────────────────────────────────────


def to_chat(body: dict[str, Any], output: int) -> dict[str, Any]:
    chat: dict[str, Any] = {"model": body["model"], "messages": _messages(body), "max_tokens": output}
    for name in ("temperature", "top_p", "stream", "user"):
        if body.get(name) is not None:
            chat[name] = body[name]
    effort = (body.get("reasoning") or {}).get("effort") if isinstance(body.get("reasoning"), dict) else None
    if effort:
        chat["reasoning_effort"] = effort
    return chat


def usage_json(usage: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


def _response(body: dict[str, Any], response_id: str, model: str, status: str) -> dict[str, Any]:
    """A Response object (what the SDK's `Response` model reads), without output yet."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": model,
        "output": [],
        "parallel_tool_calls": False,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": body.get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": "none",
        "tools": [],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "usage": None,
        "user": body.get("user"),
    }


def _output_message(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def _finish(response: dict[str, Any], finish_reason: Any, usage: TokenUsage | None) -> None:
    incomplete = finish_reason == "length"
    response["status"] = "incomplete" if incomplete else "completed"
    response["incomplete_details"] = {"reason": "max_output_tokens"} if incomplete else None
    response["usage"] = usage_json(usage) if usage is not None else None


def from_chat(body: dict[str, Any], chat: dict[str, Any], usage: TokenUsage, model: str) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    response = _response(body, _new_id("resp_"), model, "completed")
    _finish(response, choice.get("finish_reason"), usage)
    response["output"] = [_output_message(_new_id("msg_"), text, response["status"])]
    return response


class FromChatStream(ChatTranslation):
    """Chat completion chunks as the Responses stream's events: created, in_progress, the
    output item and its text part added, text deltas, and at the end the done events and
    `response.completed` (or `response.incomplete`), which carries the usage and the charge."""

    def __init__(self, inner: StreamTranslator, body: dict[str, Any], model: str) -> None:
        super().__init__(inner)
        self.response = _response(body, _new_id("resp_"), model, "in_progress")
        self.item_id = _new_id("msg_")
        self._sequence = 0
        self._started = False
        self._opened = False
        self._text: list[str] = []
        self._finish_reason: Any = None

    def _event(self, kind: str, **fields: Any) -> None:
        self.emit(kind, {"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1

    def _open(self) -> None:
        if not self._opened:
            self._opened = True
            item = {"id": self.item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            self._event("response.output_item.added", output_index=0, item=item)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self._event("response.content_part.added", item_id=self.item_id, output_index=0, content_index=0, part=part)

    def chunk(self, chunk: dict[str, Any]) -> None:
        if not self._started:
            self._started = True
            self._event("response.created", response=self.response)
            self._event("response.in_progress", response=self.response)
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                self._open()
                self._text.append(text)
                where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
                self._event("response.output_text.delta", **where, delta=text, logprobs=[])
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    @property
    def produced_bytes(self) -> int:
        """As the signing proxy counts a Responses stream that ends with its output (as
        `end` will emit it, on its last event): as a plain Response's (`visible_bytes`: the
        item's id and status are the gateway's, not counted, so the status `end` will give
        it does not matter); one that never started ends with no event."""
        if not self._started:
            return super().produced_bytes
        item = _output_message(self.item_id, "".join(self._text), "completed")
        return visible_bytes(RESPONSES, {"output": [item]}) or 0

    def end(self, charge: Charge | None) -> None:
        if not self._started:
            return
        self._open()
        _finish(self.response, self._finish_reason, self.usage)
        if not self.finished:  # cut short (the upstream broke off), charged what it streamed
            self.response["status"] = "failed"
            self.response["error"] = {"code": "server_error", "message": CUT_SHORT}
        text = "".join(self._text)
        where = {"item_id": self.item_id, "output_index": 0}
        self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
        status = self.response["status"]
        item = _output_message(self.item_id, text, "incomplete" if status == "failed" else status)
        self._event("response.content_part.done", **where, content_index=0, part=item["content"][0])
        self._event("response.output_item.done", output_index=0, item=item)
        self.response["output"] = [item]
        kind = {"completed": "response.completed", "failed": "response.failed"}.get(status, "response.incomplete")
        fields = {FIELD: charge.fields()} if charge is not None else {}
        self._event(kind, response=self.response, **fields)


class ToChatAdapter(ViaChat):
    """/v1/responses to any lot: as chat completions (whose adapter speaks the lot's API)."""

    endpoint = RESPONSES

    def __init__(self, inner: Adapter, body: dict[str, Any], output: int) -> None:
        super().__init__(inner, output)
        self.body = body

    def chat_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return to_chat(body, self.output)

    def answer_of(self, chat: dict[str, Any], usage: TokenUsage, model: str) -> dict[str, Any]:
        return from_chat(self.body, chat, usage, model)

    def usage_json(self, usage: TokenUsage) -> dict[str, Any]:
        return usage_json(usage)

    def translator(
        self, endpoint: str, model: str, include_usage: bool, bound: Bound | None = None
    ) -> StreamTranslator:
        return FromChatStream(self.inner.translator(CHAT, model, True), self.body, model)
