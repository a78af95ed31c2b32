"""Breaking the key-rotation rule through the leader lease (rbreak, session 9).

The rule (82be085, a7e5e1b, a0e5983) that a key waits while another key's transactions
are open or less than a window deep is checked once, at the start of a pass, and holds
only if no other coordinator runs a pass meanwhile: the lease (30 s by default) is what
promises it ("two coordinators never post together"). A pass is not bounded by the lease:
one receipt may be waited for up to `tx_timeout` (120 s), and a slow RPC stretches the
reads between the check and the first send. Found: once the lease ran out mid-pass, a
standby (another key) took it, passed the rule (the leader had nothing fresh yet), and
posted; the old leader then went on and posted too. Both keys then hold fresh rows, each
waiting for the other, and a failed settle of each that a reorg takes off the chain
stops settlement for good (each key's pass stops at the other's before its own no-op).
Now a pass holds its lease before every transaction it signs and every batch it plans,
and stops (standing by) once another coordinator has held the lease since.

Second finding: the old key's coordinator died between storing its settle and sending it,
and the key was rotated because it was lost: the new key waited "some not yet mined" for
good, though the signed bytes were in the log for anyone to send. Now the new key sends
them (all but a let-go batch's settle). Held: a rotation back and forth (A→B→A) with B's
failed settle flipped by a reorg during A's wait.
"""

from __future__ import annotations

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from test_breaker_rotation import NEW_KEY, _Keys, reincluded_while_waiting
from test_coordinator_service import CLD_LOT, USDC_LOT, buyer, spend

from promptex.coordinator.service import Coordinator
from promptex.ledger import Ledger
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED


@pytest.fixture
def chain() -> FakeChain:
    fake = FakeChain()
    fake.open_lot(CLD_LOT, KIND_TOKENIZED, "CLD")
    fake.open_lot(USDC_LOT, KIND_LISTED)
    return fake


def _coordinator(book: Ledger, chain: FakeChain, holder: str) -> Coordinator:
    return Coordinator(
        book.engine, chain, holder=holder, clock=book.clock, tx_timeout=0, quarantine_retry=0, lease_seconds=30
    )


