"""Breaking the key-rotation rule (82be085, ab389a6) and the receipts' block-hash check
(db96d93, cf135e9) on the fake chains (xbreak, session 8). The promises checked: no record
is debited twice, the books equal the chain, settlement never stops for good.

Attacked: the sender stored and compared in different case; a row without a sender; a
leader and a standby of different keys taking turns at every pass; rows closed before the
log kept block hashes next to rows after it; a receipt first served from a block that was
not yet canonical (same height and outcome, another hash); the agent's `redeem` while the
rule makes it wait: all held. Two succeeded, fixed: the old key's coordinator died with an
open settle the chain then mined; the row stayed open, so the new key waited for good (now
any key closes another key's open transaction with its canonical receipt; one never mined
still waits for its own key: the operator's way out, tested). And an old key's settle a
reorg orphaned during the wait, reopened, was closed dropped by the NEW key's nonce (now
re-sent and kept open until its receipt). And, third: nobody re-checked the old key's
receipts during the wait, so a reorg then that re-included its failed settle, now landing,
went unseen and its records were settled again (now the new key re-checks the old key's
mined rows every pass, the coordinator's and the agent's). And a fourth, found by reattach
(a7e5e1b's open note): the new key reattached a failed batch's records and let go the old
key's later batch holding them, whose settle was open; the old key's coordinator, run once
as the README says, re-sent those bytes (X debited twice). Now a let-go batch's open
settle is never re-sent by its key: its nonce goes to a no-op."""

from __future__ import annotations

from typing import Any

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from test_breaker_failure_final import _debited
from test_breaker_recheck import _books_equal_chain
from test_breaker_refund_taken_back import _payer, failed_and_retry, x_fails_y_retried
from test_coordinator_failure_final import _mine_to
from test_coordinator_refund_taken_back import USDC, Branch, beyond_the_window, spend

from promptex.chain import txlog
from promptex.chain.deployments import Deployment
from promptex.chain.sender import Receipt, Web3Sender
from promptex.chain.txlog import REVERTED, SENT, SUCCEEDED, OtherKeyPending, StoredTx, still_ours
from promptex.coordinator.schema import coordinator_txs
from promptex.coordinator.service import REORG_WINDOW, Coordinator
from promptex.ledger import Ledger

NEW_KEY = "0x000000000000000000000000000000000000bEEF"


def _coordinator(book: Ledger, chain: FakeChain, holder: str) -> Coordinator:
    return Coordinator(book.engine, chain, holder=holder, clock=book.clock, tx_timeout=0, quarantine_retry=0)


class _Keys:
    """Two keys on the fake chain, each its own account nonce (`FakeChain` keeps them, and
    a reorg takes each back to the fork): the sender swapped in before each of its passes."""

    def __init__(self, chain: FakeChain) -> None:
        self.chain = chain
        chain.s.nonces.setdefault(COORDINATOR, chain.s.nonce)
        chain.s.nonces.setdefault(NEW_KEY, 0)
        self.current = COORDINATOR

    @property
    def nonces(self) -> dict[str, int]:
        """Each key's account nonce on the chain as it is now."""
        return self.chain.s.nonces

    def use(self, key: str) -> None:
        self.chain.sender, self.current = key, key


def test_sender_in_another_case__never_stored__every_sender_is_the_keys_checksum_address() -> None:
    """The rule compares senders byte for byte (`sender != chain.sender`, and the index
    on it): a key whose address was stored in one case and compared in another would wait
    for its own transactions for good. It cannot happen: the one sender every service
    stores and compares is `Web3Sender.sender`, the key's checksum address, whatever the
    case of the key given. (Shown: the same rows, compared in lower case, do wait.)"""
    deployment = Deployment(network="t", chain_id=1, block_number=0, deployer=COORDINATOR, contracts={})
    key = "0x" + "ab" * 32
    senders = {Web3Sender("http://127.0.0.1:9", deployment, k).sender for k in (key, key.upper().replace("0X", "0x"))}
    (sender,) = senders
    assert sender == Web3Sender("http://127.0.0.1:9", deployment, key[2:]).sender  # without 0x too
    assert sender != sender.lower() and sender[2:] != sender[2:].upper()  # checksummed (mixed case)


