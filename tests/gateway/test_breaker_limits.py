"""Breaker attack on the gateway's limits (`gateway.limits`) across processes: a real
`promptex gateway serve --workers 2` on PostgreSQL, 200 concurrent requests from one key
against each kind of limit — requests per minute, tokens per minute, requests in flight,
cost per window — while the upstream lies: it answers 500 output tokens whatever
`max_tokens` (16) the gateway sent, so every answer's actual usage is far above the bound
its hold and its limits reserved.

The promise: exactly K admitted (per window: a burst that straddles a minute may take K in
each), every other request a 429 holding nothing, no counter above its limit, and neither
a limit nor a balance overshot by the lying answers (each is charged at most its hold).
The answers are held at the upstream until every refusal is back, so all 200 are in
flight together. CI: tokens and cost (the limits a lying answer could push past; ~15 s
quiet); HYPOTHESIS_PROFILE=deep: all four, 1,000 requests a limit.
"""

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
from pathlib import Path

import httpx
from sqlalchemy import select

from polling import until
from promptex.gateway import limits
from promptex.gateway.keys import hash_key, new_api_key
from promptex.gateway.limits import Limits
from promptex.gateway.schema import limit_counters, limit_takes
from promptex.gateway.store import GatewayStore
from promptex.ledger import Ledger
from promptex.ledger.local_postgres import LocalPostgres
from promptex.ledger.schema import holds
from promptex.protocol.units import USD_MICRO as USDC
from promptex.serving import free_port

from .conftest import Fake
from .test_holds_processes import DEEP, FLAT_OUT, HELLO, _env, _market

REQUESTS = 1_000 if DEEP else 200
K = 23
LIE = 500  # output tokens the upstream answers, whatever max_tokens says
FUNDS = 100 * USDC
# CI: the two limits a lying answer could push past (tokens, cost); deep: all four.
KINDS = (limits.REQUESTS, limits.TOKENS, limits.CONCURRENT, limits.COST) if DEEP else (limits.TOKENS, limits.COST)


