"""The indexer against a fake node: ledger effects, checkpoints, reorgs, failures, the CLI."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from eth_abi.abi import encode
from eth_account import Account
from indexer_fakes import (
    ABIS,
    CLD,
    FACTORY,
    USDC,
    VAULT,
    FakeNode,
    Log,
    deposited,
    exit_cancelled,
    exit_completed,
    exit_requested,
    followed,
    new_address,
)
from ledger_helpers import bind_new_wallet
from sqlalchemy import select, update

from promptex.cli.indexer import indexer as indexer_command
from promptex.config import settings
from promptex.indexer import Indexer, IndexerError, Options, serve
from promptex.indexer.decode import LogDecodeError
from promptex.indexer.reorg import ReorgTooDeep
from promptex.indexer.rpc import ChainMoved, RpcError, RpcUnavailable
from promptex.indexer.schema import chain_events, indexer_cursor
from promptex.ledger import AccountKind, Balance, ChainEventConflict, Ledger
from promptex.ledger.binding import sign
from promptex.ledger.errors import SpendCapExceeded
from promptex.ledger.schema import accounts, journal_entries


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


def make_indexer(ledger: Ledger, node: FakeNode, **options: int) -> Indexer:
    return Indexer(ledger, node.client(), followed(), Options(**{"start_block": 1, **options}))


def balance(ledger: Ledger, address: str, asset: str = "USDC") -> Balance:
    """The balance of whoever owns `address`'s funds: its bound or its unclaimed account."""
    account = ledger.account_of(address)
    if account is None:
        with ledger.engine.connect() as conn:
            account = conn.execute(
                select(accounts.c.id).where(accounts.c.kind == AccountKind.UNCLAIMED.value, accounts.c.name == address)
            ).scalar()
    return Balance(0, asset, 0, 0, 0, 0) if account is None else ledger.balance(account, asset)


def cursor_row(ledger: Ledger):
    with ledger.engine.connect() as conn:
        return conn.execute(select(indexer_cursor)).one()


def fact_ids(ledger: Ledger) -> list[str | None]:
    with ledger.engine.connect() as conn:
        return list(conn.execute(select(chain_events.c.fact_id).order_by(chain_events.c.block_number)).scalars())


# ─── Ledger effects ──────────────────────────────────────────────────────────


def test_catch_up__deposits_and_exits__ledger_mirrors_vault(ledger, node):
    alice, bob = new_address(), new_address()
    node.mine(deposited(alice, 100), deposited(bob, 50))
    node.mine(exit_requested(alice, 30), empty=2)
    node.mine(exit_cancelled(alice, 30))
    node.mine(exit_requested(alice, 20))
    node.mine(exit_completed(alice, 20, 20), exit_requested(bob, 50))

    totals = make_indexer(ledger, node).catch_up()

    assert (totals.block, totals.events) == (node.head, 7)
    assert (balance(ledger, alice).posted, balance(ledger, alice).locked) == (80, 0)
    assert (balance(ledger, bob).posted, balance(ledger, bob).locked) == (50, 50)
    assert ledger.system_balance("vault", "USDC") == -130


def test_catch_up__exit_taken_by_settlement__unlocks_without_debit(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 100), exit_requested(alice, 100))
    node.mine(exit_completed(alice, requested=100, amount=0))  # settlements took the balance first
    make_indexer(sqlite_ledger, node).catch_up()
    assert (balance(sqlite_ledger, alice).posted, balance(sqlite_ledger, alice).locked) == (100, 0)


def test_catch_up__spend_only_exit_sold__token_debited_usdc_credited(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 10**18, asset=CLD), exit_requested(alice, 10**18, asset=CLD))
    node.mine(
        Log(VAULT, "Sold", {"account": alice, "asset": CLD, "amount": 10**18, "proceeds": 4_218}),
        exit_completed(alice, 10**18, 10**18, asset=CLD, proceeds=4_218),
    )
    make_indexer(sqlite_ledger, node).catch_up()
    assert balance(sqlite_ledger, alice, "CLD").posted == 0
    assert balance(sqlite_ledger, alice, "USDC").posted == 4_218


