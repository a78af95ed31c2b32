"""Picking the signing account: an ape account alias, or a test account locally."""

from __future__ import annotations

from typing import Any

from ape import accounts, networks


def resolve_account(alias: str | None, index: int = 0) -> Any:
    """`alias` names an ape account (a keyfile made with `ape accounts import`);
    `TEST::N` names local test account N. Without an alias, a local chain uses
    test account `index` and a live network refuses."""
    if alias:
        if alias.startswith("TEST::"):
            return accounts.test_accounts[int(alias.removeprefix("TEST::"))]
        return accounts.load(alias)
    if networks.provider.network.name == "local":
        return accounts.test_accounts[index]
    raise ValueError("on a live network pass --account ALIAS (see `ape accounts list`)")
