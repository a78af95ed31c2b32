"""`promptex wallet …` and `promptex status`: on-chain actions signed with ape accounts.

Each command takes ape's `--network` (default: the local market's chain, `ethereum:local:foundry`
at `--rpc-url`, APE_FOUNDRY_HOST, PROMPTEX_RPC_URL or the profile `promptex up` wrote) and
`--account` (an ape account alias — a keyfile made with `ape accounts import` or
`ape accounts generate` — or `TEST::N` for local test account N). A keyfile account asks
for its passphrase and confirms every transaction unless `--yes` is given; its passphrase
can come from `APE_ACCOUNTS_<alias>_PASSPHRASE` for non-interactive use. Amounts are whole
units of the asset ("12.5" USDC), converted exactly; too many decimals are refused.
`--json` prints what a command did in exact smallest units (decimal strings, `*_units`)
instead of the lines for people; errors stay one line on stderr either way.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import click
from ape.cli import network_option

from promptex.chain.accounts import signing_account
from promptex.chain.deploy import contract_at, live_deployment
from promptex.chain.deployments import Deployment
from promptex.chain.dex import pool_at
from promptex.cli.errors import readable_errors
from promptex.cli.faucet import faucet
from promptex.cli.market import market_command_class, rpc_url_option
from promptex.metering.assets import UnknownAsset, asset
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.units import (
    MAX_UINT256,
    TWAP_WINDOW,
    balance_text,
    decimals_of,
    money,
    token_value_text,
    usd_text,
    usd_value,
    utc_text,
    whole_units,
)
from promptex.protocol.vault import UNLIMITED, per_epoch_at_least

LOCAL_NODE = "ethereum:local:foundry"

account_option = click.option(
    "--account",
    "alias",
    default=None,
    help="ape account alias or TEST::N [default: test account 0 locally, the market operator's wallet: named before "
    "it signs]",
)
yes_option = click.option("--yes", is_flag=True, help="sign without confirming each transaction (keyfile accounts)")


def units(text: str, symbol: str) -> int:
    """Whole units of `symbol` as written by a user → its smallest unit, exactly."""
    try:
        decimals = asset(symbol).decimals
        value = Decimal(text)
    except UnknownAsset as exc:
        raise click.BadParameter(str(exc)) from None
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise click.BadParameter(f"an amount must be positive, not {text!r}")
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise click.BadParameter(f"{symbol} has {decimals} decimals; {text!r} has more")
    return int(scaled)


def whole(amount: int, symbol: str) -> str:
    """An amount for people: whole units at the asset's sensible precision (protocol.units.money)."""
    return money(amount, symbol)


UNLIMITED_WORD = "unlimited"


def cap_limit(text: str, symbol: str, option: str) -> int | None:
    """A spend cap's limit as typed: whole units, or None for 'unlimited'."""
    if text.strip().lower() == UNLIMITED_WORD:
        return None
    try:
        return units(text, symbol)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint=option) from None


def cap_values(per_epoch: int | None, total: int | None) -> tuple[int, int]:
    """What to sign for a cap typed as (per_epoch, total), None meaning unlimited: a
    per-epoch limit the vault never enforces below the request, the vault's sentinel for
    unlimited. Both unlimited is refused here, before any transaction (the vault's rule)."""
    if per_epoch is None and total is None:
        raise click.UsageError(
            "a spend cap needs a limit: --per-epoch and --total cannot both be unlimited (give one an amount)"
        )
    per = UNLIMITED if per_epoch is None else per_epoch_at_least(per_epoch)
    return per, UNLIMITED if total is None else total


def cap_text(value: int | None, symbol: str) -> str:
    return UNLIMITED_WORD if value is None else money(value, symbol)


def twap_of(session: Session, token: Any) -> int | None:
    """The Oracle's TWAP of `token`, or None while it has no history over the window."""
    try:
        return int(session.contract("Oracle").consult(token, TWAP_WINDOW))
    except Exception:  # not tracked yet, or the window not covered: shown without dollars
        return None


def chain_time() -> int:
    """The next block's time: deadlines and expiries are checked against it, not the wall clock."""
    from ape import chain

    return int(chain.pending_timestamp)


