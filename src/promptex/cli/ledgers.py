"""How a command opens the market's ledger: one rule for every command that is not a service.

A command reads (or writes in) the ledger of a market that exists: a SQLite ledger whose file
does not exist is no market here — opening it would create an empty one, and `buyer balance
--account 6` run outside `promptex up`'s folder answered "no account 6" (12a9d7f); `org
create`, `attestor` and `seller health` created one there and wrote in it. Only the commands
that may start a market by hand (`buyer signup`, `buyer org-key`, `buyer limits`, `seller
add-capacity`) create a ledger where there is none. The commands that build a service's
object (`seller lots`/`close`/`finalize`, `agent link`/`rule`, `redeem`, `coordinator
release`) pass this open to its factory (`open_ledger`); the services keep theirs.

A command never migrates the ledger: the services (`promptex up`, `gateway serve`, the
indexer, …) bring its schema up to date when they start, and a newer promptex's command run
beside older running services changed the schema under them. A schema behind (or ahead of)
this promptex's is refused in one line saying what to do (`ledger.db.check_current`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from promptex.config import Settings, settings

if TYPE_CHECKING:
    from promptex.ledger import Ledger


class NoLedgerHere(click.ClickException):
    """No market's ledger where this command runs (or its schema is not this promptex's)."""


def market_settings(s: Settings | None = None) -> Settings:
    """The settings (`s`, else read now) of a command that reads (or writes in) a market's
    ledger, refused (NoLedgerHere) when it is a SQLite file that does not exist. The file is the
    one the engine opens (`ledger.db.sqlite_path`: a leading `~`, a URI filename)."""
    from promptex.ledger.db import sqlite_path

    s = s or settings()
    database = sqlite_path(s.ledger_url)
    if database is not None and not database.exists():
        raise NoLedgerHere(
            f"no ledger here ({database} does not exist): run this in the folder `promptex up` runs in, "
            "or set PROMPTEX_UP_STATE_DIR to its market folder (or PROMPTEX_LEDGER_URL to the ledger)"
        )
    return s


def market_ledger(s: Settings | None = None, *, starts: bool = False) -> Ledger:
    """The market's ledger for a command (`s`: the settings, else read now), at this promptex's
    schema, never migrated; NoLedgerHere (one line) otherwise. `starts`: a command that may
    start a market by hand: where there is no ledger yet, one is created."""
    from promptex.ledger import Ledger, SchemaNotCurrent

    s = (s or settings()) if starts else market_settings(s)
    try:
        return Ledger.from_settings(s, migrate="new" if starts else False, current=True)
    except SchemaNotCurrent as exc:
        raise NoLedgerHere(str(exc)) from None
