"""`promptex session create|show|revoke` on the test chain, the wallet a test account
signing through ape: `--direct` registers the session key from the wallet; `revoke` ends it.
The default, posting the wallet-signed SessionKey to the coordinator's door, is in
test_door_cli.py."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import pytest
from ape.exceptions import ProviderError
from click.testing import CliRunner

from promptex.buyerside.sessions import load
from promptex.chain.deploy import contract_at
from promptex.cli import main
from promptex.cli import session as session_cli

DIRECT, RELAYED = "TEST::3", "TEST::4"


def test_session__create_direct_show_revoke__on_chain(
    promptex_cli, chain_market, accounts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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

    # The same wallet again while its session is on: the vault refuses the transaction. Its
    # grant's private key (a session never registered) is not kept; before, its .pending file
    # was left beside the grant file. One sent with no answer may register: kept.
    again = ("session", "create", "--maximum", "5", "--direct", "--session", str(tmp_path / "again.json"),
             "--account", DIRECT)  # fmt: skip
    reverted = promptex_cli(*again)
    assert reverted.exit_code == 1 and "session not ended" in reverted.output, reverted.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["session.json"]
    with_vault = session_cli._vault_with_sessions

    def unanswered(wallet: Any) -> Any:
        vault = with_vault(wallet)
        return SimpleNamespace(session_nonce=vault.session_nonce, address=vault.address,
                               set_session_key=Mock(side_effect=ProviderError("no receipt in 120 s")))  # fmt: skip

    monkeypatch.setattr(session_cli, "_vault_with_sessions", unanswered)
    unknown = promptex_cli(*again)
    assert unknown.exit_code == 1 and "no receipt" in unknown.output, unknown.output
    (kept,) = [path for path in tmp_path.iterdir() if path.name.endswith(".pending")]
    assert kept.name == f"again.json.{load(kept).key}.pending"
    monkeypatch.setattr(session_cli, "_vault_with_sessions", with_vault)

    shown = CliRunner().invoke(main, ["session", "show", "--session", str(grant_file)])
    assert shown.exit_code == 0, shown.output
    assert grant.key in shown.output and "no voucher signed yet" in shown.output

    revoked = promptex_cli("session", "revoke", "--asset", "USDC", "--account", DIRECT)
    assert revoked.exit_code == 0, revoked.output
    assert vault.session_key(accounts[3], usdc)[6] > 0  # ends_at: the close of the next window