def test_sender_in_another_case__the_rule_waits_rather_than_proceeds(book: Ledger, chain: FakeChain) -> None:
    """Were it ever compared in another case, the rule errs on the safe side: the key's
    own open transaction reads as another key's, and nothing is planned or sent (no
    record settled twice); it does not read another key's rows as its own."""
    coord = _coordinator(book, chain, "a")
    z, _ = _payer(book, chain)
    spend(book, z, 3_012)
    chain.next_window()
    chain.hold = True
    assert coord.run_once().waiting is not None  # its settle open
    chain.sender = COORDINATOR.lower()
    with pytest.raises(OtherKeyPending, match="some not yet mined"):
        txlog.wait_for_other_keys(coord.store, chain, REORG_WINDOW, "coordinator", book.clock)


def test_row_without_a_sender__refused_by_the_schema(book: Ledger, chain: FakeChain) -> None:
    """Every log has had `sender` NOT NULL since it was created (0003, 0004, 0012): no
    migrated row lacks one, so none escapes the rule (NULL != key is NULL in SQL: such a
    row would be neither this key's nor another's)."""
    coord = _coordinator(book, chain, "a")
    row = {"purpose": "settle", "sender": None, "nonce": 0, "tx_hash": "0x" + "1" * 64, "raw_tx": "{}"}
    with pytest.raises(IntegrityError), coord.store._tx() as conn:
        conn.execute(insert(coordinator_txs).values(**row, status=SENT, created_at=0))


def test_leader_and_standby_of_two_keys_taking_turns_every_pass__settlement_goes_on_each_debited_once(
    book: Ledger, chain: FakeChain
) -> None:
    """A (old key) and B (new key) on one database; the lease lapses after every pass and
    the other takes it. B waits while A's settles are fresh (and gives the lease back), A
    settles meanwhile: no livelock. Then A stops: B waits out A's last settle's window and
    settles. Every spend debited once; the books equal the chain."""
    keys = _Keys(chain)
    a, b = _coordinator(book, chain, "a"), _coordinator(book, chain, "b")
    payers = []
    for _ in range(3):
        z, z_address = _payer(book, chain)
        spend(book, z, 1_001)
        payers.append(z_address)
        chain.next_window()
        keys.use(COORDINATOR)
        assert a.run_once().confirmed
        a.store.release_lease("a")  # its lease lapses
        chain.mine_blocks(3)
        keys.use(NEW_KEY)
        report = b.run_once()
        assert (report.leader, report.confirmed) == (False, []) and report.waiting is not None
    y, y_address = _payer(book, chain)
    spend(book, y, 2_007)
    chain.next_window()
    waited = 0
    while (report := b.run_once()).waiting is not None:  # A is gone: B alone, block by block
        assert not report.confirmed
        chain.mine_blocks(8)
        waited += 1
    assert report.confirmed and 0 < waited <= REORG_WINDOW // 8 + 1
    assert [_debited(chain, p) for p in payers] == [1_001] * 3 and _debited(chain, y_address) == 2_007
    _books_equal_chain(book, chain)


def _old_key_dies_with_its_settle_open(
    book: Ledger, chain: FakeChain, *, mined: bool
) -> tuple[str, str, Coordinator, _Keys]:
    """The old key's coordinator sends its settle of Z and dies before resolving it (the
    network mines it, or loses it); the new key's coordinator starts with Y's spend
    pending. Returns Z's and Y's addresses, the old key's coordinator and the keys."""
    keys = _Keys(chain)
    old = _coordinator(book, chain, "old")
    z, z_address = _payer(book, chain)
    spend(book, z, 3_012)
    chain.next_window()
    chain.hold, chain.lose = True, not mined
    assert old.run_once().waiting is not None  # sent; then the process dies
    old.store.release_lease("old")
    chain.hold = chain.lose = False
    chain.mine()
    keys.use(NEW_KEY)
    y, y_address = _payer(book, chain)
    spend(book, y, 2_007)
    chain.next_window()
    return z_address, y_address, old, keys


