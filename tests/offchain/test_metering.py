"""Metering: the catalog and the arithmetic of a message's cost (rounded up once)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptex.metering import (
    CatalogError,
    ImageTokens,
    ModelPrice,
    PricingError,
    Rates,
    TokenUsage,
    UnknownAsset,
    UnknownModel,
    anthropic_usage,
    asset,
    exact_cost,
    exact_usage_cost,
    flat_rates,
    list_rates,
    load_catalog,
    message_cost,
    parse_catalog,
    provider_token,
    provider_token_rates,
    rates_for,
    split_usdc_charge,
    upper_bound,
    usage_cost,
    usdc_rates,
    usdc_to_token_rates,
)
from promptex.protocol.providers import PROVIDER_TOKENS
from promptex.protocol.units import BPS, TOKEN_UNIT, USD_MICRO

# $3 / $15 per million; cache reads $0.30, writes $3.75 (five minutes) and $6 (one hour)
SONNET = ModelPrice("claude-sonnet-4-5", "anthropic", 3_000, 15_000, 300, 3_750, 6_000)


# ─── Catalog ─────────────────────────────────────────────────────────────────


def test_load_catalog__default__every_provider_has_models_and_a_token():
    catalog = load_catalog()
    providers = {price.provider for price in catalog}
    assert providers == {"anthropic", "openai", "google", "meta"}
    assert {provider_token(p).symbol for p in providers} == {t.symbol for t in PROVIDER_TOKENS}
    assert catalog.price("claude-sonnet-4-5") == SONNET
    assert catalog.price("gpt-4o").input_usd_micro_per_1k == 2_500


def test_load_catalog__override_file__replaces_default(tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text(
        '[models."house-model"]\nprovider = "openai"\ninput_usd_micro_per_1k = 7\noutput_usd_micro_per_1k = 9\n'
    )
    catalog = load_catalog(path)
    assert len(catalog) == 1
    assert catalog.price("house-model") == ModelPrice("house-model", "openai", 7, 9)
    with pytest.raises(UnknownModel, match="claude-sonnet-4-5"):
        catalog.price("claude-sonnet-4-5")


def test_load_catalog__missing_file__catalog_error(tmp_path):
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("models = 3", "no \\[models"),
        ("[models", "not valid TOML"),
        ('[models.m]\nprovider = "openai"\ninput_usd_micro_per_1k = -1\noutput_usd_micro_per_1k = 0', "non-negative"),
        ('[models.m]\nprovider = "openai"\ninput_usd_micro_per_1k = 1.5\noutput_usd_micro_per_1k = 0', "integer"),
        ("[models.m]\ninput_usd_micro_per_1k = 1\noutput_usd_micro_per_1k = 0", "provider"),
        ('[models.m]\nprovider = "x"\ninput_usd_micro_per_1k = 1\noutput_usd_micro_per_1k = 0\nextra = 1', "extra"),
        (
            '[models.m]\nprovider = "x"\ninput_usd_micro_per_1k = 1\noutput_usd_micro_per_1k = 0\n'
            "cache_read_usd_micro_per_1k = -1",
            "cache_read_usd_micro_per_1k must be a non-negative",
        ),
        (
            '[models.m]\nprovider = "x"\ninput_usd_micro_per_1k = 1\noutput_usd_micro_per_1k = 0\nimage_tokens = 0',
            "image_tokens must be a positive integer",
        ),
        (
            '[models.m]\nprovider = "x"\ninput_usd_micro_per_1k = 1\noutput_usd_micro_per_1k = 0\n'
            "image_tokens = 100\nimage_tokens_low = 101",
            "image_tokens_low must not exceed",
        ),
        (
            '[models.m]\nprovider = "x"\ninput_usd_micro_per_1k = 1\noutput_usd_micro_per_1k = 0\nreasoning = "no"',
            "reasoning must be true or false",
        ),
    ],
)
def test_parse_catalog__malformed__catalog_error(text, message):
    with pytest.raises(CatalogError, match=message):
        parse_catalog(text)


def test_load_catalog__cache_rates__listed_for_anthropic_and_openai_absent_elsewhere():
    catalog = load_catalog()
    for price in catalog:
        if price.provider == "anthropic":  # reads 0.1 ×, five-minute writes 1.25 ×, one-hour writes 2 × input
            assert price.cache_read_usd_micro_per_1k == price.input_usd_micro_per_1k // 10
            assert price.cache_write_usd_micro_per_1k == price.input_usd_micro_per_1k * 5 // 4
            assert price.cache_write_1h_usd_micro_per_1k == price.input_usd_micro_per_1k * 2
        elif price.provider == "openai" and price.output_usd_micro_per_1k:  # cached input, never written at a price
            assert 0 < price.cache_read_usd_micro_per_1k < price.input_usd_micro_per_1k  # type: ignore[operator]
            assert price.cache_write_usd_micro_per_1k is None
    assert catalog.price("gpt-4o").cache_read_usd_micro_per_1k == 1_250
    assert catalog.price("gemini-2.5-pro").cache_read_usd_micro_per_1k is None


def test_catalog_image_tokens__listed_per_model__else_the_default_at_any_detail():
    """gpt-4o-mini's image tokens are multiplied (OpenAI's formula: 2,833 + 5,667 per 512-px
    tile, at most 8 tiles; 2,833 at low detail): above the chat front's default allowance,
    so listed; every other model takes the default, at any detail."""
    catalog = load_catalog()
    mini = catalog.image_tokens("gpt-4o-mini", 4_000)
    assert (mini.high, mini.low) == (2_833 + 8 * 5_667, 2_833)
    assert [mini.of(d) for d in ("high", "auto", None, "low")] == [48_169, 48_169, 48_169, 2_833]
    assert [p.model for p in catalog if p.image_tokens is not None] == ["gpt-4o-mini"]
    for model in ("gpt-4o", "gpt-4.1-nano", "nobody-knows"):
        assert catalog.image_tokens(model, 4_000).of("low") == catalog.image_tokens(model, 4_000).high == 4_000
    low_only = parse_catalog(
        '[models.m]\nprovider = "x"\ninput_usd_micro_per_1k = 1\noutput_usd_micro_per_1k = 0\nimage_tokens_low = 9000'
    )
    assert low_only.image_tokens("m", 4_000) == ImageTokens(4_000, 4_000)  # never above the high


def test_catalog_reasoning__models_that_never_reason_say_so__others_may():
    """`reasoning = false` marks the models that never reason (their reported reasoning is
    visible output, `Gateway.bounded`); a model not marked may reason."""
    catalog = load_catalog()
    never = {p.model for p in catalog if not p.reasoning}
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "Llama-3.3-70B-Instruct", "claude-3-5-haiku-latest"} <= never
    assert not never & {"gpt-5", "o3", "o4-mini", "claude-sonnet-4-5", "gemini-2.5-pro", "gemini-2.5-flash-lite"}


# ─── Token usage and prompt caches ──────────────────────────────────────────


def test_usage_cost__anthropic_cache_reads_and_writes__each_at_its_catalog_rate():
    # 1,000 input tokens: 600 read from the cache, 300 written (100 of them for an hour), 100
    # plain; 200 output. USD micro-units: 100×3 + 600×0.3 + 200×3.75 + 100×6 + 200×15.
    usage = anthropic_usage(100, 200, cache_read=600, cache_write=300, cache_write_1h=100)
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (1_000, 600, 300)
    assert exact_usage_cost(list_rates(SONNET), usage) == Fraction(300 + 180 + 750 + 600 + 3_000)
    assert usage_cost(list_rates(SONNET), usage) == 4_830
    # In CLD: the same list cost ÷ the face value, rounded up once.
    cld = provider_token_rates(SONNET)
    assert usage_cost(cld, usage) == -(-4_830 * TOKEN_UNIT // PROVIDER_TOKENS[0].face_value_usd_micro)
    # Without the cache the same tokens cost the plain input rate.
    assert usage_cost(list_rates(SONNET), TokenUsage(1_000, 200)) == 3_000 + 3_000


def test_usage_cost__openai_reasoning_tokens__inside_output_never_charged_twice():
    gpt = load_catalog().price("gpt-4o")
    with_reasoning = TokenUsage(1_000, 500, reasoning_tokens=400)
    assert usage_cost(list_rates(gpt), with_reasoning) == message_cost(list_rates(gpt), 1_000, 500)
    cached = TokenUsage(1_000, 500, cache_read_tokens=800, reasoning_tokens=400)
    # 200 × $2.50 + 800 × $1.25 (cached input) + 500 × $10, per million.
    assert usage_cost(list_rates(gpt), cached) == 500 + 1_000 + 5_000


def test_usage_cost__model_without_cache_rates__cached_tokens_at_the_input_rate():
    plain = ModelPrice("m", "openai", 1_000, 2_000)
    usage = TokenUsage(1_000, 10, cache_read_tokens=400, cache_write_tokens=300, cache_write_1h_tokens=100)
    assert usage_cost(list_rates(plain), usage) == message_cost(list_rates(plain), 1_000, 10)


@pytest.mark.parametrize(
    "counts, message",
    [
        ({"input_tokens": -1, "output_tokens": 0}, "non-negative"),
        (
            {"input_tokens": 10, "output_tokens": 0, "cache_read_tokens": 6, "cache_write_tokens": 5},
            "part of the input",
        ),
        ({"input_tokens": 10, "output_tokens": 0, "cache_write_tokens": 1, "cache_write_1h_tokens": 2}, "one-hour"),
        ({"input_tokens": 10, "output_tokens": 3, "reasoning_tokens": 4}, "part of the output"),
        ({"input_tokens": 10, "output_tokens": True}, "non-negative integers"),
    ],
)
def test_token_usage__parts_beyond_their_whole__refused(counts, message):
    with pytest.raises(ValueError, match=message):
        TokenUsage(**counts)


usages = st.builds(
    lambda plain, read, write, hour, out, reasoning: TokenUsage(
        plain + read + write + hour, out + reasoning, read, write + hour, hour, reasoning
    ),
    *[st.integers(min_value=0, max_value=10**5)] * 6,
)


@given(usages, st.booleans())
def test_upper_bound__any_usage_within_the_counts__never_exceeded(usage, writes):
    """A hold priced by `upper_bound` covers whatever the upstream then reports within the
    bound's token counts (writes only when the request may write to the cache)."""
    if not writes:
        usage = TokenUsage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, 0, 0, 0)
    for rates in (list_rates(SONNET), provider_token_rates(SONNET), usdc_rates(SONNET, 6_000, 500)):
        bound = upper_bound(rates, usage.input_tokens, usage.output_tokens, cache_writes=writes)
        assert usage_cost(rates, usage) <= bound
    assert upper_bound(list_rates(SONNET), 1_000, 0, cache_writes=True) == 6_000  # every input token at the 1h rate
    assert upper_bound(list_rates(SONNET), 1_000, 0) == 3_000


