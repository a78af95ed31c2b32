"""Perp through ape, over the real DEX (pools, Oracle TWAPs): markets, the LP pool
(shares, the reserve rule), positions end to end (open → close, margin in and out,
liquidation, bad debt), funding, every event, and the failures a trader, an LP, a
liquidator or an admin can run into. Every amount is predicted with the pure-Python
mirror in `promptex.protocol.perp`. Attacks are in test_perp_attacks.py."""

import ape
import pytest

from fixtures.perp import CLD_MARKET, GPT_MARKET, POOL_DEPOSIT, tx_at
from promptex.chain.perp import add_market, deploy_perp, refresh_bounds, side_positions
from promptex.protocol import perp as m
from promptex.protocol.perp import DEFAULT_INSURANCE_FEE_BPS as INSURANCE_FEE_BPS
from promptex.protocol.perp import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.perp import MarketParams
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.units import ZERO_ADDRESS as ZERO

MARGIN = 1_000 * USD
NOTIONAL = 5_000 * USD


def position_of(perp, position_id):
    p = perp.positions(position_id)
    return m.Position(p.is_long, p.margin, p.size, p.notional, p.reserved, p.entry_funding)


def index_at(perp, token, is_long, timestamp):
    """The side's funding index at `timestamp` (mirror of the contract's accrual)."""
    mk = perp.markets(token)
    long_index, short_index = m.accrue(
        mk.long_funding,
        mk.short_funding,
        mk.long_notional,
        mk.short_notional,
        mk.funding_k,
        timestamp - mk.last_funding_time,
    )
    return long_index if is_long else short_index


def expect_settlement(perp, position_id, token, params, timestamp, liquidation=False):
    position = position_of(perp, position_id)
    index = index_at(perp, token, position.is_long, timestamp)
    return m.settle(position, perp.price(token), index, params, perp.insurance_fund(), liquidation)


def settle_and_expect(perp, chain, position_id, token, params, call, liquidation=False, delay=5):
    """Run `call` (a close or a liquidation) `delay` seconds on and check the event
    against the mirror at the price the contract used; returns (settlement, tx, margin)."""
    position = position_of(perp, position_id)
    at = max(chain.pending_timestamp, chain.blocks.head.timestamp + 1) + delay
    index = index_at(perp, token, position.is_long, at)
    insurance = perp.insurance_fund()
    tx_at(chain, at)
    tx = call()
    event = perp.PositionClosed.from_receipt(tx)[0]
    s = m.settle(position, event.price, index, params, insurance, liquidation)
    assert (event.pnl, event.funding, event.gain, event.fee, event.bonus, event.bonus_from_insurance) == (
        s.pnl, s.funding, s.gain, s.fee, s.bonus, s.bonus_from_insurance,
    )  # fmt: skip
    assert event.payout == s.payout
    assert perp.positions(position_id).owner == ZERO
    return s, tx, position.margin


def open_at(perp, chain, token, trader, is_long=True, margin=MARGIN, notional=NOTIONAL):
    tx = perp.open_position(token, is_long, margin, notional, sender=trader)
    return perp.PositionOpened.from_receipt(tx)[0].position_id, tx


def conserved(perp, usdc):
    return usdc.balanceOf(perp) == perp.pool_amount() + perp.total_margin() + perp.insurance_fund()


# ─── Deployment and markets ──────────────────────────────────────────────────


def test_deploy__parameters_and_constants__recorded_and_mirrored(perp, usdc, oracle, admin):
    assert (perp.usdc(), perp.oracle(), perp.twap_window(), perp.owner()) == (
        usdc.address,
        oracle.address,
        TWAP_WINDOW,
        admin.address,
    )
    assert perp.insurance_fee_bps() == INSURANCE_FEE_BPS
    names = (
        "BPS", "WAD", "HOUR", "MAX_MARKETS", "MAX_LEVERAGE", "MAX_FUNDING_K", "MAX_FEE_BPS", "MAX_PROFIT_BPS",
        "MIN_NOTIONAL", "MAX_AMOUNT", "SHARE_SCALE", "MINIMUM_SHARES", "MAX_REFRESH",
    )  # fmt: skip
    assert [getattr(perp, name)() for name in names] == [getattr(m, name) for name in names]


@pytest.mark.parametrize(
    "twap_window, insurance_bps, reason",
    [
        (59, 0, "perp: twap window below oracle period"),
        (2**31 + 1, 0, "perp: twap window too long"),
        (TWAP_WINDOW, 10_001, "perp: insurance share above 100%"),
    ],
)
def test_deploy__bad_parameters__reverts(project, admin, usdc, oracle, twap_window, insurance_bps, reason):
    with ape.reverts(reason):
        admin.deploy(project.Perp, usdc, oracle, twap_window, insurance_bps)


def test_deploy__oracle_of_another_quote_asset__reverts(project, admin, plain, oracle):
    with ape.reverts("perp: oracle does not quote usdc"):
        admin.deploy(project.Perp, plain[0], oracle, TWAP_WINDOW, 0)


