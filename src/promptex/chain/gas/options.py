"""Options gas scenario: create a series, write it, offer it, buy from the
offer (the premium), settle at the TWAP over the window ending at expiry, claim the
payout, reclaim the rest of the collateral, and unwind before settlement.

Scenario: a capped call on 1M CLD (strike $0.004, cap $0.006; $2,000 of collateral a
unit). Another series already holds collateral and has an offer (so
`total_collateral`, Options' USDC balance and `offer_count` are non-zero), the
writer and the buyer already hold USDC, the buyer holds no unit of the series
before buying (a fresh ERC-1155 balance), the Oracle recorded an observation every
minute across the window (settle reads four), and each measured transaction lands
in a new block. bench/gas_options.py prints these figures; tests/contracts/test_options_gas.py pins them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from promptex.chain.gas.measure import new_block, whole_gas
from promptex.chain.options import deploy_options, read_observations
from promptex.protocol.dex import LOCAL_ORACLE_PERIOD as PERIOD
from promptex.protocol.options import CALL, LOCAL_TWAP_WINDOW, Terms, settlement_ranks
from promptex.protocol.units import DAY
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.units import WAD as FIXED


def measure_options(
    chain: Any,
    contracts: dict[str, Any],
    deployer: Any,
    writer: Any,
    holder: Any,
    gas_of: Callable[[Any], Any] = whole_gas,
) -> dict[str, Any]:
    """Whole-transaction gas of create_series, write, offer, buy, unwind, settle,
    claim and reclaim. `contracts` holds USDC, Oracle and token:CLD; a CLD/USDC
    0.30 % pool exists; `writer` and `holder` hold USDC."""
    usdc, oracle, cld = (contracts[n] for n in ("USDC", "Oracle", "token:CLD"))
    options = deploy_options(deployer, oracle, usdc, twap_window=LOCAL_TWAP_WINDOW, log=lambda _: None)
    oracle.update(cld.address, sender=deployer)
    for account in (writer, holder):
        usdc.approve(options.address, MAX_UINT, sender=account)
    size = 10**6 * UNIT
    now = chain.pending_timestamp
    other = Terms(str(cld.address), CALL, 3_000 * FIXED, 5_000 * FIXED, now + 2 * DAY, size)
    terms = Terms(str(cld.address), CALL, 4_000 * FIXED, 6_000 * FIXED, now + DAY, size)
    options.create_series(*other.args(), sender=writer)
    options.write(other.id, 1, sender=writer)
    options.offer(other.id, 1, 100 * USD, sender=writer)
    gas: dict[str, int] = {}

    new_block(chain)
    gas["options_create_series"] = gas_of(options.create_series(*terms.args(), sender=writer))
    new_block(chain)
    gas["options_write"] = gas_of(options.write(terms.id, 10, sender=writer))
    new_block(chain)
    gas["options_offer"] = gas_of(options.offer(terms.id, 6, 150 * USD, sender=writer))
    offer_id = options.offer_count()
    new_block(chain)
    gas["options_buy"] = gas_of(options.buy(offer_id, 6, sender=holder))
    new_block(chain)
    gas["options_unwind"] = gas_of(options.unwind(terms.id, 2, sender=writer))

    t = terms.expiry - LOCAL_TWAP_WINDOW - PERIOD
    while t <= terms.expiry:
        chain.pending_timestamp = t
        oracle.update(cld.address, sender=deployer)
        t += PERIOD
    at = terms.expiry + 1
    start, end = settlement_ranks(read_observations(oracle, cld.address), at, terms.expiry, LOCAL_TWAP_WINDOW)
    chain.pending_timestamp = at
    gas["options_settle"] = gas_of(options.settle(terms.id, start, end, sender=deployer))
    new_block(chain)
    gas["options_claim"] = gas_of(options.claim(terms.id, sender=holder))
    new_block(chain)
    gas["options_reclaim"] = gas_of(options.reclaim(terms.id, sender=writer))
    return gas
