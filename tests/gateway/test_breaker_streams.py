"""Attacks on the bound a hold promises, with the buyer's limits in force: upstreams that
answer longer than the output limit sent, that die mid-stream, and clients that leave
mid-stream, plain and streamed. Each request is charged its input, never more than its
hold; the cost limit's counter ends at what was charged, no slot stays taken; the books
check (the harness checks them after each test).

Found: an upstream answering 4,000 tokens to a request for 16 (a seller's own endpoint may
ignore the limit) was charged 5,168 on a hold of 654, since a cost above the hold was
charged whenever the balance covered it; and the cost limit's counter kept only the hold,
so the limit was overshot by the difference."""

from __future__ import annotations

import contextlib

import httpx
import pytest
from sqlalchemy import select

from promptex.gateway import limits
from promptex.gateway.keys import hash_key
from promptex.gateway.limits import Limits
from promptex.gateway.schema import limit_counters
from promptex.ledger.schema import holds
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import Fake, Harness

PROMPT = [{"role": "user", "content": " ".join(["word"] * 200)}]


def send(gw: Harness, key: str, stream: bool, leave_after: int | None = None) -> str:
    """One fake-gpt request for 16 output tokens; its request id. `leave_after`: the client
    closes the connection after that many lines of the stream."""
    body = {"model": "fake-gpt", "messages": PROMPT, "max_tokens": 16, "stream": stream}
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body, timeout=60
    ) as answer:
        assert answer.status_code == 200, answer.read()
        request_id = answer.headers["x-request-id"]
        with contextlib.suppress(httpx.HTTPError):
            for n, _ in enumerate(answer.iter_lines()):
                if leave_after is not None and n >= leave_after:
                    break
    return request_id


@pytest.mark.parametrize("attack", ["longer", "dies", "leaves"])
def test_stream_and_plain_abuse__with_limits__charged_input_never_beyond_the_hold(
    gw: Harness, fake: Fake, attack: str
) -> None:
    gw.add_lot(fake)
    account, key = gw.buyer(amount=10 * USDC)
    found = gw.store.api_key(hash_key(key))
    assert found is not None
    subject = limits.key_subject(found)
    now = gw.now()
    limits.set_limits(
        gw.ledger.engine, subject,
        Limits(tokens_per_minute=10**6, concurrent=5, cost=USDC, cost_asset="USDC", cost_window_seconds=86_400), now,
    )  # fmt: skip
    if attack == "longer":
        fake.config.ignore_max_tokens, fake.config.output_tokens = True, 4_000
    elif attack == "dies":
        fake.config.die_after_chunks = 3
    else:
        fake.config.chunk_delay_ms = 50
    ids = [send(gw, key, stream=s, leave_after=2 if attack == "leaves" else None) for s in (True, False) * 3]
    with gw.ledger.engine.connect() as conn:
        rows = {r.request_id: r for r in conn.execute(select(holds).where(holds.c.request_id.in_(ids)))}
        counters = {
            r.kind: int(r.used) for r in conn.execute(select(limit_counters).where(limit_counters.c.subject == subject))
        }
    charged = 0
    for request_id in ids:
        row = rows[request_id]
        record = gw.ledger.usage_record(request_id)
        assert row.status == "settled" and record is not None, request_id
        assert record.input_tokens >= 200, (attack, request_id)  # the input, always
        assert 0 < int(row.charged) <= int(row.amount), (attack, int(row.charged), int(row.amount))
        if attack == "longer":  # served long: charged (and recorded) the output limit sent, not the hold
            assert record.output_tokens == 16 and int(row.charged) < int(row.amount), (request_id, record)
        charged += int(row.charged)
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC - charged
    assert counters["concurrent"] == 0 and counters["cost"] == charged, counters