def test_old_keys_coordinator_died_with_an_open_settle_the_chain_mined__closed_by_its_receipt_settled_a_window_later(
    book: Ledger, chain: FakeChain
) -> None:
    """xbreak's finding (fixed): the row stayed open for good, so the new key waited for
    good, though anyone can read that receipt. Now the new key closes it with its receipt
    (`txlog.wait_for_other_keys`), waits until it is a window deep, then confirms the old
    key's batch and settles its own: each debited once."""
    z_address, y_address, _, _ = _old_key_dies_with_its_settle_open(book, chain, mined=True)
    new = _coordinator(book, chain, "new")
    report = new.run_once()
    (tx,) = new.store.landed_txs(0, 0)
    assert tx.status == SUCCEEDED and tx.block is not None
    assert report.waiting is not None and f"newest at block {tx.block}," in report.waiting
    chain.mine_blocks(tx.block + REORG_WINDOW - chain.head())
    report = new.run_once()
    assert report.waiting is None and len(report.confirmed) == 2
    assert _debited(chain, z_address) == 3_012 and _debited(chain, y_address) == 2_007
    _books_equal_chain(book, chain)


def test_old_keys_open_settle_never_mined_its_nonce_taken__the_new_key_calls_it_dropped__no_once_needed(
    book: Ledger, chain: FakeChain
) -> None:
    """The old key's settle was lost (never mined) and its nonce then taken by a
    transaction outside the log (a wallet's cancel). Before (xbreak), only that key could
    prove it dropped, so the new key waited ("some not yet mined") until the old key's
    coordinator was run once: with that key lost, for good (cbreak2). Any key can read
    another account's nonce: the new key calls it dropped as its own coordinator would, its
    batch fails, and Z and Y are settled at Z's epoch at once (of Z's settle and that batch
    at most one lands); the old key's coordinator, run once after all, finds nothing to do."""
    z_address, y_address, old, keys = _old_key_dies_with_its_settle_open(book, chain, mined=False)
    (z_tx,) = old.store.open_txs()
    keys.nonces[COORDINATOR] += 1  # the cancel, mined at the old account's nonce
    new = _coordinator(book, chain, "new")
    chain.mine_blocks(2 * REORG_WINDOW)
    report = new.run_once()
    assert report.waiting is None and report.failed == [(USDC, 1)] and report.confirmed == [(USDC, 1)]
    assert new.store.tx(z_tx.id).status == "dropped"
    assert _debited(chain, z_address) == 3_012 and _debited(chain, y_address) == 2_007
    new.store.release_lease("new")
    keys.use(COORDINATOR)
    assert "newest at block" in (old.run_once().waiting or "")  # the old key waits for the new key's settle
    _books_equal_chain(book, chain)


def _old_keys_settle_orphaned(book: Ledger, chain: FakeChain) -> tuple[StoredTx, Coordinator, str, _Keys]:
    """The old key's last settle (its nonce 0; the new key at nonce 3, a standby that led
    once, say) mined, then orphaned by a reorg and not re-included, the new key in use a
    window later; returns that settle, the new key's coordinator, the payer's address, the keys."""
    keys = _Keys(chain)
    keys.nonces[NEW_KEY] = 3
    old = _coordinator(book, chain, "old")
    z, z_address = _payer(book, chain)
    spend(book, z, 3_012)
    chain.next_window()
    chain.hold = True
    assert old.run_once().waiting is not None
    fork = Branch.of(chain)
    chain.hold = False
    chain.mine()
    assert old.run_once().confirmed
    old.store.release_lease("old")
    (tx,) = old.store.landed_txs(0, 0)
    keys.use(NEW_KEY)
    fork.reorg_to(chain)  # orphaned while the new key waits; not re-included
    _mine_to(chain, (tx.block or 0) + REORG_WINDOW + 1)
    return tx, _coordinator(book, chain, "new"), z_address, keys


def test_old_keys_settle_orphaned_while_the_new_key_waits__reopened__never_called_dropped_by_the_new_keys_nonce(
    book: Ledger, chain: FakeChain
) -> None:
    """xbreak's second finding (fixed): the old key's last settle (its nonce 0) is orphaned
    while the new key (at nonce 3) waits out its window, and not re-included. After the
    window the epoch is gone: the batch is reopened. Resolved with the NEW key's nonce, 3 >
    0 closed it dropped ("nonce went to another") though the old account's nonce 0 was
    never taken (its bytes valid for any node), and its records were planned again at once
    (another key's failure reads final). Now its bytes are sent again and it stays open
    until its receipt: the network includes them, the new key waits a window, confirms."""
    tx, new, z_address, _ = _old_keys_settle_orphaned(book, chain)
    sent = len(chain.sent)
    chain.hold = True  # the re-sent bytes wait in the pool

    report = new.run_once()

    assert report.failed == [] and "of key" in (report.waiting or "") and set(chain.sent[sent:]) == {tx.tx_hash}
    assert new.store.tx(tx.id).status == SENT
    chain.hold = False
    chain.mine()  # the network includes them, at the old account's nonce
    (block,) = {r.block_number for h, r in chain.receipts.items() if h == tx.tx_hash}
    assert f"newest at block {block}," in (new.run_once().waiting or "")
    _mine_to(chain, block + REORG_WINDOW)
    chain.next_window()
    report = new.run_once()
    assert report.waiting is None and (USDC, 1) in report.confirmed
    assert _debited(chain, z_address) == 3_012
    _books_equal_chain(book, chain)