def test_add_market__listed__stored_and_logged(perp, gpt, cld):
    assert [perp.market_tokens(0), perp.market_tokens(1)] == [gpt.address, cld.address]
    for token, params in ((gpt, GPT_MARKET), (cld, CLD_MARKET)):
        mk = perp.markets(token)
        assert mk.active
        assert (
            mk.funding_k, mk.max_leverage, mk.maintenance_bps, mk.oi_cap_bps, mk.liquidation_bonus_bps,
            mk.open_fee_bps, mk.close_fee_bps, mk.max_profit_bps, perp.depth_cap_bps(token),
        ) == params.as_args()  # fmt: skip


def test_add_market__event__logged(perp, plain, admin):
    tx = add_market(perp, plain[0], GPT_MARKET, admin)
    event = perp.MarketAdded.from_receipt(tx)[0]
    assert event.token == plain[0].address
    assert (event.funding_k, event.max_leverage, event.max_profit_bps) == (10**14, 10, 10_000)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"funding_k": 10**16 + 1}, "perp: funding k too high"),
        ({"max_leverage": 0}, "perp: max leverage out of range"),
        ({"max_leverage": 101}, "perp: max leverage out of range"),
        ({"maintenance_bps": 0}, "perp: maintenance margin out of range"),
        ({"max_leverage": 20}, "perp: maintenance margin out of range"),  # 20 × 5 % = 100 %
        ({"oi_cap_bps": 0}, "perp: oi cap out of range"),
        ({"oi_cap_bps": 10_001}, "perp: oi cap out of range"),
        ({"open_fee_bps": 501}, "perp: fee too high"),
        ({"liquidation_bonus_bps": 491}, "perp: bonus and fee above maintenance"),
        ({"max_profit_bps": 0}, "perp: max profit out of range"),
        ({"max_profit_bps": 100_001}, "perp: max profit out of range"),
        ({"depth_cap_bps": 0}, "perp: depth cap out of range"),
        ({"depth_cap_bps": 10_001}, "perp: depth cap out of range"),
    ],
)
def test_add_market__bad_parameters__reverts_here_and_in_the_mirror(perp, plain, admin, change, reason):
    params = MarketParams(**{**GPT_MARKET.__dict__, **change})
    with pytest.raises(ValueError, match=reason.removeprefix("perp: ")):
        params.check()
    with ape.reverts(reason):
        perp.add_market(plain[0], *params.as_args(), sender=admin)


def test_add_market__twice_usdc_or_not_admin__reverts(perp, gpt, usdc, plain, admin, attacker):
    with ape.reverts("perp: market exists"):
        perp.add_market(gpt, *GPT_MARKET.as_args(), sender=admin)
    with ape.reverts("perp: bad token"):
        perp.add_market(usdc, *GPT_MARKET.as_args(), sender=admin)
    with ape.reverts():  # snekmate: caller is not the owner
        perp.add_market(plain[0], *GPT_MARKET.as_args(), sender=attacker)


def test_set_market_active__inactive__no_opens_but_closes(perp_world, perp, gpt, admin, trader):
    position_id, _ = open_at(perp, None, gpt, trader)
    perp.set_market_active(gpt, False, sender=admin)
    with ape.reverts("perp: market not active"):
        perp.open_position(gpt, True, MARGIN, NOTIONAL, sender=trader)
    perp.close_position(position_id, 0, sender=trader)
    assert perp.positions(position_id).owner == ZERO


def test_pause__blocks_opens_only(perp_world, perp, gpt, admin, trader):
    position_id, _ = open_at(perp, None, gpt, trader)
    perp.pause(sender=admin)  # the fixture made the admin a pauser
    with ape.reverts("pausable: contract is paused"):
        perp.open_position(gpt, True, MARGIN, NOTIONAL, sender=trader)
    perp.add_margin(position_id, USD, sender=trader)
    perp.close_position(position_id, 0, sender=trader)
    perp.unpause(sender=admin)
    open_at(perp, None, gpt, trader)


def test_pauser__granted_pauses_and_unpauses_revoked_cannot(perp, admin, hedger, attacker):
    with ape.reverts("perp: caller is not a pauser"):
        perp.pause(sender=hedger)
    assert perp.PauserGranted.from_receipt(perp.grant_pauser(hedger, sender=admin))[0].account == hedger
    perp.pause(sender=hedger)
    with ape.reverts("perp: caller is not a pauser"):
        perp.unpause(sender=attacker)
    perp.unpause(sender=hedger)
    assert perp.PauserRevoked.from_receipt(perp.revoke_pauser(hedger, sender=admin))[0].account == hedger
    with ape.reverts("perp: caller is not a pauser"):
        perp.pause(sender=hedger)
    with ape.reverts("perp: not a pauser"):
        perp.revoke_pauser(hedger, sender=admin)
    for call in (
        lambda: perp.grant_pauser(attacker, sender=attacker),
        lambda: perp.revoke_pauser(admin, sender=attacker),
    ):
        with ape.reverts("ownable: caller is not the owner"):
            call()


