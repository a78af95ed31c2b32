"""RedemptionEscrow rows for bench/gas.py: a grant, a redemption, a release and a refund (the scenario
is described in promptex/chain/gas/redemption.py, which tests/contracts/test_redemption_gas.py pins too)."""

from __future__ import annotations

from gas import Context, measurement, open_lot
from promptex.chain.deploy import contract_at
from promptex.chain.dex import create_pool_at_price
from promptex.chain.gas.redemption import measure_redemption
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD

CLD_PRICE = 4_218


@measurement
def redemption(ctx: Context) -> dict[str, tuple[str, int]]:
    seller, user, agent, operator = ctx.accounts[1], ctx.accounts[2], ctx.accounts[3], ctx.accounts[4]
    names = ("USDC", "Router", "Oracle", "Factory", "token:CLD")
    contracts = {name: contract_at(ctx.deployment, name) for name in names}
    usdc, router, factory, cld = (contracts[n] for n in ("USDC", "Router", "Factory", "token:CLD"))
    open_lot(ctx, seller, cld, KIND_TOKENIZED, 500_000 * USD)
    usdc.mint(seller, 10**6 * USD, sender=seller)
    depth = 100_000 * USD
    create_pool_at_price(router, factory, cld, usdc, depth * UNIT // CLD_PRICE, CLD_PRICE, seller)
    cld.transfer(user, 10_000_000 * UNIT, sender=seller)
    gas = measure_redemption(ctx.chain, contracts, ctx.admin, user, agent, operator)
    return {
        "redemption_set_grant": ("redemption: set a grant (one token)", gas["redemption_set_grant"]),
        "redemption_redeem": (
            "redemption: redeem (Oracle's pool, honest-price and TWAP checks)",
            gas["redemption_redeem"],
        ),
        "redemption_release": ("redemption: release against a signed receipt", gas["redemption_release"]),
        "redemption_refund": ("redemption: refund after the deadline", gas["redemption_refund"]),
    }
