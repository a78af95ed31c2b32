"""`promptex buyer signup|bind|org-key|debts|limits`: buyers' accounts, API keys, wallet
binding, org member keys, what accounts owe, and limits per key, member and org."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from promptex import metering
from promptex.cli.accounts import account_options, ape_account
from promptex.cli.amounts import decimal_of
from promptex.cli.ledgers import market_ledger, market_settings

if TYPE_CHECKING:
    from promptex.ledger.binding import BindingMessage
    from promptex.ledger.usage import StoredUsage


@click.group()
def buyer() -> None:
    """Buyers: accounts, API keys, wallet binding, org member keys, debts."""


def _budget(text: str | None, option: str = "--budget") -> tuple[str, int] | None:
    """ASSET=AMOUNT in whole units → (symbol, smallest units)."""
    if text is None:
        return None
    symbol, sep, amount = text.partition("=")
    if not sep:
        raise click.ClickException(f"{option} takes ASSET=AMOUNT, not {text!r}")
    try:
        paying = metering.asset(symbol)
    except metering.UnknownAsset as exc:
        raise click.ClickException(str(exc)) from None
    return paying.symbol, int(decimal_of(option, amount) * paying.unit)


@buyer.command("signup")
@click.option("--wallet", help="the wallet to bind; writes the EIP-712 message it must sign")
@click.option("--name", help="an account name")
@click.option("--default-asset", help="USDC or provider (the model's provider token)")
@click.option("--budget", help="this key's budget, ASSET=AMOUNT")
@click.option("--challenge-out", default="binding-challenge.json", show_default=True)
def buyer_signup(
    wallet: str | None, name: str | None, default_asset: str | None, budget: str | None, challenge_out: str
) -> None:
    """Create an account and an API key (shown once); with --wallet, the message to sign."""
    import time

    from promptex.gateway.buyers import challenge_json, signup
    from promptex.gateway.store import GatewayStore
    from promptex.ledger.binding import checksum_address

    with market_ledger(starts=True) as ledger:
        if wallet:
            # Refused before anything is created: before (late1 s16), a wallet already bound
            # elsewhere got a new account and key, its `bind` then refused: the account left empty.
            try:
                wallet = checksum_address(wallet)
            except ValueError as exc:
                raise click.ClickException(f"{exc}: nothing created") from None
            bound = ledger.account_of(wallet)
            if bound is not None:
                raise click.ClickException(
                    f"wallet {wallet} is bound to account {bound} already: nothing created "
                    "(its holder gets a key for that account by signing a challenge: the dashboard's Keys)"
                )
        new = signup(
            ledger,
            GatewayStore(ledger.engine),
            int(time.time()),
            name=name,
            default_asset=default_asset,
            budget=_budget(budget),
        )
        click.echo(f"account {new.account}")
        click.echo(f"API key (shown once, store it now): {new.key}")
        if wallet:
            try:
                message = ledger.issue_binding_challenge(new.account, wallet)
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
            Path(challenge_out).write_text(challenge_json(message))
            # Which bind signs it: an ape account (alias), a key in the environment, or any wallet's signature.
            click.echo(f"sign {challenge_out} (typed_data) with {message.wallet}: {bind_hint(challenge_out)}")


def bind_hint(challenge: str) -> str:
    """How `buyer bind` signs the challenge file `challenge`: the ways, in one line."""
    option = "" if challenge == "binding-challenge.json" else f" --challenge {challenge}"
    return (
        f"promptex buyer bind{option} --account ALIAS [--yes] (an ape account, or TEST::N locally), "
        "--sign-with-env VAR (the wallet's private key in $VAR) or --signature 0x… (eth_signTypedData_v4)"
    )


@buyer.command("bind")
@click.option("--challenge", "challenge_file", default="binding-challenge.json", show_default=True)
@account_options
@click.option("--signature", help="0x… signature of the challenge's typed data")
@click.option("--sign-with-env", help="(demo) sign with the private key in this environment variable")
def buyer_bind(
    challenge_file: str, account_alias: str | None, yes: bool, signature: str | None, sign_with_env: str | None
) -> None:
    """Bind the wallet that signed the challenge; its first binding brings the welcome credit."""
    import os

    from promptex.gateway.buyers import bind_wallet, message_from_json
    from promptex.ledger import BindingError
    from promptex.ledger.binding import sign

    s = market_settings()
    message = message_from_json(Path(challenge_file).read_text())
    if sum(1 for given in (account_alias, signature, sign_with_env) if given) > 1:
        raise click.ClickException("give one of --account, --signature, --sign-with-env")
    if account_alias:
        signature = "0x" + _sign_with_ape_account(account_alias, message, yes=yes).hex()
    if sign_with_env:
        key = os.environ.get(sign_with_env)
        if not key:
            raise click.ClickException(f"${sign_with_env} is not set")
        signature = "0x" + sign(message, key).hex()
    if not signature:
        raise click.ClickException(f"say who signs {challenge_file}: {bind_hint(challenge_file)}")
    with market_ledger(s) as ledger:
        try:
            account = bind_wallet(
                ledger,
                message,
                signature,
                welcome_asset=s.welcome_credit_asset,
                welcome_amount=s.welcome_credit_amount,
                treasury=s.welcome_credit_treasury,
            )
        except BindingError as exc:
            raise click.ClickException(str(exc)) from None
        debited = ledger.debited_wallet(account)
    click.echo(f"wallet {message.wallet} bound to account {account}")
    if debited is not None and debited.lower() != message.wallet.lower():
        click.echo(
            f"its vault deposits are not the account's: settlement debits the account's first wallet, {debited}; "
            "deposit from that wallet to spend (this wallet's own deposits can be withdrawn)"
        )


def _sign_with_ape_account(alias: str, message: BindingMessage, *, yes: bool) -> bytes:
    """The challenge's typed data signed by the ape account `alias` (the wallet commands' --account;
    `yes`: as their --yes, no confirmation, a keyfile unlocked with APE_ACCOUNTS_<alias>_PASSPHRASE)."""
    from promptex.cli.door import sign_typed_data

    account = ape_account(alias, yes=yes, wallet=message.wallet)
    if not (yes and hasattr(account, "set_autosign")):
        click.echo(f"{alias} signs: {message.statement} (wallet {message.wallet}, chain {message.chain_id})")
    return sign_typed_data(account, message.typed_data())


@buyer.command("org-key")
@click.option("--org", "org_name", required=True, help="org name (created if new)")
@click.option("--name", "member_name", help="the member's name (shown on the org's desk)")
@click.option("--budget", help="the member's budget in the org, ASSET=AMOUNT")
def buyer_org_key(org_name: str, member_name: str | None, budget: str | None) -> None:
    """A member key that spends from an org's balance (within an optional budget)."""
    import time

    from promptex.gateway.buyers import member_key
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import AccountKind, LedgerError

    with market_ledger(starts=True) as ledger:
        try:
            org = ledger.create_account(AccountKind.ORG, org_name).id
        except LedgerError:
            from promptex.ledger.accounts import account_by_name

            with ledger.engine.connect() as conn:
                found = account_by_name(conn, AccountKind.ORG, org_name)
            assert found is not None
            org = found.id
        new = member_key(
            ledger, GatewayStore(ledger.engine), org, int(time.time()), name=member_name, budget=_budget(budget)
        )
    named = f" ({member_name})" if member_name else ""
    click.echo(f"org {org}, member account {new.account}{named}")
    click.echo(f"API key (shown once, store it now): {new.key}")


