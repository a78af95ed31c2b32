"""What an answer produced, in UTF-8 bytes of its text: the bound on its visible output
tokens (output minus reasoning), one rule for the gateway, which charges within it, and the
signing proxy (`buyerside.answers`), which checks an answer against it.

No tokenizer ships offline, but no token is shorter than a byte of text: an answer's
visible output tokens are at most the UTF-8 bytes of its text (its strings, not its JSON
syntax: `text_bytes`) plus a frame once per answer (`ANSWER_FRAME_BYTES`: a tool call's
syntax, an end token) plus its request's predicted output (`prediction_bytes`: OpenAI bills
the prediction's tokens the answer did not use among its output tokens). A stream's text is
counted from its events as they pass (`event_bytes`). Reasoning tokens cannot be seen at
all: neither side bounds them but by the output limit.

Endpoints are named here as the gateway names them (it imports the names from here): this
package sits below the gateway and imports none of it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from promptex.metering.tokens import TokenUsage

# The gateway's endpoint names, defined here (below the gateway) so both sides read one spelling.
CHAT, COMPLETIONS, EMBEDDINGS = "chat", "completions", "embeddings"  # OpenAI's APIs
MESSAGES = "messages"  # Anthropic's Messages API
RESPONSES = "responses"  # OpenAI's Responses API

# Keys of an answer's message, delta or content block that name its kind, not text produced:
# the protocol has every event carry them (Anthropic's `"type":"text_delta"`), so counted, each
# event the gateway chose to send would add bytes of no answer. (Other strings count, ids
# too: a tool call's id is room for its syntax tokens, and the gateway could as well pad a
# text it sends.)
NOT_TEXT = frozenset({"type", "role"})
# What an answer's output tokens may exceed its text's bytes by, once per answer (plain or
# streamed, however many choices or events): the frame a plain chat answer's JSON count
# gave before (`[{"message":{"role":"assistant","content":""}}]`, 46 bytes) — room for
# tokens beyond the text (a tool call's syntax, an end token), never per event or choice.
ANSWER_FRAME_BYTES = 48
# A Responses output item's fields the gateway writes, not the model (`visible_bytes`).
RESPONSE_ITEM_FRAME = frozenset({"id", "status"})


# A tool call's arguments the model wrote as JSON, relayed as a JSON value rather than a
# string (Anthropic's `tool_use` block's `input`): counted as that JSON's bytes, keys, numbers
# and syntax included. They are the model's output (padding them is padding a text: real
# bytes relayed); as strings only, an honest call such as `{"values": [1, 2, …, 60]}`
# (~190 tokens, 3 bytes of strings) stopped signing. In a stream they come as
# `input_json_delta` strings (`partial_json`), counted as any string.
TOOL_INPUT = "input"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a str's own unpaired surrogates
REPLACEMENT = "\ufffd"
# A JSON escape: a surrogate pair (kept), a lone surrogate (`lone`), or any other (kept:
# consumed whole, so an escaped backslash before "ud800" is no escape of a surrogate).
_ESCAPE = re.compile(
    rb"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(?P<lone>u[dD][89a-fA-F][0-9a-fA-F]{2})|.)",
    re.DOTALL,
)


def read_json(data: str | bytes) -> Any:
    """An upstream's JSON (a stream's event, an answer) as both sides read it: orjson's, but
    a string with a lone UTF-16 surrogate escape ("\\ud800" unpaired: a model may cut an emoji
    in two), which orjson refuses, is read with each lone surrogate as U+FFFD (3 bytes of
    text, as a client decoding it shows it) — before (s16 open 4), the gateway dropped such
    a chunk (its client never got it, its text was not counted: charged as if not produced,
    the seller's loss) and the signing proxy took it for the stream's end. Anything else
    orjson refuses is refused (orjson.JSONDecodeError), as before.

    Read again by orjson, its escapes replaced: not by the standard library's reader, which
    has no depth limit of its own — an answer with a lone surrogate and then 200,000 nested
    arrays (a seller's endpoint may send anything) overflowed the C stack where the
    recursion limit is raised (py_ecc sets 100,000: the process died, every request in it
    with it) and raised RecursionError elsewhere (a 500, no failover; sbreak s17)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as refused:
        if "surrogate" not in str(refused):  # orjson's words for it; any other refusal stands
            raise
        raw = _LONE_SURROGATE.sub(REPLACEMENT, data).encode() if isinstance(data, str) else data
        try:
            return orjson.loads(_ESCAPE.sub(_replaced, raw))
        except orjson.JSONDecodeError:
            raise refused from None


def _replaced(escape: re.Match[bytes]) -> bytes:
    return b"\\ufffd" if escape.group("lone") else escape.group(0)


def text_bytes(value: Any) -> int:
    """The UTF-8 bytes of the strings in an answer's produced parts (any depth, read
    iteratively), leaving out `NOT_TEXT` keys: JSON syntax, numbers and nulls count nothing,
    but in a tool call's `TOOL_INPUT` written as a JSON value."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item.encode())
        elif isinstance(item, dict):
            for k, v in item.items():
                if k == TOOL_INPUT and item.get("type") == "tool_use" and isinstance(v, (dict, list)):
                    total += len(orjson.dumps(v))
                elif k not in NOT_TEXT:
                    stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
    return total


def visible_bytes(endpoint: str, answer: Any) -> int | None:
    """The UTF-8 bytes of what an answer produced (None: it produced nothing countable): the
    text of its choices' message or text, its content blocks, its output items
    (`text_bytes`), and its frame once (`ANSWER_FRAME_BYTES`). Not its JSON: counted as
    JSON, an answer "hi" with 100 empty choices (`{"message":{}}`, 14 bytes each) or 400
    empty objects in its message passed the check for 1,024 output tokens, every time."""
    if not isinstance(answer, dict):
        return None
    if endpoint == MESSAGES:
        produced: Any = answer.get("content")
    elif endpoint == RESPONSES:
        # Its output items, but for the gateway's own item ids and statuses (`msg_` and 48 hex
        # digits, "completed": ~61 bytes of room per answer for output no one wrote).
        output = answer.get("output")
        produced = [
            {k: v for k, v in item.items() if k not in RESPONSE_ITEM_FRAME} if isinstance(item, dict) else item
            for item in (output if isinstance(output, list) else [output])
        ]
    elif endpoint == EMBEDDINGS:
        return None
    else:
        choices = answer.get("choices")
        produced = [
            [v for k, v in choice.items() if k in ("message", "text")]
            for choice in (choices if isinstance(choices, list) else [])
            if isinstance(choice, dict)
        ]
    return text_bytes(produced) + ANSWER_FRAME_BYTES


def event_bytes(event: dict[str, Any]) -> int:
    """The UTF-8 bytes one stream event produced: the text in chat and completions choices'
    delta or text, Anthropic's content blocks and their deltas, a Responses stream's text
    deltas (`text_bytes`). Only text counts, never an event's JSON frame: the gateway chooses
    how many events carry an answer, so counted per event (`{"delta":{}}`: 12 bytes of
    nothing), an answer "hi" padded with empty events passed for a whole hold of output,
    every time. (A Responses stream's final output counts as `visible_bytes` counts a plain
    answer's, in place of its deltas.)"""
    total = 0
    for choice in event.get("choices") or []:
        if isinstance(choice, dict):
            total += text_bytes([v for k, v in choice.items() if k in ("delta", "text")])
    kind = event.get("type")
    if kind == "content_block_start":
        total += text_bytes(event.get("content_block"))
    elif kind in ("content_block_delta", "response.output_text.delta"):  # (Responses: text so far)
        total += text_bytes(event.get("delta"))
    return total


def prediction_bytes(endpoint: str, body: Any) -> int:
    """The UTF-8 bytes of a chat request's predicted output (OpenAI's Predicted Outputs,
    `prediction.content`): its tokens the answer did not use are billed among the output
    tokens (`rejected_prediction_tokens`) and never relayed, so the visible output may
    exceed the answer's bytes by at most them. Left out, an honest predicted edit whose
    answer rewrote most of the prediction stopped signing."""
    prediction = body.get("prediction") if endpoint == CHAT and isinstance(body, dict) else None
    return text_bytes(prediction.get("content")) if isinstance(prediction, dict) else 0


def thinking_budget(endpoint: str, body: Any) -> int:
    """The output tokens a Messages request lets its model think (`thinking`: its
    `budget_tokens`, at most `max_tokens`; the output limit for a thinking of another kind),
    0 when it asks none. Anthropic reports no thinking tokens apart (one `output_tokens`) and
    Claude 4 shows a summary of its thinking, billed whole: bounded by the text shown, an
    honest answer thinking 4,000 tokens over a 35-byte summary was charged ~400 of its 4,003
    output tokens (sbreak s17). Its thinking is bounded by the budget it asked instead, as a
    reasoning model's reasoning is by its output limit."""
    if endpoint != MESSAGES or not isinstance(body, dict):
        return 0
    thinking, limit = body.get("thinking"), body.get("max_tokens")
    if not isinstance(thinking, dict) or thinking.get("type") == "disabled":
        return 0
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else 0
    budget = thinking.get("budget_tokens")
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        return min(budget, limit)
    return limit


def stop_bytes(endpoint: str, body: Any) -> int:
    """The UTF-8 bytes of a request's longest stop sequence (chat and completions `stop`, a
    string or strings; Messages `stop_sequences`): the model generates the one it stops at,
    which is billed among the output tokens and taken off the text relayed (OpenAI returns
    none of it, Anthropic names it apart). Left out, "OK" ended by a 100-byte stop sequence
    of 50 tokens was charged 50 of its 51 output tokens (sbreak s17: the seller's loss)."""
    if not isinstance(body, dict):
        return 0
    given = body.get("stop_sequences") if endpoint == MESSAGES else body.get("stop")
    if endpoint not in (CHAT, COMPLETIONS, MESSAGES) or given is None:
        return 0
    stops = [given] if isinstance(given, str) else given if isinstance(given, list) else []
    return max((len(stop.encode()) for stop in stops if isinstance(stop, str)), default=0)


def unshown_output(endpoint: str, body: Any, *, may_think: bool = True) -> int:
    """The output tokens an answer to `body` may be billed beyond its text (`visible_limit`'s
    `unshown`): its prediction's bytes (`prediction_bytes`), its longest stop
    sequence's (`stop_bytes`) and, for a model that may think (`may_think`: not one the
    catalog says never reasons, as its reported reasoning is not kept either), its thinking
    budget (`thinking_budget`)."""
    room = prediction_bytes(endpoint, body) + stop_bytes(endpoint, body)
    return room + (thinking_budget(endpoint, body) if may_think else 0)


def visible_output(usage: TokenUsage) -> int:
    """The output tokens an answer's text shows: its output minus its reasoning."""
    return usage.output_tokens - usage.reasoning_tokens


def visible_limit(produced_bytes: int, unshown: int = 0) -> int:
    """The most visible output tokens an answer of `produced_bytes` (framed: `visible_bytes`)
    can have, its request's answer billed up to `unshown` beyond its text (`unshown_output`)."""
    return produced_bytes + unshown
