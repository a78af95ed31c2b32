"""Oracle through ape: tracking a token's USDC pool, the observation ring buffer,
time-weighted averages checked against prices computed from the reserves, a
window that is not yet covered, and a spot price manipulated in the last block
(which barely moves the average: the oracle never returns spot)."""

import ape
import pytest

from fixtures.dex import CLD_PRICE
from promptex.protocol.dex import DEFAULT_FEE, LOCAL_ORACLE_PERIOD
from promptex.protocol.units import TOKEN_UNIT as UNIT

MASK32 = 2**32 - 1
PERIOD = LOCAL_ORACLE_PERIOD


def uq_price(pool, token):
    """The pool's spot price of `token` in the other token, UQ112.112, as the pool
    accumulates it."""
    reserve0, reserve1, _ = pool.get_reserves()
    if pool.token0() == token.address:
        return (reserve1 << 112) // reserve0
    return (reserve0 << 112) // reserve1


def wad(uq):
    """UQ112.112 quote units per token unit → quote units per 10**18 token units, 10**18 fixed point."""
    return uq * 10**36 >> 112


def tx_at(chain, timestamp):
    """The next transaction is mined at `timestamp`."""
    chain.pending_timestamp = timestamp


def view_at(chain, timestamp):
    """Views (calls against the latest block) see `timestamp`."""
    chain.mine(1, timestamp=timestamp)


def test_deploy__parameters__recorded(oracle, factory, usdc):
    assert (oracle.factory(), oracle.quote_token(), oracle.fee(), oracle.period()) == (
        factory.address,
        usdc.address,
        DEFAULT_FEE,
        PERIOD,
    )
    assert oracle.CARDINALITY() == 64


def test_update__first_call__tracks_the_usdc_pool_and_records(oracle, markets, trader):
    cld, _, _, cld_pool, _ = markets
    receipt = oracle.update(cld, sender=trader)
    assert oracle.pool_of(cld) == cld_pool.address
    assert oracle.observation_count(cld) == 1
    tracked = oracle.PoolTracked.from_receipt(receipt)[0]
    assert (tracked.token, tracked.pool) == (cld.address, cld_pool.address)
    recorded = oracle.ObservationRecorded.from_receipt(receipt)[0]
    timestamp, cumulative = oracle.observation(cld, 0)
    assert timestamp == recorded.timestamp == receipt.timestamp & MASK32
    cumulatives = cld_pool.current_cumulative_prices(block_id=receipt.block_number)
    expected = cumulatives[0] if cld_pool.token0() == cld.address else cumulatives[1]
    assert cumulative == recorded.price_cumulative == expected & ~MASK32


def test_update__within_period__records_nothing(oracle, markets, trader, chain):
    cld = markets[0]
    first = oracle.update(cld, sender=trader)
    tx_at(chain, first.timestamp + PERIOD - 1)
    receipt = oracle.update(cld, sender=trader)
    assert oracle.observation_count(cld) == 1
    assert not oracle.ObservationRecorded.from_receipt(receipt)
    tx_at(chain, first.timestamp + PERIOD)
    oracle.update(cld, sender=trader)
    assert oracle.observation_count(cld) == 2


def test_update__cheap__no_op_and_recording_gas_bounded(oracle, markets, trader, chain):
    cld = markets[0]
    first = oracle.update(cld, sender=trader)
    no_op = oracle.update(cld, sender=trader)
    tx_at(chain, first.timestamp + PERIOD)
    second = oracle.update(cld, sender=trader)
    assert no_op.gas_used < 25_000  # one storage read beyond the transaction itself
    assert second.gas_used < 62_000  # 22,100 of it for a fresh ring slot; see the ring test


def test_update__token_without_pool__reverts(oracle, plain, trader):
    with ape.reverts("oracle: no pool"):
        oracle.update(plain[0], sender=trader)


def test_update__quote_token__reverts(oracle, usdc, trader):
    with ape.reverts("oracle: token is the quote asset"):
        oracle.update(usdc, sender=trader)


def test_update__pool_without_liquidity__reverts(oracle, factory, provider_tokens, admin, trader):
    cld, _, usdc = provider_tokens
    factory.create_pool(cld, usdc, DEFAULT_FEE, sender=admin)
    with ape.reverts("oracle: pool has no liquidity"):
        oracle.update(cld, sender=trader)


# ─── consult ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("window, reason", [(0, "oracle: zero window"), (2**31 + 1, "oracle: window too long")])
def test_consult__window_out_of_range__reverts(oracle, markets, trader, window, reason):
    oracle.update(markets[0], sender=trader)
    with ape.reverts(reason):
        oracle.consult(markets[0], window)


