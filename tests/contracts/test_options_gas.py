"""Pins Options' gas (whole-transaction gasUsed) so a regression shows.

Measured through ape on its default test chain with the very function bench/gas.py
runs on anvil (promptex/chain/gas/options.py, which describes the scenario). A changed
figure is a changed contract (or compiler): look at it, then update the pin
deliberately.
"""

from promptex.chain.gas.measure import address_neutral_gas
from promptex.chain.gas.options import measure_options

# As if every calldata byte were non-zero (`address_neutral_gas`): calldata carries addresses
# that depend on which tests ran before on the worker's chain. bench/gas.py prints whole gas.
PINNED = {
    "options_create_series": 100_189,
    "options_write": 147_555,
    "options_offer": 99_077,
    "options_buy": 84_611,
    "options_unwind": 76_662,
    "options_settle": 70_646,  # end at or before expiry (issue 19): one neighbour read fewer
    "options_claim": 63_981,
    "options_reclaim": 54_717,
}


def test_options_gas__steady_state__pinned(markets, oracle, usdc, admin, writer, holder, chain):
    contracts = {"USDC": usdc, "Oracle": oracle, "token:CLD": markets[0]}
    gas = measure_options(chain, contracts, admin, writer, holder, gas_of=address_neutral_gas)
    assert gas == PINNED, f"options gas changed: {gas}; update PINNED deliberately"
