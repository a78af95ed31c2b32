"""Gateway processes on PostgreSQL (`ledger.processes`): a process registers and holds its
lock for as long as it lives, every hold names it, and a sweeper that can take a process's
lock ends that process's active holds at once as "orphaned" — funds, lot capacity and a
signed lane back, its leases given back — whose late answer is refused (nothing charged).
A process whose lock connection was cut registers again before its next reserve."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from ledger_helpers import fund
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from test_ledger_lanes import ASSET, _hold, _record, _signed

from polling import until
from promptex.ledger import HoldOrphaned, HoldStatus, Ledger, LotClaim, Reservation, Sweeper, UsageRecord
from promptex.ledger.errors import LedgerUnavailable
from promptex.ledger.holds.book import GeneralHolds
from promptex.ledger.processes import LOCK_SPACE, ProcessLock
from promptex.ledger.schema import capacity_leases, holds, ledger_processes
from promptex.protocol.units import USD_MICRO as USDC

LOT = 7


def _cut(ledger: Ledger, process: int) -> None:
    """The database ends `process`'s lock session (as a restart or a network cut would)."""
    with ledger.engine.begin() as conn:
        killed = (
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 30000) FROM pg_locks"  # waits until it has ended
                    " WHERE locktype = 'advisory' AND classid = :space AND objid = :p AND granted"
                ),
                {"space": LOCK_SPACE, "p": process},
            )
            .scalars()
            .all()
        )
    assert killed == [True]


def _status(ledger: Ledger, request_id: str) -> str:
    hold = ledger.hold(request_id)
    assert hold is not None
    return hold.status.value


