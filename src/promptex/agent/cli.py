"""Click commands for the redemption agent; the main CLI (`promptex.cli`) mounts them:
`promptex agent run [--once]`, `promptex agent link …`, `promptex agent rule …`,
`promptex redeem --token CLD --usd 20 --to anthropic --user 0x…`,
`promptex redemptions`, `promptex fake-billing`."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from promptex.config import Settings, settings
from promptex.protocol.units import USD_MICRO

# On the local network the agent and the fake billing API sign with anvil's public
# development accounts 8 and 9, which the demo, `promptex up` and the tests leave to them.
LOCAL_AGENT_KEY = "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97"  # account 8
LOCAL_BILLING_SIGNER_KEY = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"  # account 9


def agent_key(s: Settings) -> str:
    if s.agent_private_key is not None:
        return s.agent_private_key.get_secret_value()
    if s.agent_network == "local":
        return LOCAL_AGENT_KEY
    raise click.ClickException("set PROMPTEX_AGENT_PRIVATE_KEY (the key users grant)")


def fake_billing_key(s: Settings) -> str:
    if s.agent_fake_billing_private_key is not None:
        return s.agent_fake_billing_private_key.get_secret_value()
    if s.agent_network == "local":
        return LOCAL_BILLING_SIGNER_KEY
    raise click.ClickException("set PROMPTEX_AGENT_FAKE_BILLING_PRIVATE_KEY (the billing signer's key)")


def usd_micro(text: str) -> int:
    """Dollars ("20", "19.99") to USD micro-units, exactly."""
    try:
        value = Decimal(text) * USD_MICRO
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not a dollar amount") from None
    if value <= 0 or value != value.to_integral_value():
        raise click.BadParameter(f"{text!r}: a positive amount with at most 6 decimals")
    return int(value)


def token_units(text: str) -> int:
    """Whole tokens ("5000", "0.5") to 18-decimal units, exactly."""
    try:
        value = Decimal(text) * 10**18
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not a token amount") from None
    if value <= 0 or value != value.to_integral_value():
        raise click.BadParameter(f"{text!r}: a positive amount with at most 18 decimals")
    return int(value)


def make_agent(s: Settings | None = None) -> Any:
    from promptex.agent.billing import HttpBilling
    from promptex.agent.chain import Web3AgentChain
    from promptex.agent.outbox import SmtpConfig
    from promptex.agent.service import Agent
    from promptex.chain.deployments import load_deployment
    from promptex.gateway.envelope import load_master_keys
    from promptex.ledger import Ledger

    s = s or settings()
    try:
        deployment = load_deployment(s.agent_network)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if "RedemptionEscrow" not in deployment.contracts:
        raise click.ClickException(f"the {s.agent_network} deployment has no RedemptionEscrow: redeploy")
    chain = Web3AgentChain(s.agent_rpc_url, deployment, agent_key(s))
    master = s.gateway_master_key.get_secret_value() if s.gateway_master_key else None
    smtp = None
    if s.agent_smtp_host:
        password = s.agent_smtp_password.get_secret_value() if s.agent_smtp_password else None
        smtp = SmtpConfig(
            s.agent_smtp_host, s.agent_smtp_port, s.agent_smtp_user, password, s.agent_smtp_from,
            s.agent_smtp_starttls,
        )  # fmt: skip
    return Agent(
        Ledger.from_settings(s).engine,
        chain,
        HttpBilling(timeout=s.agent_billing_timeout_seconds),
        load_master_keys(master, s.gateway_master_key_file),
        rules_interval=s.agent_rules_interval_seconds,
        smtp=smtp,
        billing_url=s.agent_billing_url,
        tx_timeout=s.agent_tx_timeout_seconds,
        swap_deadline=s.agent_swap_deadline_seconds,
        retry_seconds=s.agent_billing_retry_seconds,
        retry_max_seconds=s.agent_billing_retry_max_seconds,
        purchase_margin=s.agent_purchase_margin_seconds,
    )


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group("agent")
def agent() -> None:
    """The redemption agent: linked accounts, auto-topup rules, redemptions."""


@agent.command("run")
@click.option("--once", is_flag=True, help="run one pass (rules checked) and exit")
def agent_run(once: bool) -> None:
    """Check rules on an interval and drive redemptions to release (crash-safe; SIGTERM stops it)."""
    from promptex.agent.service import serve

    _logging()
    s = settings()
    a = make_agent(s)
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
@click.option("--user", required=True, help="the token holder's wallet address (who granted the agent)")
@click.option("--token", required=True, help="CLD, GPT, …")
@click.option("--usd", required=True, help="USD of credits to buy")
@click.option("--to", "provider", required=True, help="the provider whose linked account gets them")
@click.option("--max-tokens", default=None, help="whole tokens: sell at most this many (default: the grant's bound)")
def redeem(user: str, token: str, usd: str, provider: str, max_tokens: str | None) -> None:
    """Sell tokens into the escrow and buy credits on the user's linked account now."""
    from promptex.agent.quote import QuoteRefused
    from promptex.agent.store import RELEASED
    from promptex.coordinator.txs import TxPending

    _logging()
    limit = None if max_tokens is None else token_units(max_tokens)
    try:
        r = make_agent().redeem(user, token, usd_micro(usd), provider, limit)
    except (QuoteRefused, ValueError, KeyError) as exc:
        raise click.ClickException(f"redemption refused: {exc}") from None
    except TxPending as exc:
        raise click.ClickException(f"waiting for {exc}; `promptex agent run` finishes it") from None
    click.echo(f"redemption {r.id}: {r.status}" + (f" ({r.error})" if r.error else ""))
    if r.status != RELEASED and r.status in ("failed", "rejected", "abandoned", "refunded"):
        raise SystemExit(1)


