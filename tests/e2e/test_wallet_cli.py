"""`promptex wallet …` and `promptex status` sign with a real ape keyfile account (not a
test account) against an anvil with the deployed and seeded market."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from eth_account import Account
from web3 import Web3

from anvil_node import ROOT, ape_env, ape_run, running_anvil
from promptex.coordinator.factory import ANVIL_KEY_0
from promptex.protocol.redemption import provider_id
from promptex.protocol.vault import sign_release

# Throwaway keys for the keyfile accounts, made for these tests only.
KEY = "0x" + "5e" * 32
STRANGER_KEY = "0x" + "6f" * 32
PASSPHRASE = "correct horse battery staple"


def rpc(url, method, *params):
    return requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=10)


def import_keyfile(env, alias, key):
    made = subprocess.run(
        [sys.executable, "-c", "import sys; from ape_accounts import import_account_from_private_key as i; "
         "print(i(sys.argv[1], sys.argv[2], sys.argv[3]).address)", alias, PASSPHRASE, key],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    return made.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """One anvil with the market deployed and seeded, and two keyfile accounts with gas."""
    root = tmp_path_factory.mktemp("wallet")
    with running_anvil() as url:
        env = ape_env(url, root / "deployments")
        for script in ("deploy", "seed_market"):
            result = ape_run(env, script)
            assert result.returncode == 0, result.stderr[-3000:]
        env["APE_DATA_FOLDER"] = str(root / "ape-data")
        for alias, key in (("buyer", KEY), ("stranger", STRANGER_KEY)):
            rpc(url, "anvil_setBalance", import_keyfile(env, alias, key), hex(10**20))
        yield env


def promptex(env, *args, passphrase=PASSPHRASE):
    env = dict(env, APE_ACCOUNTS_buyer_PASSPHRASE=passphrase, APE_ACCOUNTS_stranger_PASSPHRASE=passphrase)
    return subprocess.run(
        [sys.executable, "-m", "promptex.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_wallet__keyfile_account__mints_deposits_swaps_withdraws(market, tmp_path):
    env = market
    # MockUSDC is an open faucet: the buyer mints itself test dollars, signed by its keyfile.
    faucet = subprocess.run(
        [sys.executable, "-c", "from ape import accounts, networks\n"
         "from promptex.chain.deploy import contract_at, live_deployment\n"
         "with networks.parse_network_choice('ethereum:local:foundry'):\n"
         "    a = accounts.load('buyer'); a.set_autosign(True)\n"
         "    contract_at(live_deployment('local'), 'USDC').mint(a, 1_000 * 10**6, sender=a)"],
        env=dict(env, APE_ACCOUNTS_buyer_PASSPHRASE=PASSPHRASE), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert faucet.returncode == 0, faucet.stderr[-2000:]

    deposit = promptex(env, "wallet", "deposit", "--asset", "USDC", "--amount", "250.5", "--account", "buyer", "--yes")
    assert deposit.returncode == 0, deposit.stderr[-2000:]
    assert "deposited 250.50 USDC; vault balance 250.50 USDC" in deposit.stdout

    swap = promptex(
        env, "wallet", "swap", "--from", "USDC", "--to", "CLD", "--amount", "10", "--account", "buyer", "--yes"
    )
    assert swap.returncode == 0, swap.stderr[-2000:]
    assert "via USDC → CLD for" in swap.stdout

    # An instant exit with a release the coordinator (deployer = anvil account 0 locally) signed.
    deployment = json.loads((Path(env["PROMPTEX_DEPLOYMENTS_DIR"]) / "local.json").read_text())
    usdc, vault = deployment["contracts"]["USDC"]["address"], deployment["contracts"]["CreditsVault"]["address"]
    buyer = Account.from_key(KEY).address
    fields = dict(chain_id=31337, vault=vault, account=buyer, asset=usdc, amount=10 * 10**6, nonce=0, expiry=2**40)
    signature = sign_release(ANVIL_KEY_0, **fields)
    release = {"address": buyer, "asset": "USDC", "amount": "10000000", "nonce": 0, "expiry": 2**40}
    (release_file := tmp_path / "release.json").write_text(json.dumps({**release, "signature": "0x" + signature.hex()}))
    instant = promptex(env, "wallet", "exit-instant", "--release", str(release_file), "--account", "buyer", "--yes")
    assert instant.returncode == 0, instant.stderr[-2000:]
    assert "left the vault with 10.00 USDC at once" in instant.stdout
    replayed = promptex(env, "wallet", "exit-instant", "--release", str(release_file), "--account", "buyer", "--yes")
    assert replayed.returncode == 1 and "vault: bad nonce" in replayed.stderr

    withdraw = promptex(env, "wallet", "withdraw", "--asset", "USDC", "--amount", "50", "--account", "buyer", "--yes")
    assert withdraw.returncode == 0, withdraw.stderr[-2000:]
    assert "withdrawal of 50.00 USDC requested" in withdraw.stdout

    balances = promptex(env, "wallet", "balances", "--account", "buyer")
    assert balances.returncode == 0, balances.stderr[-2000:]
    usdc_line = next(line for line in balances.stdout.splitlines() if line.startswith("USDC"))
    # wallet 1,000 − 250.5 − 10 (swapped) + 10 (instant exit); vault 250.5 − 10; withdrawing 50
    assert usdc_line.split() == ["USDC", "749.50", "USDC", "240.50", "USDC", "50.00", "USDC"]

    status = promptex(env, "status")
    assert status.returncode == 0, status.stderr[-2000:]
    assert "CLD/USDC" in status.stdout and "lots: 4" in status.stdout


def test_wallet__complete_withdraw_take_token__the_provider_token_leaves_as_itself(market):
    # The trustless exit's fallback: a provider token taken to the wallet instead of sold.
    env = market
    buyer = Account.from_key(KEY).address
    deployment = json.loads((Path(env["PROMPTEX_DEPLOYMENTS_DIR"]) / "local.json").read_text())
    cld = Web3(Web3.HTTPProvider(env["APE_FOUNDRY_HOST"])).eth.contract(
        address=deployment["contracts"]["token:CLD"]["address"],
        abi=[{"name": "balanceOf", "type": "function", "stateMutability": "view",
              "inputs": [{"name": "a", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]}],
    )  # fmt: skip
    held = cld.functions.balanceOf(buyer).call()  # bought in the test above
    amount = held // 10**18 // 2
    assert amount > 0
    for args in (("deposit", "--amount", str(amount)), ("withdraw", "--amount", str(amount))):
        done = promptex(env, "wallet", args[0], "--asset", "CLD", *args[1:], "--account", "buyer", "--yes")
        assert done.returncode == 0, done.stderr[-2000:]
    rpc(env["APE_FOUNDRY_HOST"], "evm_increaseTime", 3_600)  # past any thaw and pause
    rpc(env["APE_FOUNDRY_HOST"], "evm_mine")

    both = promptex(env, "wallet", "complete-withdraw", "--asset", "CLD", "--take-token", "--min-out", "1",
                    "--account", "buyer", "--yes")  # fmt: skip
    assert both.returncode == 1 and "--take-token sells nothing" in both.stderr
    taken = promptex(
        env, "wallet", "complete-withdraw", "--asset", "CLD", "--take-token", "--account", "buyer", "--yes"
    )
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert f"withdrew {amount:,}.00 CLD (to your wallet)" in taken.stdout
    assert cld.functions.balanceOf(buyer).call() == held  # all of it back as the token itself


def test_wallet__bad_input__clear_error_and_nothing_moves(market, tmp_path):
    env = market
    too_precise = promptex(
        env, "wallet", "deposit", "--asset", "USDC", "--amount", "1.0000001", "--account", "stranger"
    )
    assert too_precise.returncode == 1
    assert "USDC has 6 decimals" in too_precise.stderr

    wrong_passphrase = promptex(
        env,
        "wallet",
        "deposit",
        "--asset",
        "USDC",
        "--amount",
        "1",
        "--account",
        "stranger",
        "--yes",
        passphrase="nope",
    )
    assert wrong_passphrase.returncode == 1 and len(wrong_passphrase.stderr.strip().splitlines()) == 1
    assert "Traceback" not in wrong_passphrase.stderr

    foreign = tmp_path / "foreign.json"  # a release made out to another address
    foreign.write_text(json.dumps({"address": "0x" + "11" * 20, "asset": "USDC", "amount": "1", "nonce": 0,
                                   "expiry": 2**40, "signature": "0x" + "00" * 65}))  # fmt: skip
    not_yours = promptex(env, "wallet", "exit-instant", "--release", str(foreign), "--account", "stranger", "--yes")
    assert not_yours.returncode == 1 and "this release is for 0x1111" in not_yours.stderr

    no_funds = promptex(env, "wallet", "withdraw", "--asset", "USDC", "--amount", "5", "--account", "stranger", "--yes")
    assert no_funds.returncode == 1  # the revert decoded to its reason, one line, no call trace
    assert no_funds.stderr.strip() == "Error: reverted: vault: amount exceeds balance", no_funds.stderr

    balances = promptex(env, "wallet", "balances", "--account", "stranger")
    usdc_line = next(line for line in balances.stdout.splitlines() if line.startswith("USDC"))
    assert usdc_line.split() == ["USDC", "0.00", "USDC", "0.00", "USDC", "0.00", "USDC"]


def test_wallet__spend_cap__unlimited_for_one__both_refused_before_any_transaction__shown_as_entered(market):
    env, user = market, Account.from_key(STRANGER_KEY).address
    vault, usdc = contract(env, "CreditsVault"), contract(env, "USDC")
    sent = Web3(Web3.HTTPProvider(env["APE_FOUNDRY_HOST"])).eth.get_transaction_count(user)

    both = promptex(env, "wallet", "spend-cap", "--asset", "USDC", "--per-epoch", "unlimited", "--total", "Unlimited",
                    "--account", "stranger", "--yes")  # fmt: skip
    assert both.returncode == 1 and both.stdout == "", both.stdout
    assert both.stderr.strip().splitlines() == [
        "Error: a spend cap needs a limit: --per-epoch and --total cannot both be unlimited (give one an amount) "
        "(see `promptex wallet spend-cap --help`)"
    ]
    assert Web3(Web3.HTTPProvider(env["APE_FOUNDRY_HOST"])).eth.get_transaction_count(user) == sent  # nothing sent

    capped = promptex(env, "wallet", "spend-cap", "--asset", "USDC", "--per-epoch", "50", "--total", "unlimited",
                      "--account", "stranger", "--yes")  # fmt: skip
    assert capped.returncode == 0, capped.stderr[-2000:]
    assert "USDC cap: 50.00 USDC per epoch, unlimited in total, until 20" in capped.stdout  # as entered
    per_epoch, total, _expiry = vault.functions.spend_cap(user, usdc.address).call()
    assert 50 * 10**6 <= per_epoch < 50 * 10**6 + 2**9 and total == 2**96 - 1  # never below 50; MAX_CAP_TOTAL

    lowered = promptex(env, "wallet", "spend-cap", "--asset", "USDC", "--per-epoch", "unlimited",
                       "--total", "12.5", "--account", "stranger", "--yes")  # fmt: skip
    assert lowered.returncode == 1 and lowered.stdout == "", lowered.stdout  # no call trace
    assert lowered.stderr.strip() == "Error: reverted: vault: new cap lowers the active cap"

    cld = contract(env, "token:CLD")
    per_epoch_unlimited = promptex(env, "wallet", "spend-cap", "--asset", "CLD", "--per-epoch", "unlimited",
                                   "--total", "12.5", "--account", "stranger", "--yes")  # fmt: skip
    assert "CLD cap: unlimited per epoch, 12.50 CLD in total" in per_epoch_unlimited.stdout
    assert vault.functions.spend_cap(user, cld.address).call()[1] == 12_500_000_000_000_000_000


def contract(env, name):
    deployment = json.loads((Path(env["PROMPTEX_DEPLOYMENTS_DIR"]) / "local.json").read_text())
    record = deployment["contracts"][name]
    w3 = Web3(Web3.HTTPProvider(env["APE_FOUNDRY_HOST"]))
    return w3.eth.contract(address=record["address"], abi=json.loads(Path(record["abi"]).read_text()))


def test_wallet__redemption_grant_link_revoke__signed_by_the_keyfile_user(market):
    env, user, agent = market, Account.from_key(STRANGER_KEY).address, Web3.to_checksum_address("0x" + "a6" * 20)
    escrow, cld = contract(env, "RedemptionEscrow"), contract(env, "token:CLD")
    ref = "0x" + "ab" * 32

    bad = promptex(env, "wallet", "grant-agent", "--agent", agent, "--token", "CLD", "--account", "stranger", "--yes")
    assert bad.returncode == 1 and "expected SYMBOL=DAILY_LIMIT" in bad.stderr
    granted = promptex(
        env, "wallet", "grant-agent", "--agent", agent, "--token", "CLD=1500.5", "--slippage", "3",
        "--account", "stranger", "--yes",
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr[-2000:]
    payee, _expiry, slippage_bps, _version = escrow.functions.grant(user, agent).call()
    assert (payee, slippage_bps) == (agent, 300)
    assert escrow.functions.daily_limit(user, agent, cld.address).call() == 1500_5 * 10**17
    assert cld.functions.allowance(user, escrow.address).call() == 2**256 - 1

    linked = promptex(
        env, "wallet", "link-account", "--provider", "anthropic", "--account-ref", ref, "--account", "stranger", "--yes"
    )
    assert linked.returncode == 0, linked.stderr[-2000:]
    assert escrow.functions.linked_account(user, provider_id("anthropic")).call() == bytes.fromhex(ref[2:])

    revoked = promptex(env, "wallet", "revoke-agent", "--agent", agent, "--account", "stranger", "--yes")
    assert revoked.returncode == 0, revoked.stderr[-2000:]
    assert int(escrow.functions.grant(user, agent).call()[0], 16) == 0
    again = promptex(env, "wallet", "revoke-agent", "--agent", agent, "--account", "stranger", "--yes")
    assert again.returncode == 1 and "redemption: no grant" in again.stderr and "Traceback" not in again.stderr

    nothing = promptex(env, "wallet", "claim", "--account", "stranger", "--yes")
    assert nothing.returncode == 1 and "nothing to claim in USDC" in nothing.stderr
    no_refund = promptex(env, "wallet", "refund", "--redemption", "7", "--account", "stranger", "--yes")
    assert no_refund.returncode == 1 and "redemption: not open" in no_refund.stderr
    assert "Traceback" not in no_refund.stderr