def _counters(ledger: Ledger, subject: str, kind: str) -> dict[int, int]:
    """The subject's counter per window start."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(limit_counters.c.window_start, limit_counters.c.used).where(
                limit_counters.c.subject == subject, limit_counters.c.kind == kind
            )
        ).all()
    return {int(start): int(used) for start, used in rows}


def _burst(base: str, key: str, fake: Fake) -> tuple[Counter[int], list[dict[str, str]]]:
    """REQUESTS at once, the answers held at the upstream until every refusal is back."""
    gate = threading.Event()
    fake.config.gate = gate
    refused = 0

    async def run() -> list[httpx.Response]:
        nonlocal refused
        limits_ = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
        async with httpx.AsyncClient(timeout=120, limits=limits_) as client:
            body = {"model": "fake-flat", "messages": HELLO, "max_tokens": FLAT_OUT}

            async def one() -> httpx.Response:
                nonlocal refused
                answer = await client.post(
                    base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body
                )
                if answer.status_code != 200:
                    refused += 1
                return answer

            async def opener() -> None:
                start = fake.config.requests
                await asyncio.to_thread(
                    until, lambda: refused + fake.config.requests - start >= REQUESTS, "every request placed", 90
                )
                gate.set()

            *answers, _ = await asyncio.gather(*(one() for _ in range(REQUESTS)), opener())
            return answers  # type: ignore[return-value]

    try:
        answers = asyncio.run(run())
    finally:
        gate.set()
        fake.config.gate = None
    return Counter(a.status_code for a in answers), [dict(a.headers) for a in answers if a.status_code == 200]


def test_limits_two_workers_postgresql__200_concurrent_lying_upstream__exactly_k__no_overshoot(
    postgres: LocalPostgres, tmp_path: Path, fake: Fake
) -> None:
    url = postgres.create_database(f"limits_{os.getpid()}_{time.monotonic_ns()}", template="ledger_template")
    ledger = Ledger.open(url)
    fake.config.ignore_max_tokens, fake.config.output_tokens = True, LIE
    try:
        _, account, calibration = _market(ledger, tmp_path, fake, face_value=10_000 * USDC, funds=FUNDS)
        store = GatewayStore(ledger.engine)
        keys: dict[str, tuple[str, int]] = {}
        for kind in ("calibration", limits.REQUESTS, limits.TOKENS, limits.CONCURRENT, limits.COST):
            key = calibration if kind == "calibration" else new_api_key()
            if kind != "calibration":
                store.add_api_key(hash_key(key), key[:10], account, int(time.time()))
            found = store.api_key(hash_key(key))
            assert found is not None
            keys[kind] = (key, found.id)
        now = int(time.time())
        limits.set_limits(ledger.engine, f"key:{keys['calibration'][1]}", Limits(tokens_per_minute=10**9), now)
        metrics = free_port()
        while True:  # and the next port, for the second worker
            with contextlib.suppress(OSError), socket.socket() as probe:
                probe.bind(("127.0.0.1", metrics + 1))
                break
            metrics = free_port()
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "promptex.cli", "gateway", "serve", "--port", str(port), "--workers", "2"],
            # deep: 1,000 connections from one address (the per-address guard's 256 would close some)
            env=_env(tmp_path, url, gateway_metrics_port=metrics, gateway_max_connections_per_address=100_000),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:

            def ready() -> bool:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    return all(
                        httpx.get(f"http://127.0.0.1:{metrics + i}/readyz", timeout=2).status_code == 200
                        for i in range(2)
                    )
                except httpx.HTTPError:
                    return False

            until(ready, "both workers ready", 90)
            # One request held at the upstream tells what each reserves (its tokens' bound, its
            # hold: the limits admit by these); answered, what each is charged and keeps counted
            # (the lie above the output limit is clamped to it, since 41c30f7: not the bound).
            calibrating = f"key:{keys['calibration'][1]}"
            fake.config.gate = gate = threading.Event()
            answers: list[httpx.Response] = []
            body = {"model": "fake-flat", "messages": HELLO, "max_tokens": FLAT_OUT}
            auth = {"authorization": f"Bearer {calibration}"}
            calling = threading.Thread(
                target=lambda: answers.append(
                    httpx.post(base + "/v1/chat/completions", headers=auth, json=body, timeout=60)
                )
            )
            calling.start()
            try:
                until(lambda: _counters(ledger, calibrating, limits.TOKENS), "the calibration's tokens reserved", 30)
                (bound,) = _counters(ledger, calibrating, limits.TOKENS).values()
                with ledger.engine.connect() as conn:
                    hold = conn.execute(select(holds.c.amount).where(holds.c.status == "active")).scalar_one()
            finally:
                gate.set()
                fake.config.gate = None
                calling.join(60)
            (first,) = answers
            assert first.status_code == 200
            (kept,) = _counters(ledger, calibrating, limits.TOKENS).values()
            charge = int(first.headers["x-promptex-cost-units"])
            assert 0 < kept <= bound < LIE and 0 < charge <= hold
            with ledger.engine.connect() as conn:
                assert conn.execute(select(holds.c.amount).where(holds.c.status == "settled")).scalar_one() == charge
            posted = ledger.balance(account, "USDC").posted
            cases = {
                limits.REQUESTS: Limits(requests_per_minute=K),
                limits.TOKENS: Limits(tokens_per_minute=K * bound + bound - 1),
                limits.CONCURRENT: Limits(concurrent=K),
                limits.COST: Limits(cost=K * hold + hold - 1, cost_asset="USDC", cost_window_seconds=3_600),
            }
            for kind, subject_limits in cases.items():
                if kind not in KINDS:
                    continue
                key, key_id = keys[kind]
                subject = f"key:{key_id}"
                limits.set_limits(ledger.engine, subject, subject_limits, int(time.time()))
                statuses, served = _burst(base, key, fake)
                windows = _counters(ledger, subject, kind)
                limit = {"requests": K, "tokens": K * bound + bound - 1, "concurrent": K}.get(kind, K * hold + hold - 1)
                assert all(used <= limit for used in windows.values()), (kind, windows)
                if kind == limits.CONCURRENT:
                    assert windows == {0: 0}  # every slot back
                    admitted = K
                else:
                    admitted = K * len(windows)  # a burst across a minute: K in each window
                assert statuses == Counter({200: admitted, 429: REQUESTS - admitted}), kind
                charged = [int(h["x-promptex-cost-units"]) for h in served]
                assert charged == [charge] * admitted, kind  # the lie charged nothing beyond the output limit
                posted -= sum(charged)
                assert ledger.balance(account, "USDC").posted == posted  # no balance overshoot
                assert ledger.balance(account, "USDC").held == 0
                if kind in (limits.TOKENS, limits.COST):
                    assert sum(windows.values()) == admitted * (kept if kind == limits.TOKENS else charge)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        with ledger.engine.connect() as conn:
            assert conn.execute(select(limit_takes)).all() == []  # nothing left taken
        ledger.check()
    finally:
        ledger.close()
        postgres.drop_database(url.rsplit("/", 1)[1])
