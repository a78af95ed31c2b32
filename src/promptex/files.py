"""Files written whole or not at all: the market's profile and `ready.json`, a session
grant, a deployment record (`write_whole`); a file lock that names its holder: a market's
folder and ledger held by `promptex up`, an SQLite ledger by its one gateway process
(`lock_exclusively`)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def write_whole(path: Path, text: str, mode: int = 0o644) -> None:
    """`text` into `path` whole or not at all: written beside it with `mode` from the start,
    flushed to disk, renamed over it, the rename flushed too (a power loss leaves the old
    file or the new one, never an empty or half-written one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def lock_exclusively(path: Path, owner: str) -> tuple[int | None, str]:
    """(the open file, "") with `path` locked for this process and `owner` written in it;
    (None, what the holder wrote, or "?") when another process holds it. The lock goes with
    the process, also on kill -9."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "?"
        os.close(fd)
        return None, holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{owner}\n".encode(), 0)
    return fd, ""
