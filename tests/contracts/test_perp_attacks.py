"""Attacks on Perp through ape, over the real DEX: moving the spot price 10× inside one
transaction (so one block) changes neither Perp's price nor whether a position is
liquidatable, so a flash pump cannot open at a price of its making and a flash dump
cannot liquidate a healthy position, and it can only make a leaving LP's price worse;
liquidation races (the owner adding margin first, the liquidator first, two
liquidators, a liquidator ahead of the owner's close) all end in a safe state; LPs
cannot pick each other's pockets: an LP cannot dodge a trader's profit by withdrawing
just before the trader closes, nor right after a spot jump before the TWAP follows
(found), nor at a price that nets a bankrupt position's uncollectable loss against
other traders' gains (found), and entering LPs pay for gains beyond a position's cap;
open interest is capped by the depth of the DEX pool the Oracle reads (found: a TWAP
pump against $25k pools paid against Perp LPs)."""

import ape
import pytest

from fixtures.perp import GPT_MARKET, tx_at
from promptex.chain.perp import add_market
from promptex.protocol import perp as m
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.units import ZERO_ADDRESS as ZERO


def spot(pool, token):
    """USDC units per 10**18 token units at the pool's reserves."""
    reserve0, reserve1, _ = pool.get_reserves()
    if pool.token0() == token.address:
        return reserve1 * UNIT // reserve0
    return reserve0 * UNIT // reserve1


@pytest.fixture
def attacker_contract(project, attacker, router, perp, usdc):
    return attacker.deploy(project.PerpSpotAttacker, router, perp, usdc)


@pytest.fixture
def victim(perp_world, perp, gpt, hedger):
    """A healthy 9x GPT long of `hedger`."""
    tx = perp.open_position(gpt, True, 1_000 * USD, 9_000 * USD, sender=hedger)
    return perp.PositionOpened.from_receipt(tx)[0].position_id


# ─── Spot manipulation inside one block ──────────────────────────────────────


def test_spot_pumped_10x_in_one_transaction__prices_unmoved_leaving_lps_only_worse_off(
    perp_world, perp, gpt, usdc, attacker, attacker_contract, victim
):
    gpt_pool = perp_world[4]
    before = spot(gpt_pool, gpt)
    usdc.mint(attacker_contract, 220_000 * USD, sender=attacker)  # √10 − 1 ≈ 2.16 times the $100,000 side
    tx = attacker_contract.move_and_observe(gpt, False, 220_000 * USD, DEFAULT_FEE, victim, sender=attacker)
    assert spot(gpt_pool, gpt) >= 10 * before
    seen = attacker_contract.Observed.from_receipt(tx)[0]
    assert seen.price_after == seen.price_before
    # A leaving LP is priced at the spot when it is worse for it (the long gains at 10×,
    # capped at its reserve): a pump can only make a withdrawal pay less, never more.
    assert seen.value_after == perp.pool_amount() - perp.positions(victim).reserved < seen.value_before
    assert not seen.liquidatable_before and not seen.liquidatable_after


def test_spot_dumped_10x_in_one_transaction__healthy_position_not_liquidatable(
    perp_world, perp, gpt, lp, attacker, attacker_contract, victim
):
    gpt_pool = perp_world[4]
    before = spot(gpt_pool, gpt)
    token_in = 60_000 * UNIT  # ≈ 2.2 times the pool's ~27,000 GPT: spot falls about 10×
    gpt.transfer(attacker_contract, token_in, sender=lp)
    with ape.reverts("perp: position is healthy"):  # the whole transaction, dump included, reverts
        attacker_contract.dump_and_liquidate(gpt, token_in, DEFAULT_FEE, victim, sender=attacker)
    assert perp.positions(victim).owner != ZERO
    tx = attacker_contract.move_and_observe(gpt, True, token_in, DEFAULT_FEE, victim, sender=attacker)
    assert spot(gpt_pool, gpt) * 10 <= before
    seen = attacker_contract.Observed.from_receipt(tx)[0]
    assert seen.price_after == seen.price_before
    # The long's loss at the dumped spot is not credited to a leaver: it stays priced at the
    # TWAP (within a unit: the spot sat a unit above the TWAP's rounding before).
    assert seen.value_before <= seen.value_after <= seen.value_before + 1
    assert not seen.liquidatable_before and not seen.liquidatable_after