@buyer.command("debts")
@click.option(
    "--account", "account_id", type=int, help="one account's debts, repaid ones too [default: every open debt]"
)
def buyer_debts(account_id: int | None) -> None:
    """What accounts owe: a debit their balance could not cover (a reorg removing a deposit
    already spent, an exit that completed before the usage it raced settled). An account is
    not served in an asset it owes until a deposit repays the debt (deposits repay first)."""
    from promptex.protocol.units import money

    with market_ledger() as ledger:
        found = ledger.debts(account_id) if account_id is not None else ledger.open_debts()
    if not found:
        click.echo("no debts" if account_id is None else f"account {account_id} owes nothing")
        return
    for debt in found:
        owed = f"owes {money(debt.outstanding, debt.asset, rounding='up')}" if debt.status == "open" else "repaid"
        click.echo(f"debt {debt.id}: account {debt.account} {owed} of {money(debt.amount, debt.asset)} — {debt.reason}")


@buyer.command("limits")
@click.option("--key-id", type=int, help="limits of one API key (its id)")
@click.option("--org", type=int, help="limits of an org (every member's requests together)")
@click.option("--member", type=int, help="with --org: limits of one member's requests at the org")
@click.option("--rpm", help="requests per minute")
@click.option("--tpm", help="tokens per minute (input + output)")
@click.option("--concurrent", help="requests in flight at once")
@click.option("--cost", help="cost per window, ASSET=AMOUNT in whole units")
@click.option("--window", default="3600", show_default=True, help="the cost window, in seconds")
@click.option("--clear", is_flag=True, help="remove the subject's limits")
def buyer_limits(
    key_id: int | None,
    org: int | None,
    member: int | None,
    rpm: str | None,
    tpm: str | None,
    concurrent: str | None,
    cost: str | None,
    window: str,
    clear: bool,
) -> None:
    """Set (or show, with no limit given) the limits of a key, an org member or an org.
    A request over one gets 429 with retry-after; tokens and cost are reserved at their
    upper bound with the request's hold and settled to what it used."""
    import time

    from promptex.cli.amounts import count_of
    from promptex.gateway import limits
    from promptex.protocol.units import money

    if (key_id is None) == (org is None) or (member is not None and org is None):
        raise click.ClickException("name one subject: --key-id N, --org N, or --org N --member N")
    subject = f"org:{org}" if member is None else f"member:{org}:{member}"
    if key_id is not None:
        subject = f"key:{key_id}"
    named = (("requests_per_minute", "--rpm", rpm), ("tokens_per_minute", "--tpm", tpm))
    counts = {name: None if text is None else count_of(option, text) for name, option, text in named}
    counts["concurrent"] = None if concurrent is None else count_of("--concurrent", concurrent)
    budget = _budget(cost, "--cost")
    new = limits.Limits(
        **counts,
        cost=budget[1] if budget else None,
        cost_asset=budget[0] if budget else None,
        cost_window_seconds=max(1, count_of("--window", window)),
    )
    with market_ledger(starts=True) as ledger:
        if clear or not new.empty:
            limits.set_limits(ledger.engine, subject, new if not clear else limits.Limits(), int(time.time()))
        found = dict(limits.limits_of(ledger.engine, [subject]))
    now = found.get(subject)
    if now is None:
        click.echo(f"{subject}: no limits")
        return
    parts = [f"{value} {limits.WHAT[kind]}" for kind, value in (
        (limits.REQUESTS, now.requests_per_minute), (limits.TOKENS, now.tokens_per_minute),
        (limits.CONCURRENT, now.concurrent),
    ) if value is not None]  # fmt: skip
    if now.cost is not None and now.cost_asset is not None:
        parts.append(f"{money(now.cost, now.cost_asset)} per {now.cost_window_seconds} s")
    click.echo(f"{subject}: " + ", ".join(parts))


