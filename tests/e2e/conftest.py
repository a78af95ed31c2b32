"""A real anvil node for end-to-end tests, from the npm-installed binary."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
ANVIL = ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_rpc(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
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


@pytest.fixture
def anvil_url():
    """Start a fresh anvil on a free loopback port; stop it after the test."""
    binary = str(ANVIL) if ANVIL.exists() else shutil.which("anvil")
    if binary is None:
        pytest.fail("anvil not installed: run `make test`, which installs it from npm")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_rpc(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def ape_env(anvil_url, tmp_path):
    """Environment for an `ape run` subprocess attached to the test's anvil."""
    env = dict(os.environ)
    env["APE_FOUNDRY_HOST"] = anvil_url
    env["PROMPTEX_DEPLOYMENTS_DIR"] = str(tmp_path / "deployments")
    env["PATH"] = f"{ANVIL.parent}{os.pathsep}{ROOT / '.venv/bin'}{os.pathsep}{env['PATH']}"
    return env


@pytest.fixture
def ape_run(ape_env):
    """Run `ape run <script> [args]` against the test's anvil, as a user would."""

    def _run(*args):
        return subprocess.run(
            [str(ROOT / ".venv/bin/ape"), "run", *args, "--network", "ethereum:local:foundry"],
            cwd=ROOT,
            env=ape_env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return _run