def default_account_note(address: str) -> str:
    """The line a command without --account prints on a local chain before it signs: test
    account 0, which it signs with, is the wallet the local market's operator deploys,
    settles and attests with — a user who forgot --account deposited, capped or opened a
    session from it without a word (newuser18)."""
    return (
        f"no --account: signing with test account 0 ({address}), the local market operator's wallet (it deploys, "
        "settles and attests); pass --account ALIAS (or TEST::N) to sign with your own"
    )


class Session:
    """The deployment on the connected network and the signing account."""

    def __init__(self, network: Any, alias: str | None, yes: bool):
        deployment = live_deployment(network.name)
        if deployment is None:
            raise ValueError(f"no live deployment recorded for {network.name!r}: run `ape run deploy` first")
        self.deployment: Deployment = deployment
        self.account = signing_account(alias, yes=yes)
        if alias is None:  # said before anything is signed: the default is the operator's wallet
            click.echo(default_account_note(str(self.account.address)), err=True)

    def token(self, symbol: str) -> Any:
        symbol = symbol.upper()
        name = "USDC" if symbol == "USDC" else f"token:{symbol}"
        if name not in self.deployment.contracts:
            raise ValueError(f"{symbol} is not deployed on this network")
        return contract_at(self.deployment, name)

    def contract(self, name: str) -> Any:
        return contract_at(self.deployment, name)

    def approve(self, token: Any, spender: str, amount: int) -> None:
        if token.allowance(self.account, spender) < amount:
            token.approve(spender, amount, sender=self.account)


@click.group()
def wallet() -> None:
    """Your balances, deposits, swaps, withdrawals, seller claims, buy-backs of unbacked
    tokens and redemption grants (ape accounts); test dollars on a local market (faucet)."""


wallet.add_command(faucet)  # local markets' test dollars (cli/faucet.py)


@dataclass
class Done:
    """What a wallet command did: lines for people, and the same facts for `--json` (amounts
    in exact smallest units as decimal strings, so no JSON reader rounds them)."""

    lines: list[str]
    data: dict[str, Any] = field(default_factory=dict)


def tx_hash(receipt: Any) -> str:
    return str(receipt.txn_hash)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="what was done in exact smallest units, as JSON (no lines for people)"
)


def wallet_command(name: str) -> Callable[[Callable[..., Done]], click.Command]:
    """A `promptex wallet` subcommand with ape's --network, --account/--yes and --json; the
    command returns what it did (`Done`) and this prints it one way or the other."""

    def decorate(fn: Callable[..., Done]) -> click.Command:
        @functools.wraps(fn)  # (ape reads the wrapped signature to pass `network`)
        def run(*args: Any, as_json: bool, **kwargs: Any) -> None:
            done = fn(*args, **kwargs)
            if as_json:
                click.echo(json.dumps(done.data, indent=2))
            else:
                for line in done.lines:
                    click.echo(line)

        command_fn = rpc_url_option(yes_option(account_option(json_option(run))))
        command_fn = network_option(default=LOCAL_NODE)(command_fn)
        command: click.Command = wallet.command(name, cls=market_command_class())(command_fn)
        return command

    return decorate


@wallet_command("balances")
def balances(network: Any, alias: str | None, yes: bool) -> Done:
    """USDC and every provider token: in the wallet, in the vault, any pending withdrawal, and
    a seller's earnings settlements credited, to claim."""
    with readable_errors():
        session = Session(network, alias, yes)
        vault = session.contract("CreditsVault")
        lines = [
            f"account {session.account.address} on {network.name}",
            f"{'asset':<6} {'wallet':>34} {'vault':>34} {'withdrawing':>24}",
        ]
        rows: list[dict[str, Any]] = []
        to_claim: list[str] = []
        total, priced = 0, True
        for symbol in ["USDC", *session.deployment.token_symbols()]:
            token = session.token(symbol)
            twap = None if symbol == "USDC" else twap_of(session, token)
            held, in_vault = token.balanceOf(session.account), vault.balance_of(session.account, token)
            pending = vault.pending_exits(session.account, token).amount
            claimable = vault.claimable(session.account, token)
            for amount in (held, in_vault, pending, claimable):
                value = usd_value(amount, symbol, twap)
                total += value or 0
                priced = priced and (value is not None or amount == 0)
            lines.append(
                f"{symbol:<6} {balance_text(held, symbol, twap=twap):>34} "
                f"{balance_text(in_vault, symbol, twap=twap):>34} {balance_text(pending, symbol, twap=twap):>24}"
            )
            if claimable:
                to_claim.append(
                    f"{balance_text(claimable, symbol, twap=twap)} (promptex wallet claim --asset {symbol})"
                )
            rows.append({"asset": symbol, "wallet_units": str(held), "vault_units": str(in_vault),
                         "withdrawing_units": str(pending), "claimable_units": str(claimable),
                         "twap": None if twap is None else str(twap)})  # fmt: skip
        if to_claim:
            lines.append(f"earned as a seller, to claim: {', '.join(to_claim)}")
        unknown = "" if priced else " (provider tokens without a TWAP yet not counted)"
        lines.append(f"total: {usd_text(total, 'down')} at the Oracle's {TWAP_WINDOW // 60}-minute TWAP{unknown}")
        data = {"account": session.account.address, "network": network.name, "balances": rows,
                "total_usdc_units": str(total), "twap_window_seconds": TWAP_WINDOW, "all_priced": priced}  # fmt: skip
        return Done(lines, data)


