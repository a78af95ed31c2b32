"""Bad input gets OpenAI's error body and status, carries x-request-id, and moves no money."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from human_units import assert_human
from promptex.config import ConfigurationError, Settings
from promptex.fakes.upstream import FakeUpstreamConfig
from promptex.gateway.service import check_hold_lifetime
from promptex.ledger.schema import holds
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import Fake, Harness

HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture
def funded(gw: Harness, fake: Fake) -> Iterator[tuple[Harness, int, str]]:
    gw.add_lot(fake)
    account, key = gw.buyer(amount=USDC)
    before = (gw.ledger.balance(account, "USDC"), gw.ledger.system_balance("usage", "USDC"))
    yield gw, account, key
    gw.ledger.check()
    assert (gw.ledger.balance(account, "USDC"), gw.ledger.system_balance("usage", "USDC")) == before


def post(gw: Harness, key: str | None, body: Any, path: str = "/v1/chat/completions", **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(kw.pop("headers", {}))
    if isinstance(body, (bytes, str)):
        return httpx.post(gw.url + path, content=body, headers=headers, timeout=30, **kw)
    return httpx.post(gw.url + path, json=body, headers=headers, timeout=30, **kw)


def _streamed(response: httpx.Response) -> str:
    """The text of a chat stream's content deltas."""
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    return "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices") or ())


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"].startswith("req_")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return dict(error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        ({"messages": HELLO}, "model"),
        ({"model": "fake-gpt"}, "messages"),
        ({"model": "fake-gpt", "messages": []}, "messages"),
        ({"model": "fake-gpt", "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"model": "fake-gpt", "messages": [{"role": {"a": 1}, "content": "x"}]}, "messages"),  # found by schemathesis
        ({"model": "fake-gpt", "messages": HELLO, "stop": 7}, "stop"),
        ({"model": "fake-gpt", "messages": HELLO, "max_tokens": -1}, "max_tokens"),
        ({"model": "fake-gpt", "messages": HELLO, "stream": "yes"}, "stream"),
    ],
)
def test_chat__malformed_body__400_and_no_money_moved(
    funded: tuple[Harness, int, str], body: Any, param: str | None
) -> None:
    gw, _, key = funded
    error = assert_openai_error(post(gw, key, body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("key", [None, "px-not-a-key", "sk-fake-x"])
def test_chat__missing_or_wrong_key__401_and_no_money_moved(funded: tuple[Harness, int, str], key: str | None) -> None:
    gw, _, _ = funded
    assert_openai_error(post(gw, key, {"model": "fake-gpt", "messages": HELLO}), 401)


def test_chat__unknown_model__404_model_not_found(funded: tuple[Harness, int, str]) -> None:
    gw, _, key = funded
    error = assert_openai_error(post(gw, key, {"model": "gpt-nonexistent", "messages": HELLO}), 404)
    assert error["code"] == "model_not_found"


def test_chat__oversize_body__413(funded: tuple[Harness, int, str]) -> None:
    gw, _, key = funded
    big = "x " * (gw.settings.gateway_max_body_bytes // 2 + 10)
    assert_openai_error(post(gw, key, {"model": "fake-gpt", "messages": [{"role": "user", "content": big}]}), 413)


def test_chat__balance_below_upper_bound__402_should_not_retry(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    account, key = gw.buyer(amount=10)  # 10 micro-USDC
    before = gw.ledger.balance(account, "USDC")
    response = post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 100})
    assert_openai_error(response, 402)
    assert_human(response.json()["error"]["message"], "the 402's message")
    assert response.headers["x-should-retry"] == "false"
    assert gw.ledger.balance(account, "USDC") == before
    assert fake.config.requests == 0


def test_chat__asset_the_model_cannot_be_paid_in__400(funded: tuple[Harness, int, str]) -> None:
    gw, _, key = funded
    response = post(gw, key, {"model": "fake-gpt", "messages": HELLO}, headers={"x-promptex-asset": "CLD"})
    assert assert_openai_error(response, 400)["param"] == "x-promptex-asset"


def test_chat__no_lot_for_provider__503_no_capacity(funded: tuple[Harness, int, str]) -> None:
    gw, _, key = funded
    assert assert_openai_error(post(gw, key, {"model": "fake-gemini", "messages": HELLO}), 503)["code"] == "no_capacity"


def test_chat__every_lot_fails__502_and_hold_released(funded: tuple[Harness, int, str], fake: Fake) -> None:
    gw, _, key = funded
    fake.config.fail_status = 500
    assert_openai_error(post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 2}), 502)


