"""Options rows for bench/gas.py: a capped call's life from creating its series to
reclaiming its collateral (the scenario
is described in promptex/chain/gas/options.py, which tests/contracts/test_options_gas.py pins too)."""

from __future__ import annotations

from gas import Context, measurement, open_lot
from promptex.chain.deploy import contract_at
from promptex.chain.dex import create_pool_at_price
from promptex.chain.gas.options import measure_options
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD

CLD_PRICE = 4_218


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
