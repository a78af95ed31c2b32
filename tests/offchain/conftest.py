"""Ledger fixtures: every ledger test runs on SQLite and on a throwaway PostgreSQL.

The PostgreSQL server starts once per session (only if a test asks for it) from the
machine's binaries; each test gets a fresh database cloned from a migrated template.
Without the binaries the tests FAIL: CI must run both databases (`make test` installs
them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from promptex.ledger import Ledger
from promptex.ledger.db import create_ledger_engine, upgrade
from promptex.ledger.local_postgres import LocalPostgres, PostgresUnavailable

TEMPLATE = "ledger_template"
_databases = itertools.count()


class Clock:
    """A clock the test moves by hand (unix seconds)."""

    def __init__(self, now: int = 1_800_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server for the whole session, with a migrated template database."""
    try:
        server = LocalPostgres().start()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        engine = create_ledger_engine(server.create_database(TEMPLATE))
        upgrade(engine)
        engine.dispose()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty ledger database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('ledger')}/ledger.sqlite3"
        return
    server: LocalPostgres = request.getfixturevalue("postgres")
    name = f"ledger_{next(_databases)}"
    url = server.create_database(name, template=TEMPLATE)
    yield url
    server.drop_database(name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    """A ledger whose books must balance when the test ends."""
    book = Ledger.open(ledger_url, clock=clock, chain_id=31337, sqlite_synchronous="NORMAL")
    yield book
    try:
        book.check()
    finally:
        book.close()


# ─── Redemption agent ────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def agent_db_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite ledger, copied for each agent test (migrating is the slow part)."""
    path = tmp_path_factory.mktemp("agent-template") / "ledger.sqlite3"
    with Ledger.open(f"sqlite:///{path}", sqlite_synchronous="NORMAL"):
        pass
    return str(path)


@pytest.fixture(scope="session")
def agent_billing() -> Iterator[tuple[str, object]]:
    """One fake billing API for the agent tests (each test gets a fresh configuration)."""
    from agent_fakes import serving_billing
    from agent_world import billing_config

    with serving_billing(billing_config()) as (url, app):
        yield url, app


@pytest.fixture
def agent_world(agent_db_template: str, agent_billing: tuple[str, object], tmp_path) -> Iterator[object]:  # noqa: ANN001
    import shutil

    from agent_world import billing_config, make_world

    db = tmp_path / "ledger.sqlite3"
    shutil.copy(agent_db_template, db)
    url, app = agent_billing
    # A new object, not a reset in place: a slow request left over from the previous
    # test (one a client timed out on) still holds the old one and cannot touch this.
    app.state.config = config = billing_config()  # type: ignore[attr-defined]
    world = make_world(db, url, config)
    yield world
    world.ledger.close()
