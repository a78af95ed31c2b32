"""One epoch of signed mode at scale (issue 23): 100,000 active accounts settled by
`settle_signed` batches, priced on an L2.

    python bench/signed_epoch.py [--accounts 100000] [--lanes 1]

What is measured here, on this machine:
- gas: a full batch of MAX_SIGNED_ENTRIES (512) distinct accounts, steady state (every
  lane already used in its session), on titanoboa with every slot cold — the scenario
  `tests/contracts/test_vault_signed_gas.py` pins at 500; the last, partial batch is
  priced from the same run's per-entry figure;
- calldata: the exact bytes of each batch's `settle_signed` call, and how well they
  compress (zlib level 9, standing in for the rollup batcher's compressor: signatures and
  addresses are random, so little of an entry compresses);
- the coordinator's time to plan and sign the epoch in Python: sort and pack every lane's
  debit into entries, split them into batches, ABI-encode each call and sign each
  transaction (eth_account). Buyers' vouchers are signed by their own session keys, not
  the coordinator: the entries carry random signature-shaped bytes.

The L2 cost model (an OP-Stack chain such as Base after Ecotone/Fjord; the constants are
assumptions, change them below):
- execution: gas × L2 gas price; two cases: QUIET 0.005 gwei, BUSY 0.05 gwei;
- L1 data: each byte the batcher posts, after compression, costs blob gas (1 per byte) ×
  the L1 blob base fee × BLOB_FEE_SCALAR; QUIET 1 gwei, BUSY 30 gwei, scalar 1.0 (Base's
  blob fee scalar is of that order; the base-fee component on calldata is ignored, since
  batches go to blobs);
- ETH at 3,000 USD.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import click
from eth_abi.abi import encode
from eth_account import Account
from eth_utils.crypto import keccak

from promptex.chain.gas.vault_signed import measure
from promptex.protocol.vault import MAX_SIGNED_ENTRIES, SignedDebit, pack_signed_entries

ETH_USD = 3_000
GWEI = 10**-9
BLOB_FEE_SCALAR = 1.0
SMALL = 16  # a second, small batch: the fixed part of a batch and the per-entry slope


@dataclass(frozen=True)
class Prices:
    name: str
    l2_gas_gwei: float
    blob_base_fee_gwei: float


CASES = (Prices("quiet", 0.005, 1.0), Prices("busy", 0.05, 30.0))
SETTLE_SIGNED_TYPES = [
    "uint256",
    "address",
    "(uint256,uint256,uint256,uint256)[]",
    "uint256[]",
    "uint256",
    "uint256",
    "bytes32",
]
SELECTOR = keccak(
    text="settle_signed(uint256,address,(uint256,uint256,uint256,uint256)[],uint256[],uint256,uint256,bytes32)"
)[:4]


def _signature(i: int) -> bytes:
    """A voucher signature's shape (random r, low s): the coordinator does not recover
    vouchers here (the gateway did), and distinct random bytes keep the compression
    figure honest (a pool of reused signatures would compress away)."""
    r = keccak(text=f"r {i}")
    s = (int.from_bytes(keccak(text=f"s {i}"), "big") >> 2).to_bytes(32, "big")
    return r + s + bytes([27 + (i & 1)])


def plan_and_sign(accounts: int, lanes: int) -> tuple[float, list[bytes]]:
    """The coordinator's work for one epoch: every (account, lane) debit sorted and packed,
    split into batches, each call encoded and its transaction signed. Returns the seconds
    it took and each batch's calldata."""
    wallet = Account.from_key(keccak(text="signed epoch coordinator"))
    asset = "0x" + "22" * 20
    debits = [
        SignedDebit(
            "0x" + keccak(text=f"epoch account {a}")[-20:].hex(),
            lane,
            # Ceilings and amounts of a few dollars that differ per lane, as in real traffic.
            3_000_000 + int.from_bytes(keccak(text=f"c {a} {lane}")[:3], "big"),
            1_000_000 + int.from_bytes(keccak(text=f"m {a} {lane}")[:2], "big"),
            _signature(a * lanes + lane),
        )
        for a in range(accounts)
        for lane in range(lanes)
    ]
    started = time.perf_counter()
    entries = sorted(_pack_all(debits))
    calldata = []
    for number, start in enumerate(range(0, len(entries), MAX_SIGNED_ENTRIES)):
        batch = entries[start : start + MAX_SIGNED_ENTRIES]
        total = sum(e[1] & (2**128 - 1) for e in batch)
        data = SELECTOR + encode(
            SETTLE_SIGNED_TYPES,
            [number + 1, asset, batch, [(1 << 160) | total], 0, 0, keccak(text=f"root {number}")],
        )
        tx = {
            "to": asset,
            "data": data,
            "gas": 10_000_000,
            "maxFeePerGas": 10**8,
            "maxPriorityFeePerGas": 10**6,
            "nonce": number,
            "chainId": 8453,
            "value": 0,
        }
        wallet.sign_transaction(tx)
        calldata.append(data)
    return time.perf_counter() - started, calldata


