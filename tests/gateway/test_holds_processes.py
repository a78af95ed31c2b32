"""Holds and lot capacity across real gateway processes (`promptex gateway serve`), each
its own interpreter: two processes on PostgreSQL share a lot's capacity exactly; one
process per SQLite file (a second refuses to start); a gateway killed with requests in
flight leaves holds that a restarted gateway ends as it starts (on SQLite every active hold
then is a dead process's), long before their lifetime ends, and the funds are spendable
again (and a signed-mode lane in flight is free again)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from sqlalchemy import func, select

from polling import until
from promptex.fakes import FakeUpstreamConfig
from promptex.gateway.keys import hash_key, new_api_key
from promptex.gateway.store import GatewayStore
from promptex.gateway.vouchers import VOUCHER_HEADER
from promptex.ledger import Ledger
from promptex.ledger.binding import sign
from promptex.ledger.local_postgres import LocalPostgres
from promptex.ledger.schema import holds
from promptex.protocol.units import USD_MICRO as USDC
from promptex.protocol.vault import sign_voucher
from promptex.sealing.envelope import load_master_keys
from promptex.sellers import Capacity, SellerStore
from promptex.serving import free_port

from .conftest import CATALOG, CHAIN_LOTS, SELLER_KEY, Fake, _start_fake, event_id

HELLO = [{"role": "user", "content": "hi"}]
FLAT_OUT = 16  # fake-flat prices output only: 16 output tokens' hold is their exact cost
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"


@pytest.fixture
def slow_fake() -> Iterator[Fake]:
    """A fake upstream that answers after 30 s: requests stay in flight."""
    yield from _start_fake(FakeUpstreamConfig(api_keys=frozenset({SELLER_KEY}), latency_ms=30_000))


def _env(tmp_path: Path, url: str, **settings: object) -> dict[str, str]:
    env = {
        **os.environ,
        "PROMPTEX_LEDGER_URL": url,
        "PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS": "NORMAL",
        "PROMPTEX_MODEL_CATALOG": str(CATALOG),
        "PROMPTEX_GATEWAY_MASTER_KEY_FILE": str(tmp_path / "master.key"),
        "PROMPTEX_GATEWAY_DEFAULT_ASSET": "USDC",
        "PROMPTEX_GATEWAY_KEY_CACHE_SECONDS": "0",
        "PROMPTEX_GATEWAY_SHED_WAIT_MS": "10000",  # a busy test machine must not shed load
        "PROMPTEX_GATEWAY_SHED_ACCEPT_BACKLOG": "10000",
        "PROMPTEX_GATEWAY_LOT_MAX_INFLIGHT": "100000",
        "PROMPTEX_GATEWAY_MAX_INFLIGHT": "100000",
        "PROMPTEX_GATEWAY_MAX_INFLIGHT_PER_KEY": "100000",
        "PROMPTEX_GATEWAY_MAX_INFLIGHT_PER_ADDRESS": "100000",
        "PROMPTEX_GATEWAY_METRICS_PORT": "0",
    }
    env.update({f"PROMPTEX_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def _start(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "promptex.cli", "gateway", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def gateway(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A `promptex gateway serve` process, once it answers; stopped (SIGTERM) after."""
    port = free_port()
    proc = _start(env, port)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the gateway exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the gateway did not start")
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _market(ledger: Ledger, tmp_path: Path, fake: Fake, face_value: int, funds: int) -> tuple[int, int, str]:
    """One listed lot of `face_value` (USD micro at list price) and a buyer with `funds`
    USDC; returns (lot id, account, API key)."""
    store = GatewayStore(ledger.engine)
    now = int(time.time())
    capacity = Capacity(
        "openai", "openai", fake.url, SELLER_KEY, face_value, "listed", 6000, now + 30 * 86_400,
        Account.create().address, True,
    )  # fmt: skip
    keys = load_master_keys(None, tmp_path / "master.key")
    sellers = SellerStore(ledger.engine)  # recorded and opened (no chain here) as the sellers' path does
    lot = sellers.record_lot(keys, capacity, route_until=capacity.expires_at, now=now)
    sellers.confirm_open(lot, CHAIN_LOTS + lot, now)
    account = ledger.create_account().id
    wallet = Account.create()
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    ledger.credit_deposit(event_id(), wallet.address, "USDC", funds)
    ledger.set_spend_cap(account, "USDC", funds)
    key = new_api_key()
    store.add_api_key(hash_key(key), key[:10], account, now)
    return lot, account, key


