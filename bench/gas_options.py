"""Options rows for bench/gas.py: create a series, write it, offer it, buy from the
offer (the premium), settle at the TWAP over the window ending at expiry, claim the
payout, reclaim the rest of the collateral, and unwind before settlement.

Scenario: a capped call on 1M CLD (strike $0.004, cap $0.006; $2,000 of collateral a
unit). Another series already holds collateral and has an offer (so
`total_collateral`, Options' USDC balance and `offer_count` are non-zero), the
writer and the buyer already hold USDC, the buyer holds no unit of the series
before buying (a fresh ERC-1155 balance), the Oracle recorded an observation every
minute across the window (settle reads four), and each measured transaction lands
in a new block. `tests/contracts/test_options_gas.py`
pins these figures with the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gas import Context, measurement, open_lot, whole_gas
from gas_dex import new_block
from promptex.chain.deploy import contract_at
from promptex.chain.dex import create_pool_at_price
from promptex.chain.options import deploy_options, read_observations
from promptex.protocol.dex import LOCAL_ORACLE_PERIOD as PERIOD
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.options import CALL, LOCAL_TWAP_WINDOW, Terms, settlement_ranks
from promptex.protocol.units import DAY
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.units import WAD as FIXED

CLD_PRICE = 4_218


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


LABELS = {
    "options_create_series": "options: create a series",
    "options_write": "options: write (post collateral, mint units)",
    "options_offer": "options: offer units at a premium",
    "options_buy": "options: buy from an offer (premium to the seller)",
    "options_unwind": "options: unwind before settlement",
    "options_settle": "options: settle at the TWAP ending at or before expiry",
    "options_claim": "options: claim a holder's payout",
    "options_reclaim": "options: reclaim a writer's remaining collateral",
}


@measurement
def options(ctx: Context) -> dict[str, tuple[str, int]]:
    seller, writer, holder = ctx.accounts[1], ctx.accounts[2], ctx.accounts[3]
    names = ("USDC", "Router", "Oracle", "Factory", "token:CLD")
    contracts = {name: contract_at(ctx.deployment, name) for name in names}
    usdc, router, factory, cld = contracts["USDC"], contracts["Router"], contracts["Factory"], contracts["token:CLD"]
    open_lot(ctx, seller, cld, KIND_TOKENIZED, 500_000 * USD)
    usdc.mint(seller, 10**6 * USD, sender=seller)
    depth = 100_000 * USD
    create_pool_at_price(router, factory, cld, usdc, depth * UNIT // CLD_PRICE, CLD_PRICE, seller)
    for account in (writer, holder):
        usdc.mint(account, 100_000 * USD, sender=account)
    gas = measure_options(ctx.chain, contracts, ctx.admin, writer, holder)
    return {key: (LABELS[key], value) for key, value in gas.items()}
