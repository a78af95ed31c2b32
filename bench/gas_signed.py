"""Signed mode's rows for bench/gas.py (issue 23): `settle_signed` with 500 distinct accounts,
one lane each, where a steady-state entry's gas goes, and 62 accounts × 8 lanes.

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
        "vault_settle_signed_per_entry_storage": (
            "  of which storage (the account slot read + written, the session's hot word read)",
            parts["storage"],
        ),
        "vault_settle_signed_per_entry_ecrecover": ("  of which signature recovery (ecrecover)", parts["ecrecover"]),
        "vault_settle_signed_per_entry_calldata": ("  of which calldata (128 bytes)", parts["calldata"]),
        "vault_settle_signed_per_entry_rest": ("  of which the rest (hashing, checks, batch / 500)", parts["rest"]),
        "vault_settle_signed_first_per_entry_500": (
            "vault: settle_signed per entry, an account's first debit in its session",
            gas["first"] // ENTRIES,
        ),
        "vault_settle_signed_lanes_per_entry": (
            f"vault: settle_signed per entry, {gas['several_entries']} entries = 62 accounts × 8 lanes (steady)",
            gas["several_steady"] // gas["several_entries"],
        ),
        "vault_settle_signed_lanes_first_per_entry": (
            "vault: settle_signed per entry, 62 × 8 lanes, the lanes' first debit (each lane's slot created)",
            gas["several_first"] // gas["several_entries"],
        ),
    }
