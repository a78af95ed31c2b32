"""CreditEscrow gas scenario for lots past their expiry (issue 19's dust-lot fix): `prune`
of 1 and of 256 lots at the head of a token's draw order, a provider token's settlement
whose draw first unlinks 256 such lots, `expire` of an undrawn tokenized lot (its bond
share to the insurance fund) and a holder's `buy_back_unbacked`.

Scenario: CLD has one live tokenized lot ($10,000, 30 days) and 257 lots at the minimum
face (MIN_TOKENIZED_FACE, $10), all expiring together just past MIN_LOT_VALIDITY, so
they are the head of CLD's draw order once that time has passed. The buyer holds CLD in
the vault under a cap, and CLD has been settled before (its epoch slots exist). `prune`
of 1 leaves 256; `prune` of those 256 and the settlement that prunes them are measured
from the same state (a chain snapshot restored between them). The seller, which holds
the lots' tokens, already holds USDC when it sells unbacked tokens back. Each measured
transaction lands in a new block. bench/gas_escrow.py prints these figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth_utils.crypto import keccak

from promptex.chain.gas.measure import new_block, whole_gas
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.vault import pack_debits

DUST_LOTS = 257  # one pruned alone, then the 256 (MAX_PRUNE_LOTS) that one call or one draw unlinks
TERMS = keccak(text="bench: resale permitted")
DAY = 86_400


def measure_escrow(
    chain: Any,
    contracts: dict[str, Any],
    admin: Any,
    seller: Any,
    buyer: Any,
    gas_of: Callable[[Any], Any] = whole_gas,
) -> dict[str, Any]:
    """Whole-transaction gas of prune (1 and 256 lots), a token settlement pruning 256,
    expire and buy_back_unbacked. `contracts` holds USDC, CreditEscrow, CreditsVault and
    token:CLD (CLD registered, the vault set); `admin` is an attestor and a coordinator."""
    usdc, escrow, vault, cld = (contracts[n] for n in ("USDC", "CreditEscrow", "CreditsVault", "token:CLD"))

    def open_lot(face: int, expiry: int) -> int:
        bond = escrow.tokenized_bond(cld, face)
        usdc.approve(escrow, bond, sender=seller)
        escrow.open_lot(seller, cld, KIND_TOKENIZED, face, expiry, bond, TERMS, 0, sender=admin)
        return int(escrow.lot_count())

    def settle(burn: int) -> Any:
        at = vault.next_settlement_at(cld)
        chain.pending_timestamp = max(chain.pending_timestamp, at)
        words = pack_debits({buyer.address: burn})
        epoch = vault.last_epoch(cld) + 1
        return vault.settle(epoch, cld, words, [], burn, 0, keccak(text=f"cld {epoch}"), sender=admin)

    usdc.mint(seller, 10_000 * USD, sender=seller)
    open_lot(10_000 * USD, chain.pending_timestamp + 30 * DAY)
    cld.transfer(buyer, 10 * UNIT, sender=seller)
    cld.approve(vault, MAX_UINT, sender=buyer)
    vault.deposit(cld, 10 * UNIT, sender=buyer)
    vault.set_spend_cap(cld, UNIT, 1_000 * UNIT, 2**32 - 1, sender=buyer)
    settle(UNIT // 10)  # CLD's first settlement creates its epoch slots

    # A day's margin: anvil's clock runs on while the 257 lots open.
    dust_expiry = chain.pending_timestamp + int(escrow.MIN_LOT_VALIDITY()) + DAY
    dust = [open_lot(int(escrow.MIN_TOKENIZED_FACE()), dust_expiry) for _ in range(DUST_LOTS)]
    chain.pending_timestamp = dust_expiry + 1
    gas: dict[str, int] = {}

    new_block(chain)
    gas["escrow_prune_1"] = gas_of(escrow.prune(cld, 1, sender=buyer))
    snapshot = chain.snapshot()
    new_block(chain)
    gas["escrow_prune_256"] = gas_of(escrow.prune(cld, 256, sender=buyer))
    chain.restore(snapshot)
    new_block(chain)
    gas["vault_settle_token_prune_256"] = gas_of(settle(2 * UNIT // 10))

    chain.pending_timestamp = dust_expiry + int(escrow.SETTLEMENT_GRACE()) + 1
    new_block(chain)
    gas["escrow_expire"] = gas_of(escrow.expire(dust[0], sender=buyer))
    escrow.expire(dust[1], sender=buyer)
    tendered = int(escrow.lots(dust[1]).capacity)
    cld.approve(escrow, MAX_UINT, sender=seller)
    new_block(chain)
    gas["escrow_buy_back"] = gas_of(escrow.buy_back_unbacked(cld, tendered, sender=seller))
    return gas
