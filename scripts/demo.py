"""The local demo: `ape run demo --network ethereum:local:foundry` (what `make demo` runs).

Deploys everything on a fresh chain, tokenizes a seller's Anthropic credit into CLD,
lists another seller's OpenAI capacity for USDC, and prints balances. Exits non-zero
if any number does not reconcile.
"""

import click
from ape import accounts, chain
from ape.cli import ConnectedProviderCommand
from eth_utils import keccak
from rich.console import Console
from rich.table import Table

from promptex.chain.deploy import contract_at, deploy_all
from promptex.chain.errors import readable_errors
from promptex.chain.escrow import KIND_LISTED, KIND_TOKENIZED
from promptex.chain.providers import TOKEN_UNIT, USD_MICRO

console = Console(width=110)
DAY = 86_400


def usd(micro: int) -> str:
    return f"${micro / USD_MICRO:,.2f}"


def tokens(amount: int) -> str:
    return f"{amount / TOKEN_UNIT:,.4f}"


def step(text: str) -> None:
    console.print(f"[bold cyan]▶[/] {text}")


def check(ok: bool, what: str) -> None:
    if not ok:
        raise click.ClickException(f"does not reconcile: {what}")
    console.print(f"  [green]✓[/] {what}")


@click.command(cls=ConnectedProviderCommand)
def cli(network):
    with readable_errors():
        run_demo(network.name)


def run_demo(network_name: str) -> None:
    admin, seller_a, seller_b, treasury = accounts.test_accounts[0:4]

    step("Deploy MockUSDC, CreditEscrow and the CLD/GPT/GEM/LLM provider tokens")
    deployment = deploy_all(admin, network_name, treasury=treasury.address, force=True, log=lambda _: None)
    usdc = contract_at(deployment, "USDC")
    escrow = contract_at(deployment, "CreditEscrow")
    cld = contract_at(deployment, "token:CLD")
    gpt = contract_at(deployment, "token:GPT")
    for name, contract in deployment.contracts.items():
        console.print(f"  {name:<14} {contract.address}")

    expiry = chain.pending_timestamp + 30 * DAY

    step("Seller A tokenizes $10,000 of Anthropic credit (bond 10 %, mint fee 0.05 %)")
    face_a = 10_000 * USD_MICRO
    bond_a = escrow.min_bond(face_a)
    usdc.mint(seller_a, bond_a, sender=seller_a)
    usdc.approve(escrow, bond_a, sender=seller_a)
    terms_a = keccak(text="seller A declares its Anthropic agreement permits resale")
    escrow.open_lot(seller_a, cld, KIND_TOKENIZED, face_a, expiry, bond_a, terms_a, 0, sender=admin)
    lot_a = escrow.lot_count()
    minted = face_a * TOKEN_UNIT // cld.face_value_usd_micro()
    fee = escrow.lots(lot_a).capacity - escrow.lots(lot_a).seller_minted
    check(cld.balanceOf(seller_a) + cld.balanceOf(treasury) == minted, "seller CLD + fee == $10,000 ÷ $0.004218")
    check(fee * 10_000 >= minted * 5 and (fee - 1) * 10_000 < minted * 5, "fee is 0.05 % of minted, rounded up")
    check(cld.totalSupply() == escrow.lots(lot_a).capacity, "CLD supply == lot A's capacity")

    step("Seller B lists $5,000 of OpenAI capacity at 60 % of list, for USDC")
    face_b = 5_000 * USD_MICRO
    bond_b = escrow.min_bond(face_b)
    usdc.mint(seller_b, bond_b, sender=seller_b)
    usdc.approve(escrow, bond_b, sender=seller_b)
    terms_b = keccak(text="seller B declares its OpenAI agreement permits resale")
    escrow.open_lot(seller_b, gpt, KIND_LISTED, face_b, expiry, bond_b, terms_b, 6_000, sender=admin)
    lot_b = escrow.lot_count()
    check(gpt.totalSupply() == 0, "a listed lot mints nothing")
    check(usdc.balanceOf(escrow) == escrow.bonds_held() == bond_a + bond_b, "escrow holds both bonds")

    lots = Table(title="Lots in CreditEscrow")
    for col in ("lot", "seller", "provider", "kind", "face value", "capacity", "bond", "rate"):
        lots.add_column(col)
    for lot_id, seller, token in ((lot_a, "A", cld), (lot_b, "B", gpt)):
        lot = escrow.lots(lot_id)
        tokenized = lot.kind == KIND_TOKENIZED
        lots.add_row(
            str(lot_id),
            seller,
            token.provider_name(),
            "tokenized" if tokenized else "listed",
            usd(lot.face_value),
            f"{tokens(lot.capacity)} {token.symbol()}" if tokenized else usd(lot.capacity),
            usd(lot.bond),
            "—" if tokenized else f"{lot.rate_bps / 100:.0f} % of list",
        )
    console.print(lots)

    balances = Table(title="Balances")
    for col in ("account", "USDC", "CLD", "GPT"):
        balances.add_column(col, justify="right")
    for label, who in (("seller A", seller_a), ("seller B", seller_b), ("treasury", treasury), ("escrow", escrow)):
        balances.add_row(label, usd(usdc.balanceOf(who)), tokens(cld.balanceOf(who)), tokens(gpt.balanceOf(who)))
    console.print(balances)
    console.print("[bold green]demo complete: every number reconciles[/]")