# ─── Self-service: what an account has and what it spent ────────────────────


def _whose(account_id: int | None, wallet: str | None, key: str | None) -> int:
    """The account named by exactly one of --account, --wallet, --key."""
    from promptex.gateway.keys import hash_key
    from promptex.gateway.store import GatewayStore

    if sum(x is not None for x in (account_id, wallet, key)) != 1:
        raise click.UsageError("name the account one way: --account N, --wallet 0x…, or --key px-…")
    if account_id is not None:
        return account_id
    with market_ledger() as ledger:
        if wallet is not None:
            found = ledger.account_of(wallet)
            if found is None:
                raise click.ClickException(f"no account is bound to {wallet}: bind it with `promptex buyer bind`")
            return found
        assert key is not None
        record = GatewayStore(ledger.engine).api_key(hash_key(key))
        if record is None:
            raise click.ClickException("no such API key (revoked, or of another market)")
        return record.account


def whose_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("--key", envvar="PROMPTEX_API_KEY", help="an API key of the account (or PROMPTEX_API_KEY)")(fn)
    fn = click.option("--wallet", help="a wallet bound to the account")(fn)
    return click.option("--account", "account_id", type=int, help="the account's number")(fn)


@buyer.command("balance")
@whose_options
@click.option("--json", "as_json", is_flag=True, help="exact smallest units, as JSON")
def buyer_balance(account_id: int | None, wallet: str | None, key: str | None, as_json: bool) -> None:
    """What an account can spend, per asset: spendable, held by requests in flight (whatever
    pays them), leaving the vault, what its spend cap has left, and promotional credit left;
    and an asset it pays in signed mode, or whose session is over with no spend cap since."""
    import json

    from promptex.ledger.sessions import CAPPED, SIGNED, mode
    from promptex.metering.assets import ASSETS
    from promptex.protocol.units import balance_text
    from promptex.protocol.vault import MAX_CAP_TOTAL

    s = market_settings()
    account = _whose(account_id, wallet, key)
    rows = []
    with market_ledger(s) as ledger:
        try:
            found = ledger.account(account)
        except Exception:
            raise click.ClickException(f"no account {account}") from None
        treasury = ledger.treasury(s.welcome_credit_treasury).id
        for symbol in ASSETS:
            b = ledger.balance(account, symbol)
            promo = ledger.budget(treasury, account, symbol)
            promotional, promo_held = (promo.remaining, promo.held) if promo is not None else (0, 0)
            if any((b.posted, b.held, b.locked, promotional)):
                rows.append((symbol, b, promotional, promo_held))
        bound = ledger.wallets(account)
        sessions = {symbol: ledger.session(account, symbol) for symbol, *_ in rows}
        modes = {symbol: mode(newest, ledger.clock()) for symbol, newest in sessions.items()}
    if as_json:
        payload = [
            {"asset": symbol, "spendable_units": str(b.spendable), "held_units": str(b.held),
             "leaving_units": str(b.locked), "cap_left_units": str(b.cap_remaining),
             "promotional_units": str(promotional), "promotional_held_units": str(promo_held),
             "mode": modes[symbol]}
            for symbol, b, promotional, promo_held in rows
        ]  # fmt: skip
        click.echo(json.dumps({"account": account, "wallets": bound, "balances": payload}, indent=2))
        return
    name = f" ({found.name})" if found.name else ""
    click.echo(f"account {account}{name}; wallets: {', '.join(bound) or 'none bound'}")
    if not rows:
        click.echo("nothing to spend yet: deposit with `promptex wallet deposit`, or bind a wallet for welcome credit")
        return
    click.echo(f"{'asset':<6} {'spendable':>20} {'held':>18} {'leaving':>18} {'cap left':>20} {'promotional':>18}")
    for symbol, b, promotional, promo_held in rows:
        # What new requests may still take: the cap left after those in flight.
        # Balances read rounded down (balance_text): never more than there is.
        cap = balance_text(max(0, b.cap_remaining - b.held), symbol, unlimited=MAX_CAP_TOTAL) if b.posted else "—"
        # Held: every request in flight, whatever pays it; promotional: what is left to spend of it
        # (before, a request in flight on promotional credit showed nowhere).
        held, promo_left = b.held + promo_held, max(0, promotional - promo_held)
        click.echo(
            f"{symbol:<6} {balance_text(b.spendable, symbol):>20} {balance_text(held, symbol):>18} "
            f"{balance_text(b.locked, symbol):>18} {cap:>20} {balance_text(promo_left, symbol):>18}"
        )
    for symbol, newest in sessions.items():  # signed mode: its cap left is the session's maximum left
        if newest is None or modes[symbol] == CAPPED:
            continue
        if modes[symbol] == SIGNED:
            click.echo(
                f"{symbol}: signed mode, session {newest.session}: each request carries a voucher (`promptex proxy`); "
                "promotional credit does not pay it"
            )
        else:
            click.echo(
                f"{symbol}: session {newest.session} is over and no spend cap was set since: nothing is spent until "
                f"one is (`promptex wallet spend-cap --asset {symbol} …`, once its vouchers no longer settle) or a new "
                f"session starts (`promptex session create --asset {symbol}`)"
            )