def test_catch_up__spend_only_exit_taken_as_token__token_debited_market_and_choice_recorded(sqlite_ledger, node):
    alice, market = new_address(), new_address()
    node.mine(deposited(alice, 10**18, asset=CLD), exit_requested(alice, 10**18, asset=CLD, market=market))
    node.mine(exit_completed(alice, 10**18, 10**18, asset=CLD, proceeds=10**18, sold=False))
    make_indexer(sqlite_ledger, node).catch_up()
    assert balance(sqlite_ledger, alice, "CLD").posted == 0  # the token left the vault
    assert balance(sqlite_ledger, alice, "USDC").posted == 0  # nothing was sold
    with sqlite_ledger.engine.connect() as conn:
        rows = {r.name: json.loads(r.args) for r in conn.execute(select(chain_events))}
    assert rows["ExitRequested"]["market"] == market
    assert rows["ExitCompleted"]["sold"] is False


def test_catch_up__instant_release__debits_and_keeps_pending_exit(sqlite_ledger, node):
    alice = new_address()
    release = {"account": alice, "asset": USDC, "amount": 10, "proceeds": 10, "nonce": 0}
    node.mine(deposited(alice, 100), exit_requested(alice, 50), Log(VAULT, "ExitReleased", release))
    make_indexer(sqlite_ledger, node).catch_up()
    assert (balance(sqlite_ledger, alice).posted, balance(sqlite_ledger, alice).locked) == (90, 50)


def test_catch_up__shortfall__credited_back_visibly(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 100))
    node.mine(Log(VAULT, "ShortfallRecorded", {"epoch": 1, "asset": USDC, "account": alice, "amount": 7}))
    make_indexer(sqlite_ledger, node).catch_up()
    assert balance(sqlite_ledger, alice).posted == 107
    assert sqlite_ledger.system_balance("usage", "USDC") == -7
    with sqlite_ledger.engine.connect() as conn:
        kinds = list(conn.execute(select(journal_entries.c.kind).order_by(journal_entries.c.id)).scalars())
    assert kinds == ["deposit", "shortfall"]


def test_catch_up__spend_cap_of_bound_account__mirrored_and_undone_by_reorg(sqlite_ledger, node):
    account = sqlite_ledger.create_account().id
    wallet = bind_new_wallet(sqlite_ledger, account)
    stranger = new_address()
    cap = {"asset": USDC, "per_epoch": 10, "total": 500, "expiry": 2**40, "nonce": 0}
    node.mine(Log(VAULT, "SpendCapRegistered", {"account": wallet, **cap}))
    node.mine(Log(VAULT, "SpendCapRegistered", {"account": stranger, **cap}))  # unbound: waits for a binding
    indexer = make_indexer(sqlite_ledger, node)
    indexer.catch_up()
    assert sqlite_ledger.balance(account, "USDC").cap_remaining == 500
    assert balance(sqlite_ledger, stranger).cap_remaining == 500  # on its unclaimed account, spent by no one

    node.reorg(2)
    node.mine(empty=3)
    indexer.catch_up()
    assert sqlite_ledger.balance(account, "USDC").cap_remaining == 0


def test_catch_up__spend_cap_set_before_the_wallet_is_bound__the_account_spends_under_it(sqlite_ledger, node):
    """Found by the market machine: a wallet that deposits and sets its cap on chain, then
    proves itself to an account, was refused every request (the ledger had dropped the cap
    of an address it could not yet attribute), while the chain would settle its usage."""
    wallet = Account.create()
    node.mine(deposited(wallet.address, 300))
    cap = {"asset": USDC, "per_epoch": 2**256 - 1, "total": 200, "expiry": 2**40, "nonce": 0}
    node.mine(Log(VAULT, "SpendCapRegistered", {"account": wallet.address, **cap}))
    make_indexer(sqlite_ledger, node).catch_up()

    account = sqlite_ledger.create_account().id
    message = sqlite_ledger.issue_binding_challenge(account, wallet.address)
    sqlite_ledger.bind_wallet(message, sign(message, wallet.key))

    assert (balance(sqlite_ledger, wallet.address).posted, balance(sqlite_ledger, wallet.address).cap_remaining) == (
        300,
        200,
    )
    sqlite_ledger.reserve(account, "USDC", 150, "req-after-binding", ttl=60)
    with pytest.raises(SpendCapExceeded):
        sqlite_ledger.reserve(account, "USDC", 51, "req-beyond-the-cap", ttl=60)  # the cap, not the balance, binds
    sqlite_ledger.check()


