"""Signed mode's rows for bench/gas.py (issue 23): `settle_signed` with 500 distinct accounts,
one lane each, and where a steady-state entry's gas goes.

Measured on titanoboa with the scenario the contract test pins
(promptex.chain.gas.vault_signed), not on the anvil deployment the other rows use: the
500 session registrations would take minutes through ape, and gas is the same for the
same code, state and calldata.
"""

from __future__ import annotations

from gas import Context, measurement
from promptex.chain.gas.vault_signed import breakdown, measure

ENTRIES = 500


@measurement
def settle_signed(ctx: Context) -> dict[str, tuple[str, int]]:
    gas = measure(ENTRIES)
    parts = breakdown(gas, ENTRIES)
    return {
        "vault_settle_signed_500": ("vault: settle_signed, 500 accounts × 1 lane (steady)", gas["steady"]),
        "vault_settle_signed_per_entry_500": (
            "vault: settle_signed gas per entry at 500 (target ≤ 16,000)",
            parts["total"],
        ),
        "vault_settle_signed_per_entry_storage": ("  of which storage (2 cold slots read + written)", parts["storage"]),
        "vault_settle_signed_per_entry_ecrecover": ("  of which signature recovery (ecrecover)", parts["ecrecover"]),
        "vault_settle_signed_per_entry_calldata": ("  of which calldata (128 bytes)", parts["calldata"]),
        "vault_settle_signed_per_entry_rest": ("  of which the rest (hashing, checks, batch / 500)", parts["rest"]),
        "vault_settle_signed_first_per_entry_500": (
            "vault: settle_signed per entry, a lane's first batch in a session",
            gas["first"] // ENTRIES,
        ),
    }