def test_lease_runs_out_mid_pass__a_standby_of_another_key_takes_it__the_old_leader_sends_nothing_more(
    book: Ledger,
    chain: FakeChain,
    clock,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """A (the old key) starts a pass and passes the rule; before its first transaction its
    lease runs out (a slow RPC) and B (a standby with another key) takes it: B's pass finds
    nothing of A's fresh, so it settles USDC with its own key. New usage in CLD arrives.
    A's pass, going on, must send nothing (it settled CLD with its key: both keys posting
    in one window, each past the rule's check); it stands by, and B settles CLD."""
    keys = _Keys(chain)
    a, b = _coordinator(book, chain, "a"), _coordinator(book, chain, "b")
    z, _ = buyer(book, chain, "USDC", 10_000)
    w, _ = buyer(book, chain, "CLD", 10**20)
    spend(book, z, "USDC", 3_012, USDC_LOT)
    chain.next_window()
    taken: list[int] = []
    real = chain.next_settlement_at

    def slow(asset: str) -> int:
        if not taken:  # A's pass reaches USDC's window after its lease ran out
            taken.append(0)
            clock.advance(31)
            keys.use(NEW_KEY)
            report = b.run_once()
            assert report.leader and report.confirmed == [("USDC", 1)]  # B posted: A had nothing fresh
            keys.use(COORDINATOR)
            spend(book, w, "CLD", 5, CLD_LOT)  # usage goes on
            taken[0] = len(chain.sent)
        return real(asset)

    monkeypatch.setattr(chain, "next_settlement_at", slow)
    keys.use(COORDINATOR)

    report = a.run_once()

    assert taken and chain.sent[taken[0] :] == []  # A sent nothing once B held the lease
    assert report.leader is False and "lease" in (report.waiting or "")
    assert {tx.sender for tx in a.store.open_txs() + a.store.landed_txs(0, 0)} == {NEW_KEY}
    monkeypatch.setattr(chain, "next_settlement_at", real)
    keys.use(NEW_KEY)
    assert b.run_once().confirmed == [("CLD", 1)]
    assert chain.s.settlements == [("USDC", 1), ("CLD", 1)]


def test_rotation_back_and_forth__a_b_a__the_failed_settle_of_b_flipped_during_as_wait__each_debited_once(
    book: Ledger, chain: FakeChain
) -> None:
    """A→B→A: A settles and stops; B (after A's window) has a settle A1 (X, Y) revert and
    its retry C settle Y at the same epoch, X quarantined; B stops and the operator goes
    back to A (a new process, its own rows long deep). A reorg within B's window re-includes
    A1 (landing) and C (reverting). A, waiting for B's rows, must see it as B would have:
    X and Y each debited once; the books equal the chain."""
    from test_breaker_failure_final import _debited
    from test_breaker_recheck import _books_equal_chain
    from test_breaker_refund_taken_back import failed_and_retry, x_fails_y_retried

    from promptex.coordinator.service import REORG_WINDOW

    keys = _Keys(chain)
    old = _coordinator(book, chain, "a")
    w, _ = buyer(book, chain, "CLD", 10**20)
    spend(book, w, "CLD", 5, CLD_LOT)
    chain.next_window()
    assert old.run_once().confirmed == [("CLD", 1)]
    old.store.release_lease("a")
    keys.use(NEW_KEY)
    b = _coordinator(book, chain, "b")
    chain.mine_blocks(REORG_WINDOW + 1)
    chain.next_window()
    s = x_fails_y_retried(book, chain, b, 1_002, 2_007)
    fr = failed_and_retry(b)
    b.store.release_lease("b")
    keys.use(COORDINATOR)  # back to the first key: a new process
    a = _coordinator(book, chain, "a2")
    chain.mine_blocks(3)
    assert a.run_once().waiting is not None
    reincluded_while_waiting(chain, keys, COORDINATOR, s, fr, a)  # within B's window

    assert (_debited(chain, s.x_address), _debited(chain, s.y_address)) == (1_002, 2_007)
    assert chain.s.settlements.count(("CLD", 1)) == 1
    _books_equal_chain(book, chain)


def test_old_key_died_between_storing_its_settle_and_sending_it__key_lost__the_new_key_sends_its_bytes_settles(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old key's coordinator stored its settle of Z and died before the broadcast (or
    the network lost it); the key is rotated because it is lost, so its coordinator can
    never be run again (the README's way out). Its signed bytes are in the log and valid
    for its account's free nonce: anyone may send them. The new key waited "some not yet
    mined" for good (only that key's coordinator re-sent them). Now it sends them, they
    land, and a window later it settles Y: each debited once."""
    from test_breaker_failure_final import _debited
    from test_breaker_recheck import _books_equal_chain
    from test_breaker_rotation import _old_key_dies_with_its_settle_open
    from test_coordinator_failure_final import _mine_to

    from promptex.coordinator.service import REORG_WINDOW

    z_address, y_address, old, keys = _old_key_dies_with_its_settle_open(book, chain, mined=False)
    (z_tx,) = old.store.open_txs()
    new = _coordinator(book, chain, "new")
    assert new.run_once().waiting is not None
    block = new.store.tx(z_tx.id).block
    assert block is not None  # its bytes sent by the new key, mined, closed by their receipt
    _mine_to(chain, block + REORG_WINDOW)
    chain.next_window()
    report = new.run_once()
    assert report.waiting is None and len(report.confirmed) == 2
    assert _debited(chain, z_address) == 3_012 and _debited(chain, y_address) == 2_007
    _books_equal_chain(book, chain)


def test_old_keys_once_while_the_new_keys_door_holds_the_lease__says_it_stood_by_and_why(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator runs the old key's `coordinator --once` while the new key waits for the
    old key's last settle (here: mined, not yet a window deep; before cbreak2's fix the
    README's way out for an open settle whose nonce was taken outside the log, which the
    new key now calls dropped itself). Meanwhile the new coordinator's next pass took the
    lease (an exit at its door took it too, before lbreak's 2nd fix). The old key's pass
    stands by, and its report said nothing (`waiting` null: the operator takes the way out
    as done while the new key waits on). Now it says why and what to do."""
    from coordinator_fakes import ADDRESSES, CHAIN_ID, VAULT
    from test_breaker_rotation import _old_key_dies_with_its_settle_open

    from promptex.coordinator.door import Door, Refused
    from promptex.coordinator.requests import Place

    _, _, old, keys = _old_key_dies_with_its_settle_open(book, chain, mined=True)
    (z_tx,) = old.store.open_txs()
    new = _coordinator(book, chain, "new")
    assert "newest at block" in (new.run_once().waiting or "")
    door = Door(new, Place(CHAIN_ID, VAULT, ADDRESSES))
    monkeypatch.setattr("promptex.coordinator.door.parse_exit_request", lambda *a: _Request())
    with pytest.raises(Refused, match="standing by"):  # the door no longer takes the lease its pass gave back
        door.exit({})
    assert new.store.acquire_lease("new", 30)  # the new key's pass, as it runs again meanwhile
    keys.use(COORDINATOR)

    report = old.run_once()  # the operator's `promptex coordinator --once` with the old key

    assert report.leader is False and old.store.tx(z_tx.id).status == "succeeded"  # as the new key closed it
    assert "lease" in (report.waiting or "") and "again" in (report.waiting or "")


class _Request:
    account = "0x" + "12" * 20
    asset = "USDC"
    amount = 1
    nonce = 0


def test_old_keys_open_settle_sent_again__the_node_refuses_it__the_new_key_waits_as_before_no_error(
    book: Ledger, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new key sends the old key's open bytes again (21af1c0); a node may refuse them
    for a reason the sender does not take as done (the old account drained after the
    rotation: no gas). The pass must not fail with it (every pass an error, `--once` a
    traceback): it waits, as before, saying so."""
    from test_breaker_rotation import _old_key_dies_with_its_settle_open

    _, _, old, _ = _old_key_dies_with_its_settle_open(book, chain, mined=False)
    (z_tx,) = old.store.open_txs()
    real = chain.broadcast

    def broadcast(raw: str) -> None:
        if raw == z_tx.raw:
            raise ValueError("insufficient funds for gas * price + value")
        real(raw)

    monkeypatch.setattr(chain, "broadcast", broadcast)
    new = _coordinator(book, chain, "new")

    report = new.run_once()

    assert report.leader is False and "some not yet mined" in (report.waiting or "")
    assert old.store.tx(z_tx.id).status == "sent"
