"""`promptex up`'s market state: anvil keeps its chain in the market's folder, and
`--fresh` archives the folder, the SQLite ledger (with its WAL files) and the deployment
record before starting clean (a PostgreSQL ledger is refused: nothing to move)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from eth_account import Account

from promptex.up import (
    ANVIL_STATE,
    DEMO_SELLERS,
    Service,
    Supervisor,
    UpError,
    anvil_state_args,
    archive_market,
    demo_finalizers,
)

NOW = datetime(2026, 12, 6, 13, 45, 7, tzinfo=UTC)


def test_anvil_state_args__load_dump_and_keep_history_in_the_folder(tmp_path: Path) -> None:
    args = anvil_state_args(tmp_path / "market", 10)
    assert args == ["--state", str(tmp_path / "market" / ANVIL_STATE), "--state-interval", "10",
                    "--preserve-historical-states"]  # fmt: skip
    assert (tmp_path / "market").is_dir()


def test_archive_market__everything_moved_into_one_dated_archive(tmp_path: Path) -> None:
    market, deployments = tmp_path / "market", tmp_path / "deployments"
    market.mkdir()
    (market / ANVIL_STATE).write_text("{}")
    deployments.mkdir()
    (deployments / "local.json").write_text("{}")
    for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"):
        (tmp_path / name).write_text(name)

    archive = archive_market(market, f"sqlite:///{tmp_path / 'ledger.sqlite3'}", deployments / "local.json", NOW)

    assert archive == tmp_path / "market.archived-20261206T134507Z"
    assert sorted(p.name for p in archive.iterdir()) == [
        "ledger.sqlite3", "ledger.sqlite3-shm", "ledger.sqlite3-wal", "local.json", "market",
    ]  # fmt: skip
    assert (archive / "market" / ANVIL_STATE).exists()
    assert not market.exists() and not (tmp_path / "ledger.sqlite3").exists()
    assert not (deployments / "local.json").exists()


def test_archive_market__ledger_inside_the_folder__moved_once(tmp_path: Path) -> None:
    market = tmp_path / "market"
    market.mkdir()
    (market / "ledger.sqlite3").write_text("ledger")
    archive = archive_market(market, f"sqlite:///{market / 'ledger.sqlite3'}", tmp_path / "none.json", NOW)
    assert archive is not None and (archive / "market" / "ledger.sqlite3").read_text() == "ledger"


def test_archive_market__nothing_there__nothing_archived(tmp_path: Path) -> None:
    assert archive_market(tmp_path / "market", f"sqlite:///{tmp_path}/l.sqlite3", tmp_path / "d.json", NOW) is None
    assert list(tmp_path.iterdir()) == []


def test_archive_market__postgresql_ledger__refused_before_moving_anything(tmp_path: Path) -> None:
    (tmp_path / "market").mkdir()
    with pytest.raises(UpError, match="--fresh archives a SQLite ledger; this market's is postgresql"):
        archive_market(tmp_path / "market", "postgresql://u@h/db", tmp_path / "d.json", NOW)
    assert (tmp_path / "market").exists()


def test_demo_finalizers__one_per_demo_seller_with_its_own_key_in_its_environment(tmp_path: Path) -> None:
    """`promptex up` runs `seller finalize --watch` for each demo seller, signed with that
    seller's key, which reaches the process and no other service."""
    finalizers = demo_finalizers()
    keys = {Account.from_key(f.env["PROMPTEX_SELLER_PRIVATE_KEY"]).address for f in finalizers}
    assert keys == set(DEMO_SELLERS.values())
    assert all(f.argv[-4:-1] == ["seller", "finalize", "--watch"] for f in finalizers)
    out = tmp_path / "seen"
    seen = "os.environ.get('PROMPTEX_SELLER_PRIVATE_KEY', '-')"
    probe = f"import os, pathlib; pathlib.Path({str(out)!r}).write_text({seen})"
    supervisor = Supervisor({"PATH": os.environ["PATH"]})
    try:
        supervisor.start(Service("probe", [sys.executable, "-c", probe], env=finalizers[0].env))
        assert supervisor.services[0].process is not None and supervisor.services[0].process.wait(30) == 0
    finally:
        supervisor.stop_all()
    assert out.read_text() == finalizers[0].env["PROMPTEX_SELLER_PRIVATE_KEY"]
    assert "PROMPTEX_SELLER_PRIVATE_KEY" not in supervisor.env