def test_catch_up__unknown_asset__named_by_its_symbol(sqlite_ledger, node):
    token = new_address()
    node.mine(deposited(new_address(), 5, asset=token))
    node._eth_call = lambda call, block: "0x" + encode(["string"], ["NEW"]).hex()  # type: ignore[attr-defined]
    make_indexer(sqlite_ledger, node).catch_up()
    with sqlite_ledger.engine.connect() as conn:
        assets = list(conn.execute(select(journal_entries.c.ref)).scalars())
    assert len(assets) == 1
    assert sqlite_ledger.system_balance("vault", "NEW") == -5


def test_catch_up__node_down_while_naming_an_asset__waited_out_not_the_end(sqlite_ledger, node):
    """A node outage while reading a token's symbol() (or a vault's epoch clock) was an
    IndexerError, which ends `promptex indexer run`; it is RpcUnavailable, which `run` waits out
    (review s17)."""
    token = new_address()
    node.mine(deposited(new_address(), 5, asset=token))
    answers = iter([httpx.ConnectError("connection refused")])

    def eth_call(_call: object, _block: object) -> str:
        down = next(answers, None)
        if down is not None:
            raise down
        return "0x" + encode(["string"], ["NEW"]).hex()

    node._eth_call = eth_call  # type: ignore[attr-defined]
    indexer = make_indexer(sqlite_ledger, node)
    with pytest.raises(RpcUnavailable):
        indexer.catch_up()
    indexer.catch_up()  # the node back: named and applied once
    assert sqlite_ledger.system_balance("vault", "NEW") == -5


def test_catch_up__other_contracts_events__stored_without_effects(sqlite_ledger, node):
    settled = {"epoch": 1, "asset": USDC, "usage_root": b"\x01" * 32, "total": 5, "entries": 1}
    node.mine(Log(VAULT, "EpochSettled", settled))
    make_indexer(sqlite_ledger, node).catch_up()
    with sqlite_ledger.engine.connect() as conn:
        row = conn.execute(select(chain_events)).one()
    assert (row.name, row.source, row.fact_id) == ("EpochSettled", "CreditsVault", None)
    assert json.loads(row.args)["usage_root"] == "0x" + "01" * 32


def test_catch_up__confirmations__stops_short_of_head(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 1))
    node.mine(deposited(alice, 2), empty=1)
    totals = make_indexer(sqlite_ledger, node, confirmations=2).catch_up()
    assert totals.block == node.head - 2
    assert balance(sqlite_ledger, alice).posted == 1


# ─── Pools ───────────────────────────────────────────────────────────────────


def _pool_created(pool: str) -> Log:
    return Log(FACTORY, "PoolCreated", {"token0": CLD, "token1": USDC, "fee": 30, "pool": pool, "pool_count": 1})


def _swapped(pool: str) -> Log:
    amounts = {"amount0_in": 1, "amount1_in": 0, "amount0_out": 0, "amount1_out": 1}
    return Log(pool, "Swapped", {"sender": pool, "to": pool, **amounts})


def test_catch_up__pool_created__its_events_followed_from_that_block(sqlite_ledger, node):
    pool = new_address()
    node.mine(_swapped(pool))  # before the pool is known: not followed
    node.mine(_pool_created(pool), _swapped(pool))  # same block as its creation
    node.mine(_swapped(pool), empty=1)
    indexer = make_indexer(sqlite_ledger, node)
    indexer.catch_up()
    with sqlite_ledger.engine.connect() as conn:
        names = list(conn.execute(select(chain_events.c.name).order_by(chain_events.c.block_number)).scalars())
    assert names == ["PoolCreated", "Swapped", "Swapped"]
    assert pool in indexer.followed.pools

    node.reorg(3)  # the pool's creation leaves the chain
    node.mine(empty=4)
    indexer.catch_up()
    assert pool not in indexer.followed.pools


# ─── Checkpoints ─────────────────────────────────────────────────────────────


def test_restart__new_indexer__resumes_from_checkpoint(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 100))
    make_indexer(sqlite_ledger, node).catch_up()
    node.mine(deposited(alice, 5))
    node.calls.clear()
    totals = make_indexer(sqlite_ledger, node).catch_up()
    assert totals.events == 1
    assert balance(sqlite_ledger, alice).posted == 105
    assert node.calls.count("eth_getLogs") == 1


