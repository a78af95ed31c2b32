"""The coordinator's door from the command line, on ape's test chain, in this process: the
door (served on a local port) over a coordinator that reads this chain and signs with the
vault's coordinator (test account 0); `promptex wallet exit-instant SYMBOL AMOUNT` signs the
request with the ape account, posts it and uses the release in one command;
`promptex session create` posts the wallet-signed SessionKey there, and with `--direct` asks
it first whether the market would use the session the wallet registers itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ape import chain

from anvil_node import free_port
from promptex.buyerside.sessions import load
from promptex.chain.deploy import contract_at
from promptex.config import settings
from promptex.coordinator.door import Door
from promptex.coordinator.requests import Place
from promptex.coordinator.service import Coordinator
from promptex.ledger import Ledger, UsageRecord
from promptex.ledger.binding import sign
from promptex.protocol.vault import sign_release
from promptex.serving import ServerThread

BUYER, RELAYED, LATER = "TEST::2", "TEST::4", "TEST::5"
USD = 10**6


class ApeChain:
    """The few views a door's coordinator reads, from ape's test chain (the coordinator's
    `Chain` otherwise speaks JSON-RPC to a node, which this in-process chain is not)."""

    def __init__(self, deployment: Any, coordinator: Any) -> None:
        self.deployment, self.coordinator = deployment, coordinator
        self.vault = contract_at(deployment, "CreditsVault")

    def asset_address(self, asset: str) -> str:
        return str(self.deployment.asset_address(asset))

    def now(self) -> int:
        return int(chain.blocks.head.timestamp)

    def balance_of(self, address: str, asset: str) -> int:
        return int(self.vault.balance_of(address, self.asset_address(asset)))

    def release_nonce(self, address: str) -> int:
        return int(self.vault.release_nonce(address))

    def sign_release(self, address: str, asset: str, amount: int, nonce: int, expiry: int) -> bytes:
        return sign_release(
            self.coordinator.private_key, chain_id=chain.chain_id, vault=self.vault.address, account=address,
            asset=self.asset_address(asset), amount=amount, nonce=nonce, expiry=expiry,
        )  # fmt: skip


@pytest.fixture
def door(chain_market, accounts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Coordinator]:
    deployment, _ = chain_market
    book = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", sqlite_synchronous="NORMAL")
    coordinator = Coordinator(book.engine, ApeChain(deployment, accounts[0]), holder="door")  # type: ignore[arg-type]
    # The door answers only while its process's passes hold the lease: as if they ran for the test's length.
    assert coordinator.store.acquire_lease("door", 3_600)
    with ServerThread(Door(coordinator, Place.of(deployment)).app()) as server:
        monkeypatch.setenv("PROMPTEX_COORDINATOR_DOOR_URL", server.url)
        settings.cache_clear()
        yield coordinator
    book.close()
    settings.cache_clear()


def bind(coordinator: Coordinator, wallet: Any) -> tuple[Ledger, int]:
    book = Ledger(coordinator.store.engine)
    account = book.create_account().id
    message = book.issue_binding_challenge(account, wallet.address)
    book.bind_wallet(message, sign(message, wallet.private_key))
    return book, account


def test_exit_instant__asks_the_door__refused_beyond_the_free_amount__released_within_and_locked_until_used(
    promptex_cli, chain_market, accounts, door: Coordinator
) -> None:
    deployment, _ = chain_market
    buyer = accounts[2]
    usdc, vault = contract_at(deployment, "USDC"), contract_at(deployment, "CreditsVault")
    usdc.mint(buyer, 20 * USD, sender=buyer)
    usdc.approve(vault, 20 * USD, sender=buyer)
    vault.deposit(usdc, 20 * USD, sender=buyer)
    book, account = bind(door, buyer)
    book.credit_deposit("0x" + "01" * 32 + ":0", buyer.address, "USDC", 20 * USD)
    book.set_spend_cap(account, "USDC", 20 * USD)
    book.reserve(account, "USDC", 7_500_000, "req_served", ttl=60)  # served, not yet settled on chain
    record = UsageRecord(model="gpt-4o", input_tokens=1, output_tokens=1, list_usd_micro=1, gateway_lot_id=9,
                         chain_lot_id=2, lot_kind="listed", fee_bps=500)  # fmt: skip
    book.settle("req_served", 7_500_000, record=record)
    wallet_before = usdc.balanceOf(buyer)

    refused = promptex_cli("wallet", "exit-instant", "USDC", "13", "--account", BUYER)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert refused.output.startswith("Error: the coordinator refused: only 12.50 USDC of "), refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert book.balance(account, "USDC").locked == 0

    left = promptex_cli("wallet", "exit-instant", "USDC", "12.5", "--account", BUYER)
    assert left.exit_code == 0, left.output
    assert "left the vault with 12.50 USDC at once" in left.output
    assert usdc.balanceOf(buyer) - wallet_before == 12_500_000 and vault.balance_of(buyer, usdc) == 7_500_000
    assert book.balance(account, "USDC").locked == 12_500_000  # until the coordinator sees the release used
    door._sweep_releases()
    assert book.balance(account, "USDC").locked == 0 and door.store.active_releases() == []

    neither = promptex_cli("wallet", "exit-instant", "USDC", "--account", BUYER)
    assert neither.exit_code == 1 and "give SYMBOL AMOUNT" in neither.output


def test_session_create__posted_to_the_door__queued_for_the_relay__without_a_door_says_how_to_start_one(
    promptex_cli, accounts, door: Coordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bind(door, accounts[4])
    created = promptex_cli(
        "session", "create", "--maximum", "2.5", "--session", str(tmp_path / "s.json"), "--account", RELAYED
    )
    assert created.exit_code == 0, created.output
    assert "queued for the coordinator" in created.output
    grant = load(tmp_path / "s.json")
    (queued,) = door.store.session_keys()
    assert (queued.address, queued.key, queued.maximum, queued.signature) == (
        accounts[4].address, grant.key, 2_500_000, grant.signature,
    )  # fmt: skip

    monkeypatch.delenv("PROMPTEX_COORDINATOR_DOOR_URL")
    settings.cache_clear()
    no_door = [
        promptex_cli(
            "session", "create", "--maximum", "1", "--session", str(tmp_path / "t.json"), "--account", RELAYED
        ),
        promptex_cli("wallet", "exit-instant", "USDC", "1", "--account", RELAYED),
    ]
    for refused in no_door:
        assert refused.exit_code == 1 and "no coordinator door known: run `promptex up`" in refused.output


def test_session_create_direct__from_an_account_s_later_wallet__refused_in_one_line_nothing_registered(
    promptex_cli, chain_market, accounts, door: Coordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wbreak s15: `session create --direct` from a wallet bound second registered a session on
    chain the ledger keeps on that wallet's unclaimed account; every voucher signed under it
    was then refused by the gateway (409 session_not_current), the buyer told nothing before.
    Now the door's check refuses it before the transaction: one line, exit 1, no grant file.
    With no door known (smalls s17: unchecked), the market's ledger here is asked the same;
    with neither, refused in one line."""
    deployment, _ = chain_market
    vault, usdc = contract_at(deployment, "CreditsVault"), contract_at(deployment, "USDC")
    book, account = bind(door, accounts[4])
    message = book.issue_binding_challenge(account, accounts[5].address)
    book.bind_wallet(message, sign(message, accounts[5].private_key))
    grant_file = tmp_path / "later.json"
    create = ("session", "create", "--maximum", "1", "--direct", "--session", str(grant_file), "--account", LATER)
    refused = promptex_cli(*create)
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1, refused.output
    assert refused.output.startswith("Error: the coordinator refused: ") and "Traceback" not in refused.output
    assert f"sign the SessionKey with {accounts[4].address}" in refused.output
    monkeypatch.delenv("PROMPTEX_COORDINATOR_DOOR_URL")
    here, nowhere = f"sqlite:///{tmp_path}/ledger.sqlite3", f"sqlite:///{tmp_path}/none.sqlite3"
    for ledger, says in ((here, "Error: the market's ledger refuses: "), (nowhere, "Error: no coordinator door known")):
        monkeypatch.setenv("PROMPTEX_LEDGER_URL", ledger)
        settings.cache_clear()
        refused = promptex_cli(*create)
        assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1, refused.output
        assert refused.output.startswith(says) and "nothing was registered" in refused.output, refused.output
        assert "ledger refuses" not in says or f"sign the SessionKey with {accounts[4].address}" in refused.output
    assert not grant_file.exists() and int(vault.session_key(accounts[5], usdc)[0], 16) == 0  # no key registered
    assert not (tmp_path / "none.sqlite3").exists()