def test_set_depth_cap_bps__admin__changed_and_logged_others_revert(perp, gpt, plain, admin, attacker):
    tx = perp.set_depth_cap_bps(gpt, 2_500, sender=admin)
    event = perp.DepthCapSet.from_receipt(tx)[0]
    assert (event.token, event.old_bps, event.new_bps) == (gpt.address, GPT_MARKET.depth_cap_bps, 2_500)
    assert perp.depth_cap_bps(gpt) == 2_500
    for bps in (0, 10_001):
        with ape.reverts("perp: depth cap out of range"):
            perp.set_depth_cap_bps(gpt, bps, sender=admin)
    with ape.reverts("perp: no such market"):
        perp.set_depth_cap_bps(plain[0], 1_000, sender=admin)
    with ape.reverts("ownable: caller is not the owner"):
        perp.set_depth_cap_bps(gpt, 1_000, sender=attacker)


# ─── Sides, bounds and the price of LP shares ────────────────────────────────


def side_of(perp, token, is_long):
    s = perp.sides(token, is_long)
    return m.Side(s.margin, s.reserved, s.count, s.bankrupt_bound, s.cap_bound, s.index_high, s.index_low)


def test_sides__opens_margin_moves_and_closes__tracked_like_the_mirror(perp_world, perp, gpt, trader, hedger):
    risky, _ = open_at(perp, None, gpt, trader, margin=1_000 * USD, notional=9_000 * USD)  # 9×
    safe, _ = open_at(perp, None, gpt, hedger, margin=5_000 * USD, notional=9_000 * USD)
    expected = m.Side()
    for position_id in (risky, safe):
        m.add_to_side(expected, True, position_of(perp, position_id))
    assert side_of(perp, gpt, True) == expected and side_of(perp, gpt, False) == m.Side()
    risky_kinks = m.kinks(True, *(lambda p: (p.margin, p.notional, p.reserved, p.size))(position_of(perp, risky)))
    assert expected.bankrupt_bound == risky_kinks[0]  # the riskier position sets it
    perp.remove_margin(safe, 3_000 * USD, sender=hedger)
    expected.margin -= 3_000 * USD
    m.widen_bankrupt_bound(expected, True, position_of(perp, safe))
    perp.add_margin(risky, 500 * USD, sender=trader)  # a bound only ever widens
    expected.margin += 500 * USD
    assert side_of(perp, gpt, True) == expected
    closed = position_of(perp, risky)
    perp.close_position(risky, 0, sender=trader)
    expected.margin -= closed.margin
    expected.reserved -= closed.reserved
    expected.count -= 1
    assert side_of(perp, gpt, True) == expected  # the bounds stay until a refresh


def test_refresh_bounds__every_position_of_the_side__recomputed_else_reverts(
    perp_world, perp, gpt, cld, trader, hedger, attacker
):
    risky, _ = open_at(perp, None, gpt, trader, margin=1_000 * USD, notional=9_000 * USD)
    safe, _ = open_at(perp, None, gpt, hedger, margin=5_000 * USD, notional=9_000 * USD)
    short, _ = open_at(perp, None, gpt, hedger, is_long=False)
    other_short, _ = open_at(perp, None, gpt, trader, is_long=False)
    perp.close_position(risky, 0, sender=trader)
    stale = side_of(perp, gpt, True)
    for ids, reason in [
        ([], "perp: not every position of the side"),
        ([safe, short], "perp: not every position of the side"),
        ([short], "perp: not a position of the side"),  # the other side's
        ([risky], "perp: not a position of the side"),  # closed
    ]:
        with ape.reverts(reason):
            perp.refresh_bounds(gpt, True, ids, sender=attacker)
    assert side_positions(perp, gpt, True) == [safe] and side_positions(perp, gpt, False) == [short, other_short]
    tx = perp.refresh_bounds(gpt, True, [safe], sender=attacker)  # anyone
    fresh = m.Side()
    m.add_to_side(fresh, True, position_of(perp, safe))  # the side as if `safe` were its only position ever
    fresh.margin, fresh.reserved, fresh.count = stale.margin, stale.reserved, stale.count
    assert side_of(perp, gpt, True) == fresh and fresh.bankrupt_bound < stale.bankrupt_bound
    event = perp.BoundsRefreshed.from_receipt(tx)[0]
    assert (event.token, event.is_long, event.count) == (gpt.address, True, 1)
    assert event.bankrupt_bound == fresh.bankrupt_bound
    for ids in ([other_short, short], [short, short]):
        with ape.reverts("perp: ids not ascending"):
            perp.refresh_bounds(gpt, False, ids, sender=attacker)
    assert refresh_bounds(perp, gpt, False, attacker) == 2  # the keeper's helper finds them
    with ape.reverts("perp: no such market"):
        perp.refresh_bounds(attacker, True, [], sender=attacker)


