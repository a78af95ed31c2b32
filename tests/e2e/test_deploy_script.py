"""`ape run deploy` as a user runs it, against a real anvil. The run on a fresh anvil is
the one that deployed the worker's market anvil (fixtures/anvil.py: `ape run deploy
--billing-signer anthropic=… --extra-attestor …`, then `ape run seed_market`); these tests
read its output and its record instead of deploying the market once more."""

import json
import shutil
from pathlib import Path

from web3 import Web3

from anvil_node import ape_env as make_ape_env
from anvil_node import ape_run as run_ape
from fixtures.anvil import BILLING_SIGNER as SIGNER
from promptex.protocol.redemption import provider_id


def test_deploy__fresh_anvil__records_every_contract(ape_run, tmp_path, market_anvil, seeded_anvil):
    bad = ape_run("deploy", "--billing-signer", "anthropic")  # on a fresh anvil of its own
    assert bad.returncode != 0 and "expected PROVIDER=0xADDRESS" in bad.stderr + bad.stdout
    assert not (tmp_path / "deployments/local.json").exists()  # nothing deployed or recorded
    result = market_anvil.runs["deploy"]  # on the worker's fresh market anvil
    assert result.returncode == 0, result.stderr
    anvil_url, deployments = seeded_anvil
    record = json.loads((deployments / "local.json").read_text())
    assert record["chain_id"] == 31337
    assert record["block_number"] > 0
    names = ("USDC", "CreditEscrow", "CreditsVault", "Router", "RedemptionEscrow", "token:CLD", "token:LLM")
    for name in names:
        assert record["contracts"][name]["address"].startswith("0x")
        assert Path(record["contracts"][name]["abi"]).exists()
    # Wiring: the vault sells spend-only tokens through the recorded Router.
    vault = record["contracts"]["CreditsVault"]
    w3 = Web3(Web3.HTTPProvider(anvil_url))
    contract = w3.eth.contract(address=vault["address"], abi=json.loads(Path(vault["abi"]).read_text()))
    assert contract.functions.exit_market().call() == record["contracts"]["Router"]["address"]
    # RedemptionEscrow trusts the given billing signer for anthropic receipts, and no one for others;
    # each provider token redeems into its own provider's credits.
    escrow = record["contracts"]["RedemptionEscrow"]
    escrow = w3.eth.contract(address=escrow["address"], abi=json.loads(Path(escrow["abi"]).read_text()))
    assert escrow.functions.is_billing_signer(provider_id("anthropic"), SIGNER).call()
    assert escrow.functions.billing_signer_count(provider_id("openai")).call() == 0
    for symbol, provider in (("CLD", "anthropic"), ("GPT", "openai"), ("GEM", "google"), ("LLM", "meta")):
        token = record["contracts"][f"token:{symbol}"]["address"]
        assert escrow.functions.token_provider(token).call() == provider_id(provider)


def test_deploy__live_deployment_recorded__refuses_with_one_line(seeded_anvil, tmp_path):
    anvil_url, market = seeded_anvil
    deployments = tmp_path / "deployments"
    shutil.copytree(market, deployments)  # the market's live record; only this copy may be rewritten
    env = make_ape_env(anvil_url, deployments)
    first = json.loads((deployments / "local.json").read_text())

    again = run_ape(env, "deploy")
    assert again.returncode == 1
    assert "a live deployment is recorded for 'local'" in again.stderr
    assert "Traceback" not in again.stderr + again.stdout
    assert json.loads((deployments / "local.json").read_text()) == first  # untouched

    forced = run_ape(env, "deploy", "--force")  # new contracts beside the market's (reverted after the module)
    assert forced.returncode == 0, forced.stderr
    replaced = json.loads((deployments / "local.json").read_text())
    assert replaced["contracts"]["CreditEscrow"]["address"] != first["contracts"]["CreditEscrow"]["address"]
