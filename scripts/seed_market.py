"""Seed the demo market: `ape run seed_market --network ethereum:local:foundry`.

Against the deployment recorded in deployments/<network>.json (run `ape run deploy`
first), opens the CLD/USDC, GPT/USDC, GEM/USDC and LLM/USDC 0.30 % pools at the
reference prices, `--depth` dollars a side, and takes each pool's first oracle
observation. If the recorded deployment has no DEX yet, it deploys one and records
it. Local chains only: the market maker's tokens come from tokenized escrow lots it
opens as the attestor, and its dollars from the MockUSDC faucet. A pool that already
has liquidity is left alone, so running it twice is harmless.
"""

import click
from ape import chain
from ape.cli import ConnectedProviderCommand
from eth_utils import keccak
from rich.console import Console
from rich.table import Table

from promptex.chain.accounts import resolve_account
from promptex.chain.deploy import contract_at, is_local, live_deployment
from promptex.chain.dex import (
    DEFAULT_FEE,
    create_pool_at_price,
    pool_at,
    quote_amount_at_price,
)
from promptex.chain.errors import readable_errors
from promptex.chain.escrow import KIND_TOKENIZED
from promptex.chain.providers import TOKEN_UNIT, USD_MICRO

# USDC units (USD micro-units) per whole token: the reference prices.
REFERENCE_PRICES = {"CLD": 4_218, "GPT": 3_695_000, "GEM": 1_243_000, "LLM": 89_100}
TERMS = keccak(text="market maker declares its provider agreements permit resale")
LOT_LIFETIME = 90 * 86_400

console = Console(width=130)


@click.command(cls=ConnectedProviderCommand)
@click.option("--depth", default=25_000, show_default=True, help="USD on each side of every pool")
@click.option("--account", "alias", default=None, help="market maker (default: test account 0, the deployer)")
def cli(network, depth, alias):
    with readable_errors():
        seed_market(network.name, depth, alias)


def seed_market(network_name: str, depth_usd: int, alias: str | None) -> None:
    if not is_local(network_name):
        raise ValueError("seed_market opens escrow lots and mints MockUSDC: local chains only")
    if depth_usd <= 0:
        raise ValueError("--depth must be positive")
    deployment = live_deployment(network_name)
    if deployment is None:
        raise ValueError(
            f"no live deployment recorded for {network_name!r} on this chain: "
            f"run `ape run deploy --network ethereum:local:foundry` first"
        )
    maker = resolve_account(alias)
    usdc = contract_at(deployment, "USDC")
    escrow = contract_at(deployment, "CreditEscrow")
    if not escrow.is_attestor(maker):
        raise ValueError(f"the market maker {maker.address} is not an escrow attestor; pass --account of one")

    if "Factory" not in deployment.contracts:
        raise ValueError("the recorded deployment has no DEX (made before it existed): redeploy with --force")
    factory = contract_at(deployment, "Factory")
    router = contract_at(deployment, "Router")
    oracle = contract_at(deployment, "Oracle")

    table = Table(title=f"Pools at the reference prices (0.30 %, ${depth_usd:,} a side)")
    for column in ("pool", "address", "token reserve", "USDC reserve", "price", "reference"):
        table.add_column(column, justify="right" if column != "address" else "left")
    for symbol, price in REFERENCE_PRICES.items():
        token = contract_at(deployment, f"token:{symbol}")
        existing = factory.get_pool(token.address, usdc.address, DEFAULT_FEE)
        if factory.is_pool(existing) and pool_at(existing).totalSupply() > 0:
            click.echo(f"{symbol}/USDC already has liquidity: left alone")
            pool = pool_at(existing)
        else:
            token_amount = depth_usd * USD_MICRO * TOKEN_UNIT // price
            _mint_tokens(escrow, usdc, token, maker, token_amount)
            usdc.mint(maker, quote_amount_at_price(token_amount, price), sender=maker)
            pool = create_pool_at_price(router, factory, token, usdc, token_amount, price, maker)
        oracle.update(token, sender=maker)
        token_reserve, usdc_reserve = _reserves(pool, token)
        table.add_row(
            f"{symbol}/USDC",
            pool.address,
            f"{token_reserve / TOKEN_UNIT:,.2f}",
            f"{usdc_reserve / USD_MICRO:,.2f}",
            f"${usdc_reserve * TOKEN_UNIT / token_reserve / USD_MICRO:,.6f}",
            f"${price / USD_MICRO:,.6f}",
        )
    console.print(table)


def _mint_tokens(escrow, usdc, token, maker, amount: int) -> None:
    """Give `maker` at least `amount` of `token` by opening a tokenized lot for the
    shortfall (it is the attestor on a local chain), its bond from the faucet."""
    short = amount - token.balanceOf(maker)
    if short <= 0:
        return
    face_value = short * token.face_value_usd_micro() // TOKEN_UNIT + 1
    while escrow.quote_mint(token, face_value)[1] < short:  # the seller's share, net of the mint fee
        face_value += face_value // 1_000 + 1
    bond = escrow.min_bond(face_value)
    usdc.mint(maker, bond, sender=maker)
    usdc.approve(escrow, bond, sender=maker)
    expiry = chain.pending_timestamp + LOT_LIFETIME
    escrow.open_lot(maker, token, KIND_TOKENIZED, face_value, expiry, bond, TERMS, 0, sender=maker)


def _reserves(pool, token) -> tuple[int, int]:
    reserve0, reserve1, _ = pool.get_reserves()
    return (reserve0, reserve1) if pool.token0() == token.address else (reserve1, reserve0)
