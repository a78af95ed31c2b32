"""Reading and checking a /v1 request body before any money moves."""

from __future__ import annotations

from typing import Any

import orjson

from promptex.gateway.adapters import CHAT, COMPLETIONS, EMBEDDINGS
from promptex.gateway.errors import GatewayError, bad_request
from promptex.metering import ImageAllowances, ImageTokens
from promptex.metering.produced import RESPONSES as RESPONSES  # OpenAI's Responses API, served as chat messages

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# The input-token estimate behind every hold (upper bound: one token per UTF-8 byte),
# shared by the chat, responses and messages fronts.
PER_MESSAGE = 4  # tokens a message may cost beyond its text
PER_REQUEST = 3  # tokens a request may cost beyond its messages
MESSAGE_FLOOR = 3  # tokens a chat message costs at least beyond its words (OpenAI's format)
LIMITS = ("max_tokens", "max_completion_tokens")  # the output limits a request may name
# What a chat request's prompt holds beyond its messages' text, counted by the upstream as
# input tokens: tool (function) definitions, the tool choice and a response format's JSON
# schema, each rendered into the prompt (OpenAI: a TypeScript-like namespace, fewer tokens
# than its JSON's bytes) — bounded by their JSON's bytes plus PROMPT_FIELDS_FRAME tokens
# once (the rendering's headings); and a message's tool calls, function call, name or tool
# call id, by their JSON's bytes. Left out, an honest tool-using request reported more input
# than its bound, and the signing proxy, checking the same bound, stopped signing.
PROMPT_FIELDS = ("tools", "functions", "tool_choice", "function_call", "response_format")
PROMPT_FIELDS_FRAME = 64
PROMPT_FIELD_NAMES = frozenset(PROMPT_FIELDS)
MESSAGE_TEXT = frozenset({"role", "content"})  # a message's fields counted apart (the role: PER_MESSAGE)
# A chat image part (`image_url`) costs tokens its bytes do not bound (a URL of 30 bytes, an
# image of ~1,500 tokens): each is held for at most this many beyond its bytes, unless the
# catalog lists the model's own allowance (`Catalog.image_tokens`: gpt-4o-mini's images cost
# up to 48,169 tokens, 2,833 at "detail": "low") — OpenAI's largest per image but for such
# multiplied models (gpt-4.1-nano: 1,536 patches x 2.46 = 3,779). Audio and file parts (an
# audio's seconds, a PDF's pages) cannot be bounded before the call: refused, as the Messages
# API refuses documents. Before, neither was counted: an honest image request's input was
# above its bound, charged at the bound since `metering.within_bounds` (the seller paid for
# 133 of 800 tokens), and the signing proxy stopped signing.
CHAT_IMAGE_TOKENS = 4_000
UNBOUNDED_PARTS = frozenset({"input_audio", "file"})