def test_consult__token_not_tracked__reverts(oracle, markets):
    with ape.reverts("oracle: token not tracked"):
        oracle.consult(markets[1], 60)


def test_consult__window_not_yet_covered__reverts_then_answers(oracle, markets, trader, chain):
    cld = markets[0]
    first = oracle.update(cld, sender=trader)
    view_at(chain, first.timestamp + 599)
    with ape.reverts("oracle: window not covered"):
        oracle.consult(cld, 600)
    view_at(chain, first.timestamp + 600)
    assert oracle.consult(cld, 600) > 0


def test_consult__constant_price__the_reference_price(oracle, markets, trader, chain):
    cld, gpt, _, _, _ = markets
    first = oracle.update(cld, sender=trader)
    oracle.update(gpt, sender=trader)
    view_at(chain, first.timestamp + 3_600)
    price = oracle.consult(cld, 3_600)
    assert abs(price - CLD_PRICE * 10**18) <= CLD_PRICE * 10**18 // 10**9
    assert abs(oracle.consult(gpt, 3_000) - 3_695_000 * 10**18) <= 3_695_000 * 10**9


def test_consult__price_moves_midway__time_weighted_mean_of_the_two_prices(oracle, markets, router, trader, chain):
    cld, _, usdc, cld_pool, _ = markets
    first = oracle.update(cld, sender=trader)
    before = uq_price(cld_pool, cld)
    tx_at(chain, first.timestamp + 600)
    router.sell(cld, 5_000_000 * UNIT, 0, trader, sender=trader)  # ~ -20 % price
    after = uq_price(cld_pool, cld)
    view_at(chain, first.timestamp + 1_800)
    expected = (before * 600 + after * 1_200) // 1_800
    assert after < before * 9 // 10
    assert abs(oracle.consult(cld, 1_800) - wad(expected)) <= wad(expected) // 10**12


def test_consult__observations_sparser_than_window__averages_from_the_newest_old_enough(
    oracle, markets, router, trader, chain
):
    cld, _, _, cld_pool, _ = markets
    first = oracle.update(cld, sender=trader)
    t0 = first.timestamp
    p0 = uq_price(cld_pool, cld)
    tx_at(chain, t0 + 1_000)
    router.sell(cld, 3_000_000 * UNIT, 0, trader, sender=trader)
    p1 = uq_price(cld_pool, cld)
    tx_at(chain, t0 + 1_001)
    oracle.update(cld, sender=trader)
    view_at(chain, t0 + 1_501)
    # Window 400: the newest observation at least 400 s old is the second (500 s).
    assert abs(oracle.consult(cld, 400) - wad(p1)) <= wad(p1) // 10**12
    # Window 600: only the first is old enough, so the span is 1,501 s, not 600.
    expected = (p0 * 1_000 + p1 * 501) // 1_501
    assert abs(oracle.consult(cld, 600) - wad(expected)) <= wad(expected) // 10**12


def test_consult__spot_manipulated_in_the_last_block__average_barely_moves(oracle, markets, router, trader, chain):
    cld, _, usdc, cld_pool, _ = markets
    first = oracle.update(cld, sender=trader)
    view_at(chain, first.timestamp + 3_600)
    fair = oracle.consult(cld, 3_600)
    # Dump 10M CLD (~$42k into a $100k pool): spot falls by half…
    tx_at(chain, first.timestamp + 3_601)
    router.sell(cld, 10_000_000 * UNIT, 0, trader, sender=trader)
    assert wad(uq_price(cld_pool, cld)) < fair * 6 // 10
    # …but the one second it has lasted weighs 1/3602 of the average.
    view_at(chain, first.timestamp + 3_602)
    assert oracle.consult(cld, 3_600) > fair * 999 // 1_000


def test_update__ring_full__oldest_overwritten(oracle, markets, trader, chain):
    cld = markets[0]
    first = oracle.update(cld, sender=trader)
    for i in range(1, 65):
        tx_at(chain, first.timestamp + i * PERIOD)
        receipt = oracle.update(cld, sender=trader)
    assert oracle.observation_count(cld) == 64
    assert receipt.gas_used < 45_000  # overwriting a ring slot: the steady-state cost
    newest, _ = oracle.observation(cld, 0)
    oldest, _ = oracle.observation(cld, 63)
    assert newest - oldest == 63 * PERIOD
    assert oldest == (first.timestamp + PERIOD) & MASK32  # the very first was overwritten
    view_at(chain, first.timestamp + 64 * PERIOD + 1)
    assert oracle.consult(cld, 63 * PERIOD + 1) > 0
    with ape.reverts("oracle: window not covered"):
        oracle.consult(cld, 63 * PERIOD + 2)
    with ape.reverts("oracle: no such observation"):
        oracle.observation(cld, 64)