def _signed_buyer(ledger: Ledger, funds: int) -> tuple[int, str, Callable[[int, int], str]]:
    """A signed-mode buyer (issue 23): (account, API key, voucher(lane, ceiling) → header)."""
    account = ledger.create_account().id
    wallet, session_key = Account.create(), Account.create()
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    ledger.credit_deposit(event_id(), wallet.address, "USDC", funds)
    domain = {"chain_id": 31_337, "vault": "0x" + "ab" * 20}
    token = "0x" + "cd" * 20
    ledger.register_session(
        event_id(), address=wallet.address, asset="USDC", asset_address=token, key=session_key.address, session=1,
        lanes=1, maximum=funds, expiry=int(time.time()) + 3_600, signed_from=1, **domain,
    )  # fmt: skip

    def voucher(lane: int, ceiling: int) -> str:
        fields = {"account": wallet.address, "asset": token, "session": 1, "lane": lane, "ceiling": ceiling}
        signature = sign_voucher(session_key.key, **domain, **fields)
        return f"session=1;lane={lane};ceiling={ceiling};sig=0x{signature.hex()}"

    key = new_api_key()
    GatewayStore(ledger.engine).add_api_key(hash_key(key), key[:10], account, int(time.time()))
    return account, key, voucher


def _holds_by_status(ledger: Ledger) -> dict[str, int]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(holds.c.status, func.count()).group_by(holds.c.status)).all()
    return {status: int(count) for status, count in rows}


