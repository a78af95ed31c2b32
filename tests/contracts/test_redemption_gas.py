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
from gas_redemption import cross_pool, measure_redemption  # noqa: E402

PINNED = {
    "redemption_set_grant": 74_036,
    "redemption_redeem": 224_016,
    "redemption_redeem_2hop": 281_132,
    "redemption_release": 81_287,
    "redemption_refund": 53_555,
}


def test_redemption_gas__steady_state__pinned(markets, router, oracle, usdc, admin, lp, user, agent, operator, chain):
    cld, gpt = markets[0], markets[1]
    cross_pool(router, cld, gpt, lp, chain.pending_timestamp + 600)
    contracts = {"USDC": usdc, "Router": router, "Oracle": oracle, "token:CLD": cld, "token:GPT": gpt}
    gas = measure_redemption(chain, contracts, admin, user, agent, operator)
    assert gas == PINNED, f"redemption gas changed: {gas}; update PINNED deliberately"
