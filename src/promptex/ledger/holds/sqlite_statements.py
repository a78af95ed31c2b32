"""Statements run straight on SQLite's DBAPI cursor, compiled once: the fast paths'
(`holds.sqlite`, `holds.lanes_sqlite`) way around SQLAlchemy's per-statement work.

Their parameters are bound by position (`?`), not by name: for a mapping, Python's
sqlite3 module asks SQLite each parameter's name with the GIL released around the
call, one release and re-take per parameter (on the ledger thread, each a chance to
hand the GIL to the event loop and back), and makes a str of every name.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

_QMARK = sqlite.dialect(paramstyle="qmark")
_COMPILED: dict[int, tuple[str, Callable[[dict[str, Any]], Sequence[Any]], dict[str, Any]]] = {}


def run(cur: Any, conn: Connection, stmt: Any, params: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """Execute `stmt` on the raw cursor, compiled once (with its literal values)."""
    compiled = _COMPILED.get(id(stmt))
    if compiled is None:
        done = stmt.compile(dialect=_QMARK, column_keys=list(keys) if keys else None)
        defaults = {
            name: value for name, value in done.params.items() if name not in (keys or ()) and value is not None
        }
        compiled = _COMPILED[id(stmt)] = (str(done), _in_order(done.positiontup or ()), defaults)
    text, in_order, defaults = compiled
    args = in_order({**defaults, **params} if defaults else params)
    try:
        cur.execute(text, args)
    except conn.dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy would: its exception types (callers catch IntegrityError).
        raise DBAPIError.instance(text, args, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect) from exc


def _in_order(names: Sequence[str]) -> Callable[[dict[str, Any]], Sequence[Any]]:
    """The statement's parameters, from a mapping by name, in the order of its `?`s."""
    if not names:
        return lambda _: ()
    if len(names) == 1:
        name = names[0]
        return lambda params: (params[name],)
    return operator.itemgetter(*names)


def cursor(conn: Connection) -> Any:
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
