"""The market's profile: `promptex up` writes what it started into its folder, and every
command follows it — flags > environment > profile; with none, a command that needs the
chain refuses in one line instead of trying port 8545."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from promptex.cli import main
from promptex.config import NO_MARKET, PROFILE_FILE, ConfigurationError, Settings, settings, write_profile
from promptex.ledger.db import sqlite_path
from promptex.serving import free_port
from promptex.up import UpOptions, absolute_ledger_url, market_profile

RPC_VARIABLES = [f"PROMPTEX_{name}RPC_URL" for name in ("", "INDEXER_", "COORDINATOR_", "AGENT_", "ATTESTOR_")]


@pytest.fixture
def market(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty market folder the commands look in, and no chain in the environment."""
    folder = tmp_path / "market"
    monkeypatch.setenv("PROMPTEX_UP_STATE_DIR", str(folder))
    for name in [*RPC_VARIABLES, "PROMPTEX_LEDGER_URL", "PROMPTEX_DASHBOARD_RPC_URL", "APE_FOUNDRY_HOST"]:
        monkeypatch.delenv(name, raising=False)
    settings.cache_clear()
    yield folder
    settings.cache_clear()


def written(folder: Path, **values: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROFILE_FILE).write_text(json.dumps({"written_by": "promptex up", "settings": values}))
    return folder


