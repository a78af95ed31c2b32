"""What a message costs in the asset that pays for it.

    message_cost = (in_rate × input_tokens + out_rate × output_tokens) / 1000

With a provider's prompt cache (`usage_cost`), input tokens read from or written to it
are priced at the model's cache rates instead of the input rate (see
`metering.tokens`: each token is priced once). Rates are exact rationals in the paying
asset's smallest unit per 1,000 tokens; the cost is rounded once, up, in that smallest
unit, so rounding never favours the user.

- Paid in the model's provider token: rate = list price ÷ the token's face value.
- Paid in USDC: rate = list price × the serving listed lot's rate × (1 + protocol fee).
- Paid in another provider's token: the USDC rate (a listed lot serves it, and its
  seller is owed USDC) converted into the paying token at that token's Oracle TWAP
  (never a spot price).

`rates_for` is the one rule: the gateway charges what it returns and `promptex usage
cost` quotes it, so a quote is what settles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

from promptex.metering.assets import asset, provider_token, token_by_symbol
from promptex.metering.catalog import ModelPrice
from promptex.metering.tokens import TokenUsage
from promptex.protocol.units import BPS, USDC_SYMBOL

TOKENS_PER_RATE = 1_000  # rates are per 1,000 tokens


class PricingError(ValueError):
    """A price that cannot be formed from what was given."""


@dataclass(frozen=True)
class Rates:
    """Exact prices per 1,000 tokens, in `asset`'s smallest unit. A cache rate of None
    is the input rate (the model lists no price of its own for it)."""

    asset: str
    input_per_1k: Fraction
    output_per_1k: Fraction
    cache_read_per_1k: Fraction | None = None
    cache_write_per_1k: Fraction | None = None
    cache_write_1h_per_1k: Fraction | None = None

    def scaled(self, asset_symbol: str, factor: Fraction) -> Rates:
        """Every rate × `factor`, in `asset_symbol`."""

        def times(rate: Fraction | None) -> Fraction | None:
            return None if rate is None else rate * factor

        return Rates(
            asset_symbol,
            self.input_per_1k * factor,
            self.output_per_1k * factor,
            times(self.cache_read_per_1k),
            times(self.cache_write_per_1k),
            times(self.cache_write_1h_per_1k),
        )

    @cached_property
    def over_common_denominator(self) -> tuple[int, int, int, int, int, int]:
        """(input, output, cache read, cache write, 1-hour cache write, denominator): every
        rate as an integer over one denominator, so a cost is integer arithmetic and one
        division, exactly the same as with the fractions (which cost a request ~0.1 ms
        of CPU in the gateway's profile). Computed once per `Rates` (the gateway keeps them)."""
        rates = (self.input_per_1k, self.output_per_1k, self.cache_read, self.cache_write, self.cache_write_1h)
        denominator = math.lcm(*(rate.denominator for rate in rates))
        i, o, r, w, w1h = (rate.numerator * (denominator // rate.denominator) for rate in rates)
        return i, o, r, w, w1h, denominator

    @property
    def cache_read(self) -> Fraction:
        return self.input_per_1k if self.cache_read_per_1k is None else self.cache_read_per_1k

    @property
    def cache_write(self) -> Fraction:
        return self.input_per_1k if self.cache_write_per_1k is None else self.cache_write_per_1k

    @property
    def cache_write_1h(self) -> Fraction:
        return self.input_per_1k if self.cache_write_1h_per_1k is None else self.cache_write_1h_per_1k


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


def _round_up(exact: Fraction) -> int:
    return -(-exact.numerator // exact.denominator)


def message_cost(rates: Rates, input_tokens: int, output_tokens: int = 0) -> int:
    """The cost in smallest units, rounded up once: never below the exact cost, less than one unit above it."""
    return _round_up(exact_cost(rates, input_tokens, output_tokens))


def exact_usage_cost(rates: Rates, usage: TokenUsage) -> Fraction:
    """The unrounded cost of what a request used: uncached input at the input rate, cache
    reads and writes at their rates, output (reasoning included) at the output rate."""
    return (
        rates.input_per_1k * usage.uncached_input_tokens
        + rates.cache_read * usage.cache_read_tokens
        + rates.cache_write * usage.cache_write_5m_tokens
        + rates.cache_write_1h * usage.cache_write_1h_tokens
        + rates.output_per_1k * usage.output_tokens
    ) / TOKENS_PER_RATE


def usage_cost(rates: Rates, usage: TokenUsage) -> int:
    """`exact_usage_cost` rounded up once, in smallest units (in integers: see
    `Rates.over_common_denominator`)."""
    i, o, r, w, w1h, denominator = rates.over_common_denominator
    total = (
        i * usage.uncached_input_tokens
        + r * usage.cache_read_tokens
        + w * usage.cache_write_5m_tokens
        + w1h * usage.cache_write_1h_tokens
        + o * usage.output_tokens
    )
    return -(-total // (denominator * TOKENS_PER_RATE))


def upper_bound(rates: Rates, input_tokens: int, output_tokens: int, *, cache_writes: bool = False) -> int:
    """The most `input_tokens` in and `output_tokens` out can cost: every input token at the
    highest rate it may be charged. A request that may write to the prompt cache
    (`cache_writes`: Anthropic's `cache_control`) may pay a write rate, above the input rate,
    for all of its input; any request may be served from the cache (a catalog's read rate
    is meant to be below the input rate, but the bound does not rely on it)."""
    if input_tokens < 0 or output_tokens < 0:
        raise PricingError("token counts cannot be negative")
    i, o, r, w, w1h, denominator = rates.over_common_denominator  # integers: as exact as the fractions
    input_rate = max(i, w, w1h, r) if cache_writes else max(i, r)
    return -(-(input_rate * input_tokens + o * output_tokens) // (denominator * TOKENS_PER_RATE))


def within_bounds(
    rates: Rates, usage: TokenUsage, input_tokens: int, output_tokens: int, visible_tokens: int | None = None
) -> TokenUsage:
    """`usage` as a request bounded by `input_tokens` in (its body's bound, cache reads and
    writes included) and `output_tokens` out (the output limit sent upstream; 0: an
    embedding, which has none) can have used it: what an upstream reports beyond a bound
    (a seller's own endpoint may report anything) is not charged. Output beyond its limit
    becomes the limit, reasoning within it; with `visible_tokens` (what its answer's text can
    hold: `produced.visible_limit`), visible output (beyond the reasoning) beyond them
    becomes them, the reasoning kept (no one sees it). Input beyond its bound becomes the
    bound, its parts kept within what was reported and filled from the cheapest (at
    `rates`: any rates of the model, as every rate scales alike) — the reported excess
    comes off the priciest parts, never moved onto a pricier one. Within its bounds,
    `usage` itself."""
    out = min(usage.output_tokens, output_tokens)
    if visible_tokens is not None:
        out = min(out, min(usage.reasoning_tokens, out) + visible_tokens)
    if usage.input_tokens <= input_tokens and out == usage.output_tokens:
        return usage
    parts = {
        "cache_read": usage.cache_read_tokens,
        "uncached": usage.uncached_input_tokens,
        "cache_write_5m": usage.cache_write_5m_tokens,
        "cache_write_1h": usage.cache_write_1h_tokens,
    }
    if usage.input_tokens > input_tokens:
        i, _, r, w, w1h, _ = rates.over_common_denominator
        price = {"cache_read": r, "uncached": i, "cache_write_5m": w, "cache_write_1h": w1h}
        room = input_tokens
        for name in sorted(parts, key=lambda name: price[name]):  # stable: ties in the order above
            parts[name] = taken = min(parts[name], room)
            room -= taken
    hour = parts["cache_write_1h"]
    return TokenUsage(
        sum(parts.values()),
        out,
        cache_read_tokens=parts["cache_read"],
        cache_write_tokens=parts["cache_write_5m"] + hour,
        cache_write_1h_tokens=hour,
        reasoning_tokens=min(usage.reasoning_tokens, out),
    )


def list_rates(price: ModelPrice) -> Rates:
    """A model's list price as rates in USD micro-units (USDC's smallest unit) per 1,000 tokens."""

    def rate(value: int | None) -> Fraction | None:
        return None if value is None else Fraction(value)

    return Rates(
        USDC_SYMBOL,
        Fraction(price.input_usd_micro_per_1k),
        Fraction(price.output_usd_micro_per_1k),
        rate(price.cache_read_usd_micro_per_1k),
        rate(price.cache_write_usd_micro_per_1k),
        rate(price.cache_write_1h_usd_micro_per_1k),
    )


def largest_output(rates: Rates, input_tokens: int, budget: int, limit: int, *, cache_writes: bool = False) -> int:
    """The most output tokens (at most `limit`) whose `upper_bound` fits `budget`; −1 when
    not even the input's does (what a refused hold could have asked for instead)."""
    if upper_bound(rates, input_tokens, 0, cache_writes=cache_writes) > budget:
        return -1
    low, high = 0, limit  # the bound grows with the output: the last that fits
    while low < high:
        mid = (low + high + 1) // 2
        if upper_bound(rates, input_tokens, mid, cache_writes=cache_writes) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def provider_token_rates(price: ModelPrice, face_value_usd_micro: int | None = None) -> Rates:
    """Rates in the model's provider token: list price ÷ the token's USD face value.

    `face_value_usd_micro` (USD micro-units per whole token) defaults to the token's
    initial face value in `promptex.protocol.providers`.
    """
    token = provider_token(price.provider)
    face = token.face_value_usd_micro if face_value_usd_micro is None else face_value_usd_micro
    if face <= 0:
        raise PricingError(f"{token.symbol} face value must be positive")
    return list_rates(price).scaled(token.symbol, Fraction(asset(token.symbol).unit, face))


def usdc_rates(price: ModelPrice, lot_rate_bps: int, fee_bps: int) -> Rates:
    """Rates in USDC: list price × the listed lot's rate, plus the protocol fee on top of it.

    USD micro-units are USDC's smallest unit, so the list price needs no conversion.
    """
    if not 0 < lot_rate_bps <= BPS:
        raise PricingError(f"a listed lot's rate must be 1..{BPS} basis points of list price")
    if fee_bps < 0:
        raise PricingError("the protocol fee cannot be negative")
    return list_rates(price).scaled(USDC_SYMBOL, Fraction(lot_rate_bps * (BPS + fee_bps), BPS * BPS))


def usdc_to_token_rates(rates: Rates, to_symbol: str, usdc_per_token: Fraction) -> Rates:
    """USDC `rates` re-expressed in `to_symbol`'s smallest units at a TWAP given in USDC
    smallest units per whole token (exact; the cost is rounded once, up, when formed)."""
    if asset(rates.asset).symbol != USDC_SYMBOL:
        raise PricingError(f"only USDC rates convert at a TWAP, not {rates.asset} rates")
    if usdc_per_token <= 0:
        raise PricingError("a TWAP price must be positive")
    target = asset(to_symbol)
    return rates.scaled(target.symbol, target.unit / Fraction(usdc_per_token))


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