@wallet_command("deposit")
@click.option("--asset", "symbol", required=True, help="USDC or a provider token (CLD, GPT, GEM, LLM)")
@click.option("--amount", required=True, help="whole units, e.g. 100 or 12.5")
def deposit(network: Any, alias: str | None, yes: bool, symbol: str, amount: str) -> Done:
    """Deposit into the credits vault (approves the vault first if needed)."""
    value = units(amount, symbol)
    with readable_errors():
        session = Session(network, alias, yes)
        vault, token = session.contract("CreditsVault"), session.token(symbol)
        session.approve(token, vault.address, value)
        receipt = vault.deposit(token, value, sender=session.account)
        balance = vault.balance_of(session.account, token)
        return Done(
            [f"deposited {whole(value, symbol)}; vault balance {balance_text(balance, symbol)}"],
            {"asset": symbol.upper(), "amount_units": str(value), "vault_balance_units": str(balance),
             "tx": tx_hash(receipt)},
        )  # fmt: skip


@wallet_command("swap")
@click.option("--from", "sell", required=True, help="the asset you pay")
@click.option("--to", "buy", required=True, help="the asset you receive")
@click.option("--amount", required=True, help="whole units of --from")
@click.option("--slippage", default="0.5", show_default=True, help="percent below the quote you accept")
@click.option("--fee-bps", default=DEFAULT_FEE, show_default=True, type=int, help="the pools' fee tier")
def swap(
    network: Any, alias: str | None, yes: bool, sell: str, buy: str, amount: str, slippage: str, fee_bps: int
) -> Done:
    """Swap through the Router: exact input, output at least the quote minus --slippage. Routes
    between two provider tokens go through USDC."""
    value = units(amount, sell)
    try:
        tolerance = Decimal(slippage)
    except InvalidOperation:
        raise click.BadParameter(f"--slippage {slippage!r} is not a number") from None
    if not 0 <= tolerance < 100:
        raise click.BadParameter("--slippage is a percent in [0, 100)")
    with readable_errors():
        session = Session(network, alias, yes)
        router = session.contract("Router")
        symbols = [sell.upper(), buy.upper()]
        if "USDC" not in symbols:
            symbols.insert(1, "USDC")
        path = [session.token(s).address for s in symbols]
        fees = [fee_bps] * (len(path) - 1)
        quote = router.get_amounts_out(value, path, fees)[-1]
        min_out = int(Decimal(quote) * (100 - tolerance) / 100)
        if min_out == 0:
            raise ValueError(f"the market quotes nothing for {whole(value, sell)}: too small an amount")
        session.approve(session.token(sell), router.address, value)
        bought = session.token(buy)
        before = bought.balanceOf(session.account)
        deadline = chain_time() + 600
        receipt = router.swap_exact_in(value, min_out, path, fees, session.account, deadline, sender=session.account)
        got = bought.balanceOf(session.account) - before
        route = " → ".join(symbols)
        return Done(
            [f"swapped {whole(value, sell)} via {route} for {whole(got, buy)} (quoted {whole(quote, buy)})"],
            {"route": symbols, "amount_in_units": str(value), "amount_out_units": str(got),
             "quoted_units": str(quote), "min_out_units": str(min_out), "tx": tx_hash(receipt)},
        )  # fmt: skip


