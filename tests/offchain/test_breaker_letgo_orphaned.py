"""letgo's items 2 and 3 (session 9): a let-go batch D whose settle was mined anyway
(test_breaker_rotation's `_let_go_settle_mined_anyway`: X debited by A at epoch 1 and by D
at epoch 2) is confirmed by `_reattach` with X left in A, where the books hold it. A later
reorg within the window that orphans D's block took D's second debit of X back; before,
`_orphaned` reopened D as any confirmed batch and its key's pass sent D's bytes again (X
debited twice once more). D holds none of its records in the books: its nonce now goes to
a no-op. And `_reattach`'s "its N records are back in it" was logged with none back."""

from __future__ import annotations

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from eth_utils.crypto import keccak
from test_breaker_failure_final import _debited
from test_breaker_recheck import _books_equal_chain
from test_breaker_rotation import _let_go_settle_mined_anyway
from test_coordinator_refund_taken_back import Branch

from promptex.chain.txlog import DROPPED, NOOP, SUCCEEDED
from promptex.ledger import Ledger


def _forks(chain: FakeChain, monkeypatch: pytest.MonkeyPatch) -> dict[str, Branch]:
    """The chain as it stood before the broadcast that last mined the bytes, by those bytes."""
    forks: dict[str, Branch] = {}
    real = chain.broadcast

    def broadcast(raw: str) -> None:
        before = Branch.of(chain)
        real(raw)
        if "0x" + keccak(text=raw).hex() in chain.receipts.keys() - before.receipts.keys():
            forks[raw] = before

    monkeypatch.setattr(chain, "broadcast", broadcast)
    return forks


def test_let_go_settle_landed_anyway_then_orphaned__its_key_fills_its_nonce_with_a_no_op__never_resends_it(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks = _forks(chain, monkeypatch)
    old, _, keys, s, later = _let_go_settle_mined_anyway(book, chain, caplog)
    keys.use(COORDINATOR)
    old.run_once()  # D found landed: reattached, X left in A (an error naming reconcile)
    d = old.store.tx(later.tx_id or 0)
    assert old.store.batch(later.id).status == "confirmed" and d.status == SUCCEEDED
    assert old.store.batch_records(later.id) == []  # X, its one record, is A's in the books
    said = [r.getMessage() for r in caplog.records if "are back in it" in r.getMessage()]
    assert said == []  # letgo item 3: none went back

    forks[d.raw].reorg_to(chain)  # D's block orphaned, within the window: X's second debit undone
    assert _debited(chain, s.x_address) == 1_002
    sent = len(chain.sent)
    for _ in range(3):
        chain.next_window()
        old.run_once()

    assert d.tx_hash not in chain.sent[sent:]
    (noop,) = [tx for tx in old.store.landed_txs(0, 0) if tx.purpose == NOOP and tx.nonce == d.nonce]
    assert noop.status == SUCCEEDED and old.store.tx(d.id).status == DROPPED
    assert old.store.batch(later.id).status == "failed"
    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)
    _books_equal_chain(book, chain)


def test_let_go_settle_of_another_key_landed_anyway_then_orphaned__never_sent_again__its_key_is_waited_for(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same found by the new key (D the old key's): before, its `_orphaned` reopened D
    and sent D's bytes again at once (anyone may). Now D is let go again and, its records
    held elsewhere, its bytes are not sent: the new key waits for the old key's no-op."""
    forks = _forks(chain, monkeypatch)
    old, new, _, _, later = _let_go_settle_mined_anyway(book, chain, caplog)
    new.run_once()  # D found landed: reattached, X left in A
    d = old.store.tx(later.tx_id or 0)
    assert old.store.batch(later.id).status == "confirmed" and old.store.batch_records(later.id) == []

    forks[d.raw].reorg_to(chain)
    sent = len(chain.sent)
    report = new.run_once()

    assert d.tx_hash not in chain.sent[sent:]
    assert old.store.batch(later.id).status == "failed" and "coordinator --once" in (report.waiting or "")
