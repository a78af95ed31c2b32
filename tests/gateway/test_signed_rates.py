"""Signed mode with listed lots of one model at several rates (cbreak C4), against the real
gateway: the buyer's side states the most it pays (`x-promptex-max-rate-bps`, default the
highest rate /v1/models listed for the model), the gateway routes the request only to lots
at or below it and names the charging lot's rate with the charge (`x-promptex-lot-rate-bps`,
`lot_rate_bps` in a stream's charge event), and the signing transport checks the charge
exactly at that rate. Before, a failover to a pricier lot stopped signing ("charged 14 units
…; the rate gives 9"). The dishonest gateway's side is `tests/offchain/test_buyerside_rates.py`."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.exc import OperationalError

from promptex import metering
from promptex.buyerside.signer import Signer
from promptex.buyerside.transport import PromptexSigningTransport
from promptex.gateway import limits
from promptex.gateway.keys import hash_key

from .conftest import Fake, Harness
from .test_signed_proxy import _session, _signer

HELLO = [{"role": "user", "content": "hello"}]
ASKS = {
    "chat": ("/v1/chat/completions", {"max_tokens": 10, "messages": HELLO}),
    "chat stream": ("/v1/chat/completions", {"max_tokens": 10, "messages": HELLO, "stream": True}),
    "messages": ("/v1/messages", {"max_tokens": 10, "messages": HELLO}),
    "messages stream": ("/v1/messages", {"max_tokens": 10, "messages": HELLO, "stream": True}),
}


def _ask(gw: Harness, signer: Signer, api_key: str, ask: str) -> tuple[httpx.Response, dict[str, Any] | None]:
    """The answer and, for a stream, its charge event's `promptex` field."""
    path, body = ASKS[ask]
    transport = PromptexSigningTransport(signer)
    with httpx.Client(base_url=gw.url, transport=transport, headers={"authorization": f"Bearer {api_key}"}) as client:
        answer = client.post(path, json={"model": "fake-gpt", **body})
        answer.read()
    fields = None
    for line in answer.text.splitlines():
        if line.startswith("data: {"):
            fields = orjson.loads(line[6:]).get("promptex", fields)
    return answer, fields


@pytest.mark.parametrize("ask", list(ASKS))
def test_failover_to_a_pricier_lot_within_max__signing_goes_on_charge_checked_exactly(
    gw: Harness, fake: Fake, second_fake: Fake, tmp_path: Path, ask: str
) -> None:
    fake.config.fail_status = 500  # the cheapest lot fails: the gateway fails over to the pricier one
    gw.add_lot(fake, rate_bps=6000)
    pricier = gw.add_lot(second_fake, rate_bps=9000)
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    answer, fields = _ask(gw, signer, api_key, ask)
    assert answer.status_code == 200, answer.text
    assert signer.stopped is None  # before: "charged 0.000014 USDC …; the rate gives 0.000009 USDC"
    assert answer.headers["x-promptex-lot"] == str(pricier)
    if fields is None:
        assert answer.headers["x-promptex-lot-rate-bps"] == "9000"
    else:
        assert (fields["lot"], fields["lot_rate_bps"]) == (pricier, 9000)
    # Held at the most it pays, so the gateway kept the output limit asked.
    assert second_fake.config.last_body is not None and second_fake.config.last_body["max_tokens"] == 10
    lane = signer.book.lanes[0]
    assert lane.exact and lane.charged == gw.ledger.lane(account, "USDC", 1, 0).charged > 0
    ninety = metering.rates_for(gw.gateway.catalog.price("fake-gpt"), "USDC", lot_rate_bps=9000,
                                fee_bps=gw.settings.protocol_fee_bps)  # fmt: skip
    cheap = signer.rates.get("fake-gpt", "USDC")
    assert cheap is not None and ninety == cheap.scaled("USDC", Fraction(9000, 6000))


def test_lot_above_max__never_used_for_a_signed_request(
    gw: Harness, fake: Fake, second_fake: Fake, tmp_path: Path
) -> None:
    fake.config.fail_status = 500
    gw.add_lot(fake, rate_bps=6000)
    gw.add_lot(second_fake, rate_bps=9000)
    grant, _account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    signer.max_rate_bps = 7000
    answer, _ = _ask(gw, signer, api_key, "chat")
    assert answer.status_code >= 500
    assert second_fake.config.requests == 0  # no failover beyond the buyer's max


