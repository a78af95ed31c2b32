"""Liveness of the coordinator's leader lease (lbreak, session 9): "settlement never stops
for good while one coordinator runs". Found: a leader whose passes fail before they finish
(its node down or unreachable: every RPC call raises) kept the lease for good, since each
failed pass began by taking it and `serve` only logged the failure and tried again; the
standby, with a working node, stood by for as long as the broken leader ran. Now a pass that
fails gives the lease back: a standby leads at its next poll; alone, the failed coordinator
takes it again at its next pass."""

from __future__ import annotations

from typing import Any

import pytest
from coordinator_fakes import FakeChain
from test_breaker_refund_taken_back import _payer
from test_coordinator_refund_taken_back import LOT, USDC, spend

from fixtures.ledger import Clock
from promptex.coordinator.service import Coordinator
from promptex.ledger import Ledger
from promptex.protocol.escrow import KIND_LISTED

POLL = 2  # the default coordinator_poll_seconds


class DeadNode:
    """The leader's node: down (every call raises, as web3 does on a refused connection)."""

    sender = FakeChain.sender

    def __getattr__(self, name: str) -> Any:
        def down(*_args: Any, **_kwargs: Any) -> Any:
            raise ConnectionError(f"{name}: connection refused")

        return down


def _failing_pass(coord: Coordinator) -> bool:
    """One turn of `serve`'s loop for a coordinator whose node is down: its pass raises
    (logged, tried again next poll), or it stands by (another holds the lease). Led?"""
    try:
        return coord.run_once().leader
    except ConnectionError:
        return True


def test_leader_whose_node_is_down__the_standby_leads_and_settles(ledger: Ledger, clock: Clock) -> None:
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED)
    broken = Coordinator(ledger.engine, DeadNode(), holder="broken", clock=ledger.clock)  # type: ignore[arg-type]
    standby = Coordinator(ledger.engine, chain, holder="standby", clock=ledger.clock)
    x, x_address = _payer(ledger, chain)
    spend(ledger, x, 1_002)

    assert _failing_pass(broken)  # the leader, first: its node went down
    led: list[bool] = []
    for _ in range(5 * 60 // POLL):  # five minutes of both running, each polling every 2 s
        led.append(standby.run_once().leader)
        assert not _failing_pass(broken) or not led[-1], "both led in one turn"
        clock.advance(POLL)

    assert any(led), "the standby never led while the leader's node was down"
    assert all(led[led.index(True) :]), "the standby lost the lease to the broken leader"
    assert chain.s.settlements == [(USDC, 1)] and chain.s.balances[(x_address, USDC)] == 10_000 - 1_002


def test_a_lone_coordinator_whose_pass_failed__takes_the_lease_again_next_pass(ledger: Ledger, clock: Clock) -> None:
    """Giving the lease back after a failure costs a lone coordinator nothing: its next pass
    takes it again and settles."""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED)
    coord = Coordinator(ledger.engine, chain, holder="alone", clock=ledger.clock)
    x, x_address = _payer(ledger, chain)
    spend(ledger, x, 1_002)
    assets = chain.assets

    def down() -> list[str]:
        raise ConnectionError("assets: connection refused")

    chain.assets = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        coord.run_once()
    chain.assets = assets  # type: ignore[method-assign]
    clock.advance(POLL)

    report = coord.run_once()
    assert report.leader and report.confirmed == [(USDC, 1)]
    assert chain.s.balances[(x_address, USDC)] == 10_000 - 1_002
