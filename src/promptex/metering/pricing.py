"""What a message costs in the asset that pays for it.

    message_cost = (in_rate × input_tokens + out_rate × output_tokens) / 1000

Rates are exact rationals in the paying asset's smallest unit per 1,000 tokens; the
cost is rounded once, up, in that smallest unit, so rounding never favours the user.

- Paid in the model's provider token: rate = list price ÷ the token's face value.
- Paid in USDC: rate = list price × the serving listed lot's rate × (1 + protocol fee).
- Paid in another provider's token: the USDC rate (a listed lot serves it, and its
  seller is owed USDC) converted into the paying token at that token's Oracle TWAP
  (never a spot price).

`rates_for` is the one rule: the gateway charges what it returns and `promptex usage
cost` quotes it, so a quote is what settles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from promptex.metering.assets import asset, provider_token, token_by_symbol
from promptex.metering.catalog import ModelPrice
from promptex.protocol.units import BPS, USDC_SYMBOL

TOKENS_PER_RATE = 1_000  # rates are per 1,000 tokens


class PricingError(ValueError):
    """A price that cannot be formed from what was given."""


@dataclass(frozen=True)
class Rates:
    """Exact prices per 1,000 tokens, in `asset`'s smallest unit."""

    asset: str
    input_per_1k: Fraction
    output_per_1k: Fraction


def flat_rates(asset_symbol: str, per_1k: Fraction | int) -> Rates:
    """One rate for input and output tokens alike (an ad-hoc rate)."""
    rate = Fraction(per_1k)
    if rate < 0:
        raise PricingError("a rate cannot be negative")
    return Rates(asset(asset_symbol).symbol, rate, rate)


def exact_cost(rates: Rates, input_tokens: int, output_tokens: int = 0) -> Fraction:
    """The unrounded cost in smallest units."""
    if input_tokens < 0 or output_tokens < 0:
        raise PricingError("token counts cannot be negative")
    return (rates.input_per_1k * input_tokens + rates.output_per_1k * output_tokens) / TOKENS_PER_RATE


def message_cost(rates: Rates, input_tokens: int, output_tokens: int = 0) -> int:
    """The cost in smallest units, rounded up once: never below the exact cost, less than one unit above it."""
    exact = exact_cost(rates, input_tokens, output_tokens)
    return -(-exact.numerator // exact.denominator)


def provider_token_rates(price: ModelPrice, face_value_usd_micro: int | None = None) -> Rates:
    """Rates in the model's provider token: list price ÷ the token's USD face value.

    `face_value_usd_micro` (USD micro-units per whole token) defaults to the token's
    initial face value in `promptex.protocol.providers`.
    """
    token = provider_token(price.provider)
    face = token.face_value_usd_micro if face_value_usd_micro is None else face_value_usd_micro
    if face <= 0:
        raise PricingError(f"{token.symbol} face value must be positive")
    unit = asset(token.symbol).unit
    return Rates(
        token.symbol,
        Fraction(price.input_usd_micro_per_1k * unit, face),
        Fraction(price.output_usd_micro_per_1k * unit, face),
    )


def usdc_rates(price: ModelPrice, lot_rate_bps: int, fee_bps: int) -> Rates:
    """Rates in USDC: list price × the listed lot's rate, plus the protocol fee on top of it.

    USD micro-units are USDC's smallest unit, so the list price needs no conversion.
    """
    if not 0 < lot_rate_bps <= BPS:
        raise PricingError(f"a listed lot's rate must be 1..{BPS} basis points of list price")
    if fee_bps < 0:
        raise PricingError("the protocol fee cannot be negative")
    factor = Fraction(lot_rate_bps * (BPS + fee_bps), BPS * BPS)
    return Rates(USDC_SYMBOL, price.input_usd_micro_per_1k * factor, price.output_usd_micro_per_1k * factor)


def usdc_to_token_rates(rates: Rates, to_symbol: str, usdc_per_token: Fraction) -> Rates:
    """USDC `rates` re-expressed in `to_symbol`'s smallest units at a TWAP given in USDC
    smallest units per whole token (exact; the cost is rounded once, up, when formed)."""
    if asset(rates.asset).symbol != USDC_SYMBOL:
        raise PricingError(f"only USDC rates convert at a TWAP, not {rates.asset} rates")
    if usdc_per_token <= 0:
        raise PricingError("a TWAP price must be positive")
    target = asset(to_symbol)
    factor = target.unit / Fraction(usdc_per_token)
    return Rates(target.symbol, rates.input_per_1k * factor, rates.output_per_1k * factor)


def rates_for(
    price: ModelPrice,
    pay_symbol: str,
    *,
    lot_rate_bps: int | None = None,
    fee_bps: int = 0,
    twaps: Mapping[str, Fraction] | None = None,
    face_value_usd_micro: int | None = None,
) -> Rates:
    """The rates a request to `price.model` pays in `pay_symbol`: what the gateway charges.

    USDC needs the serving listed lot's `lot_rate_bps` (plus `fee_bps`). Another provider's
    token is served by a listed lot too, so it pays that lot's USDC rates converted at the
    paying token's Oracle TWAP in `twaps` (USDC smallest units per whole token): the seller
    is owed USDC, and the model's own token's price does not enter what the buyer owes.
    """
    pay = asset(pay_symbol).symbol
    own = provider_token(price.provider)
    if pay == own.symbol:
        return provider_token_rates(price, face_value_usd_micro)
    if pay != USDC_SYMBOL and token_by_symbol(pay) is None:
        raise PricingError(f"{price.model} cannot be paid in {pay}: pay in {own.symbol}, USDC or a provider token")
    if lot_rate_bps is None:
        raise PricingError(f"paying in {pay} needs the serving listed lot's rate")
    usdc = usdc_rates(price, lot_rate_bps, fee_bps)
    if pay == USDC_SYMBOL:
        return usdc
    twap = (twaps or {}).get(pay)
    if twap is None:
        raise PricingError(f"paying {price.model} in {pay} converts through the Oracle's TWAP: need {pay}")
    return usdc_to_token_rates(usdc, pay, twap)


def split_usdc_charge(total: int, fee_bps: int) -> tuple[int, int]:
    """(to the listed lot's seller, protocol fee) of a USDC charge; the fee takes the rounding."""
    if total < 0 or fee_bps < 0:
        raise PricingError("a charge and a fee cannot be negative")
    seller = total * BPS // (BPS + fee_bps)
    return seller, total - seller