def _pack_all(debits: list[SignedDebit]) -> list[tuple[int, int, int, int]]:
    # pack_signed_entries checks one batch's size; the epoch is split after sorting.
    packed: list[tuple[int, int, int, int]] = []
    for start in range(0, len(debits), MAX_SIGNED_ENTRIES):
        packed.extend(pack_signed_entries(debits[start : start + MAX_SIGNED_ENTRIES]))
    return packed


@click.command()
@click.option("--accounts", default=100_000, show_default=True, help="active signed-mode accounts in the epoch")
@click.option("--lanes", default=1, show_default=True, help="lanes used per account (1: the worst case per entry)")
def main(accounts: int, lanes: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=110)
    console.print(f"measuring batches of {SMALL} and {MAX_SIGNED_ENTRIES} entries on titanoboa …")
    batch_gas = measure(MAX_SIGNED_ENTRIES, many_lanes=False)["steady"]
    small_gas = measure(SMALL, many_lanes=False)["steady"]
    per_entry = batch_gas / MAX_SIGNED_ENTRIES
    marginal = (batch_gas - small_gas) / (MAX_SIGNED_ENTRIES - SMALL)
    fixed = small_gas - SMALL * marginal

    console.print(f"planning and signing {accounts:,} accounts × {lanes} lane(s) …")
    seconds, calldata = plan_and_sign(accounts, lanes)
    entries = accounts * lanes
    full, rest = divmod(entries, MAX_SIGNED_ENTRIES)
    batches = full + (1 if rest else 0)
    total_gas = full * batch_gas + (round(fixed + rest * marginal) if rest else 0)
    raw_bytes = sum(len(d) for d in calldata)
    compressed = sum(len(zlib.compress(d, 9)) for d in calldata)

    table = Table(title=f"signed mode, one epoch: {accounts:,} accounts × {lanes} lane(s)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("entries (lanes settled)", f"{entries:,}")
    table.add_row(f"batches of ≤ {MAX_SIGNED_ENTRIES}", f"{batches:,}")
    table.add_row(f"gas, one full batch (measured, {MAX_SIGNED_ENTRIES} accounts)", f"{batch_gas:,}")
    table.add_row("gas per entry (that batch)", f"{per_entry:,.0f}")
    table.add_row(
        f"… a batch's fixed part / each entry (from {SMALL} vs {MAX_SIGNED_ENTRIES})", f"{fixed:,.0f} / {marginal:,.0f}"
    )
    table.add_row("gas, the epoch", f"{total_gas:,}")
    table.add_row("calldata, the epoch (bytes)", f"{raw_bytes:,}")
    table.add_row("… compressed (zlib 9)", f"{compressed:,} ({compressed / raw_bytes:.0%})")
    table.add_row("coordinator: plan + encode + sign (s)", f"{seconds:.2f}")
    for case in CASES:
        execution = total_gas * case.l2_gas_gwei * GWEI * ETH_USD
        data = compressed * case.blob_base_fee_gwei * GWEI * BLOB_FEE_SCALAR * ETH_USD
        table.add_row(
            f"cost, {case.name} (L2 {case.l2_gas_gwei} gwei, blob {case.blob_base_fee_gwei} gwei)",
            f"${execution + data:,.2f} (exec ${execution:,.2f} + data ${data:,.2f}; "
            f"${(execution + data) / accounts * 1000:,.3f} per 1,000 accounts)",
        )
    console.print(table)


if __name__ == "__main__":
    main()
