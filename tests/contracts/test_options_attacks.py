"""Attacks on Options through ape: an Oracle update just before expiry (so that the
next is refused for a period) followed by a pump traded in every block until
settlement changes nothing (found: a writer paid $20,013 instead of $0); the spot
price moved 10× inside one block (the block that records the settlement's end
observation, or the settling transaction itself) changes nothing the contract reads;
a series settles once, whoever tries again and with whatever ranks; a settler cannot
choose a friendlier pair of observations; an ERC-1155 receiver cannot re-enter while
Options sends it units."""

import ape
import pytest

from fixtures.options import CALL_COLLATERAL, CALL_SIZE
from promptex.chain.options import read_observations, settle
from promptex.protocol import options as helpers
from promptex.protocol.dex import LOCAL_ORACLE_PERIOD as PERIOD
from promptex.protocol.options import CALL, Terms
from promptex.protocol.options import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.units import WAD as FIXED

PUMP = 220_000 * USD  # into a $100k-deep pool: spot × ~10


@pytest.fixture
def mover(project, admin, usdc):
    contract = admin.deploy(project.OptionsSpotMover)
    usdc.mint(contract, PUMP, sender=admin)
    return contract


def spot(pool, token):
    """Spot price of `token` in Oracle units (USDC units per 10**18 token units, 10**18 fixed)."""
    reserve0, reserve1, _ = pool.get_reserves()
    tokens, dollars = (reserve0, reserve1) if pool.token0() == token.address else (reserve1, reserve0)
    return dollars * helpers.PRICE_SCALE // tokens


def pumped_spot(pool, token, usdc_in):
    """Spot after buying with `usdc_in` (0.30 % fee), as the mover does."""
    reserve0, reserve1, _ = pool.get_reserves()
    tokens, dollars = (reserve0, reserve1) if pool.token0() == token.address else (reserve1, reserve0)
    bought = usdc_in * 997 * tokens // (dollars * 1_000 + usdc_in * 997)
    return (dollars + usdc_in) * helpers.PRICE_SCALE // (tokens - bought)


def outcome(options, series):
    s = options.series(series)
    return s.settled, s.settlement_price, s.payout_per_unit


