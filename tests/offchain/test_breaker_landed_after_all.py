"""reattach (session 11): one check for "a failed batch's settle landed after all"
(`Coordinator._landed_after_all`), in place of three entry points (`_let_go_landed` for an
open settle, `_check_replaced` for a no-op found dropped, `_dropped_landed` for a settle
closed dropped). Each read the settle in one status only, so a settle whose status moved
between two reads of one pass was never read again: here D (a let-go batch's settle, see
test_breaker_rotation's `_let_go_settle_mined_anyway`) is mined right after the pass's
first read of its receipt found none; the pass then closed it succeeded by that receipt
(`txlog.wait_for_other_keys` for the new key, `_resolve_tx` for its own key), its batch
left failed, and no later pass read it: X debited twice on chain, silently. Now every
failed batch's settle, whatever its status, is read while its nonce is not final."""

from __future__ import annotations

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from test_breaker_failure_final import _debited
from test_breaker_letgo_orphaned import _forks
from test_breaker_recheck import _books_equal_chain
from test_breaker_rotation import NEW_KEY, _let_go_settle_mined_anyway, _said_reconcile
from test_coordinator_failure_final import _mine_to

from promptex.chain.sender import Receipt
from promptex.chain.txlog import DROPPED, NOOP, SENT, SUCCEEDED
from promptex.coordinator.service import REORG_WINDOW
from promptex.ledger import Ledger


@pytest.mark.parametrize("whose", ["new key", "its own key"])
def test_let_go_settle_mined_right_after_the_pass_read_no_receipt__closed_succeeded__reattached_next_pass(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, whose: str
) -> None:
    old, new, keys, _, later = _let_go_settle_mined_anyway(book, chain, caplog, mined=False)
    d = old.store.tx(later.tx_id or 0)
    real = chain.receipt

    def receipt(tx_hash: str) -> Receipt | None:
        found = real(tx_hash)
        if tx_hash == d.tx_hash and found is None:
            chain.broadcast(d.raw)  # a pool's copy, mined right after this read
        return found

    monkeypatch.setattr(chain, "receipt", receipt)
    coordinator = new
    if whose == "its own key":
        keys.use(COORDINATOR)
        coordinator = old
    coordinator.run_once()
    assert old.store.tx(d.id).status == SUCCEEDED  # closed by its receipt, its batch still failed
    assert old.store.batch(later.id).status == "failed" and _said_reconcile(caplog, later.epoch) == []

    coordinator.run_once()
    assert len(_said_reconcile(caplog, later.epoch)) == 1  # X held by A too: the double debit said
    assert old.store.batch(later.id).status == "confirmed"  # the chain holds D at its epoch


def test_let_go_settle_of_another_key_landed_anyway__orphaned_past_the_recheck_window__never_sent_again(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """coord.md's "Not done" 2 (letgo item 2 found only by `_recheck_confirmed`): D, the old
    key's let-go settle that landed anyway, is confirmed by the new key's reattach with X
    left in A. The new key then runs on a window past D, so the old key's rows are no longer
    re-checked by receipt; a reorg deeper than that orphans D's block (X's second debit
    undone). `_recheck_confirmed` finds D's root gone: before, it reopened D and the pass
    sent its bytes again (anyone may), X debited twice once more. Now D is let go again
    and its bytes are not sent: every pass waits for the old key's coordinator (its nonce),
    whose --once fills D's nonce with a no-op; then the new key goes on."""
    forks = _forks(chain, monkeypatch)
    old, new, keys, s, later = _let_go_settle_mined_anyway(book, chain, caplog)
    new.run_once()  # D found landed: reattached, X left in A
    d = old.store.tx(later.tx_id or 0)
    assert old.store.batch(later.id).status == "confirmed" and old.store.batch_records(later.id) == []
    _mine_to(chain, (d.block or 0) + REORG_WINDOW + 1)
    new.run_once()  # the old key's rows final: not re-checked by receipt from here on

    forks[d.raw].reorg_to(chain)  # deeper than the new key's re-check reaches back
    assert _debited(chain, s.x_address) == 1_002
    sent = len(chain.sent)
    reports = []
    for _ in range(3):
        chain.next_window()
        reports.append(new.run_once())

    assert d.tx_hash not in chain.sent[sent:]
    assert old.store.batch(later.id).status == "failed" and old.store.tx(d.id).status == SENT
    assert "coordinator --once" in (reports[0].waiting or "")
    assert all(r.waiting and "not yet mined" in r.waiting for r in reports[1:])  # for that key, every pass
    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)

    keys.use(COORDINATOR)  # the way out: the old key's coordinator, once
    old.run_once()
    (noop,) = [tx for tx in old.store.landed_txs(0, 0) if tx.purpose == NOOP and tx.nonce == d.nonce]
    assert noop.status == SUCCEEDED and old.store.tx(d.id).status == DROPPED
    old.store.release_lease("old")
    keys.use(NEW_KEY)
    _mine_to(chain, chain.head() + REORG_WINDOW + 1)
    chain.next_window()
    assert new.run_once().waiting is None
    assert d.tx_hash not in chain.sent[sent:]
    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)
    _books_equal_chain(book, chain)