def test_chat__every_lot_busy__429(funded: tuple[Harness, int, str], fake: Fake) -> None:
    gw, _, key = funded
    fake.config.fail_status = 429
    assert_openai_error(post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 2}), 429)


def test_chat__upstream_timeout__504(funded: tuple[Harness, int, str], fake: Fake) -> None:
    gw, _, key = funded
    gw.gateway.client.timeout = 0.2
    fake.config.latency_ms = 1_000  # 2 output tokens at the floor rate (20/s): 0.2 + 0.1 s, well within the deadline
    assert gw.gateway.upstream_wait(2) == pytest.approx(0.3)
    assert_openai_error(post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 2}), 504)


def test_chat__plain_answer_longer_than_the_upstream_timeout__waited_for_not_failed_over(
    gw: Harness, fake: Fake, second_fake: Fake
) -> None:
    # sbreak s17 B2: the upstream timeout bounded a plain answer whole, so an honest answer
    # taking longer was a failure of every lot in turn (each generated it, unpaid) and a 504.
    # Now the wait is the timeout plus the output limit (64, the default) at 20 tokens/s.
    a = gw.add_lot(fake, rate_bps=5000)
    b = gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer(amount=USDC)
    gw.gateway.client.timeout = 0.2
    fake.config.latency_ms = second_fake.config.latency_ms = 500
    for _ in range(2):
        answer = post(gw, key, {"model": "fake-gpt", "messages": HELLO})
        assert answer.status_code == 200, answer.text
    assert (fake.config.requests, second_fake.config.requests) == (2, 0)
    assert not gw.gateway.health.is_open(a) and not gw.gateway.health.is_open(b)
    gw.ledger.check()


def test_upstream_floor_rate_not_positive__refused_at_start(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="PROMPTEX_GATEWAY_UPSTREAM_FLOOR_TOKENS_PER_SECOND"):
        check_hold_lifetime(settings.model_copy(update={"gateway_upstream_floor_tokens_per_second": 0}))


def test_chat_stream__silent_before_its_first_content__waited_for__then_the_timeout_between_chunks(
    gw: Harness, fake: Fake
) -> None:
    # A reasoning model's stream: a role chunk, then nothing while it thinks (sbreak s17 B2
    # addendum: the between-chunks timeout ended it there, "empty", nothing served).
    gw.add_lot(fake)
    _, key = gw.buyer(amount=USDC)
    gw.gateway.client.timeout = 0.2
    fake.config.think_ms = 500  # max_tokens 40: waited 0.2 + 2 s for its first content
    body = {"model": "fake-gpt", "messages": HELLO, "max_tokens": 40, "stream": True}
    answer = post(gw, key, body)
    assert answer.status_code == 200 and _streamed(answer).startswith("alpha bravo charlie"), answer.text
    # Once content came, the upstream timeout applies between chunks again: a lot stalling
    # mid-answer is cut there (charged as cut short: its first word).
    fake.config.think_ms, fake.config.chunk_delay_ms = 0, 400
    answer = post(gw, key, body)
    assert answer.status_code == 200 and _streamed(answer) == "alpha", answer.text
    gw.ledger.check()


