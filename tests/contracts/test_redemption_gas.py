"""Pins the RedemptionEscrow's gas (whole-transaction gasUsed) so a regression shows.

Measured through ape on its default test chain with the very function bench/gas.py
runs on anvil (bench/gas_redemption.py, which describes the scenario). A changed
figure is a changed contract (or compiler): look at it, then update the pin
deliberately.
"""

import sys
from pathlib import Path

from redemption_fixtures import *  # noqa: F403  (the DEX and redemption fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gas import address_neutral_gas  # noqa: E402
from gas_redemption import cross_pool, measure_redemption  # noqa: E402

# As if every calldata byte were non-zero (`address_neutral_gas`): addresses and receipt
# signatures depend on which tests ran before on the worker's chain.
PINNED = {
    "redemption_set_grant": 76_964,
    "redemption_redeem": 227_556,
    "redemption_redeem_2hop": 285_188,
    "redemption_release": 83_411,
    "redemption_refund": 53_927,
}


def test_redemption_gas__steady_state__pinned(markets, router, oracle, usdc, admin, lp, user, agent, operator, chain):
    cld, gpt = markets[0], markets[1]
    cross_pool(router, cld, gpt, lp, chain.pending_timestamp + 600)
    contracts = {"USDC": usdc, "Router": router, "Oracle": oracle, "token:CLD": cld, "token:GPT": gpt}
    gas = measure_redemption(chain, contracts, admin, user, agent, operator, gas_of=address_neutral_gas)
    assert gas == PINNED, f"redemption gas changed: {gas}; update PINNED deliberately"
