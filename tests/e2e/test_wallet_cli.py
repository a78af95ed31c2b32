"""`promptex wallet …` and `promptex status`: run in this process (click's CliRunner) against
the market on ape's test chain, signed by test accounts; and one smoke test of the console
script in its own process, signed by a real ape keyfile account (not a test account) against
an anvil with the deployed and seeded market."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from anvil_node import ROOT, ape_env
from promptex.chain.deploy import contract_at
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, buy_back_payout
from promptex.protocol.redemption import provider_id
from promptex.protocol.units import whole_units
from promptex.protocol.vault import UNLIMITED, pack_debits, pack_lot_amount, sign_release

BUYER, STRANGER = "TEST::2", "TEST::6"
USD = 10**6

# A throwaway key for the smoke test's keyfile account, made for these tests only.
KEY = "0x" + "5e" * 32
PASSPHRASE = "correct horse battery staple"


def test_wallet__test_account__mints_deposits_swaps_withdraws(promptex_cli, chain_market, accounts, chain, tmp_path):
    deployment, _ = chain_market
    buyer, coordinator = accounts[2], accounts[0]  # the deployer is the vault's coordinator locally
    usdc, vault = contract_at(deployment, "USDC"), contract_at(deployment, "CreditsVault")
    usdc.mint(buyer, 1_000 * USD, sender=buyer)  # MockUSDC is an open faucet

    deposit = promptex_cli("wallet", "deposit", "--asset", "USDC", "--amount", "250.5", "--account", BUYER)
    assert deposit.exit_code == 0, deposit.output
    assert "deposited 250.50 USDC; vault balance 250.50 USDC" in deposit.output

    swap = promptex_cli("wallet", "swap", "--from", "USDC", "--to", "CLD", "--amount", "10", "--account", BUYER)
    assert swap.exit_code == 0, swap.output
    assert "via USDC → CLD for" in swap.output

    # An instant exit with a release the coordinator signed.
    fields = dict(vault=vault.address, account=buyer.address, asset=usdc.address, amount=10 * USD, nonce=0)
    signature = sign_release(coordinator.private_key, chain_id=chain.chain_id, expiry=2**40, **fields)
    release = {"address": buyer.address, "asset": "USDC", "amount": "10000000", "nonce": 0, "expiry": 2**40}
    (release_file := tmp_path / "release.json").write_text(json.dumps({**release, "signature": "0x" + signature.hex()}))
    instant = promptex_cli("wallet", "exit-instant", "--release", str(release_file), "--account", BUYER)
    assert instant.exit_code == 0, instant.output
    assert "left the vault with 10.00 USDC at once" in instant.output
    replayed = promptex_cli("wallet", "exit-instant", "--release", str(release_file), "--account", BUYER)
    assert replayed.exit_code == 1 and "vault: bad nonce" in replayed.output

    withdraw = promptex_cli("wallet", "withdraw", "--asset", "USDC", "--amount", "50", "--account", BUYER)
    assert withdraw.exit_code == 0, withdraw.output
    assert "withdrawal of 50.00 USDC requested" in withdraw.output

    balances = promptex_cli("wallet", "balances", "--account", BUYER)
    assert balances.exit_code == 0, balances.output
    usdc_line = next(line for line in balances.output.splitlines() if line.startswith("USDC"))
    # wallet 1,000 − 250.5 − 10 (swapped) + 10 (instant exit); vault 250.5 − 10; withdrawing 50
    assert usdc_line.split() == ["USDC", "749.50", "USDC", "240.50", "USDC", "50.00", "USDC"]
    # --json: the same in exact smallest units, nothing else on stdout.
    as_json = promptex_cli("wallet", "balances", "--account", BUYER, "--json")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    row = next(r for r in report["balances"] if r["asset"] == "USDC")
    assert (report["account"], row["wallet_units"], row["vault_units"], row["withdrawing_units"]) == (
        buyer.address,
        "749500000",
        "240500000",
        "50000000",
    )

    status = promptex_cli("status")
    assert status.exit_code == 0, status.output
    assert "CLD/USDC" in status.output and "lots: 4" in status.output
    tokenized = [line for line in status.output.splitlines() if " tokenized " in line]
    assert tokenized and all(line.count("($") == 2 or "(no price yet)" in line for line in tokenized), status.output


def test_wallet__complete_withdraw_take_token__the_provider_token_leaves_as_itself(
    promptex_cli, chain_market, accounts, chain
):
    # The trustless exit's fallback: a provider token taken to the wallet instead of sold.
    deployment, _ = chain_market
    buyer = accounts[2]
    usdc, cld = contract_at(deployment, "USDC"), contract_at(deployment, "token:CLD")
    usdc.mint(buyer, 100 * USD, sender=buyer)  # MockUSDC is an open faucet
    bought = promptex_cli("wallet", "swap", "--from", "USDC", "--to", "CLD", "--amount", "50", "--account", BUYER)
    assert bought.exit_code == 0, bought.output
    held = cld.balanceOf(buyer)
    amount = held // 10**18 // 2
    assert amount > 0
    deposited = promptex_cli("wallet", "deposit", "--asset", "CLD", "--amount", str(amount), "--account", BUYER,
                             "--json")  # fmt: skip
    assert deposited.exit_code == 0, deposited.output
    assert json.loads(deposited.output)["amount_units"] == str(amount * 10**18)
    for args in (("withdraw",), ("cancel-withdraw", "--json"), ("withdraw",)):
        done = promptex_cli("wallet", *args, *(["--amount", str(amount)] if args[0] == "withdraw" else []),
                            "--asset", "CLD", "--account", BUYER)  # fmt: skip
        assert done.exit_code == 0, done.output
        if args[0] == "cancel-withdraw":  # nothing moved: the amount stays spendable
            assert json.loads(done.output)["amount_units"] == str(amount * 10**18)
    early = promptex_cli("wallet", "complete-withdraw", "--asset", "CLD", "--account", BUYER)
    assert early.exit_code == 1 and f"the withdrawal of {amount:,}.00 CLD thaws until 20" in early.output, early.output
    chain.pending_timestamp += 3_600  # past any thaw and pause

    both = promptex_cli("wallet", "complete-withdraw", "--asset", "CLD", "--take-token", "--min-out", "1",
                        "--account", BUYER)  # fmt: skip
    assert both.exit_code == 1 and "--take-token sells nothing" in both.output
    taken = promptex_cli("wallet", "complete-withdraw", "--asset", "CLD", "--take-token", "--account", BUYER)
    assert taken.exit_code == 0, taken.output
    assert f"withdrew {amount:,}.00 CLD (to your wallet)" in taken.output
    again = promptex_cli("wallet", "complete-withdraw", "--asset", "CLD", "--json", "--account", BUYER)
    assert again.exit_code == 1 and "vault: no pending exit" in again.output  # errors stay one line under --json
    assert cld.balanceOf(buyer) == held  # all of it back as the token itself


def test_wallet__bad_input__clear_error_and_nothing_moves(promptex_cli, tmp_path):
    too_precise = promptex_cli("wallet", "deposit", "--asset", "USDC", "--amount", "1.0000001", "--account", STRANGER)
    assert too_precise.exit_code == 1
    assert "USDC has 6 decimals" in too_precise.output

    foreign = tmp_path / "foreign.json"  # a release made out to another address
    foreign.write_text(json.dumps({"address": "0x" + "11" * 20, "asset": "USDC", "amount": "1", "nonce": 0,
                                   "expiry": 2**40, "signature": "0x" + "00" * 65}))  # fmt: skip
    not_yours = promptex_cli("wallet", "exit-instant", "--release", str(foreign), "--account", STRANGER)
    assert not_yours.exit_code == 1 and "this release is for 0x1111" in not_yours.output

    no_funds = promptex_cli("wallet", "withdraw", "--asset", "USDC", "--amount", "5", "--account", STRANGER)
    assert no_funds.exit_code == 1  # the revert decoded to its reason, one line, no call trace
    assert no_funds.output.strip() == "Error: reverted: vault: amount exceeds balance", no_funds.output
    assert "Traceback" not in too_precise.output + not_yours.output + no_funds.output

    balances = promptex_cli("wallet", "balances", "--account", STRANGER)
    usdc_line = next(line for line in balances.output.splitlines() if line.startswith("USDC"))
    assert usdc_line.split() == ["USDC", "0.00", "USDC", "0.00", "USDC", "0.00", "USDC"]


def test_wallet__spend_cap__unlimited_for_one__both_refused_before_any_transaction__shown_as_entered(
    promptex_cli, chain_market, accounts
):
    deployment, _ = chain_market
    user = accounts[6]
    vault, usdc, cld = (contract_at(deployment, name) for name in ("CreditsVault", "USDC", "token:CLD"))
    sent = user.nonce

    both = promptex_cli("wallet", "spend-cap", "--asset", "USDC", "--per-epoch", "unlimited", "--total", "Unlimited",
                        "--account", STRANGER)  # fmt: skip
    assert both.exit_code == 1
    assert both.output.strip().splitlines() == [  # the one line and nothing else
        "Error: a spend cap needs a limit: --per-epoch and --total cannot both be unlimited (give one an amount) "
        "(see `promptex wallet spend-cap --help`)"
    ]
    assert user.nonce == sent  # nothing sent

    capped = promptex_cli("wallet", "spend-cap", "--asset", "USDC", "--per-epoch", "50", "--total", "unlimited",
                          "--account", STRANGER)  # fmt: skip
    assert capped.exit_code == 0, capped.output
    assert "USDC cap: 50.00 USDC per epoch, unlimited in total, until 20" in capped.output  # as entered
    per_epoch, total, _expiry = vault.spend_cap(user, usdc)
    assert 50 * 10**6 <= per_epoch < 50 * 10**6 + 2**9 and total == 2**96 - 1  # never below 50; MAX_CAP_TOTAL

    lowered = promptex_cli("wallet", "spend-cap", "--asset", "USDC", "--per-epoch", "unlimited", "--total", "12.5",
                           "--account", STRANGER)  # fmt: skip
    assert lowered.exit_code == 1  # no call trace
    assert lowered.output.strip() == "Error: reverted: vault: new cap lowers the active cap", lowered.output

    per_epoch_unlimited = promptex_cli("wallet", "spend-cap", "--asset", "CLD", "--per-epoch", "unlimited",
                                       "--total", "12.5", "--account", STRANGER)  # fmt: skip
    assert "CLD cap: unlimited per epoch, 12.50 CLD in total" in per_epoch_unlimited.output
    assert vault.spend_cap(user, cld)[1] == 12_500_000_000_000_000_000
    raw = promptex_cli("wallet", "spend-cap", "--asset", "CLD", "--per-epoch", "unlimited", "--total", "12.5",
                       "--account", STRANGER, "--json")  # fmt: skip
    signed = json.loads(raw.output)  # asked (null: unlimited) and as the vault holds it
    assert (signed["per_epoch_units"], signed["total_units"]) == (None, "12500000000000000000")
    assert signed["signed_per_epoch_units"] == str(UNLIMITED)  # the sentinel the vault stores its own way
    assert int(signed["signed_total_units"]) == vault.spend_cap(user, cld)[1]


def test_wallet__redemption_grant_link_revoke__signed_by_the_user(promptex_cli, chain_market, accounts):
    deployment, _ = chain_market
    user, agent = accounts[6].address, Web3.to_checksum_address("0x" + "a6" * 20)
    escrow, cld = contract_at(deployment, "RedemptionEscrow"), contract_at(deployment, "token:CLD")
    ref = "0x" + "ab" * 32

    bad = promptex_cli("wallet", "grant-agent", "--agent", agent, "--token", "CLD", "--account", STRANGER)
    assert bad.exit_code == 1 and "expected SYMBOL=DAILY_LIMIT" in bad.output
    granted = promptex_cli(
        "wallet", "grant-agent", "--agent", agent, "--token", "CLD=1500.5", "--slippage", "3", "--account", STRANGER
    )
    assert granted.exit_code == 0, granted.output
    grant = escrow.grant(user, agent)
    assert (grant[0], grant[2]) == (agent, 300)  # payee, slippage in bps
    assert escrow.daily_limit(user, agent, cld) == 1500_5 * 10**17
    assert cld.allowance(user, escrow) == 2**256 - 1

    linked = promptex_cli(
        "wallet", "link-account", "--provider", "anthropic", "--account-ref", ref, "--account", STRANGER
    )
    assert linked.exit_code == 0, linked.output
    assert escrow.linked_account(user, provider_id("anthropic")) == bytes.fromhex(ref[2:])

    revoked = promptex_cli("wallet", "revoke-agent", "--agent", agent, "--account", STRANGER)
    assert revoked.exit_code == 0, revoked.output
    assert int(escrow.grant(user, agent)[0], 16) == 0
    again = promptex_cli("wallet", "revoke-agent", "--agent", agent, "--account", STRANGER)
    assert again.exit_code == 1 and "redemption: no grant" in again.output and "Traceback" not in again.output

    nothing = promptex_cli("wallet", "claim", "--account", STRANGER)
    assert nothing.exit_code == 1 and "nothing to claim in USDC" in nothing.output
    no_refund = promptex_cli("wallet", "refund", "--redemption", "7", "--account", STRANGER)
    assert no_refund.exit_code == 1 and "redemption: not open" in no_refund.output
    assert "Traceback" not in no_refund.output


def test_wallet_balances__a_sellers_earnings_to_claim__shown_until_claimed(promptex_cli, chain_market, accounts, chain):
    """A settlement credits a listed lot's seller; `wallet balances` says what is to claim and how
    (before: nothing showed it — a seller learned its earnings only by claiming them)."""
    deployment, _ = chain_market
    # Without --account a local chain signs with test account 0, the operator's wallet: said before it signs.
    operators = promptex_cli("wallet", "balances", "--json")
    assert operators.exit_code == 0 and operators.output.startswith(
        f"no --account: signing with test account 0 ({accounts[0].address}), the local market operator's wallet"
    ), operators.output
    attestor, buyer, seller = accounts[0], accounts[2], accounts[6]  # the deployer: attestor and coordinator
    names = ("CreditEscrow", "CreditsVault", "USDC", "token:GPT")
    escrow, vault, usdc, gpt = (contract_at(deployment, n) for n in names)
    face = 100 * USD
    bond = escrow.min_bond(face)
    usdc.mint(seller, bond, sender=seller)
    usdc.approve(escrow, bond, sender=seller)
    expiry = chain.pending_timestamp + 30 * 86_400
    escrow.open_lot(seller, gpt, KIND_LISTED, face, expiry, bond, b"\x11" * 32, 10_000, sender=attestor)
    usdc.mint(buyer, 10 * USD, sender=buyer)
    usdc.approve(vault, 10 * USD, sender=buyer)
    vault.deposit(usdc, 10 * USD, sender=buyer)
    vault.set_spend_cap(usdc, 2**256 - 1, 10**30, 2**32 - 1, sender=buyer)
    chain.pending_timestamp = max(chain.pending_timestamp, vault.next_settlement_at(usdc))
    debits, credits = pack_debits({buyer.address: 1_250_000}), [pack_lot_amount(escrow.lot_count(), 1_250_000)]
    vault.settle(vault.last_epoch(usdc) + 1, usdc, debits, credits, 0, 0, b"\x22" * 32, sender=attestor)
    assert vault.claimable(seller, usdc) == 1_250_000

    shown = promptex_cli("wallet", "balances", "--account", STRANGER)
    assert shown.exit_code == 0, shown.output
    assert "earned as a seller, to claim: 1.25 USDC (promptex wallet claim --asset USDC)" in shown.output
    as_json = json.loads(promptex_cli("wallet", "balances", "--account", STRANGER, "--json").output)
    assert next(r for r in as_json["balances"] if r["asset"] == "USDC")["claimable_units"] == "1250000"
    claimed = promptex_cli("wallet", "claim", "--account", STRANGER)
    # Where it went (before: "claimed 1.25 USDC", and the wallet's balance reads rounded down)
    assert claimed.exit_code == 0 and f"claimed 1.25 USDC into the wallet {seller.address}" in claimed.output
    after = promptex_cli("wallet", "balances", "--account", STRANGER)
    assert after.exit_code == 0 and "to claim" not in after.output, after.output


def test_wallet__buy_back__unbacked_tokens_sold_to_the_fund_and_burned__more_than_unbacked_refused(
    promptex_cli, chain_market, accounts, chain
):
    deployment, _ = chain_market
    attestor, holder = accounts[0], accounts[6]  # the deployer is an attestor locally; STRANGER holds the tokens
    escrow, usdc, cld = (contract_at(deployment, n) for n in ("CreditEscrow", "USDC", "token:CLD"))
    nothing = promptex_cli("wallet", "buy-back", "--token", "CLD", "--amount", "1", "--account", STRANGER)
    assert nothing.exit_code == 1 and "no CLD is unbacked" in nothing.output

    face = 100 * USD  # a tokenized lot, its tokens minted to the holder as its seller, then slashed
    bond = escrow.tokenized_bond(cld, face)  # the token's share: the only bond a tokenized lot takes
    usdc.mint(holder, bond, sender=holder)
    usdc.approve(escrow, bond, sender=holder)
    expiry = chain.pending_timestamp + 30 * 86_400
    escrow.open_lot(holder, cld, KIND_TOKENIZED, face, expiry, bond, b"\x11" * 32, 0, sender=attestor)
    escrow.slash(escrow.lot_count(), sender=attestor)
    unbacked, held, fund = escrow.unbacked(cld), cld.balanceOf(holder), escrow.insurance_fund(cld)
    assert unbacked > held > 11 * 10**18 and fund > 0
    usdc_before = usdc.balanceOf(holder)

    beyond = promptex_cli(
        "wallet", "buy-back", "--token", "CLD", "--amount", str(unbacked // 10**18 + 1), "--account", STRANGER
    )
    assert beyond.exit_code == 1 and "is unbacked; sell at most" in beyond.output
    # The amount it names to type is the most it takes, exactly (it named the refused amount again).
    assert f"(--amount {whole_units(unbacked, 18)})" in beyond.output, beyond.output
    greedy = promptex_cli(
        "wallet", "buy-back", "--token", "CLD", "--amount", "10", "--min-out", "1000", "--account", STRANGER
    )
    assert greedy.exit_code == 1 and "below --min-out" in greedy.output
    assert (escrow.unbacked(cld), cld.balanceOf(holder), usdc.balanceOf(holder)) == (unbacked, held, usdc_before)

    quote = escrow.quote_buy_back(cld, 10 * 10**18)
    sold = promptex_cli("wallet", "buy-back", "--token", "CLD", "--amount", "10", "--account", STRANGER, "--json")

    assert sold.exit_code == 0, sold.output
    assert quote == buy_back_payout(10 * 10**18, cld.face_value_usd_micro())  # CLD's bond share of face
    assert quote > 0 and usdc.balanceOf(holder) - usdc_before == quote
    assert json.loads(sold.output) | {"tx": None} == {
        "token": "CLD", "amount_units": str(10 * 10**18), "paid_units": str(quote),
        "unbacked_before_units": str(unbacked), "tx": None,
    }  # fmt: skip
    one = promptex_cli("wallet", "buy-back", "--token", "CLD", "--amount", "1", "--account", STRANGER)
    assert one.exit_code == 0 and "sold 1.00 CLD to the insurance fund for" in one.output, one.output
    assert cld.balanceOf(holder) == held - 11 * 10**18 and escrow.unbacked(cld) == unbacked - 11 * 10**18
    assert escrow.insurance_fund(cld) == fund - quote - (usdc.balanceOf(holder) - usdc_before - quote)


# ─── The console script, in its own process, with a keyfile account ─────────


def import_keyfile(env, alias, key):
    made = subprocess.run(
        [sys.executable, "-c", "import sys; from ape_accounts import import_account_from_private_key as i; "
         "print(i(sys.argv[1], sys.argv[2], sys.argv[3]).address)", alias, PASSPHRASE, key],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    return made.stdout.strip().splitlines()[-1]


def promptex(env, *args, passphrase=PASSPHRASE):
    env = dict(env, APE_ACCOUNTS_buyer_PASSPHRASE=passphrase)
    return subprocess.run(
        [str(ROOT / ".venv/bin/promptex"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def contract(env, name):
    record = json.loads((Path(env["PROMPTEX_DEPLOYMENTS_DIR"]) / "local.json").read_text())["contracts"][name]
    w3 = Web3(Web3.HTTPProvider(env["APE_FOUNDRY_HOST"]))
    return w3, w3.eth.contract(address=record["address"], abi=json.loads(Path(record["abi"]).read_text()))


@pytest.fixture(scope="module")
def keyfile_env(seeded_anvil, tmp_path_factory):
    """The environment of a `promptex` process on the worker's market anvil, with a keyfile
    account `buyer` (in its own ape data folder) that holds gas and 100 USDC: both from
    `promptex wallet faucet`, which reads the keyfile's address without its passphrase."""
    url, deployments = seeded_anvil
    env = dict(ape_env(url, deployments), APE_DATA_FOLDER=str(tmp_path_factory.mktemp("ape-data")))
    buyer = import_keyfile(env, "buyer", KEY)
    w3, usdc = contract(env, "USDC")
    assert w3.eth.get_balance(buyer) == 0 and usdc.functions.balanceOf(buyer).call() == 0
    faucet = promptex(env, "wallet", "faucet", "--account", "buyer", "--amount", "100", passphrase="not asked")
    assert faucet.returncode == 0, faucet.stderr[-2000:]
    assert faucet.stdout.splitlines() == [
        f"minted 100.00 USDC ($100.00 of test dollars) and 1 ETH for gas to {buyer} (buyer)",
        "its wallet holds 100.00 USDC; next: promptex wallet deposit --asset USDC --amount N --account buyer",
    ]
    assert usdc.functions.balanceOf(buyer).call() == 100 * USD and w3.eth.get_balance(buyer) == 10**18
    return env


def test_console_script__keyfile_account__deposits_and_a_wrong_passphrase_is_one_clear_error(keyfile_env):
    deposit = promptex(keyfile_env, "wallet", "deposit", "--asset", "USDC", "--amount", "25", "--account", "buyer",
                       "--yes")  # fmt: skip
    assert deposit.returncode == 0, deposit.stderr[-2000:]
    assert "deposited 25.00 USDC; vault balance 25.00 USDC" in deposit.stdout

    wrong = promptex(keyfile_env, "wallet", "deposit", "--asset", "USDC", "--amount", "1", "--account", "buyer",
                     "--yes", passphrase="nope")  # fmt: skip
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1
    assert "Traceback" not in wrong.stderr
    buyer = Account.from_key(KEY).address
    (_, usdc), (_, vault) = contract(keyfile_env, "USDC"), contract(keyfile_env, "CreditsVault")
    assert usdc.functions.balanceOf(buyer).call() == 75 * USD  # the refused deposit moved nothing
    assert vault.functions.balance_of(buyer, usdc.address).call() == 25 * USD
