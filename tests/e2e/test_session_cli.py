"""`promptex session create|show|revoke` on the test chain, the wallet a test account
signing through ape: `--direct` registers the session key from the wallet; `revoke` ends it,
and `wallet spend-cap` takes the account back to capped mode once the session has ended.
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
from promptex.config import settings
from promptex.ledger import Ledger
from promptex.protocol.units import utc_text

DIRECT, RELAYED = "TEST::3", "TEST::4"


def test_session__create_direct_show_revoke__on_chain(
    promptex_cli,
    chain_market,
    accounts,
    chain,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment, _ = chain_market
    # With no coordinator door known, `--direct` checks the wallet against the market's ledger
    # here (9dae45b): give it one in which the wallet is no later wallet of another account.
    market_ledger = f"sqlite:///{tmp_path_factory.mktemp('market')}/ledger.sqlite3"
    Ledger.open(market_ledger, sqlite_synchronous="NORMAL").close()
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", market_ledger)
    settings.cache_clear()
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

    # The same wallet again while its session is on: refused in one line before anything is
    # signed (the vault takes the next session key only after this one's vouchers settle).
    again = ("session", "create", "--maximum", "5", "--direct", "--session", str(tmp_path / "again.json"),
             "--account", DIRECT)  # fmt: skip
    early = promptex_cli(*again)
    ends = utc_text(vault.session_key(accounts[3], usdc)[6])
    assert early.exit_code == 1 and early.output.count("\n") == 1, early.output
    assert f"USDC is in signed mode until {ends}" in early.output and "a new session key only after" in early.output
    # Past that check (say the chain's time moved meanwhile), the vault refuses the transaction.
    # Its grant's private key (a session never registered) is not kept; before, its .pending
    # file was left beside the grant file. One sent with no answer may register: kept.
    monkeypatch.setattr(session_cli, "refuse_while_signed", lambda *args: None)
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

    # Leaving signed mode: a spend cap is refused, before any transaction, while the session's
    # vouchers settle (the vault would revert), saying until when; revoking brings that sooner.
    cap = ("wallet", "spend-cap", "--asset", "USDC", "--per-epoch", "5", "--total", "20", "--account", DIRECT)
    in_force = promptex_cli(*cap)
    assert in_force.exit_code == 1, in_force.output
    expiry_end = vault.session_key(accounts[3], usdc)[6]
    assert f"USDC is in signed mode until {utc_text(expiry_end)} (session {grant.session}'s" in in_force.output
    assert "`promptex session revoke --asset USDC` ends it at" in in_force.output
    assert in_force.output.count("\n") == 1 and vault.spend_cap(accounts[3], usdc)[1] == 0

    revoked = promptex_cli("session", "revoke", "--asset", "USDC", "--account", DIRECT)
    assert revoked.exit_code == 0, revoked.output
    ends_at = vault.session_key(accounts[3], usdc)[6]  # the close of the next window
    assert 0 < ends_at < expiry_end
    assert f"USDC session {grant.session} revoked: its vouchers settle until {utc_text(ends_at)}" in revoked.output
    assert "`promptex wallet spend-cap --asset USDC --per-epoch … --total …`" in revoked.output
    early = promptex_cli(*cap)
    assert early.exit_code == 1 and f"signed mode until {utc_text(ends_at)}" in early.output, early.output
    assert "session revoke" not in early.output  # already as soon as it gets
    chain.mine(timestamp=ends_at + 1)  # the session's last window is over: the vault takes a cap again
    capped = promptex_cli(*cap)
    assert capped.exit_code == 0, capped.output
    assert vault.spend_cap(accounts[3], usdc)[1] == 20 * 10**6