def test_session_create_twice_before_the_relay_s_pass__the_second_refused__the_grant_kept_is_the_queued_one(
    promptex_cli, accounts, door: Coordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """claims s16: `session create` run again before the relay registered the first signed the
    same nonce (the vault's, unchanged); the door answered "queued" (the first stayed queued)
    and the command wrote the new grant over the first: the vault got a key the buyer no
    longer had, every voucher refused. Now the door refuses it (409) and the grant file is
    replaced only once a key is queued."""
    bind(door, accounts[4])
    grant_file = tmp_path / "s.json"
    create = ("session", "create", "--maximum", "1", "--session", str(grant_file), "--account", RELAYED)
    assert promptex_cli(*create).exit_code == 0
    first = load(grant_file)
    again = promptex_cli(*create)
    assert again.exit_code == 1 and len(again.output.strip().splitlines()) == 1, again.output
    assert again.output.startswith("Error: the coordinator refused: a SessionKey of "), again.output
    assert "queued already" in again.output
    (queued,) = door.store.session_keys()
    assert load(grant_file).key == first.key == queued.key
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("s.json")] == ["s.json"]
    # A door that does not answer may have queued it: the grant stays beside the file in use.
    monkeypatch.setenv("PROMPTEX_COORDINATOR_DOOR_URL", f"http://127.0.0.1:{free_port()}")
    settings.cache_clear()
    unanswered = promptex_cli(*create)
    assert unanswered.exit_code == 1 and "does not answer" in unanswered.output, unanswered.output
    (kept,) = [path for path in tmp_path.iterdir() if path.name.endswith(".pending")]
    assert load(grant_file).key == first.key and kept.name == f"s.json.{load(kept).key}.pending"
