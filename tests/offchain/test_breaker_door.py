"""Breaker attack on the coordinator's door (issues 20 and 21): a reorg orphans a settle the
coordinator has confirmed, and the buyer asks the door for an instant exit before the
coordinator's next pass has seen the reorg. The chain shows the balance back (the debit
is gone) while the store still counts the batch as settled: the door must still release
no more than what is free of that usage."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
from coordinator_fakes import FakeChain
from test_coordinator_door import USDC, World

from promptex.ledger import Ledger
from promptex.protocol.escrow import KIND_LISTED


@pytest.fixture
def world(tmp_path: Path, clock) -> Iterator[World]:  # noqa: ANN001
    book = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", clock=clock, sqlite_synchronous="NORMAL")
    yield World(book, FakeChain())
    book.close()


def test_breaker__settle_orphaned_then_exit_before_the_next_pass__the_usage_never_leaves(world: World) -> None:
    account, wallet = world.buyer(20 * USDC, unsettled=5 * USDC)
    world.chain.open_lot(2, KIND_LISTED, "USDC")
    world.chain.next_window()
    chain = world.chain
    fork = (copy.deepcopy(chain.s), dict(chain.receipts), chain.block)
    assert world.coordinator.run_once().confirmed == [("USDC", 1)]
    assert chain.balance_of(wallet.address, "USDC") == 15 * USDC
    assert world.coordinator.store.unsettled(account, "USDC") == 0  # settled, as the store sees it

    chain.s, chain.receipts, chain.block = fork  # the reorg: the settle is gone, the 5 USDC back on chain
    assert chain.balance_of(wallet.address, "USDC") == 20 * USDC
    got, answer = world.post(world.request(wallet, 20 * USDC))  # before any pass has seen the reorg
    assert got == 409, answer
    assert world.book.balance(account, "USDC").locked == 0
    got, answer = world.post(world.request(wallet, 15 * USDC, nonce=1))
    assert got == 200 and answer["release"]["amount"] == str(15 * USDC)

    world.coordinator.run_once()  # the orphaned settle is re-sent: the 5 USDC are debited after all
    assert [b.epoch for b in world.coordinator.store.batches("USDC", "confirmed")] == [1]
    assert chain.balance_of(wallet.address, "USDC") == 15 * USDC >= int(answer["release"]["amount"])
