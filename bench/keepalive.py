"""Keep-alive clients against a real `promptex gateway serve`: does every connection keep being answered?

    python bench/keepalive.py                                  # 300 clients, 6 keys, one address, SQLite
    python bench/keepalive.py --ledger postgresql --workers 2  # with PostgreSQL, two gateway processes
    python bench/keepalive.py --addresses 4                    # clients spread over 127.0.0.1-4
    python bench/keepalive.py --pool shared                    # one httpx pool for all: the generator stalls

The fake upstream and the gateway run in their own processes; this process only sends
load: `--clients` closed-loop clients, each sending one request after another on its own
keep-alive connection (`--pool own`: one httpx.AsyncClient per connection; `shared`: one
per address with a pool of all its connections). Every second it prints what was
answered, how many clients were answered in the last 5 s, how many wait and the longest
wait, the gateway's requests in flight (its metrics, summed over the workers), and its
connections (`ss`): established, with bytes the gateway has not read (srv_unread) or
answers the clients have not read (cli_unread), and which side closed the ones in
TIME-WAIT. Halfway a fresh connection's request is timed. A gap between the lines is
this process's own event loop stalled.

Why `own` by default: with ONE httpx.AsyncClient for 300 connections (pgbreak3's lab,
session 13) the generator itself stalls. httpcore's pool (1.0.9) scans every connection
for every request waiting for one, on each request's start and end, and checks each idle
connection with a poll; on a busy 2-core machine that work fell behind, the loop blocked
for 15-20 s at a time (py-spy: a third of its samples in `_assign_requests_to_connections`),
answers sat unread in the clients' sockets (cli_unread), the gateway had nothing in
flight and served a fresh connection at once, and the client's idle connections expired
meanwhile (closed by the client, never by the gateway). One client per connection: no stall.
Note: one address may open `PROMPTEX_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS` (256) connections
to each gateway process; pass `--addresses` or `--env` for more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx

from gateway import process  # bench/gateway.py: a server process, ready, then killed whole
from promptex.serving import free_port

BIN = Path(sys.executable).parent
MODEL = "gpt-5-mini"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def setup(workdir: Path, ledger_url: str, fake_url: str, keys: int, broke: int) -> list[str]:
    """One listed lot on the fake upstream and `keys` buyers, the last `broke` of them with
    nothing (their requests: 402); their API keys."""
    from eth_account import Account

    from promptex.config import Settings
    from promptex.gateway.buyers import signup
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger
    from promptex.ledger.binding import sign
    from promptex.sealing.envelope import load_master_keys
    from promptex.sellers import Capacity, SellerStore

    s = Settings(ledger_url=ledger_url, gateway_master_key_file=workdir / "master.key")
    now = int(time.time())
    found = []
    with Ledger.open(ledger_url, sqlite_synchronous="NORMAL") as ledger:
        store = GatewayStore(ledger.engine)
        capacity = Capacity(
            "openai", "openai", fake_url, "sk-fake-bench", 10**15, "listed", 6000, now + 30 * 86_400,
            "0x" + "33" * 20, True,
        )  # fmt: skip
        sellers = SellerStore(ledger.engine)
        lot = sellers.record_lot(
            load_master_keys(None, s.gateway_master_key_file), capacity, route_until=capacity.expires_at, now=now
        )
        sellers.confirm_open(lot, 1, now)  # as the chain would (no chain here)
        for i in range(keys):
            new = signup(ledger, store, now)
            found.append(new.key)
            if i >= keys - broke:
                continue
            wallet = Account.create()
            message = ledger.issue_binding_challenge(new.account, wallet.address)
            ledger.bind_wallet(message, sign(message, wallet.key))
            ledger.credit_deposit(f"0x{secrets.token_hex(32)}:0", wallet.address, "USDC", 10**12)
            ledger.set_spend_cap(new.account, "USDC", 10**12)
    return found


@dataclass
class Seen:
    statuses: collections.Counter[object] = field(default_factory=collections.Counter)
    answered: list[int] = field(default_factory=list)  # per client: answers
    last: list[float] = field(default_factory=list)  # per client: when its last answer came
    sent: list[float] = field(default_factory=list)  # per client: when its request in flight was sent (0: none)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def sockets(port: int) -> dict[str, int]:
    """The gateway's connections (ss): established ones with bytes the gateway has not read
    (srv_unread) or answers the clients have not read (cli_unread); and which side closed
    the ones in TIME-WAIT (the side that closes first keeps it)."""
    out = subprocess.run(["ss", "-tanH"], capture_output=True, text=True, check=False).stdout
    q = collections.Counter[str]()
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 5:
            continue
        state, recv, local, peer = cols[0], int(cols[1]), cols[3], cols[4]
        server, client = local.endswith(f":{port}"), peer.endswith(f":{port}")
        if state == "ESTAB":
            q["conns"] += server
            q["srv_unread"] += server and recv > 0
            q["cli_unread"] += client and recv > 0
        elif state == "TIME-WAIT":
            q["closed_by_srv"] += server
            q["closed_by_cli"] += client
    return dict(q)


def activity(url: str) -> dict[str, int]:
    """PostgreSQL's sessions of the ledger's database by state and wait (pg_stat_activity)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(state, '?') || '/' || coalesce(wait_event_type, '-'), count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1"
        ).fetchall()
    return {f"pg:{name}": int(count) for name, count in rows}


