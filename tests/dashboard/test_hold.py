"""The playground's hold with listed lots at several rates (dashboard/src/hold.ts): it names
the most a lot may charge (x-promptex-max-rate-bps, default the highest rate /v1/models
lists for the model) and holds at it, so the gateway's fit of a signed request's output to
its hold at the priciest lot that may serve (`metering.largest_output`) leaves max_tokens
whole; and the dashboard's /v1 pass-through forwards that header. esbuild bundles hold.ts
(~0.1 s)."""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from promptex import metering
from promptex.dashboard.proxy import GatewayProxy
from promptex.gateway import requests
from promptex.gateway.service import _per_million
from promptex.metering import load_catalog
from ts_cases import ts_cases

FEE_BPS = 100


@pytest.fixture(scope="module")
def front_end(tmp_path_factory):
    return ts_cases("hold", tmp_path_factory.mktemp("hold"))


def entry(model: str, lot_rates: list[int], twap: Fraction) -> tuple[dict, dict[str, dict[int, metering.Rates]]]:
    """A /v1/models entry as the gateway writes it (`Gateway.models`) and each asset's rates per lot rate."""
    price = load_catalog().price(model)
    cheapest = min(lot_rates)
    by_rate = {rate: metering.usdc_rates(price, rate, FEE_BPS) for rate in set(lot_rates)}
    other = "GPT" if price.provider != "openai" else "CLD"
    in_other = {rate: metering.usdc_to_token_rates(r, other, twap) for rate, r in by_rate.items()}
    pricing = {
        "USDC": {**_per_million(by_rate[cheapest], 6), "rate_bps": cheapest},
        other: {**_per_million(in_other[cheapest], 18), "rate_bps": cheapest},
    }
    lots = [{"id": 10 + i, "rate_bps": rate} for i, rate in enumerate(lot_rates)]
    model_entry = {"id": model, "owned_by": price.provider, "pricing": pricing, "lots": lots}
    return model_entry, {"USDC": by_rate, other: in_other}