def test_settle__update_just_before_expiry_then_pump_traded_every_block__payout_unchanged(
    options, oracle, call_terms, observe_through, mover, router, usdc, markets, chain, keeper, writer, attacker
):
    """The reviewer's attack: the attacker holds an out-of-the-money capped call. A
    keeper's update lands a second before expiry, so the Oracle refuses the next for a
    period; from expiry on the attacker pumps CLD and trades in every block, and the
    Oracle records a pumped observation a period later. Settled after that, the call
    still pays what the window before expiry says: nothing."""
    cld = markets[0]
    otm = Terms(cld.address, CALL, 5_000 * FIXED, 9_000 * FIXED, call_terms.expiry, CALL_SIZE)  # strike $0.005
    options.create_series(*otm.args(), sender=keeper)
    options.write(otm.id, 5, sender=writer)
    options.safeTransferFrom(writer, attacker, otm.id, 5, b"", sender=writer)
    usdc.mint(mover, 2 * PUMP, sender=attacker)
    observe_through(cld, otm.expiry - TWAP_WINDOW - PERIOD - 1, otm.expiry - 1)  # last update: expiry − 1
    settle_at = otm.expiry + PERIOD + 2

    snapshot = chain.snapshot()
    chain.mine(1, timestamp=settle_at - 1)  # views read the head block
    settle(options, otm.id, keeper)
    honest = outcome(options, otm.id)
    chain.restore(snapshot)

    count = oracle.observation_count(cld)
    chain.pending_timestamp = otm.expiry
    mover.pump_and_update(router, oracle, cld, usdc, PUMP, sender=attacker)
    for t in range(otm.expiry + 1, settle_at):  # a trade and an Oracle update in every block
        chain.pending_timestamp = t
        mover.pump_and_update(router, oracle, cld, usdc, PUMP // 100, sender=attacker)
    # Refused until a period after the last update, then one pumped observation.
    assert oracle.observation_count(cld) == count + 1
    assert oracle.observation(cld, 0)[0] == otm.expiry - 1 + PERIOD
    pumped = oracle.consult(cld, TWAP_WINDOW)
    assert pumped > otm.strike  # a settlement reading through the pumped observation would pay
    settle(options, otm.id, attacker)  # mined at settle_at
    assert outcome(options, otm.id) == honest
    assert honest[0] and honest[2] == 0 and honest[1] < otm.strike  # the writer pays nothing
    before = usdc.balanceOf(attacker)
    options.claim(otm.id, sender=attacker)
    assert usdc.balanceOf(attacker) == before
    options.reclaim(otm.id, sender=writer)
    assert options.total_collateral() == 0


def test_settle__spot_pumped_10x_inside_the_settling_transaction__same_outcome(
    options, oracle, written, call_terms, observe_through, mover, router, usdc, markets, chain, keeper
):
    series = written(3)
    cld, cld_pool = markets[0], markets[3]
    observe_through(cld, call_terms.expiry - TWAP_WINDOW - PERIOD, call_terms.expiry)
    at = call_terms.expiry + 1
    start, end = helpers.settlement_ranks(read_observations(oracle, cld), at, call_terms.expiry, TWAP_WINDOW)
    assert pumped_spot(cld_pool, cld, PUMP) >= 10 * spot(cld_pool, cld)

    snapshot = chain.snapshot()
    chain.pending_timestamp = at
    options.settle(series, start, end, sender=keeper)
    honest = outcome(options, series)
    chain.restore(snapshot)

    chain.pending_timestamp = at
    mover.pump_settle_dump(router, options, cld, usdc, PUMP, series, start, end, sender=keeper)
    assert outcome(options, series) == honest
    assert honest[0] and 0 < honest[2] < CALL_COLLATERAL


def test_settle__spot_pumped_10x_in_the_block_recording_the_end_observation__same_price(
    options, oracle, written, call_terms, observe_through, mover, router, usdc, markets, chain, keeper
):
    series = written(3)
    cld = markets[0]
    observe_through(cld, call_terms.expiry - TWAP_WINDOW - PERIOD, call_terms.expiry - PERIOD)

    snapshot = chain.snapshot()
    chain.pending_timestamp = call_terms.expiry
    oracle.update(cld, sender=keeper)
    chain.mine(1, timestamp=call_terms.expiry + 1)  # views read the head block
    settle(options, series, keeper)
    honest = outcome(options, series)
    chain.restore(snapshot)

    chain.pending_timestamp = call_terms.expiry  # the end observation is recorded mid-manipulation
    mover.pump_update_dump(router, oracle, cld, usdc, PUMP, sender=keeper)
    assert oracle.observation(cld, 0)[0] == call_terms.expiry & (2**32 - 1)
    chain.mine(1, timestamp=call_terms.expiry + 1)
    settle(options, series, keeper)
    assert outcome(options, series) == honest


def test_settle__twice__reverts_whoever_and_whatever_ranks(
    options, oracle, written, call_terms, settle_series, mover, router, usdc, markets, keeper, attacker
):
    series = written(2)
    settle_series(call_terms)
    settled = outcome(options, series)
    count = oracle.observation_count(call_terms.token)
    for start, end in ((12, 0), (1, 0), (count - 1, 0)):
        with ape.reverts("options: series settled"):
            options.settle(series, start, end, sender=attacker)
    with ape.reverts("options: series settled"):
        mover.pump_settle_dump(router, options, markets[0], usdc, PUMP, series, 12, 0, sender=attacker)
    assert outcome(options, series) == settled


def test_settle__wider_bracket_with_a_friendlier_price__reverts(
    options, oracle, written, call_terms, observe_through, router, lp, usdc, markets, chain, keeper
):
    """The price was 10× higher before the window; an older start would lift the call's payout."""
    series = written(1)
    cld = markets[0]
    chain.pending_timestamp = call_terms.expiry - TWAP_WINDOW - 5 * PERIOD
    oracle.update(cld, sender=keeper)
    held = cld.balanceOf(lp)
    usdc.approve(router, PUMP, sender=lp)
    router.swap_exact_in(PUMP, 0, [usdc, cld], [30], lp, chain.pending_timestamp + 60, sender=lp)  # 10× up…
    observe_through(cld, call_terms.expiry - TWAP_WINDOW - 4 * PERIOD, call_terms.expiry - TWAP_WINDOW - 4 * PERIOD)
    chain.pending_timestamp = call_terms.expiry - TWAP_WINDOW - 3 * PERIOD
    amount = cld.balanceOf(lp) - held  # …and back down
    cld.approve(router, amount, sender=lp)
    router.swap_exact_in(amount, 0, [cld, usdc], [30], lp, chain.pending_timestamp + 60, sender=lp)
    observe_through(cld, call_terms.expiry - TWAP_WINDOW - 2 * PERIOD, call_terms.expiry)
    at = call_terms.expiry + 1
    observations = read_observations(oracle, cld)
    start, end = helpers.settlement_ranks(observations, at, call_terms.expiry, TWAP_WINDOW)
    chain.pending_timestamp = at
    for older in range(start + 1, len(observations)):
        with ape.reverts("options: bad start rank"):
            options.settle(series, older, end, sender=keeper)
    options.settle(series, start, end, sender=keeper)
    assert options.series(series).settlement_price == helpers.settlement_price(
        observations, at, call_terms.expiry, TWAP_WINDOW
    )


@pytest.mark.parametrize("entry", ["write", "unwind"])
def test_receiver_hook__re_entering_options__blocked(
    project, admin, options, written, call_terms, writer, usdc, keeper, entry
):
    series = written(1)
    receiver = admin.deploy(project.OptionsReenteringHolder)
    usdc.mint(receiver, 10 * CALL_COLLATERAL, sender=admin)
    receiver.approve(usdc, options, sender=admin)
    # Either call would succeed from the receiver outside the hook (it holds USDC
    # approved to Options, and its unit is minted and its short recorded first).
    receiver.set_reentry(getattr(options, entry).encode_input(series, 1), sender=admin)
    receiver.write(options, series, 1, sender=admin)  # mints to the receiver: its hook re-enters
    assert receiver.hooked() and not receiver.reentered()
    assert options.written(series, receiver) == 1 == options.balanceOf(receiver, series)
    assert options.total_collateral() == usdc.balanceOf(options) == 2 * CALL_COLLATERAL