def parse_body(raw: bytes, max_depth: int = 32) -> dict[str, Any]:
    """The body as a JSON object, nested at most `max_depth` deep (400 otherwise)."""
    if not raw:
        raise bad_request("We could not parse the JSON body of your request: the body is empty.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    # Only a body with that many brackets (in strings too) can be that deep: most are
    # never walked.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _deeper(body, max_depth):
        raise bad_request(f"The JSON body is nested more than {max_depth} levels deep.", code="json_too_deep")
    return body


def _deeper(value: Any, limit: int) -> bool:
    """Whether `value` nests objects and arrays more than `limit` deep (why a limit: a
    body orjson reads but cannot write back, past 254 levels, was a 500)."""
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                below.extend(v for v in item.values() if isinstance(v, dict | list))
            else:
                below.extend(v for v in item if isinstance(v, dict | list))
        level = below
    return False


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or value <= 0:
        raise bad_request(f"Invalid '{name}': expected a positive integer.", param=name)
    return value


def _text_bytes(content: Any, i: int, allowances: ImageAllowances | None, model: str) -> int:
    """The bytes bounding chat message `i`'s content (its images by `image_tokens`); the
    parameter an error names is built only for the error."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        tokens = 0
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in UNBOUNDED_PARTS:
                raise bad_request(
                    f"Invalid 'messages[{i}].content': '{kind}' parts are not supported through this gateway (their "
                    "cost cannot be bounded before the call).",
                    param="messages",
                )
            if kind == "image_url":
                image = part.get("image_url")
                images = image_tokens(allowances, model)
                tokens += images.of(image.get("detail") if isinstance(image, dict) else None)
        return len(orjson.dumps(content)) + tokens
    param = f"messages[{i}].content"
    raise bad_request(f"Invalid '{param}': expected a string or an array of content parts.", param=param)


def image_tokens(allowances: ImageAllowances | None, model: str) -> ImageTokens:
    """What a chat image part to `model` is held for: the allowance listed for it (the
    catalog's), else CHAT_IMAGE_TOKENS (at any detail)."""
    if allowances is None:
        return ImageTokens(CHAT_IMAGE_TOKENS, CHAT_IMAGE_TOKENS)
    return allowances.image_tokens(model, CHAT_IMAGE_TOKENS)


def validate(
    endpoint: str, body: dict[str, Any], allowances: ImageAllowances | None = None
) -> tuple[str, int, int | None]:
    """(model, an upper bound on the input tokens, the requested max output tokens or None);
    a chat request's image parts are bounded by the model's image allowance (`image_tokens`:
    the gateway's catalog, or what the signing proxy read of it from /v1/models)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("You must provide a model parameter.", param="model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("Invalid 'stream': expected a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("Invalid 'stream_options': expected an object.", param="stream_options")
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request("Only n=1 is supported.", param="n")
    # Completions' `best_of` generates that many candidates upstream, every one's tokens
    # billed as output: beyond the one output limit the hold covers (and now charges).
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise bad_request("Only best_of=1 is supported.", param="best_of")
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise bad_request("Invalid 'stop': expected a string or an array of strings.", param="stop")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad_request(f"Invalid '{name}': expected a number.", param=name)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("Invalid 'user': expected a string.", param="user")
    # Priced apart from the catalog's per-token rates, on the seller's upstream account: the
    # priority tier (above the standard rates), audio output (at audio rates) and web search
    # (per call). Passed through before, a buyer paid the catalog's text rates while the
    # seller's account was billed the rest (the Messages API pins the standard tier).
    if body.get("service_tier") not in (None, "auto", "default", "flex"):
        raise bad_request(
            "Invalid 'service_tier': only 'auto', 'default' or 'flex' through this gateway (other tiers are priced "
            "above its rates).",
            param="service_tier",
        )
    modalities = body.get("modalities")
    for name, asked in (("modalities", modalities not in (None, ["text"])), ("audio", body.get("audio") is not None),
                        ("web_search_options", body.get("web_search_options") is not None)):  # fmt: skip
        if asked:
            raise bad_request(
                f"'{name}' is not supported through this gateway (text output only: audio and web search are "
                "priced apart from its per-token rates).",
                param=name,
            )
    max_tokens = _positive_int(body, "max_tokens")
    max_completion = _positive_int(body, "max_completion_tokens")
    limit = max_completion if max_completion is not None else max_tokens
    if endpoint == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("Invalid 'messages': expected a non-empty array.", param="messages")
        total = PER_REQUEST
        if not PROMPT_FIELD_NAMES.isdisjoint(body):  # (most bodies have none: no dict built)
            fields = {name: body[name] for name in PROMPT_FIELDS if body.get(name) is not None}
            total += len(orjson.dumps(fields)) + PROMPT_FIELDS_FRAME if fields else 0
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if not isinstance(role, str) or role not in ROLES:
                raise bad_request(f"Invalid 'messages[{i}]': expected an object with a valid role.", "messages")
            total += PER_MESSAGE + _text_bytes(message.get("content"), i, allowances, model)
            if not message.keys() <= MESSAGE_TEXT:  # (most messages have no other field: no dict built)
                rest = {k: v for k, v in message.items() if k not in MESSAGE_TEXT and v is not None}
                total += len(orjson.dumps(rest)) if rest else 0
        return model, total, limit
    if endpoint == COMPLETIONS:
        # An echoed prompt comes back as the answer's text: counted as produced bytes (the
        # bound on visible output tokens, `metering.produced`), it let an upstream report up
        # to the prompt's bytes more output than it wrote (a 2,000-byte prompt echoed beside
        # "Sunny": 1,000 output tokens passed the signing proxy's check). Refused, as best_of.
        if body.get("echo") not in (None, False):
            raise bad_request("Only echo=false is supported.", param="echo")
        # An insertion's `suffix` is input too (the model reads the text after the insertion
        # point): left out, an honest answer's input was beyond the bound, and is charged at it.
        suffix = body.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise bad_request("Invalid 'suffix': expected a string.", param="suffix")
        after = PER_REQUEST + len(suffix.encode()) if suffix else PER_REQUEST
        prompt = body.get("prompt")
        if isinstance(prompt, str) and prompt:
            return model, after + len(prompt.encode()), limit
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return model, after + sum(len(p.encode()) + 1 for p in prompt), limit
        raise bad_request("Invalid 'prompt': expected a non-empty string or array of strings.", param="prompt")
    if endpoint == EMBEDDINGS:
        raw = body.get("input")
        if isinstance(raw, str) and raw:
            return model, PER_REQUEST + len(raw.encode()), None
        if isinstance(raw, list) and raw and all(isinstance(p, str) and p for p in raw):
            return model, PER_REQUEST + sum(len(p.encode()) + 1 for p in raw), None
        raise bad_request("Invalid 'input': expected a non-empty string or array of strings.", param="input")
    raise GatewayError(404, f"Unknown endpoint {endpoint!r}.")


def with_output_limit(body: dict[str, Any], output: int) -> dict[str, Any]:
    """The body sent upstream: its output limit set to what the hold covers, in the field
    the request used (`max_tokens` when it named none), so the hold is a true upper bound."""
    named = [name for name in LIMITS if body.get(name) is not None] or ["max_tokens"]
    if all(body.get(name) == output for name in named):
        return body
    return {**body, **{name: output for name in named}}


def _words(content: Any) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(_words(part.get("text")) if isinstance(part, dict) else _words(part) for part in content)
    return 0


def prompt_floor(endpoint: str, body: dict[str, Any]) -> int:
    """A lower bound of the prompt's tokens, what an answer cut short is charged for its
    input when the upstream reported no usage (an OpenAI-style stream reports it only at
    its end). Every whitespace-separated word is at least one token for the BPE
    tokenizers providers use (none spans a space), and every chat message costs at least
    MESSAGE_FLOOR more: never more than the upstream itself counted. A Responses request is
    sent as chat messages (its instructions, then its input items), and counted as those."""
    messages = body.get("messages")
    if endpoint == RESPONSES:
        # Before, its input's words only (an input of items: 0): the charge of a stream whose
        # upstream reported no usage showed fewer input tokens than the signing proxy's
        # floor for the same request, and signing stopped for an honest answer.
        given, instructions = body.get("input"), body.get("instructions")
        items = [{"content": given}] if isinstance(given, str) else given if isinstance(given, list) else []
        messages = [{"content": instructions}, *items] if isinstance(instructions, str) else items
    if isinstance(messages, list):  # chat completions, Anthropic's Messages API, Responses
        system = _words(body.get("system")) if endpoint != RESPONSES else 0
        return system + sum(MESSAGE_FLOOR + _words(m.get("content")) for m in messages if isinstance(m, dict))
    return _words(body.get("prompt" if endpoint == COMPLETIONS else "input"))
