"""Units and scales shared by every contract and service: one definition each.

Money is an integer in its asset's smallest unit: USDC has 6 decimals (one unit is a
USD micro-unit), every provider token 18. Oracle prices are USDC units per 10**18
token units as an 18-decimal fixed-point number, so PRICE_SCALE converts.
"""

import time
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Literal

from promptex.protocol.providers import PROVIDER_TOKENS

USDC_SYMBOL = "USDC"
USDC_DECIMALS = 6
TOKEN_DECIMALS = 18  # every provider token (and any other PROMPTEX credit token)
USD_MICRO: int = 10**USDC_DECIMALS  # USD micro-units per dollar; equal to USDC's smallest unit
TOKEN_UNIT: int = 10**TOKEN_DECIMALS  # smallest units per whole provider token

WAD = 10**18  # one, in 18-decimal fixed point (Oracle prices, Perp's funding fractions)
# Oracle.consult's scale: USDC units = token units × price / PRICE_SCALE
# (10**18 token units per price × 10**18 fixed point).
PRICE_SCALE = TOKEN_UNIT * WAD
PRICE_UNIT = USD_MICRO * WAD  # the Oracle price of one dollar per whole token

BPS = 10_000  # basis points in one
MAX_UINT256 = 2**256 - 1
ZERO_ADDRESS = "0x" + "00" * 20

HOUR = 3_600  # seconds
DAY = 86_400


def whole_units(amount: int, decimals: int) -> str:
    """`amount` smallest units as whole units, exactly, without trailing zeros: (4500, 3) → "4.5"."""
    whole_part, fraction = divmod(abs(amount), 10**decimals)
    digits = str(fraction).rjust(decimals, "0").rstrip("0")
    return ("-" if amount < 0 else "") + (f"{whole_part}.{digits}" if digits else str(whole_part))


# ─── Money for people ────────────────────────────────────────────────────────
# The one formatter for every amount a person reads (CLI tables and messages, error
# messages, emails, the dashboard's server-side text): whole units at the asset's
# sensible precision, and a provider token's value in dollars at the Oracle's TWAP when
# the caller knows it. Exact smallest units stay in machine-readable fields (`--json`,
# the 402 body's `hold_units`, headers); these strings are for reading, not parsing.

UNLIMITED_TEXT = "unlimited"
SIGNIFICANT_DIGITS = 4  # amounts below one whole unit: enough digits to tell costs apart
MOST_DECIMALS_SHOWN = 8  # dust below 10**-8 whole units reads "<0.00000001", not 18 digits
# How a shown amount is rounded: to the nearest, or so that a refusal's "has" (down) and
# "needs" (up) never read as the same number.
Rounding = Literal["nearest", "down", "up"]
_ROUNDING = {"nearest": ROUND_HALF_UP, "down": ROUND_FLOOR, "up": ROUND_CEILING}
_EXACT = Context(prec=160)  # any uint256 with 18 decimals, exactly (the default keeps 28 digits)


def decimals_of(symbol: str) -> int:
    """An asset's decimals by symbol: USDC 6, every provider (or credit) token 18."""
    return USDC_DECIMALS if symbol.upper() == USDC_SYMBOL else TOKEN_DECIMALS


def display_decimals(symbol: str) -> int:
    """Decimals worth showing for an asset: at least 2, and enough that one step of the
    last digit is worth at most a cent at the token's face value (GPT at $3.695: 3)."""
    face = next((t.face_value_usd_micro for t in PROVIDER_TOKENS if t.symbol == symbol.upper()), USD_MICRO)
    places = 2
    while face > USD_MICRO // 100 * 10**places:  # a step of 10**-places tokens is worth more than a cent
        places += 1
    return min(places, decimals_of(symbol))


def amount_text(amount: int, decimals: int, places: int, rounding: Rounding = "nearest") -> str:
    """`amount` smallest units as a grouped decimal rounded (to the nearest, by default) to `places` decimals;
    an amount below one whole unit keeps SIGNIFICANT_DIGITS significant digits (at most
    `decimals`, MOST_DECIMALS_SHOWN), so a cost of 0.000123 USDC never reads as 0.00."""
    with localcontext(_EXACT):
        return _amount_text(amount, decimals, places, rounding)


def _amount_text(amount: int, decimals: int, places: int, rounding: Rounding) -> str:
    value = abs(Decimal(amount).scaleb(-decimals))
    sign = "-" if amount < 0 else ""
    shown = places
    if 0 < value < 1:
        leading_zeros = -value.adjusted() - 1  # 0.000123 → 3
        shown = min(decimals, max(places, min(MOST_DECIMALS_SHOWN, leading_zeros + SIGNIFICANT_DIGITS)))
    step = Decimal(1).scaleb(-shown)
    signed = (-value if sign else value).quantize(step, rounding=_ROUNDING[rounding])  # floor/ceiling: signed
    rounded = abs(signed)
    if value and not rounded:  # dust
        return f"{'>-' if sign else '<'}{step:f}"
    text = f"{rounded:,.{shown}f}"
    if shown > places:  # significant digits beyond the usual places: no trailing zeros
        head, _, tail = text.partition(".")
        tail = tail.rstrip("0").ljust(places, "0")
        text = f"{head}.{tail}" if tail else head
    return (sign if rounded else "") + text


