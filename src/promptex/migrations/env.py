"""Alembic environment for the database every store shares (see `promptex.migrations`).

Run by `promptex.ledger.db.upgrade`, which hands over a connection inside a transaction
(applying the scripts needs no table definitions, so nothing but the ledger is imported).
From the command line: `alembic -c <ini> -x url=sqlite:///ledger.sqlite3 upgrade head`
(or `revision --autogenerate`, against every package's tables).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, MetaData

from promptex.ledger.db import VERSION_TABLE, create_ledger_engine


def _run(connection: Connection, target_metadata: MetaData | None) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection, context.config.attributes.get("target_metadata"))
else:
    from promptex.migrations import metadata

    _url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not _url:
        raise SystemExit("give the ledger's database URL: alembic -x url=sqlite:///ledger.sqlite3 …")
    with create_ledger_engine(_url).begin() as _conn:
        _run(_conn, metadata)
