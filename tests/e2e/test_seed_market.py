"""`ape run seed_market` as a user runs it, against a real anvil."""

import json


def test_seed_market__fresh_deployment__seeds_four_pools_at_reference_prices(ape_run, tmp_path):
    assert ape_run("deploy").returncode == 0
    result = ape_run("seed_market", "--depth", "1000")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "deployments/local.json").read_text())
    for name in ("PoolBlueprint", "Factory", "Router", "Oracle"):
        assert record["contracts"][name]["address"].startswith("0x")
    for pair, price in (("CLD/USDC", "$0.004218"), ("GPT/USDC", "$3.695000"), ("GEM/USDC", "$1.243000")):
        line = next(row for row in result.stdout.splitlines() if pair in row)
        assert line.count(price) == 2  # pool price == reference price
    assert "LLM/USDC" in result.stdout

    again = ape_run("seed_market", "--depth", "1000")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already has liquidity: left alone") == 4


def test_seed_market__nothing_deployed__refuses_with_one_line(ape_run):
    result = ape_run("seed_market")
    assert result.returncode == 1
    assert "no live deployment recorded for 'local'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