def test_spot_pumped_then_long_opened_and_closed__trades_at_twap_and_loses_fees(
    perp_world, perp, gpt, usdc, attacker, attacker_contract
):
    usdc.mint(attacker_contract, 221_000 * USD, sender=attacker)
    twap = perp.price(gpt)
    tx = attacker_contract.pump_open_close(gpt, 220_000 * USD, DEFAULT_FEE, 1_000 * USD, 9_000 * USD, sender=attacker)
    opened = perp.PositionOpened.from_receipt(tx)[0]
    closed = perp.PositionClosed.from_receipt(tx)[0]
    assert opened.price == closed.price
    assert abs(opened.price - twap) * 10**9 < twap  # the TWAP, not the pumped spot
    fees = m.open_fee(9_000 * USD, GPT_MARKET) + m.close_fee(9_000 * USD, GPT_MARKET)
    trip = attacker_contract.RoundTrip.from_receipt(tx)[0]
    assert trip.payout <= trip.margin - fees  # a round trip only pays the fees (and rounding)


# ─── Liquidation races ───────────────────────────────────────────────────────


@pytest.fixture
def underwater(perp_world, perp, gpt, trader, move_price):
    """A 9x GPT long of `trader` made liquidatable by a 7 % fall (equity still positive)."""
    tx = perp.open_position(gpt, True, 1_000 * USD, 9_000 * USD, sender=trader)
    position_id = perp.PositionOpened.from_receipt(tx)[0].position_id
    move_price(gpt, perp_world[4], 93, 100)
    assert perp.is_liquidatable(position_id)
    return position_id


def test_race__owner_adds_margin_first__liquidation_reverts(perp, underwater, trader, liquidator, usdc):
    perp.add_margin(underwater, 500 * USD, sender=trader)
    assert not perp.is_liquidatable(underwater)
    before = usdc.balanceOf(liquidator)
    with ape.reverts("perp: position is healthy"):
        perp.liquidate(underwater, sender=liquidator)
    assert usdc.balanceOf(liquidator) == before
    assert perp.positions(underwater).owner == trader.address


def test_race__liquidator_first__owner_margin_refused_and_remainder_paid(perp, underwater, trader, liquidator, usdc):
    preview = perp.preview_close(underwater, True)
    before = usdc.balanceOf(trader)
    tx = perp.liquidate(underwater, sender=liquidator)
    paid = perp.PositionClosed.from_receipt(tx)[0].payout
    assert paid > 0 and abs(paid - preview.payout) < USD  # the owner keeps its equity after fee and bonus
    assert usdc.balanceOf(trader) == before + paid
    with ape.reverts("perp: not the position owner"):
        perp.add_margin(underwater, 500 * USD, sender=trader)  # no USDC is taken for a gone position
    assert usdc.balanceOf(trader) == before + paid
    with ape.reverts("perp: not the position owner"):
        perp.close_position(underwater, 0, sender=trader)


def test_race__two_liquidators__second_reverts_first_paid_once(perp, underwater, liquidator, hedger, usdc):
    bonus = 9_000 * USD * GPT_MARKET.liquidation_bonus_bps // m.BPS
    before = usdc.balanceOf(liquidator)
    perp.liquidate(underwater, sender=liquidator)
    assert usdc.balanceOf(liquidator) == before + bonus
    with ape.reverts("perp: no such position"):
        perp.liquidate(underwater, sender=hedger)


def test_self_liquidation__bonus_plus_remainder__equals_a_close(perp, underwater):
    # Self-liquidation pays the owner the bonus it loses as the position's owner: the
    # sum equals a plain close (the close fee is charged either way).
    close = perp.preview_close(underwater, False)
    liquidation = perp.preview_close(underwater, True)
    assert liquidation.payout + liquidation.bonus == close.payout
    assert liquidation.bonus_from_insurance == 0


# ─── LP timing ───────────────────────────────────────────────────────────────


