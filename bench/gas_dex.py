"""DEX gas rows for bench/gas.py: a direct pool swap, router swaps and liquidity (the
scenarios are described in promptex/chain/gas/dex.py, which tests/contracts/test_dex_gas.py
pins too), and the vault's instant exit that sells a spend-only token through the Router."""

from __future__ import annotations

from typing import Any

from gas import Context, measurement, open_lot
from promptex.chain.deploy import contract_at
from promptex.chain.dex import create_pool_at_price
from promptex.chain.gas.dex import UNISWAP_V2_SWAP_GAS, measure_pool_swap, measure_router
from promptex.chain.gas.measure import new_block
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.vault import sign_release


@measurement
def dex(ctx: Context) -> dict[str, tuple[str, int]]:
    from ape import project

    contracts = {name: contract_at(ctx.deployment, name) for name in ("Factory", "Router")}
    deployer, wallet, trader = ctx.admin, ctx.accounts[1], ctx.accounts[2]
    swap = measure_pool_swap(project, ctx.chain, contracts["Factory"], deployer, wallet)
    router = measure_router(project, ctx.chain, contracts["Router"], deployer, trader)
    return {
        "pool_swap": (f"pool: swap, v2-core scenario (Uniswap v2: {UNISWAP_V2_SWAP_GAS:,})", swap),
        "router_swap_1hop": ("router: swap_exact_in, 1 hop", router["router_swap_1hop"]),
        "router_swap_2hop": (
            f"router: swap_exact_in, 2 hops (2 × pool swap = {2 * swap:,})",
            router["router_swap_2hop"],
        ),
        "add_liquidity": ("router: add_liquidity (existing pool)", router["add_liquidity"]),
        "remove_liquidity": ("router: remove_liquidity", router["remove_liquidity"]),
    }


@measurement
def vault_sell(ctx: Context) -> dict[str, tuple[str, int]]:
    """A spend-only token sold for USDC out of the vault: the instant exit path, through
    the Router's `sell` in the token's 0.30 % USDC pool (the pool already traded once)."""
    coordinator, seller, buyer = ctx.admin, ctx.accounts[1], ctx.accounts[4]
    usdc, cld = contract_at(ctx.deployment, "USDC"), contract_at(ctx.deployment, "token:CLD")
    vault, router = contract_at(ctx.deployment, "CreditsVault"), contract_at(ctx.deployment, "Router")
    open_lot(ctx, seller, cld, KIND_TOKENIZED, 10_000 * 10**6)
    usdc.mint(seller, 4_218 * 10**6, sender=seller)
    create_pool_at_price(router, contract_at(ctx.deployment, "Factory"), cld, usdc, 1_000_000 * UNIT, 4_218, seller)
    cld.transfer(buyer, 2_000 * UNIT, sender=seller)
    cld.approve(vault, 2_000 * UNIT, sender=buyer)
    vault.deposit(cld, 2_000 * UNIT, sender=buyer)

    def sell(amount: int) -> Any:
        nonce, expiry = vault.release_nonce(buyer), ctx.chain.pending_timestamp + 600
        signature = sign_release(
            coordinator.private_key,
            chain_id=ctx.chain.chain_id,
            vault=vault.address,
            account=buyer.address,
            asset=cld.address,
            amount=amount,
            nonce=nonce,
            expiry=expiry,
        )
        new_block(ctx.chain)
        return vault.exit_instant(cld, amount, 1, nonce, expiry, signature, sender=buyer)

    sell(1_000 * UNIT)  # the buyer now holds USDC and the pool's accumulators are non-zero
    return {
        "vault_sell": ("vault: sell CLD for USDC (instant exit through the router)", int(sell(1_000 * UNIT).gas_used))
    }
