"""`promptex hedge …` against a deployed and seeded anvil: a dealer writes and offers capped
calls, a buyer takes them and a perpetual long, the price rises, the buyer closes the long
and claims the settled call; the P&L printed is what the contracts paid."""

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from eth_utils.crypto import keccak

from anvil_node import ROOT, ape_env, ape_run, running_anvil

DEALER, BUYER, TRADER = "TEST::1", "TEST::2", "TEST::3"


def rpc(url, method, *params):
    answer = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=10)
    return answer.json().get("result")


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("hedge")
    with running_anvil() as url:
        env = ape_env(url, root / "deployments")
        for script in ("deploy", "seed_market"):
            result = ape_run(env, script)
            assert result.returncode == 0, result.stderr[-3000:]
        yield url, env


def promptex(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "promptex.cli", "hedge", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def faucet(env, grants):
    """MockUSDC for each (account, dollars), in one process."""
    code = (
        "import sys\nfrom ape import networks\nfrom promptex.chain.accounts import resolve_account\n"
        "from promptex.chain.deploy import contract_at, live_deployment\n"
        "with networks.parse_network_choice('ethereum:local:foundry'):\n"
        "    usdc = contract_at(live_deployment('local'), 'USDC')\n"
        "    for alias, dollars in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "        a = resolve_account(alias)\n"
        "        usdc.mint(a, int(dollars) * 10**6, sender=a)\n"
    )
    args = [str(item) for grant in grants for item in grant]
    made = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]


def test_hedge__write_buy_open_close_settle_claim__pnl_from_the_contracts(market):
    url, env = market
    faucet(env, [(DEALER, 2_000_000), (BUYER, 100_000), (TRADER, 20_000)])
    # The GPT pool is seeded at $3.695; a 1-day capped call 3.70 → 4.50 on 1,000 GPT a unit.
    written = ok(promptex(env, "write", "--token", "GPT", "--kind", "call", "--strike", "3.70", "--bound", "4.50",
                          "--days", "1", "--units", "10", "--premium", "100", "--account", DEALER,
                          "--yes"))  # fmt: skip
    assert "collateral 8,000 USDC" in written and "offer 1: 10 units at 100 USDC each" in written
    series, expiry = re.search(r"series (\d+): wrote 10 units expiring at (\d+)", written).groups()
    assert "bought 10 units" in ok(promptex(env, "buy", "--offer", "1", "--units", "10", "--account", BUYER, "--yes"))

    keeper(url, env, jump=700, updates=1)  # the perpetual prices on a 600-s TWAP: cover it
    no_shares = promptex(env, "withdraw-liquidity", "--account", BUYER, "--yes")
    assert no_shares.returncode == 1 and "no pool shares to withdraw" in no_shares.stderr
    assert "provided 1,000,000 USDC" in ok(
        promptex(env, "provide", "--amount", "1000000", "--account", DEALER, "--yes")
    )
    too_much = promptex(env, "open", "--token", "GPT", "--side", "long", "--margin", "100", "--notional", "5000",
                        "--account", BUYER, "--yes")  # fmt: skip
    assert too_much.returncode == 1 and "perp: leverage too high" in too_much.stderr
    assert "Traceback" not in too_much.stderr
    # At most 10 % of the $25k GPT/USDC pool a side (the Oracle's pool depth caps open interest).
    opened = ok(promptex(env, "open", "--token", "GPT", "--side", "long", "--margin", "400", "--notional", "2000",
                         "--account", BUYER, "--yes"))  # fmt: skip
    position = re.search(r"position (\d+): long", opened).group(1)

    # GPT rises: a trader buys $5,000 of it; a keeper updates the Oracle across the expiry.
    swap = subprocess.run([sys.executable, "-m", "promptex.cli", "wallet", "swap", "--from", "USDC", "--to", "GPT",
                           "--amount", "5000", "--slippage", "5", "--account", TRADER, "--yes"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert swap.returncode == 0, swap.stderr[-2000:]
    now = int(rpc(url, "eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    keeper(url, env, jump=int(expiry) - 900 - now, updates=20)  # Oracle updates from 15 min before expiry

    shown = ok(promptex(env, "show", "--account", BUYER))
    long_row = next(line for line in shown.splitlines() if line.split()[:2] == [position, "long"])
    assert long_row.split()[-1].startswith("+")  # the long gained (P&L column)
    assert "call" in shown and " 10 " in shown  # the 10 call units held

    closed = ok(promptex(env, "close", "--position", position, "--account", BUYER, "--yes"))
    pnl = Decimal(re.search(r"P&L ([+−][\d,.]+) USDC", closed).group(1).replace("−", "-").replace(",", ""))
    assert pnl > 0

    settled = ok(promptex(env, "settle", "--series", series, "--account", TRADER, "--yes"))
    payout = amount(r": ([\d,.]+) USDC a unit", settled)
    assert 0 < payout <= 800  # capped at (4.50 − 3.70) × 1,000
    claimed = ok(promptex(env, "claim", "--series", series, "--account", BUYER, "--yes"))
    assert amount(r"claimed ([\d,.]+) USDC", claimed) == payout * 10
    reclaimed = ok(promptex(env, "reclaim", "--series", series, "--account", DEALER, "--yes"))
    assert amount(r"reclaimed ([\d,.]+) USDC", reclaimed) == 8_000 - payout * 10  # the writer keeps the rest


def amount(pattern, text):
    return Decimal(re.search(pattern, text).group(1).replace(",", ""))


def keeper(url, env, jump, updates):
    """Move chain time forward `jump` seconds, then Oracle.update(GPT) `updates` times a minute apart."""
    deployment = json.loads((Path(env["PROMPTEX_DEPLOYMENTS_DIR"]) / "local.json").read_text())
    oracle, gpt = deployment["contracts"]["Oracle"]["address"], deployment["contracts"]["token:GPT"]["address"]
    update = "0x" + keccak(text="update(address)")[:4].hex() + "00" * 12 + gpt[2:].lower()
    sender = rpc(url, "eth_accounts")[0]
    rpc(url, "evm_increaseTime", jump)
    for _ in range(updates):
        rpc(url, "evm_mine")
        rpc(url, "eth_sendTransaction", {"from": sender, "to": oracle, "data": update})
        rpc(url, "evm_increaseTime", 61)
    rpc(url, "evm_mine")