def test_lp_withdraws_before_traders_profit_is_realised__gets_no_more(
    perp_world, perp, gpt, lp, hedger, trader, move_price, chain
):
    # A second LP joins; a long gains ~30 %; the LP's shares are worth the same just
    # before and just after the trader realises the gain (the pool value already nets it).
    perp.deposit(50_000 * 10**6, 0, sender=hedger)
    tx = perp.open_position(gpt, True, 2_000 * USD, 10_000 * USD, sender=trader)
    position_id = perp.PositionOpened.from_receipt(tx)[0].position_id
    move_price(gpt, perp_world[4], 13, 10)
    shares = perp.shares_of(hedger)
    before_close = shares * perp.pool_value(False) // perp.total_shares()
    gain = perp.preview_close(position_id, False).gain
    assert gain > 2_500 * USD
    tx_at(chain, chain.blocks.head.timestamp + 1)
    perp.close_position(position_id, 0, sender=trader)
    after_close = shares * perp.pool_value(False) // perp.total_shares()
    # What changes is the LP's share of the close fee (and the TWAP's drift in a second).
    assert after_close >= before_close
    assert after_close - before_close < 10 * USD


# ─── LPs cannot pick each other's pockets ────────────────────────────────────


def as_position(perp, position_id):
    p = perp.positions(position_id)
    return m.Position(p.is_long, p.margin, p.size, p.notional, p.reserved, p.entry_funding)


def fair_value(perp, prices, position_ids):
    """What the pool is worth, exactly, if every listed position were settled at `prices`
    (token → price): each position's PnL net of funding, clamped to [−margin, reserved]."""
    worth = 0
    for position_id in position_ids:
        p = perp.positions(position_id)
        long_index, short_index = perp.funding_indices(p.token)
        index = long_index if p.is_long else short_index
        worth += m.clamped_worth(as_position(perp, position_id), prices[p.token], index)
    return perp.pool_amount() - worth


def withdraw(perp, shares, lp):
    return perp.LiquidityWithdrawn.from_receipt(perp.withdraw(shares, 0, sender=lp))[0].amount


def open_id(perp, token, trader, is_long, margin, notional):
    tx = perp.open_position(token, is_long, margin, notional, sender=trader)
    return perp.PositionOpened.from_receipt(tx)[0].position_id


def test_lp_leaves_right_after_a_spot_jump__pays_at_the_spot_stayers_lose_nothing(
    perp_world, perp, gpt, usdc, lp, hedger, trader, router, chain
):
    """Found: an LP withdrew right after a spot jump, before the TWAP followed, and left
    its share of the traders' gain to the LPs who stayed."""
    gpt_pool = perp_world[4]
    perp.deposit(50_000 * USD, 0, sender=hedger)
    long_id = open_id(perp, gpt, trader, True, 4_000 * USD, 20_000 * USD)
    twap = perp.price(gpt)
    router.swap_exact_in(30_000 * USD, 0, [usdc, gpt], [DEFAULT_FEE], lp, chain.pending_timestamp + 600, sender=lp)
    jumped = spot(gpt_pool, gpt) * UNIT  # Oracle units
    assert jumped > twap * 15 // 10 and abs(perp.price(gpt) - twap) < twap // 10**6  # the TWAP has not moved
    twap = perp.price(gpt)
    supply, shares = perp.total_shares(), perp.shares_of(hedger)
    fair = fair_value(perp, {gpt.address: jumped}, [long_id])  # the long's gain at the new price
    stale = fair_value(perp, {gpt.address: twap}, [long_id])
    assert shares * stale // supply > shares * fair // supply + 1_000 * USD  # what it took before the fix
    paid = withdraw(perp, shares, hedger)
    assert paid <= shares * fair // supply
    # Those who stay hold at least their share of the fair value.
    assert fair_value(perp, {gpt.address: jumped}, [long_id]) * supply >= fair * (supply - shares)


