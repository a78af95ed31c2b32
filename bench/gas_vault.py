"""CreditsVault rows for bench/gas.py: settle with 1, 10, 100 and 500 user entries
(and gas per entry), a provider token's settlement (burn + the escrow's draw, nearest
expiry first), deposit, spend-cap registration, instant and trustless exits (USDC, and a
provider token taken as the token), and a seller's claim.

Settlements are measured in steady state: every buyer already holds a balance
and a cap, and the asset has been settled before. 500 buyers are funded and
given signed caps through contracts/test/VaultSeeder.vy, 100 per transaction.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_utils import keccak

from gas import Context, measurement, open_lot
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED
from promptex.protocol.vault import pack_debits, pack_lot_amount, sign_release, sign_spend_cap

BATCHES = (1, 10, 100, 500)
DEBIT = 1_234_567  # USDC units (≈ $1.23) per buyer per epoch
PER_EPOCH, TOTAL, EXPIRY = 100 * 10**6, 10**12, 2**32 - 1
SEED_CHUNK = 100


def _buyers(n: int) -> list[Any]:
    return [Account.from_key(keccak(text=f"bench vault buyer {i}")) for i in range(n)]


def _cap_signature(ctx: Context, vault: Any, usdc: Any, account: str, key: Any) -> bytes:
    return sign_spend_cap(
        key,
        chain_id=ctx.chain.chain_id,
        vault=vault.address,
        account=account,
        asset=usdc.address,
        per_epoch=PER_EPOCH,
        total=TOTAL,
        expiry=EXPIRY,
        nonce=0,
    )


def _seed(ctx: Context, vault: Any, usdc: Any, buyers: list[Any], amount: int) -> None:
    from ape import project

    seeder = ctx.admin.deploy(project.VaultSeeder)
    usdc.mint(ctx.admin, amount * len(buyers), sender=ctx.admin)
    usdc.approve(seeder, amount * len(buyers), sender=ctx.admin)
    for start in range(0, len(buyers), SEED_CHUNK):
        chunk = buyers[start : start + SEED_CHUNK]
        signatures = [_cap_signature(ctx, vault, usdc, b.address, b.key) for b in chunk]
        seeder.seed(
            vault,
            usdc,
            [b.address for b in chunk],
            amount,
            PER_EPOCH,
            TOTAL,
            EXPIRY,
            signatures,
            sender=ctx.admin,
        )


def _next_window(ctx: Context, vault: Any, asset: Any) -> None:
    at = vault.next_settlement_at(asset)
    if ctx.chain.pending_timestamp < at:
        ctx.chain.pending_timestamp = at


@measurement
def credits_vault(ctx: Context) -> dict[str, tuple[str, int]]:
    usdc, escrow, vault = ctx.contract("USDC"), ctx.contract("CreditEscrow"), ctx.contract("CreditsVault")
    gpt, cld = ctx.contract("token:GPT"), ctx.contract("token:CLD")
    seller, buyer = ctx.accounts[1], ctx.accounts[2]
    coordinator = ctx.admin  # deploy_all makes the deployer the first coordinator
    open_lot(ctx, seller, gpt, KIND_LISTED, 50_000 * 10**6, rate_bps=10_000)  # credits == list value drawn
    lot = escrow.lot_count()
    rows: dict[str, tuple[str, int]] = {}

    # ── settle ──
    buyers = _buyers(max(BATCHES))
    _seed(ctx, vault, usdc, buyers, 1_000 * 10**6)

    def settle(n: int) -> int:
        _next_window(ctx, vault, usdc)
        total = DEBIT * n
        fee = total // 10
        receipt = vault.settle(
            vault.last_epoch(usdc) + 1,
            usdc,
            pack_debits({b.address: DEBIT for b in buyers[:n]}),
            [pack_lot_amount(lot, total - fee)],
            0,
            fee,
            keccak(text=f"usage {n}"),
            sender=coordinator,
        )
        return receipt.gas_used

    settle(1)  # the asset's first settlement initialises its epoch slots
    gas = {n: settle(n) for n in BATCHES}
    for n in BATCHES:
        rows[f"vault_settle_{n}"] = (f"vault: settle, {n} user entr{'y' if n == 1 else 'ies'}", gas[n])
    rows["vault_settle_per_entry_500"] = ("vault: settle gas per user entry at 500 (target ≤ 8,000)", gas[500] // 500)
    rows["vault_settle_marginal_per_entry"] = (
        "vault: settle, each entry beyond the first (500 vs 1)",
        (gas[500] - gas[1]) // 499,
    )

    # ── deposit, cap ──
    usdc.mint(buyer, 200 * 10**6, sender=buyer)
    usdc.approve(vault, 2**256 - 1, sender=buyer)
    vault.deposit(usdc, 100 * 10**6, sender=buyer)
    rows["vault_deposit"] = (
        "vault: deposit (account already funded)",
        vault.deposit(usdc, 100 * 10**6, sender=buyer).gas_used,
    )
    signature = _cap_signature(ctx, vault, usdc, buyer.address, buyer.private_key)
    receipt = vault.register_spend_cap(buyer, usdc, PER_EPOCH, TOTAL, EXPIRY, 0, signature, sender=coordinator)
    rows["vault_register_spend_cap"] = (
        "vault: register a signed spend cap (gasless, by the coordinator)",
        receipt.gas_used,
    )

    # ── instant exit ──
    expiry = ctx.chain.pending_timestamp + 600
    signature = sign_release(
        coordinator.private_key,
        chain_id=ctx.chain.chain_id,
        vault=vault.address,
        account=buyer.address,
        asset=usdc.address,
        amount=10 * 10**6,
        nonce=0,
        expiry=expiry,
    )
    receipt = vault.exit_instant(usdc, 10 * 10**6, 0, 0, expiry, signature, sender=buyer)
    rows["vault_exit_instant"] = ("vault: instant withdraw (coordinator-signed release)", receipt.gas_used)

    # ── trustless exit ──
    receipt = vault.request_exit(usdc, 10 * 10**6, sender=buyer)
    rows["vault_request_exit"] = ("vault: request a trustless exit", receipt.gas_used)
    ctx.chain.pending_timestamp += vault.thaw_period()
    receipt = vault.complete_exit(usdc, 0, False, sender=buyer)
    rows["vault_complete_exit"] = ("vault: complete a trustless exit after the thaw", receipt.gas_used)

    # ── a provider token: settle (burn + draw), and an exit taken as the token ──
    open_lot(ctx, seller, cld, KIND_TOKENIZED, 10_000 * 10**6)
    cld.transfer(buyer, 10 * 10**18, sender=seller)
    cld.approve(vault, 2**256 - 1, sender=buyer)
    vault.deposit(cld, 10 * 10**18, sender=buyer)
    vault.set_spend_cap(cld, 10**18, 10**21, EXPIRY, sender=buyer)

    def settle_token(epoch_debit: int) -> int:
        _next_window(ctx, vault, cld)
        words = pack_debits({buyer.address: epoch_debit})
        receipt = vault.settle(
            vault.last_epoch(cld) + 1, cld, words, [], epoch_debit, 0, keccak(text="cld"), sender=coordinator
        )
        return receipt.gas_used

    settle_token(10**17)
    rows["vault_settle_token_1"] = (
        "vault: settle a provider token, 1 entry (burn + escrow draw of one lot)",
        settle_token(2 * 10**17),
    )
    vault.request_exit(cld, 10**18, sender=buyer)
    ctx.chain.pending_timestamp += vault.thaw_period()
    receipt = vault.complete_exit(cld, 0, False, sender=buyer)
    rows["vault_complete_exit_token"] = (
        "vault: complete a provider token's trustless exit, taking the token",
        receipt.gas_used,
    )

    # ── claim ──
    receipt = vault.claim(usdc, sender=seller)
    rows["vault_claim"] = ("vault: seller claims its USDC", receipt.gas_used)
    return rows
