"""Signed mode paying in another provider's token (a Claude model paid in GPT): not built, so
refused before anything is signed or held (session 18). The gateway converts at its fresh
TWAP and `/v1/models` prints the converted prices rounded at 12 decimals per million tokens,
while the signing side checks a charge to the unit: before, most TWAPs stopped signing at the
first answer (norate's repro), and any TWAP move between two reads of `/v1/models` did too.
Now the transport and the proxy refuse such a request themselves (no voucher signed), and the
gateway refuses a voucher paying so with 400 `signed_cross_token_not_built`, before any hold,
naming the lane (a signer that did not know weighs nothing). And the same session paying in
its own token (a GPT model): its prices, list ÷ face value, had no finite decimals either,
and every first answer stopped signing; `/v1/models` now gives them exactly too."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from promptex.buyerside.answers import RateBook
from promptex.buyerside.opening import log_path, open_signer
from promptex.buyerside.sessions import SessionGrant
from promptex.buyerside.signer import Signer
from promptex.buyerside.transport import PromptexSigningTransport
from promptex.buyerside.wire import Voucher
from promptex.gateway.errors import SIGNED_CROSS_TOKEN
from promptex.metering import load_catalog
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.vault import sign_voucher

from .conftest import CATALOG, Fake, FakeTwaps, Harness
from .test_signed_proxy import _session

VAULT = "0x" + "ab" * 20
GPT_TOKEN = "0x" + "ce" * 20
CHAIN_ID = 31_337
LANES = 2
GPT_PRICE = 3_695_123 * 10**18  # GPT at $3.695123: its 10**18 / price does not terminate (norate's repro: STOPS)
HELLO = [{"role": "user", "content": "hello"}]
ASKS = {
    "chat": ("/v1/chat/completions", {"max_tokens": 10, "messages": HELLO}),
    "messages stream": ("/v1/messages", {"max_tokens": 10, "messages": HELLO, "stream": True}),
}


def _gpt_session(gw: Harness, twaps: FakeTwaps, fake: Fake, tmp_path: Path) -> tuple[SessionGrant, int, str, Signer]:
    """A buyer with a session key in GPT, Claude's listed lot and GPT's tokenized lot, a TWAP."""
    twaps.prices = {"GPT": GPT_PRICE}
    gw.gateway.twaps.refresh()  # type: ignore[union-attr]
    gw.add_lot(fake, provider="anthropic", api="anthropic", kind="listed", rate_bps=6000)
    gw.add_lot(fake, provider="openai", kind="tokenized")
    grant, account, api_key = _session(
        gw, tmp_path, asset="GPT", token=GPT_TOKEN, deposit=10 * TOKEN, maximum=5 * TOKEN, lanes=LANES
    )
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {api_key}"}) as client:
        opened = open_signer(grant, client, tmp_path, catalog=load_catalog(CATALOG))
    # Said once when the proxy opens: its models of other providers are refused (fails before).
    assert any(
        "2 models not of GPT's provider (fake-claude, fake-gemini) are refused here" in note for note in opened.notes
    )
    return grant, account, api_key, opened.signer


def _ask(gw: Harness, signer: Signer, api_key: str, ask: str, model: str = "fake-claude") -> httpx.Response:
    path, body = ASKS[ask]
    transport = PromptexSigningTransport(signer)
    with httpx.Client(base_url=gw.url, transport=transport, headers={"authorization": f"Bearer {api_key}"}) as client:
        answer = client.post(path, json={"model": model, **body})
        answer.read()
    return answer


def _message(answer: httpx.Response) -> str:
    message: str = answer.json()["error"]["message"]
    return message


@pytest.mark.parametrize("ask", list(ASKS))
def test_transport__claude_paid_in_gpt__refused_here_no_voucher_signed_own_token_served(
    gw_twap: Harness, fake: Fake, twaps: FakeTwaps, tmp_path: Path, ask: str
) -> None:
    """Fails before: the request was signed and served, and its charge at the exact TWAP
    (1 unit above the printed rates' cost, or below) stopped signing at the first answer."""
    gw = gw_twap
    grant, account, api_key, signer = _gpt_session(gw, twaps, fake, tmp_path)
    before = gw.ledger.balance(account, "GPT")
    answer = _ask(gw, signer, api_key, ask)
    assert answer.status_code == 400, answer.text
    assert ask != "chat" or answer.json()["error"]["code"] == SIGNED_CROSS_TOKEN
    message = _message(answer)
    assert "fake-claude" in message and "CLD or USDC" in message and "capped mode" in message
    assert fake.config.requests == 0  # never reached the gateway's upstream…
    assert not log_path(tmp_path, grant).exists() or "voucher" not in log_path(tmp_path, grant).read_text()
    assert all(lane.live == 0 and lane.exact for lane in signer.book.lanes)  # …nor was a voucher signed
    assert signer.stopped is None
    assert gw.ledger.balance(account, "GPT") == before
    # The same session pays a model of its own token's provider: signed and sent as before.
    served = _ask(gw, signer, api_key, ask, model="fake-gpt")
    assert served.status_code == 200, served.text
    assert fake.config.requests == 1 and signer.book.lanes[0].live > 0


@pytest.mark.parametrize("ask", list(ASKS))
def test_gateway__voucher_paying_in_another_providers_token__400_before_any_hold_naming_the_lane(
    gw_twap: Harness, fake: Fake, twaps: FakeTwaps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ask: str
) -> None:
    """A signer that does not know the model's provider (one built before this): the gateway
    refuses, names the lane (its total unchanged), holds nothing; more refusals in a row than
    the stop rule's 3 stop nothing. Fails before: served, and signing stopped at the charge."""
    gw = gw_twap
    _grant, account, api_key, signer = _gpt_session(gw, twaps, fake, tmp_path)
    monkeypatch.setattr(RateBook, "provider", lambda _book, _model: None)
    before = gw.ledger.balance(account, "GPT")
    for _ in range(4):
        answer = _ask(gw, signer, api_key, ask)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["lane_charged_units"] == "0"  # the lane named: the voucher took nothing
        assert "fake-claude" in error["message"] and "capped mode" in error["message"]
        assert ask != "chat" or error["code"] == SIGNED_CROSS_TOKEN
    assert fake.config.requests == 0
    assert signer.stopped is None and all(lane.exact and lane.errors == 0 for lane in signer.book.lanes)
    assert gw.ledger.balance(account, "GPT") == before


def test_gateway__refused_with_no_fresh_twap__and_without_a_voucher_in_signed_mode(
    gw_twap: Harness, fake: Fake, twaps: FakeTwaps, tmp_path: Path
) -> None:
    """The refusal says what is not built, not a passing state: an account in signed mode in
    GPT asking without a voucher was told 402 voucher_required (sign through the proxy, which
    refuses), and with no fresh TWAP a voucher got 503 price_unavailable (a retry would be
    served, then stop signing). Both fail before."""
    gw = gw_twap
    grant, _account, api_key, signer = _gpt_session(gw, twaps, fake, tmp_path)
    unsigned = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "fake-claude", "messages": HELLO, "max_tokens": 10},
        headers={"authorization": f"Bearer {api_key}", "x-promptex-asset": "GPT"},
        timeout=30,
    )
    assert unsigned.status_code == 400, unsigned.text
    assert unsigned.json()["error"]["code"] == SIGNED_CROSS_TOKEN
    gw.gateway.twaps._prices.clear()  # type: ignore[union-attr]  # no fresh TWAP of GPT now
    s = signer.session
    voucher = Voucher(s.session, 0, 1_000, sign_voucher(
        s.private_key, chain_id=CHAIN_ID, vault=VAULT, account=grant.account, asset=GPT_TOKEN,
        session=s.session, lane=0, ceiling=1_000,
    ))  # fmt: skip
    answer = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "fake-claude", "messages": HELLO, "max_tokens": 10},
        headers={
            "authorization": f"Bearer {api_key}",
            "x-promptex-asset": "GPT",
            "x-promptex-voucher": voucher.header(),
        },  # fmt: skip
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == SIGNED_CROSS_TOKEN
    assert answer.json()["error"]["lane_charged_units"] == "0"
    assert fake.config.requests == 0


