"""`ape run seed_market` as a user runs it, against a real anvil. The run on a fresh
deployment is the one that seeded the worker's market anvil (fixtures/anvil.py: `ape run
deploy`, then `ape run seed_market`, $25,000 a side); these tests read its output and run
it once more on that market instead of deploying and seeding another."""

import json
import shutil

from anvil_node import ape_env as make_ape_env
from anvil_node import ape_run as run_ape


def test_seed_market__fresh_deployment__seeds_four_pools_at_reference_prices(market_anvil, seeded_anvil, tmp_path):
    anvil_url, market = seeded_anvil
    result = market_anvil.runs["seed_market"]
    assert result.returncode == 0, result.stderr
    record = json.loads((market / "local.json").read_text())
    for name in ("PoolBlueprint", "Factory", "Router", "Oracle"):
        assert record["contracts"][name]["address"].startswith("0x")
    for pair, price in (("CLD/USDC", "$0.004218"), ("GPT/USDC", "$3.695000"), ("GEM/USDC", "$1.243000")):
        line = next(row for row in result.stdout.splitlines() if pair in row)
        assert line.count(price) == 2  # pool price == reference price
    assert "LLM/USDC" in result.stdout

    deployments = tmp_path / "deployments"
    shutil.copytree(market, deployments)  # the market's record; only this copy may be rewritten
    again = run_ape(make_ape_env(anvil_url, deployments), "seed_market", "--depth", "1000")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already has liquidity: left alone") == 4


def test_seed_market__nothing_deployed__refuses_with_one_line(ape_run):
    result = ape_run("seed_market")
    assert result.returncode == 1
    assert "no live deployment recorded for 'local'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
