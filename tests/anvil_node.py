"""Real anvil nodes for tests, from the npm-installed binary (`make test` installs it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from promptex.serving import free_port  # noqa: F401 (re-exported to the tests)

ROOT = Path(__file__).resolve().parents[1]
ANVIL = ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"


def anvil_binary() -> str:
    binary = str(ANVIL) if ANVIL.exists() else shutil.which("anvil")
    if binary is None:
        raise RuntimeError("anvil not installed: run `make test`, which installs it from npm")
    return binary


def wait_for_rpc(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"anvil exited with code {proc.returncode}")
        try:
            requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"anvil did not answer on {url}")


def rpc(url: str, method: str, *params: object) -> object:
    """One JSON-RPC call to the node at `url`: its result (an error answer raises)."""
    answer = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=30)
    body = answer.json()
    if "error" in body:
        raise RuntimeError(f"{method}: {body['error']}")
    return body["result"]


@contextlib.contextmanager
def running_anvil(*args: str) -> Iterator[str]:
    """Start an anvil on a free loopback port with extra `args`; yield its URL; stop it."""
    port = free_port()
    proc = subprocess.Popen(
        [anvil_binary(), "--host", "127.0.0.1", "--port", str(port), "--silent", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_rpc(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ape_env(anvil_url: str, deployments_dir: Path) -> dict[str, str]:
    """Environment for an `ape run` subprocess attached to the given anvil."""
    env = dict(os.environ)
    env["APE_FOUNDRY_HOST"] = anvil_url
    env["PROMPTEX_DEPLOYMENTS_DIR"] = str(deployments_dir)
    env["PATH"] = f"{ANVIL.parent}{os.pathsep}{ROOT / '.venv/bin'}{os.pathsep}{env['PATH']}"
    return env


def ape_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`ape run <script> [args]` against the anvil in `env`, as a user would run it."""
    return subprocess.run(
        [str(ROOT / ".venv/bin/ape"), "run", *args, "--network", "ethereum:local:foundry"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def act_as(rpc_url: str, address: str) -> str:
    """Let `address` (a contract, e.g. the deployment's Timelock) send transactions on
    this anvil without its key, with gas money. Tests only: it is how a test does in
    one transaction what the Timelock does after its delay."""
    for method, params in (("anvil_impersonateAccount", [address]), ("anvil_setBalance", [address, hex(10**21)])):
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        answer = requests.post(rpc_url, json=request, timeout=10)
        answer.raise_for_status()
    return address
