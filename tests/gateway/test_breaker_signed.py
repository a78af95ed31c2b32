"""Breaker attacks on the buyer's side of signed mode (issue 23): a dishonest gateway
against the signing transport, in process. The promise attacked (README, "Signed mode:
what each party can lose"): the buyer loses at most the true cost plus one hold per lane,
plus what token counts inside the stated tolerance let through — visible output tokens at
most the answer's UTF-8 bytes — before the check stops signing.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "offchain"))
from buyerside_fakes import IDENTITY, MODEL, RATES, FakeSignedGateway, make_signer  # noqa: E402

from promptex import metering  # noqa: E402
from promptex.buyerside.answers import ENDPOINTS  # noqa: E402
from promptex.buyerside.recovery import ChainSession, recover  # noqa: E402
from promptex.buyerside.transport import PromptexSigningTransport  # noqa: E402
from promptex.buyerside.wire import VOUCHER_HEADER, lane_reports, parse_voucher  # noqa: E402

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


class ClaimAndDrop(FakeSignedGateway):
    """Serves nothing: takes each voucher, books the lane charged its whole ceiling (its
    stored voucher covers that, so its lane report verifies), then drops the connection."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        if VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        voucher = parse_voucher(request.headers[VOUCHER_HEADER])
        with self.lock:
            self.received.append(voucher)
            lane = self.book[voucher.lane]
            lane.charged, lane.voucher = voucher.ceiling, voucher
        raise httpx.ReadError("connection dropped after charging")


def test_breaker__charge_and_drop_across_proxy_restarts__within_n_holds_per_lane(tmp_path: Path) -> None:
    """The stop rule counts answers without figures per lane; a restart (`promptex proxy`
    started again, the voucher log kept) recovers the lanes from the chain, the gateway's
    verified report and the log. A gateway that only ever charges and drops gets one drop
    per lane per run: the count must survive the restart, else each restart gives it a
    hold more, forever (the README's buyer row: at most N = 3 holds per lane)."""
    gateway = ClaimAndDrop(lanes=1)
    chain = ChainSession(IDENTITY.key, 1, 1, 10**12, 0, (0,))
    hold = 0
    for _ in range(6):  # six runs of the proxy, one request each
        signer = make_signer(tmp_path / "v.log", lanes=1)
        signer.book = recover(IDENTITY, chain, lane_reports(gateway.lanes_report()), signer.log).book
        hold = max(hold, signer.hold_for(ENDPOINTS["/v1/chat/completions"], {"model": MODEL, "messages": PROMPT})[0])
        with contextlib.suppress(openai.APIStatusError, openai.APIConnectionError):  # dropped, or refused
            _client(gateway, signer).chat.completions.create(model=MODEL, messages=PROMPT)  # type: ignore[call-overload]
        signer.log.close()
    taken = gateway.book[0].charged  # what settle_signed could take: nothing was served
    assert taken <= 3 * hold, (taken, hold, len(gateway.received), signer.stopped)
    assert len(gateway.received) == 3  # the third drop stopped signing, and the stop outlives restarts
    assert signer.stopped is not None and "3 answers on lane 0 came without the lane's total" in signer.stopped