@wallet_command("withdraw")
@click.option("--asset", "symbol", required=True)
@click.option("--amount", required=True, help="whole units")
def withdraw(network: Any, alias: str | None, yes: bool, symbol: str, amount: str) -> Done:
    """Start a trustless withdrawal: it completes after the thaw, with nobody's consent.
    A provider token is sold for USDC on completion through the exit market fixed now, or
    taken as the token itself (`complete-withdraw --take-token`) if that market cannot sell."""
    value = units(amount, symbol)
    with readable_errors():
        session = Session(network, alias, yes)
        vault = session.contract("CreditsVault")
        receipt = vault.request_exit(session.token(symbol), value, sender=session.account)
        unlock_at = vault.exit_unlocks_at(session.account, session.token(symbol))
        stamp = utc_text(unlock_at)
        max_pause = vault.MAX_PAUSE()
        return Done(
            [
                f"withdrawal of {whole(value, symbol)} requested; complete it from {stamp} "
                f"(a pause delays it by at most {max_pause} s)",
                f"then: promptex wallet complete-withdraw --asset {symbol.upper()} (same --network/--account)",
            ],
            {"asset": symbol.upper(), "amount_units": str(value), "unlocks_at": int(unlock_at),
             "max_pause_seconds": int(max_pause), "tx": tx_hash(receipt)},
        )  # fmt: skip


@wallet_command("complete-withdraw")
@click.option("--asset", "symbol", required=True)
@click.option("--min-out", default=None, help="provider tokens: least USDC to accept for the sale")
@click.option(
    "--take-token",
    is_flag=True,
    help="provider tokens: take the token itself to your wallet instead of selling it (the fallback "
    "when the exit market fixed at request cannot sell)",
)
def complete_withdraw(
    network: Any, alias: str | None, yes: bool, symbol: str, min_out: str | None, take_token: bool
) -> Done:
    """Complete a thawed withdrawal: USDC to your wallet; a provider token sold for USDC
    (credited in the vault), or with --take-token sent to your wallet as the token."""
    if take_token and min_out:
        raise click.BadParameter("--min-out bounds a sale; --take-token sells nothing", param_hint="--min-out")
    least = units(min_out, "USDC") if min_out else 0
    with readable_errors():
        session = Session(network, alias, yes)
        vault, token = session.contract("CreditsVault"), session.token(symbol)
        unlock_at, now = vault.exit_unlocks_at(session.account, token), chain_time()
        if now < unlock_at:  # the vault would revert "exit still thawing": say until when
            pending = vault.pending_exits(session.account, token).amount
            raise click.ClickException(
                f"the withdrawal of {whole(pending, symbol)} thaws until {utc_text(unlock_at)} (the chain's time is "
                f"{utc_text(now)}): complete it then"
            )
        receipt = vault.complete_exit(token, least, not take_token, sender=session.account)
        event = next(iter(receipt.events.filter(vault.ExitCompleted)))
        paid = f"sold for {whole(event.proceeds, 'USDC')}, credited in the vault" if event.sold else "to your wallet"
        return Done(
            [f"withdrew {whole(event.amount, symbol)} ({paid})"],
            {"asset": symbol.upper(), "requested_units": str(event.requested), "amount_units": str(event.amount),
             "sold": bool(event.sold), "proceeds_units": str(event.proceeds), "min_out_units": str(least),
             "tx": tx_hash(receipt)},
        )  # fmt: skip


