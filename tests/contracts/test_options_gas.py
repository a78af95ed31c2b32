"""Pins Options' gas (whole-transaction gasUsed) so a regression shows.

Measured through ape on its default test chain with the very function bench/gas.py
runs on anvil (bench/gas_options.py, which describes the scenario). A changed
figure is a changed contract (or compiler): look at it, then update the pin
deliberately.
"""

import sys
from pathlib import Path

from options_fixtures import *  # noqa: F403  (the DEX and options fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gas_options import measure_options  # noqa: E402

PINNED = {
    "options_create_series": 98_449,
    "options_write": 147_183,
    "options_offer": 98_369,
    "options_buy": 83_867,
    "options_unwind": 76_290,
    "options_settle": 72_723,
    "options_claim": 63_981,
    "options_reclaim": 54_717,
}


def test_options_gas__steady_state__pinned(markets, oracle, usdc, admin, writer, holder, chain):
    contracts = {"USDC": usdc, "Oracle": oracle, "token:CLD": markets[0]}
    gas = measure_options(chain, contracts, admin, writer, holder)
    assert gas == PINNED, f"options gas changed: {gas}; update PINNED deliberately"
