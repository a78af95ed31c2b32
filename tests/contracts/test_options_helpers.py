"""promptex.protocol.options on its own: units, the collateral and payout mirrors (the
properties solvency rests on), and the settlement-rank rule on observation times
that wrap around 2**32. The mirrors are checked against the contract in
test_options.py and test_options_stateful.py."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptex.protocol import options as helpers
from promptex.protocol.options import CALL, PUT
from promptex.protocol.units import WAD as FIXED

SIZE = 1_000 * 10**18


def test_price_of_dollars__exact_prices__oracle_units():
    assert helpers.price_of_dollars("0.004218") == 4_218 * FIXED
    assert helpers.price_of_dollars(3) == 3_000_000 * FIXED
    with pytest.raises(ValueError):
        helpers.price_of_dollars("0." + "0" * 24 + "1")


@pytest.mark.parametrize(
    "kind, strike, bound, size",
    [
        (CALL, 5, 5, SIZE),  # cap not above strike
        (PUT, 5, 5, SIZE),  # floor not below strike
        (3, 5, 6, SIZE),  # unknown kind
        (CALL, 0, 10**36, 0),  # zero size
        (CALL, 0, 10**18, 10**18 + 1),  # not a whole USDC unit
    ],
)
def test_collateral_per_unit__bad_terms__refused(kind, strike, bound, size):
    with pytest.raises(ValueError):
        helpers.collateral_per_unit(kind, strike, bound, size)


def test_collateral_per_unit__call_spread_and_put__spread_times_size():
    assert helpers.collateral_per_unit(CALL, 4_000 * FIXED, 6_000 * FIXED, 10**24) == 2_000 * 10**6
    assert helpers.collateral_per_unit(PUT, 3_500_000 * FIXED, 0, SIZE) == 3_500 * 10**6


prices = st.integers(0, 10**30)


@given(kind=st.sampled_from([CALL, PUT]), a=prices, b=prices, price=prices, units=st.integers(1, 10**6))
def test_payout__any_price__between_zero_and_the_collateral(kind, a, b, price, units):
    strike, bound = (min(a, b), max(a, b)) if kind == CALL else (max(a, b), min(a, b))
    if strike == bound:
        bound = strike + 10**15 if kind == CALL else strike - 10**15
        if bound < 0:
            return
    strike, bound = strike // 10**15 * 10**15, bound // 10**15 * 10**15  # whole USDC units with SIZE
    if strike == bound:
        return
    collateral = helpers.collateral_per_unit(kind, strike, bound, SIZE)
    payout = helpers.payout_per_unit(kind, strike, bound, SIZE, price)
    assert 0 <= payout <= collateral
    # Holders and writers together get exactly what the writers posted.
    assert units * payout + units * (collateral - payout) == units * collateral


@given(price=prices, higher=prices)
def test_payout__call_rises_and_put_falls_with_price(price, higher):
    higher = price + higher
    strike, cap = 4_000 * FIXED, 6_000 * FIXED
    assert helpers.payout_per_unit(CALL, strike, cap, SIZE, higher) >= helpers.payout_per_unit(
        CALL, strike, cap, SIZE, price
    )
    assert helpers.payout_per_unit(PUT, cap, strike, SIZE, higher) <= helpers.payout_per_unit(
        PUT, cap, strike, SIZE, price
    )


def test_settlement_ranks__times_wrap_around_2_32__same_choice():
    expiry, window = 2**32 + 1_000, 600  # observation times are block.timestamp mod 2**32
    times = [expiry - 720 + 60 * k for k in range(16)]  # expiry − 720 … expiry + 180
    observations = [(t & (2**32 - 1), 0) for t in reversed(times)]  # newest first
    now = expiry + 200
    start, end = helpers.settlement_ranks(observations, now, expiry, window)
    assert times[len(times) - 1 - end] == expiry
    assert times[len(times) - 1 - start] == expiry - window


def test_settlement_ranks__end_is_the_newest_at_or_before_expiry__never_after():
    expiry, window = 10_000, 600
    observations = [(expiry + 59, 0)] + [(expiry - 1 - 60 * k, 0) for k in range(12)]  # newest first
    start, end = helpers.settlement_ranks(observations, expiry + 100, expiry, window)
    assert observations[end][0] == expiry - 1  # not the one a period after expiry
    assert observations[start][0] == expiry - 1 - 600


def test_settlement_ranks__window_not_held__late_ranks_and_no_offline_price():
    expiry, window = 10_000, 600
    after = [(expiry + 60 * k, 0) for k in range(20, 0, -1)]  # all after expiry
    assert helpers.settlement_ranks(after, expiry + 1_300, expiry, window) == (20, 20)
    short = [(expiry + 60, 0), (expiry, 0), (expiry - 60, 0)]  # the window's start is gone
    ranks = helpers.settlement_ranks(short, expiry + 61, expiry, window)
    assert ranks == (3, 1) and helpers.is_late(ranks, len(short))
    with pytest.raises(helpers.SettlementUnavailable, match="settles late"):
        helpers.settlement_price(short, expiry + 61, expiry, window)
    for at in (expiry - 1, expiry):
        with pytest.raises(helpers.SettlementUnavailable, match="not expired"):
            helpers.settlement_ranks(short, at, expiry, window)


def test_settlement_price__uq_average__oracle_conversion():
    uq = 4_218 * (1 << 112) // 10**18  # $0.004218 per token: UQ112.112 USDC units per token unit
    observations = [(1_600, uq * 1_600), (1_000, uq * 1_000)]  # newest first: a constant price
    price = helpers.settlement_price(observations, 1_601, 1_600, 600)
    assert abs(price - 4_218 * FIXED) <= FIXED // 10**6


def test_units_for_exposure__rounds_up():
    assert helpers.units_for_exposure(2_500_000 * 10**18, 10**24) == 3
    assert helpers.units_for_exposure(2_000_000 * 10**18, 10**24) == 2


@given(price=prices, units=st.integers(1, 10**6), premium=st.integers(0, 10**9))
def test_pnl__holder_and_writer__sum_to_zero(price, units, premium):
    terms = helpers.Terms("0x" + "11" * 20, CALL, 4_000 * FIXED, 6_000 * FIXED, 10**9, 10**24)
    assert helpers.holder_pnl(terms, units, premium, price) + helpers.writer_pnl(terms, units, premium, price) == 0
    assert helpers.holder_pnl(terms, units, premium, price) >= -units * premium  # a buyer risks only the premium
