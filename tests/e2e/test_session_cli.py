"""`promptex session create|show|revoke` on the test chain, the wallet a test account
signing through ape: `--direct` registers the session key from the wallet; `revoke` ends it.
The default, posting the wallet-signed SessionKey to the coordinator's door, is in
test_door_cli.py."""

from pathlib import Path

from click.testing import CliRunner

from promptex.buyerside.sessions import load
from promptex.chain.deploy import contract_at
from promptex.cli import main

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

    # Another wallet's create on the same file would lose this session's key: refused, nothing signed.
    other = promptex_cli(
        "session", "create", "--asset", "USDC", "--maximum", "5", "--direct", "--session", str(grant_file),
        "--account", RELAYED,
    )  # fmt: skip
    assert other.exit_code == 1, other.output
    assert f"holds the session key of {accounts[3].address} for USDC" in other.output
    assert "--session FILE" in other.output and load(grant_file) == grant

    shown = CliRunner().invoke(main, ["session", "show", "--session", str(grant_file)])
    assert shown.exit_code == 0, shown.output
    assert grant.key in shown.output and "no voucher signed yet" in shown.output

    revoked = promptex_cli("session", "revoke", "--asset", "USDC", "--account", DIRECT)
    assert revoked.exit_code == 0, revoked.output
    assert vault.session_key(accounts[3], usdc)[6] > 0  # ends_at: the close of the next window