@pytest.mark.parametrize("ask", ["chat", "messages stream"])
def test_no_lot_within_max__503_naming_the_lane__nothing_held_signing_goes_on(
    gw: Harness, fake: Fake, tmp_path: Path, ask: str
) -> None:
    gw.add_lot(fake, rate_bps=9000)
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    signer.max_rate_bps = 8750
    before = gw.ledger.balance(account, "USDC")
    for _ in range(4):  # more than the stop rule's 3 answers without figures
        answer, _ = _ask(gw, signer, api_key, ask)
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["lane_charged_units"] == "0"  # the lane named: the voucher took nothing
        assert "87.5 % of list price" in error["message"] and "asks 90 %" in error["message"]
    assert ask != "chat" or error["code"] == "no_lot_within_max_rate"  # (Anthropic's shape has no code)
    assert fake.config.requests == 0
    assert signer.stopped is None and all(lane.exact and lane.errors == 0 for lane in signer.book.lanes)
    assert gw.ledger.balance(account, "USDC") == before


def test_no_lot_within_max__the_lane_unreadable__the_refusal_goes_out_as_it_is(
    gw: Harness, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Naming the lane is best effort: a database error reading it (a plain read raises the
    driver's OperationalError, not LedgerUnavailable) replaced the refusal with 503
    ledger_unavailable (review s17)."""
    gw.add_lot(fake, rate_bps=9000)
    grant, _account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    signer.max_rate_bps = 8750

    def unreachable(*_args: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(gw.ledger, "signed_state", unreachable)
    answer, _ = _ask(gw, signer, api_key, "chat")
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "no_lot_within_max_rate"
    assert fake.config.requests == 0


def test_every_lot_busy__429_naming_the_lane__signing_goes_on(gw: Harness, fake: Fake, tmp_path: Path) -> None:
    """Any refusal before a hold names the lane (`Gateway._name_lane`): before, an error without
    the lane's figures weighed a hold, and three busy answers in a row stopped signing."""
    gw.add_lot(fake)
    grant, _account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    for lot in gw.gateway.registry.candidates("openai", "listed"):
        lot.inflight = 10**6
    for _ in range(4):
        answer, _ = _ask(gw, signer, api_key, "chat")
        assert answer.status_code == 429 and answer.json()["error"]["lane_charged_units"] == "0"
    assert signer.stopped is None and all(lane.exact and lane.errors == 0 for lane in signer.book.lanes)


def test_key_over_its_rate_limit__429_naming_the_lane__signing_goes_on(gw: Harness, fake: Fake, tmp_path: Path) -> None:
    """A refusal in the hold's own transaction (a limit on the key, its budget, the lots'
    capacity) takes nothing from the voucher's lane, and names it (`Gateway.reserve`): before
    (s2break), a signed buyer over its key's requests per minute got 429s without the lane's
    figures, each weighed as a hold, and signing stopped after three on a lane."""
    gw.add_lot(fake)
    grant, account, api_key = _session(gw, tmp_path)
    key = gw.store.api_key(hash_key(api_key))
    assert key is not None
    limits.set_limits(gw.ledger.engine, limits.key_subject(key), limits.Limits(requests_per_minute=1), gw.now())
    signer = _signer(gw, grant, api_key, tmp_path)
    assert _ask(gw, signer, api_key, "chat")[0].status_code == 200
    charged = gw.ledger.lane(account, "USDC", 1, 0).charged
    errors = []
    for _ in range(6):  # before, signing stopped: three on one lane
        answer, _ = _ask(gw, signer, api_key, "chat")
        assert answer.status_code == 429, answer.text
        errors.append(answer.json()["error"])
    assert signer.stopped is None and all(lane.exact and lane.errors == 0 for lane in signer.book.lanes)
    assert all(error["code"] == "rate_limit_exceeded" and "lane_charged_units" in error for error in errors)
    assert sum(lane.charged for lane in signer.book.lanes) == charged > 0


@pytest.mark.parametrize(("status", "ask"), [(500, "chat"), (400, "messages stream")])
def test_upstream_fails_after_the_hold__the_lane_named_voucher_accepted__signing_goes_on(
    gw: Harness, fake: Fake, tmp_path: Path, status: int, ask: str
) -> None:
    """A hold given back uncharged (every lot failed, the upstream refused the request) names
    the lane and returns the request's own voucher, accepted (`Gateway._serve`), which the
    signing proxy takes as a hold ended uncharged (`Signer._refusal`). Before (s2break), such
    errors came without the lane's figures, each weighed as a hold: an upstream outage, or
    three requests the upstream refused, stopped signing for good."""
    fake.config.fail_status = status
    gw.add_lot(fake)
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    for _ in range(6):  # before, signing stopped: three on one lane
        answer, _ = _ask(gw, signer, api_key, ask)
        assert answer.status_code == (502 if status >= 500 else status), answer.text
    assert signer.stopped is None and all(lane.exact and lane.errors == 0 for lane in signer.book.lanes)
    assert "lane_charged_units" in answer.json()["error"]
    fake.config.fail_status = None
    assert _ask(gw, signer, api_key, "chat")[0].status_code == 200  # the next ceiling is above the accepted ones
    assert (
        sum(lane.charged for lane in signer.book.lanes)
        == sum(gw.ledger.lane(account, "USDC", 1, index).charged for index in range(len(signer.book.lanes)))
        > 0
    )


def test_body_too_large_or_too_deep__refused_naming_the_lane__signing_goes_on(
    gw: Harness, fake: Fake, tmp_path: Path
) -> None:
    """A body the gateway refuses before pricing it (413 request_too_large, 400 json_too_deep)
    names the lane (`Gateway._name_lane`): before (s2break), each weighed as a hold, and a
    client sending three large prompts (or images) stopped signing for good."""
    gw.add_lot(fake)
    grant, _account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    big = {"messages": [{"role": "user", "content": "word " * 220_000}], "max_tokens": 4}
    too_deep = {"messages": HELLO, "max_tokens": 4, "metadata": {"x": deep}}
    transport = PromptexSigningTransport(signer)
    with httpx.Client(base_url=gw.url, transport=transport, headers={"authorization": f"Bearer {api_key}"}) as client:
        for body, status in [(big, 413), (too_deep, 400)] * 3:
            answer = client.post("/v1/chat/completions", json={"model": "fake-gpt", **body})
            assert answer.status_code == status and "lane_charged_units" in answer.json()["error"], answer.text
    assert signer.stopped is None and all(lane.exact and lane.errors == 0 for lane in signer.book.lanes)


def test_models__lists_the_listed_lots_rates__and_the_rate_its_prices_are_at(
    gw: Harness, fake: Fake, second_fake: Fake
) -> None:
    gw.add_lot(fake, rate_bps=9000)
    cheap = gw.add_lot(second_fake, rate_bps=6000)
    _account, api_key = gw.buyer()
    models = httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {api_key}"}).json()["data"]
    entry = next(m for m in models if m["id"] == "fake-gpt")
    assert entry["pricing"]["USDC"]["rate_bps"] == 6000
    assert sorted((lot["rate_bps"], lot["id"]) for lot in entry["lots"])[0] == (6000, cheap)
    assert sorted(lot["rate_bps"] for lot in entry["lots"]) == [6000, 9000]


@pytest.mark.parametrize(
    "given", ["0", "10001", "90%", "-1", "", pytest.param("9" * 5000, id="5000-digits")]
)  # a 500 before
def test_max_rate_header__not_1_to_10000__400_naming_it(gw: Harness, fake: Fake, given: str) -> None:
    gw.add_lot(fake)
    _account, api_key = gw.buyer()
    answer = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "fake-gpt", "max_tokens": 4, "messages": HELLO},
        headers={"authorization": f"Bearer {api_key}", "x-promptex-max-rate-bps": given},
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "x-promptex-max-rate-bps"


def test_max_rate_header__unsigned_request__served_only_within_it(gw: Harness, fake: Fake, second_fake: Fake) -> None:
    gw.add_lot(fake, rate_bps=6000)
    pricier = gw.add_lot(second_fake, rate_bps=9000)
    _account, api_key = gw.buyer()
    fake.config.fail_status = 500
    answers = [
        httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "fake-gpt", "max_tokens": 4, "messages": HELLO},
            headers={"authorization": f"Bearer {api_key}", **({"x-promptex-max-rate-bps": most} if most else {})},
        )
        for most in ("6000", None)
    ]
    assert answers[0].status_code >= 500 and second_fake.config.requests == 1
    assert answers[1].headers["x-promptex-lot"] == str(pricier)
    assert answers[1].headers["x-promptex-lot-rate-bps"] == "9000"
