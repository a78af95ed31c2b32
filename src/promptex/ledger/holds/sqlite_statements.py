"""Statements run straight on SQLite's DBAPI cursor, compiled once: the fast paths'
(`holds.sqlite`, `holds.lanes_sqlite`) way around SQLAlchemy's per-statement work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

_NAMED = sqlite.dialect(paramstyle="named")
_COMPILED: dict[int, tuple[str, dict[str, Any]]] = {}


def run(cur: Any, conn: Connection, stmt: Any, params: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """Execute `stmt` on the raw cursor, compiled once (with its literal values)."""
    compiled = _COMPILED.get(id(stmt))
    if compiled is None:
        done = stmt.compile(dialect=_NAMED, column_keys=list(keys) if keys else None)
        defaults = {
            name: value for name, value in done.params.items() if name not in (keys or ()) and value is not None
        }
        compiled = _COMPILED[id(stmt)] = (str(done), defaults)
    text, defaults = compiled
    args = {**defaults, **params} if defaults else params
    try:
        cur.execute(text, args)
    except conn.dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy would: its exception types (callers catch IntegrityError).
        raise DBAPIError.instance(text, args, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect) from exc


def cursor(conn: Connection) -> Any:
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