@click.command("redemptions")
@click.option("--user", default=None, help="only this user's")
@click.option("--json", "as_json", is_flag=True)
def redemptions(user: str | None, as_json: bool) -> None:
    """History: date, sold, to, value, status."""
    from promptex.agent.store import AgentStore
    from promptex.ledger import Ledger
    from promptex.ledger.binding import checksum_address

    store = AgentStore(Ledger.from_settings(settings()).engine)
    rows = store.redemptions(user=None if user is None else checksum_address(user))
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


@click.command("fake-billing")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=None, type=int, help="default: PROMPTEX_AGENT_FAKE_BILLING_PORT")
@click.option("--provider", default="anthropic", show_default=True)
@click.option("--balance", "balances", multiple=True, help="ACCOUNT_ID=USD starting balance (repeatable)")
@click.option("--fail-status", type=int, default=None, help="answer this status…")
@click.option("--fail-times", type=int, default=0, help="…to the next N requests")
def fake_billing(
    host: str, port: int | None, provider: str, balances: tuple[str, ...], fail_status: int | None, fail_times: int
) -> None:
    """Serve a fake provider billing API that signs receipts for the agent's deployment's escrow."""
    import uvicorn
    from eth_account import Account

    from promptex.agent.fake_billing import FakeBillingConfig, create_fake_billing
    from promptex.chain.deployments import load_deployment

    s = settings()
    try:
        deployment = load_deployment(s.agent_network)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    key = fake_billing_key(s)
    starting = {}
    for item in balances:
        account, _, usd = item.partition("=")
        starting[account] = usd_micro(usd)
    config = FakeBillingConfig(
        signer_key=key, chain_id=deployment.chain_id, escrow=deployment.address("RedemptionEscrow"), provider=provider,
        balances=starting, fail_status=fail_status, fail_times=fail_times,
    )  # fmt: skip
    click.echo(f"fake {provider} billing signer {Account.from_key(key).address}", err=True)
    uvicorn.run(
        create_fake_billing(config), host=host, port=port or s.agent_fake_billing_port, log_level="warning",
        access_log=False,
    )  # fmt: skip
