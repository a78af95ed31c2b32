"""Deploys the DEX (Pool blueprint, Factory, Router, Oracle) through ape, and seeds
pools at a chosen price (the DEX's constants and maths are `promptex.protocol.dex`).

`deploy_dex` is called by the deploy script (inside an ape network context) once
the quote asset (USDC) exists; `create_pool_at_price` is what `scripts/seed_market.py`
uses to open the provider-token/USDC markets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ape import chain, project
from ape.utils import ZERO_ADDRESS
from eth_utils.crypto import keccak

from promptex.chain.deployments import DeployedContract, abi_of, write_abi
from promptex.protocol.dex import DEFAULT_FEE, LIVE_ORACLE_PERIOD, quote_amount_at_price

# Names under which the DEX is recorded in deployments/<network>.json.
DEX_CONTRACTS = ("PoolBlueprint", "Factory", "Router", "Oracle")


def pool_init_code_hash() -> bytes:
    """keccak256 of the Pool's init code: what a CREATE2 pool address is derived from."""
    return keccak(project.Pool.contract_type.deployment_bytecode.to_bytes())


def deploy_dex(
    deployer: Any,
    log: Callable[[str], None] = print,
    *,
    quote_token: str,
    oracle_period: int = LIVE_ORACLE_PERIOD,
    oracle_fee: int = DEFAULT_FEE,
) -> dict[str, Any]:
    """Deploy the Pool blueprint (ERC-5202), the Factory, the Router and the Oracle.

    `quote_token` is USDC: what the Router's `sell` (the vault's exit market) pays
    out and what the Oracle prices tokens in. Returns {"PoolBlueprint": address,
    "Factory": …, "Router": …, "Oracle": …} (ape contract objects but the blueprint,
    which is code, not a callable contract). The deployer is the Factory's admin.
    """
    receipt = deployer.declare(project.Pool)
    blueprint = str(receipt.contract_address)
    log(f"Pool (blueprint) {blueprint}")
    factory = deployer.deploy(project.Factory, blueprint, pool_init_code_hash())
    log(f"Factory       {factory.address}")
    router = deployer.deploy(project.Router, factory.address, quote_token)
    log(f"Router        {router.address}")
    oracle = deployer.deploy(project.Oracle, factory.address, quote_token, oracle_fee, oracle_period)
    log(f"Oracle        {oracle.address}")
    return {"PoolBlueprint": blueprint, "Factory": factory, "Router": router, "Oracle": oracle}


def dex_records(dex: dict[str, Any], root: Path | None = None) -> dict[str, DeployedContract]:
    """Deployment records for what `deploy_dex` returned (ABIs written under `root`),
    to merge into a Deployment's `contracts`."""
    pool_abi = write_abi("Pool", abi_of(project.Pool), root)
    records = {"PoolBlueprint": DeployedContract(address=str(dex["PoolBlueprint"]), abi=pool_abi)}
    for name in ("Factory", "Router", "Oracle"):
        abi = write_abi(name, abi_of(getattr(project, name)), root)
        records[name] = DeployedContract(address=str(dex[name].address), abi=abi)
    return records


def pool_at(address: str) -> Any:
    """An ape contract object for a Pool (outside the checkout: with the Factory's recorded
    pool ABI, `abi/Pool.json` in the deployments folder)."""
    try:
        return project.Pool.at(address)
    except AttributeError:  # ape's ApeAttributeError: no project here
        from ape import chain

        from promptex.chain.deployments import deployments_root

        abi = deployments_root() / "abi" / "Pool.json"
        return chain.contracts.instance_at(address, abi=abi, fetch_from_explorer=False)


def create_pool_at_price(
    router: Any,
    factory: Any,
    token: Any,
    quote: Any,
    token_amount: int,
    price: int,
    provider: Any,
    *,
    fee: int = DEFAULT_FEE,
    token_decimals: int = 18,
    deadline_seconds: int = 600,
) -> Any:
    """Create the (token, quote, fee) pool if needed and give it its first liquidity at
    `price` quote units per whole token: `token_amount` of token and the quote worth it.

    `provider` must hold both amounts; it receives the LP units. A pool that already
    has liquidity is refused: its price belongs to the market now. Returns the pool.
    """
    quote_amount = quote_amount_at_price(token_amount, price, token_decimals)
    if token_amount <= 0 or quote_amount <= 0:
        raise ValueError("seed amounts round to zero: raise the depth")
    existing = factory.get_pool(token.address, quote.address, fee)
    if existing != ZERO_ADDRESS and pool_at(existing).totalSupply() != 0:
        raise ValueError(f"the {fee / 100:.2f} % pool at {existing} already has liquidity")
    token.approve(router.address, token_amount, sender=provider)
    quote.approve(router.address, quote_amount, sender=provider)
    router.add_liquidity(
        token.address,
        quote.address,
        fee,
        token_amount,
        quote_amount,
        token_amount,
        quote_amount,
        provider.address,
        chain.pending_timestamp + deadline_seconds,
        sender=provider,
    )
    return pool_at(factory.get_pool(token.address, quote.address, fee))