@wallet_command("exit-instant")
@click.argument("symbol", required=False)
@click.argument("amount", required=False)
@click.option(
    "--release", "release_file", default=None, type=click.File(),
    help="use this release (the JSON of `promptex coordinator release`) instead of asking the coordinator's door",
)  # fmt: skip
@click.option("--min-out", default=None, help="provider tokens: least USDC to accept for the sale")
def exit_instant(
    network: Any, alias: str | None, yes: bool, symbol: str | None, amount: str | None, release_file: Any,
    min_out: str | None,
) -> Done:  # fmt: skip
    """Leave the vault at once (no thaw): your wallet signs a request for AMOUNT (whole units)
    of SYMBOL to the coordinator's door, which co-signs a release if the amount is free of
    unsettled usage; the release is used at once. Or use a release FILE (--release)."""
    if (release_file is None) == (symbol is None) or (symbol is None) != (amount is None):
        raise click.UsageError("give SYMBOL AMOUNT (e.g. `exit-instant USDC 12.5`) or --release FILE, not both")
    asked = units(amount, symbol) if symbol and amount else 0
    release: dict[str, Any] = {}
    if release_file is not None:
        try:
            release = json.load(release_file)
        except ValueError as exc:
            raise click.BadParameter(f"not a release: {exc}", param_hint="--release") from None
    least = units(min_out, "USDC") if min_out else 0
    with readable_errors():
        session = Session(network, alias, yes)
        vault = session.contract("CreditsVault")
        if symbol is not None:
            from ape import chain

            from promptex.cli import door

            token = session.token(symbol)
            release = door.request_exit(
                session.account, chain_id=int(chain.chain_id), vault=str(vault.address), asset=str(token.address),
                amount=asked, chain_now=chain_time(),
            )  # fmt: skip
        try:
            symbol, released = str(release["asset"]), int(release["amount"])
            nonce, expiry = int(release["nonce"]), int(release["expiry"])
            signature = bytes.fromhex(str(release["signature"]).removeprefix("0x"))
        except (ValueError, KeyError, TypeError) as exc:
            raise click.BadParameter(f"not a release: {exc}", param_hint="--release") from None
        if str(release.get("address", "")).lower() != session.account.address.lower():
            raise ValueError(f"this release is for {release.get('address')}, not {session.account.address}")
        receipt = vault.exit_instant(
            session.token(symbol), released, least, nonce, expiry, signature, sender=session.account
        )
        return Done(
            [f"left the vault with {whole(released, symbol)} at once"],
            {"asset": symbol.upper(), "amount_units": str(released), "nonce": nonce, "min_out_units": str(least),
             "tx": tx_hash(receipt)},
        )  # fmt: skip


@wallet_command("cancel-withdraw")
@click.option("--asset", "symbol", required=True)
def cancel_withdraw(network: Any, alias: str | None, yes: bool, symbol: str) -> Done:
    """Cancel a pending withdrawal; the amount stays spendable."""
    with readable_errors():
        session = Session(network, alias, yes)
        vault = session.contract("CreditsVault")
        receipt = vault.cancel_exit(session.token(symbol), sender=session.account)
        event = next(iter(receipt.events.filter(vault.ExitCancelled)))
        return Done(
            [f"pending {symbol.upper()} withdrawal cancelled"],
            {"asset": symbol.upper(), "amount_units": str(event.amount), "tx": tx_hash(receipt)},
        )


@wallet_command("spend-cap")
@click.option("--asset", "symbol", required=True)
@click.option("--per-epoch", required=True, help="most one settlement may debit (whole units), or 'unlimited'")
@click.option("--total", required=True, help="most all settlements may debit (whole units), or 'unlimited'")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 3650), help="the cap's lifetime")
def spend_cap(network: Any, alias: str | None, yes: bool, symbol: str, per_epoch: str, total: str, days: int) -> Done:
    """Set the most settlements may debit from your vault balance (from your own wallet)."""

    asked_per, asked_total = cap_limit(per_epoch, symbol, "--per-epoch"), cap_limit(total, symbol, "--total")
    signed_per, signed_total = cap_values(asked_per, asked_total)
    with readable_errors():
        session = Session(network, alias, yes)
        vault = session.contract("CreditsVault")
        # The vault would revert it ("vault: account in signed mode"): one line, saying until when.
        refuse_while_signed(vault, session.account, session.token(symbol), symbol.upper(), "a spend cap")
        expiry = chain_time() + days * 86_400
        receipt = vault.set_spend_cap(session.token(symbol), signed_per, signed_total, expiry, sender=session.account)
        until = vault.spend_cap(session.account, session.token(symbol))[2]
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
        # As entered: the vault stores a per-epoch limit as m × 2**e, at least the one asked.
        return Done(
            [
                f"{symbol.upper()} cap: {cap_text(asked_per, symbol)} per epoch, {cap_text(asked_total, symbol)} "
                f"in total, until {stamp}"
            ],
            # Asked (null: unlimited) and what the vault holds (its sentinel for unlimited).
            {"asset": symbol.upper(), "per_epoch_units": None if asked_per is None else str(asked_per),
             "total_units": None if asked_total is None else str(asked_total),
             "signed_per_epoch_units": str(signed_per), "signed_total_units": str(signed_total),
             "expiry": int(until), "tx": tx_hash(receipt)},
        )  # fmt: skip


