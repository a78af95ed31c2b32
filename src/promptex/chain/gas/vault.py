"""The CreditsVault gas world on titanoboa, built once for both settlement paths: the USDC
`settle` pin (tests/contracts/test_vault_gas.py) and signed mode's `settle_signed`
(promptex.chain.gas.vault_signed). Deployments, addresses and balances are fixed, so the
calldata, and the gas pinned from it, never vary between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import boa
from eth_utils.crypto import keccak

CONTRACTS = Path(__file__).resolve().parents[4] / "contracts"
BALANCE = 10**9  # each account's USDC in the vault (1,000 USDC)


@cache
def _partial(name: str) -> Any:
    return boa.load_partial(str(CONTRACTS / name))


def intrinsic_gas(calldata: bytes) -> int:
    """21,000 and the calldata's bytes (EIP-2028): what a transaction pays before executing."""
    return 21_000 + sum(16 if byte else 4 for byte in calldata)


def users(label: str, n: int) -> list[str]:
    """Fixed addresses (titanoboa's generated ones depend on what ran before)."""
    return ["0x" + keccak(text=f"{label} {i}")[-20:].hex() for i in range(n)]


@dataclass(frozen=True)
class VaultWorld:
    admin: str  # deployer, attestor and coordinator
    usdc: Any
    escrow: Any
    vault: Any
    lot: int  # a listed lot the settlements credit
    accounts: list[str]  # each holding BALANCE USDC in the vault, no cap or session yet


def build_vault_world(label: str, n: int, rate_bps: int) -> VaultWorld:
    """USDC, the escrow, the vault (with its signed module) and CLD deployed by a fixed
    admin; a listed lot at `rate_bps` of list price; `n` accounts labelled `label`, each
    with BALANCE deposited. Callers register caps or session keys."""
    admin, seller = users(label, n + 2)[n:]
    with boa.env.prank(admin):
        usdc = _partial("test/MockUSDC.vy").deploy()
        escrow = _partial("CreditEscrow.vy").deploy(usdc.address, admin, 60)
        signed = _partial("CreditsVaultSigned.vy").deploy()
        vault = _partial("CreditsVault.vy").deploy(usdc.address, escrow.address, 60, 120, signed.address)
        cld = _partial("ComputeToken.vy").deploy("CLD credit", "CLD", "Anthropic", 4_218, escrow.address, vault.address)
        escrow.add_provider(cld.address, 1_000)
        escrow.grant_attestor(admin)
        escrow.set_vault(vault.address)
        vault.grant_coordinator(admin)
    usdc.mint(seller, 10**12)
    usdc.approve(escrow.address, 10**11, sender=seller)  # exactly the lot's bond
    expiry = boa.env.evm.patch.timestamp + 30 * 86_400
    lot = escrow.open_lot(seller, cld.address, 2, 10**12, expiry, 10**11, b"\x11" * 32, rate_bps, sender=admin)
    accounts = users(label, n)
    usdc.mint(admin, BALANCE * n)
    usdc.approve(vault.address, 2**256 - 1, sender=admin)
    for account in accounts:
        vault.deposit_for(account, usdc.address, BALANCE, sender=admin)
    return VaultWorld(admin, usdc, escrow, vault, lot, accounts)
