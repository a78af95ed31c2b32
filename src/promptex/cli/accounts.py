"""An ape account named by `--account ALIAS` for a command that signs with it (`buyer bind`,
the seller commands): the options, and each refusal as one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
ACCOUNT_HELP = (
    "sign with this ape account (a keyfile asks for its passphrase, or reads APE_ACCOUNTS_<alias>_PASSPHRASE; "
    "TEST::N locally)"
)
YES_HELP = "--account: sign without confirming (a keyfile's passphrase from the environment)"


def account_options(fn: F) -> F:
    """`--account ALIAS` (as `account_alias`) and `--yes`."""
    fn = click.option("--yes", is_flag=True, help=YES_HELP)(fn)
    return click.option("--account", "account_alias", help=ACCOUNT_HELP)(fn)


def ape_account(alias: str, *, yes: bool, wallet: str | None = None, signs: str = "the challenge") -> Any:
    """The ape account `alias` (`chain.accounts.signing_account`; `yes`: it signs without
    asking); `wallet`: it must be that address (`signs` names what is for it)."""
    from promptex.chain.accounts import NotThatWallet, signing_account
    from promptex.cli.errors import quiet_ape

    quiet_ape()  # ape's log lines ("Danger! This account will now sign…") only with --debug
    try:
        return signing_account(alias, yes=yes, wallet=wallet)
    except NotThatWallet as exc:
        raise click.ClickException(
            f"{alias} is {exc.address}; {signs} is for {wallet}: sign with that wallet"
        ) from None
    except KeyError:
        raise click.ClickException(
            f"no ape account {alias!r}: see `ape accounts list` (`ape accounts import` or `generate` makes one)"
        ) from None
    except (IndexError, ValueError):  # TEST::N beyond the test accounts, TEST::x
        raise click.ClickException(f"no test account {alias}") from None
