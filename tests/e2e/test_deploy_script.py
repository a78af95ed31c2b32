"""`ape run deploy` as a user runs it, against a real anvil."""

import json
from pathlib import Path

from web3 import Web3

from promptex.protocol.redemption import provider_id

SIGNER = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"


def test_deploy__fresh_anvil__records_every_contract(ape_run, anvil_url, tmp_path):
    bad = ape_run("deploy", "--billing-signer", "anthropic")
    assert bad.returncode != 0 and "expected PROVIDER=0xADDRESS" in bad.stderr + bad.stdout
    assert not (tmp_path / "deployments/local.json").exists()  # nothing deployed or recorded
    result = ape_run("deploy", "--billing-signer", f"anthropic={SIGNER}")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "deployments/local.json").read_text())
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


def test_deploy__live_deployment_recorded__refuses_with_one_line(ape_run, tmp_path):
    assert ape_run("deploy").returncode == 0
    first = json.loads((tmp_path / "deployments/local.json").read_text())

    again = ape_run("deploy")
    assert again.returncode == 1
    assert "a live deployment is recorded for 'local'" in again.stderr
    assert "Traceback" not in again.stderr + again.stdout
    assert json.loads((tmp_path / "deployments/local.json").read_text()) == first  # untouched

    forced = ape_run("deploy", "--force")
    assert forced.returncode == 0, forced.stderr
    replaced = json.loads((tmp_path / "deployments/local.json").read_text())
    assert replaced["contracts"]["CreditEscrow"]["address"] != first["contracts"]["CreditEscrow"]["address"]
