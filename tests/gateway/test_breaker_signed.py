"""Breaker attacks on the buyer's side of signed mode (issue 23): a dishonest gateway
against the signing transport, in process. The promise attacked (README, "Signed mode:
what each party can lose"): the buyer loses at most the true cost plus one hold per lane,
plus what token counts inside the stated tolerance let through — visible output tokens at
most the answer's UTF-8 bytes — before the check stops signing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "offchain"))
from buyerside_fakes import MODEL, RATES, FakeSignedGateway, make_signer  # noqa: E402

from promptex import metering  # noqa: E402
from promptex.buyerside.answers import ENDPOINTS  # noqa: E402
from promptex.buyerside.transport import PromptexSigningTransport  # noqa: E402

from .conftest import Fake, Harness  # noqa: E402
from .test_signed_proxy import LANES, _session, _signer  # noqa: E402

PROMPT = [{"role": "user", "content": "hello hello hello"}]
TRIES = 12


def _client(gateway: FakeSignedGateway, signer: object) -> openai.OpenAI:
    transport = PromptexSigningTransport(signer, inner=gateway.transport())  # type: ignore[arg-type]
    return openai.OpenAI(
        base_url="http://gateway.test/v1", api_key="sk-test", max_retries=0,
        http_client=httpx.Client(transport=transport),
    )  # fmt: skip


def _stream(client: openai.OpenAI) -> str | None:
    """One streamed request read to its end; its text, or None if refused."""
    try:
        chunks = client.chat.completions.create(
            model=MODEL, messages=PROMPT, stream=True, stream_options={"include_usage": True}
        )  # type: ignore[call-overload]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    except openai.APIStatusError:
        return None


def test_breaker__streamed_answers_report_more_output_than_their_text__signing_stops(tmp_path: Path) -> None:
    """A gateway that reports (and charges) 200 output tokens beyond what each streamed
    answer holds — 16 tokens of text, ~90 bytes — and stays within each hold: in a plain
    answer the bytes check stops signing at once; in a stream it must too, else the gateway
    takes 200 tokens more of every request, a hold per lane many times over."""
    gateway = FakeSignedGateway(lanes=1, inflate_output=200)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    texts = [_stream(client) for _ in range(TRIES)]
    served = [t for t in texts if t is not None]
    assert served and all(len(t.encode()) < 200 for t in served)  # what the buyer received
    hold = signer.hold_for(ENDPOINTS["/v1/chat/completions"], {"model": MODEL, "messages": PROMPT})[0]
    overcharged = gateway.book[0].charged - sum(gateway.true_costs)
    assert signer.stopped is not None and "bytes of answer" in signer.stopped, (signer.stopped, overcharged, hold)
    assert overcharged <= hold
    assert overcharged == metering.usage_cost(RATES, metering.TokenUsage(0, 200))  # the first one, then stopped


def test_breaker__honest_anthropic_stream_through_the_real_gateway__checked_without_a_false_stop(
    gw: Harness, fake: Fake, tmp_path: Path
) -> None:
    """The stream's byte count must not stop an honest gateway: Anthropic's Messages API
    streamed (content blocks and their deltas), through the real gateway, many sizes."""
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    client = httpx.Client(base_url=gw.url, transport=PromptexSigningTransport(signer))
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    for limit in (1, 2, 7, 30):
        body = {"model": "fake-claude", "max_tokens": limit, "stream": True,
                "messages": [{"role": "user", "content": "say something"}]}  # fmt: skip
        with client.stream("POST", "/v1/messages", json=body, headers=headers) as answer:
            assert answer.status_code == 200, answer.read().decode()
            events = b"".join(answer.iter_bytes())
        assert b"content_block_delta" in events
        assert signer.stopped is None, signer.stopped
    total = sum(gw.ledger.lane(account, "USDC", 1, i).charged for i in range(LANES))
    assert signer.book.charged_total() == total > 0 and all(lane.exact for lane in signer.book.lanes)
