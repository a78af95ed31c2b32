"""Attacks on Perp through ape, over the real DEX: moving the spot price 10× inside one
transaction (so one block) changes nothing Perp reads — its price, the pool's value,
whether a position is liquidatable — so a flash pump cannot open at a price of its
making and a flash dump cannot liquidate a healthy position; liquidation races (the
owner adding margin first, the liquidator first, two liquidators, a liquidator ahead
of the owner's close) all end in a safe state; an LP cannot dodge a trader's profit by
withdrawing just before the trader closes."""

import ape
import pytest
from perp_fixtures import *  # noqa: F403  (the DEX and perp fixtures)
from perp_fixtures import GPT_MARKET, tx_at

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


def test_spot_pumped_10x_in_one_transaction__perp_reads_nothing_new(
    perp_world, perp, gpt, usdc, attacker, attacker_contract, victim
):
    gpt_pool = perp_world[4]
    before = spot(gpt_pool, gpt)
    usdc.mint(attacker_contract, 220_000 * USD, sender=attacker)  # √10 − 1 ≈ 2.16 times the $100,000 side
    tx = attacker_contract.move_and_observe(gpt, False, 220_000 * USD, DEFAULT_FEE, victim, sender=attacker)
    assert spot(gpt_pool, gpt) >= 10 * before
    seen = attacker_contract.Observed.from_receipt(tx)[0]
    assert seen.price_after == seen.price_before
    assert seen.value_after == seen.value_before
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
