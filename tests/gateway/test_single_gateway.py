"""`gateway.single`'s count of the gateway apps serving an SQLite ledger in this process:
only the first (no other process holds the file's lock, no other app of this one serves it)
may take every active hold for a dead process's and end it (`Ledger.expire_orphans`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptex.gateway import single


def test_serve__only_the_first_app_of_the_lock_holder_is_alone__none_without_a_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    claimed = single.claim(url)  # the CLI's claim
    again = single.claim(url)  # the app's
    try:
        assert claimed == again is not None
        assert single.serve(again) is True
        assert single.serve(again) is False  # a second app of this process: the first's holds are live
        single.unserve(again)
        assert single.serve(again) is False  # the first still serves
        single.unserve(again)
        single.unserve(again)
        assert single.serve(again) is True  # none serves any more
        single.unserve(again)
    finally:
        single.release(again)
        single.release(claimed)
    with pytest.raises(RuntimeError):
        single.serve(claimed)  # not claimed any more
    # PostgreSQL and in-memory SQLite have no lock: several processes may serve, nobody is alone.
    assert single.claim("postgresql://u@127.0.0.1/ledger") is None
    assert single.serve(None) is False
    assert single.serve(single.claim("sqlite://")) is False