def test_pool_value__both_sides_spot_off_the_twap__equals_the_mirror(
    perp_world, perp, gpt, usdc, lp, trader, hedger, router, chain
):
    long_id, _ = open_at(perp, None, gpt, trader, margin=2_000 * USD, notional=9_000 * USD)
    short_id, _ = open_at(perp, None, gpt, hedger, is_long=False, margin=1_000 * USD, notional=6_000 * USD)
    router.swap_exact_in(8_000 * USD, 0, [usdc, gpt], [30], lp, chain.pending_timestamp + 600, sender=lp)
    reserve0, reserve1, _ = perp_world[4].get_reserves()
    gpt_is_0 = perp_world[4].token0() == gpt.address
    reserves = (reserve0, reserve1) if gpt_is_0 else (reserve1, reserve0)
    spot, twap = m.spot_price(*reserves), perp.price(gpt)
    assert spot > twap * 101 // 100  # the spot moved, the TWAP has not yet
    mk, (long_index, short_index) = perp.markets(gpt), perp.funding_indices(gpt)
    for for_deposit in (False, True):
        worths = [
            m.side_worth(side_of(perp, gpt, True), True, mk.long_notional, mk.long_size, mk.long_funding_basis,
                         long_index, twap, spot, for_deposit),
            m.side_worth(side_of(perp, gpt, False), False, mk.short_notional, mk.short_size, mk.short_funding_basis,
                         short_index, twap, spot, for_deposit),
        ]  # fmt: skip
        assert perp.pool_value(for_deposit) == m.pool_value(perp.pool_amount(), worths)
        exact = sum(m.clamped_worth(position_of(perp, i), p, idx) for i, idx in ((long_id, long_index),
                    (short_id, short_index)) for p in ((spot, twap)[for_deposit],))  # fmt: skip
        if for_deposit:  # an entrant values the traders' positions no higher than they are worth
            assert sum(worths) <= exact
    leaving = perp.pool_value(False)
    for price in (spot, twap):  # a leaver values them no lower, at either price
        worth = sum(m.clamped_worth(position_of(perp, i), price, idx) for i, idx in ((long_id, long_index),
                    (short_id, short_index)))  # fmt: skip
        assert leaving <= perp.pool_amount() - worth


def test_open_position__beyond_the_pools_depth_cap__reverts(perp_world, perp, gpt, admin, trader, hedger):
    perp.set_depth_cap_bps(gpt, 1_000, sender=admin)  # 10 % of the $100k GPT/USDC pool
    reserve0, reserve1, _ = perp_world[4].get_reserves()
    depth = m.depth(reserve0, reserve1, perp.price(gpt))
    assert abs(depth - 100_000 * USD) < 10 * USD
    room = depth * 1_000 // m.BPS
    open_at(perp, None, gpt, trader, margin=1_000 * USD, notional=room - 100 * USD)
    with ape.reverts("perp: open interest above pool depth cap"):
        perp.open_position(gpt, True, 1_000 * USD, 200 * USD, sender=hedger)
    open_at(perp, None, gpt, hedger, is_long=False, margin=1_000 * USD, notional=room - 100 * USD)  # per side


# ─── LP pool ─────────────────────────────────────────────────────────────────


def test_deposit__first__locks_minimum_shares(perp_world, perp, lp):
    expected = m.shares_for_deposit(POOL_DEPOSIT, 0, 0)
    assert perp.shares_of(lp) == expected
    assert perp.shares_of(ZERO) == m.MINIMUM_SHARES
    assert perp.total_shares() == POOL_DEPOSIT * m.SHARE_SCALE
    assert perp.pool_amount() == POOL_DEPOSIT


def test_deposit__second__proportional_and_logged(perp_world, perp, hedger):
    supply, value = perp.total_shares(), perp.pool_value(True)
    tx = perp.deposit(10_000 * USD, 0, sender=hedger)
    minted = m.shares_for_deposit(10_000 * USD, supply, value)
    assert perp.shares_of(hedger) == minted
    event = perp.LiquidityDeposited.from_receipt(tx)[0]
    assert (event.lp, event.amount, event.shares) == (hedger.address, 10_000 * USD, minted)


def test_deposit__min_shares_or_zero__reverts(perp_world, perp, hedger):
    with ape.reverts("perp: too few shares"):
        perp.deposit(USD, USD * m.SHARE_SCALE + 1, sender=hedger)
    with ape.reverts("perp: zero amount"):
        perp.deposit(0, 0, sender=hedger)


def test_withdraw__all_when_no_position__pays_pool_share(perp_world, perp, usdc, lp):
    before = usdc.balanceOf(lp)
    shares = perp.shares_of(lp)
    tx = perp.withdraw(shares, 0, sender=lp)
    paid = m.amount_for_shares(shares, POOL_DEPOSIT * m.SHARE_SCALE, POOL_DEPOSIT)
    assert usdc.balanceOf(lp) == before + paid
    assert perp.pool_amount() == POOL_DEPOSIT - paid  # the locked shares' dust stays
    assert perp.LiquidityWithdrawn.from_receipt(tx)[0].amount == paid
    assert conserved(perp, usdc)


