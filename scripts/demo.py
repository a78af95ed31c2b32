"""The local demo: `ape run demo --network ethereum:local:foundry` (what `make demo` runs).

Deploys everything on a fresh chain, tokenizes a seller's Anthropic credit into CLD,
lists another seller's OpenAI capacity for USDC, has two buyers deposit into the
credits vault under signed spend caps, settles one epoch of metered usage on-chain
(CLD burned and lot A drawn down; seller B credited USDC), lets seller B claim, and
takes buyer 2 out through both exit paths. Exits non-zero if any number does not
reconcile.

Seller A also seeds the CLD/USDC pool at the reference price; buyer 1 buys its CLD
there and, at the end, sells what it did not use back to USDC out of the vault.

Not yet part of it (later issues): the gateway (usage is priced by the real metering
code for a fixed token count instead of being served), the coordinator's Merkle tree
(the root here is the hash of the single usage record of each batch), redemption.
"""

import click
from ape import accounts, chain
from ape.cli import ConnectedProviderCommand
from eth_abi import encode
from eth_utils import keccak
from rich.console import Console
from rich.table import Table

from promptex.chain.deploy import contract_at, deploy_all
from promptex.chain.dex import DEFAULT_FEE, create_pool_at_price
from promptex.chain.errors import readable_errors
from promptex.chain.escrow import KIND_LISTED, KIND_TOKENIZED
from promptex.chain.providers import TOKEN_UNIT, USD_MICRO
from promptex.chain.vault import UNLIMITED, pack_debits, pack_lot_amount, sign_release, sign_spend_cap
from promptex.config import settings
from promptex.metering import load_catalog, message_cost, provider_token_rates, split_usdc_charge, usdc_rates

console = Console(width=110)
DAY = 86_400


def usd(micro: int) -> str:
    return f"${micro / USD_MICRO:,.4f}"


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
    admin, seller_a, seller_b, treasury, buyer_1, buyer_2 = accounts.test_accounts[0:6]
    coordinator = admin  # the deploy's default coordinator and settler on a local chain

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

    run_vault(deployment, coordinator, seller_a, seller_b, buyer_1, buyer_2, lot_a, lot_b)
    console.print("[bold green]demo complete: every number reconciles[/]")