def refuse_while_signed(vault: Any, account: Any, token: Any, symbol: str, what: str) -> None:
    """Refuse, in one line and before anything is signed or sent, what the vault takes only once
    the account's newest session in the asset no longer settles vouchers (a spend cap, the next
    session key): until its `ends_at`. Says when, and when `session revoke` would end it if
    that is sooner (the vault: its last window becomes max(this window + 1, signed_from))."""
    if not hasattr(vault, "session_key"):
        return  # a vault without signed mode
    key, number, _lanes, _maximum, _settled, expiry, ends_at, signed_from = vault.session_key(account, token)
    now = chain_time()
    if int(key, 16) == 0 or now > ends_at:
        return
    sooner = ""
    if now < expiry:  # in force (or revoked and in its grace): a revocation now may end it sooner
        from promptex.ledger.sessions import settlement_close

        # A revocation now: the session's last window becomes the one after now's.
        revoke_end = settlement_close(now, int(signed_from), int(vault.genesis()), int(vault.epoch_length()))
        if revoke_end < ends_at:
            sooner = f"; `promptex session revoke --asset {symbol}` ends it at {utc_text(revoke_end)}"
    raise click.ClickException(
        f"{symbol} is in signed mode until {utc_text(ends_at)} (session {number}'s vouchers settle until then) and "
        f"the vault takes {what} only after that: run this again then{sooner}"
    )


@wallet_command("claim")
@click.option("--asset", "symbol", default="USDC", show_default=True)
def claim(network: Any, alias: str | None, yes: bool, symbol: str) -> Done:
    """Sellers: receive what settlements credited you in the vault, into your wallet."""
    with readable_errors():
        session = Session(network, alias, yes)
        vault, token = session.contract("CreditsVault"), session.token(symbol)
        amount = vault.claimable(session.account, token)
        if amount == 0:
            raise click.ClickException(f"nothing to claim in {symbol.upper()}")
        receipt = vault.claim(token, sender=session.account)
        return Done(
            [f"claimed {whole(amount, symbol)} into the wallet {session.account.address}"],
            {"asset": symbol.upper(), "amount_units": str(amount), "tx": tx_hash(receipt)},
        )


@wallet_command("buy-back")
@click.option("--token", "symbol", required=True, help="the provider token (CLD, GPT, GEM, LLM)")
@click.option("--amount", required=True, help="whole tokens to sell, at most what is unbacked")
@click.option("--min-out", default=None, help="refuse if the fund's quote now is below this much USDC")
def buy_back(network: Any, alias: str | None, yes: bool, symbol: str, amount: str, min_out: str | None) -> Done:
    """Holders: sell provider tokens left unbacked (their lot slashed, expired or closed
    short) to the provider's insurance fund, which burns them. Every token gets the same
    fixed rate, its token's bond share of its face value (10 % as deployed): waiting or
    going first gains nothing, and no other lot's failure lowers it."""
    if symbol.upper() == "USDC":
        raise click.BadParameter("only provider tokens are bought back", param_hint="--token")
    value = units(amount, symbol)
    least = None if min_out is None else units(min_out, "USDC")
    with readable_errors():
        session = Session(network, alias, yes)
        escrow, token, usdc = session.contract("CreditEscrow"), session.token(symbol), session.token("USDC")
        unbacked = escrow.unbacked(token)
        if unbacked == 0:
            raise click.ClickException(f"no {symbol.upper()} is unbacked: the insurance fund buys nothing back")
        if value > unbacked:  # the most it takes, exactly, to type (it named the amount refused)
            raise click.ClickException(
                f"only {balance_text(unbacked, symbol)} is unbacked; "
                f"sell at most that (--amount {whole_units(unbacked, decimals_of(symbol))})"
            )
        held = token.balanceOf(session.account)
        if held < value:
            raise click.ClickException(
                f"{session.account.address} holds {balance_text(held, symbol)}, not {whole(value, symbol)}"
            )
        quote = escrow.quote_buy_back(token, value)
        if quote == 0:
            raise click.ClickException(f"the insurance fund would pay nothing for {whole(value, symbol)}")
        if least is not None and quote < least:
            raise click.ClickException(
                f"the fund pays {whole(quote, 'USDC')} now, below --min-out {whole(least, 'USDC')}"
            )
        session.approve(token, escrow.address, value)
        before = usdc.balanceOf(session.account)
        receipt = escrow.buy_back_unbacked(token, value, sender=session.account)
        paid = usdc.balanceOf(session.account) - before
        return Done(
            [f"sold {whole(value, symbol)} to the insurance fund for {whole(paid, 'USDC')} (burned)"],
            {"token": symbol.upper(), "amount_units": str(value), "paid_units": str(paid),
             "unbacked_before_units": str(unbacked), "tx": tx_hash(receipt)},
        )  # fmt: skip