# ─── Assets ──────────────────────────────────────────────────────────────────


def test_asset__symbols__decimals_from_chain_providers():
    assert asset("usdc").unit == USD_MICRO
    assert asset("CLD").unit == TOKEN_UNIT
    assert asset("CREDIT").decimals == 18
    with pytest.raises(UnknownAsset, match="unknown asset 'DOGE'"):
        asset("DOGE")


# ─── Cost ────────────────────────────────────────────────────────────────────


def test_message_cost__exact_whole_units__not_rounded():
    assert message_cost(flat_rates("CREDIT", 3 * TOKEN_UNIT), 1_500) == 4_500_000_000_000_000_000


def test_message_cost__fraction_of_a_unit__rounded_up_once():
    rates = Rates("USDC", Fraction(1, 3), Fraction(2, 3))
    assert exact_cost(rates, 1_000, 1_000) == 1  # 1/3 + 2/3: one rounding of the sum, not two
    assert message_cost(rates, 1_000, 1_000) == 1
    assert message_cost(rates, 1, 0) == 1  # 1/3000 of a unit still costs one unit


def test_message_cost__no_tokens__zero():
    assert message_cost(provider_token_rates(SONNET), 0, 0) == 0


def test_message_cost__negative_tokens__pricing_error():
    with pytest.raises(PricingError, match="negative"):
        message_cost(flat_rates("USDC", 1), -1)