def _tx(status: str, block_hash: str | None) -> StoredTx:
    return StoredTx(1, "settle", 0, "0x" + "2" * 64, "{}", status, 7, block_hash)


@pytest.mark.parametrize(
    ("stored", "served", "ours"),
    [
        (None, "0x" + "a" * 64, True),  # closed before 0017: number and outcome only
        ("0x" + "a" * 64, None, True),  # a chain that gives no hash
        ("0x" + "a" * 64, "0x" + "a" * 64, True),
        ("0x" + "a" * 64, "0x" + "b" * 64, False),  # same height, another block
    ],
)
def test_block_hash_known_or_not__compared_only_where_both_sides_have_it(
    stored: str | None, served: str | None, ours: bool
) -> None:
    """A log mixing rows closed before 0017 (no hash) and after: each compared as far as
    it can be; a number or outcome mismatch is never ours, hash or no hash."""
    assert still_ours(_tx(SUCCEEDED, stored), Receipt(True, 7, served)) is ours
    assert not still_ours(_tx(SUCCEEDED, stored), Receipt(False, 7, served))
    assert not still_ours(_tx(REVERTED, stored), Receipt(False, 8, served))


def test_receipt_first_served_from_a_block_not_yet_canonical__recorded_again_settled_once(
    book: Ledger, chain: FakeChain
) -> None:
    """The settle's receipt was first served from a block at height b that lost to another
    block at b holding the same settle with the same outcome: the next pass finds the hash
    differs, reopens the batch and closes it again from the canonical receipt (no new
    transaction: the same bytes' receipt). Debited once; the books equal the chain; the
    log keeps the canonical hash."""
    coord = _coordinator(book, chain, "a")
    z, z_address = _payer(book, chain)
    spend(book, z, 3_012)
    chain.next_window()
    assert coord.run_once().confirmed
    (tx,) = coord.store.landed_txs(0, 0)
    canonical = Receipt(True, tx.block or 0, "0x" + "c" * 64)
    chain.receipts[tx.tx_hash] = canonical
    sent = len(chain.sent)
    chain.mine_blocks(1)
    coord.run_once()
    assert coord.store.tx(tx.id).block_hash == canonical.block_hash and len(chain.sent) == sent
    assert _debited(chain, z_address) == 3_012
    _books_equal_chain(book, chain)


def test_agent_redeem_while_the_rule_waits__a_clear_refusal_nothing_sent_then_done_once(agent_world) -> None:  # noqa: ANN001
    """The agent's key rotated with the old key's redemption fresh: `redeem` raises the
    rule's TxPending naming the key and the block it waits for; the redemption is recorded
    as planned only (nothing signed, sold or bought), and the first pass after the window
    carries it through once."""
    from agent_fakes import USER

    from promptex.agent.machine import REORG_WINDOW as AGENT_WINDOW
    from promptex.agent.store import PLANNED, RELEASED
    from promptex.chain.txlog import TxPending
    from promptex.protocol.units import USD_MICRO as USD

    world, chain = agent_world, agent_world.chain
    assert world.agent().redeem(USER, "CLD", 20 * USD, "anthropic").status == RELEASED
    final = (world.agent().store.newest_block() or 0) + AGENT_WINDOW
    chain.sender, chain.s.nonce = NEW_KEY, 0  # restarted with a new key
    agent, sent, purchases = world.agent(), len(chain.sent), len(world.billing.purchases)
    with pytest.raises(TxPending, match=f"final at {final}\\): waiting"):
        agent.redeem(USER, "CLD", 10 * USD, "anthropic")
    waiting = agent.store.get(2)
    assert waiting.status == PLANNED and waiting.redeem_tx_id is None
    assert (len(chain.sent), chain.s.redeems, len(world.billing.purchases)) == (sent, 1, purchases)
    chain.mine_blocks(final - chain.head())
    assert agent.run_once(check_rules=False).advanced == {2: RELEASED}
    assert (chain.s.redeems, chain.s.releases, len(world.billing.purchases)) == (2, 2, purchases + 1)


