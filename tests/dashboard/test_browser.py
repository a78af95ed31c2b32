"""The dashboard in a real browser: headless Chromium driven by playwright-core against the
whole local market (tests/dashboard/dashboard_stack.py), with a test-only EIP-1193 wallet
forwarding to anvil's unlocked accounts. The script (dashboard/tests/browser.mjs) connects
(after a wrong network), deposits, swaps (and a multi-hop quote), obtains an API key by
signing, sets a spend cap, runs a streamed prompt and reads its metered cost, verifies the
usage record's Merkle proof against the root on chain, requests, then completes, a
withdrawal, leaves with an instant exit the coordinator's door co-signed, and onboards a
seller's capacity as a lot the gateway then routes through; a
rejected signature, an insufficient balance, exceeded slippage, a refused upstream key and
an unapproved bond each show a readable message and change nothing. Here the outcome is checked again from the ledger
and the chain.

Screenshots go to a temporary folder, or to PROMPTEX_SCREENSHOTS (docs/screenshots to
refresh the README's)."""

import csv
import io
import json
import os
import re
import subprocess
from decimal import Decimal
from pathlib import Path

import httpx
from dashboard_stack import leave_unbacked, market_stack, open_billing_account, seed_org
from sqlalchemy import select

from anvil_node import ROOT
from human_units import assert_human
from promptex.coordinator.store import CoordinatorStore
from promptex.gateway.schema import api_keys
from promptex.gateway.store import GatewayStore
from promptex.ledger import Ledger
from promptex.ledger.schema import releases
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.units import balance_text, money
from promptex.sealing.envelope import load_master_keys

SCRIPT = ROOT / "dashboard" / "tests" / "browser.mjs"
ABI_TS = ROOT / "dashboard" / "src" / "abi.ts"
# dashboard/src/abi.ts constant → the deployment record whose compiled ABI it slices
ABI_SOURCES = {
    "erc20Abi": "USDC",
    "mockUsdcAbi": "USDC",
    "vaultAbi": "CreditsVault",
    "routerAbi": "Router",
    "escrowAbi": "CreditEscrow",
    "poolAbi": "PoolBlueprint",
    "redemptionAbi": "RedemptionEscrow",
    "oracleAbi": "Oracle",
    "perpAbi": "Perp",
    "optionsAbi": "Options",
}


def usage_states(stack) -> list[tuple]:
    """(request id, asset, status, quarantine reason) of every usage record: what a failure needs."""
    from sqlalchemy import select

    from promptex.ledger.schema import usage_records as u

    with Ledger.from_settings(stack.settings).engine.connect() as conn:
        rows = conn.execute(select(u.c.request_id, u.c.asset, u.c.status, u.c.quarantine_reason)).all()
    return [tuple(row) for row in rows]


def front_end_abi_drift(stack) -> list[str]:
    """Each function the front end declares, checked against the compiled ABI: name, inputs, mutability."""
    problems = []
    for constant, body in re.findall(r"export const (\w+) = parseAbi\(\[(.*?)\]\);", ABI_TS.read_text(), re.S):
        abi = json.loads(Path(stack.deployment.contracts[ABI_SOURCES[constant]].abi).read_text())
        for name, args, view in re.findall(r'"function (\w+)\(([^)]*)\)( view| pure)?', body):
            inputs = [a.split()[0] for a in args.split(",") if a.strip()]
            found = [
                f
                for f in abi
                if f.get("type") == "function" and f["name"] == name and [i["type"] for i in f["inputs"]] == inputs
            ]
            if not found:
                problems.append(f"{constant}.{name}({','.join(inputs)}) is not in {ABI_SOURCES[constant]}'s ABI")
            elif (found[0]["stateMutability"] in ("view", "pure")) != bool(view):
                problems.append(f"{constant}.{name}: view-ness differs from the compiled ABI")
    return problems