def test_provider_token_rates__sonnet_in_cld__list_cost_over_face_value():
    # $0.0105 list ÷ $0.004218 per CLD = 2.4893314366998577524… CLD, rounded up in wei
    assert message_cost(provider_token_rates(SONNET), 1_000, 500) == 2_489_331_436_699_857_753
    assert provider_token_rates(SONNET).asset == "CLD"


def test_provider_token_rates__face_value_given__used():
    rates = provider_token_rates(SONNET, face_value_usd_micro=USD_MICRO)  # 1 CLD = $1
    assert message_cost(rates, 1_000, 0) == 3 * TOKEN_UNIT // 1_000  # $0.003


def test_usdc_rates__lot_rate_and_fee__list_times_rate_plus_fee():
    # $0.0105 × 60 % × 1.05 = $0.006615
    assert message_cost(usdc_rates(SONNET, 6_000, 500), 1_000, 500) == 6_615


@pytest.mark.parametrize("lot_rate_bps, fee_bps", [(0, 0), (BPS + 1, 0), (6_000, -1)])
def test_usdc_rates__out_of_range__pricing_error(lot_rate_bps, fee_bps):
    with pytest.raises(PricingError):
        usdc_rates(SONNET, lot_rate_bps, fee_bps)


def test_rates_for__other_providers_token__listed_usdc_price_converted_at_its_twap():
    twaps = {"CLD": Fraction(4_000), "GPT": Fraction(3_500_000)}  # USDC micro per whole token
    rates = rates_for(SONNET, "GPT", lot_rate_bps=6_000, fee_bps=500, twaps=twaps)
    assert rates.asset == "GPT"
    in_usdc = exact_cost(usdc_rates(SONNET, 6_000, 500), 1_000, 500)  # 6,615 USDC micro
    assert exact_cost(rates, 1_000, 500) == in_usdc * TOKEN_UNIT / 3_500_000  # CLD's TWAP plays no part
    assert message_cost(rates, 1_000, 500) == 1_890_000_000_000_000