def test_withdraw__more_shares_than_held_or_min_amount__reverts(perp_world, perp, lp, hedger):
    with ape.reverts("perp: not enough shares"):
        perp.withdraw(1, 0, sender=hedger)
    with ape.reverts("perp: amount below minimum"):
        perp.withdraw(perp.shares_of(lp), POOL_DEPOSIT, sender=lp)


def test_withdraw__into_reserved_liquidity__reverts_then_allowed_after_close(perp_world, perp, gpt, lp, trader):
    # A long of $40,000 reserves $40,000 (max profit 100 %): $60,000 stays free.
    position_id, _ = open_at(perp, None, gpt, trader, margin=5_000 * USD, notional=40_000 * USD)
    assert perp.total_reserved() == 40_000 * USD
    free = perp.free_liquidity()
    assert free == perp.pool_amount() - 40_000 * USD
    too_many = perp.shares_of(lp) * (free + 1_000 * USD) // perp.pool_amount()
    with ape.reverts("perp: withdrawal exceeds free liquidity"):
        perp.withdraw(too_many, 0, sender=lp)
    perp.close_position(position_id, 0, sender=trader)
    perp.withdraw(too_many, 0, sender=lp)


def test_fund_insurance__donation__counted(perp_world, perp, usdc, hedger):
    tx = perp.fund_insurance(500 * USD, sender=hedger)
    assert perp.insurance_fund() == 500 * USD
    assert perp.InsuranceFunded.from_receipt(tx)[0].amount == 500 * USD
    assert conserved(perp, usdc)


# ─── Opening ─────────────────────────────────────────────────────────────────


def test_open_position__long__stored_fee_split_and_logged(perp_world, perp, gpt, usdc, trader):
    before = usdc.balanceOf(trader)
    position_id, tx = open_at(perp, None, gpt, trader)
    price = perp.PositionOpened.from_receipt(tx)[0].price
    assert abs(price - perp.price(gpt)) * 10**9 < price  # the TWAP, to rounding
    expected = m.Position.opened(True, MARGIN, NOTIONAL, price, GPT_MARKET)
    p = perp.positions(position_id)
    assert (p.owner, p.token, p.is_long) == (trader.address, gpt.address, True)
    assert position_of(perp, position_id) == expected
    fee = m.open_fee(NOTIONAL, GPT_MARKET)
    assert usdc.balanceOf(trader) == before - MARGIN
    assert perp.insurance_fund() == fee * INSURANCE_FEE_BPS // m.BPS
    assert perp.pool_amount() == POOL_DEPOSIT + fee - fee * INSURANCE_FEE_BPS // m.BPS
    assert (perp.total_margin(), perp.total_reserved()) == (MARGIN - fee, expected.reserved)
    mk = perp.markets(gpt)
    assert (mk.long_notional, mk.long_size, mk.short_notional) == (NOTIONAL, expected.size, 0)
    event = perp.PositionOpened.from_receipt(tx)[0]
    assert (event.owner, event.token, event.is_long, event.margin, event.size, event.notional) == (
        trader.address, gpt.address, True, MARGIN - fee, expected.size, NOTIONAL,
    )  # fmt: skip
    assert (event.price, event.fee) == (price, fee)
    assert conserved(perp, usdc)


def test_open_position__at_max_leverage__accepted_one_above__reverts(perp_world, perp, gpt, trader):
    notional = m.max_notional(MARGIN, GPT_MARKET)
    with ape.reverts("perp: leverage too high"):
        perp.open_position(gpt, True, MARGIN, notional + 1, sender=trader)
    open_at(perp, None, gpt, trader, notional=notional)


@pytest.mark.parametrize(
    "margin, notional, reason",
    [
        (MARGIN, m.MIN_NOTIONAL - 1, "perp: notional too small"),
        (5 * USD, 5_000 * USD, "perp: margin below fee"),
        (2**96, NOTIONAL, "perp: amount too large"),
    ],
)
def test_open_position__bad_amounts__reverts(perp_world, perp, gpt, trader, margin, notional, reason):
    with ape.reverts(reason):
        perp.open_position(gpt, True, margin, notional, sender=trader)


def test_open_position__unlisted_token__reverts(perp_world, perp, plain, trader):
    with ape.reverts("perp: market not active"):
        perp.open_position(plain[0], True, MARGIN, NOTIONAL, sender=trader)


def test_open_position__side_beyond_oi_cap__reverts_other_side_fits(perp_world, perp, gpt, trader, hedger):
    # GPT: each side at most 50 % of the pool ($100,000 and the open fees).
    open_at(perp, None, gpt, trader, margin=5_000 * USD, notional=45_000 * USD)
    cap = perp.pool_amount() * GPT_MARKET.oi_cap_bps // m.BPS
    with ape.reverts("perp: open interest cap"):
        perp.open_position(gpt, True, 5_000 * USD, cap - 45_000 * USD + 1, sender=hedger)
    open_at(perp, None, gpt, hedger, is_long=False, margin=5_000 * USD, notional=45_000 * USD)


