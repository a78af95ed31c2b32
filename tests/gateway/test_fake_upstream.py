"""The fake upstream speaks OpenAI and Anthropic with deterministic text and real usage."""

from __future__ import annotations

import httpx
import openai
import pytest

from promptex.fakes import fake_text

from .conftest import SELLER_KEY, Fake


def test_chat__openai_client__deterministic_text_and_counted_usage(fake: Fake) -> None:
    client = openai.OpenAI(base_url=fake.url, api_key=SELLER_KEY, max_retries=0)
    answer = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "one two three"}], max_tokens=5
    )
    assert answer.choices[0].message.content == fake_text(5)
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3 + 3, 5)


def test_chat_stream__include_usage__usage_chunk_last(fake: Fake) -> None:
    client = openai.OpenAI(base_url=fake.url, api_key=SELLER_KEY, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake_text(16)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16


def test_messages__anthropic_api__usage_in_input_and_output_tokens(fake: Fake) -> None:
    answer = httpx.post(
        fake.url + "/messages",
        headers={"x-api-key": SELLER_KEY, "anthropic-version": "2023-06-01"},
        json={"model": "c", "system": "be brief", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    ).json()
    assert answer["content"][0]["text"] == fake_text(4)
    assert answer["usage"] == {"input_tokens": (2 + 3) + (1 + 3), "output_tokens": 4}


def test_request__wrong_key__401(fake: Fake) -> None:
    client = openai.OpenAI(base_url=fake.url, api_key="sk-fake-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def test_request__fail_every_second__every_second_request_fails(fake: Fake) -> None:
    fake.config.fail_status, fake.config.fail_every = 503, 2
    client = openai.OpenAI(base_url=fake.url, api_key=SELLER_KEY, max_retries=0)
    outcomes = []
    for _ in range(4):
        try:
            client.embeddings.create(model="e", input="x")
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("fail")
    assert outcomes == ["ok", "fail", "ok", "fail"]


def test_chat__caller_gone_before_its_body__answered_499_not_an_exception() -> None:
    """A killed gateway's request: the connection closes before the body arrives. The fake
    answers 499 to nobody instead of raising (an "Exception in ASGI application" traceback
    in every kill test's output)."""
    import anyio

    from promptex.fakes import create_fake_upstream

    app = create_fake_upstream()
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
        "headers": [(b"authorization", f"Bearer {SELLER_KEY}".encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    anyio.run(app, scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