# ─── Redemption: the user's side (grant the agent, link an account, refund) ──


@wallet_command("grant-agent")
@click.option("--agent", required=True, help="the redemption agent's address")
@click.option("--token", "limits", required=True, multiple=True, help="SYMBOL=DAILY_LIMIT in whole tokens (repeatable)")
@click.option("--slippage", default="2", show_default=True, help="percent the sale may fall below the TWAP")
@click.option("--payee", default=None, help="who releases reimburse [default: the agent]")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 3650), help="the grant's lifetime")
def grant_agent(
    network: Any, alias: str | None, yes: bool, agent: str, limits: tuple[str, ...], slippage: str, payee: str | None,
    days: int,
) -> Done:  # fmt: skip
    """Let an agent sell up to a daily limit of your tokens into redemptions (and approve the escrow)."""
    try:
        slippage_bps = int(Decimal(slippage) * 100)
    except InvalidOperation:
        raise click.BadParameter(f"{slippage!r} is not a percentage", param_hint="--slippage") from None
    pairs = []
    for item in limits:
        symbol, _, amount = item.partition("=")
        if not amount:
            raise click.BadParameter(f"{item!r}: expected SYMBOL=DAILY_LIMIT", param_hint="--token")
        pairs.append((symbol.upper(), units(amount, symbol)))
    with readable_errors():
        session = Session(network, alias, yes)
        escrow = session.contract("RedemptionEscrow")
        tokens = [session.token(symbol) for symbol, _ in pairs]
        expiry = chain_time() + days * 86_400
        receipt = escrow.set_grant(
            agent, payee or agent, expiry, slippage_bps, tokens, [limit for _, limit in pairs], sender=session.account
        )
        # The escrow, not the agent, pulls the tokens; the grant's daily limits bound it.
        for token in tokens:
            session.approve(token, escrow.address, MAX_UINT256)
        shown = ", ".join(f"{whole(limit, symbol)} a day" for symbol, limit in pairs)
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expiry))
        return Done(
            [f"granted {agent}: {shown}, ≤ {slippage} % under the TWAP, until {until}"],
            {"agent": agent, "payee": payee or agent, "slippage_bps": slippage_bps, "expiry": expiry,
             "daily_limits": [{"token": symbol, "limit_units": str(limit)} for symbol, limit in pairs],
             "tx": tx_hash(receipt)},
        )  # fmt: skip


@wallet_command("revoke-agent")
@click.option("--agent", required=True, help="the redemption agent's address")
def revoke_agent(network: Any, alias: str | None, yes: bool, agent: str) -> Done:
    """Revoke your grant to an agent at once (open redemptions still release or refund)."""
    with readable_errors():
        session = Session(network, alias, yes)
        receipt = session.contract("RedemptionEscrow").revoke_grant(agent, sender=session.account)
        return Done([f"grant to {agent} revoked"], {"agent": agent, "tx": tx_hash(receipt)})


@wallet_command("link-account")
# (not `provider`: ape's ConnectedProviderCommand passes its provider under that name)
@click.option("--provider", "provider_name", required=True, help="anthropic, openai, …")
@click.option("--account-ref", required=True, help="0x… bytes32 that `promptex agent link` printed")
def link_account(network: Any, alias: str | None, yes: bool, provider_name: str, account_ref: str) -> Done:
    """Record which of your provider accounts redemptions may credit."""
    from promptex.protocol.redemption import provider_id

    try:
        ref = bytes.fromhex(account_ref.removeprefix("0x"))
    except ValueError:
        ref = b""
    if len(ref) != 32:
        raise click.BadParameter(f"{account_ref!r} is not a 32-byte hex value", param_hint="--account-ref")
    with readable_errors():
        session = Session(network, alias, yes)
        receipt = session.contract("RedemptionEscrow").link_account(
            provider_id(provider_name), ref, sender=session.account
        )
        return Done(
            [f"{provider_name} account {account_ref} linked"],
            {"provider": provider_name, "account_ref": "0x" + ref.hex(), "tx": tx_hash(receipt)},
        )


