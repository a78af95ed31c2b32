"""`promptex hedge …` on the deployed and seeded market: a dealer writes and offers capped
calls, a buyer takes them and a perpetual long, the price rises, the buyer closes the long
and claims the settled call; the P&L printed is what the contracts paid. Run in this
process (click's CliRunner) on ape's test chain; one smoke test runs the console script in
its own process against an anvil."""

import json
import re
import subprocess
import time
from decimal import Decimal

from anvil_node import ROOT, ape_env, rpc
from promptex.chain.deploy import contract_at

DEALER, BUYER, TRADER = "TEST::1", "TEST::2", "TEST::3"
USD = 10**6


def ok(result):
    assert result.exit_code == 0, result.output[-3000:]
    return result.output


def test_hedge__write_buy_open_close_settle_claim__pnl_from_the_contracts(promptex_cli, chain_market, accounts, chain):
    deployment, _ = chain_market
    usdc, oracle, gpt = (contract_at(deployment, name) for name in ("USDC", "Oracle", "token:GPT"))
    for account, dollars in ((accounts[1], 2_000_000), (accounts[2], 100_000), (accounts[3], 20_000)):
        usdc.mint(account, dollars * USD, sender=account)  # MockUSDC is an open faucet

    def keeper(jump, updates):
        """Move chain time forward `jump` seconds, then Oracle.update(GPT) `updates` times a minute apart."""
        at = chain.pending_timestamp + jump
        for _ in range(updates):
            chain.pending_timestamp = at
            oracle.update(gpt, sender=accounts[0])
            at += 61
        chain.mine(timestamp=at)

    hedge = lambda *args: promptex_cli("hedge", *args)  # noqa: E731
    # The GPT pool is seeded at $3.695; a 1-day capped call 3.70 → 4.50 on 1,000 GPT a unit.
    written = ok(hedge("write", "--token", "GPT", "--kind", "call", "--strike", "3.70", "--bound", "4.50",
                       "--days", "1", "--units", "10", "--premium", "100", "--account", DEALER))  # fmt: skip
    assert "collateral 8,000.00 USDC" in written and "offer 1: 10 units at 100.00 USDC each" in written
    series, expiry = re.search(r"series (\d+): wrote 10 units expiring at (\d+)", written).groups()
    listed = ok(hedge("offers", "--account", BUYER))  # the series by a short name, not its 77-digit id
    day = time.strftime("%Y-%m-%d", time.gmtime(int(expiry)))
    assert f"offer 1: GPT call $3.70–$4.50 {day}, 10 units at 100.00 USDC each" in listed
    assert "bought 10 units" in ok(hedge("buy", "--offer", "1", "--units", "10", "--account", BUYER))
    assert "no open offers" in ok(hedge("offers", "--account", BUYER))

    keeper(jump=700, updates=1)  # the perpetual prices on a 600-s TWAP: cover it
    no_shares = hedge("withdraw-liquidity", "--account", BUYER)
    assert no_shares.exit_code == 1 and "no pool shares to withdraw" in no_shares.output
    assert "provided 1,000,000.00 USDC" in ok(hedge("provide", "--amount", "1000000", "--account", DEALER))
    too_much = hedge("open", "--token", "GPT", "--side", "long", "--margin", "100", "--notional", "5000",
                     "--account", BUYER)  # fmt: skip
    assert too_much.exit_code == 1 and "perp: leverage too high" in too_much.output
    assert "Traceback" not in too_much.output
    # At most 10 % of the $25k GPT/USDC pool a side (the Oracle's pool depth caps open interest).
    opened = ok(hedge("open", "--token", "GPT", "--side", "long", "--margin", "400", "--notional", "2000",
                      "--account", BUYER))  # fmt: skip
    position = re.search(r"position (\d+): long", opened).group(1)

    # GPT rises: a trader buys $5,000 of it; a keeper updates the Oracle across the expiry.
    ok(promptex_cli("wallet", "swap", "--from", "USDC", "--to", "GPT", "--amount", "5000", "--slippage", "5",
                    "--account", TRADER))  # fmt: skip
    keeper(jump=int(expiry) - 900 - chain.blocks.head.timestamp, updates=20)  # from 15 min before expiry

    shown = ok(hedge("show", "--account", BUYER))
    long_row = next(line for line in shown.splitlines() if line.split()[:2] == [position, "long"])
    assert long_row.split()[-1].startswith("+")  # the long gained (P&L column)
    assert "call" in shown and " 10 " in shown  # the 10 call units held

    closed = ok(hedge("close", "--position", position, "--account", BUYER))
    pnl = Decimal(re.search(r"P&L ([+−][\d,.]+) USDC", closed).group(1).replace("−", "-").replace(",", ""))
    assert pnl > 0

    settled = ok(hedge("settle", "--series", series, "--account", TRADER))
    payout = amount(r": ([\d,.]+) USDC a unit", settled)
    assert 0 < payout <= 800  # capped at (4.50 − 3.70) × 1,000
    claimed = ok(hedge("claim", "--series", series, "--account", BUYER))
    assert amount(r"claimed ([\d,.]+) USDC", claimed) == payout * 10
    reclaimed = ok(hedge("reclaim", "--series", series, "--account", DEALER))
    assert amount(r"reclaimed ([\d,.]+) USDC", reclaimed) == 8_000 - payout * 10  # the writer keeps the rest


def amount(pattern, text):
    return Decimal(re.search(pattern, text).group(1).replace(",", ""))


def test_console_script__hedge_on_anvil__provides_liquidity_signed_by_a_test_account(seeded_anvil):
    url, deployments = seeded_anvil
    dealer = rpc(url, "eth_accounts")[1]  # TEST::1; anvil's development accounts are unlocked
    usdc = json.loads((deployments / "local.json").read_text())["contracts"]["USDC"]["address"]
    mint = "0x40c10f19" + dealer[2:].lower().rjust(64, "0") + hex(1_000 * USD)[2:].rjust(64, "0")  # mint(to, amount)
    rpc(url, "eth_sendTransaction", {"from": dealer, "to": usdc, "data": mint})
    provided = subprocess.run(
        [str(ROOT / ".venv/bin/promptex"), "hedge", "provide", "--amount", "1000", "--account", DEALER, "--yes"],
        env=ape_env(url, deployments), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert provided.returncode == 0, provided.stdout[-2000:] + provided.stderr[-2000:]
    assert "provided 1,000.00 USDC" in provided.stdout
