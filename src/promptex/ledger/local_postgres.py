"""A throwaway PostgreSQL server from the machine's own binaries, for tests and benchmarks.

    with LocalPostgres() as pg:
        url = pg.create_database("ledger_test")   # postgresql://postgres@127.0.0.1:PORT/ledger_test

`initdb` refuses to run as root, so as root the cluster belongs to the `postgres`
system user and every server command runs through `runuser -u postgres --`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg

SERVER_PACKAGE = "postgresql"  # Debian's package; on Debian 12 it brings postgresql-15 (initdb, pg_ctl, postgres)
_FAST_UNSAFE = ("-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")


class PostgresUnavailable(RuntimeError):
    """The server binaries are not installed, or the server would not start."""


def find_bin_dir() -> Path:
    """The directory holding `initdb` and `pg_ctl`: PATH first, then Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3].split(".")[0]), reverse=True
    )
    for pg_ctl in candidates:
        if (Path(pg_ctl).parent / "initdb").exists():
            return Path(pg_ctl).parent
    raise PostgresUnavailable(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found; `make test` installs them "
        f"(or: apt-get install {SERVER_PACKAGE})"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """Start a fresh cluster in a temporary directory on a free loopback port; `stop()` removes it all.

    `durable=False` turns off fsync and synchronous commit: fast for tests, unsafe for data.
    """

    def __init__(self, *, durable: bool = False, max_connections: int = 200) -> None:
        self.bin_dir = find_bin_dir()
        self.durable = durable
        self.max_connections = max_connections
        self.port = 0
        self.root: Path | None = None
        self._as_postgres = os.geteuid() == 0

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> LocalPostgres:
        root = Path(tempfile.mkdtemp(prefix="promptex-pg-"))
        self.root = root
        if self._as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root needs the `postgres` system user to own the cluster"
                ) from None
            os.chown(root, user.pw_uid, user.pw_gid)
        data = root / "data"
        done = self._run(
            str(self.bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"
        )
        if done.returncode:
            self._cleanup()
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        self.port = _free_port()
        options = [
            f"-p {self.port}",
            f"-k {root}",
            "-c listen_addresses=127.0.0.1",
            f"-c max_connections={self.max_connections}",
        ]
        if not self.durable:
            options += _FAST_UNSAFE
        done = self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            " ".join(options),
            "-l",
            str(root / "log"),
            "-w",
            "start",
        )
        if done.returncode:
            log = (root / "log").read_text(errors="replace")[-2000:] if (root / "log").exists() else ""
            self._cleanup()
            raise PostgresUnavailable(f"PostgreSQL did not start: {done.stderr.strip()}\n{log}")
        return self

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE `name` (optionally from `template`); returns its URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            suffix = f" TEMPLATE {template}" if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}'.encode())
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    def stop(self) -> None:
        if self.root is not None and (self.root / "data" / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        self._cleanup()

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
