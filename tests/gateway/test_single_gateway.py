"""`gateway.single`'s count of the gateway apps serving an SQLite ledger in this process:
only the first (no other process holds the file's lock, no other app of this one serves it)
may take every active hold for a dead process's and end it (`Ledger.expire_orphans`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptex.config import Settings
from promptex.gateway import create_app, limits, single
from promptex.gateway.limits import LimitCounters, Plan
from promptex.gateway.store import GatewayStore
from promptex.ledger import ExtraTake, Ledger, Reservation
from promptex.ledger.holds.capacity import LotClaim
from promptex.protocol.units import USD_MICRO as USDC
from promptex.sealing.envelope import load_master_keys
from promptex.serving import ServerThread

from .conftest import Fake, Harness
from .test_limits import HOLD, TOKENS, fund


def test_serve__only_the_first_app_of_the_lock_holder_is_alone__none_without_a_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    claimed = single.claim(url)  # the CLI's claim
    again = single.claim(url)  # the app's
    try:
        assert claimed == again is not None
        assert single.serve(again) is True
        assert single.serve(again) is False  # a second app of this process: the first's holds are live
        single.unserve(again)
        assert single.serve(again) is False  # the first still serves
        single.unserve(again)
        single.unserve(again)
        assert single.serve(again) is True  # none serves any more
        single.unserve(again)
    finally:
        single.release(again)
        single.release(claimed)
    with pytest.raises(RuntimeError):
        single.serve(claimed)  # not claimed any more
    # PostgreSQL and in-memory SQLite have no lock: several processes may serve, nobody is alone.
    assert single.claim("postgresql://u@127.0.0.1/ledger") is None
    assert single.serve(None) is False
    assert single.serve(single.claim("sqlite://")) is False


def test_restarted_gateway__a_dead_ones_hold_took_a_keys_limits__it_starts_and_ends_the_hold(
    settings: Settings, tmp_path: Path
) -> None:
    """Found by gbreak (session 9): a starting gateway ended a dead one's holds
    (`expire_orphans`) before it had registered its limits counter (`LimitCounters`, made by
    `Gateway`): a hold that took a key's budget or limits could not be ended ("a hold took
    the extra counter 'limits', which this process has not registered") and the gateway did
    not start — nor any restart after it, the hold already marked expired and never swept."""
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    dead = Ledger.open(url, sqlite_synchronous="NORMAL")  # the killed gateway's view
    counters = LimitCounters(dead.clock)
    dead.holds.register(counters)
    try:
        account = fund(dead, 10 * USDC)
        key = GatewayStore(dead.engine).add_api_key(
            "h" * 64, "px-limited", account, dead.clock(), budget=("USDC", 2 * HOLD)
        )
        counters.plan("in-flight", Plan([], TOKENS, key.id))
        dead.holds.reserve(
            Reservation("in-flight", account, "USDC", HOLD, 300, extras=(ExtraTake(limits.NAME, TOKENS),))
        )
        counters.plan("in-flight", None)
    finally:
        dead.close()
    book = Ledger.open(url, sqlite_synchronous="NORMAL")
    try:
        app = create_app(settings, ledger=book)
        with ServerThread(app, **app.uvicorn_options()):
            hold = book.hold("in-flight")
            assert hold is not None and hold.status.value == "expired"  # long before its 300 s
            assert book.balance(account, "USDC").held == 0
        book.check()
    finally:
        book.close()


def test_restarted_gateway__a_dead_ones_hold_took_a_lots_whole_capacity__the_lot_serves_at_once(
    settings: Settings, tmp_path: Path, fake: Fake
) -> None:
    """The lots a starting gateway routes to are read after it ended the dead process's
    holds (or read again): read before, a lot the dead holds had filled was not served until
    the next refresh (`gateway_lot_refresh_seconds`), though its capacity was back."""
    book = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", sqlite_synchronous="NORMAL")
    try:
        keys = load_master_keys(None, settings.gateway_master_key_file)
        dead = Harness(book, GatewayStore(book.engine), keys, settings, "", None)
        dead.refresh = lambda: None  # type: ignore[method-assign]  # no gateway serves yet
        lot = dead.add_lot(fake, face_value=10 * USDC)
        headroom = book.lot_capacities()[lot].headroom
        account = fund(book, 10 * USDC)
        book.holds.reserve(Reservation("in-flight", account, "USDC", HOLD, 300, lots=(LotClaim(lot, headroom),)))
        assert book.lot_capacities()[lot].headroom == 0  # the killed gateway's request filled it
        app = create_app(settings, ledger=book)
        with ServerThread(app, **app.uvicorn_options()):
            assert [live.id for live in app.state.gateway.registry.candidates("openai", "listed")] == [lot]
        book.check()
    finally:
        book.close()
