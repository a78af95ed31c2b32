"""Every store knows its chain: the first service records the chain id, genesis hash and
deployment the database mirrors; any service later pointed at another chain or deployment
refuses in one line saying what differs and what to do. The indexer (on a fake node)
refuses a new chain under an old ledger instead of rewinding it as a reorg of every block,
adopts a ledger made before identities only when its last block is on the chain, and
records every reorg it rewinds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from indexer_fakes import (
    CLD,
    FACTORY,
    USDC,
    VAULT,
    FakeNode,
    deposited,
    followed,
    new_address,
)
from ledger_helpers import bind_new_wallet

from promptex.cli.indexer import indexer as indexer_command
from promptex.config import settings
from promptex.indexer import Indexer, Options, store
from promptex.indexer.schema import indexer_cursor
from promptex.ledger import Ledger, WrongChain
from promptex.protocol.identity import ChainIdentity, differences

GENESIS = "0x" + "aa" * 32
CONTRACTS = {"CreditsVault": VAULT, "Factory": FACTORY, "USDC": USDC, "token:CLD": CLD}
LOCAL = ChainIdentity(31337, GENESIS, "local", CONTRACTS)


def test_follow_chain__empty_ledger__records_then_accepts_the_same(ledger):
    assert ledger.chain_identity() is None
    assert ledger.follow_chain(LOCAL, "the indexer") == LOCAL
    assert ledger.follow_chain(LOCAL, "the gateway") == LOCAL
    assert ledger.chain_identity() == LOCAL


def test_follow_chain__new_genesis__refused_in_one_line_saying_what_to_do(ledger):
    ledger.follow_chain(LOCAL, "the indexer")
    restarted = ChainIdentity(31337, "0x" + "bb" * 32, "local", CONTRACTS)  # same id, same addresses
    with pytest.raises(WrongChain) as refused:
        ledger.follow_chain(restarted, "the gateway")
    message = str(refused.value)
    assert "\n" not in message
    assert "follows chain 31337 (genesis 0xaaaa…aaaa)" in message
    assert "the gateway is pointed at genesis block 0xbbbb…bbbb" in message
    assert "promptex up --fresh" in message
    assert ledger.chain_identity() == LOCAL  # nothing changed


def test_follow_chain__other_chain_id_or_vault__refused(ledger):
    ledger.follow_chain(LOCAL, "the indexer")
    with pytest.raises(WrongChain, match="chain id 1, not 31337"):
        ledger.follow_chain(ChainIdentity(1, GENESIS, "local", CONTRACTS), "the coordinator")
    moved = {**CONTRACTS, "CreditsVault": new_address()}
    with pytest.raises(WrongChain, match="another deployment \\(CreditsVault at 0x"):
        ledger.follow_chain(ChainIdentity(31337, GENESIS, "local", moved), "the agent")


def test_follow_chain__deployment_grows__recorded(ledger):
    ledger.follow_chain(LOCAL, "the indexer")
    grown = ChainIdentity(31337, GENESIS, "local", {**CONTRACTS, "Oracle": new_address()})
    ledger.follow_chain(grown, "the gateway")
    assert ledger.chain_identity() == grown


def test_follow_chain__money_but_no_record__only_an_anchored_indexer_adopts(ledger):
    ledger.credit_deposit("0x01:0", bind_new_wallet(ledger, ledger.create_account().id), "USDC", 5)
    with pytest.raises(WrongChain, match="records no chain .* start the indexer first"):
        ledger.follow_chain(LOCAL, "the gateway")
    assert ledger.follow_chain(LOCAL, "the indexer", adopt=True) == LOCAL


def test_differences__same_chain_other_case__none():
    lower = {name: address.lower() for name, address in CONTRACTS.items()}
    assert differences(LOCAL, ChainIdentity(31337, GENESIS.upper().replace("0X", "0x"), "local", lower)) == []


# ─── The indexer ─────────────────────────────────────────────────────────────


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeNode]:
    """Deployment record and ledger in tmp_path; the indexer's node is `nodes["node"]`."""
    root = tmp_path / "deployments"
    (root / "abi").mkdir(parents=True)
    from indexer_fakes import ABIS

    contracts = {}
    for name, address in CONTRACTS.items():
        abi = root / "abi" / f"{name.replace(':', '_')}.json"
        abi.write_text(json.dumps(ABIS.get(name, [])))
        contracts[name] = {"address": address, "abi": str(abi)}
    record = {"network": "local", "chain_id": 31337, "block_number": 1, "deployer": VAULT, "contracts": contracts}
    (root / "local.json").write_text(json.dumps(record))
    monkeypatch.setenv("PROMPTEX_DEPLOYMENTS_DIR", str(root))
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", f"sqlite:///{tmp_path}/ledger.sqlite3")
    monkeypatch.setenv("PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS", "NORMAL")
    nodes = {"node": FakeNode()}
    monkeypatch.setenv("PROMPTEX_RPC_URL", "http://fake-node.invalid")  # the fake node answers instead
    monkeypatch.setattr("promptex.cli.indexer.RpcClient", lambda url, timeout: nodes["node"].client())
    settings.cache_clear()
    yield nodes
    settings.cache_clear()


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(indexer_command, ["--once", "--from-block", "1", *args])
    return result.exit_code, result.output


