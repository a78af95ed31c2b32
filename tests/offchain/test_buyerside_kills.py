"""`promptex proxy` killed with SIGKILL at random points while an unchanged openai SDK
sends requests over several lanes, and restarted: it recovers its lanes from the gateway's
lane report (vouchers verified as its own) and its voucher log, never stops signing an
honest gateway, and every voucher the gateway ever received is on disk. And a proxy that
stopped signing, killed and restarted, stays stopped until `--resume` (in CI).

The gateway here is the fake that follows the signed-mode wire (`buyerside_fakes`), its
own log of true costs standing for the fake upstream's. Deep profile only
(HYPOTHESIS_PROFILE=deep, 1,000 requests): CI kills the proxy in front of the real gateway
instead (tests/gateway/test_signed_proxy_kills.py). PROMPTEX_PROXY_KILLS_SEED replays a run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from buyerside_fakes import MODEL, FakeSignedGateway, asgi_app
from click.testing import CliRunner
from eth_account import Account

from promptex.buyerside.sessions import SessionGrant, new_grant, save
from promptex.cli import main
from promptex.serving import KeepAliveProtocol, ServerThread, free_port

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
REQUESTS = 1_000
CLIENTS = 4
LANES = 3
KILLS = 10
WALLET_KEY = "0x" + "b2" * 32


class Proxy:
    """A `promptex proxy` process, restartable on one port."""

    def __init__(self, gateway_url: str, grant: Path, output: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "promptex.cli", "proxy", "--port", str(self.port), "--gateway", gateway_url,
                     "--api-key", "sk-buyer", "--session", str(grant)]  # fmt: skip
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None
        self.up = threading.Event()

    def start(self, *extra: str) -> None:
        with self.output.open("ab") as out:
            self.process = subprocess.Popen([*self.args, *extra], stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output.read_text()[-2000:]
            try:
                if httpx.get(self.url + "/promptex/status", timeout=1).status_code == 200:
                    self.up.set()
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError("the proxy did not start")

    def kill(self) -> None:
        self.up.clear()
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def status(self) -> dict[str, object]:
        return dict(httpx.get(self.url + "/promptex/status", timeout=5).json())


def _grant(folder: Path, lanes: int) -> SessionGrant:
    wallet = Account.from_key(WALLET_KEY)
    grant = new_grant(
        lambda typed: bytes(Account.sign_typed_data(WALLET_KEY, full_message=typed).signature),
        chain_id=31337, vault="0x" + "aa" * 20, account=wallet.address, asset="0x" + "cc" * 20, asset_symbol="USDC",
        lanes=lanes, maximum=10**15, expiry=2_000_000_000, nonce=1,
    )  # fmt: skip
    save(grant, folder / "session.json")
    return grant


def _vouchers_logged(folder: Path, grant: SessionGrant) -> int:
    rows = (folder / f"vouchers-31337-{grant.account.lower()}-USDC-1.log").read_text().splitlines()
    return sum(1 for line in rows if json.loads(line)["t"] == "voucher")


def test_proxy__stopped_then_sigkilled__restart_signs_nothing_until_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway answering 500 without the lane's total stops the proxy (the third such
    answer on the lane); kill -9 right after; the restarted proxy says it is stopped, why,
    and how to resume, and signs no voucher; `promptex proxy --resume` (in-process, to
    spare a third start) signs again."""
    grant = _grant(tmp_path, 1)
    gateway = FakeSignedGateway(identity=grant.identity(), lanes=1, error_status=500)
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    with ServerThread(asgi_app(gateway)) as server:
        proxy = Proxy(server.url + "/v1", tmp_path / "session.json", tmp_path / "proxy.out")
        proxy.start()
        for _ in range(3):
            assert httpx.post(proxy.url + "/v1/chat/completions", json=ask, timeout=10).status_code == 500
        stopped = proxy.status()["stopped"]
        assert isinstance(stopped, str) and "3 answers on lane 0" in stopped
        proxy.kill()
        gateway.error_status = 0  # an honest gateway now: only the user's resume may sign again
        signed, received = _vouchers_logged(tmp_path, grant), len(gateway.received)
        proxy.start()
        assert proxy.status()["stopped"] == stopped
        refused = httpx.post(proxy.url + "/v1/chat/completions", json=ask, timeout=10)
        assert refused.status_code == 402 and "signing stopped" in refused.json()["error"]["message"]
        assert (_vouchers_logged(tmp_path, grant), len(gateway.received)) == (signed, received)
        said = (tmp_path / "proxy.out").read_text()
        assert "signing stopped" in said and "3 answers on lane 0" in said and "promptex proxy --resume" in said
        proxy.kill()
        shown = CliRunner().invoke(main, ["session", "show", "--session", str(tmp_path / "session.json")])
        assert "3 answers on lane 0" in shown.output and "promptex proxy --resume" in shown.output, shown.output
        served: list[Any] = []
        options: list[dict[str, Any]] = []
        monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: (served.append(app), options.append(kwargs)))
        for name in ("promptex.proxy", "promptex.buyerside"):  # the command adds a handler to each
            monkeypatch.setattr(logging.getLogger(name), "handlers", [])
        result = CliRunner().invoke(main, [*proxy.args[3:], "--resume"])
        assert result.exit_code == 0 and "resumed: signing stopped" in result.output, result.output
        # kept-alive connections closed only with nothing unread (test_starvation's keep-alive tests)
        assert options[0]["http"] is KeepAliveProtocol

        async def once() -> int:
            local = httpx.AsyncClient(transport=httpx.ASGITransport(app=served[0]), base_url="http://127.0.0.1")
            return (await local.post("/v1/chat/completions", json=ask)).status_code

        assert asyncio.run(once()) == 200
        assert len(gateway.received) == received + 1


