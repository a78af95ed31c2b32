"""The redemption agent's fixtures for tests/offchain (the ledger fixtures, `ledger`,
`ledger_url`, `postgres` and `clock`, come from the plugin fixtures/ledger.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from promptex.ledger import Ledger

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
