"""`promptex hedge …`: capped calls, puts and the perpetual, signed with ape accounts.

Same options as `promptex wallet` (`--network`, `--account`, `--yes`). Prices are in
dollars per whole token ("3.695"), amounts in whole USDC. Each command reads the
deployment's Options and Perp; every figure `show` prints comes from the contracts
(`preview_close` for positions, the Oracle's TWAP and each series' terms for options).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from promptex.chain.options import settle
from promptex.cli.errors import readable_errors
from promptex.cli.wallet import Session, chain_time, units, whole
from promptex.protocol.options import CALL, PUT, Terms, price_of_dollars
from promptex.protocol.units import PRICE_SCALE, PRICE_UNIT, USD_MICRO


@click.group()
def hedge() -> None:
    """Hedge AI spend: capped calls and puts (Options), long/short perpetuals (Perp)."""


def hedge_command(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """A `promptex hedge` subcommand with ape's --network and --account/--yes."""
    from ape.cli import network_option

    from promptex.cli.market import market_command_class, rpc_url_option
    from promptex.cli.wallet import LOCAL_NODE, account_option, yes_option

    def decorate(fn: Callable[..., None]) -> click.Command:
        fn = rpc_url_option(yes_option(account_option(fn)))
        fn = network_option(default=LOCAL_NODE)(fn)
        command: click.Command = hedge.command(name, cls=market_command_class())(fn)
        return command

    return decorate


def price(text: str) -> int:
    try:
        return price_of_dollars(Decimal(text))
    except (InvalidOperation, ValueError):
        raise click.BadParameter(f"{text!r} is not a price in dollars per token") from None


def shown_price(value: int) -> str:
    return f"${value / PRICE_UNIT:,.6f}"


def short_price(value: int) -> str:
    """A price for a name: "$3.70", "$0.004218" (no more decimals than it has, at least 2)."""
    text = f"{value / PRICE_UNIT:,.6f}".rstrip("0")
    whole_part, _, decimals = text.partition(".")
    return f"${whole_part}.{decimals.ljust(2, '0')}"


def series_name(s: Any, symbol: str) -> str:
    """A series by a short name instead of its 77-digit id: "GPT call $3.70–$4.50 2026-12-06"."""
    import time

    kind = "call" if s.kind == CALL else "put"
    day = time.strftime("%Y-%m-%d", time.gmtime(int(s.expiry)))
    return f"{symbol} {kind} {short_price(s.strike)}–{short_price(s.bound)} {day}"


def _session(network: Any, alias: str | None, yes: bool) -> tuple[Session, Any, Any]:
    session = Session(network, alias, yes)
    for name in ("Options", "Perp"):
        if name not in session.deployment.contracts:
            raise ValueError(f"the {network.name} deployment has no {name}: redeploy (ape run deploy --force)")
    return session, session.contract("Options"), session.contract("Perp")


# ─── Perpetual ───────────────────────────────────────────────────────────────


@hedge_command("open")
@click.option("--token", "symbol", required=True, help="CLD, GPT, GEM, LLM")
@click.option("--side", type=click.Choice(["long", "short"]), required=True, help="long gains when the price rises")
@click.option("--margin", required=True, help="USDC you post (the open fee comes out of it)")
@click.option("--notional", required=True, help="USDC exposure at the entry price")
def open_position(
    network: Any, alias: str | None, yes: bool, symbol: str, side: str, margin: str, notional: str
) -> None:
    """Open a perpetual long or short at the token's TWAP."""
    margin_units, notional_units = units(margin, "USDC"), units(notional, "USDC")
    with readable_errors():
        session, _, perp = _session(network, alias, yes)
        usdc, token = session.token("USDC"), session.token(symbol)
        session.approve(usdc, perp.address, margin_units)
        perp.open_position(token, side == "long", margin_units, notional_units, sender=session.account)
        position_id = int(perp.position_count())
        entry = perp.positions(position_id)
        click.echo(
            f"position {position_id}: {side} {whole(notional_units, 'USDC')} of {symbol.upper()} at "
            f"{shown_price(entry.notional * PRICE_SCALE // entry.size)}, margin {whole(entry.margin, 'USDC')}"
        )


@hedge_command("close")
@click.option("--position", "position_id", required=True, type=click.IntRange(1))
@click.option("--min-payout", default=None, help="least USDC to accept (default: none)")
def close_position(network: Any, alias: str | None, yes: bool, position_id: int, min_payout: str | None) -> None:
    """Close your perpetual position at the TWAP; prints what it paid."""
    floor = units(min_payout, "USDC") if min_payout else 0
    with readable_errors():
        session, _, perp = _session(network, alias, yes)
        position = perp.positions(position_id)
        if position.owner != session.account.address:
            raise click.ClickException(f"position {position_id} is not yours ({session.account.address})")
        usdc = session.token("USDC")
        before = usdc.balanceOf(session.account)
        perp.close_position(position_id, floor, sender=session.account)
        paid = usdc.balanceOf(session.account) - before
        click.echo(
            f"position {position_id} closed: paid {whole(paid, 'USDC')}; P&L {signed(paid - position.margin)} USDC"
        )