def test_open_position__reserve_beyond_pool__reverts(perp_world, perp, gpt, admin, usdc, oracle, trader, lp):
    # A Perp whose GPT gains are capped at 300 %: a $40,000 long (within the 50 % OI cap
    # of a $100,000 pool) would reserve $120,000.
    params = MarketParams(**{**GPT_MARKET.__dict__, "max_profit_bps": 30_000})
    other = deploy_perp(
        admin,
        {"USDC": usdc, "Oracle": oracle},
        twap_window=TWAP_WINDOW,
        markets={gpt.address: params},
        log=lambda _: None,
    )
    usdc.approve(other, POOL_DEPOSIT, sender=lp)
    other.deposit(POOL_DEPOSIT, 0, sender=lp)
    usdc.approve(other, 2**256 - 1, sender=trader)
    with ape.reverts("perp: pool cannot cover the reserve"):
        other.open_position(gpt, True, 5_000 * USD, 40_000 * USD, sender=trader)
    other.open_position(gpt, True, 5_000 * USD, 33_000 * USD, sender=trader)  # reserves $99,000
    assert other.total_reserved() == 99_000 * USD


def test_open_position__oracle_window_not_covered__reverts(perp, gpt, markets, trader, usdc):
    usdc.mint(trader, MARGIN, sender=trader)
    usdc.approve(perp, MARGIN, sender=trader)
    with ape.reverts("oracle: token not tracked"):
        perp.open_position(gpt, True, MARGIN, NOTIONAL, sender=trader)


