"""Attacks on usage billing (s15-gbreak6): upstreams whose streams or usage objects try to
have a buyer charged more than its request used, or an answer show other usage than was
charged. A canned upstream (`test_signed_shapes.canned`) answers what each case sets."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from promptex.metering import TokenUsage

from .conftest import Fake, Harness
from .test_signed_shapes import Canned, canned  # noqa: F401 (the fixture)
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
