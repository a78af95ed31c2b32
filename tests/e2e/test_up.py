"""`promptex up` starts the local market, serves the gateway, and stops it all on Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from anvil_node import ANVIL, ROOT, free_port


def test_up__fresh_machine__serves_then_stops_everything_on_ctrl_c(tmp_path):
    ports = {name: free_port() for name in ("chain", "gateway", "upstream", "billing", "dashboard")}
    env = dict(os.environ)
    env.update(
        PATH=f"{ANVIL.parent}{os.pathsep}{ROOT / '.venv/bin'}{os.pathsep}{env['PATH']}",
        PROMPTEX_DEPLOYMENTS_DIR=str(tmp_path / "deployments"),
        PROMPTEX_LEDGER_URL=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        PROMPTEX_GATEWAY_MASTER_KEY_FILE=str(tmp_path / "master.key"),
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "promptex.cli", "up", "--chain-port", str(ports["chain"]),
         "--gateway-port", str(ports["gateway"]), "--upstream-port", str(ports["upstream"]),
         "--billing-port", str(ports["billing"]), "--dashboard-port", str(ports["dashboard"])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(up.stdout), daemon=True).start()

    def wait_for(text: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while text not in "".join(output) and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.2)
        log = "".join(output)
        assert text in log, log[-3000:]
        return log

    try:
        log = wait_for("Ctrl-C stops everything", 300)
        assert "CLD/USDC" in log  # the market was seeded

        gateway = f"http://127.0.0.1:{ports['gateway']}/v1"
        response = httpx.get(f"{gateway}/models", timeout=5)
        assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
        assert response.headers["x-request-id"]
        assert (tmp_path / "deployments/local.json").exists()
        # The escrow trusts the fake billing API's signer (anvil account 9) for anthropic receipts.
        assert "billing signer anthropic: 0xa0Ee7A142d267C1f36714E4a8F75612F20a79720" in log
        billing = f"http://127.0.0.1:{ports['billing']}/v1/accounts/acct_demo/balance"
        assert httpx.get(billing, headers={"authorization": "Bearer any"}, timeout=5).json()["usd_micro"] == 0
        dashboard = f"http://127.0.0.1:{ports['dashboard']}"
        config = httpx.get(f"{dashboard}/api/config", timeout=5).json()
        assert config["chain_id"] == 31337 and f":{ports['chain']}" not in json.dumps(config)  # node URL kept back
        assert "<title>" in httpx.get(f"{dashboard}/", timeout=5).text  # the built front end
        wait_for("agent address 0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f", 60)  # anvil account 8, running

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
    chain = f"http://127.0.0.1:{ports['chain']}"
    try:
        httpx.post(chain, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1)
        raise AssertionError("anvil still answers after promptex up stopped")
    except httpx.ConnectError:
        pass
