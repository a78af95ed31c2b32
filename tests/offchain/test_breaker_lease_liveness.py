"""Liveness of the coordinator's leader lease (lbreak, session 9): "settlement never stops
for good while one coordinator runs". Found: a leader whose passes fail before they finish
(its node down or unreachable: every RPC call raises) kept the lease for good, since each
failed pass began by taking it and `serve` only logged the failure and tried again; the
standby, with a working node, stood by for as long as the broken leader ran. Now a pass that
fails gives the lease back: a standby leads at its next poll; alone, the failed coordinator
takes it again at its next pass."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from coordinator_fakes import COORDINATOR, FakeChain
from sqlalchemy import select
from test_breaker_refund_taken_back import _payer
from test_coordinator_refund_taken_back import LOT, USDC, spend

from fixtures.ledger import Clock
from promptex.coordinator.schema import coordinator_lease
from promptex.coordinator.service import Coordinator
from promptex.coordinator.store import DATABASE_NOW
from promptex.ledger import Ledger
from promptex.protocol.escrow import KIND_LISTED

POLL = 2  # the default coordinator_poll_seconds


class DeadNode:
    """The leader's node: down (every call raises, as web3 does on a refused connection)."""

    sender = COORDINATOR

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


# ─── The door: it reads the lease, never takes or renews it ─────────────────


def _door(ledger: Ledger) -> tuple[Any, Any, Any]:
    from test_coordinator_door import World

    world = World(ledger, FakeChain())
    _account, wallet = world.buyer(20 * 10**6)
    assert world.post(world.request(wallet, 10**6))[0] == 200  # the leader's door answers; nonce 0 used
    return world, wallet, world.request(wallet, 10**6)  # that request again: a replay anyone can post


def test_a_replayed_exit_request__never_takes_the_lease_a_pass_gave_back(ledger: Ledger) -> None:
    """A pass gives the lease back so that another coordinator leads (another key's open
    transactions, `OtherKeyPending`; or a failed pass). Before, the door's answer began by
    taking the lease: a replayed exit request (answered 409 bad_nonce, after the take),
    posted by anyone every second, pinned the lease to this process and the other never led."""
    world, _wallet, replay = _door(ledger)
    other = Coordinator(ledger.engine, world.chain, holder="other", clock=ledger.clock)
    world.coordinator.store.release_lease("door")  # its pass gave it back

    for _ in range(3):
        got, answer = world.post(replay)
        assert (got, answer["error"]["code"]) == (503, "standby")
    assert other.run_once().leader


