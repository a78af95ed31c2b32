"""DEX gas scenarios: a direct pool swap, router swaps, liquidity.

The direct pool swap is measured the way Uniswap v2-core's own `swap:gas` test
measures its pair (73,162 gas on today's EVM rules): whole-transaction gasUsed
(21,000 included), two plain ERC-20s, reserves 5 / 10 tokens, 1 token of token1
sent to the pool beforehand, 453,305,446,940,074,565 units of token0 out to a
wallet that already holds token0, price accumulators already non-zero (a `sync`
in an earlier block), and the swap in a new, later block.

The router rows keep the same conditions (plain ERC-20s, recipient already holds
the output, accumulators non-zero, a new block) and add what a router call needs:
the trader has given the router an unlimited allowance (with a finite one, the
token's allowance write and Approval event add ~4,600 gas to every pull).

bench/gas_dex.py prints them; tests/contracts/test_dex_gas.py pins them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from promptex.chain.dex import pool_at
from promptex.chain.gas.measure import new_block, whole_gas
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT

V2_SWAP_OUT = 453_305_446_940_074_565  # v2-core's expectedOutputAmount for 1 in at 5 / 10
UNISWAP_V2_SWAP_GAS = 73_162  # v2's pair in the same scenario, today's EVM rules


def plain_tokens(project: Any, deployer: Any, n: int) -> list[Any]:
    """`n` plain 18-decimal snekmate ERC-20s, sorted by address (token0 first)."""
    tokens = [deployer.deploy(project.MockERC20, f"Plain {i}", f"PLN{i}", 18) for i in range(n)]
    return sorted(tokens, key=lambda t: int(t.address, 16))


def measure_pool_swap(project: Any, chain: Any, factory: Any, deployer: Any, wallet: Any) -> int:
    """Whole-transaction gas of Pool.swap in v2-core's swap:gas scenario."""
    token0, token1 = plain_tokens(project, deployer, 2)
    factory.create_pool(token0.address, token1.address, DEFAULT_FEE, sender=deployer)
    pool = pool_at(factory.get_pool(token0.address, token1.address, DEFAULT_FEE))
    for token in (token0, token1):
        token.mint(wallet.address, 10_000 * UNIT, sender=wallet)
    token0.transfer(pool.address, 5 * UNIT, sender=wallet)
    token1.transfer(pool.address, 10 * UNIT, sender=wallet)
    pool.mint(wallet.address, sender=wallet)

    new_block(chain)  # accumulators become non-zero here, not in the measured swap
    pool.sync(sender=wallet)
    token1.transfer(pool.address, UNIT, sender=wallet)
    new_block(chain)
    receipt = pool.swap(V2_SWAP_OUT, 0, wallet.address, sender=wallet)
    return int(receipt.gas_used)


def router_market(project: Any, chain: Any, router: Any, deployer: Any, trader: Any) -> list[Any]:
    """Tokens A, B, C with 1,000 / 1,000 pools A/B and B/C, provided by `trader`, who
    holds all three tokens and has approved the router (and both LP tokens) without
    limit; the pools' accumulators are non-zero and the next transaction is in a
    new block."""
    tokens = plain_tokens(project, deployer, 3)
    for token in tokens:
        token.mint(trader.address, 1_000_000 * UNIT, sender=trader)
        token.approve(router.address, MAX_UINT, sender=trader)
    deadline = chain.pending_timestamp + 3_600
    for a, b in ((tokens[0], tokens[1]), (tokens[1], tokens[2])):
        router.add_liquidity(
            a.address, b.address, DEFAULT_FEE, 1_000 * UNIT, 1_000 * UNIT, 0, 0, trader.address, deadline, sender=trader
        )
        pool_at(router.pool_for(a.address, b.address, DEFAULT_FEE)).approve(router.address, MAX_UINT, sender=trader)
    new_block(chain)
    for a, b in ((tokens[0], tokens[1]), (tokens[1], tokens[2])):
        pool_at(router.pool_for(a.address, b.address, DEFAULT_FEE)).sync(sender=trader)
    new_block(chain)
    return tokens


def measure_router(
    project: Any, chain: Any, router: Any, deployer: Any, trader: Any, gas_of: Callable[[Any], Any] = whole_gas
) -> dict[str, Any]:
    """Gas (`gas_of` a receipt: whole-transaction by default) of the router's 1-hop and 2-hop
    swap_exact_in and of adding and removing liquidity (each in a new block, accumulators non-zero)."""
    a, b, c = router_market(project, chain, router, deployer, trader)
    deadline = chain.pending_timestamp + 3_600
    gas: dict[str, int] = {}
    receipt = router.swap_exact_in(
        UNIT, 0, [a.address, b.address], [DEFAULT_FEE], trader.address, deadline, sender=trader
    )
    gas["router_swap_1hop"] = gas_of(receipt)
    new_block(chain)
    receipt = router.swap_exact_in(
        UNIT, 0, [a.address, b.address, c.address], [DEFAULT_FEE] * 2, trader.address, deadline, sender=trader
    )
    gas["router_swap_2hop"] = gas_of(receipt)
    new_block(chain)
    receipt = router.add_liquidity(
        a.address, b.address, DEFAULT_FEE, 10 * UNIT, 10 * UNIT, 0, 0, trader.address, deadline, sender=trader
    )
    gas["add_liquidity"] = gas_of(receipt)
    new_block(chain)
    receipt = router.remove_liquidity(
        a.address, b.address, DEFAULT_FEE, 5 * UNIT, 0, 0, trader.address, deadline, sender=trader
    )
    gas["remove_liquidity"] = gas_of(receipt)
    return gas