def test_playground_hold__lots_at_several_rates__max_rate_sent_and_held__output_left_whole(front_end):
    rng = random.Random(17)
    models = sorted(load_catalog().models)
    given, expected = [], []
    for _ in range(40):
        lot_rates = rng.sample([2500, 6000, 7500, 9000, 9999, 10_000], rng.randint(2, 4))
        model_entry, rates = entry(rng.choice(models), lot_rates, Fraction(rng.randint(1, 10**6), 10**6))
        symbol = rng.choice(sorted(model_entry["pricing"]))
        prompt = "x" * rng.choice([1, 50, 700, 4000])
        output = rng.choice([1, 16, 256, 4096])
        body = {"model": model_entry["id"], "messages": [{"role": "user", "content": prompt}], "max_tokens": output,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        _, gateway_input_bound, _ = requests.validate(requests.CHAT, body)
        given.append({"model": model_entry, "symbol": symbol, "decimals": 6 if symbol == "USDC" else 18,
                      "bytes": len(prompt), "output": output})  # fmt: skip
        expected.append((max(lot_rates), rates[symbol], gateway_input_bound, output))
    answers = front_end(given)
    shortened = 0
    for case, answer, (highest, rates, input_bound, output) in zip(given, answers, expected, strict=True):
        assert answer["header"] == "x-promptex-max-rate-bps"
        assert answer["maxRate"] == highest, case
        assert answer["boundInputs"] >= input_bound, case
        hold = int(answer["most"])
        # Every lot within the max rate may serve: the gateway lowers the output to fit the priciest.
        for rate in rates.values():
            assert metering.largest_output(rate, input_bound, hold, output) == output, (case, answer)
        assert hold >= int(answer["typical"])
        # The hold at the cheapest lot's rate (what the page held before) fits fewer at the priciest.
        cheapest_hold = int(answer["cheapest"])
        shortened += metering.largest_output(rates[highest], input_bound, cheapest_hold, output) < output
    assert shortened >= 20


def test_playground_hold__one_price_or_no_listed_lot__no_max_rate_advertised_rates(front_end):
    model_entry, rates = entry("gpt-4o", [6000], Fraction(1))
    own = {"GPT": {"input_per_million": "2.5", "output_per_million": "10"}}
    unlisted = {**model_entry, "lots": []}
    given = [
        {"model": model_entry, "symbol": "USDC", "decimals": 6, "bytes": 10, "output": 100},  # one lot: its rate
        {"model": {**model_entry, "pricing": own}, "symbol": "GPT", "decimals": 18, "bytes": 10, "output": 100},
        {"model": unlisted, "symbol": "USDC", "decimals": 6, "bytes": 10, "output": 100},
    ]
    answers = front_end(given)
    assert [a["maxRate"] for a in answers] == [6000, None, None]
    assert [a["most"] for a in answers] == [a["cheapest"] for a in answers]
    assert metering.largest_output(rates["USDC"][6000], answers[0]["boundInputs"], int(answers[0]["most"]), 100) == 100


def test_dashboard_pass_through__forwards_the_max_rate_and_returns_the_lots_rate_and_a_cut_deadline():
    seen: list[httpx.Headers] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        said = {"x-promptex-lot-rate-bps": "9000", "x-promptex-lane": "0", "x-promptex-deadline-seconds": "412",
                "x-promptex-cost-units": "1234", "x-promptex-cost": "0.001234", "x-promptex-asset": "USDC"}  # fmt: skip
        if len(seen) == 2:  # a refusal sent before the gateway read the request (its load shed)
            said = {"x-promptex-unread": "1", "retry-after": "1"}
            return httpx.Response(429, json={"error": {"code": "capacity_busy"}}, headers=said)
        return httpx.Response(200, json={}, headers=said)

    client = httpx.AsyncClient(transport=httpx.MockTransport(gateway))
    proxy = GatewayProxy(client, "http://gateway.invalid", max_body=1 << 20)
    app = Starlette(routes=[Route("/v1/chat/completions", proxy.handle, methods=["POST"])])
    with TestClient(app) as test:
        sent = {"x-promptex-max-rate-bps": "9000", "x-promptex-voucher": "v", "x-promptex-asset": "USDC", "cookie": "c"}
        answer = test.post("/v1/chat/completions", json={}, headers=sent)
        shed = test.post("/v1/chat/completions", json={}, headers=sent)
    # a signer behind the pass-through must see the mark, or it weighs a shed as a hold
    assert (shed.status_code, shed.headers.get("x-promptex-unread")) == (429, "1")
    assert answer.status_code == 200
    assert (seen[0].get("x-promptex-max-rate-bps"), seen[0].get("x-promptex-voucher")) == ("9000", "v")
    assert "cookie" not in seen[0]
    assert answer.headers["x-promptex-lot-rate-bps"] == "9000"
    assert answer.headers["x-promptex-deadline-seconds"] == "412"  # a session's last stretch: the cut said
    # the answer's cost, which a signer behind the pass-through checks on every plain answer
    assert [answer.headers.get(h) for h in ("x-promptex-cost-units", "x-promptex-cost", "x-promptex-asset")] == [
        "1234", "0.001234", "USDC"
    ]  # fmt: skip


def test_dashboard_pass_through__waits_for_the_gateway_until_its_request_deadline(tmp_path: Path) -> None:
    # The gateway waits for a long plain answer up to its deadline (600 s), charging it when
    # it comes; the pass-through gave up at the client's read timeout (the upstream timeout,
    # 120 s): the playground lost an answer it paid for.
    from types import SimpleNamespace

    from promptex.config import Settings
    from promptex.dashboard.routes.passthrough import routes

    waits: list[float] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        waits.append(request.extensions["timeout"]["read"])
        return httpx.Response(200, json={})

    s = Settings()
    client = httpx.AsyncClient(  # as dashboard.app makes it
        transport=httpx.MockTransport(gateway), timeout=httpx.Timeout(s.gateway_upstream_timeout_seconds, connect=5.0)
    )
    options = SimpleNamespace(gateway_url="http://gateway.invalid", rpc_url="http://node.invalid", dist=tmp_path)
    app = Starlette(routes=routes(SimpleNamespace(client=client, options=options, settings=s)))
    with TestClient(app) as test:
        assert test.post("/v1/chat/completions", json={}).status_code == 200
    assert waits[0] >= s.gateway_request_deadline_seconds