@hedge_command("provide")
@click.option("--amount", required=True, help="USDC to add to the perpetual's liquidity pool")
def provide(network: Any, alias: str | None, yes: bool, amount: str) -> None:
    """Liquidity providers: take the other side of traders' net open interest for fees and their losses."""
    value = units(amount, "USDC")
    with readable_errors():
        session, _, perp = _session(network, alias, yes)
        session.approve(session.token("USDC"), perp.address, value)
        before = perp.shares_of(session.account)
        perp.deposit(value, 0, sender=session.account)
        click.echo(f"provided {whole(value, 'USDC')}: {perp.shares_of(session.account) - before} pool shares")


@hedge_command("withdraw-liquidity")
@click.option("--shares", default=None, help="pool shares to burn (default: all yours)")
def withdraw_liquidity(network: Any, alias: str | None, yes: bool, shares: str | None) -> None:
    """Liquidity providers: burn pool shares for USDC (only what open positions do not reserve)."""
    with readable_errors():
        session, _, perp = _session(network, alias, yes)
        burn = int(shares) if shares else int(perp.shares_of(session.account))
        if burn <= 0:
            raise click.ClickException("no pool shares to withdraw")
        usdc = session.token("USDC")
        before = usdc.balanceOf(session.account)
        perp.withdraw(burn, 0, sender=session.account)
        click.echo(f"withdrew {whole(usdc.balanceOf(session.account) - before, 'USDC')} for {burn} shares")


@hedge_command("refresh-bounds")
@click.option("--token", "symbol", required=True, help="CLD, GPT, GEM, LLM")
@click.option("--side", type=click.Choice(["long", "short", "both"]), default="both", show_default=True)
def refresh(network: Any, alias: str | None, yes: bool, symbol: str, side: str) -> None:
    """Keepers: recompute a market side's LP-pricing bounds from its open positions (anyone may;
    bounds only widen between refreshes, which prices LPs more conservatively than needed)."""
    from promptex.chain.perp import refresh_bounds

    with readable_errors():
        session, _, perp = _session(network, alias, yes)
        token = session.token(symbol)
        for is_long in {"long": (True,), "short": (False,), "both": (True, False)}[side]:
            count = refresh_bounds(perp, token, is_long, session.account)
            which = "long" if is_long else "short"
            click.echo(f"{symbol.upper()} {which} side: bounds refreshed from {count} positions")


def signed(amount: int) -> str:
    return ("+" if amount >= 0 else "−") + f"{abs(amount) / USD_MICRO:,.6f}".rstrip("0").rstrip(".")


# ─── Options ─────────────────────────────────────────────────────────────────


@hedge_command("write")
@click.option("--token", "symbol", required=True)
@click.option("--kind", type=click.Choice(["call", "put"]), required=True, help="call: a capped call; put: a floor")
@click.option("--strike", required=True, help="dollars per token")
@click.option("--bound", default="0", show_default=True, help="call: the cap (above strike); put: a floor or 0")
@click.option("--days", required=True, type=click.IntRange(1, 730), help="expiry, days from now")
@click.option("--size", default="1000", show_default=True, help="tokens one option unit covers")
@click.option("--units", "count", required=True, type=click.IntRange(1), help="option units to write")
@click.option("--premium", default=None, help="offer them at this many USDC a unit")
def write(
    network: Any, alias: str | None, yes: bool, symbol: str, kind: str, strike: str, bound: str, days: int,
    size: str, count: int, premium: str | None,
) -> None:  # fmt: skip
    """Write option units (post their collateral) and, with --premium, offer them."""
    size_units = units(size, symbol)
    premium_units = units(premium, "USDC") if premium else None
    with readable_errors():
        session, options, _ = _session(network, alias, yes)
        token = session.token(symbol)
        expiry = chain_time() // 3_600 * 3_600 + days * 86_400  # whole hours: one series per day and terms
        terms = Terms(str(token.address), CALL if kind == "call" else PUT, price(strike), price(bound), expiry,
                      size_units)  # fmt: skip
        if options.series(terms.id).expiry == 0:
            options.create_series(*terms.args(), sender=session.account)
        session.approve(session.token("USDC"), options.address, terms.collateral_per_unit * count)
        options.write(terms.id, count, sender=session.account)
        click.echo(
            f"series {terms.id}: wrote {count} units expiring at {expiry}, "
            f"collateral {whole(terms.collateral_per_unit * count, 'USDC')}"
        )
        if premium_units is not None:
            options.offer(terms.id, count, premium_units, sender=session.account)
            click.echo(f"offer {options.offer_count()}: {count} units at {whole(premium_units, 'USDC')} each")


@hedge_command("buy")
@click.option("--offer", "offer_id", required=True, type=click.IntRange(1))
@click.option("--units", "count", required=True, type=click.IntRange(1))
def buy(network: Any, alias: str | None, yes: bool, offer_id: int, count: int) -> None:
    """Buy option units from an offer (pays the premium to the seller)."""
    with readable_errors():
        session, options, _ = _session(network, alias, yes)
        offer = options.offers(offer_id)
        session.approve(session.token("USDC"), options.address, offer.premium_per_unit * count)
        options.buy(offer_id, count, sender=session.account)
        click.echo(
            f"bought {count} units of series {offer.series_id} for {whole(offer.premium_per_unit * count, 'USDC')}"
        )