def test_rates_for__other_token_without_its_twap__pricing_error():
    with pytest.raises(PricingError, match="TWAP: need GPT"):
        rates_for(SONNET, "GPT", lot_rate_bps=6_000, twaps={"CLD": Fraction(4_000)})


def test_rates_for__other_token_without_lot_rate__pricing_error():
    with pytest.raises(PricingError, match="lot's rate"):
        rates_for(SONNET, "GPT", twaps={"GPT": Fraction(3_500_000)})


def test_usdc_to_token_rates__not_usdc_or_no_price__pricing_error():
    with pytest.raises(PricingError, match="only USDC rates"):
        usdc_to_token_rates(provider_token_rates(SONNET), "GPT", Fraction(1))
    with pytest.raises(PricingError, match="positive"):
        usdc_to_token_rates(usdc_rates(SONNET, 6_000, 0), "GPT", Fraction(0))


def test_rates_for__usdc_without_lot_rate__pricing_error():
    with pytest.raises(PricingError, match="lot's rate"):
        rates_for(SONNET, "USDC")


def test_rates_for__credit__pricing_error():
    with pytest.raises(PricingError, match="cannot be paid in CREDIT"):
        rates_for(SONNET, "CREDIT")


def test_split_usdc_charge__any_total__conserved_and_fee_takes_rounding():
    assert split_usdc_charge(6_615, 500) == (6_300, 315)
    assert split_usdc_charge(1, 500) == (0, 1)
    assert split_usdc_charge(0, 500) == (0, 0)


# ─── Properties ──────────────────────────────────────────────────────────────

