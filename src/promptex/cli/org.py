"""`promptex org create`: an org account whose owner is a wallet — bound only with that
wallet's signature (the same EIP-712 binding as a buyer's, finished by `promptex buyer bind`).
Members: `promptex buyer org-key --org NAME --name NAME [--budget ASSET=AMOUNT]`."""

from __future__ import annotations

import click


@click.group("org")
def org() -> None:
    """Orgs: one balance, an owner's wallet, members with budgets."""


@org.command("create")
@click.argument("name")
@click.option("--owner-wallet", required=True, help="the owner's wallet: it signs the binding, deposits, sees the desk")
@click.option("--challenge-out", default="org-binding-challenge.json", show_default=True)
def org_create(name: str, owner_wallet: str, challenge_out: str) -> None:
    """Create an org and the message its owner's wallet must sign to be bound to it."""
    from pathlib import Path

    from web3 import Web3

    from promptex.cli.buyer import bind_hint
    from promptex.cli.ledgers import market_ledger
    from promptex.gateway.buyers import challenge_json
    from promptex.ledger import AccountKind, LedgerError
    from promptex.ledger.accounts import account_by_name

    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise click.BadParameter("an org's name is 1 to 100 characters", param_hint="NAME")
    if not Web3.is_address(owner_wallet):
        raise click.BadParameter(f"{owner_wallet!r} is not a wallet address", param_hint="--owner-wallet")
    with market_ledger() as ledger:
        with ledger.engine.connect() as conn:
            existing = account_by_name(conn, AccountKind.ORG, name)
        if existing is not None:
            raise click.ClickException(f"an org named {name!r} exists (account {existing.id})")
        try:
            message = ledger.issue_binding_challenge(ledger.create_account(AccountKind.ORG, name).id, owner_wallet)
        except (ValueError, LedgerError) as exc:
            raise click.ClickException(str(exc)) from None
    Path(challenge_out).write_text(challenge_json(message))
    click.echo(f"org {name!r}: account {message.account}")
    click.echo(f"sign {challenge_out} (typed_data) with {message.wallet}: {bind_hint(challenge_out)}")
    click.echo(f"members: promptex buyer org-key --org {name!r} --name NAME [--budget USDC=AMOUNT]")