@wallet_command("refund")
@click.option("--redemption", "redemption_id", required=True, type=click.IntRange(1), help="the escrow's id")
def refund(network: Any, alias: str | None, yes: bool, redemption_id: int) -> Done:
    """Take back an unreleased redemption's USDC after its deadline."""
    with readable_errors():
        session = Session(network, alias, yes)
        escrow = session.contract("RedemptionEscrow")
        amount = escrow.redemptions(redemption_id).usdc
        receipt = escrow.refund(redemption_id, sender=session.account)
        return Done(
            [f"redemption {redemption_id} refunded: {whole(amount, 'USDC')}"],
            {"redemption": redemption_id, "amount_units": str(amount), "tx": tx_hash(receipt)},
        )


@click.command("status", cls=market_command_class())
@network_option(default=LOCAL_NODE)
@rpc_url_option
def status(network: Any) -> None:
    """The market on this network: vault totals and epochs per asset, lots, pools."""
    with readable_errors():
        deployment = live_deployment(network.name)
        if deployment is None:
            raise ValueError(f"no live deployment recorded for {network.name!r}: run `ape run deploy` first")
        vault, escrow = contract_at(deployment, "CreditsVault"), contract_at(deployment, "CreditEscrow")
        factory, usdc = contract_at(deployment, "Factory"), contract_at(deployment, "USDC")
        click.echo(f"{network.name}: chain {deployment.chain_id}, vault {vault.address}")
        click.echo(f"{'asset':<6} {'in the vault':>26} {'reserve':>20} {'last epoch':>10}")
        for symbol in ["USDC", *deployment.token_symbols()]:
            token = contract_at(deployment, "USDC" if symbol == "USDC" else f"token:{symbol}")
            click.echo(
                f"{symbol:<6} {whole(token.balanceOf(vault), symbol):>26} "
                f"{whole(vault.reserve(token), symbol):>20} {vault.last_epoch(token):>10}"
            )
        kinds, states = {1: "tokenized", 2: "listed"}, {1: "open", 2: "closed", 3: "expired", 4: "slashed"}
        now = chain_time()
        by_address = {deployment.address(f"token:{s}").lower(): s for s in deployment.token_symbols()}
        oracle = contract_at(deployment, "Oracle")

        def twap(symbol: str) -> int | None:  # a tokenized lot's tokens with their dollars, as balances show them
            try:
                return int(oracle.consult(deployment.address(f"token:{symbol}"), TWAP_WINDOW)) or None
            except Exception:  # not tracked yet, or the window not covered
                return None

        twaps = {symbol: twap(symbol) for symbol in deployment.token_symbols()}
        click.echo(f"lots: {escrow.lot_count()}")
        for lot_id in range(1, escrow.lot_count() + 1):
            lot = escrow.lots(lot_id)
            # tokenized: capacity in the provider's tokens; listed: in USD micro (its face value)
            unit = by_address.get(str(lot.token).lower(), "?") if lot.kind == 1 else "USDC"
            if unit == "USDC":
                used = f"{money(lot.consumed, unit)} of {money(lot.capacity, unit)}"
            elif unit != "?":  # tokens with their dollars at the TWAP, as balances show them
                at = twaps[unit]
                used = f"{money(lot.consumed, unit, twap=at)} of {token_value_text(lot.capacity, unit, at)}"
            else:
                used = "?"
            state = states.get(lot.status, lot.status)
            if lot.status == 1 and lot.close_at:  # open but no longer routed: a close was requested
                state = f"closing ({'finalizable' if now >= lot.close_at else f'from {utc_text(lot.close_at)}'})"
            click.echo(
                f"  #{lot_id} {kinds.get(lot.kind, lot.kind)} {state} "
                f"face {usd_text(lot.face_value)}, consumed {used}, "
                f"bond {whole(lot.bond, 'USDC')}"
            )
        click.echo("pools:")
        for symbol in deployment.token_symbols():
            token = contract_at(deployment, f"token:{symbol}")
            address = factory.get_pool(token, usdc, DEFAULT_FEE)
            if not factory.is_pool(address):
                continue
            pool = pool_at(address)
            r0, r1, _ = pool.get_reserves()
            reserve_token, reserve_usdc = (r0, r1) if pool.token0() == token.address else (r1, r0)
            price = Decimal(reserve_usdc) * 10**12 / reserve_token if reserve_token else Decimal(0)
            click.echo(
                f"  {symbol}/USDC {address}: {whole(reserve_token, symbol)} + {whole(reserve_usdc, 'USDC')}, "
                f"price ${price:.6f}"
            )