def test_a_process_whose_passes_are_stuck__its_door_neither_takes_nor_keeps_the_lease(
    ledger: Ledger, clock: Clock
) -> None:
    """The pass thread hangs (a call that never returns) while the door's thread answers.
    Before, each exit request renewed or re-took the lease under the process's name: with
    requests coming in, the lease never ran out, the standby never led, and the stuck pass,
    once it returned, passed the fence again with what it read before (the lease's 2nd
    left-open item, ABA). Now the door answers 503 once the passes stopped renewing it."""
    world, _wallet, replay = _door(ledger)
    standby = Coordinator(ledger.engine, world.chain, holder="standby", clock=ledger.clock)
    led = []
    for _ in range(60 // POLL):  # a minute of requests to the stuck process's door
        clock.advance(POLL)
        world.post(replay)
        led.append(standby.run_once().leader)
    assert any(led)
    assert not world.coordinator.store.holds_lease("door")


# ─── Clock skew: the lease's times are the database's clock (lbreak's item 3) ─
#
# Before, each process wrote the lease's expiry in its own clock and compared another's
# expiry with its own. `ledger.clock` stands for the database's clock in the first two
# tests (the lease's clock, `lease_clock`, one for every coordinator); each coordinator's
# own clock (`clock`) is skewed. The last two are the production path: no clock given,
# on PostgreSQL, whose server's clock the lease uses.

DAY = 86_400


def _ahead(ledger: Ledger, seconds: int) -> Callable[[], int]:
    """A coordinator's own clock, `seconds` ahead of the one standing for the database's."""
    return lambda: ledger.clock() + seconds


def test_a_killed_coordinator_whose_clock_ran_a_day_ahead__a_standby_leads_after_the_lease(
    ledger: Ledger, clock: Clock
) -> None:
    """lbreak's repro (a): `fast` (its host's clock a day ahead) runs one pass and is
    killed (-9: the lease is not given back). Before, it wrote an expiry a day away and
    `right` stood by for the whole hour, settling nothing."""
    chain = FakeChain()
    chain.open_lot(LOT, KIND_LISTED)
    fast = Coordinator(ledger.engine, chain, holder="fast", clock=_ahead(ledger, DAY), lease_clock=ledger.clock)
    right = Coordinator(ledger.engine, chain, holder="right", clock=ledger.clock, lease_clock=ledger.clock)
    assert fast.run_once().leader  # then kill -9
    x, x_address = _payer(ledger, chain)
    spend(ledger, x, 1_002)

    assert not right.run_once().leader  # fast's lease (30 s), fresh
    clock.advance(fast.lease_seconds + 1)  # before: a day and the lease
    assert right.run_once().leader
    assert chain.s.settlements == [(USDC, 1)] and chain.s.balances[(x_address, USDC)] == 10_000 - 1_002


def test_a_standby_whose_clock_runs_a_minute_ahead__never_takes_a_held_lease(ledger: Ledger, clock: Clock) -> None:
    """lbreak's repro (b): before, `fast` (its clock 60 s ahead, more than the lease) took
    the lease right after `slow` renewed it; the leader's unfenced instant between its
    renewal and its RPC send then needed no stop at all."""
    chain = FakeChain()
    slow = Coordinator(ledger.engine, chain, holder="slow", clock=ledger.clock, lease_clock=ledger.clock)
    fast = Coordinator(ledger.engine, chain, holder="fast", clock=_ahead(ledger, 60), lease_clock=ledger.clock)
    assert slow.run_once().leader and slow.store.hold_lease("slow", 30)
    for _ in range(5):
        assert not fast.run_once().leader
        clock.advance(10)
        assert slow.run_once().leader  # renewed by each pass
    assert not fast.store.holds_lease("fast") and slow.store.holds_lease("slow")


def _database_now(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(DATABASE_NOW).scalar_one())


def _host_clock(seconds_ahead: int) -> Callable[[], int]:
    """A host's clock `seconds_ahead` of the real one (the database server's)."""
    return lambda: int(time.time()) + seconds_ahead


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_on_postgresql__no_clock_given__the_expiry_is_the_servers_clock_not_the_hosts(ledger: Ledger) -> None:
    """The production path of (a): `fast`'s host clock a day ahead; the expiry it writes is
    the server's clock plus the lease (before: its own clock plus the lease, a day away)."""
    fast = Coordinator(ledger.engine, FakeChain(), holder="fast")
    fast.clock = _host_clock(DAY)
    before = _database_now(ledger)
    assert fast.run_once().leader
    with ledger.engine.connect() as conn:
        expires_at = conn.execute(select(coordinator_lease.c.expires_at)).scalar_one()
    assert before + fast.lease_seconds <= expires_at <= _database_now(ledger) + fast.lease_seconds


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_on_postgresql__no_clock_given__a_standby_a_minute_ahead_stands_by(ledger: Ledger) -> None:
    """The production path of (b): before, the standby's own clock (60 s ahead) read the
    leader's fresh expiry as past and took the lease at once."""
    chain = FakeChain()
    slow = Coordinator(ledger.engine, chain, holder="slow")
    fast = Coordinator(ledger.engine, chain, holder="fast")
    fast.clock = _host_clock(60)
    assert slow.run_once().leader
    assert not fast.run_once().leader
    assert slow.store.holds_lease("slow") and slow.run_once().leader
