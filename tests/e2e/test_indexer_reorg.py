"""The indexer on a real anvil: deposits and exits from several accounts, reorgs of depth
1..10 made with evm_snapshot/evm_revert and a different branch, restart from the
checkpoint. After each: for every account and asset, the ledger's posted balance is the
vault's `balance_of` and its locked amount the pending exit; the books balance."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from web3 import HTTPProvider, Web3

from anvil_node import act_as
from promptex.chain.deployments import Deployment, load_deployment
from promptex.indexer import Followed, Indexer, Options, RpcClient
from promptex.indexer.schema import chain_events
from promptex.ledger import AccountKind, Ledger
from promptex.ledger.schema import accounts
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USDC_UNIT
from promptex.protocol.vault import sign_release

# anvil's (and ape's) test account 0: the deployer, hence the vault's coordinator.
DEPLOYER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


@dataclass
class World:
    w3: Web3
    url: str
    deployment: Deployment
    root: Path
    vault: Any
    assets: dict[str, Any]  # symbol → token contract
    users: list[str]
    thaw: int

    def rpc(self, method: str, *params: Any) -> Any:
        return self.w3.provider.make_request(method, list(params))["result"]  # type: ignore[arg-type]

    def indexer(self, ledger: Ledger) -> Indexer:
        followed = Followed.from_deployment(self.deployment, self.root)
        return Indexer(ledger, RpcClient(self.url), followed, Options(confirmations=0))


def _contract(w3: Web3, deployment: Deployment, name: str) -> Any:
    record = deployment.contracts[name]
    return w3.eth.contract(address=record.address, abi=json.loads(Path(record.abi).read_text()))


@pytest.fixture(scope="module")
def world(seeded_anvil: tuple[str, Path]) -> World:
    url, root = seeded_anvil
    w3 = Web3(HTTPProvider(url))
    deployment = load_deployment("local", root)
    vault = _contract(w3, deployment, "CreditsVault")
    usdc, cld = _contract(w3, deployment, "USDC"), _contract(w3, deployment, "token:CLD")
    users = list(w3.eth.accounts[1:5])
    # The escrow is CLD's only minter (fixed at deploy); this test acts as it on anvil.
    minter = act_as(url, deployment.address("CreditEscrow"))
    for user in users:
        usdc.functions.mint(user, 10**6 * USDC_UNIT).transact({"from": user})
        cld.functions.mint(user, 10**6 * TOKEN).transact({"from": minter})
        for token in (usdc, cld):
            token.functions.approve(vault.address, 2**256 - 1).transact({"from": user})
    thaw = vault.functions.thaw_period().call()
    return World(w3, url, deployment, root, vault, {"USDC": usdc, "CLD": cld}, users, thaw)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    book = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", sqlite_synchronous="NORMAL")
    yield book
    book.close()


def act(world: World, rng: random.Random) -> str:
    """One random vault transaction, mined (one block each); returns what it was. Waits for
    the receipt: anvil's automine mines after it answers, and under load the indexer could
    otherwise read the head before the last transaction is in it."""
    user = rng.choice(world.users)
    symbol = rng.choice(["USDC", "CLD"])
    asset = world.assets[symbol].address
    unit = USDC_UNIT if symbol == "USDC" else TOKEN
    vault = world.vault.functions
    pending = vault.pending_exits(user, asset).call()[0]
    balance = vault.balance_of(user, asset).call()
    choices = ["deposit", "deposit_for"]
    if pending:
        choices += ["cancel"] + (["complete"] if symbol == "USDC" else [])
    elif balance:
        choices += ["request"]
    if balance and symbol == "USDC":
        choices += ["instant"]
    choice = rng.choice(choices)
    sender = {"from": user}
    if choice == "deposit":
        sent = vault.deposit(asset, rng.randint(1, 1_000) * unit).transact(sender)
    elif choice == "deposit_for":
        payer = rng.choice([u for u in world.users if u != user])
        sent = vault.deposit_for(user, asset, rng.randint(1, 1_000) * unit).transact({"from": payer})
    elif choice == "request":
        sent = vault.request_exit(asset, rng.randint(1, balance)).transact(sender)
    elif choice == "cancel":
        sent = vault.cancel_exit(asset).transact(sender)
    elif choice == "complete":
        world.rpc("evm_increaseTime", world.thaw + 1)
        sent = vault.complete_exit(asset, 0, False).transact(
            {**sender, "gas": 1_000_000}
        )  # no estimate: the time jump is not mined yet
    else:  # instant, co-signed by the coordinator
        amount = rng.randint(1, balance)
        nonce = vault.release_nonce(user).call()
        expiry = world.w3.eth.get_block("latest")["timestamp"] + 3_600
        fields = {"account": user, "asset": asset, "amount": amount, "nonce": nonce, "expiry": expiry}
        signature = sign_release(DEPLOYER_KEY, chain_id=world.w3.eth.chain_id, vault=world.vault.address, **fields)
        sent = vault.exit_instant(asset, amount, 0, nonce, expiry, signature).transact(sender)
    assert world.w3.eth.wait_for_transaction_receipt(sent, timeout=30)["status"] == 1
    return choice


def assert_ledger_is_chain(world: World, ledger: Ledger) -> None:
    for user in world.users:
        with ledger.engine.connect() as conn:
            account = conn.execute(
                select(accounts.c.id).where(accounts.c.kind == AccountKind.UNCLAIMED.value, accounts.c.name == user)
            ).scalar()
        for symbol, token in world.assets.items():
            on_chain = world.vault.functions.balance_of(user, token.address).call()
            pending = world.vault.functions.pending_exits(user, token.address).call()[0]
            book = ledger.balance(account, symbol) if account is not None else None
            assert (book.posted if book else 0, book.locked if book else 0) == (on_chain, pending), (user, symbol)
    ledger.check()


def test_reorgs__depth_1_to_10__ledger_equals_chain(world: World, ledger: Ledger) -> None:
    rng = random.Random(6)
    indexer = world.indexer(ledger)
    kinds = {act(world, rng) for _ in range(12)}
    indexer.catch_up()
    assert_ledger_is_chain(world, ledger)
    rewinds = 0
    for depth in range(1, 11):
        snapshot = world.rpc("evm_snapshot")
        fork = world.w3.eth.block_number
        kinds |= {act(world, rng) for _ in range(depth)}  # the branch that will be orphaned
        indexer.catch_up()
        assert_ledger_is_chain(world, ledger)
        orphaned = {n: world.w3.eth.get_block(n)["hash"] for n in range(fork + 1, fork + depth + 1)}

        assert world.rpc("evm_revert", snapshot)
        assert world.w3.eth.block_number == fork
        kinds |= {act(world, rng) for _ in range(depth + rng.randint(0, 2))}  # a different branch
        assert all(
            world.w3.eth.get_block(n)["hash"] != h for n, h in orphaned.items() if n <= world.w3.eth.block_number
        )
        totals = indexer.catch_up()
        rewinds += totals.rewinds
        assert totals.rewinds == 1, f"depth {depth}: the reorg was not seen"
        assert_ledger_is_chain(world, ledger)
    assert rewinds == 10
    assert {"deposit", "request", "cancel", "complete", "instant"} <= kinds


def test_restart__new_indexer__resumes_without_double_counting(world: World, ledger: Ledger) -> None:
    rng = random.Random(7)
    for _ in range(5):
        act(world, rng)
    first = world.indexer(ledger).catch_up()
    assert_ledger_is_chain(world, ledger)
    with ledger.engine.connect() as conn:
        stored = len(conn.execute(select(chain_events.c.tx_hash)).all())

    mined = [act(world, rng) for _ in range(6)]
    again = world.indexer(ledger).catch_up()  # a new process: state only from the database
    assert again.blocks == len(mined) and again.block == world.w3.eth.block_number > first.block
    with ledger.engine.connect() as conn:
        assert len(conn.execute(select(chain_events.c.tx_hash)).all()) == stored + again.events
    assert_ledger_is_chain(world, ledger)