def test_reapply__same_blocks_again__nothing_counted_twice(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 100), exit_requested(alice, 10))
    node.mine(deposited(alice, 1))
    make_indexer(sqlite_ledger, node).catch_up()
    with sqlite_ledger.engine.begin() as conn:  # as if the checkpoint had not been moved
        conn.execute(update(indexer_cursor).values(block_number=0, block_hash=node.blocks[0].hash))
    assert make_indexer(sqlite_ledger, node).catch_up().events == 0
    assert (balance(sqlite_ledger, alice).posted, balance(sqlite_ledger, alice).locked) == (101, 10)


def test_reapply__stored_event_with_other_facts__conflict(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 100))
    make_indexer(sqlite_ledger, node).catch_up()
    with sqlite_ledger.engine.begin() as conn:
        conn.execute(update(chain_events).values(args='{"amount": 1}'))
        conn.execute(update(indexer_cursor).values(block_number=0, block_hash=node.blocks[0].hash))
    with pytest.raises(ChainEventConflict):
        make_indexer(sqlite_ledger, node).catch_up()
    assert cursor_row(sqlite_ledger).block_number == 0  # nothing committed


def test_catch_up__other_chain__refused(sqlite_ledger, node):
    node.mine(deposited(new_address(), 1))
    make_indexer(sqlite_ledger, node).catch_up()
    with pytest.raises(IndexerError, match="chain 31337"):
        make_indexer(sqlite_ledger, FakeNode(chain_id=1)).step()


# ─── Reorgs ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("depth", [1, 3, 10])
def test_reorg__other_branch__ledger_follows_new_branch(ledger, node, depth):
    alice, bob = new_address(), new_address()
    node.mine(deposited(alice, 1_000))
    for i in range(depth):
        node.mine(deposited(alice, 10 + i), exit_requested(bob, 1) if i == 0 else deposited(bob, 1))
    indexer = make_indexer(ledger, node)
    indexer.catch_up()

    node.reorg(depth)
    node.mine(exit_requested(alice, 400), deposited(bob, 7))
    node.mine(empty=depth)
    totals = indexer.catch_up()

    assert totals.rewinds == 1
    assert (balance(ledger, alice).posted, balance(ledger, alice).locked) == (1_000, 400)
    assert (balance(ledger, bob).posted, balance(ledger, bob).locked) == (7, 0)
    assert cursor_row(ledger).rewinds == 1
    ledger.check()


def test_reorg__transaction_reincluded_in_other_block__applied_again(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 1))
    node.mine(deposited(alice, 100, tx="0x" + "77" * 32))
    indexer = make_indexer(sqlite_ledger, node)
    indexer.catch_up()
    node.reorg(1)
    node.mine(empty=1)
    node.mine(deposited(alice, 100, tx="0x" + "77" * 32))  # same tx hash, same log index, later block
    indexer.catch_up()
    assert balance(sqlite_ledger, alice).posted == 101
    assert fact_ids(sqlite_ledger)[-1] == "0x" + "77" * 32 + ":0#1"


def test_reorg__tip_gone_while_idle__rewound(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 1))
    node.mine(deposited(alice, 2))
    indexer = make_indexer(sqlite_ledger, node)
    indexer.catch_up()
    node.reorg(1)  # the chain is now shorter than the indexed tip
    step = indexer.step()
    assert (step.rewound, step.block, step.undone) == (True, 1, 1)
    assert balance(sqlite_ledger, alice).posted == 1


def test_reorg__deeper_than_kept_hashes__stops(sqlite_ledger, node):
    node.mine(deposited(new_address(), 1), empty=6)
    indexer = make_indexer(sqlite_ledger, node, keep_blocks=3)
    indexer.catch_up()
    node.reorg(5)
    node.mine(empty=6)
    with pytest.raises(ReorgTooDeep):
        indexer.catch_up()


def test_reorg__below_start__everything_rewound(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 1))
    indexer = make_indexer(sqlite_ledger, node)
    indexer.catch_up()
    node.reorg(node.head)  # back to genesis: every indexed block left the chain
    node.mine(deposited(alice, 9))
    indexer.catch_up()
    assert balance(sqlite_ledger, alice).posted == 9


# ─── Failures ────────────────────────────────────────────────────────────────


def test_range__node_refuses_large_answers__shrinks_and_completes(sqlite_ledger, node):
    alice = new_address()
    for _ in range(20):
        node.mine(deposited(alice, 1), deposited(alice, 1))
    node.max_logs = 5
    indexer = make_indexer(sqlite_ledger, node, max_block_range=64)
    assert indexer.catch_up().events == 40
    assert indexer.range.size <= 4  # halved from 64 on each refusal, regrown by at most 2x
    assert balance(sqlite_ledger, alice).posted == 40


