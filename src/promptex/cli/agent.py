"""`promptex agent run|link|rule`, `promptex redeem` and `promptex redemptions`: the
redemption agent (built by `agent.factory` from the settings), its linked accounts,
auto-topup rules and redemptions."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import click

from promptex.cli.amounts import token_units, usd_micro
from promptex.cli.market import rpc_url_option
from promptex.config import ConfigurationError, settings
from promptex.protocol.units import USD_MICRO

if TYPE_CHECKING:
    from promptex.agent.service import Agent
    from promptex.agent.store import Redemption


def make_agent(*, service: bool = False) -> Agent:
    """The agent; a command's (`service` False: link, rule, redeem) opens the market's ledger
    as every command does (`cli.ledgers`: refused outside the market folder, never migrated),
    `agent run`'s migrates it as the services do."""
    from promptex.agent import factory
    from promptex.cli.ledgers import market_ledger, market_settings

    try:
        if service:
            return factory.make_agent(settings())
        return factory.make_agent(market_settings(), open_ledger=market_ledger)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group("agent")
def agent() -> None:
    """The redemption agent: linked accounts, auto-topup rules, redemptions."""


@agent.command("run")
@click.option("--once", is_flag=True, help="run one pass (rules checked) and exit")
@rpc_url_option
def agent_run(once: bool) -> None:
    """Check rules on an interval and drive redemptions to release (crash-safe; SIGTERM stops it)."""
    from promptex.agent.service import serve

    _logging()
    s = settings()
    a = make_agent(service=True)
    click.echo(f"agent address {a.chain.sender}", err=True)
    if once:
        report = a.run_once(check_rules=True)
        click.echo(
            json.dumps(
                {"fired": report.fired, "skipped": report.skipped, "advanced": report.advanced,
                 "notified": report.notified, "waiting": report.waiting}
            )
        )  # fmt: skip
        return
    serve(a, s.agent_poll_seconds)


@agent.command("link")
@click.option("--user", required=True, help="the user's wallet address")
@click.option("--provider", required=True, help="e.g. anthropic")
@click.option("--account-id", required=True, help="the provider's id of the user's account")
@click.option(
    "--credential-env",
    default="PROMPTEX_BILLING_CREDENTIAL",
    show_default=True,
    help="environment variable holding the scoped billing credential (not a flag: shells log flags)",
)
@click.option("--billing-url", default=None, help="the provider billing API (default: PROMPTEX_AGENT_BILLING_URL)")
@click.option("--email", default=None, help="where notifications go")
def agent_link(
    user: str, provider: str, account_id: str, credential_env: str, billing_url: str | None, email: str | None
) -> None:
    """Store a linked account (its credential sealed) and print the account reference the
    user links on chain with RedemptionEscrow.link_account(provider, account_ref)."""
    import os

    from promptex.protocol.redemption import provider_id

    credential = os.environ.get(credential_env, "")
    if not credential:
        raise click.ClickException(f"put the billing credential in ${credential_env}")
    try:
        account = make_agent().link_account(
            user, provider, account_id, credential, billing_url=billing_url, email=email
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        json.dumps(
            {"user": account.user, "provider": "0x" + provider_id(account.provider).hex(),
             "account_ref": "0x" + account.account_ref.hex()}
        )
    )  # fmt: skip


@agent.command("rule")
@click.option("--user", required=True)
@click.option("--provider", required=True)
@click.option("--token", required=True, help="CLD, GPT, …")
@click.option("--below", "below", required=True, help="USD: fire when the balance is below this")
@click.option("--add", "add", required=True, help="USD of credits to add")
@click.option("--max-tokens", required=True, help="whole tokens: sell at most this many")
def agent_rule(user: str, provider: str, token: str, below: str, add: str, max_tokens: str) -> None:
    """Add an auto-topup rule ("anthropic below $20 → add $20, selling at most 5,000 CLD")."""
    try:
        rule = make_agent().add_rule(user, provider, token, usd_micro(below), usd_micro(add), token_units(max_tokens))
    except (ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"rule {rule.id}: {rule.provider} below ${below} → add ${add}, selling at most {max_tokens} {rule.token}"
    )


