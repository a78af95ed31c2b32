"""One gateway process per SQLite ledger.

SQLite has one writer at a time: the gateway gives it one ledger thread and reserves lot
capacity on the lots' rows, which is right for one process. Several gateway processes
serve on PostgreSQL. A second gateway process on the same SQLite file refuses to start,
in one line, instead of queueing every request on the file's write lock: it cannot take
the exclusive lock (`flock`) on `<database>.gateway-lock`, which the first holds until it
exits — also when it is killed, since the kernel drops the lock with the process.
Within one process the claim is counted, so the CLI and the app it serves may both take it.

So a gateway app that starts serving an SQLite ledger while no other app of its process
serves it (`serve`) knows every active hold there is a dead process's: it ends them at once
(`Ledger.expire_orphans`) instead of leaving the crashed gateway's holds — their funds,
their lots' capacity, a signed lane busy (`409 lane_busy`) — until they expire, up to
`gateway_hold_ttl_seconds` (300 s) after the crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

from promptex.config import ConfigurationError
from promptex.files import lock_exclusively
from promptex.ledger.db import sqlite_path

LOCK_SUFFIX = ".gateway-lock"
_held: dict[Path, tuple[int, int]] = {}  # lock file → (descriptor, claims in this process)
_serving: dict[Path, int] = {}  # lock file → gateway apps of this process serving its ledger
_lock = threading.Lock()


def sqlite_file(url: str) -> Path | None:
    """The ledger's SQLite file, as its engine opens it (`ledger.db.sqlite_path`: a leading
    `~` is the home folder, a URI filename is read as SQLite reads it), or None (PostgreSQL,
    an in-memory database)."""
    return sqlite_path(url)


def claim(url: str) -> Path | None:
    """Take the ledger's one-gateway lock (SQLite files only); the path to `release` it
    with. Raises ConfigurationError when another process holds it."""
    database = sqlite_file(url)
    if database is None:
        return None
    path = database.with_name(database.name + LOCK_SUFFIX)
    with _lock:
        held = _held.get(path)
        if held is not None:
            _held[path] = (held[0], held[1] + 1)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, holder = lock_exclusively(path, f"{os.getpid()}")
        if fd is None:
            who = f"another gateway process (pid {holder})" if holder.isdigit() else "another gateway process"
            raise ConfigurationError(
                f"{who} serves the SQLite ledger {database}; SQLite takes one gateway process per file: "
                "stop it, or run several on PostgreSQL (PROMPTEX_LEDGER_URL=postgresql://…)"
            )
        _held[path] = (fd, 1)
    return path


def serve(path: Path | None) -> bool:
    """A gateway app of this process starts serving the claimed ledger (`claim`'s path);
    True when it is the only one: no live process can then have a hold on that ledger in
    flight (no other process holds the lock, none of this one serves), so every active
    hold there is a dead process's (`Ledger.expire_orphans`). False without a lock
    (PostgreSQL, an in-memory database). `unserve` when it stops."""
    if path is None:
        return False
    with _lock:
        if path not in _held:
            raise RuntimeError(f"{path} is not claimed by this process")
        count = _serving.get(path, 0)
        _serving[path] = count + 1
        return count == 0


def unserve(path: Path | None) -> None:
    if path is None:
        return
    with _lock:
        count = _serving.get(path, 0)
        if count <= 1:
            _serving.pop(path, None)
        else:
            _serving[path] = count - 1


def release(path: Path | None) -> None:
    if path is None:
        return
    with _lock:
        held = _held.get(path)
        if held is None:
            return
        fd, count = held
        if count > 1:
            _held[path] = (fd, count - 1)
            return
        del _held[path]
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