# ─── Closing ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("is_long", [True, False])
@pytest.mark.parametrize("num, den", [(13, 10), (8, 10)])
def test_close_position__after_move__pays_the_mirror(
    perp_world, perp, gpt, usdc, trader, move_price, chain, is_long, num, den
):
    position_id, _ = open_at(perp, chain, gpt, trader, is_long=is_long)
    move_price(gpt, perp_world[4], num, den)
    pool, insurance = perp.pool_amount(), perp.insurance_fund()
    before = usdc.balanceOf(trader)
    s, tx, margin = settle_and_expect(
        perp, chain, position_id, gpt, GPT_MARKET, lambda: perp.close_position(position_id, 0, sender=trader)
    )
    assert usdc.balanceOf(trader) == before + s.payout
    assert (s.pnl > 0) == ((num > den) == is_long)
    assert abs(abs(s.pnl) - NOTIONAL * abs(num - den) // den) < NOTIONAL // 100  # the move, to 1 %
    assert perp.pool_amount() == pool + s.pool_change(margin, INSURANCE_FEE_BPS)
    assert perp.insurance_fund() == insurance + s.insurance_change(INSURANCE_FEE_BPS)
    event = perp.PositionClosed.from_receipt(tx)[0]
    assert (event.owner, event.liquidator, event.bonus) == (trader.address, ZERO, 0)
    assert (perp.total_margin(), perp.total_reserved()) == (0, 0)
    mk = perp.markets(gpt)
    assert (mk.long_notional, mk.short_notional, mk.long_size, mk.short_size) == (0, 0, 0, 0)
    assert (mk.long_funding_basis, mk.short_funding_basis) == (0, 0)
    assert conserved(perp, usdc)


def test_close_position__gain_beyond_cap__capped_at_reserve(perp_world, perp, cld, usdc, trader, move_price, chain):
    # CLD caps gains at 25 % of notional; the price doubles.
    position_id, _ = open_at(perp, chain, cld, trader, margin=1_000 * USD, notional=10_000 * USD)
    move_price(cld, perp_world[3], 2, 1)
    before = usdc.balanceOf(trader)
    s, _, _ = settle_and_expect(
        perp, chain, position_id, cld, CLD_MARKET, lambda: perp.close_position(position_id, 0, sender=trader)
    )
    assert s.pnl - s.funding > 2_500 * USD and s.gain == 2_500 * USD
    assert usdc.balanceOf(trader) == before + 1_000 * USD + 2_500 * USD


def test_close_position__someone_elses_twice_or_below_min__reverts(perp_world, perp, gpt, trader, attacker):
    position_id, _ = open_at(perp, None, gpt, trader)
    with ape.reverts("perp: not the position owner"):
        perp.close_position(position_id, 0, sender=attacker)
    with ape.reverts("perp: payout below minimum"):
        perp.close_position(position_id, MARGIN, sender=trader)
    perp.close_position(position_id, 0, sender=trader)
    with ape.reverts("perp: not the position owner"):
        perp.close_position(position_id, 0, sender=trader)


def test_preview_close__matches_mirror(perp_world, perp, gpt, trader, hedger, move_price, chain):
    position_id, _ = open_at(perp, chain, gpt, trader, is_long=False)
    move_price(gpt, perp_world[4], 3, 2)
    now = chain.blocks.head.timestamp
    for liquidation in (False, True):
        s = expect_settlement(perp, position_id, gpt, GPT_MARKET, now, liquidation)
        assert tuple(perp.preview_close(position_id, liquidation)) == tuple(s.__dict__.values())
        assert perp.is_liquidatable(position_id) == m.is_liquidatable(
            position_of(perp, position_id), s.price, index_at(perp, gpt, False, now), GPT_MARKET
        )


# ─── Margin ──────────────────────────────────────────────────────────────────


def test_add_margin__owner__raises_margin_and_logs(perp_world, perp, gpt, usdc, trader):
    position_id, _ = open_at(perp, None, gpt, trader)
    margin = perp.positions(position_id).margin
    tx = perp.add_margin(position_id, 100 * USD, sender=trader)
    assert perp.positions(position_id).margin == margin + 100 * USD
    event = perp.MarginAdded.from_receipt(tx)[0]
    assert (event.amount, event.margin) == (100 * USD, margin + 100 * USD)
    assert conserved(perp, usdc)


def test_add_or_remove_margin__not_owner__reverts(perp_world, perp, gpt, trader, attacker):
    position_id, _ = open_at(perp, None, gpt, trader)
    with ape.reverts("perp: not the position owner"):
        perp.add_margin(position_id, USD, sender=attacker)
    with ape.reverts("perp: not the position owner"):
        perp.remove_margin(position_id, USD, sender=attacker)


def test_remove_margin__within_leverage__paid_beyond__reverts(perp_world, perp, gpt, usdc, trader):
    position_id, _ = open_at(perp, None, gpt, trader)  # 5x; 10x allowed: ~$495 of the $995 is free
    margin = perp.positions(position_id).margin
    before = usdc.balanceOf(trader)
    perp.remove_margin(position_id, margin - 510 * USD, sender=trader)
    assert usdc.balanceOf(trader) == before + margin - 510 * USD
    assert perp.positions(position_id).margin == 510 * USD
    with ape.reverts("perp: leverage too high"):
        perp.remove_margin(position_id, 20 * USD, sender=trader)  # $490 · 10 < $5,000
    with ape.reverts("perp: amount exceeds margin"):
        perp.remove_margin(position_id, 510 * USD, sender=trader)
    assert conserved(perp, usdc)


def test_remove_margin__unrealised_profit__not_withdrawable(perp_world, perp, gpt, trader, move_price):
    position_id, _ = open_at(perp, None, gpt, trader, notional=9_000 * USD)  # margin $991
    move_price(gpt, perp_world[4], 2, 1)  # the long's notional in profit
    assert perp.preview_close(position_id, False).gain > 8_000 * USD
    with ape.reverts("perp: leverage too high"):
        perp.remove_margin(position_id, 100 * USD, sender=trader)  # $891 · 10 < $9,000


# ─── Liquidation ─────────────────────────────────────────────────────────────


def test_liquidate__healthy__reverts(perp_world, perp, gpt, trader, liquidator):
    position_id, _ = open_at(perp, None, gpt, trader, notional=9_000 * USD)
    assert not perp.is_liquidatable(position_id)
    with ape.reverts("perp: position is healthy"):
        perp.liquidate(position_id, sender=liquidator)
    with ape.reverts("perp: no such position"):
        perp.liquidate(position_id + 1, sender=liquidator)


def test_liquidate__below_maintenance__bonus_remainder_to_owner(
    perp_world, perp, gpt, usdc, trader, liquidator, move_price, chain
):
    # 9x long: a ~7 % fall leaves equity below the 5 % maintenance but above zero.
    position_id, _ = open_at(perp, chain, gpt, trader, notional=9_000 * USD)
    move_price(gpt, perp_world[4], 93, 100)
    assert perp.is_liquidatable(position_id)
    preview = perp.preview_close(position_id, True)
    assert 0 < preview.equity < m.maintenance(9_000 * USD, GPT_MARKET) and preview.bad_debt == 0
    owner_before, liq_before = usdc.balanceOf(trader), usdc.balanceOf(liquidator)
    s, tx, _ = settle_and_expect(
        perp, chain, position_id, gpt, GPT_MARKET, lambda: perp.liquidate(position_id, sender=liquidator), True
    )
    assert usdc.balanceOf(liquidator) == liq_before + s.bonus == liq_before + 9_000 * USD * 200 // m.BPS
    assert usdc.balanceOf(trader) == owner_before + s.payout > owner_before
    assert perp.PositionClosed.from_receipt(tx)[0].liquidator == liquidator.address
    assert not perp.BadDebtRecorded.from_receipt(tx)
    assert conserved(perp, usdc)


def test_liquidate__underwater__insurance_then_pool_cover_recorded(
    perp_world, perp, gpt, usdc, trader, liquidator, move_price, chain, hedger
):
    perp.fund_insurance(500 * USD, sender=hedger)
    position_id, _ = open_at(perp, chain, gpt, trader, notional=9_000 * USD)
    margin = perp.positions(position_id).margin
    move_price(gpt, perp_world[4], 70, 100)  # −30 % on 9x: far below zero equity
    preview = perp.preview_close(position_id, True)
    insurance, pool = perp.insurance_fund(), perp.pool_amount()
    liq_before = usdc.balanceOf(liquidator)
    s, tx, _ = settle_and_expect(
        perp, chain, position_id, gpt, GPT_MARKET, lambda: perp.liquidate(position_id, sender=liquidator), True
    )
    # The bonus came from the insurance fund; what was left of it covered part of the
    # bad debt; the pool absorbed the rest (it received the margin, not the whole loss).
    assert preview.equity < 0 and s.equity < 0 and s.fee == 0 and s.payout == 0
    assert s.bonus == s.bonus_from_insurance == 9_000 * USD * 200 // m.BPS
    assert s.bad_debt_covered == insurance - s.bonus > 0 and s.bad_debt_absorbed > 0
    assert usdc.balanceOf(liquidator) == liq_before + s.bonus
    assert perp.insurance_fund() == 0
    bad = perp.BadDebtRecorded.from_receipt(tx)[0]
    assert (bad.amount, bad.covered_by_insurance, bad.absorbed_by_pool) == (
        s.bad_debt, s.bad_debt_covered, s.bad_debt_absorbed,
    )  # fmt: skip
    assert (perp.bad_debt_total(), perp.bad_debt_covered_by_insurance(), perp.bad_debt_absorbed_by_pool()) == (
        s.bad_debt, s.bad_debt_covered, s.bad_debt_absorbed,
    )  # fmt: skip
    assert perp.pool_amount() == pool + margin + s.bad_debt_covered == pool + s.pool_change(margin, INSURANCE_FEE_BPS)
    assert conserved(perp, usdc)


# ─── Funding ─────────────────────────────────────────────────────────────────


def test_funding__one_side_only__pays_k_per_hour_to_the_pool(perp_world, perp, cld, usdc, trader, chain):
    # CLD: k = 1 %/hour. A lone long pays 1 % of its notional an hour, to the pool.
    position_id, tx = open_at(perp, chain, cld, trader, margin=2_000 * USD, notional=10_000 * USD)
    assert perp.funding_rate(cld) == 10**16
    pool = perp.pool_amount()
    tx_at(chain, tx.timestamp + 3_600 - 5)
    s, _, margin = settle_and_expect(
        perp, chain, position_id, cld, CLD_MARKET, lambda: perp.close_position(position_id, 0, sender=trader)
    )
    assert s.funding == 100 * USD  # 1 % of $10,000
    assert perp.pool_amount() == pool - s.pnl + 100 * USD == pool + s.pool_change(margin, INSURANCE_FEE_BPS)
    assert conserved(perp, usdc)


def test_funding__both_sides__heavier_pays_lighter_pro_rata(perp_world, perp, cld, trader, hedger, chain):
    long_id, _ = open_at(perp, chain, cld, trader, margin=3_000 * USD, notional=15_000 * USD)
    short_id, tx = open_at(perp, chain, cld, hedger, is_long=False, margin=1_000 * USD, notional=5_000 * USD)
    # r = k · (15 − 5) / (15 + 5) = 0.5 %/hour: longs pay $75 an hour, shorts get all of it.
    assert perp.funding_rate(cld) == 5 * 10**15
    start = perp.markets(cld)  # accrued at the short's open (the lone long paid the pool until then)
    at = tx.timestamp + 3_600
    long_s = expect_settlement(perp, long_id, cld, CLD_MARKET, at)
    short_s = expect_settlement(perp, short_id, cld, CLD_MARKET, at)
    before = m.funding_owed(15_000 * USD, perp.positions(long_id).entry_funding, start.long_funding)
    assert long_s.funding == before + 75 * USD and short_s.funding == -75 * USD
    tx_at(chain, at)
    perp.accrue_funding(cld, sender=trader)
    mk = perp.markets(cld)
    assert (mk.long_funding, mk.short_funding) == tuple(perp.funding_indices(cld))
    assert (mk.long_funding - start.long_funding, mk.short_funding - start.short_funding) == (5 * 10**15, -15 * 10**15)


def test_funding__set_k__accrues_at_old_rate_first(perp_world, perp, cld, admin, trader, chain):
    _, tx = open_at(perp, chain, cld, trader, margin=2_000 * USD, notional=10_000 * USD)
    tx_at(chain, tx.timestamp + 1_800)
    change = perp.set_funding_k(cld, 0, sender=admin)
    assert perp.FundingKSet.from_receipt(change)[0].old_k == 10**16
    assert perp.markets(cld).long_funding == 10**16 // 2
    tx_at(chain, tx.timestamp + 7_200)
    perp.accrue_funding(cld, sender=trader)
    assert perp.markets(cld).long_funding == 10**16 // 2


def test_admin__setters_not_owner__revert(perp, gpt, attacker):
    for call in (
        lambda: perp.set_funding_k(gpt, 0, sender=attacker),
        lambda: perp.set_market_active(gpt, False, sender=attacker),
        lambda: perp.set_insurance_fee_bps(0, sender=attacker),
        lambda: perp.pause(sender=attacker),
    ):
        with ape.reverts():
            call()
