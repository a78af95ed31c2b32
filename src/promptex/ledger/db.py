"""Engines for the ledger's two databases, and bringing a schema up to date.

SQLite (the zero-configuration default) runs in WAL mode with a busy timeout, and every
write transaction starts with BEGIN IMMEDIATE: writers queue for the one write lock
instead of failing when a read turns into a write. PostgreSQL (for many gateway
processes) runs at READ COMMITTED, where a conditional UPDATE waits for the row's
lock and re-checks its WHERE clause on the latest version.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import asbool

from promptex.ledger.amounts import register_sqlite_functions

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

READ_ONLY = "promptex_read_only"  # execution option: a SQLite transaction that only reads
VERSION_TABLE = "ledger_schema_version"
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")
_MIGRATION_LOCK = 0x70726F6D  # PostgreSQL advisory lock key: one migrating process at a time
CONNECT_TIMEOUT = 5  # seconds a new PostgreSQL connection may take (`Settings.ledger_connect_timeout_seconds`)


def create_ledger_engine(
    url: str,
    *,
    pool_size: int = 10,
    busy_timeout_ms: int = 30_000,
    sqlite_synchronous: str = "FULL",
    connect_timeout: int = CONNECT_TIMEOUT,
) -> Engine:
    """An engine for a `sqlite:///…` or `postgresql://…` URL, set up for the ledger.

    `sqlite_synchronous` FULL syncs the WAL on every commit (a commit survives power
    loss); NORMAL syncs at checkpoints only (a commit survives a crash of the process
    but may be lost with power): much faster, and what the tests use.

    `connect_timeout` (PostgreSQL, seconds) goes into the engine's URL unless the URL sets
    its own, so every connection made from that URL has it: the pool's, and those the
    holds open themselves (a process's lock connection, the ledger threads').
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"sqlite_synchronous is one of {', '.join(SQLITE_SYNCHRONOUS)}")
        return _sqlite_engine(url, busy_timeout_ms, sqlite_synchronous)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if "connect_timeout" not in parsed.query:
            parsed = parsed.update_query_dict({"connect_timeout": str(connect_timeout)})
        return create_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    raise ValueError(f"the ledger runs on SQLite or PostgreSQL, not {backend!r} ({parsed.render_as_string()})")


def _sqlite_url(url: str | URL) -> URL:
    """An SQLite URL as the ledger opens it: a plain path's leading `~` is the home folder
    (SQLite and SQLAlchemy would open a folder named `~` in the working directory), so the
    file the engine opens, the folder made for it and the gateway's lock (`sqlite_path`)
    are one. A URI filename (`?uri=true`) is SQLite's to read: no `~` there."""
    parsed = make_url(url)
    database = parsed.database or ""
    if database.startswith("~") and not _uri(parsed):
        parsed = parsed.set(database=os.path.expanduser(database))
    return parsed


def _uri(parsed: URL) -> bool:
    """`?uri=true`: the filename is SQLite's URI (as SQLAlchemy's pysqlite dialect reads it)."""
    uri = parsed.query.get("uri", "false")
    return bool(asbool(uri if isinstance(uri, str) else uri[-1]))


def absolute_sqlite_url(url: str) -> str:
    """An SQLite URL naming the file its engine opens (`sqlite_path`) by an absolute path,
    so a process started in another folder, or by another user, opens the same file; a URI
    filename keeps its parameters. Other URLs (PostgreSQL, in memory) unchanged."""
    parsed = _sqlite_url(url)
    path = sqlite_path(parsed)
    if path is None:
        return url
    uri = (parsed.database or "").startswith("file:") and _uri(parsed)
    return parsed.set(database=f"file:{quote(str(path))}" if uri else str(path)).render_as_string(hide_password=False)


def sqlite_path(url: str | URL) -> Path | None:
    """The file an SQLite URL's engine opens, resolved (symlinks, `..`): None for PostgreSQL
    and an in-memory database. The filename is SQLAlchemy's own (its pysqlite dialect's
    connect arguments: a relative path against the working directory); a URI filename
    (`sqlite:///file:path?uri=true`) is read as SQLite reads one (`file:` then an optional
    empty or `localhost` authority, the path percent-decoded; `mode=memory` or `:memory:`
    is in memory). What the gateway's one-process lock guards (`gateway.single`)."""
    parsed = _sqlite_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    args, options = SQLiteDialect_pysqlite().create_connect_args(parsed)
    filename = str(args[0])
    if options.get("uri") and filename.startswith("file:"):
        parts = urlsplit(filename)
        query = parse_qs(parts.query)
        if parts.netloc not in ("", "localhost") or "memory" in query.get("mode", ()):
            return None  # a remote authority SQLite refuses to open, or in memory
        filename = unquote(parts.path)
    if filename in ("", ":memory:"):
        return None
    return Path(filename).resolve()


def _sqlite_engine(url: str, busy_timeout_ms: int, synchronous: str) -> Engine:
    parsed = _sqlite_url(url)
    database = sqlite_path(parsed)
    in_memory = database is None
    connect_args: dict[str, Any] = {"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
    if database is None:
        # One connection, or every connection would see its own empty database.
        engine = create_engine(parsed, connect_args=connect_args, poolclass=StaticPool)
    else:
        database.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args=connect_args, pool_size=5, max_overflow=59)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not sqlite3, emits BEGIN
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        register_sqlite_functions(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        statement = "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        dbapi = conn.connection.dbapi_connection
        if dbapi.in_transaction:  # type: ignore[union-attr]
            return  # begun on the driver already (`Ledger`'s pinned connection): join it
        try:
            # On the driver: SQLAlchemy's execution machinery for this one fixed statement
            # was a fifth of a hot-path transaction's CPU.
            dbapi.execute(statement)  # type: ignore[union-attr]
        except conn.dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy would raise it (callers catch its types)
            error = conn.dialect.loaded_dbapi.Error
            raise DBAPIError.instance(statement, (), exc, error, dialect=conn.dialect) from exc

    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the one environment every store's tables share:
    `promptex/migrations/`, found as a directory (importing that package would import
    every service's schema; running its scripts does not)."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("promptex").joinpath("migrations")))
    config.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database (every store's tables) to `revision`; safe to call from many
    processes at once."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(alembic_config(conn), revision)


@functools.cache
def _scripts() -> ScriptDirectory:
    """This code's migration scripts (read once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this code's migrations end at."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def check_current(engine: Engine) -> None:
    """Refuse (SchemaNotCurrent, one line saying what to do) a database whose schema is not
    this code's head: none yet, behind it or ahead of it. Never migrates: a command run beside
    the market's services leaves their database's schema to them (they migrate it when they
    start), so a newer promptex's command no longer changes it under older running services."""
    from alembic.util import CommandError

    from promptex.ledger.errors import SchemaNotCurrent

    at, head = current_revision(engine), head_revision()
    if at == head:
        return
    if at is None:
        raise SchemaNotCurrent("the ledger has no schema yet: start the market first (`promptex up`, or its services)")
    try:
        _scripts().get_revision(at)
    except CommandError:
        raise SchemaNotCurrent(
            f"the ledger's schema is at revision {at}, newer than this promptex knows (its newest is {head}): "
            "run this with the promptex the market runs"
        ) from None
    raise SchemaNotCurrent(
        f"the ledger's schema is at revision {at}, this promptex's is {head}: restart the market's services "
        "(`promptex up`, or each service), which bring it up to date, then run this again (a command does not "
        "migrate the ledger under running services)"
    )


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