def test_transport__gpt_session_pays_a_gpt_model__every_charge_checked_exactly_signing_goes_on(
    gw_twap: Harness, fake: Fake, twaps: FakeTwaps, tmp_path: Path
) -> None:
    """Paying in the model's own provider token (a tokenized lot: list price ÷ the token's face
    value, GPT's $3.695): `/v1/models` printed the rates rounded up at 12 decimals of whole
    tokens per million, the signing side checked each charge to the unit at them, and the
    first answer stopped signing ("charged 0.000006495263870095 GPT …; the rate gives
    0.000006495263870102 GPT"): for every model of the real catalog. Now `/v1/models` also
    states a rounded price exactly (`input_per_million_exact`, a fraction) and the signing
    side takes it when the printed one is its rounding. Fails before (signing stopped)."""
    gw = gw_twap
    _grant, account, api_key, signer = _gpt_session(gw, twaps, fake, tmp_path)
    fake.config.cache_read_tokens = 2  # a cache rate too: derived from the exact input rate
    for ask in [*ASKS, *ASKS]:
        served = _ask(gw, signer, api_key, ask, model="fake-gpt")
        assert served.status_code == 200, served.text
        assert signer.stopped is None
    lanes = [gw.ledger.lane(account, "GPT", 1, i) for i in range(LANES)]
    assert [lane.charged for lane in signer.book.lanes] == [lane.charged for lane in lanes]
    assert all(lane.exact for lane in signer.book.lanes) and sum(lane.charged for lane in lanes) > 0
