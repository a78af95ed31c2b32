"""`ape run deploy` as a user runs it, against a real anvil."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ape_run(env, *args):
    return subprocess.run(
        [str(ROOT / ".venv/bin/ape"), "run", *args, "--network", "ethereum:local:foundry"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_deploy__fresh_anvil__records_every_contract(ape_env, tmp_path):
    result = ape_run(ape_env, "deploy")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "deployments/local.json").read_text())
    assert record["chain_id"] == 31337
    assert record["block_number"] > 0
    for name in ("USDC", "CreditEscrow", "token:CLD", "token:GPT", "token:GEM", "token:LLM"):
        assert record["contracts"][name]["address"].startswith("0x")
        assert Path(record["contracts"][name]["abi"]).exists()


def test_deploy__live_deployment_recorded__refuses_with_one_line(ape_env, tmp_path):
    assert ape_run(ape_env, "deploy").returncode == 0
    first = json.loads((tmp_path / "deployments/local.json").read_text())

    again = ape_run(ape_env, "deploy")
    assert again.returncode == 1
    assert "a live deployment is recorded for 'local'" in again.stderr
    assert "Traceback" not in again.stderr + again.stdout
    assert json.loads((tmp_path / "deployments/local.json").read_text()) == first  # untouched

    forced = ape_run(ape_env, "deploy", "--force")
    assert forced.returncode == 0, forced.stderr
    replaced = json.loads((tmp_path / "deployments/local.json").read_text())
    assert replaced["contracts"]["CreditEscrow"]["address"] != first["contracts"]["CreditEscrow"]["address"]
