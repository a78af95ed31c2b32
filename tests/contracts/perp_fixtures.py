"""Perp fixtures for the ape contract tests (test_perp*.py). A test module takes them
with `from perp_fixtures import *`, which brings the DEX fixtures too, and imports the
constants it uses by name.

Perp is deployed by the real code (`promptex.chain.perp.deploy_perp`) once per module
over the DEX of dex_fixtures.py, with GPT and CLD markets listed; `perp_world` then
builds the usual world: GPT/USDC and CLD/USDC pools $100,000 deep whose TWAPs cover
Perp's window, $100,000 in the LP pool from `lp`, and `trader`, `hedger` and
`liquidator` holding USDC and having approved Perp. `move_price` trades a pool to a new
spot price and lets the TWAP settle on it (one window later the average is that price).
"""

from math import isqrt

import dex_fixtures
import pytest
from dex_fixtures import *  # noqa: F403  (the DEX fixtures)

from promptex.chain.perp import deploy_perp
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.perp import DEFAULT_INSURANCE_FEE_BPS as INSURANCE_FEE_BPS
from promptex.protocol.perp import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.perp import MarketParams
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import USD_MICRO as USD

__all__ = [  # the fixtures (dex_fixtures' included); constants are imported by name
    *dex_fixtures.__all__,
    "hedger",
    "liquidator",
    "move_price",
    "perp",
    "perp_world",
    "tx_at",
]

POOL_DEPOSIT = 100_000 * USD
GPT_MARKET = MarketParams(
    funding_k=10**14,  # 0.01 % an hour
    max_leverage=10,
    maintenance_bps=500,
    oi_cap_bps=5_000,
    liquidation_bonus_bps=200,
    open_fee_bps=10,
    close_fee_bps=10,
    max_profit_bps=10_000,
    depth_cap_bps=10_000,  # these tests size positions against the LP pool; the depth cap has its own
)
CLD_MARKET = MarketParams(
    funding_k=10**16,  # the most: 1 % an hour
    max_leverage=20,
    maintenance_bps=300,
    oi_cap_bps=2_000,
    liquidation_bonus_bps=100,
    open_fee_bps=0,
    close_fee_bps=0,
    max_profit_bps=2_500,  # gains capped at 25 % of notional
    depth_cap_bps=10_000,
)


@pytest.fixture(scope="module")
def liquidator(accounts):
    return accounts[8]


@pytest.fixture(scope="module")
def hedger(accounts):
    """A second trader (a company hedging its compute bill)."""
    return accounts[9]


@pytest.fixture(scope="module")
def perp(admin, usdc, oracle, gpt, cld):
    return deploy_perp(
        admin,
        {"USDC": usdc, "Oracle": oracle},
        twap_window=TWAP_WINDOW,
        insurance_fee_bps=INSURANCE_FEE_BPS,
        markets={gpt.address: GPT_MARKET, cld.address: CLD_MARKET},
        pausers=[admin.address],
        log=lambda _: None,
    )


def tx_at(chain, timestamp):
    """The next transaction is mined at `timestamp`."""
    chain.pending_timestamp = timestamp


def cover_twap(oracle, chain, tokens, by):
    """Oracle observations of `tokens` at least TWAP_WINDOW old."""
    for token in tokens:
        oracle.update(token, sender=by)
    chain.pending_timestamp += TWAP_WINDOW
    for token in tokens:
        oracle.update(token, sender=by)


@pytest.fixture
def perp_world(markets, perp, router, oracle, chain, usdc, lp, trader, hedger, liquidator):
    """The world of the module docstring; returns (cld, gpt, usdc, cld_pool, gpt_pool)."""
    cld, gpt = markets[0], markets[1]
    cover_twap(oracle, chain, (cld, gpt), lp)
    usdc.approve(perp, MAX_UINT, sender=lp)
    for token in (cld, gpt, usdc):  # seeding the pools spent the router allowances
        token.approve(router, MAX_UINT, sender=lp)
    perp.deposit(POOL_DEPOSIT, 0, sender=lp)
    for account in (trader, hedger, liquidator):
        usdc.mint(account, 100_000 * USD, sender=account)
        usdc.approve(perp, MAX_UINT, sender=account)
    return markets


@pytest.fixture
def move_price(router, oracle, chain, lp):
    """Trade `pool` (token/USDC) until its spot price of `token` is about `num / den`
    times what it was, then let one TWAP window pass on that price (the last
    transaction is an oracle update, so views see the new average). Returns the TWAP."""

    def _move(token, pool, num, den, perp=None):
        usdc_is_0 = pool.token0() != token.address
        reserve0, reserve1, _ = pool.get_reserves()
        reserve_usdc, reserve_token = (reserve0, reserve1) if usdc_is_0 else (reserve1, reserve0)
        usdc = router.quote_token()
        deadline = chain.pending_timestamp + 3_600
        if num > den:  # buy the token with USDC: the USDC reserve grows by sqrt(num / den)
            target = reserve_usdc * isqrt(num * 10**36 // den) // 10**18
            amount = (target - reserve_usdc) * 1_000 // 997
            router.swap_exact_in(amount, 0, [usdc, token.address], [DEFAULT_FEE], lp, deadline, sender=lp)
        elif num < den:  # sell the token: its reserve grows by sqrt(den / num)
            target = reserve_token * isqrt(den * 10**36 // num) // 10**18
            amount = (target - reserve_token) * 1_000 // 997
            router.swap_exact_in(amount, 0, [token.address, usdc], [DEFAULT_FEE], lp, deadline, sender=lp)
        chain.pending_timestamp += 60
        oracle.update(token, sender=lp)
        chain.pending_timestamp += TWAP_WINDOW
        oracle.update(token, sender=lp)
        return oracle.consult(token, TWAP_WINDOW)

    return _move