TWAP_WINDOW = 1_800  # the USD beside provider tokens: the Oracle's half-hour TWAP


def usd_value(amount: int, symbol: str, twap: int | None) -> int | None:
    """USD micro-units an amount is worth: USDC 1:1; a provider token at `twap`
    (`Oracle.consult`'s value: USDC units per 10**18 token units, 18-decimal fixed point),
    rounded down; None when the price is unknown."""
    if symbol.upper() == USDC_SYMBOL:
        return amount
    if twap is None:
        return None
    value = abs(amount) * twap // PRICE_SCALE
    return -value if amount < 0 else value


def utc_text(unix: int) -> str:
    """A moment for people: "2027-01-15 08:00:00 UTC" (a deadline, an expiry), not unix time."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


def span_text(seconds: int) -> str:
    """A length of time for people, rounded down to its unit: "45 s", "12 min", "3 h 5 min",
    "2 d 4 h" (a wait until a deadline, or since one)."""
    left = max(0, int(seconds))
    if left < 120:
        return f"{left} s"
    minutes = left // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def exact_text(amount: int, decimals: int, places: int) -> str:
    """`amount` smallest units as a grouped decimal with every digit, never rounded, at least
    `places` decimals: (17_712, 6, 2) → "0.017712", (20_000_000, 6, 2) → "20.00"."""
    head, _, tail = whole_units(amount, decimals).partition(".")
    sign, head = ("-", head[1:]) if head.startswith("-") else ("", head)
    return f"{sign}{int(head):,}.{tail.ljust(places, '0')}"


def usd_text(usd_micro: int, rounding: Rounding = "nearest", *, exact: bool = False) -> str:
    """Dollars for people: "$1,234.56", "$0.0012", "-$3.50"; `exact`: every digit, never
    rounded ("$99.9995", not "$100.00")."""
    text = exact_text(usd_micro, USDC_DECIMALS, 2) if exact else amount_text(usd_micro, USDC_DECIMALS, 2, rounding)
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


def money(
    amount: int, symbol: str, *, twap: int | None = None, unlimited: int | None = None, rounding: Rounding = "nearest"
) -> str:
    """An amount of an asset for people: "14,587.48 CLD ($61.53)", "50.00 USDC".

    `twap` (a provider token's `Oracle.consult` value) adds the dollar value beside it;
    `unlimited` names the sentinel that means "no limit" where one is meant (a spend cap's
    total), shown as the word instead of a 30-digit number. `rounding`: see Rounding (the
    dollars beside a token's amount are rounded the same way)."""
    if unlimited is not None and amount >= unlimited:
        return UNLIMITED_TEXT
    symbol = symbol.upper()
    text = f"{amount_text(amount, decimals_of(symbol), display_decimals(symbol), rounding)} {symbol}"
    usd = None if symbol == USDC_SYMBOL else usd_value(amount, symbol, twap)
    return text if usd is None else f"{text} ({usd_text(usd, rounding)})"


def token_value_text(amount: int, symbol: str, twap: int | None, rounding: Rounding = "nearest") -> str:
    """A provider token's amount where a person wants its dollars (a lot's remaining or
    consumed tokens): `money` with the TWAP's dollars beside it, or "(no price yet)" while the
    Oracle has none — a row of dollars beside rows of tokens alone read as if the tokens had none."""
    text = money(amount, symbol, twap=twap, rounding=rounding)
    return text if twap is not None or symbol.upper() == USDC_SYMBOL else f"{text} (no price yet)"


def balance_text(amount: int, symbol: str, *, twap: int | None = None, unlimited: int | None = None) -> str:
    """A balance, or what is left to spend, for people: `money` rounded DOWN (its dollars too),
    so a person never reads more than there is — 9,999,993 units of USDC read "9.99 USDC", not
    "10.00 USDC". Costs and charges stay `money`'s nearest; what is owed or needed rounds up."""
    return money(amount, symbol, twap=twap, unlimited=unlimited, rounding="down")


def money_exact(amount: int, symbol: str) -> str:
    """An amount a person reads where every unit matters (a check comparing a charge with
    its rate, why signing stopped): whole units with every digit, never rounded —
    "0.017712 USDC", "12,345.678901 USDC", "20.00 USDC" (`money` would show 0.01771 and
    12,345.68: an overcharge of one unit would read as no difference)."""
    symbol = symbol.upper()
    return f"{exact_text(amount, decimals_of(symbol), display_decimals(symbol))} {symbol}"
