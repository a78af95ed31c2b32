"""Paying a model in another provider's token: the listed lot's USDC price converted at
the paying token's Oracle TWAP (cached, never read per request), rounded up once; no
fresh price → 503 and no money moved."""

from __future__ import annotations

import time
from fractions import Fraction

import httpx

from promptex import metering
from promptex.gateway.twap import Twap
from promptex.metering import load_catalog
from promptex.protocol.units import PRICE_SCALE
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CATALOG, Fake, FakeTwaps, Harness

HELLO = [{"role": "user", "content": "hello world"}]
HELLO_TOKENS = 3 + 2
GPT_PRICE = 333_333 * 10**18  # Oracle.consult: GPT at $0.333333 (USDC units per 10**18 GPT units, 18 decimals)
PAY_GPT = {"x-promptex-asset": "GPT"}


def gpt_cost(model: str, rate_bps: int, n_in: int, n_out: int, price: int = GPT_PRICE, fee_bps: int = 500) -> int:
    """Worked out independently: list × rate × (1 + fee) in USDC units, × 10**36 / price, rounded up once."""
    p = load_catalog(CATALOG).price(model)
    usdc = Fraction(p.input_usd_micro_per_1k * n_in + p.output_usd_micro_per_1k * n_out, 1000)
    usdc *= Fraction(rate_bps, 10_000) * Fraction(10_000 + fee_bps, 10_000)
    exact = usdc * PRICE_SCALE / price
    return -(-exact.numerator // exact.denominator)


def chat(gw: Harness, key: str, model: str = "fake-claude", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": model, "messages": HELLO, "max_tokens": 4},
        headers={"authorization": f"Bearer {key}", **PAY_GPT, **(headers or {})},
        timeout=30,
    )


def test_claude_paid_in_gpt__listed_lot_serves__charged_at_twap_rounded_up(
    gw_twap: Harness, fake: Fake, twaps: FakeTwaps
) -> None:
    gw = gw_twap
    twaps.prices = {"GPT": GPT_PRICE}
    gw.gateway.twaps.refresh()  # type: ignore[union-attr]
    gw.add_lot(fake, provider="anthropic", api="anthropic", kind="tokenized")
    listed = gw.add_lot(fake, provider="anthropic", api="anthropic", kind="listed", rate_bps=6000)
    gw.add_lot(fake, provider="openai", kind="tokenized")  # GPT's own lots serve GPT's models only
    account, key = gw.buyer(asset="GPT", amount=TOKEN)

    response = chat(gw, key)

    assert response.status_code == 200, response.text
    assert response.headers["x-promptex-lot"] == str(listed)
    cost = gpt_cost("fake-claude", 6000, HELLO_TOKENS, 4)
    p = load_catalog(CATALOG).price("fake-claude")
    exact_usdc = Fraction(p.input_usd_micro_per_1k * HELLO_TOKENS + p.output_usd_micro_per_1k * 4, 1000) * Fraction(
        6000 * 10_500, 10**8
    )
    assert Fraction(cost * GPT_PRICE, PRICE_SCALE) >= exact_usdc  # never in the buyer's favour…
    assert Fraction((cost - 1) * GPT_PRICE, PRICE_SCALE) < exact_usdc  # …by less than one GPT unit
    assert gw.ledger.balance(account, "GPT").posted == TOKEN - cost
    record = gw.ledger.usage_record(response.headers["x-request-id"])
    assert record is not None
    assert (record.asset, record.cost, record.lot_kind, record.gateway_lot_id) == ("GPT", cost, "listed", listed)
    assert record.fee_bps == gw.settings.protocol_fee_bps
    gw.ledger.check()


def test_cross_token__price_changes__new_price_after_refresh_only_no_chain_read_per_request(
    gw_twap: Harness, fake: Fake, twaps: FakeTwaps
) -> None:
    gw = gw_twap
    twaps.prices = {"GPT": GPT_PRICE}
    gw.gateway.twaps.refresh()  # type: ignore[union-attr]
    gw.add_lot(fake, provider="anthropic", api="anthropic", kind="listed", rate_bps=6000)
    account, key = gw.buyer(asset="GPT", amount=TOKEN)
    reads = twaps.reads

    for _ in range(3):
        assert chat(gw, key).status_code == 200
    twaps.prices = {"GPT": GPT_PRICE * 2}  # not read until the next refresh
    assert chat(gw, key).status_code == 200
    assert twaps.reads == reads
    gw.gateway.twaps.refresh()  # type: ignore[union-attr]
    assert chat(gw, key).status_code == 200

    spent = 4 * gpt_cost("fake-claude", 6000, HELLO_TOKENS, 4) + gpt_cost(
        "fake-claude", 6000, HELLO_TOKENS, 4, price=GPT_PRICE * 2
    )
    assert gw.ledger.balance(account, "GPT").posted == TOKEN - spent


def test_cross_token__no_twap_for_the_token__503_no_money_moved(gw_twap: Harness, fake: Fake, twaps: FakeTwaps) -> None:
    gw = gw_twap
    twaps.prices = {"GEM": 10**24}  # another token is priced, GPT is not
    gw.gateway.twaps.refresh()  # type: ignore[union-attr]
    gw.add_lot(fake, provider="anthropic", api="anthropic", kind="listed")
    account, key = gw.buyer(asset="GPT", amount=TOKEN)

    response = chat(gw, key)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "price_unavailable"
    assert response.headers["x-request-id"].startswith("req_")
    assert fake.config.requests == 0
    assert (gw.ledger.balance(account, "GPT").posted, gw.ledger.balance(account, "GPT").held) == (TOKEN, 0)


def test_cross_token__twap_stale__503_no_money_moved(gw_twap: Harness, fake: Fake, twaps: FakeTwaps) -> None:
    gw = gw_twap
    twaps.prices = {"GPT": GPT_PRICE}
    cache = gw.gateway.twaps
    assert cache is not None
    cache.refresh()
    gw.add_lot(fake, provider="anthropic", api="anthropic", kind="listed")
    account, key = gw.buyer(asset="GPT", amount=TOKEN)
    cache.clock = lambda: time.monotonic() + gw.settings.gateway_twap_max_age_seconds + 1

    response = chat(gw, key)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "price_unavailable"
    assert fake.config.requests == 0
    assert gw.ledger.balance(account, "GPT").posted == TOKEN


def test_cross_token__no_oracle_configured__400_no_money_moved(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake, provider="anthropic", api="anthropic", kind="listed")
    account, key = gw.buyer(asset="GPT", amount=TOKEN)

    response = chat(gw, key)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "conversion_unavailable"
    assert fake.config.requests == 0
    assert gw.ledger.balance(account, "GPT").posted == TOKEN


def test_cross_token__unknown_asset__400(gw_twap: Harness, fake: Fake) -> None:
    gw_twap.add_lot(fake, provider="anthropic", api="anthropic", kind="listed")
    _, key = gw_twap.buyer(asset="GPT", amount=TOKEN)
    response = chat(gw_twap, key, headers={"x-promptex-asset": "DOGE"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-promptex-asset"


def test_models__fresh_twap__lists_the_price_in_other_tokens(gw_twap: Harness, fake: Fake, twaps: FakeTwaps) -> None:
    gw = gw_twap
    twaps.prices = {"GPT": 500_000 * 10**18}  # $0.50
    gw.gateway.twaps.refresh()  # type: ignore[union-attr]
    gw.add_lot(fake, provider="anthropic", api="anthropic", kind="listed", rate_bps=5000)
    _, key = gw.buyer(amount=USDC)
    models = {
        m["id"]: m for m in httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).json()["data"]
    }
    pricing = models["fake-claude"]["pricing"]
    # $3 / $15 per million list, listed at 50 % plus 5 %: $1.575 / $7.875, at $0.50 a GPT
    assert pricing["USDC"] == {"input_per_million": "1.575", "output_per_million": "7.875", "rate_bps": 5000}
    assert pricing["GPT"] == {"input_per_million": "3.15", "output_per_million": "15.75", "rate_bps": 5000}
    assert "GEM" not in pricing


def test_twap__usdc_per_token__converts_exact_then_rounded_up_once() -> None:
    usdc = metering.flat_rates("USDC", 7)  # 7 USDC units per 1k tokens
    twap = Twap("GPT", 3 * 10**18, 0.0)  # $0.000003 per whole GPT
    assert twap.usdc_per_token == 3
    gpt = metering.usdc_to_token_rates(usdc, "GPT", twap.usdc_per_token)
    assert gpt.asset == "GPT"
    assert gpt.input_per_1k == Fraction(7 * 10**36, 3 * 10**18)
    cost = metering.message_cost(gpt, 1)  # 7/1000 USDC units → 7/3 · 10**15 GPT units
    assert cost == -(-(7 * 10**15) // 3)