@click.command("redeem")
@rpc_url_option
@click.option("--user", required=True, help="the token holder's wallet address (who granted the agent)")
@click.option("--token", required=True, help="CLD, GPT, …")
@click.option("--usd", required=True, help="USD of credits to buy")
@click.option("--to", "provider", required=True, help="the provider whose linked account gets them")
@click.option("--max-tokens", default=None, help="whole tokens: sell at most this many (default: the grant's bound)")
@click.option(
    "--resume", type=int, default=None, metavar="ID",
    help="only finish redemption ID (the one a pending run named): never a new sale",
)  # fmt: skip
@click.option(
    "--request-id", default=None, metavar="TEXT",
    help="your own id for this need, unique per user: the same command run again with it (killed, timed out, "
    "or after it ended) finishes or prints that one redemption and never sells twice",
)  # fmt: skip
def redeem(
    user: str, token: str, usd: str, provider: str, max_tokens: str | None, resume: int | None, request_id: str | None
) -> None:
    """Sell tokens into the escrow and buy credits on the user's linked account now."""
    from promptex.agent.machine import NonceTakenPending
    from promptex.agent.quote import QuoteRefused
    from promptex.agent.service import RedemptionPending
    from promptex.agent.store import OPEN_STATUSES, RELEASED, RequestIdTaken, StillOpen
    from promptex.chain.txlog import OtherKeyPending
    from promptex.ledger.metadata import REF
    from promptex.protocol.units import usd_text, utc_text

    _logging()
    limit = None if max_tokens is None else token_units(max_tokens)
    if request_id is not None and not 0 < len(request_id) <= REF:
        raise click.ClickException(f"a request id is 1 to {REF} characters")
    try:
        r = make_agent().redeem(user, token, usd_micro(usd), provider, limit, resume=resume, request_id=request_id)
    except RequestIdTaken as exc:
        raise click.ClickException(
            f"redemption refused: request id {request_id!r} is {_named(exc.redemption)}, "
            f"with other terms ({exc.redemption.status}); a new need takes a new request id"
        ) from None
    except StillOpen as exc:
        raise click.ClickException(
            f"redemption refused: {_named(exc.redemption)} is still open ({exc.redemption.status}), one at a time "
            f"per provider; `promptex agent run --once` finishes it, `promptex redemptions` shows it"
        ) from None
    except (QuoteRefused, ValueError, KeyError) as exc:
        raise click.ClickException(f"redemption refused: {exc}") from None
    except RedemptionPending as exc:
        waiting = (
            f"waiting: {exc.waiting}"  # the old key's transactions after a rotation, or a redeem's taken nonce
            if isinstance(exc.waiting, (OtherKeyPending, NonceTakenPending))
            else f"waiting for {exc.waiting} to be mined"
        )
        again = "" if request_id is not None or resume is not None else f" with --resume {exc.redemption.id}"
        raise click.ClickException(
            f"{_named(exc.redemption)} is {exc.redemption.status}, {waiting}; to finish it run this same command "
            f"again{again} (it sells once, and not again should the agent finish it first), or "
            "`promptex agent run --once`"
        ) from None
    if r.status in OPEN_STATUSES:  # its purchase to be retried, or another process advancing it
        again = "" if request_id is not None or resume is not None else f" with --resume {r.id}"
        raise click.ClickException(
            f"{_named(r)} is {r.status}, not finished" + (f" ({r.error})" if r.error else "")
            + f"; `promptex agent run` finishes it, or run this same command again{again}"
        )  # fmt: skip
    click.echo(f"redemption {r.id}: {r.status}" + (f" ({r.error})" if r.error else ""))
    rid = r.chain_redemption_id
    if r.status in ("rejected", "abandoned") and rid is not None and r.deadline is not None:
        # Sold, never released: where the user's USDC is (the outbox may never be sent).
        click.echo(
            f"escrow redemption {rid} holds {usd_text(r.usd_micro)} of USDC for {r.user}: after "
            f"{utc_text(r.deadline)} (its deadline) the user refunds it: `promptex wallet refund --redemption {rid}`"
        )
    if r.status != RELEASED and r.status in ("failed", "rejected", "abandoned", "refunded"):
        raise SystemExit(1)


def _named(r: Redemption) -> str:
    """ "redemption 3 ($20.00 of anthropic credits for CLD)": the one a person looks for."""
    from promptex.protocol.units import usd_text

    return f"redemption {r.id} ({usd_text(r.usd_micro)} of {r.provider} credits for {r.token})"


@click.command("redemptions")
@click.option("--user", default=None, help="only this user's")
@click.option("--json", "as_json", is_flag=True)
def redemptions(user: str | None, as_json: bool) -> None:
    """History: date, sold, to, value, status."""
    from promptex.agent.store import AgentStore
    from promptex.cli.ledgers import market_ledger
    from promptex.ledger.binding import checksum_address

    with market_ledger() as ledger:
        rows = AgentStore(ledger.engine).redemptions(user=None if user is None else checksum_address(user))
    out = [
        {
            "id": r.id,
            "date": datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "sold": "-" if r.tokens_in is None else f"{Decimal(r.tokens_in) / 10**18:f} {r.token}",
            "to": r.provider,
            "value": f"${Decimal(r.usd_micro) / USD_MICRO:,.2f}",
            "status": r.status,
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Redemptions")
    for column in ("id", "date", "sold", "to", "value", "status"):
        table.add_column(column)
    for row in out:
        table.add_row(*(str(row[c]) for c in ("id", "date", "sold", "to", "value", "status")))
    Console().print(table)
