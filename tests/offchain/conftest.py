"""The redemption agent's fixtures for tests/offchain (the ledger fixtures, `ledger`,
`ledger_url`, `postgres` and `clock`, come from the plugin fixtures/ledger.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from promptex.ledger import Ledger
from promptex.ledger.local_postgres import LocalPostgres

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


# ─── The coordinator's fake chain ─────────────────────────────────────────────


@pytest.fixture
def chain():  # noqa: ANN201
    """A fake chain with the coordinator and breaker tests' listed lot (`LOT`) open: their
    `chain` (in tests/offchain it stands for ape's, which no test here uses; a module that
    needs another chain defines its own, e.g. test_breaker_lease's)."""
    from coordinator_fakes import FakeChain
    from test_coordinator_refund_taken_back import LOT

    from promptex.protocol.escrow import KIND_LISTED

    fake = FakeChain()
    fake.open_lot(LOT, KIND_LISTED)
    return fake


# ─── Gateway processes on PostgreSQL ─────────────────────────────────────────

_process_databases = itertools.count()


@pytest.fixture
def two(postgres: LocalPostgres, clock) -> Iterator[tuple[Ledger, Ledger]]:  # noqa: ANN001
    """Two ledgers (two gateway processes' books) on one fresh PostgreSQL database."""
    name = f"processes_{next(_process_databases)}"
    url = postgres.create_database(name, template="ledger_template")
    # The template is migrated: no migration check (it took a second a ledger on a busy machine).
    first = Ledger.open(url, clock=clock, migrate=False)
    second = Ledger.open(url, clock=clock, migrate=False)
    try:
        yield first, second
        first.check()
    finally:
        first.close()
        second.close()
        postgres.drop_database(name)
