"""`promptex reconcile` on a real anvil with the deployed contracts, through the CLI: a
healthy market reconciles to zero; a request served and charged but not yet settled on
chain is explained by its request id (amounts adding up exactly); a balance edited by SQL
exits 1 naming the account; a brand-new chain under the old ledger is refused in one
line by the indexer and by reconcile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from eth_account import Account
from sqlalchemy import update
from web3 import HTTPProvider, Web3

from anvil_node import running_anvil
from promptex.chain.deployments import load_deployment
from promptex.cli import main
from promptex.config import settings
from promptex.ledger import Ledger, UsageRecord
from promptex.ledger.binding import sign
from promptex.ledger.schema import balances
from promptex.protocol.units import USD_MICRO

# anvil's public development account 1 (a buyer here).
BUYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def _contract(w3: Web3, root: Path, name: str) -> Any:
    record = load_deployment("local", root).contracts[name]
    return w3.eth.contract(address=record.address, abi=json.loads(Path(record.abi).read_text()))


@pytest.fixture(scope="module")
def market(seeded_anvil: tuple[str, Path]) -> tuple[str, Path, Web3]:
    """The worker's seeded market; two users deposited USDC into the vault."""
    url, root = seeded_anvil
    w3 = Web3(HTTPProvider(url))
    vault, usdc = _contract(w3, root, "CreditsVault"), _contract(w3, root, "USDC")
    for user, amount in ((w3.eth.accounts[1], 500), (w3.eth.accounts[2], 300)):
        # Each mined before the next is estimated (anvil may answer before it mines).
        for call in (
            usdc.functions.mint(user, amount * USD_MICRO),
            usdc.functions.approve(vault.address, 2**256 - 1),
            vault.functions.deposit(usdc.address, amount * USD_MICRO),
        ):
            sent = call.transact({"from": user})
            assert w3.eth.wait_for_transaction_receipt(sent, timeout=30)["status"] == 1
    return url, root, w3


@pytest.fixture
def env(market: tuple[str, Path, Web3], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url, root, _ = market
    ledger_url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    for name, value in (
        ("PROMPTEX_DEPLOYMENTS_DIR", str(root)),
        ("PROMPTEX_LEDGER_URL", ledger_url),
        ("PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS", "NORMAL"),
        ("PROMPTEX_INDEXER_RPC_URL", url),
    ):
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    yield ledger_url
    settings.cache_clear()


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_reconcile__healthy_then_served_then_edited(env: str, market: tuple[str, Path, Web3]) -> None:
    assert _cli("indexer", "--once")[0] == 0
    code, output = _cli("reconcile")
    assert code == 0, output
    assert "books reconcile with the chain" in output and "no differences" in output

    buyer = Account.from_key(BUYER_KEY)
    with Ledger.open(env) as ledger:
        account = ledger.create_account().id
        message = ledger.issue_binding_challenge(account, buyer.address)
        ledger.bind_wallet(message, sign(message, buyer.key))
        ledger.set_spend_cap(account, "USDC", 500 * USD_MICRO)
        ledger.reserve(account, "USDC", 2 * USD_MICRO, "req-served", ttl=600)
        record = UsageRecord("gpt-test", 1_000, 100, 1_234, gateway_lot_id=1, chain_lot_id=None, lot_kind="listed")
        ledger.settle("req-served", 1_234_567, record=record)  # charged, not yet settled on chain

    code, output = _cli("reconcile", "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["ok"] is True
    (row,) = report["differences"]
    assert (row["section"], row["asset"], row["difference"], row["unexplained"]) == ("balance", "USDC", "1234567", "0")
    assert [(e["kind"], e["ref"], e["amount"]) for e in row["explained_by"]] == [
        ("unsettled request", "req-served", "1234567")
    ]

    with Ledger.open(env) as ledger, ledger.engine.begin() as conn:
        conn.execute(update(balances).where(balances.c.account_id == account).values(posted=400 * USD_MICRO))
    code, output = _cli("reconcile")
    assert code == 1
    assert f"account {account}" in output and "1 unexplained difference" in output
    assert "98.77 USDC not explained" in output  # for people: 500 − 400 − 1.234567, at 2 decimals


def test_reconcile__new_chain_under_the_old_ledger__refused_in_one_line(
    env: str, market: tuple[str, Path, Web3], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _cli("indexer", "--once")[0] == 0
    with running_anvil() as other:  # a brand-new chain: same id, no contracts, another genesis
        monkeypatch.setenv("PROMPTEX_INDEXER_RPC_URL", other)
        settings.cache_clear()
        for command in (("indexer", "--once"), ("reconcile",)):
            code, output = _cli(*command)
            assert code == 1, output
            assert len(output.strip().splitlines()) == 1, output
            assert "follows chain 31337" in output and "promptex up --fresh" in output
    with Ledger.open(env) as ledger:
        assert ledger.problems() == [] and ledger.open_debts() == []
        assert ledger.system_balance("vault", "USDC") == -800 * USD_MICRO  # nothing undone
