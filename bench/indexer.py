"""Indexer catch-up from anvil: events/s over 100,000 vault-shaped events, and blocks/s
over empty blocks.

    python bench/indexer.py                        # a table
    python bench/indexer.py --json                 # the same figures as JSON
    python bench/indexer.py --events 20000 --empty-blocks 2000

A fresh anvil (the npm binary, or one on PATH) runs `contracts/test/VaultEventEmitter.vy`,
compiled with vyper and followed as "the vault": each transaction logs thousands of
`Deposited` events (100 accounts, round-robin), so every event has its ledger effect
(a deposit row and a journal entry). Generating them is not timed; the catch-up is:
JSON-RPC (headers batch + eth_getLogs), decoding, and one SQLite transaction per batch
with the ledger's default synchronous=FULL (or --sqlite-synchronous NORMAL).
"dense" is the 100,000 events; "sparse" is as many empty blocks (anvil_mine) after them.
No network but the loopback; the target is ≥ 5,000 events/s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import vyper
from eth_abi.abi import encode
from eth_utils.crypto import keccak

from promptex.indexer import Followed, Indexer, Options, RpcClient
from promptex.ledger import Ledger
from promptex.serving import free_port

ROOT = Path(__file__).resolve().parents[1]
ANVIL = ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
EMITTER = ROOT / "contracts/test/VaultEventEmitter.vy"
USDC = "0x000000000000000000000000000000000000dEaD"  # any address: the asset the events name
PER_TX = 4_000  # ~11M gas: fits anvil's 30M block gas limit
ACCOUNTS = 100


@dataclass
class Row:
    scenario: str
    events: int
    blocks: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def blocks_per_second(self) -> float:
        return self.blocks / self.seconds


def _start_anvil() -> tuple[subprocess.Popen[bytes], RpcClient]:
    binary = str(ANVIL) if ANVIL.exists() else shutil.which("anvil")
    if binary is None:
        raise SystemExit("anvil not installed: `npm ci` installs it")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--silent"], stdout=subprocess.DEVNULL)
    rpc = RpcClient(f"http://127.0.0.1:{port}", timeout=120)
    for _ in range(200):
        try:
            rpc.block_number()
            return proc, rpc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("anvil did not start")


def _send(rpc: RpcClient, sender: str, tx: dict[str, str]) -> dict[str, str]:
    tx_hash = rpc.call("eth_sendTransaction", [{"from": sender, "gas": hex(29_000_000), **tx}])
    receipt: dict[str, str] | None = None
    while receipt is None:  # anvil answers before a big transaction is mined
        receipt = rpc.call("eth_getTransactionReceipt", [tx_hash]) or time.sleep(0.01)
    if receipt["status"] != "0x1":
        raise SystemExit(f"transaction {tx_hash} failed")
    return receipt


def _generate(rpc: RpcClient, events: int) -> tuple[str, list[dict[str, object]], int]:
    """Deploy the emitter and log `events` deposits; returns (address, ABI, deploy block)."""
    compiled = vyper.compile_code(EMITTER.read_text(), output_formats=["bytecode", "abi"])
    sender = rpc.call("eth_accounts")[0]
    receipt = _send(rpc, sender, {"data": compiled["bytecode"]})
    emitter, block = receipt["contractAddress"], int(receipt["blockNumber"], 16)
    selector = keccak(text="emit_deposits(address,uint256,uint256)")[:4]
    left = events
    while left:
        count = min(PER_TX, left)
        data = selector + encode(["address", "uint256", "uint256"], [USDC, ACCOUNTS, count])
        _send(rpc, sender, {"to": emitter, "data": "0x" + data.hex()})
        left -= count
    return emitter, compiled["abi"], block


def _timed(indexer: Indexer, scenario: str) -> Row:
    start = time.perf_counter()
    totals = indexer.catch_up()
    return Row(scenario, totals.events, totals.blocks, time.perf_counter() - start)


def run(events: int, empty_blocks: int, synchronous: str) -> list[Row]:
    proc, rpc = _start_anvil()
    try:
        emitter, abi, deployed = _generate(rpc, events)
        followed = Followed.build(
            {"CreditsVault": abi}, {emitter: "CreditsVault"}, {USDC: "USDC"}, vault=emitter, usdc=USDC
        )
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Ledger.open(f"sqlite:///{tmp}/ledger.sqlite3", sqlite_synchronous=synchronous)
            indexer = Indexer(ledger, rpc, followed, Options(start_block=deployed))
            rows = [_timed(indexer, "dense")]
            for start in range(0, empty_blocks, 1_000):  # anvil mines big counts slowly
                rpc.call("anvil_mine", [hex(min(1_000, empty_blocks - start))])
            rows.append(_timed(indexer, "sparse"))
            deposited = -ledger.system_balance("vault", "USDC")
            ledger.close()
        if deposited != events:
            raise SystemExit(f"the ledger holds {deposited} deposits, the chain {events}")
        return rows
    finally:
        rpc.close()
        proc.terminate()
        proc.wait(timeout=10)


@click.command()
@click.option("--events", default=100_000, show_default=True, help="vault-shaped events to catch up over")
@click.option("--empty-blocks", default=5_000, show_default=True, help="empty blocks after them")
@click.option("--sqlite-synchronous", type=click.Choice(["FULL", "NORMAL"]), default="FULL", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def main(events: int, empty_blocks: int, sqlite_synchronous: str, as_json: bool) -> None:
    rows = run(events, empty_blocks, sqlite_synchronous)
    if as_json:
        json.dump(
            [
                {**asdict(r), "events_per_second": r.events_per_second, "blocks_per_second": r.blocks_per_second}
                for r in rows
            ],
            sys.stdout,
            indent=2,
        )
        print()
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"indexer catch-up from anvil (SQLite synchronous={sqlite_synchronous})")
    for column in ("scenario", "events", "blocks", "seconds", "events/s", "blocks/s"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for r in rows:
        table.add_row(
            r.scenario,
            f"{r.events:,}",
            f"{r.blocks:,}",
            f"{r.seconds:.2f}",
            f"{r.events_per_second:,.0f}",
            f"{r.blocks_per_second:,.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
