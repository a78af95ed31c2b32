"""Alembic environment for the ledger.

Run by `promptex.ledger.db.upgrade`, which hands over a connection inside a
transaction. From the command line: `alembic -c <ini> -x url=sqlite:///ledger.sqlite3 upgrade head`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from promptex.ledger.db import VERSION_TABLE, create_ledger_engine
from promptex.ledger.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not _url:
        raise SystemExit("give the ledger's database URL: alembic -x url=sqlite:///ledger.sqlite3 …")
    with create_ledger_engine(_url).begin() as _conn:
        _run(_conn)
