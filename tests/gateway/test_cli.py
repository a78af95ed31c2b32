"""promptex buyer signup/bind, promptex gateway serve, end to end on a real ledger (the
seller commands need a chain: tests/e2e/test_seller_cli.py)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from eth_account import Account
from sqlalchemy import func, select

from promptex.cli import main
from promptex.config import settings
from promptex.gateway.keys import hash_key
from promptex.gateway.store import GatewayStore
from promptex.ledger import Ledger
from promptex.ledger.schema import accounts, binding_challenges
from promptex.serving import free_port


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", url)
    monkeypatch.setenv("PROMPTEX_GATEWAY_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    monkeypatch.setenv("PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS", "NORMAL")
    monkeypatch.setenv("PROMPTEX_GATEWAY_METRICS_PORT", "0")  # the served gateways: no metrics port (not 9464)
    monkeypatch.chdir(tmp_path)
    settings.cache_clear()
    yield url
    settings.cache_clear()


def test_buyer_signup_and_bind__signed_challenge__wallet_bound_and_key_shown_once(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet = Account.create()
    monkeypatch.setenv("DEMO_WALLET_KEY", wallet.key.hex())
    monkeypatch.setenv("PROMPTEX_WELCOME_CREDIT_AMOUNT", "10000000")  # as `promptex up`'s profile sets
    settings.cache_clear()
    signup = CliRunner().invoke(main, ["buyer", "signup", "--wallet", wallet.address])
    assert signup.exit_code == 0, signup.output
    key = signup.output.split("store it now): ")[1].split()[0]
    bind = CliRunner().invoke(main, ["buyer", "bind", "--sign-with-env", "DEMO_WALLET_KEY"])
    assert bind.exit_code == 0, bind.output
    with Ledger.open(env) as ledger:
        account = ledger.account_of(wallet.address)
        assert account is not None
        record = GatewayStore(ledger.engine).api_key(hash_key(key))
        assert record is not None and record.account == account
        budget = ledger.budget(ledger.treasury().id, account, "USDC")
        assert budget is not None and budget.remaining == 10_000_000  # welcome credit
    again = CliRunner().invoke(main, ["buyer", "bind", "--sign-with-env", "DEMO_WALLET_KEY"])
    assert again.exit_code != 0  # the challenge is used up


def test_buyer_signup__a_wallet_bound_to_another_account__refused_in_one_line_nothing_created(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """late1 s16: before, signup made a new account and key first; the wallet's `bind` then
    refused (bound elsewhere) and the new account stayed empty for good."""
    wallet = Account.create()
    monkeypatch.setenv("DEMO_WALLET_KEY", wallet.key.hex())
    runner = CliRunner()
    assert runner.invoke(main, ["buyer", "signup", "--wallet", wallet.address]).exit_code == 0
    assert runner.invoke(main, ["buyer", "bind", "--sign-with-env", "DEMO_WALLET_KEY"]).exit_code == 0
    with Ledger.open(env) as ledger:
        bound, before = ledger.account_of(wallet.address), account_count(ledger)
    for given, says in ((wallet.address.lower(), f"is bound to account {bound} already"), ("0x1234", "not an")):
        refused = runner.invoke(main, ["buyer", "signup", "--wallet", given])
        assert refused.exit_code == 1 and says in refused.output and "nothing created" in refused.output
        assert len(refused.output.strip().splitlines()) == 1 and "API key" not in refused.output, refused.output
    with Ledger.open(env) as ledger:
        assert account_count(ledger) == before


def test_issue_binding_challenge__asked_again__the_unused_one_given_again_no_row_per_call(env: str) -> None:
    wallet = Account.create().address
    with Ledger.open(env) as ledger:
        account = ledger.create_account().id
        first = ledger.issue_binding_challenge(account, wallet)
        assert {ledger.issue_binding_challenge(account, wallet.lower()).nonce for _ in range(4)} == {first.nonce}
        other = ledger.issue_binding_challenge(ledger.create_account().id, wallet)  # another account: its own
        assert other.nonce != first.nonce
        with ledger.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(binding_challenges)).scalar_one() == 2


def account_count(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(accounts)).scalar_one())


def test_gateway_serve__port_in_use__clear_error(env: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["gateway", "serve", "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


def test_gateway_serve__burst_of_new_connections__each_answered(env: str, tmp_path: Path) -> None:
    """The served process (copies of its listening socket): 200 clients that each open a
    connection at once all get their answer (401 here, with a request id)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptex.cli", "gateway", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/models"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.2)

        async def burst() -> list[httpx.Response]:
            async def one() -> httpx.Response:
                async with httpx.AsyncClient(timeout=30) as client:  # a new connection each
                    return await client.get(url)

            return await asyncio.gather(*(one() for _ in range(200)))

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [401] * 200
        assert len({r.headers["x-request-id"] for r in responses}) == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_buyer_limits__set_shown_cleared__bad_subject_one_line_error(env: str) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["buyer", "limits", "--key-id", "7", "--rpm", "60", "--cost", "USDC=2.5"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("key:7: 60 requests per minute, 2.5")
    assert "per 3600 s" in result.output
    result = runner.invoke(main, ["buyer", "limits", "--org", "3", "--member", "9", "--tpm", "1000"])
    assert result.output.strip() == "member:3:9: 1000 tokens per minute"
    assert runner.invoke(main, ["buyer", "limits", "--key-id", "7", "--clear"]).output.strip() == "key:7: no limits"
    refused = runner.invoke(main, ["buyer", "limits", "--member", "9", "--rpm", "1"])
    assert refused.exit_code != 0 and "name one subject" in refused.output
    refused = runner.invoke(main, ["buyer", "limits", "--key-id", "7", "--rpm", "-1"])
    assert refused.exit_code != 0 and "non-negative" in refused.output


def test_signing_account__another_wallet__refused_before_unlocking(monkeypatch: pytest.MonkeyPatch) -> None:
    """`buyer bind --account A --yes` and the wallet commands share one helper; bind's "the
    challenge is for W" comes before A's keyfile is unlocked (no passphrase asked for a refusal)."""
    from promptex.chain import accounts

    unlocked: list[bool] = []

    class Keyfile:
        address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"

        def set_autosign(self, enabled: bool) -> None:
            unlocked.append(enabled)

    monkeypatch.setattr(accounts, "resolve_account", lambda alias: Keyfile())
    with pytest.raises(accounts.NotThatWallet) as refused:
        accounts.signing_account("a", yes=True, wallet="0x" + "11" * 20)
    assert refused.value.address == Keyfile.address and unlocked == []
    assert isinstance(accounts.signing_account("a", yes=False, wallet=Keyfile.address.lower()), Keyfile)
    assert unlocked == []
    accounts.signing_account("a", yes=True)
    assert unlocked == [True]


def test_buyer_bind__with_an_ape_account__bound_as_signup_says(env: str) -> None:
    """`buyer signup --wallet` names the ways to sign; `bind --account ALIAS` signs with the ape
    account, as every wallet command does (before: only a raw private key or a signature made
    elsewhere — an ape account's owner had no command to sign with)."""
    test_wallet = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # ape's TEST::1 (the test mnemonic)
    signup = CliRunner().invoke(main, ["buyer", "signup", "--wallet", test_wallet])
    assert signup.exit_code == 0, signup.output
    assert "--account ALIAS" in signup.output
    nobody = CliRunner().invoke(main, ["buyer", "bind"])
    assert nobody.exit_code == 1 and "--account ALIAS" in nobody.output, nobody.output
    other = CliRunner().invoke(main, ["buyer", "bind", "--account", "TEST::2"])
    assert other.exit_code == 1 and f"the challenge is for {test_wallet}" in other.output, other.output
    missing = CliRunner().invoke(main, ["buyer", "bind", "--account", "no-such-alias"])
    assert missing.exit_code == 1 and "no ape account 'no-such-alias'" in missing.output, missing.output
    bind = CliRunner().invoke(main, ["buyer", "bind", "--account", "TEST::1"])
    assert bind.exit_code == 0, bind.output
    assert f"wallet {test_wallet} bound to account" in bind.output
    with Ledger.open(env) as ledger:
        assert ledger.account_of(test_wallet) is not None