def test_dashboard__browser_flow__every_step_shows_and_errors_change_nothing(browser_parts, tmp_path, seeded_anvil):
    shots = os.environ.get("PROMPTEX_SCREENSHOTS") or str(tmp_path / "screenshots")
    with market_stack(tmp_path, seeded_anvil) as stack:
        # Accounts 8 and 9 are the redemption agent's and the fake billing signer's keys.
        user, other, owner = (stack.w3.eth.accounts[i] for i in (3, 5, 6))
        credential = open_billing_account(stack, "acct_dashboard_user", 5 * USD)
        member = seed_org(stack, owner)
        gem, lots_escrow = stack.contract("token:GEM"), stack.contract("CreditEscrow")
        unbacked_gem = leave_unbacked(stack, user, "GEM")  # the Portfolio offers its buy-back
        unbacked_before = lots_escrow.functions.unbacked(gem.address).call()
        env = dict(
            os.environ,
            DASHBOARD_URL=stack.dashboard_url,
            ANVIL_URL=stack.anvil_url,
            USER_ADDRESS=user,
            OTHER_ADDRESS=other,
            OWNER_ADDRESS=owner,
            UPSTREAM_URL=stack.upstream_url,
            BILLING_ACCOUNT="acct_dashboard_user",
            BILLING_CREDENTIAL=credential,
            CHROMIUM=browser_parts,
            SCREENSHOTS=shots,
        )
        run = subprocess.run(
            ["node", str(SCRIPT)], cwd=ROOT / "dashboard", env=env, capture_output=True, text=True, timeout=240
        )
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        assert run.returncode == 0 and lines, (
            f"browser run failed:\n{run.stderr[-6000:]}\n{run.stdout[-2000:]}\nstack errors: {stack.errors}\n"
            f"usage records: {usage_states(stack)}"
        )
        result = json.loads(lines[-1].removeprefix("RESULT "))
        assert result["ok"], result

        names = [s["name"] for s in result["steps"]]
        expected_steps = (
            "connect", "deposit", "swap", "add liquidity:", "remove half", "prompt", "verify usage proof",
            "request withdrawal", "sell CLD from the vault", "sold 10 CLD from the vault", "buy-back: 2 unbacked GEM",
            "instant exit: the wallet's request", "grant the agent", "auto-topup rule fired", "switch the rule off",
            "revoke the grant",
            "enterprise desk:",
            "hedge: provide", "open a long", "a second account writes", "buy 2 units", "close the long",
            "sell: onboarding opened a listed lot", "market: TWAP chart",
            "phone: every page at 390 px without horizontal scroll", "usage: date, totals per model and per day, CSV",
            "signed mode: a session key signed by the wallet, relayed, and a request signed",
            "signed mode: the session revoked from the page",
        )  # fmt: skip
        for expected in expected_steps:
            assert any(expected in n for n in names), (expected, names)
        errors = (
            "rejected signature", "insufficient balance", "slippage exceeded", "add liquidity beyond", "bad rule",
            "rejected signature (grant)", "enterprise desk refused", "leverage too high",
            "link with a refused credential", "sell: a key the provider refuses", "sell: bond not approved",
            "buy-back beyond what is unbacked",
        )  # fmt: skip
        for error in errors:
            assert any(n.startswith(error) for n in names), (error, names)

        # The cost the page showed is the ledger's metered cost for that request, in USDC: exact in the
        # page's machine field, and in the words the Python formatter gives it (the two formatters agree).
        ledger = Ledger.from_settings(stack.settings)
        try:
            record = ledger.usage_record(result["request_id"])
            assert record is not None and record.asset == "USDC" and record.cost > 0
            assert int(result["metered_units"]) == record.cost
            assert result["metered"] == money(record.cost, "USDC")
            # The balance after it, rounded down (balance_text): 100.00 less a cost of a fraction of a
            # cent read "100.00" before (rounded to the nearest), more than there was.
            after = int(result["balance_after_units"])
            assert money(after, "USDC") != balance_text(after, "USDC")  # a case where the nearest reads more
            assert result["balance_after"] == f"{balance_text(after, 'USDC')} spendable"
            # The Usage page's CSV export: that record, exact units beside whole ones.
            [row] = [
                r for r in csv.DictReader(io.StringIO(result["usage_csv"])) if r["request_id"] == record.request_id
            ]
            assert (row["model"], row["asset"], int(row["cost_units"])) == ("gpt-4o", "USDC", record.cost)
        finally:
            ledger.close()
        # Every page's text (in the flow and at 390 px): no amount in smallest units.
        assert {f"{name} (390 px)" for name in ("portfolio", "market", "usage", "enterprise")} <= set(result["texts"])
        for name, text in result["texts"].items():
            assert_human(text, f"the {name} page")

        # Signed mode: the session the tab made was relayed to the vault once; the request it signed is a
        # signed-mode record, covered by a voucher within the session's $5.
        vault, usdc = stack.contract("CreditsVault"), stack.deployment.address("USDC")
        assert CoordinatorStore(stack.ledger.engine).session_keys() == []  # none pending: registered
        assert vault.functions.session_nonce(user, usdc).call() == 2  # registered (1), then revoked in the page
        signed = stack.ledger.usage_record(result["signed_request_id"])
        assert signed is not None and (signed.mode, signed.voucher_session, signed.voucher_lane) == ("signed", 0, 0)
        assert 0 < signed.cost <= signed.voucher_ceiling <= 5 * USD

        # On chain: 100 deposited, 10 withdrawn after the thaw, 1 at once with the release the coordinator's
        # door co-signed, nothing pending; 10 CLD sold from the vault
        # for at least the minimum the page showed, credited in USDC; the capped request settled, the signed
        # one settled too or not yet (its lane settles in a later window).
        cld = stack.deployment.address("token:CLD")
        assert (
            vault.functions.pending_exits(user, usdc).call()[0]
            == vault.functions.pending_exits(user, cld).call()[0]
            == 0
        )
        assert vault.functions.balance_of(user, cld).call() == 0
        proceeds = int(result["exit_sale"]["proceeds"])
        assert proceeds >= int(result["exit_sale"]["min_out"]) > 0
        left = vault.functions.balance_of(user, usdc).call() - proceeds
        assert left in (89 * 10**6 - record.cost, 89 * 10**6 - record.cost - signed.cost)
        assert vault.functions.release_nonce(user).call() == 1
        with stack.ledger.engine.connect() as conn:  # the release: locked until the coordinator sees it used
            [(amount, state)] = conn.execute(select(releases.c.amount, releases.c.status).where(
                releases.c.address == user)).all()  # fmt: skip
        assert int(amount) == 10**6 and state in ("active", "used")

        # The buy-back: 2 of the unbacked GEM the user held sold to the fund in the page, and burned, at the
        # rate the page showed for one whole token.
        assert gem.functions.balanceOf(user).call() == unbacked_gem - 2 * 10**18
        assert lots_escrow.functions.unbacked(gem.address).call() == unbacked_before - 2 * 10**18
        assert int(result["buy_back_rate"]) == lots_escrow.functions.quote_buy_back(gem.address, 10**18).call() > 0
        assert stack.errors == {"indexer": [], "coordinator": [], "agent": []}  # type: ignore[attr-defined]

        # Redemption: the rule's purchase reached the (fake) billing API once; the escrow released it.
        assert stack.billing.balances["acct_dashboard_user"] == 25 * USD
        [redemption] = stack.agent.store.redemptions(user=user)
        assert redemption.status == "released" and redemption.usd_micro == 20 * USD
        assert result["redemption"]["billing_ref"] == "0x" + redemption.billing_ref.hex()
        escrow = stack.contract("RedemptionEscrow")
        assert escrow.functions.redemptions(redemption.chain_redemption_id).call()[5] == 2  # STATUS_RELEASED
        # The rule was switched off in the browser: still listed, no longer checked.
        assert [r.id for r in stack.agent.store.rules(enabled_only=False)] == [int(result["rule_id"])]
        assert stack.agent.store.rules() == []
        # Enterprise: the member key made in the browser spends from the org (its hash is all that is stored).
        with stack.ledger.engine.connect() as conn:
            prefixes = [r.prefix for r in conn.execute(api_keys.select().where(api_keys.c.payer_id.isnot(None)))]
        assert result["member_key_prefix"] in prefixes and len(prefixes) == 2

        # Hedge: the user's pool shares stay; the long was opened once (the refused one left nothing) and closed;
        # the writer wrote 5 calls and offered them, the user holds the 2 it bought.
        perp, options = stack.contract("Perp"), stack.contract("Options")
        hedge = result["hedge"]
        position, series, offer = int(hedge["position_id"]), int(hedge["series_id"]), int(hedge["offer_id"])
        assert perp.functions.shares_of(user).call() > 0
        assert perp.functions.position_count().call() == position == 1
        assert perp.functions.positions(position).call()[0] == "0x" + "0" * 40  # closed: the slot is cleared
        assert perp.functions.total_reserved().call() == 0
        assert options.functions.balanceOf(user, series).call() == 2
        assert options.functions.balanceOf(other, series).call() == 3
        assert options.functions.written(series, other).call() == 5
        seller, offered_series, units_left, premium = options.functions.offers(offer).call()
        assert (seller, offered_series, units_left, premium) == (other, series, 3, 1 * USD)
        terms = options.functions.series(series).call()
        assert terms[0] == stack.deployment.address("token:GPT") and terms[1] == 1  # a capped call on GPT
        assert (terms[2], terms[3], terms[5]) == (3_500_000 * 10**18, 4_500_000 * 10**18, 10 * 10**18)

        # Sell: the lot the browser onboarded is open on chain for the user, its bond the escrow's minimum,
        # and the gateway serves through it (sealed key; 50 % of list is now the cheapest USDC route).
        lot_id = int(result["seller_lot"])
        escrow = stack.contract("CreditEscrow")
        chain_lot = escrow.functions.lots(lot_id).call()
        assert (chain_lot[0], chain_lot[2], chain_lot[3], chain_lot[4]) == (user, 2, 1, 5_000)  # listed, open
        assert chain_lot[6] == 250 * USD and chain_lot[11] == int(result["bond_paid"]) == 25 * USD
        store = GatewayStore(stack.ledger.engine)
        [sold] = [lot for lot in store.lots() if lot.chain_lot_id == lot_id]
        assert (sold.seller, sold.kind, sold.rate_bps, sold.face_value_usd_micro) == (user, "listed", 5_000, 250 * USD)
        keys = load_master_keys(None, stack.settings.gateway_master_key_file, create=False)
        assert keys.open(sold.sealed) == b"sk-browser-seller"
        answer = httpx.post(
            f"{stack.gateway_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {member.key}", "x-promptex-asset": "USDC"},
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Routed where?"}], "max_tokens": 8},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        served = stack.ledger.usage_record(answer.headers["x-request-id"])
        assert served is not None and (served.gateway_lot_id, served.chain_lot_id) == (sold.id, lot_id)

        # Market: the chart's last point is the TWAP over the keeper's last Oracle period, in which no
        # swap moved the pool: the spot price, to the accumulator's UQ112.112 rounding.
        [cld_pool] = [p for p in httpx.get(f"{stack.dashboard_url}/api/pools").json() if p["symbol"] == "CLD"]
        assert len(cld_pool["history"]) >= result["chart_points"] >= 3
        last, spot = Decimal(cld_pool["history"][-1]["price"]), Decimal(cld_pool["price"])
        assert abs(last - spot) <= spot * Decimal("1e-9"), (last, spot)

        # The front end's hand-written ABI slices still match the compiled contracts.
        assert front_end_abi_drift(stack) == []
