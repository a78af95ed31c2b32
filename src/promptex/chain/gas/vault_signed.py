"""Signed mode's gas scenario (issue 23): `settle_signed` batches of `n` distinct accounts,
one lane each (the worst case: no slot shared between entries), then of a few accounts
with many lanes each, on titanoboa.

Whole-transaction gas: execution with every slot cold and its value committed before the
call (as in a real transaction), plus the intrinsic 21,000 and the calldata (EIP-2028).
Four batches: the `n` accounts' first debit in their session (lane 0 of 8), a later one
(the steady state the ≤ 16,000 target is about), then SEVERAL_ACCOUNTS accounts × every
lane: their second lane's first debit (each lane gets its slot, lane 0's total moves to
its own) and a later one. tests/contracts/test_vault_signed_gas.py pins them;
bench/gas_signed.py prints them with a breakdown. Gas is deterministic: py-evm and anvil
charge the same for the same code, state and calldata (Cancun rules).
"""

from __future__ import annotations

import boa
from eth_account import Account
from eth_utils.crypto import keccak

from promptex.chain.gas.vault import BALANCE, build_vault_world, intrinsic_gas
from promptex.chain.gas.vault import users as gas_users
from promptex.protocol.vault import SignedDebit, pack_lot_amount, pack_signed_entries, sign_voucher

LABEL = "vault signed gas user"


def users(n: int) -> list[str]:
    """Fixed addresses, so the calldata (and its cost) never varies."""
    return gas_users(LABEL, n)


# The many-lanes batches: 62 accounts × 8 lanes, 496 entries (a batch holds 512).
SEVERAL_ACCOUNTS = 62
LANES = 8


def measure_settle_signed(n: int, many_lanes: bool = True) -> dict[str, int]:
    """Whole-transaction gas of four USDC `settle_signed` batches (see the module's doc;
    the last two only if `many_lanes`) and the calldata bytes of the one-lane steady batch."""
    world = build_vault_world(LABEL, n, 10_000)
    admin, usdc, vault, lot, accounts = world.admin, world.usdc, world.vault, world.lot, world.accounts
    keys = [keccak(text=f"vault signed gas session {i}") for i in range(n)]
    session_expiry = boa.env.evm.patch.timestamp + 86_400
    for account, key in zip(accounts, keys, strict=True):
        session_key = Account.from_key(key).address
        vault.set_session_key(usdc.address, session_key, LANES, BALANCE, session_expiry, sender=account)
    chain_id = vault.eip712Domain()[3]
    boa.env.time_travel(seconds=60)

    def batch(ceiling: int, amount: int, count: int = n, lanes: int = 1) -> tuple[int, bytes]:
        debits = [
            SignedDebit(
                account,
                lane,
                ceiling,
                amount,
                sign_voucher(
                    key,
                    chain_id=chain_id,
                    vault=vault.address,
                    account=account,
                    asset=usdc.address,
                    session=0,
                    lane=lane,
                    ceiling=ceiling,
                ),
            )
            for account, key in zip(accounts[:count], keys[:count], strict=True)
            for lane in range(lanes)
        ]
        epoch = vault.last_epoch(usdc.address) + 1
        args = (
            epoch,
            usdc.address,
            pack_signed_entries(debits),
            [pack_lot_amount(lot, amount * len(debits))],
            0,
            0,
            keccak(text=f"batch {epoch}"),
        )
        calldata = vault.settle_signed.prepare_calldata(*args)
        boa.env.evm.vm.state.lock_changes()
        boa.env.reset_gas_used()
        vault.settle_signed(*args, sender=admin)
        return boa.env.get_gas_used() + intrinsic_gas(calldata), calldata

    first, _ = batch(1_234_567, 1_234_567)
    steady, calldata = batch(3_580_245, 2_345_678)
    gas = {
        "first": first,
        "steady": steady,
        "calldata_bytes": len(calldata),
        "calldata_gas": intrinsic_gas(calldata) - 21_000,
    }
    if many_lanes:
        several = min(n, SEVERAL_ACCOUNTS)
        gas["several_entries"] = several * LANES
        gas["several_first"], _ = batch(6_000_000, 1_000_000, several, LANES)
        gas["several_steady"], _ = batch(8_000_000, 1_000_000, several, LANES)
    return gas


# Per entry in the steady state, by the gas schedule (EIP-2929, EIP-2200): the account slot
# read cold (2,100) and rewritten non-zero to non-zero (2,900), the session's hot word read
# cold (2,100); one ecrecover (3,000) through a call to a warm precompile (100).
STORAGE_PER_ENTRY = 2_100 + 2_900 + 2_100
ECRECOVER_PER_ENTRY = 3_000 + 100


def breakdown(gas: dict[str, int], n: int) -> dict[str, int]:
    """The steady batch's gas per entry: storage and signature recovery by the schedule,
    calldata as measured, and the rest (hashing, checks, the batch's fixed part / n)."""
    per_entry = gas["steady"] // n
    calldata = gas["calldata_gas"] // n
    return {
        "total": per_entry,
        "storage": STORAGE_PER_ENTRY,
        "ecrecover": ECRECOVER_PER_ENTRY,
        "calldata": calldata,
        "rest": per_entry - STORAGE_PER_ENTRY - ECRECOVER_PER_ENTRY - calldata,
    }


def measure(n: int, many_lanes: bool = True) -> dict[str, int]:
    """`measure_settle_signed` in a private titanoboa environment (committing state must not
    touch the snapshots a test's isolation keeps in the shared one)."""
    with boa.swap_env(boa.Env()):
        return measure_settle_signed(n, many_lanes)