def test_agent_old_keys_failed_redeem_flipped_by_a_reorg_before_the_rotation__the_new_key_sees_it__sold_once(
    agent_world,  # noqa: ANN001
) -> None:
    """The agent's side of xbreak's third finding: the old key's redeem reverted in block B
    (recorded failed), then a reorg its stopped agent never saw holds it succeeded at B
    (the user's tokens escrowed); the key is rotated. Unwatched, the failure counted as
    final after the window (tokens escrowed, no credits bought). The new key re-checks the
    old key's receipts while it waits: the sale is resolved again, completed once."""
    from test_agent_machine import _assert_once, _redeem_reverted_then_reorged_to_success

    from promptex.agent.machine import REORG_WINDOW as AGENT_WINDOW
    from promptex.agent.store import RELEASED

    world, chain = agent_world, agent_world.chain
    rid, block = _redeem_reverted_then_reorged_to_success(world, later=0)
    chain.sender, chain.s.nonce = NEW_KEY, 0  # restarted with a new key
    agent = world.agent()
    redeem = agent.store.tx(agent.store.get(rid).redeem_tx_id or 0)

    assert f"final at {block + AGENT_WINDOW}" in (agent.run_once(check_rules=False).waiting or "")
    assert (agent.store.tx(redeem.id).status, agent.store.tx(redeem.id).block) == (SUCCEEDED, block)
    chain.mine_blocks(block + AGENT_WINDOW - chain.head())
    agent.run_once(check_rules=False)
    assert agent.store.get(rid).status == RELEASED
    _assert_once(world)


def reincluded_while_waiting(chain: FakeChain, keys: _Keys, key: str, s: Any, fr: Any, waiting: Coordinator) -> None:
    """While `waiting` (signing with `key`) waits for the old key's rows: a reorg a few blocks
    deep, within the window, takes back `x_fails_y_retried`'s settles; the network
    re-includes the first (X and Y land) then the retry (reverts); the chain is mined past
    the window and three windows pass, each with a pass of `waiting`."""
    s.fork.reorg_to(chain)
    for raw in fr.raws:
        chain.broadcast(raw)
    _mine_to(chain, fr.reverted_in + REORG_WINDOW + 1)
    for _ in range(3):
        chain.next_window()
        waiting.run_once()


def test_old_keys_failed_settle_reincluded_during_the_wait__seen_by_the_new_key__each_record_debited_once(
    book: Ledger, chain: FakeChain
) -> None:
    """xbreak's third finding (fixed): nobody re-checked the old key's receipts while the
    new key waited out its window. The old key's settle A (X, Y) reverted in block b, its
    retry C settled Y at epoch 1, X's record quarantined; the old coordinator stopped, the
    key rotated. A reorg during the wait re-includes A (X and Y debited at epoch 1) and C
    reverts. Unwatched, the log said A reverted, C succeeded: at b + window the new key took
    A's failure as final and X and Y were debited twice. Now the new key re-checks the old
    key's mined rows every pass, waiting or not: A landed after all (its records back in
    it), C is let go; each debited once, the books equal the chain."""
    keys = _Keys(chain)
    old = _coordinator(book, chain, "old")
    s = x_fails_y_retried(book, chain, old, 1_002, 2_007)
    fr = failed_and_retry(old)
    old.store.release_lease("old")  # stopped, no open transaction: as the README says
    keys.use(NEW_KEY)
    new = _coordinator(book, chain, "new")
    chain.mine_blocks(3)
    assert new.run_once().waiting is not None
    reincluded_while_waiting(chain, keys, NEW_KEY, s, fr, new)

    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)
    _books_equal_chain(book, chain)


