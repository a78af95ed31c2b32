"""`promptex buyer balance` and `promptex buyer usage [--since] [--csv]`: what an account
can spend (spendable, held, leaving, cap left, promotional credit) and what it spent, in
whole units (exact units only under --json / in the CSV's *_units column)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from ledger_helpers import fund

from human_units import assert_human
from promptex.cli import main
from promptex.config import settings
from promptex.gateway.buyers import challenge_json
from promptex.ledger import AccountKind, Ledger
from promptex.ledger.usage import UsageRecord

USDC = 10**6
TOKEN = 10**18


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", url)
    monkeypatch.setenv("PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS", "NORMAL")
    settings.cache_clear()
    with Ledger.open(url) as opened:
        yield opened
    settings.cache_clear()


def spend(ledger: Ledger, account: int, asset: str, cost: int, request_id: str, model: str) -> None:
    ledger.reserve(account, asset, cost, request_id, ttl=60)
    record = UsageRecord(model=model, input_tokens=1_234, output_tokens=56, list_usd_micro=cost // 3 + 1)
    ledger.settle(request_id, cost, record=record)


def run(*args: str):
    return CliRunner(mix_stderr=False).invoke(main, ["buyer", *args])


def test_balance__spendable_held_cap_promotional_in_whole_units(ledger: Ledger) -> None:
    buyer = ledger.create_account(AccountKind.USER, "ada").id
    wallet = fund(ledger, buyer, "USDC", 50 * USDC, cap=40 * USDC)
    fund(ledger, buyer, "CLD", 14_587_482_219_061_166_430)
    ledger.reserve(buyer, "USDC", 2_500_000, "in-flight", ttl=60)
    treasury = ledger.treasury("promotions").id
    fund(ledger, treasury, "USDC", 100 * USDC)
    ledger.grant_promotional_credit("welcome:ada", buyer, "USDC", 10 * USDC, treasury=treasury)
    ledger.reserve(buyer, "USDC", USDC, "in-flight-promo", ttl=60, payer=treasury)  # held: shown, not left

    shown = run("balance", "--wallet", wallet)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == f"account {buyer} (ada); wallets: {', '.join(ledger.wallets(buyer))}"
    usdc = next(line for line in lines if line.startswith("USDC"))
    assert usdc.split() == ["USDC", "47.50", "USDC", "3.50", "USDC", "0.00", "USDC", "37.50", "USDC", "9.00", "USDC"]
    cld = next(line for line in lines if line.startswith("CLD"))
    assert "14.58 CLD" in cld  # 14.587…: a balance reads rounded down, never more than there is
    assert_human(shown.stdout, "buyer balance")

    exact = json.loads(run("balance", "--account", str(buyer), "--json").stdout)
    by_asset = {row["asset"]: row for row in exact["balances"]}
    assert by_asset["CLD"]["spendable_units"] == "14587482219061166430"
    assert by_asset["USDC"]["promotional_units"] == str(10 * USDC)
    assert (by_asset["USDC"]["held_units"], by_asset["USDC"]["promotional_held_units"]) == ("2500000", str(USDC))


def test_balance__a_few_units_spent__read_rounded_down_not_as_untouched(ledger: Ledger) -> None:
    """10.00 USDC of promotional credit less a 0.000007 request read "10.00 USDC" (rounded to the
    nearest cent): more than there is. A balance is rounded down: 9.99."""
    buyer = ledger.create_account(AccountKind.USER, "ada").id
    fund(ledger, buyer, "USDC", 20 * USDC - 7)
    treasury = ledger.treasury("promotions").id
    fund(ledger, treasury, "USDC", 100 * USDC)
    ledger.grant_promotional_credit("welcome:ada", buyer, "USDC", 10 * USDC, treasury=treasury)
    spend_promo = "promo-request"
    ledger.reserve(buyer, "USDC", 7, spend_promo, ttl=60, payer=treasury)
    ledger.settle(spend_promo, 7)

    shown = run("balance", "--account", str(buyer))
    assert shown.exit_code == 0, shown.output
    usdc = next(line for line in shown.stdout.splitlines() if line.startswith("USDC")).split()
    assert (usdc[1], usdc[-2]) == ("19.99", "9.99"), usdc  # spendable, promotional


def test_balance__name_the_account_one_way__unknown_key_and_wallet_one_line(ledger: Ledger) -> None:
    for args in ([], ["--account", "1", "--wallet", "0x" + "11" * 20]):
        refused = run("balance", *args)
        assert refused.exit_code == 1 and "name the account one way" in refused.stderr
    assert "no such API key" in run("balance", "--key", "px-nope").stderr
    assert "no account is bound to" in run("balance", "--wallet", "0x" + "22" * 20).stderr


def test_usage__rows_totals_per_model_and_day__since_and_csv(ledger: Ledger, monkeypatch) -> None:
    buyer = ledger.create_account(AccountKind.USER).id
    fund(ledger, buyer, "USDC", 50 * USDC)
    clock = {"now": 1_796_000_000}  # 2026-11-30 00:53 UTC
    ledger.clock = lambda: clock["now"]
    spend(ledger, buyer, "USDC", 1_250_000, "req-a", "gpt-4o")
    clock["now"] += 86_400
    spend(ledger, buyer, "USDC", 750_000, "req-b", "gpt-4o")
    clock["now"] += 1
    spend(ledger, buyer, "USDC", 3_000, "req-c", "gpt-4o-mini")

    table = run("usage", "--account", str(buyer))
    assert table.exit_code == 0, table.output
    assert "2026-11-30 00:53" in table.stdout and "req-a" in table.stdout and "1,234/56" in table.stdout
    assert_human(table.stdout, "buyer usage")
    per_model = table.stdout.split("per model:")[1].split("per day:")[0]
    assert re.search(r"gpt-4o\s+2 requests\s+2\.00 USDC", per_model)
    assert re.search(r"gpt-4o-mini\s+1 request\s+0\.003 USDC", per_model)  # not "1 requests"
    per_day = table.stdout.split("per day:")[1]
    assert re.search(r"2026-11-30\s+1\.25 USDC", per_day) and re.search(r"2026-12-01\s+0\.753 USDC", per_day)

    since = run("usage", "--account", str(buyer), "--since", "2026-12-01")
    assert "req-a" not in since.stdout and "req-b" in since.stdout

    rows = list(csv.DictReader(io.StringIO(run("usage", "--account", str(buyer), "--csv").stdout)))
    assert [r["request_id"] for r in rows] == ["req-a", "req-b", "req-c"]
    assert rows[0]["cost"] == "1.25" and rows[0]["cost_units"] == "1250000" and rows[0]["time_utc"].startswith("2026")
    assert (rows[0]["mode"], rows[0]["voucher"]) == ("capped", "")

    # A signed-mode record (issue 23) says so, with the voucher that covers it.
    clock["now"] += 1
    ledger.reserve(buyer, "USDC", 5_000, "req-d", ttl=60)
    signed = UsageRecord("gpt-4o", 10, 5, 1, mode="signed", voucher_session=3, voucher_lane=1, voucher_ceiling=9_000)
    ledger.settle("req-d", 4_000, record=signed)
    assert re.search(r"signed lane 1\s+req-d", run("usage", "--account", str(buyer)).stdout)
    rows = list(csv.DictReader(io.StringIO(run("usage", "--account", str(buyer), "--csv").stdout)))
    assert (rows[-1]["mode"], rows[-1]["voucher"]) == ("signed", "session=3;lane=1;ceiling=9000")

    bad = run("usage", "--account", str(buyer), "--since", "last tuesday")
    assert bad.exit_code == 1 and "give a date" in bad.stderr


def test_org_create__owner_bound_only_by_its_signature__named_members(ledger: Ledger, tmp_path, monkeypatch) -> None:
    from eth_account import Account

    monkeypatch.chdir(tmp_path)
    owner, stranger = Account.create(), Account.create()
    made = run_root("org", "create", "acme", "--owner-wallet", owner.address)
    assert made.exit_code == 0, made.output
    org = int(made.stdout.split("account ")[1].split()[0])
    assert ledger.account(org).kind == AccountKind.ORG and ledger.wallets(org) == []  # not bound yet

    monkeypatch.setenv("STRANGER_KEY", stranger.key.hex())
    forged = run("bind", "--challenge", "org-binding-challenge.json", "--sign-with-env", "STRANGER_KEY")
    assert forged.exit_code == 1 and ledger.wallets(org) == []  # another wallet's signature binds nothing
    monkeypatch.setenv("OWNER_KEY", owner.key.hex())
    bound = run("bind", "--challenge", "org-binding-challenge.json", "--sign-with-env", "OWNER_KEY")
    assert bound.exit_code == 0, bound.output
    assert ledger.wallets(org) == [owner.address] and ledger.budget(ledger.treasury().id, org, "USDC") is None
    assert "not the account's" not in bound.stdout
    # A later wallet is told its deposits are its own: settlement debits the first (wallets s15).
    later = Account.create()
    (tmp_path / "later.json").write_text(challenge_json(ledger.issue_binding_challenge(org, later.address)))
    monkeypatch.setenv("LATER_KEY", later.key.hex())
    told = run("bind", "--challenge", "later.json", "--sign-with-env", "LATER_KEY")
    assert told.exit_code == 0, told.output
    assert f"not the account's: settlement debits the account's first wallet, {owner.address}" in told.stdout

    again = run_root("org", "create", "acme", "--owner-wallet", owner.address)
    assert again.exit_code == 1 and f"an org named 'acme' exists (account {org})" in again.stderr
    bad = run_root("org", "create", "beta", "--owner-wallet", "0x123")
    assert bad.exit_code == 1 and "is not a wallet address" in bad.stderr
    with ledger.engine.connect() as conn:
        from promptex.ledger.accounts import account_by_name

        assert account_by_name(conn, AccountKind.ORG, "beta") is None  # refused before anything is made

    member = run("org-key", "--org", "acme", "--name", "alice", "--budget", "USDC=25")
    assert member.exit_code == 0 and "(alice)" in member.stdout
    account = int(member.stdout.split("member account ")[1].split()[0])
    assert ledger.account(account).name == "alice" and ledger.budget(org, account, "USDC").remaining == 25 * USDC


def run_root(*args: str):
    return CliRunner(mix_stderr=False).invoke(main, list(args))


def test_outside_the_market_folder__no_ledger_here__none_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run beside no `promptex up` (another terminal, another directory): the commands that read
    a market's ledger say so and how to point at one. Before, each opened the default SQLite
    file — creating an empty ledger there — and answered "no account 6" or "no debts"."""
    monkeypatch.chdir(tmp_path)
    for name in ("PROMPTEX_LEDGER_URL", "PROMPTEX_UP_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings.cache_clear()
    try:
        for args in (("balance", "--account", "6"), ("usage", "--account", "6"), ("debts",), ("bind",)):
            answer = run(*args)
            assert answer.exit_code == 1, (args, answer.output)
            missing = tmp_path.resolve() / "promptex-ledger.sqlite3"
            assert f"no ledger here ({missing} does not exist)" in answer.stderr, (args, answer.stderr)
            assert "PROMPTEX_UP_STATE_DIR" in answer.stderr
        assert list(tmp_path.iterdir()) == []  # no ledger made
    finally:
        settings.cache_clear()


@pytest.mark.parametrize("database", ["~/ledger.sqlite3", "file:{path}?uri=true"])
def test_ledger_named_from_home_or_as_a_uri__found(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    """The file the engine opens is the one looked for: before, `sqlite:///~/ledger.sqlite3` (a
    `~` the ledger expands) and a URI filename were looked up as written and refused with "no
    ledger here" although the ledger was there."""
    buyer = ledger.create_account(AccountKind.USER, "ada").id
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", "sqlite:///" + database.format(path=tmp_path / "ledger.sqlite3"))
    settings.cache_clear()
    shown = run("balance", "--account", str(buyer))
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith(f"account {buyer} (ada)")


def test_balance__signed_mode_then_its_session_over_then_a_spend_cap__says_how_it_pays(ledger: Ledger) -> None:
    """An asset paid in signed mode, or whose session is over with no spend cap since (its
    requests refused: nothing said so in the balance, whose "cap left" was the session's
    maximum), gets a line saying so and how to go on; --json names each asset's mode."""
    buyer = ledger.create_account(AccountKind.USER, "ada").id
    wallet = fund(ledger, buyer, "USDC", 50 * USDC)
    ledger.register_session(
        "0x" + "01" * 32 + ":0", address=wallet, asset="USDC", asset_address="0x" + "cd" * 20, chain_id=31337,
        vault="0x" + "ab" * 20, key="0x" + "ef" * 20, session=1, lanes=2, maximum=20 * USDC,
        expiry=ledger.clock() + 3_600, signed_from=2,
    )  # fmt: skip

    def said() -> tuple[str, str]:
        shown = run("balance", "--account", str(buyer))
        assert shown.exit_code == 0, shown.output
        (asset,) = json.loads(run("balance", "--account", str(buyer), "--json").stdout)["balances"]
        return shown.stdout, asset["mode"]

    text, mode = said()
    assert mode == "signed" and "USDC: signed mode, session 1: each request carries a voucher" in text
    ledger.revoke_session("0x" + "02" * 32 + ":0", address=wallet, asset="USDC", session=1, ends_at=ledger.clock())
    text, mode = said()
    assert mode == "neither" and "USDC: session 1 is over and no spend cap was set since" in text
    assert "`promptex wallet spend-cap --asset USDC …`" in text and "`promptex session create --asset USDC`" in text
    ledger.apply_chain_facts(lambda facts: facts.register_spend_cap("0x" + "03" * 32 + ":0", wallet, "USDC", USDC))
    text, mode = said()
    assert mode == "capped" and "session 1" not in text
    assert_human(text, "buyer balance")


def test_usage__a_long_model_id__its_row_in_the_same_columns(ledger: Ledger) -> None:
    """A model id longer than the column (Llama-4-Maverick-17B-128E-Instruct-FP8, 38 characters;
    claude-3-5-haiku-latest, 23) pushed its row's tokens, cost and request right of every other row."""
    buyer = ledger.create_account(AccountKind.USER).id
    fund(ledger, buyer, "USDC", 50 * USDC)
    spend(ledger, buyer, "USDC", 1_250_000, "req-a", "gpt-4o")
    spend(ledger, buyer, "USDC", 2_000, "req-l", "Llama-4-Maverick-17B-128E-Instruct-FP8")

    table = run("usage", "--account", str(buyer))
    assert table.exit_code == 0, table.output
    rows = [line for line in table.stdout.splitlines() if " req-" in line]
    assert len(rows) == 2 and len({line.index(" USDC") for line in rows}) == 1, table.stdout
    per_model = table.stdout.split("per model:")[1].split("per day:")[0].strip("\n").splitlines()
    assert len(per_model) == 2 and len({len(line) for line in per_model}) == 1, table.stdout
