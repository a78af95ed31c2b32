"""Pins the gas of CreditsVault.settle_signed at 500 entries (titanoboa): the worst case
the issue names, 500 distinct accounts with one lane each, so no slot is shared between
entries.

Whole-transaction gas, measured as in test_vault_gas.py: execution with every slot cold
and its value committed before the call, plus the intrinsic 21,000 and the calldata
(EIP-2028). Two batches are measured: the first of each lane in a session (it creates
the lane's slot and reads the session) and the steady state (every later batch, which
the ≤ 16,000 target is about). bench/gas.py measures the same on anvil and prints the
breakdown.
"""

from promptex.chain.gas.vault_signed import measure

ENTRIES = 500
# The target is 16,000; this design measures 17,042 (two cold slots 10,000, ecrecover
# ~3,100, calldata ~1,616, the rest Vyper's hashing and checks plus the batch's fixed ~180k
# spread over 500): the ceiling pins what is reached, not the target.
CEILING_PER_ENTRY = 17_100
# Update deliberately when the contract changes.
PINNED_STEADY = 8_520_997  # 17,042 per entry: a lane's later batches in a session
PINNED_FIRST = 19_933_281  # 39,867 per entry: a lane's first batch (creates its slot, reads the session)


def test_settle_signed_gas__500_accounts_one_lane_each__pinned():
    gas = measure(ENTRIES)
    per_entry = gas["steady"] / ENTRIES
    assert per_entry <= CEILING_PER_ENTRY, f"{per_entry:.0f} gas per entry"
    assert (gas["steady"], gas["first"]) == (PINNED_STEADY, PINNED_FIRST), (
        f"settle_signed(500) now costs {gas['steady']} ({per_entry:.1f}/entry), its first batch "
        f"{gas['first']} ({gas['first'] / ENTRIES:.1f}/entry): update the pins"
    )