def test_process_lock_cut__other_sweeps_its_holds_orphaned__late_settle_refused_nothing_charged(
    two: tuple[Ledger, Ledger],
) -> None:
    alive, sweeper = two
    with alive.engine.begin() as conn:
        alive.open_lot_capacity(conn, LOT, 1_000 * USDC)
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    signer = _signed(alive)
    alive.holds.reserve(Reservation("plain", account, ASSET, USDC, 300, lots=[LotClaim(LOT, 2 * USDC)]))
    _hold(alive, signer, "signed", 0, USDC)
    process = alive.holds.lock.id
    assert process is not None
    with alive.engine.connect() as conn:
        assert set(conn.execute(select(holds.c.process_id)).scalars()) == {process}
    assert sweeper.end_dead_processes() == 0  # its lock is held: a live process's holds stay
    assert alive.end_dead_processes() == 0

    _cut(alive, process)
    assert sweeper.end_dead_processes() == 2  # long before their 300 s lifetime
    assert (_status(alive, "plain"), _status(alive, "signed")) == ("orphaned", "orphaned")
    assert alive.balance(account, ASSET).held == 0 and alive.balance(signer, ASSET).held == 0
    assert alive.lane(signer, ASSET, 1, 0).inflight is None
    sweeper.holds.maintain()  # the dead lock's leases given back to the lot
    assert alive.lot_capacities()[LOT].reserved == 0
    with sweeper.engine.connect() as conn:
        assert conn.execute(select(ledger_processes.c.id).where(ledger_processes.c.id == process)).first() is None
        assert conn.execute(select(capacity_leases.c.id)).first() is None

    # The process lived on: its answers come late, and are refused — nothing charged, the lane's
    # total does not move under a lane already free for the next request.
    usage = UsageRecord("m", 1, 1, 2 * USDC, gateway_lot_id=LOT)
    with pytest.raises(HoldOrphaned):
        alive.holds.settle("plain", USDC // 2, record=usage)
    with pytest.raises(HoldOrphaned):
        alive.holds.settle("signed", USDC // 2, record=_record(0, USDC))
    assert alive.balance(account, ASSET).posted == 10 * USDC and alive.balance(signer, ASSET).posted == 10 * USDC
    assert alive.lane(signer, ASSET, 1, 0).charged == 0
    assert alive.usage_record("plain") is None and alive.usage_record("signed") is None
    assert alive.holds.release("plain").status == HoldStatus.ORPHANED  # a release changes nothing

    # Its next reserve registers again first: a new id, a lock held again.
    alive.holds.reserve(Reservation("after", account, ASSET, USDC, 300, lots=[LotClaim(LOT, USDC)]))
    again = alive.holds.lock.id
    assert again is not None and again != process and alive.holds.lock.registrations == 2
    assert sweeper.end_dead_processes() == 0
    alive.holds.settle("after", USDC // 2, record=UsageRecord("m", 1, 1, USDC // 2, gateway_lot_id=LOT))
    assert alive.balance(account, ASSET).posted == 10 * USDC - USDC // 2


def test_closed_process__its_leftover_holds_orphaned_by_a_sweep(two: tuple[Ledger, Ledger]) -> None:
    first, second = two
    account = first.create_account().id
    fund(first, account, ASSET, 10 * USDC)
    first.holds.reserve(Reservation("left", account, ASSET, USDC, 300))
    first.holds.lock.close()  # as a process that exits (or dies) does: its lock goes with it
    assert Sweeper(second).run_once() == 1
    assert _status(first, "left") == "orphaned" and first.balance(account, ASSET).held == 0


def test_process_lock_cut__it_registers_again_before_a_sweep__its_holds_in_flight_kept_and_charged(
    two: tuple[Ledger, Ledger],
) -> None:
    alive, sweeper = two
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    signer = _signed(alive)
    alive.holds.reserve(Reservation("in-flight", account, ASSET, USDC, 300))
    _hold(alive, signer, "signed", 0, USDC)
    process = alive.holds.lock.id
    assert process is not None
    _cut(alive, process)
    alive.holds.reserve(Reservation("next", account, ASSET, USDC, 300))  # registers again first
    again = alive.holds.lock.id
    assert again is not None and again != process
    with alive.engine.connect() as conn:
        assert set(conn.execute(select(holds.c.process_id)).scalars()) == {again}  # taken along
    assert sweeper.end_dead_processes() == 0  # nothing left under the lost id, its new lock held
    alive.holds.settle("in-flight", USDC // 4)
    alive.holds.settle("signed", USDC // 4, record=_record(0, USDC))
    alive.holds.release("next")
    assert alive.balance(account, ASSET).posted == 10 * USDC - USDC // 4
    assert alive.lane(signer, ASSET, 1, 0).charged == USDC // 4


def test_process_lock_cut__its_own_sweep_registers_again_first__keeps_its_holds(two: tuple[Ledger, Ledger]) -> None:
    alive, other = two
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    alive.holds.reserve(Reservation("in-flight", account, ASSET, USDC, 300))
    process = alive.holds.lock.id
    assert process is not None
    _cut(alive, process)
    assert Sweeper(alive).run_once() == 0  # its own sweep: registered again before it probes
    again = alive.holds.lock.id
    assert again is not None and again != process and _status(alive, "in-flight") == "active"
    assert other.end_dead_processes() == 0
    alive.holds.settle("in-flight", USDC // 4)
    assert alive.balance(account, ASSET).posted == 10 * USDC - USDC // 4


def test_process_lock_cut__registering_again_fails_once__the_next_registration_still_keeps_its_holds(
    two: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is down a moment after the cut: the first registration fails, the next
    one (the database back) still takes along the holds the lost id named."""
    alive, other = two
    account, process = _in_flight_then_registration_fails_once(alive, monkeypatch)
    again = alive.holds.lock.current()
    assert again != process
    with alive.engine.connect() as conn:
        assert set(conn.execute(select(holds.c.process_id)).scalars()) == {again}
    assert other.end_dead_processes() == 0
    alive.holds.settle("in-flight", USDC // 4)
    assert alive.balance(account, ASSET).posted == 10 * USDC - USDC // 4


def test_process_lock_cut__registering_again_fails__its_own_sweep_next_still_registers_first__keeps_its_holds(
    two: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgbreak: after a registration that failed (the database down a moment after the cut)
    the process has no id, only the lost one. Its own next sweep must still register again
    first, taking its holds along: it found its OWN lost id's lock free and ended its live
    requests' holds as orphaned (their answers refused, a stream cut), where the same sweep
    without the failed attempt keeps them."""
    alive, other = two
    account, process = _in_flight_then_registration_fails_once(alive, monkeypatch)
    assert Sweeper(alive).run_once() == 0  # its own sweep, the database back
    again = alive.holds.lock.id
    assert again is not None and again != process and _status(alive, "in-flight") == "active"
    assert other.end_dead_processes() == 0
    alive.holds.settle("in-flight", USDC // 4)
    assert alive.balance(account, ASSET).posted == 10 * USDC - USDC // 4


class _CountedMutex:
    """A lock that counts who asked for it (before waiting)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked = 0

    def __enter__(self) -> bool:
        self.asked += 1
        return self.lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.lock.__exit__(*exc)


def test_register__database_unreachable__fails_as_unavailable__a_reserve_queued_behind_it_fails_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registration that cannot connect (within the URL's connect_timeout) raises
    LedgerUnavailable, and a caller that waited on the mutex for it fails at once instead of
    trying again: each reserve waits for one connect timeout at most, not one per reserve
    queued before it. No database: psycopg's connect is a stand-in that hangs, then fails."""
    connecting, fail = threading.Event(), threading.Event()
    attempts: list[str] = []

    def connect(url: str, **_: object) -> None:
        attempts.append(url)
        connecting.set()
        fail.wait(30)
        raise psycopg.OperationalError("connection timeout expired")

    monkeypatch.setattr(psycopg, "connect", connect)
    lock = ProcessLock("postgresql://nowhere/db?connect_timeout=2", "holder", lambda: 0)
    mutex = lock._mutex = _CountedMutex()  # type: ignore[assignment]
    outcomes: list[BaseException | int] = []

    def reserve() -> None:
        try:
            outcomes.append(lock.current())
        except BaseException as exc:
            outcomes.append(exc)

    first = threading.Thread(target=reserve)
    first.start()
    assert connecting.wait(30)  # the first reserve's registration hangs in its connect
    second = threading.Thread(target=reserve)
    second.start()
    until(lambda: mutex.asked == 2, "the second reserve waits for the mutex", 30)
    fail.set()  # the connect times out
    first.join(30)
    second.join(30)
    assert len(outcomes) == 2 and all(isinstance(o, LedgerUnavailable) for o in outcomes), outcomes
    assert len(attempts) == 1 and lock.failures == 1 and lock.id is None  # one attempt, not one each

    with pytest.raises(LedgerUnavailable):  # a reserve that arrives later tries again
        lock.current()
    assert len(attempts) == 2 and lock.failures == 2


def _in_flight_then_registration_fails_once(alive: Ledger, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """A hold in flight under `alive`'s id, its lock cut, then one registration again
    failing (the database down a moment: a reserve meanwhile gets the gateway's 503
    ledger_unavailable); the database back. Returns the account and the lost id."""
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    alive.holds.reserve(Reservation("in-flight", account, ASSET, USDC, 300))
    process = alive.holds.lock.id
    assert process is not None
    _cut(alive, process)
    real = psycopg.connect

    def down(*args: object, **kwargs: object) -> object:
        raise psycopg.OperationalError("connection refused (the database restarts)")

    monkeypatch.setattr(psycopg, "connect", down)
    with pytest.raises(LedgerUnavailable):
        alive.holds.lock.current()
    monkeypatch.setattr(psycopg, "connect", real)
    return account, process


def test_reserve_and_release_failed_by_the_database__the_ledgers_own_sweep_releases_what_they_left__in_flight_kept(
    two: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgdepth 1: a reserve whose statement committed but whose answer was lost with its
    connection (and whose general-path retry could not reach the database) raises
    LedgerUnavailable (the gateway's 503): its hold exists all the same, and nothing the
    gateway keeps remembers it. The ledger's own next sweep releases every active hold of
    this process that no request in flight owns — that one, and one a failed release left
    active — nothing charged, while the requests in flight keep theirs. Memory: only the
    requests in flight (before, `Gateway.abandoned` kept one id per 503 of an outage)."""
    alive, other = two
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    book = alive.holds
    book.reserve(Reservation("in-flight", account, ASSET, USDC, 300))
    book.reserve(Reservation("given-up", account, ASSET, USDC, 300))
    one_statement = type(book._one)
    real_run = one_statement._run

    def committed_answer_lost(self: object, statement: object, params: dict[str, object]) -> object:
        real_run(self, statement, params)  # type: ignore[arg-type]
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    def unreachable(*args: object, **kwargs: object) -> object:
        raise OperationalError("connect", {}, psycopg.OperationalError("connection timeout expired"))

    monkeypatch.setattr(one_statement, "_run", committed_answer_lost)
    monkeypatch.setattr(GeneralHolds, "reserve", unreachable)
    monkeypatch.setattr(GeneralHolds, "release", unreachable)
    with pytest.raises(LedgerUnavailable):
        book.reserve(Reservation("lost", account, ASSET, USDC, 300))
    with pytest.raises(LedgerUnavailable):  # the gateway gives the request up
        book.release("given-up")
    monkeypatch.undo()
    assert (_status(alive, "lost"), _status(alive, "given-up")) == ("active", "active")  # made / left all the same
    assert alive.balance(account, ASSET).held == 3 * USDC
    assert set(book._mine) == {"in-flight"}  # what this process keeps: its requests in flight

    assert other.end_dead_processes() == 0  # another process's sweep: a live lock, not its to end
    assert Sweeper(alive).run_once() == 2  # its own: the two nobody owns, released
    assert (_status(alive, "lost"), _status(alive, "given-up")) == ("released", "released")
    assert _status(alive, "in-flight") == "active" and alive.balance(account, ASSET).held == USDC
    alive.holds.settle("in-flight", USDC // 4)
    assert book._mine == {} and Sweeper(alive).run_once() == 0
    assert alive.balance(account, ASSET).posted == 10 * USDC - USDC // 4


def _lost_with_its_connection(real: Any, calls: list[int]) -> Any:
    """`real` (a general-path call) that commits, then raises as SQLAlchemy does when the
    connection goes while its COMMIT's answer is on the way (the server committed)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:
            return real(*args, **kwargs)
        real(*args, **kwargs)
        lost = psycopg.OperationalError("server closed the connection unexpectedly")
        raise OperationalError("COMMIT", {}, lost, connection_invalidated=True)

    return call


def test_settle_committed_its_answer_lost__tried_again_answered_as_charged__not_503(
    two: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgbreak2: a signed request's settle always takes the general path (its lane is an
    extra). Its COMMIT landed but the connection went before the answer came back: the
    buyer was charged (usage record written) and the gateway answered 503
    ledger_unavailable — with the database answering all along, outside README's one
    exception (the database unreachable for the retry). Now the settle is tried once more
    (idempotent: the same cost finds it settled) and answered as charged; a connection
    never made is not tried again (no second connect timeout)."""
    alive, _ = two
    account = _signed(alive)
    _hold(alive, account, "signed", 0, 2 * USDC)
    calls: list[int] = []
    monkeypatch.setattr(GeneralHolds, "settle", _lost_with_its_connection(GeneralHolds.settle, calls))
    hold = alive.holds.settle("signed", USDC // 2, record=_record(0, 2 * USDC))
    assert (hold.status, hold.charged, len(calls)) == (HoldStatus.SETTLED, USDC // 2, 2)
    assert alive.balance(account, ASSET).posted == 10 * USDC - USDC // 2  # charged once

    _hold(alive, account, "unreachable", 1, 2 * USDC)
    unreached: list[int] = []

    def unreachable(*args: object, **kwargs: object) -> object:
        unreached.append(1)
        raise OperationalError("connect", {}, psycopg.OperationalError("connection timeout expired"))

    monkeypatch.setattr(GeneralHolds, "settle", unreachable)
    with pytest.raises(LedgerUnavailable):
        alive.holds.settle("unreachable", USDC // 2, record=_record(1, 2 * USDC))
    assert unreached == [1]


def test_failover_move_unreachable__request_given_up__its_hold_released_by_the_next_sweep(
    two: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgbreak2: a failover whose capacity move cannot reach the database is the gateway's
    503 ledger_unavailable, and the gateway gives the request up (no release: the hold is
    the ledger's to release). The move left the request in the book's requests in flight,
    so the ledger's own sweep never released the hold: funds, lot capacity and a signed
    lane held for its whole lifetime (README: released at the next sweep)."""
    alive, _ = two
    with alive.engine.begin() as conn:
        alive.open_lot_capacity(conn, LOT, 1_000 * USDC)
        alive.open_lot_capacity(conn, LOT + 1, 1_000 * USDC)
    account = alive.create_account().id
    fund(alive, account, ASSET, 10 * USDC)
    alive.holds.reserve(Reservation("failover", account, ASSET, USDC, 300, lots=(LotClaim(LOT, USDC),)))

    def unreachable(*args: object, **kwargs: object) -> object:
        raise OperationalError("connect", {}, psycopg.OperationalError("connection timeout expired"))

    monkeypatch.setattr(GeneralHolds, "move", unreachable)
    with pytest.raises(LedgerUnavailable):
        alive.holds.move("failover", LotClaim(LOT + 1, USDC))
    monkeypatch.undo()
    assert Sweeper(alive).run_once() == 1  # before: 0, active until its lifetime
    assert _status(alive, "failover") == "released"
    assert alive.balance(account, ASSET).held == 0
