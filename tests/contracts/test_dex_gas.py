"""Pins the DEX's gas, as Uniswap v2-core pins its pair's swap, so a regression shows.

Measured through ape on its default test chain (py-evm, today's EVM rules: Prague)
with the very functions bench/gas.py runs on anvil (promptex/chain/gas/dex.py), which
give the same figures there. The scenarios are described there: v2-core's
swap:gas scenario for the direct pool swap (whole-transaction gasUsed, plain
ERC-20s, recipient already holding the output token, accumulators already
non-zero, the swap in a new block); the same conditions for the router.

A changed figure is a changed contract (or compiler): look at it, then update the
pin deliberately.
"""

from promptex.chain.gas.dex import UNISWAP_V2_SWAP_GAS, measure_pool_swap, measure_router
from promptex.chain.gas.measure import address_neutral_gas, whole_gas

POOL_SWAP_GAS = 63_441
# As if every calldata byte were non-zero (`address_neutral_gas`): the test tokens' addresses
# depend on which tests ran before on the worker's chain. bench/gas.py prints whole gas.
ROUTER_GAS = {
    "router_swap_1hop": 87_814,
    "router_swap_2hop": 129_995,
    "add_liquidity": 102_267,
    "remove_liquidity": 102_218,
}


def test_pool_swap__v2_core_scenario__below_uniswap_v2_and_pinned(project, chain, factory, admin, seller):
    gas = measure_pool_swap(project, chain, factory, admin, seller)
    assert gas < UNISWAP_V2_SWAP_GAS
    assert gas == POOL_SWAP_GAS, f"Pool.swap now costs {gas:,} gas: update POOL_SWAP_GAS deliberately"


def test_router__same_conditions__two_hops_below_two_direct_swaps_and_pinned(project, chain, router, admin, buyer):
    both = measure_router(project, chain, router, admin, buyer, gas_of=lambda r: (whole_gas(r), address_neutral_gas(r)))
    assert both["router_swap_2hop"][0] < 2 * POOL_SWAP_GAS  # whole gas, as bench/gas.py reports it
    gas = {key: neutral for key, (_, neutral) in both.items()}
    assert gas == ROUTER_GAS, f"router gas changed: {gas}; update ROUTER_GAS deliberately"
