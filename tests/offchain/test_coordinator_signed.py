"""The coordinator's part of signed mode (issue 23), against the in-memory vault: it relays
wallet-signed SessionKeys as it relays spend caps, each signed transaction stored first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coordinator_fakes import FakeChain
from eth_account import Account

from promptex.coordinator.service import Coordinator
from promptex.ledger import Ledger


@pytest.fixture
def book(tmp_path: Path, clock) -> Iterator[Ledger]:  # noqa: ANN001
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", clock=clock, sqlite_synchronous="NORMAL")
    yield ledger
    ledger.close()


def test_session_keys__relayed_once__refused_one_rejected__sent_again_after_a_lost_broadcast(book: Ledger) -> None:
    chain = FakeChain()
    coord = Coordinator(book.engine, chain, holder="test", clock=book.clock, tx_timeout=0)
    wallet, key = Account.create().address, Account.create().address
    args = ("USDC", key, 4, 5_000_000, chain.now() + 86_400)
    good = coord.submit_session_key(wallet, *args, 0, b"sig")
    assert coord.submit_session_key(wallet, *args, 0, b"sig") == good  # idempotent per (wallet, asset, nonce)
    bad = coord.submit_session_key(Account.create().address, *args, 0, b"bad")
    chain.lose = True  # the first broadcast vanishes: the same signed bytes go again
    assert coord.run_once().session_keys == 0
    chain.lose = False
    assert coord.run_once().session_keys == 1
    assert chain.s.session_keys == {(wallet, "USDC"): (key, 4, 5_000_000, chain.now() + 86_400, 0)}
    statuses = {k.id: k.status for k in coord.store.session_keys(("registered", "rejected"))}
    assert statuses == {good: "registered", bad: "rejected"}
    assert coord.run_once().session_keys == 0  # nothing sent twice
