"""The DEX under the titanoboa state machines (redemption, options, perpetual): MockUSDC,
two plain tokens, the Pool blueprint, Factory, Router and Oracle; each token's USDC pool
seeded at its price, observed by the Oracle, and the TWAP window already covered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import boa
from boa_partial import LazyPartial
from eth_utils import keccak

from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT

USDC = LazyPartial("contracts/test/MockUSDC.vy")
TOKEN = LazyPartial("contracts/test/MockERC20.vy")
POOL = LazyPartial("contracts/Pool.vy")
FACTORY = LazyPartial("contracts/Factory.vy")
ROUTER = LazyPartial("contracts/Router.vy")
ORACLE = LazyPartial("contracts/Oracle.vy")

FEE, PERIOD = 30, 60  # the pools' fee tier (0.30 %) and the Oracle's period


@dataclass
class BoaDex:
    usdc: Any
    tokens: list[Any]
    router: Any
    oracle: Any
    pools: list[Any]
    first_observed: int  # when the Oracle took each token's first observation


def deploy_dex(admin: str) -> BoaDex:
    """USDC, two tokens ("Credit 0", "Credit 1"), the DEX and the Oracle, deployed by `admin`
    in this order (so later deployments by `admin` get the same addresses as before)."""
    with boa.env.prank(admin):
        usdc = USDC.deploy()
        blueprint = POOL.deploy_as_blueprint()
        factory = FACTORY.deploy(blueprint.address, keccak(POOL.compiler_data.bytecode))
        router = ROUTER.deploy(factory.address, usdc.address)
        oracle = ORACLE.deploy(factory.address, usdc.address, FEE, PERIOD)
        tokens = [TOKEN.deploy(f"Credit {i}", f"CR{i}", 18) for i in range(2)]
    return BoaDex(usdc, tokens, router, oracle, [], 0)


def seed_pools(dex: BoaDex, maker: str, prices: Sequence[int], depth_usd: int, twap_window: int) -> None:
    """Open each token's pool at `prices[i]` USDC units per whole token with `depth_usd`
    USDC units a side, take the Oracle's first observation, then let `twap_window` pass
    and observe again, so the TWAP over the window is available."""
    deadline = boa.env.evm.patch.timestamp + 10**8
    dex.usdc.mint(maker, 10**15)
    dex.usdc.approve(dex.router.address, MAX_UINT, sender=maker)
    for token, price in zip(dex.tokens, prices, strict=True):
        token.mint(maker, 10**12 * UNIT)
        token.approve(dex.router.address, MAX_UINT, sender=maker)
        dex.router.add_liquidity(
            token.address, dex.usdc.address, FEE, depth_usd * UNIT // price, depth_usd, 0, 0, maker, deadline,
            sender=maker,
        )  # fmt: skip
        dex.pools.append(POOL.at(dex.router.pool_for(token.address, dex.usdc.address, FEE)))
        dex.oracle.update(token.address)
    dex.first_observed = boa.env.evm.patch.timestamp
    boa.env.time_travel(seconds=twap_window)
    for token in dex.tokens:
        dex.oracle.update(token.address)
