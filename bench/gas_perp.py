"""Perp rows for bench/gas.py: an LP deposit, opening, closing and liquidating a position
on the GPT market (the scenario
is described in promptex/chain/gas/perp.py, which tests/contracts/test_perp_gas.py pins too)."""

from __future__ import annotations

from gas import Context, measurement, open_lot
from promptex.chain.deploy import contract_at
from promptex.chain.dex import create_pool_at_price
from promptex.chain.gas.perp import measure_perp
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD

GPT_PRICE = 3_695_000


@measurement
def perp(ctx: Context) -> dict[str, tuple[str, int]]:
    seller, trader, liquidator = ctx.accounts[1], ctx.accounts[2], ctx.accounts[3]
    names = ("USDC", "Router", "Oracle", "Factory", "token:GPT")
    contracts = {name: contract_at(ctx.deployment, name) for name in names}
    usdc, router, factory, gpt = contracts["USDC"], contracts["Router"], contracts["Factory"], contracts["token:GPT"]
    open_lot(ctx, seller, gpt, KIND_TOKENIZED, 500_000 * USD)
    usdc.mint(seller, 10**6 * USD, sender=seller)
    depth = 100_000 * USD
    create_pool_at_price(router, factory, gpt, usdc, depth * UNIT // GPT_PRICE, GPT_PRICE, seller)
    gas = measure_perp(ctx.chain, contracts, ctx.admin, seller, trader, liquidator)
    return {
        "perp_lp_deposit": ("perp: LP deposit (pool valued per side, spot and TWAP)", gas["perp_lp_deposit"]),
        "perp_open": ("perp: open a position (TWAP, funding accrual)", gas["perp_open"]),
        "perp_close": ("perp: close a position (funding, PnL, fee split)", gas["perp_close"]),
        "perp_liquidate": ("perp: liquidate below maintenance (bonus)", gas["perp_liquidate"]),
    }
