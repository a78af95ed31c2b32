"""Ledger throughput: reserve+settle pairs per second, SQLite and PostgreSQL, 1 and 8 writers.

    python bench/ledger.py                   # a table
    python bench/ledger.py --json            # the same figures as JSON
    python bench/ledger.py --seconds 3 --pairs 1000

Each writer is a thread with its own account (a gateway serving many users), doing
reserve → settle in two transactions, as the gateway does per request; the "shared"
row has all writers spend from one org balance (the hottest row there is). Each run
stops after `--pairs` pairs or `--seconds`, whichever comes first. SQLite runs with
synchronous=FULL (the default: a commit survives power loss) and NORMAL; PostgreSQL
is a throwaway local server with its default durable settings. Bounded in count and
time; no network but the loopback.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from eth_account import Account

from promptex.ledger import AccountKind, Ledger
from promptex.ledger.binding import sign
from promptex.ledger.local_postgres import LocalPostgres, PostgresUnavailable

ASSET = "CLD"
HOLD = 10**18
COST = 123_456_789_012_345_678
FUNDS = 10**30


@dataclass
class Result:
    database: str
    writers: int
    accounts: str
    pairs: int
    seconds: float
    pairs_per_second: float
    p50_ms: float
    p99_ms: float


def _funded_account(ledger: Ledger, index: int, kind: AccountKind = AccountKind.USER) -> int:
    account = ledger.create_account(kind, f"bench-{index}" if kind != AccountKind.USER else None).id
    wallet = Account.create()
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    ledger.credit_deposit(f"bench-deposit-{index}", wallet.address, ASSET, FUNDS)
    ledger.set_spend_cap(account, ASSET, FUNDS)
    return account


def run(
    url: str, database: str, writers: int, shared: bool, max_pairs: int, max_seconds: float, **open_kw: str
) -> Result:
    ledger = Ledger.open(url, pool_size=max(writers, 2), **open_kw)  # type: ignore[arg-type]
    try:
        if shared:
            org = _funded_account(ledger, 0, AccountKind.ORG)
            spenders = [ledger.create_account().id for _ in range(writers)]
            for member in spenders:
                ledger.add_member(org, member)
            payers = [org] * writers
        else:
            spenders = payers = [_funded_account(ledger, i) for i in range(writers)]

        share = max_pairs // writers
        latencies: list[list[float]] = [[] for _ in range(writers)]
        barrier = threading.Barrier(writers + 1)
        deadline = 0.0

        def writer(w: int) -> None:
            barrier.wait()
            for i in range(share):
                if time.perf_counter() > deadline:
                    break
                started = time.perf_counter()
                request_id = f"w{w}-{i}"
                ledger.reserve(spenders[w], ASSET, HOLD, request_id, ttl=600, payer=payers[w])
                ledger.settle(request_id, COST)
                latencies[w].append(time.perf_counter() - started)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        deadline = time.perf_counter() + max_seconds
        start = time.perf_counter()
        barrier.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        ledger.check()
        samples = sorted(x for per_writer in latencies for x in per_writer)
        pairs = len(samples)
        p99 = samples[min(pairs - 1, int(pairs * 0.99))] if pairs else 0.0
        return Result(
            database,
            writers,
            "shared" if shared else "own",
            pairs,
            round(elapsed, 2),
            round(pairs / elapsed, 1),
            round(statistics.median(samples) * 1000, 2) if samples else 0.0,
            round(p99 * 1000, 2),
        )
    finally:
        ledger.close()


@click.command()
@click.option("--pairs", default=2_000, show_default=True, help="most reserve+settle pairs per run")
@click.option("--seconds", default=5.0, show_default=True, help="most seconds per run")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
def main(pairs: int, seconds: float, as_json: bool) -> None:
    results: list[Result] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="promptex-bench-") as tmp:
        for synchronous in ("FULL", "NORMAL"):
            for writers, shared in ((1, False), (8, False), (8, True)):
                url = f"sqlite:///{Path(tmp) / f'{synchronous}-{writers}-{shared}.sqlite3'}"
                label = f"sqlite {synchronous}"
                results.append(run(url, label, writers, shared, pairs, seconds, sqlite_synchronous=synchronous))
    try:
        with LocalPostgres(durable=True) as pg:
            for n, (writers, shared) in enumerate(((1, False), (8, False), (8, True))):
                url = pg.create_database(f"bench_{n}")
                results.append(run(url, "postgresql", writers, shared, pairs, seconds))
    except PostgresUnavailable as exc:
        notes.append(f"PostgreSQL skipped: {exc}")

    if as_json:
        json.dump({"rows": [asdict(r) for r in results], "notes": notes}, sys.stdout, indent=2)
        print()
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reserve+settle pairs/s (≤ {pairs:,} pairs or {seconds:g} s a run)", box=box.SIMPLE_HEAD)
    for column in ("database", "writers", "accounts", "pairs", "seconds", "pairs/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column in ("database", "accounts") else "right", no_wrap=True)
    for r in results:
        table.add_row(
            r.database,
            str(r.writers),
            r.accounts,
            f"{r.pairs:,}",
            f"{r.seconds:.2f}",
            f"{r.pairs_per_second:,.1f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
        )
    console = Console(width=max(Console().width, 100))
    console.print(table)
    for note in notes:
        console.print(note)


if __name__ == "__main__":
    main()
