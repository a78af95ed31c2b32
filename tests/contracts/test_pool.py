"""Pool through ape: liquidity, both swaps, the TWAP accumulators, skim/sync, the
LP token, bad input, and the attacks the issue names (first-depositor inflation by
donation, reentrancy and read-only reentrancy through a malicious token). The
swap's gas is pinned in test_dex_gas.py.
"""

from math import isqrt

import ape
import pytest

from promptex.chain.dex import pool_at
from promptex.protocol.dex import DEFAULT_FEE, MINIMUM_LIQUIDITY, amount_out
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import ZERO_ADDRESS as ZERO

V2_SWAP_OUT = 453_305_446_940_074_565  # v2-core's swap test: 1 token1 in at reserves 5 / 10


@pytest.fixture
def pool(factory, plain, admin):
    """An empty 0.30 % pool of plain[0] (token0) / plain[1] (token1)."""
    factory.create_pool(plain[0], plain[1], DEFAULT_FEE, sender=admin)
    return pool_at(factory.get_pool(plain[0], plain[1], DEFAULT_FEE))


@pytest.fixture
def seed(pool, plain, lp):
    """Send amounts to the pool and mint LP units to `lp` (or `to`)."""

    def _seed(amount0, amount1, sender=None, to=None):
        sender = lp if sender is None else sender
        plain[0].transfer(pool, amount0, sender=sender)
        plain[1].transfer(pool, amount1, sender=sender)
        return pool.mint(sender if to is None else to, sender=sender)

    return _seed


def reserves(pool):
    reserve0, reserve1, _ = pool.get_reserves()
    return reserve0, reserve1


def state(pool, plain):
    """Everything a failed call must leave untouched."""
    return (
        pool.get_reserves(),
        pool.totalSupply(),
        pool.price0_cumulative_last(),
        pool.price1_cumulative_last(),
        plain[0].balanceOf(pool),
        plain[1].balanceOf(pool),
    )


# ─── creation and the LP token ───────────────────────────────────────────────


def test_create__factory_pool__tokens_sorted_fee_and_factory_set(pool, plain, factory):
    assert (pool.token0(), pool.token1()) == (plain[0].address, plain[1].address)
    assert pool.fee() == DEFAULT_FEE
    assert pool.factory() == factory.address
    assert reserves(pool) == (0, 0)
    assert pool.totalSupply() == 0


def test_lp_token__metadata__named_and_18_decimals(pool, factory):
    assert (pool.name(), pool.symbol(), pool.decimals()) == ("PROMPTEX Pool LP", "PX-LP", 18)
    assert pool.MINIMUM_LIQUIDITY() == MINIMUM_LIQUIDITY


def test_deploy__not_through_a_factory__reverts(project, admin):
    # The constructor asks its creator for the parameters; an account has none.
    with ape.reverts():
        admin.deploy(project.Pool)


# ─── mint ────────────────────────────────────────────────────────────────────


def test_mint__first_deposit__locks_minimum_liquidity_at_zero_address(pool, seed, lp):
    receipt = seed(4 * UNIT, 9 * UNIT)
    expected = isqrt(4 * UNIT * 9 * UNIT) - MINIMUM_LIQUIDITY
    assert pool.balanceOf(lp) == expected
    assert pool.balanceOf(ZERO) == MINIMUM_LIQUIDITY
    assert pool.totalSupply() == expected + MINIMUM_LIQUIDITY
    assert reserves(pool) == (4 * UNIT, 9 * UNIT)
    event = pool.LiquidityAdded.from_receipt(receipt)[0]
    assert (event.amount0, event.amount1, event.liquidity, event.to) == (4 * UNIT, 9 * UNIT, expected, lp.address)