def test_old_keys_failed_settle_orphaned_not_reincluded__the_new_key_waits_for_that_keys_no_op__each_debited_once(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same reorg during the wait, but nothing re-included: A (failed, its records let
    go) is off the chain with its bytes still valid for the old account's nonce. The new key
    cannot fill another account's nonce: it sends A's bytes again (test_breaker_rotation_lost_key),
    which the node refuses here (the old account drained), and waits, past A's window too,
    saying how to end it (that key's coordinator, once); C's bytes are sent again at once. The old key's
    pass fills A's nonce with a no-op and lands C; after C's window the new key goes on:
    X and Y each debited once. Past that window the old key's rows are no longer read."""
    keys = _Keys(chain)
    old = _coordinator(book, chain, "old")
    s = x_fails_y_retried(book, chain, old, 1_002, 2_007)
    fr = failed_and_retry(old)
    old.store.release_lease("old")
    keys.use(NEW_KEY)
    new = _coordinator(book, chain, "new")
    chain.mine_blocks(3)
    assert new.run_once().waiting is not None
    s.fork.reorg_to(chain)  # A and C orphaned, neither re-included
    chain.s.balances[(s.x_address, USDC)] = 10_000  # X's exit was on the orphaned branch too
    _refused(chain, {old.store.tx(fr.failed.tx_id or 0).raw}, monkeypatch)  # A's bytes, sent again: no gas
    sent = len(chain.sent)
    _mine_to(chain, fr.reverted_in + REORG_WINDOW + 1)
    for _ in range(2):
        chain.next_window()
        report = new.run_once()
        assert "coordinator --once" in (report.waiting or "") and report.leader is False

    retry_tx = old.store.tx(fr.retry.tx_id or 0)
    assert chain.sent[sent:] == [retry_tx.tx_hash] and retry_tx.status == SENT  # sent again once, left open
    assert _debited(chain, s.x_address) == _debited(chain, s.y_address) == 0
    keys.use(COORDINATOR)  # the operator's way out: the old key's coordinator, once
    assert old.run_once().confirmed == [(USDC, 1)]  # C landed again; A's nonce went to the no-op
    old.store.release_lease("old")
    keys.use(NEW_KEY)
    _mine_to(chain, chain.head() + REORG_WINDOW + 1)
    for _ in range(3):
        chain.next_window()
        report = new.run_once()
        assert report.leader and report.waiting is None

    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)
    _books_equal_chain(book, chain)
    olds = {tx.tx_hash for tx in old.store.landed_txs(0, 0) if tx.sender == COORDINATOR}
    reads: list[str] = []
    real = chain.receipt
    monkeypatch.setattr(chain, "receipt", lambda tx_hash: reads.append(tx_hash) or real(tx_hash))
    new.run_once()
    assert olds and not olds & set(reads)


def _x_settled_again_at_epoch_2(book: Ledger, chain: FakeChain) -> tuple[_Keys, Coordinator, Any, Any, Any]:
    """The old key's A (X, Y) reverts at epoch 1, its retry C settles Y, and D settles X at
    epoch 2 (A's failure modelled as final: `beyond_the_window`, i.e. a reorg deeper than
    the window is what later brings A back). Returns the keys, the old key's coordinator,
    the x_fails_y_retried scenario, A's and C's bytes (failed_and_retry) and D's batch."""
    keys = _Keys(chain)
    old = _coordinator(book, chain, "old")
    s = x_fails_y_retried(book, chain, old, 1_002, 2_007)
    fr = failed_and_retry(old)
    chain.next_window()
    with beyond_the_window(old, {s.x_request}):
        assert old.run_once().confirmed == [(USDC, 2)]
    later = old.store.batch(old.store.record(s.x_request).batch_id or 0)
    return keys, old, s, fr, later


def test_reattached_records_later_batch_of_the_old_key_left_open__let_go__the_old_keys_once_never_resends_it(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture
) -> None:
    """reattach's check of a7e5e1b's open note. The old key's A (X, Y) reverts at epoch 1,
    its retry C settles Y, D settles X at epoch 2 (the window modelled as passed); the old
    coordinator stops, the key rotates. A reorg orphans A, C and D; the new key reopens C
    and D and sends their bytes again, which the network loses; then it re-includes A
    (landing: X and Y) and C (reverting). The new key reattaches X and Y to A and lets D go,
    but cannot fill the old key's nonce: D's settle stays open and the new key waits for
    that key. The operator runs the old key's coordinator once (README): its open-
    transaction loop must not send D's bytes again (they would land at epoch 2: X debited
    twice), but fill D's nonce with its own no-op. Each debited once; the books equal the chain."""
    keys, old, s, fr, later = _x_settled_again_at_epoch_2(book, chain)
    assert later.epoch == 2 and later.tx_id is not None
    old.store.release_lease("old")
    keys.use(NEW_KEY)
    new = _coordinator(book, chain, "new")
    chain.mine_blocks(3)
    assert new.run_once().waiting is not None

    s.fork.reorg_to(chain)  # A, C and D orphaned
    chain.hold = True
    assert "coordinator --once" in (new.run_once().waiting or "")  # C and D reopened, their bytes sent
    assert old.store.batch(later.id).status == "submitted" and old.store.tx(later.tx_id).status == SENT
    chain.mempool.clear()  # the network loses them, and re-includes A (lands) and C (reverts)
    chain.hold = False
    for raw in fr.raws:
        chain.broadcast(raw)
    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)

    assert "some not yet mined" in (new.run_once().waiting or "")  # A reattached, D let go, its settle open
    said = [r.getMessage() for r in caplog.records if "is let go and never sent again" in r.getMessage()]
    assert len(said) == 1 and f"of key {COORDINATOR}" in said[0] and "--once" in said[0]  # which key, what to run
    caplog.clear()
    assert old.store.batch(fr.failed.id).status == "confirmed" and old.store.batch(later.id).status == "failed"
    keys.use(COORDINATOR)  # the operator's way out: the old key's coordinator, once
    chain.next_window()  # a settlement window later: D's bytes would be valid again
    sent = len(chain.sent)
    assert old.run_once().waiting is None
    (noop,) = [tx for tx in old.store.open_txs() + old.store.landed_txs(0, 0) if tx.purpose == "noop"]
    assert old.store.tx(later.tx_id).status == "dropped" and (noop.nonce, noop.status) == (2, SUCCEEDED)
    assert chain.sent[sent:] == [noop.tx_hash]  # D's bytes never sent again: its nonce went to the no-op
    said = [r.getMessage() for r in caplog.records if noop.tx_hash in r.getMessage()]
    assert len(said) == 1 and "was let go while open" in said[0] and "a reorg" not in said[0]
    old.store.release_lease("old")
    keys.use(NEW_KEY)
    _mine_to(chain, chain.head() + REORG_WINDOW + 1)
    for _ in range(3):
        chain.next_window()
        assert new.run_once().waiting is None

    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)
    assert chain.last_epoch(USDC) == 1
    _books_equal_chain(book, chain)