def test_chat_stream__cheapest_lot_accepts_and_never_answers__its_head_owed_within_the_timeout__failed_over(
    gw: Harness, second_fake: Fake
) -> None:
    """A stream's head is owed within the upstream timeout, not the first content's long
    wait (slowlot s18): a lot that accepts the connection and never answers failed there,
    counted against it, and the request is served by the next lot. Before, a stream with a
    large output limit waited for that head until its deadline: 504 request_deadline, the
    lot not counted (its circuit never opened), for every such request it was routed first."""
    with socket.socket() as silent:  # listening, never accepting: the kernel takes the connection
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        hanging = gw.add_lot(
            Fake(FakeUpstreamConfig(), f"http://127.0.0.1:{silent.getsockname()[1]}/v1"), rate_bps=5000
        )
        gw.add_lot(second_fake, rate_bps=6000)
        account, key = gw.buyer(amount=USDC)
        gw.gateway.client.timeout = 0.2
        gw.gateway.s = gw.settings.model_copy(update={"gateway_request_deadline_seconds": 1.0})
        # a model that never reasons (`reasoning = false`): its head comes at once from every provider
        body = {"model": "fake-gpt-plain", "messages": HELLO, "max_tokens": 4_000, "stream": True}
        assert gw.gateway.upstream_wait(4_000) == 1.0  # its first content may take until the deadline
        answer = post(gw, key, body)
        assert answer.status_code == 200 and _streamed(answer).startswith("alpha bravo"), answer.text
        assert gw.gateway.health._lots[hanging].failures == 1  # a timeout, as connecting's
        assert second_fake.config.requests == 1
    assert gw.ledger.balance(account, "USDC").held == 0
    gw.ledger.check()


def test_chat_stream__a_model_that_may_reason__its_head_after_the_timeout__served_not_failed_over(
    gw: Harness, fake: Fake, second_fake: Fake
) -> None:
    """A stream of a model that may reason has its head within the first content's long wait:
    some providers (Azure OpenAI, Novita) send a stream's head only with its first visible
    token, after the whole think. Before (e2break s18, on ab99e7e), a head later than the
    upstream timeout failed the lot (counted) and the request over to the next, whose think
    started again: an honest head-holding lot's circuit opened on long thinks, and a buyer
    opened it so for free (nothing streamed, nothing charged)."""
    cheap = gw.add_lot(fake, rate_bps=5000)
    gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer(amount=USDC)
    gw.gateway.client.timeout = 0.2
    gw.gateway.s = gw.settings.model_copy(update={"gateway_request_deadline_seconds": 2.0})
    fake.config.latency_ms = 600  # its head after 0.6 s: the think (fake-gpt may reason)
    body = {"model": "fake-gpt", "messages": HELLO, "max_tokens": 4_000, "stream": True}
    answer = post(gw, key, body)
    assert answer.status_code == 200 and _streamed(answer).startswith("alpha bravo"), answer.text
    assert (gw.gateway.health._lots[cheap].failures, second_fake.config.requests) == (0, 0)
    gw.ledger.check()


def test_chat_stream__upstream_trickles_its_error_body__cut_at_the_request_deadline(gw: Harness, fake: Fake) -> None:
    """A stream's 4xx: its error body is read within the request's deadline. Before (review
    s17), it was read after the deadline's scope, within the first content's long wait: an
    upstream trickling its error body held the request past its deadline, then counted a
    timeout against the lot and failed over."""
    lot = gw.add_lot(fake)
    account, key = gw.buyer(amount=USDC)
    gw.gateway.s = gw.settings.model_copy(update={"gateway_request_deadline_seconds": 0.4})
    fake.config.fail_status, fake.config.fail_trickle_ms = 400, 50  # ~100 bytes: 5 s
    answer = post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 40, "stream": True})
    assert (answer.status_code, answer.json()["error"]["code"]) == (504, "request_deadline"), answer.text
    assert gw.gateway.health._lots[lot].failures == 0  # before: "upstream_timeout", the lot's failure
    assert gw.ledger.balance(account, "USDC").held == 0


def test_chat__lot_expired__serves_nothing(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake, expires_in=7 * 86_400)  # the shortest validity a lot may have
    _, key = gw.buyer()
    gw.gateway.registry.clock = lambda: gw.now() + 7 * 86_400 + 10
    assert_openai_error(post(gw, key, {"model": "fake-gpt", "messages": HELLO}), 503)
    assert fake.config.requests == 0