@pytest.mark.skipif(not DEEP, reason="deep profile only (HYPOTHESIS_PROFILE=deep)")
def test_proxy__sigkill_at_random_points__recovers_and_every_sent_voucher_logged(tmp_path: Path) -> None:
    seed = int(os.environ.get("PROMPTEX_PROXY_KILLS_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    wallet = Account.from_key(WALLET_KEY)
    grant = new_grant(
        lambda typed: bytes(Account.sign_typed_data(WALLET_KEY, full_message=typed).signature),
        chain_id=31337, vault="0x" + "aa" * 20, account=wallet.address, asset="0x" + "cc" * 20, asset_symbol="USDC",
        lanes=LANES, maximum=10**15, expiry=2_000_000_000, nonce=1,
    )  # fmt: skip
    save(grant, tmp_path / "session.json")
    gateway = FakeSignedGateway(identity=grant.identity(), lanes=LANES, latency=0.01)
    done: list[int] = []
    lock = threading.Lock()
    with ServerThread(asgi_app(gateway)) as server:
        proxy = Proxy(server.url + "/v1", tmp_path / "session.json", tmp_path / "proxy.out")
        proxy.start()
        kills_at = sorted(rng.sample(range(10, REQUESTS - 10), KILLS))

        def client(index: int) -> None:
            sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=30)
            while True:
                with lock:
                    if len(done) >= REQUESTS:
                        return
                words = " ".join(["word"] * rng.randint(1, 12))
                try:
                    answer = sdk.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": words}], max_tokens=rng.randint(1, 8)
                    )
                except (openai.APIConnectionError, openai.InternalServerError, openai.APIStatusError):
                    proxy.up.wait(60)  # killed under it (or a busy lane after a restart): send it again
                    continue
                assert answer.usage is not None
                with lock:
                    done.append(index)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for at in kills_at:
            while len(done) < at:
                time.sleep(0.005)
            time.sleep(rng.random() * 0.02)  # mid-request, or between two
            proxy.kill()
            proxy.start()
        for thread in threads:
            thread.join(120)
        status = proxy.status()
        proxy.kill()
    rows = [
        json.loads(line)
        for line in (tmp_path / f"vouchers-31337-{grant.account.lower()}-USDC-1.log").read_text().splitlines()
    ]
    logged = {(r["lane"], int(r["ceiling"]), r["sig"]) for r in rows if r["t"] == "voucher"}
    assert status["stopped"] is None, f"seed {seed}: {status['stopped']}"
    assert len(done) >= REQUESTS, f"seed {seed}"
    # Every voucher the gateway received was on disk before it was sent, across the kills.
    assert {(v.lane, v.ceiling, "0x" + v.signature.hex()) for v in gateway.received} <= logged, f"seed {seed}"
    # What can be settled per lane (its charged total) is covered by a voucher signed for it,
    # and in total is the true cost (this gateway is honest) — never above it plus a hold per lane.
    for lane, book in gateway.book.items():
        assert book.voucher is None or book.charged <= book.voucher.ceiling
        assert book.charged <= max((ceiling for (at, ceiling, _sig) in logged if at == lane), default=0)
    assert sum(b.charged for b in gateway.book.values()) == sum(gateway.true_costs)


def test_proxy__resume_without_a_recorded_stop__says_nothing_to_resume__exit_1_nothing_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`promptex proxy --resume` when the voucher log records no stop: one line saying
    there is nothing to resume, exit 1, nothing served (before: a line, then it served as
    if started without --resume, so a proxy always started so cleared every stop unread)."""
    grant = _grant(tmp_path, 1)
    gateway = FakeSignedGateway(identity=grant.identity(), lanes=1)
    served: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **_: served.append(app))
    with ServerThread(asgi_app(gateway)) as server:
        args = ["proxy", "--gateway", server.url + "/v1", "--api-key", "sk-buyer", "--session",
                str(tmp_path / "session.json")]  # fmt: skip
        result = CliRunner().invoke(main, [*args, "--resume"])
    assert result.exit_code == 1, result.output
    assert "nothing to resume: signing is not stopped" in result.output and not served, result.output