def test_mint__later_deposit__smaller_pro_rata_share_rounded_down(pool, seed, trader):
    seed(4 * UNIT, 9 * UNIT)
    supply = pool.totalSupply()
    seed(2 * UNIT, 3 * UNIT, sender=trader)  # token1 short of the 4.5 the ratio wants
    expected = min(2 * UNIT * supply // (4 * UNIT), 3 * UNIT * supply // (9 * UNIT))
    assert pool.balanceOf(trader) == expected
    assert reserves(pool) == (6 * UNIT, 12 * UNIT)  # the excess token0 is donated


def test_mint__first_deposit_too_small__reverts(pool, seed):
    with ape.reverts("pool: insufficient liquidity minted"):
        seed(1_000, 1_000)  # sqrt = MINIMUM_LIQUIDITY: nothing left to mint


def test_mint__nothing_sent__reverts(pool, seed, lp):
    seed(UNIT, UNIT)
    with ape.reverts("pool: insufficient liquidity minted"):
        pool.mint(lp, sender=lp)


def test_mint__balance_above_max_reserve__reverts_overflow(pool, seed, plain, lp):
    plain[0].mint(lp, 2**112, sender=lp)
    with ape.reverts("pool: overflow"):
        seed(2**112, UNIT)


# ─── burn ────────────────────────────────────────────────────────────────────


def test_burn__all_of_an_lps_units__pays_pro_rata_and_keeps_minimum(pool, seed, plain, lp):
    seed(4 * UNIT, 9 * UNIT)
    liquidity = pool.balanceOf(lp)
    supply = pool.totalSupply()
    before = (plain[0].balanceOf(lp), plain[1].balanceOf(lp))
    pool.transfer(pool, liquidity, sender=lp)
    receipt = pool.burn(lp, sender=lp)
    paid = (liquidity * 4 * UNIT // supply, liquidity * 9 * UNIT // supply)
    assert (plain[0].balanceOf(lp) - before[0], plain[1].balanceOf(lp) - before[1]) == paid
    assert pool.totalSupply() == MINIMUM_LIQUIDITY
    assert reserves(pool) == (4 * UNIT - paid[0], 9 * UNIT - paid[1])
    assert all(r > 0 for r in reserves(pool))
    event = pool.LiquidityRemoved.from_receipt(receipt)[0]
    assert (event.amount0, event.amount1, event.liquidity) == (*paid, liquidity)


def test_burn__no_lp_units_sent__reverts(pool, seed, lp):
    seed(UNIT, UNIT)
    with ape.reverts("pool: zero liquidity"):
        pool.burn(lp, sender=lp)


def test_burn__dust_worth_nothing__reverts(pool, seed, lp):
    seed(10**4, 10**12)  # one LP unit is worth less than one unit of token0
    pool.transfer(pool, 1, sender=lp)
    with ape.reverts("pool: insufficient liquidity burned"):
        pool.burn(lp, sender=lp)


# ─── swap (v2 style: send input, name the output) ────────────────────────────


def test_swap__v2_core_vector__exact_output_accepted_one_more_rejected(pool, seed, plain, trader):
    seed(5 * UNIT, 10 * UNIT)
    plain[1].transfer(pool, UNIT, sender=trader)
    before = state(pool, plain)
    with ape.reverts("pool: k"):
        pool.swap(V2_SWAP_OUT + 1, 0, trader, sender=trader)
    assert state(pool, plain) == before
    held = plain[0].balanceOf(trader)
    receipt = pool.swap(V2_SWAP_OUT, 0, trader, sender=trader)
    assert plain[0].balanceOf(trader) == held + V2_SWAP_OUT
    assert reserves(pool) == (5 * UNIT - V2_SWAP_OUT, 11 * UNIT)
    event = pool.Swapped.from_receipt(receipt)[0]
    assert (event.amount0_in, event.amount1_in, event.amount0_out, event.amount1_out) == (0, UNIT, V2_SWAP_OUT, 0)


def test_swap__each_direction__quoted_output_accepted_one_more_rejected(pool, seed, plain, trader):
    seed(7 * UNIT, 3 * UNIT)
    for zero_for_one in (True, False):
        r0, r1 = reserves(pool)
        token_in, reserve_in, reserve_out = (plain[0], r0, r1) if zero_for_one else (plain[1], r1, r0)
        out = amount_out(UNIT // 3, reserve_in, reserve_out)
        outs = (lambda x: (0, x)) if zero_for_one else (lambda x: (x, 0))
        token_in.transfer(pool, UNIT // 3, sender=trader)
        with ape.reverts("pool: k"):
            pool.swap(*outs(out + 1), trader, sender=trader)
        pool.swap(*outs(out), trader, sender=trader)
        assert reserves(pool) == ((r0 + UNIT // 3, r1 - out) if zero_for_one else (r0 - out, r1 + UNIT // 3))


def test_swap__zero_output__reverts(pool, seed, trader):
    seed(UNIT, UNIT)
    with ape.reverts("pool: zero output"):
        pool.swap(0, 0, trader, sender=trader)


def test_swap__output_at_reserve__reverts(pool, seed, trader):
    seed(UNIT, UNIT)
    with ape.reverts("pool: insufficient liquidity"):
        pool.swap(UNIT, 0, trader, sender=trader)


def test_swap__recipient_is_a_pool_token__reverts(pool, seed, plain, trader):
    seed(UNIT, UNIT)
    with ape.reverts("pool: invalid recipient"):
        pool.swap(1, 0, plain[0], sender=trader)


def test_swap__nothing_sent__reverts_and_state_untouched(pool, seed, plain, trader):
    seed(UNIT, UNIT)
    before = state(pool, plain)
    with ape.reverts("pool: insufficient input"):
        pool.swap(1, 0, trader, sender=trader)
    assert state(pool, plain) == before


# ─── swap_exact_in (the pool computes the output) ────────────────────────────


def test_swap_exact_in__input_sent__pays_router_quote(pool, seed, plain, trader, router):
    seed(5 * UNIT, 10 * UNIT)
    quoted = router.get_amount_out(UNIT, 10 * UNIT, 5 * UNIT, DEFAULT_FEE)
    plain[1].transfer(pool, UNIT, sender=trader)
    held = plain[0].balanceOf(trader)
    pool.swap_exact_in(plain[1], UNIT, trader, sender=trader)
    assert plain[0].balanceOf(trader) - held == quoted == amount_out(UNIT, 10 * UNIT, 5 * UNIT)
    assert reserves(pool) == (5 * UNIT - quoted, 11 * UNIT)


def test_swap_exact_in__input_not_sent__reverts_and_state_untouched(pool, seed, plain, trader):
    seed(5 * UNIT, 10 * UNIT)
    plain[1].transfer(pool, UNIT - 1, sender=trader)
    before = state(pool, plain)
    with ape.reverts("pool: input not received"):
        pool.swap_exact_in(plain[1], UNIT, trader, sender=trader)
    assert state(pool, plain) == before


def test_swap_exact_in__surplus_in_pool__not_paid_out_joins_reserves(pool, seed, plain, trader):
    seed(5 * UNIT, 10 * UNIT)
    plain[1].transfer(pool, 3 * UNIT, sender=trader)  # 2 of it a donation
    pool.swap_exact_in(plain[1], UNIT, trader, sender=trader)
    assert reserves(pool)[1] == 13 * UNIT


def test_swap_exact_in__bad_arguments__revert(pool, seed, plain, trader):
    seed(UNIT, UNIT)
    with ape.reverts("pool: zero input"):
        pool.swap_exact_in(plain[0], 0, trader, sender=trader)
    with ape.reverts("pool: unknown token"):
        pool.swap_exact_in(plain[2], 1, trader, sender=trader)
    with ape.reverts("pool: invalid recipient"):
        pool.swap_exact_in(plain[0], 1, plain[1], sender=trader)
    plain[0].transfer(pool, 1, sender=trader)
    with ape.reverts("pool: zero output"):
        pool.swap_exact_in(plain[0], 1, trader, sender=trader)


# ─── TWAP accumulators ───────────────────────────────────────────────────────


def test_swap__after_time_passes__accumulators_use_pre_swap_reserves(pool, seed, plain, trader, chain):
    seed(5 * UNIT, 10 * UNIT)
    _, _, t0 = pool.get_reserves()
    chain.pending_timestamp = t0 + 100
    plain[1].transfer(pool, UNIT, sender=trader)  # a transfer does not touch the pool
    chain.pending_timestamp = t0 + 250
    pool.swap(V2_SWAP_OUT, 0, trader, sender=trader)
    assert pool.price0_cumulative_last() == (10 * UNIT << 112) // (5 * UNIT) * 250
    assert pool.price1_cumulative_last() == (5 * UNIT << 112) // (10 * UNIT) * 250
    assert pool.get_reserves()[2] == t0 + 250


def test_current_cumulative_prices__time_passed__adds_current_price(pool, seed, chain):
    seed(4 * UNIT, UNIT)
    _, _, t0 = pool.get_reserves()
    chain.mine(1, timestamp=t0 + 60)
    price0, price1, now = pool.current_cumulative_prices()
    assert now == t0 + 60
    assert price0 == (UNIT << 112) // (4 * UNIT) * 60
    assert price1 == (4 * UNIT << 112) // UNIT * 60
    assert pool.price0_cumulative_last() == 0  # nothing stored until the next update


# ─── skim and sync ───────────────────────────────────────────────────────────


def test_skim__donation__sent_to_recipient_reserves_unchanged(pool, seed, plain, attacker, trader):
    seed(UNIT, UNIT)
    plain[0].transfer(pool, 5, sender=attacker)
    plain[1].transfer(pool, 7, sender=attacker)
    held = (plain[0].balanceOf(trader), plain[1].balanceOf(trader))
    receipt = pool.skim(trader, sender=trader)
    assert (plain[0].balanceOf(trader) - held[0], plain[1].balanceOf(trader) - held[1]) == (5, 7)
    assert reserves(pool) == (UNIT, UNIT)
    assert (plain[0].balanceOf(pool), plain[1].balanceOf(pool)) == (UNIT, UNIT)
    assert pool.Skimmed.from_receipt(receipt)[0].amount1 == 7


def test_sync__donation__adopted_into_reserves(pool, seed, plain, attacker):
    seed(UNIT, UNIT)
    plain[1].transfer(pool, UNIT, sender=attacker)
    receipt = pool.sync(sender=attacker)
    assert reserves(pool) == (UNIT, 2 * UNIT)
    event = pool.ReservesSynced.from_receipt(receipt)[0]
    assert (event.reserve0, event.reserve1) == (UNIT, 2 * UNIT)


def test_sync__donation_beyond_max_reserve__reverts_until_skimmed(pool, seed, plain, attacker, trader):
    seed(UNIT, UNIT)
    plain[0].mint(attacker, 2**112, sender=attacker)
    plain[0].transfer(pool, 2**112, sender=attacker)
    with ape.reverts("pool: overflow"):
        pool.sync(sender=attacker)
    pool.skim(attacker, sender=attacker)
    pool.sync(sender=attacker)
    assert reserves(pool) == (UNIT, UNIT)


# ─── attacks ─────────────────────────────────────────────────────────────────


def test_mint__first_depositor_inflates_by_donation__attacker_loses_1000x_the_victims_loss(
    pool, seed, plain, attacker, trader, router, deadline
):
    # The attacker opens the pool with the least possible liquidity (1 unit for
    # itself, MINIMUM_LIQUIDITY locked), then donates so that one LP unit is worth
    # a lot, hoping the victim's deposit rounds down to its benefit.
    spent = 1_001
    seed(1_001, 1_001, sender=attacker)
    assert pool.balanceOf(attacker) == 1
    donation = 10_000 * UNIT
    plain[0].transfer(pool, donation, sender=attacker)
    plain[1].transfer(pool, donation, sender=attacker)
    pool.sync(sender=attacker)
    spent += donation

    # A victim depositing less than one LP unit's worth is refused outright…
    unit_value = reserves(pool)[0] // pool.totalSupply()
    with ape.reverts("pool: insufficient liquidity minted"):
        router.add_liquidity(
            plain[0], plain[1], DEFAULT_FEE, unit_value // 2, unit_value // 2, 0, 0, trader, deadline, sender=trader
        )
    # …and one depositing 1.9 units' worth gets 1 unit: it loses under one unit's worth.
    deposit = unit_value * 19 // 10
    router.add_liquidity(plain[0], plain[1], DEFAULT_FEE, deposit, deposit, 0, 0, trader, deadline, sender=trader)
    assert pool.balanceOf(trader) == 1

    def redeem(holder):
        """token0 paid for all of `holder`'s LP units (token1 is paid alike)."""
        held = plain[0].balanceOf(holder)
        pool.transfer(pool, pool.balanceOf(holder), sender=holder)
        pool.burn(holder, sender=holder)
        return plain[0].balanceOf(holder) - held

    victim_back = redeem(trader)
    attacker_back = redeem(attacker)
    victim_loss = deposit - victim_back
    attacker_loss = spent - attacker_back
    assert 0 < victim_loss < unit_value
    assert attacker_loss > 1_000 * victim_loss  # the locked MINIMUM_LIQUIDITY keeps the donation


@pytest.fixture
def evil_pool(project, factory, plain, admin, lp):
    """A 10 / 10 pool of plain[0] and ReentrantToken, which calls back into the
    target it is armed with from inside its next transfer."""
    evil = admin.deploy(project.ReentrantToken)
    factory.create_pool(evil, plain[0], DEFAULT_FEE, sender=admin)
    pool = pool_at(factory.get_pool(evil, plain[0], DEFAULT_FEE))
    evil.mint(lp, 100 * UNIT, sender=lp)
    evil.transfer(pool, 10 * UNIT, sender=lp)
    plain[0].transfer(pool, 10 * UNIT, sender=lp)
    pool.mint(lp, sender=lp)
    return evil, pool


def test_swap__token_callback_reenters_or_reads_reserves__blocked(evil_pool, plain, lp, trader):
    evil, pool = evil_pool
    evil_is_0 = pool.token0() == evil.address

    # The hook works outside the pool: a plain transfer lets it read the reserves.
    evil.arm(pool, pool.get_reserves.encode_input(), sender=trader)
    evil.transfer(trader, 1, sender=lp)
    assert evil.hook_succeeded()

    # Inside a swap, every entry point — views included — is locked.
    for call in (
        pool.get_reserves.encode_input(),
        pool.totalSupply.encode_input(),
        pool.current_cumulative_prices.encode_input(),
        pool.sync.encode_input(),
        pool.skim.encode_input(trader.address),
        pool.mint.encode_input(trader.address),
        pool.swap.encode_input(0, 1, trader.address) if evil_is_0 else pool.swap.encode_input(1, 0, trader.address),
    ):
        calls = evil.hook_calls()
        evil.arm(pool, call, sender=trader)
        r0, r1 = reserves(pool)
        plain[0].transfer(pool, UNIT, sender=trader)
        outs = (amount_out(UNIT, r1, r0), 0) if evil_is_0 else (0, amount_out(UNIT, r0, r1))
        pool.swap(*outs, trader, sender=trader)  # pays `evil` out: fires the hook
        assert evil.hook_calls() == calls + 1
        assert not evil.hook_succeeded()


def test_burn__token_callback_reads_supply__blocked(evil_pool, lp):
    evil, pool = evil_pool
    # Mid-burn the LP supply has fallen but the reserves have not: a reader
    # pricing LP units (reserves / supply) would be fooled, so it is refused.
    evil.arm(pool, pool.totalSupply.encode_input(), sender=lp)
    pool.transfer(pool, UNIT, sender=lp)
    pool.burn(lp, sender=lp)
    assert evil.hook_calls() == 1
    assert not evil.hook_succeeded()