async def load(
    url: str, keys: list[str], clients: int, addresses: int, pool: str, seconds: float, metrics: list[str], port: int,
    database: str | None,
) -> Seen:  # fmt: skip
    seen = Seen(answered=[0] * clients, last=[time.monotonic()] * clients, sent=[0.0] * clients)
    stop = asyncio.Event()
    made: list[httpx.AsyncClient] = []

    def client(address: str, size: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        transport = httpx.AsyncHTTPTransport(local_address=address, limits=limits)
        made.append(httpx.AsyncClient(transport=transport, timeout=120))
        return made[-1]

    address_of = [f"127.0.0.{1 + i % addresses}" for i in range(clients)]
    if pool == "shared":
        per = collections.Counter(address_of)
        shared = {a: client(a, n) for a, n in per.items()}
        mine = [shared[a] for a in address_of]
    else:
        mine = [client(a, 1) for a in address_of]

    async def one(i: int) -> None:
        headers = {"authorization": f"Bearer {keys[i % len(keys)]}"}
        while not stop.is_set():
            seen.sent[i] = time.monotonic()
            try:
                r = await mine[i].post(url, headers=headers, json=BODY)
                seen.statuses[r.status_code] += 1
                if r.status_code not in (200, 402) and seen.statuses[r.status_code] <= 3:
                    click.echo(f"client {i}: {r.status_code} {r.text[:200]!r}")
            except httpx.HTTPError as exc:
                seen.statuses[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
            seen.sent[i] = 0.0
            seen.answered[i] += 1
            seen.last[i] = time.monotonic()

    async def watch() -> None:
        scrape = httpx.AsyncClient(timeout=2)
        before: collections.Counter[object] = collections.Counter()
        t0 = time.monotonic()
        head = f"{'t':>4} {'answers/s':>30} {'fresh5s':>7} {'waiting':>7} {'maxwait':>7} {'gw_inflight':>11}"
        click.echo(head + " sockets / database")
        while not stop.is_set():
            await asyncio.sleep(1)
            now = time.monotonic()
            delta = seen.statuses - before
            before = collections.Counter(seen.statuses)
            fresh = sum(1 for t in seen.last if now - t < 5)
            waiting = [now - t for t in seen.sent if t]
            inflight = 0.0
            for m in metrics:
                with contextlib.suppress(httpx.HTTPError):
                    inflight += _metric((await scrape.get(m)).text, "promptex_gateway_requests_in_flight")
            queues = await asyncio.to_thread(sockets, port)
            for c in made[:1] if pool == "shared" else ():  # the client's pool: requests queued for a connection
                inner = c._transport._pool  # type: ignore[attr-defined]
                queues["pool_queued"] = sum(1 for r in inner._requests if r.is_queued())
                queues["pool_conns"] = len(inner._connections)
                queues["pool_idle"] = sum(1 for x in inner._connections if x.is_idle())
            if database:
                queues.update(await asyncio.to_thread(activity, database))
            click.echo(
                f"{now - t0:4.0f} {dict(delta)!s:>30} {fresh:7d} {len(waiting):7d} {max(waiting, default=0):7.1f} "
                f"{inflight:11.0f} {queues}"
            )
        await scrape.aclose()

    async def probe() -> None:  # a fresh connection's request, mid-run
        await asyncio.sleep(seconds / 2)
        async with httpx.AsyncClient(timeout=30) as fresh:
            began = time.monotonic()
            try:
                r = await fresh.post(url, headers={"authorization": f"Bearer {keys[0]}"}, json=BODY)
                got: object = r.status_code
            except httpx.HTTPError as exc:
                got = type(exc).__name__
            click.echo(f"probe: a fresh connection mid-run: {got} in {time.monotonic() - began:.2f} s")

    async def timer() -> None:
        await asyncio.sleep(seconds)
        stop.set()

    tasks = [asyncio.ensure_future(one(i)) for i in range(clients)]
    await asyncio.gather(watch(), timer(), probe())
    _, pending = await asyncio.wait(tasks, timeout=10)
    for task in pending:  # a request still waiting: the stall itself
        task.cancel()
    for c in made:
        await c.aclose()
    click.echo(f"clients still waiting at the end: {len(pending)}")
    return seen


@click.command()
@click.option("--clients", default=300, show_default=True)
@click.option("--keys", default=6, show_default=True)
@click.option("--broke", default=0, show_default=True, help="of the keys, how many have no money (402s)")
@click.option("--addresses", default=1, show_default=True, help="spread clients over 127.0.0.1..N")
@click.option("--pool", type=click.Choice(["own", "shared"]), default="own", show_default=True)
@click.option("--workers", default=1, show_default=True)
@click.option("--ledger", "ledger_kind", type=click.Choice(["sqlite", "postgresql"]), default="sqlite")
@click.option("--latency-ms", default=500.0, show_default=True)
@click.option("--seconds", default=30.0, show_default=True)
@click.option("--default-shares", is_flag=True, help="keep the gateway's per-key/per-address in-flight shares")
@click.option("--env", "extra", multiple=True, help="NAME=VALUE for the gateway (PROMPTEX_…)")
def main(
    clients: int, keys: int, broke: int, addresses: int, pool: str, workers: int, ledger_kind: str, latency_ms: float,
    seconds: float, default_shares: bool, extra: tuple[str, ...],
) -> None:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="promptex-keepalive-") as tmp:
        workdir = Path(tmp)
        fake_port = free_port()
        fake_url = f"http://127.0.0.1:{fake_port}/v1"
        fake = [str(BIN / "promptex"), "fake-upstream", "--port", str(fake_port), "--latency-ms", str(latency_ms)]
        with process(fake, dict(os.environ), f"http://127.0.0.1:{fake_port}/", log=workdir / "fake.log"):
            postgres = None
            if ledger_kind == "postgresql":
                from promptex.ledger.local_postgres import LocalPostgres

                postgres = LocalPostgres().start()
                ledger_url = postgres.create_database("keepalive")
            else:
                ledger_url = f"sqlite:///{workdir}/ledger.sqlite3"
            try:
                api_keys = setup(workdir, ledger_url, fake_url, keys, broke)
                port, mport = free_port(), free_port()
                env = {
                    **os.environ,
                    "PROMPTEX_LEDGER_URL": ledger_url,
                    "PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS": "NORMAL",
                    "PROMPTEX_GATEWAY_MASTER_KEY_FILE": str(workdir / "master.key"),
                    "PROMPTEX_GATEWAY_DEFAULT_ASSET": "USDC",
                    "PROMPTEX_GATEWAY_LOT_MAX_INFLIGHT": "100000",
                    "PROMPTEX_GATEWAY_MAX_INFLIGHT": "100000",
                    "PROMPTEX_GATEWAY_METRICS_PORT": str(mport),
                }
                if not default_shares:
                    env["PROMPTEX_GATEWAY_MAX_INFLIGHT_PER_KEY"] = "100000"
                    env["PROMPTEX_GATEWAY_MAX_INFLIGHT_PER_ADDRESS"] = "100000"
                env.update(item.split("=", 1) for item in extra)  # type: ignore[misc]
                serve = [str(BIN / "promptex"), "gateway", "serve", "--port", str(port), "--workers", str(workers)]
                base = f"http://127.0.0.1:{port}"
                with process(serve, env, base + "/healthz", log=workdir / "gateway.log") as gateway:
                    click.echo(f"gateway pid {gateway.pid}, fake upstream on {fake_port}, gateway on {port}")
                    metrics = [f"http://127.0.0.1:{mport + i}/metrics" for i in range(workers)]
                    seen = asyncio.run(
                        load(
                            base + "/v1/chat/completions",
                            api_keys,
                            clients,
                            addresses,
                            pool,
                            seconds,
                            metrics,
                            port,
                            ledger_url if postgres is not None else None,
                        )
                    )
                    began = time.monotonic()
                    r = httpx.post(
                        base + "/v1/chat/completions",
                        headers={"authorization": f"Bearer {api_keys[0]}"},
                        json=BODY,
                        timeout=30,
                    )
                    click.echo(f"a fresh connection afterwards: {r.status_code} in {time.monotonic() - began:.2f} s")
                    counts = sorted(seen.answered)
                    click.echo(f"statuses: {dict(seen.statuses)}")
                    click.echo(
                        f"answers per client: min {counts[0]}, median {counts[len(counts) // 2]}, max {counts[-1]}; "
                        f"clients answered at most twice: {sum(1 for c in counts if c <= 2)}"
                    )
                click.echo((workdir / "gateway.log").read_text()[-3000:])
            finally:
                if postgres is not None:
                    postgres.stop()


if __name__ == "__main__":
    main()
