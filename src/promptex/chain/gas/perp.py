"""Perp gas scenario: an LP deposit, opening, closing and liquidating a
position on the GPT market, priced by the Oracle's TWAP.

Steady state: the LP deposit measured is the pool's second (shares and pool amount
are already non-zero; the LP holds no shares yet); the position opened is the
market's second (open interest, funding and the trader's USDC balance are warm, the
position's slots are fresh: most of its cost); the close is of a position an hour old
(funding accrues); the liquidation is of a 9x long after the TWAP fell 8 % (the
liquidator holds no USDC before: 17,100 gas of it is that fresh balance). Each measured
transaction lands in a new block. bench/gas_perp.py prints these figures; tests/contracts/test_perp_gas.py pins them.
"""

from __future__ import annotations

from collections.abc import Callable
from math import isqrt
from typing import Any

from promptex.chain.dex import pool_at
from promptex.chain.gas.measure import new_block, whole_gas
from promptex.chain.perp import deploy_perp
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.perp import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.perp import MarketParams
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import USD_MICRO as USD

# Three longs of $19,000 in all against the $100k pool: a 50 % depth cap (the default is 10 %).
GPT_MARKET = MarketParams(funding_k=10**14, max_leverage=10, maintenance_bps=500, oi_cap_bps=5_000, depth_cap_bps=5_000)


def measure_perp(
    chain: Any,
    contracts: dict[str, Any],
    deployer: Any,
    lp: Any,
    trader: Any,
    liquidator: Any,
    gas_of: Callable[[Any], Any] = whole_gas,
) -> dict[str, Any]:
    """Whole-transaction gas of deposit, open_position, close_position and liquidate.

    `contracts` holds USDC, Router, Oracle and token:GPT; a GPT/USDC 0.30 % pool exists,
    and `lp` holds GPT (it sells some to move the price) and USDC.
    """
    usdc, router, oracle, gpt = (contracts[n] for n in ("USDC", "Router", "Oracle", "token:GPT"))
    perp = deploy_perp(
        deployer, contracts, twap_window=TWAP_WINDOW, markets={gpt.address: GPT_MARKET}, log=lambda _: None
    )

    def settle_twap() -> None:
        oracle.update(gpt.address, sender=deployer)
        chain.pending_timestamp += TWAP_WINDOW
        oracle.update(gpt.address, sender=deployer)

    settle_twap()
    usdc.mint(lp, 200_000 * USD, sender=lp)
    usdc.mint(trader, 10_000 * USD, sender=trader)
    for account in (lp, trader):
        usdc.approve(perp.address, MAX_UINT, sender=account)
    gas: dict[str, int] = {}

    perp.deposit(100_000 * USD, 0, sender=lp)
    new_block(chain)
    gas["perp_lp_deposit"] = gas_of(perp.deposit(10_000 * USD, 0, sender=trader))
    usdc.mint(trader, 3_000 * USD, sender=trader)  # the three positions' margins

    def open_long(notional: int) -> Any:
        new_block(chain)
        return perp.open_position(gpt.address, True, 1_000 * USD, notional, sender=trader)

    open_long(5_000 * USD)  # position 1: the market's open interest becomes non-zero
    gas["perp_open"] = gas_of(open_long(5_000 * USD))  # position 2
    open_long(9_000 * USD)  # position 3, liquidated below

    chain.pending_timestamp += 3_600
    gas["perp_close"] = gas_of(perp.close_position(1, 0, sender=trader))

    # The GPT price falls 8 %: sell GPT until its reserve grows by sqrt(100 / 92).
    pool = pool_at(router.pool_for(gpt.address, usdc.address, DEFAULT_FEE))
    reserve0, reserve1, _ = pool.get_reserves()
    reserve_gpt = reserve0 if pool.token0() == gpt.address else reserve1
    amount = (reserve_gpt * isqrt(100 * 10**36 // 92) // 10**18 - reserve_gpt) * 1_000 // 997
    gpt.approve(router.address, amount, sender=lp)
    router.swap_exact_in(
        amount, 0, [gpt.address, usdc.address], [DEFAULT_FEE], lp, chain.pending_timestamp + 600, sender=lp
    )
    chain.pending_timestamp += 60
    settle_twap()
    assert perp.is_liquidatable(3), "the bench's price move no longer makes position 3 liquidatable"
    new_block(chain)
    gas["perp_liquidate"] = gas_of(perp.liquidate(3, sender=liquidator))
    return gas
