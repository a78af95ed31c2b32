"""The ledger's CPU per request, alone: the gateway's reserve + settle pair on SQLite.

    python bench/ledger_cpu.py                      # a table
    python bench/ledger_cpu.py --json --pairs 2000 --runs 3
    python bench/ledger_cpu.py --count              # also: statements a pair runs, by kind
    python bench/ledger_cpu.py --postgresql         # PostgreSQL's fast path: client and server CPU

One thread does what the gateway's ledger thread does for one request: on its pinned
connection (`Ledger.pinned_connection`), a reserve of a hold with a lot claim, then the
settle with its usage record — each its own transaction, or `--group N` of each in one
group commit (`Ledger.group`, a savepoint a write), as the thread does when N requests
queued meanwhile. CPU is the thread's own (`time.thread_time`), so what the machine's
other processes do moves it little; the wall time is printed too. Both `synchronous`
settings: FULL (the ledger's default: a commit survives power loss) and NORMAL (what the
gateway benchmark runs with). No network; bounded by `--pairs`. With --postgresql: a
throwaway local server with its durable defaults, one statement a reserve and a settle in
autocommit (no groups there), the client thread's CPU and the server's (every process of
the cluster, from /proc) a pair.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from eth_account import Account

from gateway import cpu_seconds  # bench/gateway.py: a process tree's CPU (the cluster's)
from promptex.ledger import Ledger, LotClaim, UsageRecord
from promptex.ledger.binding import sign

ASSET = "USDC"
LOT = 1
HOLD = 2_000
COST = 1_234
RECORD = UsageRecord("fake-gpt", 12, 30, 1_100, gateway_lot_id=LOT, chain_lot_id=1, lot_kind="listed", fee_bps=600)
CLAIM = LotClaim(LOT, 1_500)


@dataclass
class Result:
    synchronous: str
    group: int
    pairs: int
    reserve_us: float  # thread CPU a reserve, median of the runs
    settle_us: float
    pair_us: float
    pair_us_min: float  # the least disturbed run: the steadiest figure on a shared machine
    pair_us_runs: list[float]
    wall_us_per_pair: float


def _ledger(path: Path, synchronous: str, url: str | None = None) -> tuple[Ledger, int]:
    ledger = Ledger.open(url or f"sqlite:///{path}", sqlite_synchronous=synchronous)
    with ledger.engine.begin() as conn:
        ledger.open_lot_capacity(conn, LOT, 10**15, chain_lot_id=1)
    account = ledger.create_account().id
    wallet = Account.create()
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    ledger.credit_deposit("0x" + "11" * 32 + ":0", wallet.address, ASSET, 10**15)
    ledger.set_spend_cap(account, ASSET, 10**15)
    return ledger, account


@contextmanager
def _counting(ledger: Ledger) -> Iterator[collections.Counter[str]]:
    """Count the statements the pinned connection runs, by their first words."""
    counts: collections.Counter[str] = collections.Counter()
    pinned = ledger._pinned.conn  # the bench reaches in: the thread's own connection
    dbapi = pinned.connection.dbapi_connection

    def trace(sql: str) -> None:
        words = sql.split()
        counts[" ".join(words[:3]) if words[:1] == ["INSERT"] else " ".join(words[:2])] += 1

    dbapi.set_trace_callback(trace)
    try:
        yield counts
    finally:
        dbapi.set_trace_callback(None)


def _batch(ledger: Ledger, account: int, prefix: str, n: int, group: int) -> tuple[float, float]:
    """`n` pairs in groups of `group`; (reserve CPU, settle CPU) in seconds."""
    reserve_cpu = settle_cpu = 0.0
    ids = [f"{prefix}-{i}" for i in range(n)]
    for start in range(0, n, group):
        chunk = ids[start : start + group]
        grouped: Any = ledger.group if group > 1 else nullcontext
        t0 = time.thread_time()
        with grouped():
            for request_id in chunk:
                ledger.reserve(account, ASSET, HOLD, request_id, 600, lots=[CLAIM])
        t1 = time.thread_time()
        with grouped():
            for request_id in chunk:
                ledger.settle(request_id, COST, record=RECORD)
        t2 = time.thread_time()
        reserve_cpu += t1 - t0
        settle_cpu += t2 - t1
    return reserve_cpu, settle_cpu


def run(tmp: Path, synchronous: str, group: int, pairs: int, runs: int, count: bool) -> tuple[Result, dict[str, float]]:
    ledger, account = _ledger(tmp / f"{synchronous}-{group}.sqlite3", synchronous)
    per_pair: dict[str, float] = {}
    try:
        with ledger.pinned_connection():
            _batch(ledger, account, "warm", 200, group)
            reserves, settles, pair, walls = [], [], [], []
            for r in range(runs):
                wall = time.perf_counter()
                reserve_cpu, settle_cpu = _batch(ledger, account, f"run{r}", pairs, group)
                walls.append((time.perf_counter() - wall) / pairs)
                reserves.append(reserve_cpu / pairs)
                settles.append(settle_cpu / pairs)
                pair.append((reserve_cpu + settle_cpu) / pairs)
            if count:
                with _counting(ledger) as counts:
                    _batch(ledger, account, "count", 100, group)
                per_pair = {kind: n / 100 for kind, n in sorted(counts.items())}
        ledger.check()
    finally:
        ledger.close()
    us = 1e6
    return (
        Result(
            synchronous,
            group,
            pairs,
            round(statistics.median(reserves) * us, 1),
            round(statistics.median(settles) * us, 1),
            round(statistics.median(pair) * us, 1),
            round(min(pair) * us, 1),
            [round(p * us, 1) for p in pair],
            round(statistics.median(walls) * us, 1),
        ),
        per_pair,
    )


def run_postgresql(pairs: int, runs: int) -> dict[str, float]:
    from promptex.ledger.local_postgres import LocalPostgres

    with LocalPostgres(durable=True) as pg:
        url = pg.create_database("bench_cpu")
        postmaster = int((Path(str(pg.root)) / "data" / "postmaster.pid").read_text().split()[0])
        ledger, account = _ledger(Path(), "FULL", url)
        try:
            _batch(ledger, account, "warm", 200, 1)
            client, server = [], []
            for r in range(runs):
                cluster = cpu_seconds(postmaster)
                reserve_cpu, settle_cpu = _batch(ledger, account, f"run{r}", pairs, 1)
                server.append((cpu_seconds(postmaster) - cluster) / pairs)
                client.append((reserve_cpu + settle_cpu) / pairs)
            ledger.check()
        finally:
            ledger.close()
    return {
        "client_us_a_pair": round(statistics.median(client) * 1e6, 1),
        "client_us_a_pair_min": round(min(client) * 1e6, 1),
        "server_us_a_pair": round(statistics.median(server) * 1e6, 1),
    }


@click.command()
@click.option("--pairs", default=2_000, show_default=True, help="pairs a run")
@click.option("--runs", default=3, show_default=True, help="runs a setting (the median is reported)")
@click.option("--group", "groups", default="1,8", show_default=True, help="group commit sizes to run")
@click.option("--synchronous", "syncs", default="NORMAL,FULL", show_default=True)
@click.option("--count", is_flag=True, help="also count the statements a pair runs")
@click.option("--postgresql", is_flag=True, help="PostgreSQL instead (a local throwaway server)")
@click.option("--json", "as_json", is_flag=True)
def main(pairs: int, runs: int, groups: str, syncs: str, count: bool, postgresql: bool, as_json: bool) -> None:
    if postgresql:
        figures = run_postgresql(pairs, runs)
        print(json.dumps(figures) if as_json else f"PostgreSQL, a reserve+settle pair: {figures}")
        return
    results: list[Result] = []
    statements: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="promptex-ledger-cpu-") as tmp:
        for synchronous in syncs.split(","):
            for group in (int(g) for g in groups.split(",")):
                result, per_pair = run(Path(tmp), synchronous, group, pairs, runs, count)
                results.append(result)
                if per_pair:
                    statements[f"{synchronous}/{group}"] = per_pair
    if as_json:
        json.dump({"rows": [asdict(r) for r in results], "statements_per_pair": statements}, sys.stdout, indent=2)
        print()
        return
    for r in results:
        print(
            f"synchronous={r.synchronous:6} group={r.group:<3} reserve {r.reserve_us:6.1f} µs  "
            f"settle {r.settle_us:6.1f} µs  pair {r.pair_us:6.1f} µs CPU, min {r.pair_us_min:6.1f} "
            f"(runs {r.pair_us_runs}), "
            f"wall {r.wall_us_per_pair:.1f} µs a pair"
        )
    for setting, per_pair in statements.items():
        print(f"statements a pair, {setting}: " + ", ".join(f"{k} {v:g}" for k, v in per_pair.items()))


if __name__ == "__main__":
    main()