def _since(text: str | None) -> int | None:
    """--since: an ISO date/time (UTC unless it says) or a span back from now (7d, 12h)."""
    import re
    import time
    from datetime import UTC, datetime

    if text is None:
        return None
    span = re.fullmatch(r"(\d+)([dh])", text.strip())
    if span:
        return int(time.time()) - int(span.group(1)) * (86_400 if span.group(2) == "d" else 3_600)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give a date (2026-12-01), a time, or a span (7d, 12h)") from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


USAGE_LIMIT = 100_000  # records read at most (newest first)


def _voucher(record: StoredUsage) -> str:
    """A signed-mode record's covering voucher (session, lane, ceiling in smallest units); capped: empty."""
    if record.voucher_session is None:
        return ""
    return f"session={record.voucher_session};lane={record.voucher_lane};ceiling={record.voucher_ceiling}"


@buyer.command("usage")
@whose_options
@click.option("--since", help="from this date/time (UTC) or span back (7d, 12h) [default: everything]")
@click.option("--csv", "as_csv", is_flag=True, help="every record as CSV (exact units beside whole ones)")
def buyer_usage(account_id: int | None, wallet: str | None, key: str | None, since: str | None, as_csv: bool) -> None:
    """What an account spent (or paid for as an org): each request, and totals per model
    and per day."""
    import csv
    import sys
    from collections import defaultdict
    from datetime import UTC, datetime

    from promptex.ledger import usage as _usage
    from promptex.protocol.units import money, whole_units

    start = _since(since)
    account = _whose(account_id, wallet, key)
    with market_ledger() as ledger, ledger.engine.connect() as conn:
        records = [r for r in _usage.records_of(conn, account, USAGE_LIMIT) if start is None or r.settled_at >= start]
    records.reverse()  # oldest first

    def when(r: _usage.StoredUsage) -> datetime:
        return datetime.fromtimestamp(r.settled_at, UTC)

    if as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["time_utc", "request_id", "account", "model", "input_tokens", "output_tokens", "asset",
                      "cost", "cost_units", "status", "mode", "voucher"])  # fmt: skip
        for r in records:
            out.writerow([when(r).strftime("%Y-%m-%d %H:%M:%S"), r.request_id, r.account, r.model, r.input_tokens,
                          r.output_tokens, r.asset, whole_units(r.cost, metering.asset(r.asset).decimals), r.cost,
                          r.status, r.mode, _voucher(r)])  # fmt: skip
        return
    if not records:
        click.echo(f"account {account}: no usage" + (f" since {since}" if since else ""))
        return
    wide = max(22, *(len(r.model) for r in records))  # a longer model id no longer shifts its row's columns
    click.echo(f"{'time (UTC)':<17} {'model':<{wide}} {'tokens in/out':>15} {'cost':>18}  {'mode':<14} request")
    per_model: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    per_day: dict[tuple[str, str], int] = defaultdict(int)
    for r in records:
        tokens = f"{r.input_tokens:,}/{r.output_tokens:,}"
        mode = r.mode if r.voucher_lane is None else f"{r.mode} lane {r.voucher_lane}"
        shown = money(r.cost, r.asset)
        click.echo(f"{when(r):%Y-%m-%d %H:%M} {r.model:<{wide}} {tokens:>15} {shown:>18}  {mode:<14} {r.request_id}")
        per_model[(r.model, r.asset)][0] += 1
        per_model[(r.model, r.asset)][1] += r.cost
        per_day[(f"{when(r):%Y-%m-%d}", r.asset)] += r.cost
    click.echo("per model:")
    for (model, symbol), (count, cost) in sorted(per_model.items()):
        noun = "request " if count == 1 else "requests"
        click.echo(f"  {model:<{wide}} {count:>6} {noun} {money(cost, symbol):>18}")
    click.echo("per day:")
    for (day, symbol), cost in sorted(per_day.items()):
        click.echo(f"  {day} {money(cost, symbol):>18}")
