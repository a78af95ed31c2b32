"""The gateway checkpoints a SQLite ledger's WAL itself, off the request path."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from promptex.gateway import checkpoints
from promptex.ledger import Ledger


def test_take_over__file_sqlite__no_automatic_checkpoints_and_a_checkpoint_runs(tmp_path: Path) -> None:
    with Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", sqlite_synchronous="NORMAL") as ledger:
        assert checkpoints.take_over(ledger.engine)
        with ledger.engine.connect() as conn:
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0
        ledger.create_account()
        checkpoints.checkpoint(ledger.engine)
        assert (tmp_path / "ledger.sqlite3-wal").exists()
        ledger.check()


def test_take_over__memory_sqlite__left_alone() -> None:
    with Ledger.open("sqlite://") as ledger:
        assert not checkpoints.take_over(ledger.engine)
