"""Signed-mode traffic with crashes (issue 23), shared by the kill proofs with and without
the chain: the fake upstream's own log of what it served, restartable `promptex …` server
processes killed with SIGKILL by PID, and openai-SDK clients that send through a
`promptex proxy` until a number of requests were answered, whatever is killed under them."""

from __future__ import annotations

import json
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
import orjson

from promptex import metering

CLI = [sys.executable, "-m", "promptex.cli"]
MAX_WORDS = 30  # a prompt's words at most
MAX_TOKENS = 16  # a request's max_tokens at most


class Served:
    """ASGI wrapper of the fake upstream keeping its own log: the usage of every answer it
    sent (whether or not anyone received it), read from its responses as they leave."""

    def __init__(self, app: Any) -> None:
        self.app, self.lock = app, threading.Lock()
        self.usages: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body = bytearray()

        async def keep(message: Any) -> None:
            if message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        usage = orjson.loads(bytes(body)).get("usage")
                    except orjson.JSONDecodeError:  # an error page (the caller hung up before its body came)
                        usage = None
                    if usage:
                        with self.lock:
                            self.usages.append(usage)
            await send(message)

        await self.app(scope, receive, keep)

    def true_cost(self, rates: metering.Rates) -> int:
        """What everything served cost at `rates` (non-streamed chat answers)."""
        return sum(
            metering.usage_cost(rates, metering.TokenUsage(u["prompt_tokens"], u["completion_tokens"]))
            for u in self.usages
        )


class Process:
    """A restartable `promptex …` server process on one port."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, ready: str, out: Path) -> None:
        self.args, self.env, self.port, self.out = args, env, port, out
        self.url = f"http://127.0.0.1:{port}"
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.up = threading.Event()
        self.kills = 0

    def start(self) -> None:
        with self.out.open("ab") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.out.read_text()[-3000:]
            try:
                if httpx.get(self.url + self.ready, timeout=2).status_code < 500:
                    self.up.set()
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"{' '.join(self.args[3:5])} did not start: {self.out.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would: nothing runs after it."""
        self.up.clear()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.kills += 1


def proxy_process(gateway_url: str, api_key: str, grant: Path, env: dict[str, str], port: int, out: Path) -> Process:
    args = [*CLI, "proxy", "--port", str(port), "--gateway", gateway_url, "--api-key", api_key, "--session", str(grant)]
    return Process(args, env, port, "/promptex/status", out)


def drive(
    proxy: Process, victims: list[Process], *, model: str, requests: int, kills: int, clients: int, rng: random.Random
) -> int:
    """`clients` openai SDKs send through `proxy` until `requests` were answered, while
    `kills` times one of `victims`, at a random point, is SIGKILLed and restarted. A request
    that fails (killed under it, or a lane a killed gateway still holds) is sent again once
    everything is up. Returns the number answered."""
    done: list[int] = []
    lock = threading.Lock()
    seeds = [rng.random() for _ in range(clients)]

    def client(seed: float) -> None:
        own = random.Random(seed)
        sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        while True:
            with lock:
                if len(done) >= requests:
                    return
            prompt = " ".join(["word"] * own.randint(1, MAX_WORDS))
            try:
                sdk.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=own.randint(1, MAX_TOKENS)
                )
            except openai.APIError as exc:
                if exc.code == "signing_stopped":
                    return  # for good: the caller reads why from the proxy's status
                for process in (proxy, *victims):
                    process.up.wait(120)
                time.sleep(0.05)
                continue
            with lock:
                done.append(1)

    threads = [threading.Thread(target=client, args=(seed,), daemon=True) for seed in seeds]
    for thread in threads:
        thread.start()
    for at in sorted(rng.sample(range(10, requests - 10), kills)):
        while len(done) < at and any(t.is_alive() for t in threads):
            time.sleep(0.005)
        time.sleep(rng.random() * 0.05)  # mid-request, or between two
        victim = rng.choice([proxy, *victims])
        victim.kill()
        victim.start()
    deadline = time.monotonic() + 300
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return len(done)


def most_held(rates: metering.Rates) -> int:
    """The largest hold `drive`'s requests can ask (the buyer's side's bound of a prompt of
    MAX_WORDS words: its bytes + 4 per message + 3; output MAX_TOKENS)."""
    return metering.upper_bound(rates, 3 + 4 + len(" ".join(["word"] * MAX_WORDS)), MAX_TOKENS)


def logged_vouchers(path: Path) -> set[tuple[int, int, str]]:
    """(lane, ceiling, signature) of every voucher in a buyer's voucher log."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["lane"], int(r["ceiling"]), r["sig"]) for r in rows if r["t"] == "voucher"}