def test_indexer__brand_new_chain_under_old_ledger__refused_nothing_undone(env, tmp_path):
    """Regression: `promptex up` restarted over a new anvil kept the old ledger; the indexer
    saw a reorg of every block, undid every deposit and balances went to USDC −852."""
    alice = new_address()
    env["node"].mine(deposited(alice, 852), empty=2)
    assert _run()[0] == 0

    env["node"] = new_chain = FakeNode()  # same chain id, same addresses, new genesis
    new_chain.blocks[0].hash = "0x" + "cd" * 32
    new_chain.mine(empty=5)
    code, output = _run()

    assert code == 1
    assert len(output.strip().splitlines()) == 1, output
    assert "follows chain 31337" in output and "genesis block 0xcdcd…cdcd" in output
    assert "promptex up --fresh" in output
    with Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3") as ledger, ledger.engine.connect() as conn:
        assert store.reorgs(conn) == []  # nothing was rewound
        assert ledger.problems() == []
        assert len(ledger.open_debts()) == 0
        assert ledger.system_balance("vault", "USDC") == -852  # alice's deposit still counted


def test_indexer__ledger_from_before_identities__adopted_only_on_its_chain(env, tmp_path):
    env["node"].mine(deposited(new_address(), 7), empty=1)
    assert _run()[0] == 0
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    with Ledger.open(url) as ledger, ledger.engine.begin() as conn:
        from promptex.ledger.schema import chain_identity

        conn.execute(chain_identity.delete())  # as round 1 left it: money, no record

    other = FakeNode()
    other.blocks[0].hash = "0x" + "ee" * 32
    other.mine(empty=4)
    env["node"], original = other, env["node"]
    code, output = _run()
    assert code == 1 and "records no chain" in output  # its last block is not on this chain

    env["node"] = original
    assert _run()[0] == 0  # on its own chain: adopted
    with Ledger.open(url) as ledger:
        recorded = ledger.chain_identity()
        assert recorded is not None and recorded.genesis_hash == original.blocks[0].hash


def test_indexer__reorg__recorded_with_depth_and_shown(env, tmp_path):
    alice = new_address()
    node = env["node"]
    node.mine(deposited(alice, 100), empty=1)
    node.mine(empty=3)
    assert _run()[0] == 0
    node.reorg(3)
    node.mine(empty=4)
    assert _run()[0] == 0

    with Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3") as ledger, ledger.engine.connect() as conn:
        (reorg,) = store.reorgs(conn)
        assert (reorg.depth, reorg.confirmations, reorg.events_undone, reorg.debts_opened) == (3, 0, 0, 0)
        assert conn.execute(indexer_cursor.select()).first().rewinds == 1  # type: ignore[union-attr]
    result = CliRunner().invoke(indexer_command, ["reorgs"])
    assert result.exit_code == 0 and "fork block" in result.output


def test_indexer__reorg_removes_a_spent_deposit__debt_recorded_with_the_reorg(tmp_path):
    node = FakeNode()
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    with Ledger.open(url, sqlite_synchronous="NORMAL") as ledger:
        account = ledger.create_account().id
        address = bind_new_wallet(ledger, account)
        node.mine(empty=1)
        node.mine(deposited(address, 1_000))
        indexer = Indexer(ledger, node.client(), followed(), Options(start_block=1))
        indexer.catch_up()
        ledger.set_spend_cap(account, "USDC", 1_000)
        ledger.reserve(account, "USDC", 900, "req-1", ttl=60)
        ledger.settle("req-1", 900)

        node.reorg(1)
        node.mine(empty=2)
        indexer.catch_up()

        assert ledger.balance(account, "USDC").posted == 0
        (debt,) = ledger.debts(account)
        assert debt.outstanding == 900 and "reorg removed deposit" in debt.reason
        with ledger.engine.connect() as conn:
            (reorg,) = store.reorgs(conn)
        assert (reorg.events_undone, reorg.debts_opened) == (1, 1)
        assert ledger.problems() == []