def one_line_error(result, text: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.output
    assert "Traceback" not in result.output


def test_settings__profile_below_environment_below_arguments(market: Path, monkeypatch) -> None:
    written(market, rpc_url="http://127.0.0.1:7001", ledger_url="sqlite:///profile.sqlite3", gateway_port=8181)
    assert Settings().ledger_url == "sqlite:///profile.sqlite3" and Settings().gateway_port == 8181
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", "sqlite:///env.sqlite3")
    assert Settings().ledger_url == "sqlite:///env.sqlite3"
    assert Settings(ledger_url="sqlite:///flag.sqlite3").ledger_url == "sqlite:///flag.sqlite3"


def test_chain_rpc_url__no_flag_no_environment_no_profile__refuses_instead_of_8545(market: Path) -> None:
    with pytest.raises(ConfigurationError, match="^no market: run `promptex up` or pass --rpc-url$"):
        Settings().chain_rpc_url("coordinator")
    assert Settings().optional_rpc_url("attestor") is None


def test_chain_rpc_url__a_service_s_own_variable_beats_the_market_s(market: Path, monkeypatch) -> None:
    written(market, rpc_url="http://127.0.0.1:7001")
    assert {Settings().chain_rpc_url(s) for s in ("indexer", "coordinator", "agent", "attestor", "dashboard")} == {
        "http://127.0.0.1:7001"
    }
    monkeypatch.setenv("PROMPTEX_RPC_URL", "http://127.0.0.1:7002")
    assert Settings().chain_rpc_url("agent") == "http://127.0.0.1:7002"
    monkeypatch.setenv("PROMPTEX_INDEXER_RPC_URL", "http://127.0.0.1:7003")
    assert Settings().chain_rpc_url("indexer") == Settings().chain_rpc_url("dashboard") == "http://127.0.0.1:7003"
    assert Settings().chain_rpc_url("agent") == "http://127.0.0.1:7002"


def test_profile__settings_of_another_version_ignored__unreadable_file_one_line(market: Path) -> None:
    written(market, rpc_url="http://127.0.0.1:7001", from_the_future=1)
    assert Settings().rpc_url == "http://127.0.0.1:7001"
    (market / PROFILE_FILE).write_text("{not json")
    where = re.escape(str(market / PROFILE_FILE))
    advice = "run `promptex up` again, which writes it again"
    with pytest.raises(ConfigurationError, match=rf"^cannot read the market's profile {where} \(.*\): {advice}$"):
        Settings()


def test_up_s_profile__read_back__follows_the_market_from_another_directory(
    market: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", "sqlite:///relative.sqlite3")
    options = UpOptions(None, 7545, "127.0.0.1", 7080, 7000, seed=True, billing_port=7100, dashboard_port=7090,
                        state_dir=market)  # fmt: skip
    env = {
        "PROMPTEX_DASHBOARD_GATEWAY_URL": "http://127.0.0.1:7080",
        "PROMPTEX_DASHBOARD_SELLER_BASE_URLS": json.dumps(["http://127.0.0.1:7000/v1"]),
        "PROMPTEX_AGENT_BILLING_URL": "http://127.0.0.1:7100",
    }
    write_profile(market, market_profile(options, "http://127.0.0.1:7545", env))
    monkeypatch.delenv("PROMPTEX_LEDGER_URL")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("PROMPTEX_UP_STATE_DIR", str(market.resolve()))
    s = Settings()
    assert s.chain_rpc_url("indexer") == "http://127.0.0.1:7545"
    assert s.ledger_url == f"sqlite:///{tmp_path / 'relative.sqlite3'}"  # the file up used, not one here
    assert (s.gateway_port, s.dashboard_port, s.agent_fake_billing_port) == (7080, 7090, 7100)
    assert s.dashboard_seller_base_urls == ["http://127.0.0.1:7000/v1"]
    assert s.deployments_dir == tmp_path / "deployments"
    assert "private_key" not in (market / PROFILE_FILE).read_text()  # no secrets
    # Every URL the profile records is one `market url` gives (newuser18: the coordinator's door was not).
    for name, url in json.loads((market / PROFILE_FILE).read_text())["urls"].items():
        said = CliRunner().invoke(main, ["market", "url", name])
        assert (said.exit_code, said.output) == (0, f"{url}\n"), (name, said.output)


def test_absolute_ledger_url__postgresql_and_memory_unchanged() -> None:
    assert absolute_ledger_url("postgresql://u:p@h/db") == "postgresql://u:p@h/db"
    assert absolute_ledger_url("sqlite:///:memory:") == "sqlite:///:memory:"


@pytest.mark.parametrize("form", ["sqlite:///~/ledger.db", "sqlite:///file:data/l%20x.db?mode=rwc&uri=true"])
def test_absolute_ledger_url__home_or_uri_filename__names_the_file_the_engine_opens(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile's URL (what every command of the market opens) names the file `promptex
    up`'s own engine opened: a leading `~` is the home folder for both (it named `./~/`), and
    a URI filename stays a URI, made absolute."""
    home, cwd = tmp_path / "home", tmp_path / "srv"
    home.mkdir()
    (cwd / "data").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    url = absolute_ledger_url(form)
    opened = sqlite_path(form)
    assert opened is not None and opened.parent == (home if "~" in form else cwd / "data")
    monkeypatch.chdir(tmp_path)  # a command run elsewhere
    assert sqlite_path(url) == opened


@pytest.mark.parametrize(
    "args",
    [
        ["reconcile"],
        ["coordinator", "--once"],
        ["agent", "run", "--once"],
        ["indexer", "--once"],
        ["dashboard"],
        ["wallet", "balances"],
        ["status"],
        ["hedge", "show"],
    ],
    ids=lambda a: " ".join(a),
)
def test_cli__no_market__one_line_refusal_exit_1(market: Path, tmp_path: Path, monkeypatch, args) -> None:
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    monkeypatch.setenv("PROMPTEX_DEPLOYMENTS_DIR", str(Path(__file__).parent))  # any folder: the chain is asked first
    one_line_error(CliRunner().invoke(main, args), NO_MARKET)


def test_cli__profile_of_a_stopped_market__says_no_node_answers_and_never_starts_one(market: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    written(market, rpc_url=dead)
    result = CliRunner().invoke(main, ["wallet", "balances"])
    one_line_error(result, f"no node answers at {dead}")
    assert "promptex up" in result.output


def test_cli__rpc_url_flag_beats_the_profile(market: Path) -> None:
    written(market, rpc_url="http://127.0.0.1:1")
    dead = f"http://127.0.0.1:{free_port()}"
    one_line_error(CliRunner().invoke(main, ["wallet", "balances", "--rpc-url", dead]), f"no node answers at {dead}")


def test_up__no_node_at_rpc_url__one_line_on_stderr_exit_1(market: Path, monkeypatch) -> None:
    monkeypatch.setenv("PROMPTEX_UP_STATE_DIR", str(market))  # up sets it for its services: restored after
    dead = f"http://127.0.0.1:{free_port()}"
    # Free ports for every service: up checks its ports before the node, and a market running
    # on this machine's default ports (another test's, a developer's) must not answer first.
    ports = [f"--{name}-port={free_port()}" for name in ("gateway", "upstream", "billing", "dashboard", "door")]
    result = CliRunner(mix_stderr=False).invoke(main, ["up", "--rpc-url", dead, *ports])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"Error: no JSON-RPC node answers on {dead}"]


def test_up__a_damaged_profile__set_aside_in_one_line_and_up_goes_on(
    market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile cut short stopped `promptex up` itself ("cannot read the market's profile"),
    the command that writes it, and every command's advice was to run `promptex up` again.
    Now every other command names the file and says so, and `up` moves the damaged file
    aside in one line and goes on (here, to the node it was given, which is not there)."""
    monkeypatch.chdir(tmp_path)  # up's ledger lock: the working directory's ledger
    market.mkdir()
    damaged = '{"settings": {"rpc_url": "x", "ledger'
    (market / PROFILE_FILE).write_text(damaged)
    for args, what in ((["reconcile"], "the market's profile "), (["market", "url", "gateway"], "")):
        result = CliRunner().invoke(main, args)
        one_line_error(result, f"cannot read {what}{market / PROFILE_FILE} (")
        assert result.output.rstrip().endswith("run `promptex up` again, which writes it again"), result.output
    dead = f"http://127.0.0.1:{free_port()}"
    ports = [f"--{name}-port={free_port()}" for name in ("gateway", "upstream", "billing", "dashboard", "door")]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        result = CliRunner(mix_stderr=False).invoke(main, ["up", "--rpc-url", dead, *ports])
    finally:
        for sig, handler in handlers.items():  # up's own, for its services
            signal.signal(sig, handler)
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        f"Error: no JSON-RPC node answers on {dead}"
    ], result.stderr
    [line] = result.stdout.strip().splitlines()
    assert line.startswith(f"▶ cannot read the market's profile {market / PROFILE_FILE} (") and line.endswith(
        ": moved aside to profile.json.unreadable; this `promptex up` writes it again"
    ), line
    assert not (market / PROFILE_FILE).exists() and (market / "profile.json.unreadable").read_text() == damaged


def test_write_profile__flushed_to_disk_before_it_replaces_the_last_one(market: Path, monkeypatch) -> None:
    """The profile was renamed over the last one unflushed: a power loss could leave an
    empty profile.json, which stops every command. Written whole now, as ready.json is."""
    import os

    written(market, rpc_url="http://127.0.0.1:7001")
    events: list[str] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {Path(b).name}"), replace(a, b))[1])
    write_profile(market, {"written_by": "promptex up", "settings": {"rpc_url": "http://127.0.0.1:7002"}})
    assert events[:2] == ["fsync", "replace profile.json"], events
    assert Settings().rpc_url == "http://127.0.0.1:7002"
    assert [path.name for path in market.iterdir()] == [PROFILE_FILE]


def test_profile__a_value_its_setting_refuses__names_the_file_and_up_sets_it_aside(market: Path) -> None:
    """A profile whose value a setting refuses (a hand edit, another version's type) was
    pydantic's "bad setting PROMPTEX_GATEWAY_PORT='x'", naming a variable no one had set,
    and stopped `promptex up` as well. Now it is the profile's error, and `up`'s to redo."""
    from promptex.config import set_aside_unreadable_profile

    written(market, rpc_url="http://127.0.0.1:7001", gateway_port="eighty")
    with pytest.raises(ConfigurationError, match=rf"^the market's profile {re.escape(str(market / PROFILE_FILE))} "
                       r"has a bad gateway_port \(.*\): run `promptex up` again, which writes it again$"):  # fmt: skip
        Settings()
    said = set_aside_unreadable_profile(market)
    assert said is not None and said.endswith(
        "moved aside to profile.json.unreadable; this `promptex up` writes it again"
    )
    assert Settings().gateway_port == 8080 and not (market / PROFILE_FILE).exists()