def test_stop_all__the_chain_stops_after_every_service_that_uses_it(tmp_path: Path) -> None:
    """Ctrl-C: a coordinator or agent mid-pass must not lose its node under it (it printed a
    connection-reset traceback on every stop): the chain gets SIGTERM only once the others exited."""
    gone = tmp_path / "user-gone"
    seen = tmp_path / "chain-saw"
    # The user takes a second to finish its pass after SIGTERM; the chain notes whether it had.
    user = (
        "import pathlib, signal, sys, time\n"
        f"def stop(*_): time.sleep(1); pathlib.Path({str(gone)!r}).write_text('x'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "while True: time.sleep(0.05)\n"
    )
    chain = (
        "import pathlib, signal, sys, time\n"
        f"def stop(*_):\n    pathlib.Path({str(seen)!r}).write_text(str(pathlib.Path({str(gone)!r}).exists()))\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "while True: time.sleep(0.05)\n"
    )
    supervisor = Supervisor({"PATH": os.environ["PATH"]})
    try:
        supervisor.start(Service("anvil", [sys.executable, "-c", chain], stops_last=True))
        supervisor.start(Service("coordinator", [sys.executable, "-c", user]))
        time.sleep(0.5)  # both installed their handlers
    finally:
        supervisor.stop_all()
    assert seen.read_text() == "True"


def _stopping_script(gone: Path, ready: Path, *, seen: Path | None = None) -> str:
    """A service that stops a second after SIGINT or SIGTERM (it finishes its pass), noting
    that it is gone; or, given `seen`, the chain, which notes whether the service was gone
    when it got its own signal. Each says it is ready once its handlers are in place."""
    if seen is None:
        stop = f"time.sleep(1); pathlib.Path({str(gone)!r}).write_text('x'); sys.exit(0)"
    else:
        stop = f"pathlib.Path({str(seen)!r}).write_text(str(pathlib.Path({str(gone)!r}).exists())); sys.exit(0)"
    return (
        "import pathlib, signal, sys, time\n"
        f"def stop(*_): {stop}\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "while True: time.sleep(0.05)\n"
    )


