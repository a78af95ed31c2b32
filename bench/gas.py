"""Gas per PROMPTEX operation, measured as whole-transaction `gasUsed` on anvil.

    python bench/gas.py           # a table
    python bench/gas.py --json    # the same figures as one JSON object

Each measurement is a function registered with `@measurement`: it gets a fresh
deployment (a chain snapshot is restored after it) and returns {key: (label, gas)}.
Later issues add their rows in sibling modules `bench/gas_<area>.py`, which register
their functions with `from gas import measurement`; this script imports them all. The
scenarios they measure are in promptex.chain.gas, where the contract tests' gas pins
run them too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import click
from eth_utils import keccak

from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED
from promptex.protocol.permit import sign_permit

NETWORK = "ethereum:local:foundry"
TERMS = keccak(text="bench: resale permitted")


@dataclass
class Context:
    """What a measurement needs: accounts, a fresh deployment, contract lookup."""

    accounts: list[Any]
    deployment: Any
    contract: Callable[[str], Any]
    chain: Any

    @property
    def admin(self) -> Any:
        return self.accounts[0]


Measurement = Callable[[Context], dict[str, tuple[str, int]]]
MEASUREMENTS: list[Measurement] = []


def measurement(fn: Measurement) -> Measurement:
    """Register a function returning {json_key: (label, gas)}."""
    MEASUREMENTS.append(fn)
    return fn


def open_lot(ctx: Context, seller: Any, token: Any, kind: int, face_value: int, rate_bps: int = 0) -> Any:
    usdc, escrow = ctx.contract("USDC"), ctx.contract("CreditEscrow")
    # A tokenized lot's only bond is its token's share; a listed lot's least is the minimum.
    bond = escrow.tokenized_bond(token, face_value) if kind == KIND_TOKENIZED else escrow.min_bond(face_value)
    usdc.mint(seller, bond, sender=seller)
    usdc.approve(escrow, bond, sender=seller)
    expiry = ctx.chain.pending_timestamp + 30 * 86_400
    return escrow.open_lot(seller, token, kind, face_value, expiry, bond, TERMS, rate_bps, sender=ctx.admin)


@measurement
def foundation(ctx: Context) -> dict[str, tuple[str, int]]:
    seller, buyer, spender = ctx.accounts[1], ctx.accounts[2], ctx.accounts[3]
    cld, gpt = ctx.contract("token:CLD"), ctx.contract("token:GPT")
    rows: dict[str, tuple[str, int]] = {}

    receipt = open_lot(ctx, seller, cld, KIND_TOKENIZED, 10_000 * 10**6)
    rows["escrow_open_lot"] = ("escrow: open tokenized lot (mint + fee)", receipt.gas_used)
    receipt = open_lot(ctx, seller, gpt, KIND_LISTED, 5_000 * 10**6, rate_bps=6_000)
    rows["escrow_open_lot_listed"] = ("escrow: open listed lot", receipt.gas_used)

    # A transfer between two accounts that already hold the token (warm, non-zero slots).
    cld.transfer(buyer, 10**18, sender=seller)
    receipt = cld.transfer(buyer, 10**18, sender=seller)
    rows["token_transfer"] = ("token: transfer", receipt.gas_used)

    rows["token_permit"] = ("token: permit (EIP-2612)", _permit(ctx, cld, seller, spender).gas_used)
    # Drawing lots happens only inside the vault's settle: see bench/gas_vault.py.
    return rows


def _permit(ctx: Context, token: Any, owner: Any, spender: Any) -> Any:
    deadline = ctx.chain.pending_timestamp + 3_600
    v, r, s = sign_permit(
        owner.private_key,
        token_name=token.name(),
        chain_id=ctx.chain.chain_id,
        token=token.address,
        owner=owner.address,
        spender=spender.address,
        value=10**18,
        nonce=token.nonces(owner),
        deadline=deadline,
    )
    return token.permit(owner, spender, 10**18, deadline, v, r, s, sender=spender)


def load_plugins() -> None:
    """Import every bench/gas_<area>.py so its measurements register."""
    import importlib

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    sys.modules.setdefault("gas", sys.modules[__name__])  # plugins import the registry as `gas`
    for path in sorted(here.glob("gas_*.py")):
        importlib.import_module(path.stem)


def run_all() -> dict[str, tuple[str, int]]:
    from ape import accounts, chain, networks

    from promptex.chain.deploy import contract_at, deploy_all

    rows: dict[str, tuple[str, int]] = {}
    with networks.parse_network_choice(NETWORK), TemporaryDirectory() as tmp:
        test_accounts = list(accounts.test_accounts[:10])
        # The deployer stays the admin (no timelock hand-over): measurements call admin functions.
        deployment = deploy_all(
            test_accounts[0], "local", hand_over=False, force=True, root=Path(tmp), log=lambda _: None
        )
        ctx = Context(test_accounts, deployment, lambda name: contract_at(deployment, name), chain)
        for fn in MEASUREMENTS:
            snapshot = chain.snapshot()
            rows.update(fn(ctx))
            chain.restore(snapshot)
    return rows


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON object {key: gas}")
def main(as_json: bool) -> None:
    import logging

    logging.getLogger("ape").setLevel(logging.WARNING)
    from ape.logging import logger

    logger.set_level("WARNING")
    load_plugins()
    rows = run_all()
    if as_json:
        json.dump({key: gas for key, (_, gas) in rows.items()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Gas per operation (whole transaction, anvil)")
    table.add_column("operation")
    table.add_column("key")
    table.add_column("gas", justify="right")
    for key, (label, gas) in rows.items():
        table.add_row(label, key, f"{gas:,}")
    Console(width=110).print(table)


if __name__ == "__main__":
    main()
