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
"""

from __future__ import annotations

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from test_breaker_rotation import NEW_KEY, _Keys
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
