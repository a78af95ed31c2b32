"""Numbers as a user writes them on the command line: checked, exact, one-line errors."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import click

from promptex.protocol.units import TOKEN_UNIT, USD_MICRO


def decimal_of(option: str, text: str) -> Decimal:
    """A non-negative finite number."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise click.ClickException(f"{option} must be a number, not {text!r}") from None
    if not value.is_finite() or value < 0:
        raise click.ClickException(f"{option} must be a non-negative number, not {text!r}")
    return value


def count_of(option: str, text: str) -> int:
    """A non-negative whole number."""
    value = decimal_of(option, text)
    if value != value.to_integral_value():
        raise click.ClickException(f"{option} must be a whole number, not {text!r}")
    return int(value)


def _positive(text: str, unit: int, what: str, decimals: int) -> int:
    """A positive amount in whole units → smallest units, exactly (at most `decimals` places)."""
    try:
        value = Decimal(text) * unit
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not a {what}") from None
    if value <= 0 or value != value.to_integral_value():
        raise click.BadParameter(f"{text!r}: a positive amount with at most {decimals} decimals")
    return int(value)


def usd_micro(text: str) -> int:
    """Dollars ("20", "19.99") to USD micro-units, exactly."""
    return _positive(text, USD_MICRO, "dollar amount", 6)


def token_units(text: str) -> int:
    """Whole tokens ("5000", "0.5") to 18-decimal units, exactly."""
    return _positive(text, TOKEN_UNIT, "token amount", 18)


def asset_units(text: str, symbol: str) -> int:
    """Whole units of an asset ("12.5" USDC) to its smallest units, exactly."""
    from promptex.metering import asset

    decimals = asset(symbol).decimals
    return _positive(text, 10**decimals, f"{symbol} amount", decimals)