def _let_go_settle_mined_anyway(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture, *, mined: bool = True
) -> tuple[Coordinator, Coordinator, _Keys, Any, Any]:
    """The scenario above up to D let go with its settle open (its key's no-op not yet sent);
    then D's bytes, still in a node's pool, are mined at the old key's nonce anyway, the
    pool's copy beating the no-op. X is debited twice on chain — reached only because D was
    planned as if A's failure were final (`beyond_the_window`: a reorg deeper than the
    window brings A back), the case the README puts outside the promise. With `mined`
    False, D's bytes are left to the caller (a settlement window later, not yet mined).
    Returns both coordinators, the keys, the x_fails_y_retried scenario and D."""
    keys, old, s, fr, later = _x_settled_again_at_epoch_2(book, chain)
    old.store.release_lease("old")
    keys.use(NEW_KEY)
    new = _coordinator(book, chain, "new")
    chain.mine_blocks(3)
    assert new.run_once().waiting is not None
    s.fork.reorg_to(chain)
    chain.hold = True
    new.run_once()
    chain.mempool.clear()
    chain.hold = False
    for raw in fr.raws:
        chain.broadcast(raw)
    assert "some not yet mined" in (new.run_once().waiting or "")  # A reattached, D let go, its settle open
    assert old.store.batch(later.id).status == "failed" and old.store.tx(later.tx_id or 0).status == SENT
    chain.next_window()
    if mined:
        chain.broadcast(old.store.tx(later.tx_id or 0).raw)  # the pool's copy, mined before the no-op
        assert chain.receipt(old.store.tx(later.tx_id or 0).tx_hash) is not None
        assert _debited(chain, s.x_address) == 2 * 1_002  # on chain: beyond the books' reach
    caplog.clear()
    return old, new, keys, s, later


def _said_reconcile(caplog: pytest.LogCaptureFixture, batch_epoch: int) -> list[str]:
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    return [m for m in said if "promptex reconcile" in m and f"epoch {batch_epoch}" in m]