@hedge_command("settle")
@click.option("--series", "series_id", required=True, type=int)
def settle_series(network: Any, alias: str | None, yes: bool, series_id: int) -> None:
    """Settle an expired series at the TWAP over the window ending at or before expiry (anyone, once)."""
    with readable_errors():
        session, options, _ = _session(network, alias, yes)
        settle(options, series_id, session.account)
        s = options.series(series_id)
        click.echo(f"series {series_id} settled at {shown_price(s.settlement_price)}: "
                   f"{whole(s.payout_per_unit, 'USDC')} a unit")  # fmt: skip


@hedge_command("claim")
@click.option("--series", "series_id", required=True, type=int)
def claim(network: Any, alias: str | None, yes: bool, series_id: int) -> None:
    """Holders: collect a settled series' payout. Writers: use `reclaim`."""
    with readable_errors():
        session, options, _ = _session(network, alias, yes)
        usdc = session.token("USDC")
        before = usdc.balanceOf(session.account)
        options.claim(series_id, sender=session.account)
        click.echo(f"claimed {whole(usdc.balanceOf(session.account) - before, 'USDC')}")


@hedge_command("reclaim")
@click.option("--series", "series_id", required=True, type=int)
def reclaim(network: Any, alias: str | None, yes: bool, series_id: int) -> None:
    """Writers: take back a settled series' collateral not owed to holders."""
    with readable_errors():
        session, options, _ = _session(network, alias, yes)
        usdc = session.token("USDC")
        before = usdc.balanceOf(session.account)
        options.reclaim(series_id, sender=session.account)
        click.echo(f"reclaimed {whole(usdc.balanceOf(session.account) - before, 'USDC')}")


# ─── Showing P&L ─────────────────────────────────────────────────────────────


@hedge_command("offers")
def offers(network: Any, alias: str | None, yes: bool) -> None:
    """Open option offers: the series by name, units left, premium a unit, the writer."""
    with readable_errors():
        session, options, _perp = _session(network, alias, yes)
        symbols = {str(session.token(s).address): s for s in session.deployment.token_symbols()}
        shown = 0
        for offer_id in range(1, int(options.offer_count()) + 1):
            offer = options.offers(offer_id)
            if int(offer.units) == 0:
                continue
            s = options.series(offer.series_id)
            click.echo(
                f"offer {offer_id}: {series_name(s, symbols.get(s.token, '?'))}, {offer.units} units at "
                f"{whole(offer.premium_per_unit, 'USDC')} each (collateral {whole(s.collateral_per_unit, 'USDC')} "
                f"a unit), from {offer.seller}"
            )
            shown += 1
        if not shown:
            click.echo("no open offers: write one with `promptex hedge write`")


@hedge_command("show")
def show(network: Any, alias: str | None, yes: bool) -> None:
    """Your open perpetual positions and option holdings, with P&L now."""
    with readable_errors():
        session, options, perp = _session(network, alias, yes)
        me = session.account.address
        symbols = {str(session.token(s).address): s for s in session.deployment.token_symbols()}
        click.echo(f"account {me} on {network.name}")
        click.echo(
            f"{'position':>8} {'side':<5} {'token':<5} {'notional':>16} {'margin':>16} {'price now':>14} {'P&L':>14}"
        )
        for position_id in range(1, int(perp.position_count()) + 1):
            p = perp.positions(position_id)
            if p.owner != me:
                continue
            now = perp.preview_close(position_id, False)
            click.echo(
                f"{position_id:>8} {'long' if p.is_long else 'short':<5} {symbols.get(p.token, '?'):<5} "
                f"{whole(p.notional, 'USDC'):>16} {whole(p.margin, 'USDC'):>16} {shown_price(now.price):>14} "
                f"{signed(now.payout - p.margin):>14}"
            )
        oracle = session.contract("Oracle")
        window = int(options.twap_window())
        held: dict[int, int] = {}
        from ape import chain

        head = chain.blocks.head.number + 1
        for log in options.Bought.range(session.deployment.block_number, head, search_topics={"buyer": me}):
            held[log.series_id] = held.get(log.series_id, 0) + log.units
        click.echo(f"{'series':<34} {'strike':>12} {'bound':>12} {'units':>7} {'value now':>14}")
        for series_id in held:
            units_now = int(options.balanceOf(me, series_id))
            if units_now == 0:
                continue
            s = options.series(series_id)
            terms = Terms(s.token, s.kind, s.strike, s.bound, s.expiry, s.size)
            if s.settled:
                value = s.payout_per_unit * units_now
            else:
                value = terms.payout_per_unit(int(oracle.consult(s.token, window))) * units_now
            click.echo(
                f"{series_name(s, symbols.get(s.token, '?')):<34} {shown_price(s.strike):>12} "
                f"{shown_price(s.bound):>12} {units_now:>7} {whole(value, 'USDC'):>14}"
            )
