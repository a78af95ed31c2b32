"""`promptex session create|show|revoke` on the test chain, the wallet a test account
signing through ape: `--direct` registers the session key from the wallet, the default
queues the wallet-signed SessionKey with the coordinator's relay; `revoke` ends it."""

from pathlib import Path

from click.testing import CliRunner

from promptex.buyerside.sessions import load
from promptex.chain.deploy import contract_at
from promptex.cli import main
from promptex.coordinator.store import CoordinatorStore
from promptex.ledger import Ledger

DIRECT, RELAYED = "TEST::3", "TEST::4"


def test_session__create_direct_show_revoke__on_chain(promptex_cli, chain_market, accounts, tmp_path: Path) -> None:
    deployment, _ = chain_market
    vault, usdc = contract_at(deployment, "CreditsVault"), contract_at(deployment, "USDC")
    grant_file = tmp_path / "session.json"
    created = promptex_cli(
        "session", "create", "--asset", "USDC", "--maximum", "5", "--lanes", "4", "--direct",
        "--session", str(grant_file), "--account", DIRECT,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert "4 lanes, at most 5.00 USDC" in created.output and "registered by your wallet" in created.output
    grant = load(grant_file)  # the wallet's signature checked against its account
    assert grant.account == accounts[3].address and grant.maximum == 5 * 10**6
    key, session, lanes = vault.session_key(accounts[3], usdc)[:3]
    assert (key, session, lanes) == (grant.key, grant.session, 4)

    shown = CliRunner().invoke(main, ["session", "show", "--session", str(grant_file)])
    assert shown.exit_code == 0, shown.output
    assert grant.key in shown.output and "no voucher signed yet" in shown.output

    revoked = promptex_cli("session", "revoke", "--asset", "USDC", "--account", DIRECT)
    assert revoked.exit_code == 0, revoked.output
    assert vault.session_key(accounts[3], usdc)[6] > 0  # ends_at: the close of the next window


def test_session__create__queued_with_the_coordinators_relay(
    promptex_cli, chain_market, accounts, tmp_path: Path, monkeypatch
) -> None:
    ledger_url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    with Ledger.open(ledger_url, sqlite_synchronous="NORMAL"):
        pass  # migrated
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", ledger_url)
    created = promptex_cli(
        "session", "create", "--maximum", "2.5", "--session", str(tmp_path / "s.json"), "--account", RELAYED
    )
    assert created.exit_code == 0, created.output
    assert "queued for the coordinator" in created.output
    grant = load(tmp_path / "s.json")
    with Ledger.open(ledger_url, sqlite_synchronous="NORMAL") as ledger:
        (queued,) = CoordinatorStore(ledger.engine).session_keys()
    assert (queued.address, queued.key, queued.maximum, queued.signature) == (
        accounts[4].address, grant.key, 2_500_000, grant.signature,
    )  # fmt: skip