def test_chat__lot_exhausted__serves_nothing(gw: Harness, fake: Fake) -> None:
    # 22 µUSD at list: one request's upper bound (18 input tokens by size, 2 output); its
    # answer uses 9, and the 13 left cannot cover the next one's input bound.
    gw.add_lot(fake, face_value=22)
    _, key = gw.buyer()
    assert post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 2}).status_code == 200
    assert_openai_error(post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 2}), 503)
    assert fake.config.requests == 1


def test_unknown_path__404_openai_body(gw: Harness) -> None:
    assert_openai_error(httpx.get(gw.url + "/v1/nothing"), 404)


def test_responses__never_contain_the_sellers_key(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    _, key = gw.buyer()
    fake.config.fail_status = 401
    texts = [post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 2}).text]
    fake.config.fail_status = None
    texts.append(post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 2}).text)
    texts.append(httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).text)
    assert all("sk-fake" not in text for text in texts)


def test_chat__gateway_overloaded__fast_429_and_no_money_moved(funded: tuple[Harness, int, str], fake: Fake) -> None:
    gw, _, key = funded
    # any lag is too much, however few requests are in flight
    gw.gateway.s = gw.settings.model_copy(update={"gateway_shed_wait_ms": -1.0, "gateway_shed_min_inflight": 0})
    while not gw.gateway.overloaded:  # the lag watcher notices within one tick
        time.sleep(0.01)
    response = post(gw, key, {"model": "fake-gpt", "messages": HELLO, "max_tokens": 2})
    assert assert_openai_error(response, 429)["type"] == "rate_limit_error"
    assert fake.config.requests == 0


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
        ({"messages": [*HELLO, {"role": "tool", "tool_call_id": "c1", "content": "42"}]}, "messages"),
        (
            {"messages": [*HELLO, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}]},
            "messages",
        ),
    ],
)
def test_chat__anthropic_lot_and_what_its_translation_lacks__400_before_any_hold(
    gw: Harness, fake: Fake, change: dict[str, Any], param: str
) -> None:
    """Tools, structured output and non-text parts are refused, not dropped: the model would
    otherwise answer something else than was asked. Nothing is held, nothing is sent upstream."""
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    account, key = gw.buyer(amount=USDC)
    before = gw.ledger.balance(account, "USDC")
    calls = fake.config.requests
    error = assert_openai_error(post(gw, key, {"model": "fake-claude", "messages": HELLO, **change}), 400)
    assert error["param"] == param and "supported for this model" in error["message"]
    assert gw.ledger.balance(account, "USDC") == before and fake.config.requests == calls
    with gw.ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(holds)).scalar_one() == 0
    gw.ledger.check()
    # the same request in text only is served
    assert post(gw, key, {"model": "fake-claude", "messages": HELLO, "max_tokens": 4}).status_code == 200


def test_chat__tools_for_a_model_with_anthropic_and_openai_compatible_lots__served_by_the_latter(
    gw: Harness, fake: Fake, second_fake: Fake
) -> None:
    gw.add_lot(fake, provider="anthropic", api="anthropic", rate_bps=5000)  # cheaper: first for text
    gw.add_lot(second_fake, provider="anthropic", api="openai", rate_bps=7000)
    _account, key = gw.buyer(amount=USDC)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    anthropic_calls, openai_calls = fake.config.requests, second_fake.config.requests
    answer = post(gw, key, {"model": "fake-claude", "messages": HELLO, "max_tokens": 4, "tools": tools})
    assert answer.status_code == 200, answer.text
    assert (fake.config.requests, second_fake.config.requests) == (anthropic_calls, openai_calls + 1)
    assert post(gw, key, {"model": "fake-claude", "messages": HELLO, "max_tokens": 4}).status_code == 200
    assert fake.config.requests == anthropic_calls + 1  # text only: the cheaper Anthropic lot
    gw.ledger.check()