def run_vault(deployment, coordinator, seller_a, seller_b, buyer_1, buyer_2, lot_a, lot_b) -> None:
    usdc, escrow = contract_at(deployment, "USDC"), contract_at(deployment, "CreditEscrow")
    vault, cld = contract_at(deployment, "CreditsVault"), contract_at(deployment, "token:CLD")
    sign = {"chain_id": chain.chain_id, "vault": vault.address}

    def exit_instant(account, asset, amount, min_out=0):
        """Leave at once with a release the coordinator signs for this account, asset and amount."""
        nonce, expiry = vault.release_nonce(account), chain.pending_timestamp + 600
        release = sign_release(
            coordinator.private_key,
            **sign,
            account=account.address,
            asset=asset.address,
            amount=amount,
            nonce=nonce,
            expiry=expiry,
        )
        return vault.exit_instant(asset, amount, min_out, nonce, expiry, release, sender=account)

    day = chain.pending_timestamp + DAY

    router = contract_at(deployment, "Router")
    step("Seller A seeds the CLD/USDC pool (0.30 %) with 2,000,000 CLD at the reference $0.004218")
    usdc.mint(seller_a, 8_436 * USD_MICRO, sender=seller_a)
    pool = create_pool_at_price(
        router, contract_at(deployment, "Factory"), cld, usdc, 2_000_000 * TOKEN_UNIT, 4_218, seller_a
    )
    check(pool.totalSupply() > 0, f"pool {pool.address} holds liquidity")

    step("Buyer 1 swaps 100 USDC for CLD through the router (min_out 1 % under the quote) and deposits it")
    usdc.mint(buyer_1, 100 * USD_MICRO, sender=buyer_1)
    usdc.approve(router, 100 * USD_MICRO, sender=buyer_1)
    path, fees = [usdc.address, cld.address], [DEFAULT_FEE]
    quoted = router.get_amounts_out(100 * USD_MICRO, path, fees)[-1]
    deadline = chain.pending_timestamp + 600
    router.swap_exact_in(100 * USD_MICRO, quoted * 99 // 100, path, fees, buyer_1, deadline, sender=buyer_1)
    cld_in = cld.balanceOf(buyer_1)
    check(cld_in == quoted, f"buyer 1 received the quoted {tokens(quoted)} CLD")
    cld.approve(vault, cld_in, sender=buyer_1)
    vault.deposit(cld, cld_in, sender=buyer_1)

    step("Buyer 2 deposits 100 USDC")
    usdc_in = 100 * USD_MICRO
    usdc.mint(buyer_2, usdc_in, sender=buyer_2)
    usdc.approve(vault, usdc_in, sender=buyer_2)
    vault.deposit(usdc, usdc_in, sender=buyer_2)

    step("Both sign EIP-712 spend caps; the coordinator registers them gaslessly")
    for buyer, asset, total in ((buyer_1, cld, 50_000 * TOKEN_UNIT), (buyer_2, usdc, 50 * USD_MICRO)):
        cap = {"account": buyer.address, "asset": asset.address, "per_epoch": UNLIMITED, "total": total}
        nonce = vault.cap_nonce(buyer, asset)
        signature = sign_spend_cap(buyer.private_key, **sign, **cap, expiry=day, nonce=nonce)
        vault.register_spend_cap(*cap.values(), day, nonce, signature, sender=coordinator)
    check(vault.spend_cap(buyer_1, cld)[1] == 50_000 * TOKEN_UNIT, "buyer 1 may be charged at most 50,000 CLD")

    catalog = load_catalog(settings().model_catalog)
    fee_bps = settings().protocol_fee_bps
    claude, gpt_model = catalog.price("claude-sonnet-4-5"), catalog.price("gpt-4o")
    claude_cost = message_cost(provider_token_rates(claude), 120_000, 35_000)
    gpt_rate = escrow.lots(lot_b).rate_bps
    gpt_cost = message_cost(usdc_rates(gpt_model, gpt_rate, fee_bps), 200_000, 50_000)
    gpt_list_value = message_cost(usdc_rates(gpt_model, 10_000, 0), 200_000, 50_000)
    to_seller_b, fee = split_usdc_charge(gpt_cost, fee_bps)
    step(
        f"Metered off-chain: buyer 1 used claude-sonnet-4-5 (120,000 in / 35,000 out) = {tokens(claude_cost)} CLD; "
        f"buyer 2 used gpt-4o (200,000 in / 50,000 out) = {usd(gpt_cost)} USDC"
    )

    step("Epoch 1 settles on-chain: CLD burned and lot A drawn down; seller B credited USDC")
    supply = cld.totalSupply()
    cld_root = keccak(encode(["string", "address", "uint256"], ["claude-sonnet-4-5", buyer_1.address, claude_cost]))
    vault.settle(
        1,
        cld,
        pack_debits({buyer_1.address: claude_cost}),
        [],
        [pack_lot_amount(lot_a, claude_cost)],
        0,
        cld_root,
        sender=coordinator,
    )
    usdc_root = keccak(encode(["string", "address", "uint256"], ["gpt-4o", buyer_2.address, gpt_cost]))
    vault.settle(
        1,
        usdc,
        pack_debits({buyer_2.address: gpt_cost}),
        [pack_lot_amount(lot_b, to_seller_b)],
        [],
        fee,
        usdc_root,
        sender=coordinator,
    )
    check(cld.totalSupply() == supply - claude_cost, "CLD supply fell by exactly the metered cost")
    check(escrow.lots(lot_a).consumed == claude_cost, "lot A drawn down by the CLD burned")
    check(vault.balance_of(buyer_1, cld) == cld_in - claude_cost, "buyer 1 charged exactly the meter")
    check(vault.claimable(seller_b, usdc) == to_seller_b, "seller B credited its rate's share")
    check(vault.reserve(usdc) == fee, "protocol fee kept in the vault's reserve")
    escrow.consume(lot_b, gpt_list_value, 1, sender=coordinator)
    check(escrow.lots(lot_b).consumed == gpt_list_value, "lot B drawn down by the list value it served")

    step("Seller B claims its USDC")
    before = usdc.balanceOf(seller_b)
    vault.claim(usdc, sender=seller_b)
    check(usdc.balanceOf(seller_b) - before == to_seller_b, "seller B received its earnings")

    step("Buyer 2 withdraws half at once with the coordinator's co-signed release")
    left = usdc_in - gpt_cost
    half = left // 2
    exit_instant(buyer_2, usdc, half)
    check(usdc.balanceOf(buyer_2) == half, "instant exit paid")

    step(f"Buyer 2 takes the rest through the trustless path (thaw {vault.thaw_period()} s)")
    vault.request_exit(usdc, left - half, sender=buyer_2)
    chain.pending_timestamp += vault.thaw_period()
    vault.complete_exit(usdc, 0, sender=buyer_2)
    check(usdc.balanceOf(buyer_2) == left, "buyer 2 got back everything not spent")
    check(
        usdc.balanceOf(vault) == vault.reserve(usdc),
        "the vault's USDC is exactly its reserve: no balance or claim left behind",
    )

    step("Buyer 1 sells its unused CLD for USDC inside the vault (instant path, coordinator-signed release)")
    unused = vault.balance_of(buyer_1, cld)
    quoted = router.get_amounts_out(unused, [cld.address, usdc.address], [DEFAULT_FEE])[-1]
    exit_instant(buyer_1, cld, unused, min_out=quoted * 99 // 100)
    check(vault.balance_of(buyer_1, usdc) == quoted, f"the quoted {usd(quoted)} USDC landed in buyer 1's vault balance")
    check(vault.balance_of(buyer_1, cld) == 0 and cld.balanceOf(vault) == 0, "no CLD left in the vault")

    step("Buyer 1 withdraws that USDC (instant path)")
    exit_instant(buyer_1, usdc, quoted)
    check(usdc.balanceOf(buyer_1) == quoted, "buyer 1 holds its USDC")
    check(usdc.balanceOf(vault) == vault.reserve(usdc), "the vault's USDC is again exactly its reserve")

    table = Table(title="Vault after epoch 1")
    for col in ("account", "vault CLD", "vault USDC", "wallet USDC"):
        table.add_column(col, justify="right")
    for label, who in (("buyer 1", buyer_1), ("buyer 2", buyer_2), ("seller B", seller_b)):
        table.add_row(
            label, tokens(vault.balance_of(who, cld)), usd(vault.balance_of(who, usdc)), usd(usdc.balanceOf(who))
        )
    console.print(table)