tokens = st.integers(min_value=0, max_value=10**9)
rate = st.fractions(min_value=0, max_value=10**24, max_denominator=10**12)
prices = st.builds(
    ModelPrice,
    st.just("m"),
    st.sampled_from(["anthropic", "openai", "google", "meta"]),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
)


@given(rate, rate, tokens, tokens)
def test_message_cost__any_rates__never_below_exact_and_less_than_one_unit_above(in_rate, out_rate, n_in, n_out):
    rates = Rates("CREDIT", in_rate, out_rate)
    exact = exact_cost(rates, n_in, n_out)
    cost = message_cost(rates, n_in, n_out)
    assert isinstance(cost, int)
    assert exact <= cost < exact + 1


@given(
    prices,
    tokens,
    tokens,
    st.sampled_from(["own", "USDC", "GEM"]),
    st.integers(min_value=1, max_value=BPS),
    st.integers(min_value=0, max_value=BPS),
)
def test_rates_for__any_model_and_asset__cost_never_below_exact(price, n_in, n_out, pay, lot_bps, fee_bps):
    symbol = provider_token(price.provider).symbol if pay == "own" else pay
    twaps = {token.symbol: Fraction(token.face_value_usd_micro * 7, 5) for token in PROVIDER_TOKENS}
    rates = rates_for(price, symbol, lot_rate_bps=lot_bps, fee_bps=fee_bps, twaps=twaps)
    exact = exact_cost(rates, n_in, n_out)
    cost = message_cost(rates, n_in, n_out)
    assert exact <= cost < exact + 1
    list_usd_micro = Fraction(price.input_usd_micro_per_1k * n_in + price.output_usd_micro_per_1k * n_out, 1_000)
    listed_usdc = list_usd_micro * lot_bps * (BPS + fee_bps) / BPS**2
    if symbol == "USDC":
        assert exact == listed_usdc
    elif symbol == provider_token(price.provider).symbol:  # a tokenized lot: the list price at the face value
        face = next(t.face_value_usd_micro for t in PROVIDER_TOKENS if t.symbol == symbol)
        assert exact == list_usd_micro * TOKEN_UNIT / face
    else:  # another provider's token: the listed lot's USDC price at that token's TWAP
        assert exact == listed_usdc * TOKEN_UNIT / twaps[symbol]


@given(tokens, tokens, tokens)
def test_message_cost__more_tokens__never_cheaper(n_in, n_out, extra):
    rates = provider_token_rates(SONNET)
    assert message_cost(rates, n_in + extra, n_out) >= message_cost(rates, n_in, n_out)
    assert message_cost(rates, n_in, n_out + extra) >= message_cost(rates, n_in, n_out)


@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=BPS))
def test_split_usdc_charge__any_total__parts_sum_to_total(total, fee_bps):
    seller, fee = split_usdc_charge(total, fee_bps)
    assert seller + fee == total
    assert seller >= 0 and fee >= 0
    assert seller * (BPS + fee_bps) <= total * BPS


@given(rate, rate, st.one_of(st.none(), rate), st.one_of(st.none(), rate), st.one_of(st.none(), rate), usages)
def test_usage_cost_and_upper_bound__integer_form__equal_to_the_fractions(i, o, read, write, hour, usage):
    """Costs are computed in integers over one denominator (the gateway's hot path): the
    same numbers as the exact rationals, rounded up once."""
    rates = Rates("CREDIT", i, o, read, write, hour)
    exact = exact_usage_cost(rates, usage)
    assert usage_cost(rates, usage) == -(-exact.numerator // exact.denominator)
    for writes in (False, True):
        rate_in = max(rates.input_per_1k, rates.cache_read)
        if writes:
            rate_in = max(rate_in, rates.cache_write, rates.cache_write_1h)
        bound = (rate_in * usage.input_tokens + o * usage.output_tokens) / 1_000
        expected = -(-bound.numerator // bound.denominator)
        assert upper_bound(rates, usage.input_tokens, usage.output_tokens, cache_writes=writes) == expected