def test_ctrl_c_in_the_terminal__the_chain_still_stops_after_the_services_that_use_it(tmp_path: Path) -> None:
    """rbreak (session 11): Ctrl-C sends SIGINT to the terminal's whole foreground process
    group, and `promptex up` started its services in its own: anvil got SIGINT and stopped
    at the same moment as the coordinator and the agent, mid-pass (4fb94ca's order held only
    for a SIGTERM to `up` alone). Each service now runs in its own process group: only `up`
    gets the terminal's signal, and stops the chain last."""
    import signal
    import subprocess

    from polling import until

    gone, seen = tmp_path / "user-gone", tmp_path / "chain-saw"
    ready = [tmp_path / "chain-ready", tmp_path / "user-ready"]
    chain = _stopping_script(gone, ready[0], seen=seen)
    user = _stopping_script(gone, ready[1])
    up = (  # `promptex up`'s supervision alone, as the terminal's foreground job
        "import os, signal, sys\n"
        "from promptex.up import Service, Supervisor\n"
        "supervisor = Supervisor(dict(os.environ))\n"
        "signal.signal(signal.SIGINT, supervisor.request_stop)\n"
        "signal.signal(signal.SIGTERM, supervisor.request_stop)\n"
        "try:\n"
        f"    supervisor.start(Service('anvil', [sys.executable, '-c', {chain!r}], stops_last=True))\n"
        f"    supervisor.start(Service('coordinator', [sys.executable, '-c', {user!r}]))\n"
        "    supervisor.watch()\n"
        "finally:\n"
        "    supervisor.stop_all()\n"
    )
    job = subprocess.Popen([sys.executable, "-c", up], start_new_session=True)  # a process group, as a shell's job
    try:
        until(lambda: all(path.exists() for path in ready), "both services started")
        os.killpg(job.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert job.wait(timeout=60) == 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert seen.read_text() == "True"


def test_await_ready__another_service_dead__says_so_at_once_not_the_awaited_ones_timeout(tmp_path: Path) -> None:
    """A service that dies while another is being awaited (the indexer, with no readiness
    check, exiting at start while the gateway starts): up waited out the gateway's timeout
    and then blamed the gateway ("not ready within 60 s"). Now the wait names the dead one."""
    supervisor = Supervisor({"PATH": os.environ["PATH"]})
    try:
        supervisor.start(Service("indexer", [sys.executable, "-c", "import sys; sys.exit(3)"]))
        slow = Service("gateway", [sys.executable, "-c", "import time; time.sleep(60)"], ready=lambda: False)
        with pytest.raises(UpError, match="indexer exited with code 3"):
            supervisor.start(slow, timeout=20)
    finally:
        supervisor.stop_all()


def test_stop_requested_during_a_step__the_step_is_stopped_and_up_stops_starting(tmp_path: Path) -> None:
    """SIGTERM to `up` while it deploys or seeds (a step, minutes long on a slow machine):
    the stop was only noted and `up` went on deploying, seeding and starting every service
    before it stopped them. Now the step is stopped and `up` goes no further."""
    import threading

    from promptex.up import UpStopped

    supervisor = Supervisor({"PATH": os.environ["PATH"]})
    step = [sys.executable, "-c", "import time; print('deploying', flush=True); time.sleep(30)"]
    timer = threading.Timer(0.5, supervisor.request_stop)
    timer.start()
    try:
        with pytest.raises(UpStopped):
            supervisor.run_step("deploy", step)
        with pytest.raises(UpStopped):
            supervisor.start(Service("indexer", [sys.executable, "-c", "import time; time.sleep(30)"]))
        assert supervisor.services == []
    finally:
        timer.cancel()
        supervisor.stop_all()


@pytest.mark.parametrize("nohup", [False, True], ids=["terminal", "nohup"])
def test_handle_signals__a_closed_terminal_stops_the_market__unless_started_under_nohup(nohup: bool) -> None:
    """The services no longer get the terminal's SIGHUP (their own process groups), so `up`
    takes it as a stop; under `nohup` (SIGHUP ignored from the start) it stays ignored, or
    a hangup would stop a market its user meant to outlive the terminal."""
    import subprocess

    script = (
        "import signal\n"
        + ("signal.signal(signal.SIGHUP, signal.SIG_IGN)\n" if nohup else "")
        + "from promptex.up import Supervisor\n"
        "supervisor = Supervisor({})\n"
        "supervisor.handle_signals()\n"
        "print(signal.getsignal(signal.SIGHUP) == supervisor.request_stop, "
        "signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == (["False", "True"] if nohup else ["True", "False"])


def test_up_killed_with_kill_9__its_services_get_sigterm_not_left_running(tmp_path: Path) -> None:
    """rbreak (session 11): `promptex up` killed with kill -9 (or by the OOM killer) cannot
    stop its services: they ran on for good (anvil holding the chain's port, the next `up`
    refusing to start). Each now gets SIGTERM when `up` dies (setpriv --pdeathsig)."""
    import signal
    import subprocess

    from polling import until

    ready, termed, pid = tmp_path / "ready", tmp_path / "termed", tmp_path / "pid"
    service = (
        "import os, pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(termed)!r}).write_text('x'), sys.exit(0)))\n"
        f"pathlib.Path({str(pid)!r}).write_text(str(os.getpid()))\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "time.sleep(120)\n"
    )
    up = (
        "import os, sys, time\n"
        "from promptex.up import Service, Supervisor\n"
        "supervisor = Supervisor(dict(os.environ))\n"
        f"supervisor.start(Service('agent', [sys.executable, '-c', {service!r}]))\n"
        "time.sleep(120)\n"
    )
    job = subprocess.Popen([sys.executable, "-c", up])
    try:
        until(ready.exists, "the service started")
        job.kill()
        job.wait(timeout=30)
        until(termed.exists, "the service got SIGTERM once up died", seconds=20)
    finally:
        if job.poll() is None:
            job.kill()
        if pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid.read_text()), signal.SIGKILL)
