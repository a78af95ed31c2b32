"""How commands open the market's ledger (`cli.ledgers`): outside the market folder they say
so and create nothing; a ledger whose schema is not this promptex's is refused in one line and
left as it is (the services migrate it when they start, not a command run beside them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from promptex.cli import main
from promptex.config import settings
from promptex.ledger import AccountKind, Ledger
from promptex.ledger.db import VERSION_TABLE, current_revision, head_revision

OWNER = "0x70997970C51812dc3A65C0aa476F96796Ce70200"
ADA = 4  # the first account after the system's (vault, usage, debts)


def run(*args: str):
    return CliRunner(mix_stderr=False).invoke(main, list(args))


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder with no market: the default ledger file does not exist there."""
    monkeypatch.chdir(tmp_path)
    for name in ("PROMPTEX_LEDGER_URL", "PROMPTEX_UP_STATE_DIR", "PROMPTEX_GATEWAY_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROMPTEX_GATEWAY_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    settings.cache_clear()
    yield tmp_path
    settings.cache_clear()


@pytest.mark.parametrize(
    "args",
    [
        ("org", "create", "acme", "--owner-wallet", OWNER),
        ("attestor", "review"),
        ("attestor", "reports"),
        ("attestor", "resolve", "1", "dismissed", "--note", "fine"),
        ("seller", "health"),
        ("seller", "rotate-master-key"),
        ("indexer", "reorgs"),
        ("usage", "status", "req_1"),
        ("redemptions",),
        # review1 F2: these opened the ledger as the services do (migrated, made where there is none).
        ("seller", "lots"),
        ("seller", "close", "1"),
        ("seller", "finalize"),
        (
            "agent",
            "rule",
            "--user",
            OWNER,
            "--provider",
            "anthropic",
            "--token",
            "CLD",
            "--below",
            "5",
            "--add",
            "10",
            "--max-tokens",
            "100",
        ),  # fmt: skip
        ("agent", "link", "--user", OWNER, "--provider", "anthropic", "--account-id", "acct_1"),
        ("redeem", "--user", OWNER, "--token", "CLD", "--usd", "10", "--to", "anthropic"),
        ("coordinator", "release", "--address", OWNER, "--asset", "USDC", "--amount", "1"),
    ],
)
def test_outside_the_market_folder__refused_in_one_line__nothing_created(
    nowhere: Path, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, `org create`, the attestor's and seller's commands (and the others here) opened the
    default SQLite file — an empty ledger made in the working directory, an org written in it
    (and `rotate-master-key` added a master key to a key file beside it)."""
    monkeypatch.setenv("PROMPTEX_BILLING_CREDENTIAL", "credential")  # `agent link`'s, read first
    answer = run(*args)
    missing = nowhere.resolve() / "promptex-ledger.sqlite3"
    assert answer.exit_code == 1, (args, answer.output)
    assert answer.stderr == (
        f"Error: no ledger here ({missing} does not exist): run this in the folder `promptex up` runs in, or set "
        "PROMPTEX_UP_STATE_DIR to its market folder (or PROMPTEX_LEDGER_URL to the ledger)\n"
    ), answer.stderr
    assert list(nowhere.iterdir()) == []


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ledger at this promptex's schema, with one account (ada: ADA), copied by each test."""
    path = tmp_path_factory.mktemp("ledger-template") / "ledger.sqlite3"
    with Ledger.open(f"sqlite:///{path}", sqlite_synchronous="NORMAL") as ledger:
        assert ledger.create_account(AccountKind.USER, "ada").id == ADA
    return path


@pytest.fixture
def ledger_url(migrated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shutil.copy(migrated, tmp_path / "ledger.sqlite3")
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", url)
    monkeypatch.setenv("PROMPTEX_LEDGER_SQLITE_SYNCHRONOUS", "NORMAL")
    settings.cache_clear()
    yield url
    settings.cache_clear()


def stamp(url: str, revision: str) -> None:
    """The ledger's schema as a promptex of another revision left it (its tables unchanged)."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :at"), {"at": revision})
    engine.dispose()


def revision_of(url: str) -> str | None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def test_a_ledger_behind_this_promptex__refused_and_left_to_the_services(ledger_url: str) -> None:
    """A newer promptex's command run beside older running services: read or write, it says
    what to do and leaves the schema as it is. Before, every command ran the migrations (the
    ones a newer promptex brings ran under the services; here, on tables already at the head,
    one failed with a traceback)."""
    from alembic.script import ScriptDirectory

    from promptex.ledger.db import alembic_config

    head = head_revision()
    behind = ScriptDirectory.from_config(alembic_config()).get_revision(head).down_revision
    assert isinstance(behind, str)
    stamp(ledger_url, behind)
    for args in (("buyer", "balance", "--account", str(ADA)), ("buyer", "signup"), ("org", "create", "acme",
                 "--owner-wallet", OWNER)):  # read, start a market by hand, write  # fmt: skip
        answer = run(*args)
        assert answer.exit_code == 1, (args, answer.output)
        assert answer.stderr == (
            f"Error: the ledger's schema is at revision {behind}, this promptex's is {head}: restart the market's "
            "services (`promptex up`, or each service), which bring it up to date, then run this again (a command "
            "does not migrate the ledger under running services)\n"
        ), (args, answer.stderr)
        assert revision_of(ledger_url) == behind


def test_a_ledger_ahead_of_this_promptex__refused_in_one_line(ledger_url: str) -> None:
    stamp(ledger_url, "9999")
    answer = run("buyer", "balance", "--account", str(ADA))
    assert answer.exit_code == 1, answer.output
    assert answer.stderr == (
        f"Error: the ledger's schema is at revision 9999, newer than this promptex knows (its newest is "
        f"{head_revision()}): run this with the promptex the market runs\n"
    ), answer.stderr


def test_at_this_promptex_schema__read_as_before(ledger_url: str) -> None:
    answer = run("buyer", "balance", "--account", str(ADA))
    assert answer.exit_code == 0, answer.output
    assert answer.stdout.startswith(f"account {ADA} (ada); wallets: none bound\n"), answer.stdout


ADD_CAPACITY = ("seller", "add-capacity", "--provider", "openai", "--base-url", "http://upstream.invalid/v1",
                "--api-key", "sk-x", "--face-value", "10", "--kind", "listed", "--expires", "30d",
                "--seller-address", OWNER, "--no-verify")  # fmt: skip


@pytest.mark.parametrize("args", [("seller", "lots"), ADD_CAPACITY])
def test_seller_commands__a_ledger_behind__refused_and_left_to_the_services(
    ledger_url: str, args: tuple[str, ...]
) -> None:
    """review1 F2: `seller lots` (close, finalize) and `seller add-capacity` ran the migrations
    (`sellers.factory.seller_session`: `Ledger.from_settings`). add-capacity may still start a
    market run by hand (a ledger made where there is none), never migrate one that exists."""
    from alembic.script import ScriptDirectory

    from promptex.ledger.db import alembic_config

    behind = ScriptDirectory.from_config(alembic_config()).get_revision(head_revision()).down_revision
    assert isinstance(behind, str)
    stamp(ledger_url, behind)
    answer = run(*args)
    assert answer.exit_code == 1, (args, answer.output)
    assert answer.stderr.startswith(f"Error: the ledger's schema is at revision {behind}, this promptex's is"), (
        answer.stderr
    )
    assert revision_of(ledger_url) == behind
