"""A rotated coordinator key (or a standby with another key) on the same database:
cbreak2's finding (session 8). The log's nonce reads (`final_nonce`, `landed_txs`,
`newest_block`, the failure-finality query) are the key in use's only: two accounts' nonces
are never compared. And a key does not run a pass while the log holds another key's
transactions not yet `reorg_window` deep (`txlog.wait_for_other_keys`)."""

from __future__ import annotations

import logging

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from test_breaker_failure_final import _debited
from test_breaker_refund_taken_back import _payer, x_fails_y_retried
from test_coordinator_failure_final import _coordinator, _mine_to
from test_coordinator_refund_taken_back import USDC, Branch, spend

from promptex.coordinator.service import REORG_WINDOW
from promptex.ledger import Ledger

NEW_KEY = "0x000000000000000000000000000000000000bEEF"


def _rotate(chain: FakeChain) -> None:
    """The coordinator restarts with a new key: its own account, its own nonces from 0 (the
    old key's transactions stay mined, with their receipts)."""
    chain.sender = NEW_KEY
    chain.s.nonce = 0


def test_rotated__old_keys_deep_nonces__a_new_keys_failure_waits_for_its_own_window(
    book: Ledger, chain: FakeChain
) -> None:
    """The old key settled a few times (its nonces 0..3, long deep). The new key's first
    settle A (X, Y) reverts at ITS nonce 0, C retries Y at epoch 3. In the next window X
    waits for A's revert to be `reorg_window` deep. Read with the old key's nonces (its 3,
    mined deep) nonce 0 was final: X was planned under epoch 4 at once (D), and a reorg two
    blocks deep re-including A (landing: X, Y), C (reverting) and D debited X twice."""
    coord = _coordinator(book, chain)
    for _ in range(2):  # the old key's history: two settlements
        z, _ = _payer(book, chain)
        spend(book, z, 3_012)
        chain.next_window()
        assert coord.run_once().confirmed
    chain.burn_nonce(), chain.burn_nonce()
    chain.mine_blocks(2 * REORG_WINDOW)
    _rotate(chain)
    coord = _coordinator(book, chain)  # restarted with the new key
    chain.next_window()
    (x, x_address), (y, _) = _payer(book, chain), _payer(book, chain)
    x_request, _ = spend(book, x, 1_002), spend(book, y, 2_007)
    chain.hold = True
    assert coord.run_once().waiting is not None  # A sent at the new key's nonce 0
    fork = Branch.of(chain)
    chain.s.balances[(x_address, USDC)] = 0  # X's exit, mined first: A reverts
    chain.hold = False
    chain.mine()
    report = coord.run_once()
    # C retries Y at epoch 3; the old key's settle at nonce 1 (at or past the new key's
    # nonce) is not read as orphaned: no churn of (USDC, 2)
    assert report.failed == [(USDC, 3)] and report.confirmed == [(USDC, 3)]
    assert coord.store.tx(coord.store.batches(USDC, "failed")[0].tx_id).nonce == 0
    chain.s.balances[(x_address, USDC)] = 10_000
    chain.next_window()
    report = coord.run_once()
    assert x_request in report.held, "X waits for A's failure to be final"

    failed = coord.store.batches(USDC, "failed")[0]
    (retry,) = (b for b in coord.store.batches(USDC, "confirmed") if b.epoch >= 3)
    raws = [coord.store.tx(b.tx_id).raw for b in (failed, retry)]
    fork.reorg_to(chain)  # back to before A mined: a few blocks, well within the window
    for raw in raws:
        chain.broadcast(raw)  # A lands (no exit before it), C reverts
    chain.next_window()
    for _ in range(3):
        coord.run_once()
    assert _debited(chain, x_address) == 1_002


def test_rotated__old_keys_failed_settle_past_the_new_nonce__never_filled_settlement_goes_on(
    book: Ledger, chain: FakeChain
) -> None:
    """The old key's settle A failed at its nonce 5 (long deep, its record since settled).
    With the new key at nonce 0, A was read as orphaned each pass (nonce >= the chain's) and
    nonce 5 filled with a new-key no-op never mined before 0..4: settlement stopped."""
    coord = _coordinator(book, chain)
    for _ in range(5):
        chain.burn_nonce()
    x_fails_y_retried(book, chain, coord, 1_002, 2_007)
    chain.next_window()
    chain.mine_blocks(2 * REORG_WINDOW)
    coord.run_once()  # X settled under epoch 2, A's failure long final
    chain.mine_blocks(REORG_WINDOW)  # that settle a window deep: the old key's log is history
    _rotate(chain)
    coord = _coordinator(book, chain)  # restarted with the new key
    z, z_address = _payer(book, chain)
    spend(book, z, 3_012)
    chain.next_window()

    reports = [coord.run_once() for _ in range(3)]

    assert [r.waiting for r in reports] == [None, None, None]
    assert not [tx for tx in coord.store.landed_txs(0, 0) if tx.purpose == "noop"]
    assert _debited(chain, z_address) == 3_012


def test_rotated__old_keys_fresh_settle__the_new_key_waits_until_it_is_a_window_deep(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture
) -> None:
    """The old key's settle was mined in block B when the new key starts: until B +
    reorg_window the new key plans, sends and re-checks nothing and lets the lease go (the
    old key's coordinator may take it and finish), saying why once per pass; then it settles."""
    coord = _coordinator(book, chain)
    z, _ = _payer(book, chain)
    spend(book, z, 3_012)
    chain.next_window()
    assert coord.run_once().confirmed
    block = coord.store.newest_block()
    assert block is not None
    _rotate(chain)
    coord = _coordinator(book, chain)  # restarted with the new key
    y, y_address = _payer(book, chain)
    spend(book, y, 2_007)
    chain.next_window()
    _mine_to(chain, block + REORG_WINDOW - 1)
    caplog.clear()

    report = coord.run_once()

    said = (
        f"the log holds 1 transactions of key {COORDINATOR} not yet final (newest at block {block}, "
        f"final at {block + REORG_WINDOW}): waiting; let that key's coordinator finish them"
    )
    assert (report.leader, report.waiting, report.confirmed) == (False, said, [])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [said]
    assert chain.s.nonce == 0 and coord.store.open_txs() == [] and _debited(chain, y_address) == 0
    assert coord.store.acquire_lease("old-key", 30)  # free for the old key's coordinator
    coord.store.release_lease("old-key")
    chain.mine_blocks(1)  # the old settle is a window deep: history
    report = coord.run_once()
    assert report.leader and report.waiting is None and report.confirmed
    assert _debited(chain, y_address) == 2_007