def test_two_gateway_processes_on_postgresql__lot_covering_k__exactly_k_served_each_hold_its_cost(
    postgres: LocalPostgres, tmp_path: Path, fake: Fake
) -> None:
    k, requests = 37, 1_000 if DEEP else 200
    url = postgres.create_database(f"holds_{os.getpid()}_{time.monotonic_ns()}", template="ledger_template")
    ledger = Ledger.open(url)
    try:
        lot, account, key = _market(ledger, tmp_path, fake, face_value=k * FLAT_OUT, funds=10 * USDC)
        env = _env(tmp_path, url, gateway_sweep_seconds=1)
        with gateway(env) as (_, first), gateway(env) as (_, second):

            async def run() -> Counter[int]:
                limits = httpx.Limits(max_connections=64)
                async with httpx.AsyncClient(timeout=120, limits=limits) as client:

                    async def one(base: str) -> int:
                        body = {"model": "fake-flat", "messages": HELLO, "max_tokens": FLAT_OUT}
                        answer = await client.post(
                            base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body
                        )
                        return answer.status_code

                    bases = [first, second] * (requests // 2)
                    return Counter(await asyncio.gather(*(one(base) for base in bases)))

            outcomes = asyncio.run(run())
        assert outcomes == Counter({200: k, 503: requests - k})  # not one more than the lot covers
        assert fake.config.requests == k
        with ledger.engine.connect() as conn:
            settled = conn.execute(select(holds.c.amount, holds.c.charged).where(holds.c.status == "settled")).all()
        assert len(settled) == k and all(amount == charged for amount, charged in settled)  # each hold its cost
        capacity = ledger.lot_capacities()[lot]
        assert (capacity.used, capacity.reserved, capacity.headroom) == (k * FLAT_OUT, 0, 0)
        assert ledger.balance(account, "USDC").held == 0
        ledger.check()
    finally:
        ledger.close()
        postgres.drop_database(url.rsplit("/", 1)[1])


def test_gateway_killed_with_21_requests_in_flight__restarted_one_ends_them_at_once__funds_and_lane_free_again(
    tmp_path: Path, slow_fake: Fake
) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    ledger = Ledger.open(url, sqlite_synchronous="NORMAL")
    try:
        lot, account, key = _market(ledger, tmp_path, slow_fake, face_value=1_000 * USDC, funds=10 * USDC)
        signer, signer_key, voucher = _signed_buyer(ledger, USDC)  # one request on a signed lane too
        # Holds live 300 s (the default): the restarted gateway must not wait for that. The
        # upstream's 1 s to connect and 5 s to answer, and a 1 s margin.
        env = _env(
            tmp_path, url, gateway_upstream_connect_timeout_seconds=1, gateway_upstream_timeout_seconds=5,
            gateway_hold_margin_seconds=1, gateway_hold_ttl_seconds=300, gateway_sweep_seconds=0.2,
        )  # fmt: skip
        with gateway(env) as (first, base):
            # One gateway process per SQLite file: a second refuses, in one line.
            second = _start(env, free_port())
            _, error = second.communicate(timeout=120)
            assert second.returncode != 0
            assert [line for line in error.splitlines() if "Error" in line] == [
                line for line in error.splitlines() if f"another gateway process (pid {first.pid})" in line
            ]
            assert f"another gateway process (pid {first.pid}) serves the SQLite ledger" in error

            def send() -> None:
                body = {"model": "fake-flat", "messages": HELLO, "max_tokens": FLAT_OUT}
                with contextlib.suppress(httpx.HTTPError):  # the gateway is killed under it
                    httpx.post(base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body)

            def send_signed() -> None:
                body = {"model": "fake-flat", "messages": HELLO, "max_tokens": FLAT_OUT}
                headers = {"authorization": f"Bearer {signer_key}", VOUCHER_HEADER: voucher(0, FLAT_OUT)}
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(base + "/v1/chat/completions", headers=headers, json=body)

            senders = [threading.Thread(target=send) for _ in range(20)] + [threading.Thread(target=send_signed)]
            for sender in senders:
                sender.start()
            until(lambda: slow_fake.config.requests == 21, "21 requests reached the upstream", 90)
            assert _holds_by_status(ledger) == {"active": 21}
            assert ledger.lane(signer, "USDC", 1, 0).inflight is not None
            held = ledger.balance(account, "USDC").held
            assert held > 0 and ledger.lot_capacities()[lot].reserved > 0
            first.send_signal(signal.SIGKILL)
            first.wait()
        for sender in senders:
            sender.join()
        assert _holds_by_status(ledger) == {"active": 21}  # nobody ended them: their gateway died
        with ledger.engine.connect() as conn:
            lifetimes = dict(conn.execute(select(holds.c.request_id, holds.c.expires_at)).all())
        slow_fake.config.latency_ms = 0
        with gateway(env) as (_, base):  # the same file again: the dead one's lock went with it
            # Ended before it answers: its lock says no live process can settle them.
            assert _holds_by_status(ledger) == {"expired": 21}
            with ledger.engine.connect() as conn:
                ended = dict(conn.execute(select(holds.c.request_id, holds.c.closed_at)).all())
            assert ended.keys() == lifetimes.keys()
            assert all(ended[rid] < lifetimes[rid] - 200 for rid in ended)  # long before their lifetime ended
            balance = ledger.balance(account, "USDC")
            assert (balance.held, balance.spendable) == (0, 10 * USDC)
            assert ledger.lot_capacities()[lot].reserved == 0
            body = {"model": "fake-flat", "messages": HELLO, "max_tokens": FLAT_OUT}
            answer = httpx.post(base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body)
            assert answer.status_code == 200
            # The signed lane is free again, nothing charged on it: a voucher above the swept
            # one's ceiling is served (ceilings rise strictly per lane: a voucher serves once).
            assert ledger.lane(signer, "USDC", 1, 0).inflight is None
            headers = {"authorization": f"Bearer {signer_key}", VOUCHER_HEADER: voucher(0, FLAT_OUT + 1)}
            answer = httpx.post(base + "/v1/chat/completions", headers=headers, json=body)
            assert answer.status_code == 200
            assert answer.headers["x-promptex-lane-charged-units"] == answer.headers["x-promptex-cost-units"]
        ledger.check()
    finally:
        ledger.close()


def test_gateway_killed_mid_traffic__group_commits_in_flight__every_acknowledged_charge_is_in_the_ledger(
    tmp_path: Path, fake: Fake
) -> None:
    """Group commit (SQLite): writes queued together commit together, and a caller hears
    of its write only once that commit is done — so a kill -9 in the middle of a group
    loses nothing a client was told: each answer with its cost headers is a settled hold
    at that cost with its usage record, and the books balance."""
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    ledger = Ledger.open(url, sqlite_synchronous="NORMAL")
    try:
        _, account, key = _market(ledger, tmp_path, fake, face_value=1_000 * USDC, funds=10 * USDC)
        metrics = free_port()
        env = _env(tmp_path, url, gateway_metrics_port=metrics)
        answered: dict[str, int] = {}  # request id → the cost the client was told
        groups: list[float] = []
        with gateway(env) as (proc, base):

            async def traffic() -> None:
                stop = asyncio.Event()
                async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:

                    async def buyer() -> None:
                        body = {"model": "fake-flat", "messages": HELLO, "max_tokens": FLAT_OUT}
                        while not stop.is_set():
                            try:
                                answer = await client.post(
                                    base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body
                                )
                            except httpx.HTTPError:  # killed under it
                                return
                            if answer.status_code == 200:
                                answered[answer.headers["x-request-id"]] = int(answer.headers["x-promptex-cost-units"])

                    async def killer() -> None:
                        while len(answered) < 80:
                            await asyncio.sleep(0.01)
                        scraped = (await client.get(f"http://127.0.0.1:{metrics}/metrics")).text
                        groups.extend(
                            float(line.split()[-1])
                            for line in scraped.splitlines()
                            if line.startswith("promptex_gateway_ledger_group_commits_total")
                        )
                        proc.send_signal(signal.SIGKILL)  # buyers are still sending: groups in flight
                        proc.wait()
                        stop.set()

                    await asyncio.gather(killer(), *(buyer() for _ in range(32)))

            asyncio.run(traffic())
        assert groups and groups[0] > 0  # writes did commit in groups before the kill
        for request_id, cost in answered.items():
            hold = ledger.holds.get(request_id)
            assert hold is not None and (hold.status.value, hold.charged) == ("settled", cost), request_id
            assert ledger.usage_record(request_id) is not None
        statuses = _holds_by_status(ledger)
        assert set(statuses) <= {"active", "settled"} and statuses["settled"] >= len(answered)
        with ledger.engine.connect() as conn:
            charged = conn.execute(select(func.sum(holds.c.charged)).where(holds.c.status == "settled")).scalar_one()
        assert ledger.balance(account, "USDC").posted == 10 * USDC - int(charged)  # each settled hold charged once
        ledger.check()
    finally:
        ledger.close()


# ─── promptex gateway serve --workers N ──────────────────────────────────────


def test_workers__two_processes_on_postgresql__both_ready_every_request_served_once__sigterm_stops_all(
    postgres: LocalPostgres, tmp_path: Path, fake: Fake
) -> None:
    url = postgres.create_database(f"workers_{os.getpid()}_{time.monotonic_ns()}", template="ledger_template")
    ledger = Ledger.open(url)
    try:
        _, account, key = _market(ledger, tmp_path, fake, face_value=1_000 * USDC, funds=10 * USDC)
        metrics_port = free_port()
        while True:  # and the next port, for the second worker
            with contextlib.suppress(OSError), socket.socket() as probe:
                probe.bind(("127.0.0.1", metrics_port + 1))
                break
            metrics_port = free_port()
        env = _env(tmp_path, url, gateway_metrics_port=metrics_port)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "promptex.cli", "gateway", "serve", "--port", str(port), "--workers", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            operators = [f"http://127.0.0.1:{metrics_port + i}" for i in range(2)]

            def ready() -> bool:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    return all(httpx.get(o + "/readyz", timeout=2).status_code == 200 for o in operators)
                except httpx.HTTPError:
                    return False

            until(ready, "both workers ready", 90)
            body = {"model": "fake-flat", "messages": HELLO, "max_tokens": FLAT_OUT}
            statuses = [
                httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                    headers={"authorization": f"Bearer {key}", "connection": "close"},  # a new connection each
                ).status_code
                for _ in range(30)
            ]  # fmt: skip
            assert statuses == [200] * 30
            served = 0.0
            for o in operators:
                for line in httpx.get(o + "/metrics").text.splitlines():
                    if line.startswith('promptex_gateway_requests_total{model="fake-flat",status="200"}'):
                        served += float(line.rsplit(" ", 1)[1])
            assert served == 30  # each request served by exactly one worker
            assert ledger.balance(account, "USDC").held == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(operators[1] + "/healthz", timeout=2)  # the workers stopped with it
    finally:
        ledger.close()
        postgres.drop_database(url.rsplit("/", 1)[1])


def test_workers__on_sqlite__refused_in_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, f"sqlite:///{tmp_path}/ledger.sqlite3")
    done = subprocess.run(
        [sys.executable, "-m", "promptex.cli", "gateway", "serve", "--port", str(free_port()), "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--workers needs a PostgreSQL ledger" in done.stderr and "Traceback" not in done.stderr
