"""Seeding a local market: provider-token/USDC pools at the reference prices, with the
market maker's tokens from tokenized escrow lots it opens as the attestor and its
dollars from the MockUSDC faucet (local chains only). Used by `ape run seed_market`
and the hedging scenarios."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ape import chain
from eth_utils.crypto import keccak

from promptex.chain.deploy import contract_at
from promptex.chain.deployments import Deployment
from promptex.chain.dex import create_pool_at_price, pool_at
from promptex.protocol.dex import DEFAULT_FEE, quote_amount_at_price
from promptex.protocol.escrow import KIND_TOKENIZED, MIN_TOKENIZED_FACE
from promptex.protocol.providers import REFERENCE_PRICES
from promptex.protocol.units import DAY, TOKEN_UNIT, USD_MICRO

TERMS = keccak(text="market maker declares its provider agreements permit resale")
# The market maker's lots expire after any seller's lot a demo opens: the escrow draws
# tokenized lots nearest-expiry first, and these have no upstream key to serve with.
LOT_LIFETIME = 2 * 365 * DAY


@dataclass(frozen=True)
class SeededPool:
    symbol: str
    pool: Any
    token_reserve: int
    usdc_reserve: int
    created: bool  # False: it had liquidity already and was left alone


def seed_pools(
    deployment: Deployment, maker: Any, depth_usd: int, symbols: Iterable[str] = tuple(REFERENCE_PRICES)
) -> list[SeededPool]:
    """Open each symbol's 0.30 % pool against USDC at its reference price with
    `depth_usd` dollars a side (a pool with liquidity is left alone), and take its first
    oracle observation. `maker` must be an escrow attestor (the deployer locally)."""
    if depth_usd <= 0:
        raise ValueError("the depth must be positive")
    usdc, escrow = contract_at(deployment, "USDC"), contract_at(deployment, "CreditEscrow")
    if not escrow.is_attestor(maker):
        raise ValueError(f"the market maker {maker.address} is not an escrow attestor; pass --account of one")
    if "Factory" not in deployment.contracts:
        raise ValueError("the recorded deployment has no DEX (made before it existed): redeploy with --force")
    factory, router = contract_at(deployment, "Factory"), contract_at(deployment, "Router")
    oracle = contract_at(deployment, "Oracle")
    seeded = []
    for symbol in symbols:
        price = REFERENCE_PRICES[symbol]
        token = contract_at(deployment, f"token:{symbol}")
        existing = factory.get_pool(token.address, usdc.address, DEFAULT_FEE)
        created = not (factory.is_pool(existing) and pool_at(existing).totalSupply() > 0)
        if created:
            token_amount = depth_usd * USD_MICRO * TOKEN_UNIT // price
            mint_tokens(escrow, usdc, token, maker, token_amount)
            usdc.mint(maker, quote_amount_at_price(token_amount, price), sender=maker)
            pool = create_pool_at_price(router, factory, token, usdc, token_amount, price, maker)
        else:
            pool = pool_at(existing)
        oracle.update(token, sender=maker)
        token_reserve, usdc_reserve = reserves(pool, token)
        seeded.append(SeededPool(symbol, pool, token_reserve, usdc_reserve, created))
    return seeded


def mint_tokens(escrow: Any, usdc: Any, token: Any, maker: Any, amount: int) -> None:
    """Give `maker` at least `amount` of `token` by opening a tokenized lot for the
    shortfall (it is the attestor on a local chain), its bond from the faucet."""
    short = amount - token.balanceOf(maker)
    if short <= 0:
        return
    # At least the smallest tokenized lot the escrow opens (a top-up may be smaller).
    face_value = max(short * token.face_value_usd_micro() // TOKEN_UNIT + 1, MIN_TOKENIZED_FACE)
    while escrow.quote_mint(token, face_value)[1] < short:  # the seller's share, net of the mint fee
        face_value += face_value // 1_000 + 1
    bond = escrow.tokenized_bond(token, face_value)  # its token's share: the only bond accepted
    usdc.mint(maker, bond, sender=maker)
    usdc.approve(escrow, bond, sender=maker)
    expiry = chain.pending_timestamp + LOT_LIFETIME
    escrow.open_lot(maker, token, KIND_TOKENIZED, face_value, expiry, bond, TERMS, 0, sender=maker)


def reserves(pool: Any, token: Any) -> tuple[int, int]:
    """(token reserve, USDC reserve) of a token/USDC pool."""
    reserve0, reserve1, _ = pool.get_reserves()
    return (reserve0, reserve1) if pool.token0() == token.address else (reserve1, reserve0)
