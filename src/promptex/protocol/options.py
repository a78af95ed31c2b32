"""Options' units and payout math: capped calls and puts on provider tokens,
cash-settled in USDC at the Oracle's TWAP over a window ending at or before expiry
(`promptex.chain.options` deploys and settles through ape).

The arithmetic mirrors `contracts/Options.vy` exactly (integers, same rounding), so
tests, the `promptex hedge` CLI and the scenario script can predict what the
contract pays without a chain. See the contract's header for the reasons.

Units: a price is the Oracle's (USDC units per 10**18 token units, 18-decimal fixed
point: $0.004218 per CLD is 4_218 * 10**18); a size is token units per option unit;
USDC amounts are USDC units (10**-6 dollars).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from promptex.protocol.units import DAY, PRICE_SCALE, PRICE_UNIT

# Mirrors of the contract's constants (tests check that they match).
CALL = 1
PUT = 2
MAX_TERM = 2 * 365 * DAY
MAX_VALUE = 2**127 - 1
ORACLE_CARDINALITY = 64
_MASK32 = 2**32 - 1
_MASK112 = 2**112 - 1
_MAX_LAG = 2**31

# Settlement TWAP window: ten Oracle periods on a demo chain (period 60 s), four on
# a live one (period 900 s); the contract allows period .. 16 × period.
LOCAL_TWAP_WINDOW = 600
LIVE_TWAP_WINDOW = 3_600


class SettlementUnavailable(ValueError):
    """The Oracle's ring does not (or no longer) hold the observations a settlement needs."""


# ─── Units ───────────────────────────────────────────────────────────────────


def price_of_dollars(dollars_per_token: Decimal | str | int) -> int:
    """The Oracle price of `dollars_per_token` USD per whole token ("0.004218" →
    4_218 * 10**18). Exact: more than 24 decimals of a dollar is refused."""
    value = Decimal(dollars_per_token) * PRICE_UNIT
    if value != value.to_integral_value() or value < 0:
        raise ValueError(f"{dollars_per_token} USD per token is not a whole Oracle price unit")
    return int(value)


def series_id(token: str, kind: int, strike: int, bound: int, expiry: int, size: int) -> int:
    """The contract's id for these terms: uint256(keccak256(abi_encode(...)))."""
    encoded = encode(
        ["address", "uint8", "uint256", "uint256", "uint256", "uint256"], [token, kind, strike, bound, expiry, size]
    )
    return int.from_bytes(keccak(encoded), "big")


def collateral_per_unit(kind: int, strike: int, bound: int, size: int) -> int:
    """USDC a writer posts per option unit: |bound − strike| × size / 10**36, which
    must be a whole number of USDC units (the contract refuses other terms)."""
    if kind == CALL:
        if bound <= strike:
            raise ValueError("a capped call's cap must be above its strike")
        spread = bound - strike
    elif kind == PUT:
        if bound >= strike:
            raise ValueError("a put's floor must be below its strike")
        spread = strike - bound
    else:
        raise ValueError(f"unknown option kind {kind}")
    if size <= 0:
        raise ValueError("size must be positive")
    if spread * size % PRICE_SCALE:
        raise ValueError("collateral per unit is not a whole USDC unit: change strike, bound or size")
    return spread * size // PRICE_SCALE


def intrinsic(kind: int, strike: int, bound: int, price: int) -> int:
    """Value per 10**18 token units at `price` (Oracle units), capped at the spread:
    CALL min(max(0, price − strike), cap − strike); PUT min(max(0, strike − price), strike − floor)."""
    if kind == CALL:
        return min(price, bound) - min(price, strike)
    if kind == PUT:
        return max(price, strike) - max(price, bound)
    raise ValueError(f"unknown option kind {kind}")


def payout_per_unit(kind: int, strike: int, bound: int, size: int, price: int) -> int:
    """USDC one option unit pays at `price`, rounded down (never above the collateral)."""
    return intrinsic(kind, strike, bound, price) * size // PRICE_SCALE


@dataclass(frozen=True)
class Terms:
    """A series' terms, as `create_series` takes them."""

    token: str
    kind: int
    strike: int
    bound: int
    expiry: int
    size: int

    @property
    def id(self) -> int:
        return series_id(self.token, self.kind, self.strike, self.bound, self.expiry, self.size)

    @property
    def collateral_per_unit(self) -> int:
        return collateral_per_unit(self.kind, self.strike, self.bound, self.size)

    def payout_per_unit(self, price: int) -> int:
        return payout_per_unit(self.kind, self.strike, self.bound, self.size, price)

    def args(self) -> tuple[str, int, int, int, int, int]:
        return self.token, self.kind, self.strike, self.bound, self.expiry, self.size


def units_for_exposure(tokens: int, size: int) -> int:
    """Option units that cover at least `tokens` token units (rounded up)."""
    return -(-tokens // size)


def holder_pnl(terms: Terms, units: int, premium_per_unit: int, price: int) -> int:
    """A buyer's result in USDC units at settlement `price`: payout − premium paid."""
    return units * (terms.payout_per_unit(price) - premium_per_unit)


def writer_pnl(terms: Terms, units: int, premium_per_unit: int, price: int) -> int:
    """A writer's result in USDC units (units written and sold): premium − payout.
    Together with `holder_pnl` it sums to zero: options move money, never make it."""
    return units * (premium_per_unit - terms.payout_per_unit(price))


# ─── Settlement price ────────────────────────────────────────────────────────


def uq_to_price(average: int) -> int:
    """A UQ112.112 quote-per-token average → Oracle price units (the Oracle's conversion)."""
    return (average >> 112) * PRICE_SCALE + (((average & _MASK112) * PRICE_SCALE) >> 112)


def settlement_ranks(observations: Sequence[tuple[int, int]], now: int, expiry: int, window: int) -> tuple[int, int]:
    """(start_rank, end_rank) for `settle` at block time `now`: `observations` are the
    Oracle's, newest first ((time mod 2**32, accumulator), as `observation(token,
    rank)` returns them). End: the newest at or before expiry; start: the newest at or
    before end − window. A rank equal to len(observations) means the ring does not
    hold it: the series then settles late, at the Oracle's TWAP when settled."""
    if now <= expiry:
        raise SettlementUnavailable("the series has not expired")
    count = len(observations)
    lag = now - expiry
    if lag + window >= _MAX_LAG:
        return count, count
    end_rank, threshold = count, 0
    for rank, (time, _) in enumerate(observations):
        age = (now - time) & _MASK32
        if end_rank == count:
            if age >= lag:
                end_rank, threshold = rank, age + window
        elif age >= threshold:
            return rank, end_rank
    return count, end_rank


def is_late(ranks: tuple[int, int], observation_count: int) -> bool:
    """Whether `settle` with these ranks falls back to the TWAP at settlement time."""
    return observation_count in ranks


def settlement_price(observations: Sequence[tuple[int, int]], now: int, expiry: int, window: int) -> int:
    """The price `settle` fixes (Oracle units), from the same observations; raises
    SettlementUnavailable for a late settlement (its price is `consult` then)."""
    start, end = settlement_ranks(observations, now, expiry, window)
    if is_late((start, end), len(observations)):
        raise SettlementUnavailable("the Oracle no longer holds the window: the series settles late, at the TWAP then")
    (t_start, c_start), (t_end, c_end) = observations[start], observations[end]
    elapsed = ((now - t_start) & _MASK32) - ((now - t_end) & _MASK32)
    return uq_to_price(((c_end - c_start) % 2**256) // elapsed)