def test_let_go_settle_of_another_key_mined_anyway__the_new_key_says_so_loudly_not_closed_silently(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture
) -> None:
    """rbreak's item 5 (after a reorg deeper than the window, see the helper): D's settle (let go by the new key's
    reattach, its nonce due the old key's no-op) mined anyway from a pool. Before, the new
    key's `wait_for_other_keys` closed it succeeded with D failed: no reattach, no error.
    Now it is handled as the old key's own `_check_replaced` would: D landed after all
    (`_reattach`), which finds X held by A, landed too, and says to run reconcile."""
    old, new, _, _, later = _let_go_settle_mined_anyway(book, chain, caplog)
    new.run_once()
    assert len(_said_reconcile(caplog, later.epoch)) == 1
    assert old.store.batch(later.id).status == "confirmed"  # the chain holds it at its epoch
    assert old.store.tx(later.tx_id or 0).status == SUCCEEDED


def test_let_go_settle_mined_anyway__its_own_keys_once_says_so_loudly_not_closed_silently(
    book: Ledger, chain: FakeChain, caplog: pytest.LogCaptureFixture
) -> None:
    """The same, found first by the old key's coordinator run once (README's way out):
    `_let_go_settle` saw a receipt and left it to `_resolve_tx`, which closed it succeeded
    with D failed, silently. Now the same handling: reattach, and reconcile said."""
    old, _, keys, _, later = _let_go_settle_mined_anyway(book, chain, caplog)
    keys.use(COORDINATOR)
    old.run_once()
    assert len(_said_reconcile(caplog, later.epoch)) == 1
    assert old.store.batch(later.id).status == "confirmed"
    assert old.store.tx(later.tx_id or 0).status == SUCCEEDED


def _refused(chain: Any, raws: set[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A node refusing `raws` as a drained account's (no gas); returns the raws it refused."""
    real, refused = chain.broadcast, []

    def broadcast(raw: str) -> None:
        if raw in raws:
            refused.append(raw)
            raise ValueError("insufficient funds for gas * price + value")
        real(raw)

    monkeypatch.setattr(chain, "broadcast", broadcast)
    return refused


def test_old_keys_orphaned_settle_sent_again__the_node_refuses_it__the_pass_waits_no_error(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rbreak's item 8, `_orphaned`: another key's reopened settle's bytes are sent at once;
    a node refusing them (the old account drained: no gas) raised out of the pass (every
    pass an error, `--once` a traceback). Now logged (`txlog.send_others`): the pass waits."""
    tx, new, _, _ = _old_keys_settle_orphaned(book, chain)
    refused = _refused(chain, {tx.raw}, monkeypatch)

    report = new.run_once()

    assert refused and report.leader is False and "of key" in (report.waiting or "")
    assert new.store.tx(tx.id).status == SENT


def test_old_keys_reopened_settle_in_finish_submitted__the_node_refuses_it__waits_no_error(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same refusal at `_finish_submitted`'s re-send of another key's open settle (its
    batch reopened by a reorg): waits (TxPending), not the node's error."""
    tx, new, _, _ = _old_keys_settle_orphaned(book, chain)
    chain.hold = True  # the re-sent bytes wait in the pool
    new.run_once()  # reopened: its batch submitted again, its settle open
    batch = new.store.batch_of_tx(tx.id)
    assert batch is not None and batch.status == "submitted" and new.store.tx(tx.id).status == SENT
    refused = _refused(chain, {tx.raw}, monkeypatch)
    assert new.store.acquire_lease("new", new.lease_seconds)  # as a pass takes it

    with pytest.raises(txlog.TxPending, match="of key"):
        new._finish_submitted(batch)
    assert refused == [tx.raw]


def test_agent_old_keys_orphaned_txs_sent_again__the_node_refuses_them__the_pass_waits_no_error(
    agent_world,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The agent's place (`RedemptionMachine.wait_for_other_keys`): the old key's redeem and
    release orphaned by a reorg after the rotation, their bytes refused by the node (no gas):
    the pass waits for that key, no error."""
    import copy

    from agent_fakes import USER

    from promptex.agent.store import RELEASED
    from promptex.protocol.units import USD_MICRO as USD

    world, chain = agent_world, agent_world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    assert world.agent().redeem(USER, "CLD", 20 * USD, "anthropic").status == RELEASED
    old = world.agent().store
    raws = {tx.raw for tx in old.landed_txs(0, 0)}
    chain.sender, chain.s.nonce = NEW_KEY, 0  # restarted with a new key
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2]  # the reorg
    chain.s.nonce = 0
    refused = _refused(chain, raws, monkeypatch)

    report = world.agent().run_once(check_rules=False)

    assert refused and "of key" in (report.waiting or "")
