"""Every command of the `--help` tree, given bad input and no market (no node, no profile,
no deployment): one line on stderr, exit code 1, no traceback, no hex revert data.

In-process (CliRunner) for speed; a few process-level runs prove the real entry point
behaves the same. The servers are given a bad port (with their defaults they would serve)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from human_units import assert_human
from promptex.cli import main
from promptex.config import settings

# With only their required inputs these serve, run a market, or rightly succeed offline
# (list nothing, make an account or key): walked with every input bad instead.
NOT_WITH_REQUIRED_ONLY = {
    ("up",), ("gateway", "serve"), ("fake-upstream",), ("fake-billing",),
    ("buyer", "debts"), ("buyer", "signup"), ("buyer", "org-key"), ("buyer", "limits"), ("indexer", "reorgs"),
    ("redemptions",), ("seller", "rotate-master-key"), ("attestor", "reports"), ("attestor", "review"),
}  # fmt: skip
HEX = re.compile(r"0x[0-9a-fA-F]{16,}")


def leaves(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    found: list[tuple[tuple[str, ...], click.Command]] = []
    if getattr(group, "invoke_without_command", False) and path:
        found.append((path, group))  # `promptex indexer`, `promptex coordinator` run themselves
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            found += leaves(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


COMMANDS = leaves(main)


def bad_values(command: click.Command, *, required_only: bool) -> list[str]:
    """The value "x" for every (required) option and argument: a number, an address, an
    asset, a URL, a date, a file — bad for each of them."""
    args: list[str] = []
    for param in command.params:
        if isinstance(param, click.Argument):
            args.append("x")
        elif isinstance(param, click.Option) and not param.is_flag and (param.required or not required_only):
            args += [param.opts[0], "x"]
    return args


WITH_REQUIRED_ONLY = [(p, c) for p, c in COMMANDS if p not in NOT_WITH_REQUIRED_ONLY]


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No market at all: an empty market folder, ledger, deployments and key file in tmp."""
    for name in list(os.environ):
        if name.startswith("PROMPTEX_") or name == "APE_FOUNDRY_HOST":
            monkeypatch.delenv(name)
    monkeypatch.setenv("PROMPTEX_UP_STATE_DIR", str(tmp_path / "market"))
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    monkeypatch.setenv("PROMPTEX_DEPLOYMENTS_DIR", str(tmp_path / "deployments"))
    monkeypatch.setenv("PROMPTEX_GATEWAY_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    monkeypatch.chdir(tmp_path)
    settings.cache_clear()
    yield tmp_path
    settings.cache_clear()


def assert_one_line_failure(result: click.testing.Result, args: list[str]) -> None:
    shown = " ".join(["promptex", *args])
    assert result.exit_code == 1, f"{shown}: exit {result.exit_code}\n{result.output}"
    assert result.stdout == "", f"{shown}: wrote to stdout\n{result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"{shown}:\n{result.stderr}"
    assert "Traceback" not in result.stderr and not HEX.search(result.stderr), f"{shown}:\n{result.stderr}"
    assert_human(result.stderr, shown)


def test_walk_finds_the_whole_tree() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"wallet spend-cap", "hedge show", "buyer signup", "usage verify", "seller add-capacity", "up"} <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command__unknown_option__one_line_exit_1(nowhere, path, command) -> None:
    args = [*path, "--no-such-option"]
    assert_one_line_failure(CliRunner(mix_stderr=False).invoke(main, args), args)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command__every_input_bad__one_line_exit_1(nowhere, path, command) -> None:
    args = [*path, *bad_values(command, required_only=False)]
    if args == list(path):
        pytest.skip("takes no input")
    before = dict(os.environ)
    assert_one_line_failure(CliRunner(mix_stderr=False).invoke(main, args), args)
    assert dict(os.environ) == before  # --rpc-url x set before another option failed: given back


@pytest.mark.parametrize(("path", "command"), WITH_REQUIRED_ONLY, ids=[" ".join(p) for p, _ in WITH_REQUIRED_ONLY])
def test_every_command__required_inputs_bad_or_no_market__one_line_exit_1(nowhere, path, command) -> None:
    args = [*path, *bad_values(command, required_only=True)]
    assert_one_line_failure(CliRunner(mix_stderr=False).invoke(main, args), args)


@pytest.mark.parametrize(
    "args", [["wallet", "balances"], ["usage", "cost", "--model", "x"], ["no-such-command"]], ids=" ".join
)
def test_process__one_line_exit_1__debug_shows_the_trace(nowhere, args) -> None:
    env = {**os.environ, "PYTHONWARNINGS": ""}  # as a user's shell: warnings not silenced by the test runner
    done = subprocess.run([sys.executable, "-m", "promptex.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1 and done.stdout == "", done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("Error: "), done.stderr
    if args[0] == "wallet":
        debug = subprocess.run([sys.executable, "-m", "promptex.cli", *args, "--debug"], env=env,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert debug.returncode == 1 and "no market" in debug.stderr