def test_rpc__other_error__raised_nothing_committed(sqlite_ledger, node):
    node.mine(deposited(new_address(), 1))
    node.fail = lambda method, params: {"code": -32603, "message": "internal"} if method == "eth_getLogs" else None
    with pytest.raises(RpcError, match="internal"):
        make_indexer(sqlite_ledger, node).catch_up()
    assert cursor_row(sqlite_ledger).block_number == 0


def test_malformed_log__raised_nothing_committed(sqlite_ledger, node):
    node.mine(deposited(new_address(), 1))
    node.blocks[-1].logs[0]["data"] = "0x1234"
    with pytest.raises(LogDecodeError):
        make_indexer(sqlite_ledger, node).catch_up()
    assert cursor_row(sqlite_ledger).block_number == 0


def test_log_from_other_branch__read_again(sqlite_ledger, node):
    alice = new_address()
    node.mine(deposited(alice, 1))
    node.blocks[-1].logs[0]["blockHash"] = "0x" + "99" * 32  # logs and headers disagree
    with pytest.raises(ChainMoved):
        make_indexer(sqlite_ledger, node).step()
    assert cursor_row(sqlite_ledger).block_number == 0


# ─── Service and CLI ─────────────────────────────────────────────────────────


def test_serve__sigterm__stops_cleanly(sqlite_ledger, node):
    node.mine(deposited(new_address(), 1))
    polls = []

    def fail(method: str, _params: object) -> None:
        if method == "eth_blockNumber":
            polls.append(1)
            if len(polls) == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    node.fail = fail
    previous = signal.getsignal(signal.SIGTERM)
    totals = serve(make_indexer(sqlite_ledger, node), once=False, poll_seconds=0.01)
    assert totals.block == node.head
    assert signal.getsignal(signal.SIGTERM) == previous


@pytest.fixture
def deployment_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: FakeNode) -> Iterator[Path]:
    root = tmp_path / "deployments"
    (root / "abi").mkdir(parents=True)
    contracts = {}
    for name, address in (("CreditsVault", VAULT), ("Factory", FACTORY), ("USDC", USDC), ("token:CLD", CLD)):
        abi_path = root / "abi" / f"{name.replace(':', '_')}.json"
        abi_path.write_text(json.dumps(ABIS.get(name, [])))
        contracts[name] = {"address": address, "abi": str(abi_path)}
    record = {"network": "local", "chain_id": 31337, "block_number": 1, "deployer": VAULT, "contracts": contracts}
    (root / "local.json").write_text(json.dumps(record))
    monkeypatch.setenv("PROMPTEX_DEPLOYMENTS_DIR", str(root))
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", f"sqlite:///{tmp_path}/ledger.sqlite3")
    monkeypatch.setenv("PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS", "NORMAL")
    monkeypatch.setenv("PROMPTEX_RPC_URL", "http://fake-node.invalid")  # the fake node answers instead
    monkeypatch.setattr("promptex.cli.indexer.RpcClient", lambda url, timeout: node.client())
    settings.cache_clear()
    yield tmp_path
    settings.cache_clear()


def test_cli__once__catches_up_and_reports(deployment_env, node):
    alice = new_address()
    node.mine(deposited(alice, 42), empty=3)
    result = CliRunner().invoke(indexer_command, ["--once", "--from-block", "1"])
    assert result.exit_code == 0, result.output
    assert f"indexed to block {node.head}" in result.output
    assert "1 events" in result.output
    with Ledger.open(f"sqlite:///{deployment_env}/ledger.sqlite3") as ledger:
        assert balance(ledger, alice).posted == 42


def test_cli__other_start_block_on_indexed_ledger__refused(deployment_env, node):
    node.mine(deposited(new_address(), 1))
    assert CliRunner().invoke(indexer_command, ["--once", "--from-block", "1"]).exit_code == 0
    result = CliRunner().invoke(indexer_command, ["--once", "--from-block", "2"])
    assert result.exit_code == 1
    assert "indexed from block 1" in result.output


def test_cli__no_deployment__clear_error(deployment_env):
    result = CliRunner().invoke(indexer_command, ["--once", "--network", "nowhere"])
    assert result.exit_code == 1
    assert "no deployment for network 'nowhere'" in result.output