def test_lp_leaving_while_a_position_is_bankrupt__uncollectable_loss_not_credited(
    perp_world, perp, cld, gpt, lp, hedger, trader, liquidator, move_price, usdc, chain
):
    """Found: the withdrawal price netted a bankrupt position's loss beyond its margin
    against other traders' gains. A 20× CLD long goes bankrupt in a fall while a GPT
    short gains; the leaving LP is paid no more than the pool is worth once the long
    is liquidated, and the LPs who stay end with their share."""
    perp.deposit(50_000 * USD, 0, sender=hedger)
    long_id = open_id(perp, cld, trader, True, 500 * USD, 10_000 * USD)  # 20×: bankrupt 5 % lower
    short_id = open_id(perp, gpt, liquidator, False, 2_000 * USD, 10_000 * USD)
    cld_price = move_price(cld, perp_world[3], 80, 100)  # −20 %: the long owes ~$2,000 on $500
    gpt_price = move_price(gpt, perp_world[4], 90, 100)  # −10 %: the short gains ~$1,000
    prices = {cld.address: cld_price, gpt.address: gpt_price}
    long = perp.preview_close(long_id, True)
    assert long.bad_debt > 1_000 * USD and perp.preview_close(short_id, False).gain > 900 * USD
    fair = fair_value(perp, prices, [long_id, short_id])
    netted = perp.pool_amount()  # the old price: the long's whole loss set against the short's gain
    assert netted > fair + 400 * USD
    supply, shares = perp.total_shares(), perp.shares_of(hedger)
    assert perp.pool_value(False) <= fair
    paid = withdraw(perp, shares, hedger)
    assert paid <= shares * fair // supply
    # Settle everything: what is left for the LP who stayed (lp) is at least the fair
    # value minus what the leaver took (funding paid meanwhile only adds to it).
    perp.liquidate(long_id, sender=liquidator)
    perp.close_position(short_id, 0, sender=liquidator)
    assert perp.total_reserved() == 0 and perp.pool_value(False) == perp.pool_amount() >= fair - paid


def test_lp_entering_while_a_gain_is_beyond_its_cap__pays_for_the_cap_not_the_excess(
    perp_world, perp, cld, hedger, trader, liquidator, move_price
):
    """Sibling, for deposits: a CLD long far beyond its 25 % cap and a losing long on the
    same side. Netting the whole gain against the loss undervalued the pool, so an
    entering LP got shares at the incumbents' expense."""
    winner = open_id(perp, cld, trader, True, 1_000 * USD, 10_000 * USD)
    cld_price = move_price(cld, perp_world[3], 160, 100)  # +60 %: the winner gains 6,000, capped at 2,500
    loser = open_id(perp, cld, liquidator, True, 5_000 * USD, 10_000 * USD)
    cld_price = move_price(cld, perp_world[3], 80, 100)  # the second long loses ~20 %
    prices = {cld.address: cld_price}
    assert perp.preview_close(winner, False).gain == perp.positions(winner).reserved
    fair = fair_value(perp, prices, [winner, loser])
    assert perp.pool_value(True) >= fair  # an entering LP pays at least the fair value per share
    supply = perp.total_shares()
    tx = perp.deposit(20_000 * USD, 0, sender=hedger)
    assert perp.LiquidityDeposited.from_receipt(tx)[0].shares <= 20_000 * USD * supply // fair


def test_twap_pump_against_a_thin_pool__open_interest_capped_by_its_depth(
    perp_world, perp, plain, usdc, oracle, router, add_liquidity, admin, lp, trader, attacker, chain
):
    """Found: a TWAP pump against $25k pools paid against Perp LPs ($100k). A market on a
    $25k pool takes at most 10 % of that depth per side, whatever the LP pool holds
    and whatever the pool's spot does in the same block."""
    thin = plain[0]
    usdc.mint(lp, 25_000 * USD, sender=lp)
    usdc.approve(router, 2**256 - 1, sender=lp)
    pool = add_liquidity(thin, usdc, 25_000 * UNIT, 25_000 * USD)  # $1 a token, $25k a side
    oracle.update(thin, sender=lp)
    chain.pending_timestamp += 601
    oracle.update(thin, sender=lp)
    add_market(perp, thin, m.DEFAULT_MARKET, admin)
    depth = m.depth(*(pool.get_reserves()[:2]), perp.price(thin))
    assert abs(depth - 25_000 * USD) < USD
    with ape.reverts("perp: open interest above pool depth cap"):
        perp.open_position(thin, True, 3_000 * USD, 20_000 * USD, sender=trader)  # the old cap allowed $50k
    # A pump in the same block does not deepen the pool the cap reads (√k at the TWAP).
    usdc.mint(attacker, 100_000 * USD, sender=attacker)
    usdc.approve(router, 2**256 - 1, sender=attacker)
    router.swap_exact_in(100_000 * USD, 0, [usdc, thin], [DEFAULT_FEE], attacker, chain.pending_timestamp + 60,
                         sender=attacker)  # fmt: skip
    with ape.reverts("perp: open interest above pool depth cap"):
        perp.open_position(thin, True, 600 * USD, 3_000 * USD, sender=trader)
    open_id(perp, thin, trader, True, 600 * USD, 2_000 * USD)  # within 10 % of $25k
