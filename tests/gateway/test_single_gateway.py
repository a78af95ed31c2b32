"""`gateway.single`'s count of the gateway apps serving an SQLite ledger in this process:
only the first (no other process holds the file's lock, no other app of this one serves it)
may take every active hold for a dead process's and end it (`Ledger.expire_orphans`)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from promptex.config import Settings
from promptex.gateway import create_app, limits, single
from promptex.gateway.limits import LimitCounters, Plan
from promptex.gateway.store import GatewayStore
from promptex.ledger import ExtraTake, Ledger, Reservation
from promptex.ledger.db import create_ledger_engine
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


def _opened(url: str) -> Path | None:
    """The file SQLite itself opened for `url` (PRAGMA database_list), None in memory."""
    engine = create_ledger_engine(url, sqlite_synchronous="NORMAL")
    try:
        with engine.connect() as conn:
            name = next(row[2] for row in conn.execute(text("PRAGMA database_list")) if row[1] == "main")
    finally:
        engine.dispose()
    return Path(name).resolve() if name else None


def _held_elsewhere(lock: Path) -> bool:
    """Another open of the lock file cannot take it (flock is per open file: as another
    process would find it)."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.parametrize(
    "form",
    [
        "sqlite:///~/ledger.db",  # the home folder, as the lock always read it (gbreak 1)
        "sqlite:///./~/ledger.db",  # a folder named `~` in the working directory
        "sqlite:///data/ledger.db",
        "sqlite:///file:data/ledger.db?uri=true",  # URI filenames took no lock (gbreak 2)
        "sqlite:///file:data/ledger.db?mode=rwc&uri=true",
        "sqlite:///file://localhost/{cwd}/data/b%20c.db?uri=true",
        "sqlite:///file:/{cwd}/data/b%20c.db?uri=true&cache=shared",
    ],
)
def test_claim__each_form_of_an_sqlite_url__locks_the_file_sqlite_opens(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gbreak (session 9): the lock expanded `~`, SQLite opened `./~/…` (with such a folder in
    the working directory, `sqlite:///~/x.db` and `sqlite:////srv/~/x.db` were one database
    with two locks: a second gateway started and ended the first's live holds); a URI
    filename took no lock at all. Now the lock, the engine and the folder made for it agree."""
    home, cwd = tmp_path / "home", tmp_path / "srv"
    (cwd / "~").mkdir(parents=True)
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    url = form.format(cwd=str(cwd).lstrip("/"))
    lock = single.claim(url)
    try:
        opened = _opened(url)
        assert lock is not None and opened is not None
        assert lock == opened.with_name(opened.name + single.LOCK_SUFFIX) and _held_elsewhere(lock)
        assert opened.is_relative_to(home if "///~" in form else cwd)
    finally:
        single.release(lock)


def test_claim__sqlite_urls_in_memory__no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                "sqlite:///file:mem?mode=memory&cache=shared&uri=true"):  # fmt: skip
        assert single.claim(url) is None and _opened(url) is None, url
    assert list(tmp_path.iterdir()) == []


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
