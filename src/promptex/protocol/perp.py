"""Perp's arithmetic in plain Python (`promptex.chain.perp` deploys the contract).

The functions below mirror `contracts/Perp.vy` exactly (same integer formulas, same
rounding) so that tests, the `promptex hedge` CLI and the scenario script can predict
what the contract will pay without a node. See the contract's @dev for the reasons;
the mirrors are checked against the contract in tests/contracts/test_perp*.py.

Units: prices as `Oracle.consult` returns them (USDC units per 10**18 token units,
18-decimal fixed point); margin, notional, fees and PnL in USDC units (6 decimals);
size in token units (18 decimals); funding indices and k as WAD fractions.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import isqrt

from promptex.protocol.units import BPS, HOUR, PRICE_SCALE, WAD

# Mirrors of the contract's constants (tests check that they match).
MAX_MARKETS = 8
MAX_LEVERAGE = 100
MAX_FUNDING_K = 10**16
MAX_FEE_BPS = 500
MAX_PROFIT_BPS = 100_000
MIN_NOTIONAL = 10**6
MAX_AMOUNT = 2**96 - 1
SHARE_SCALE = 10**12
MINIMUM_SHARES = 10**15
MAX_REFRESH = 500

# TWAP window positions trade at (at least the Oracle's period: 60 s on a demo chain,
# 900 s on a live one) and the insurance fund's share of every fee.
LOCAL_TWAP_WINDOW = 600
LIVE_TWAP_WINDOW = 1_800
DEFAULT_INSURANCE_FEE_BPS = 2_000


@dataclass(frozen=True)
class MarketParams:
    """What `add_market` takes after the token (see the contract for each bound)."""

    funding_k: int = WAD // 10_000  # 0.01 % of notional per hour at full imbalance
    max_leverage: int = 10
    maintenance_bps: int = 500  # 5 %
    oi_cap_bps: int = 5_000  # each side at most half the pool
    liquidation_bonus_bps: int = 200  # 2 % of notional to the liquidator
    open_fee_bps: int = 10  # 0.10 %
    close_fee_bps: int = 10
    max_profit_bps: int = 10_000  # a position gains at most its notional
    # Each side at most 10 % of the depth of the DEX pool the Oracle reads (its USDC
    # side at the TWAP): a TWAP pump must move that pool, not one a tenth its size.
    depth_cap_bps: int = 1_000

    def as_args(self) -> tuple[int, ...]:
        return (
            self.funding_k,
            self.max_leverage,
            self.maintenance_bps,
            self.oi_cap_bps,
            self.liquidation_bonus_bps,
            self.open_fee_bps,
            self.close_fee_bps,
            self.max_profit_bps,
            self.depth_cap_bps,
        )

    def check(self) -> None:
        """Raise ValueError for parameters `add_market` would refuse."""
        if not 0 <= self.funding_k <= MAX_FUNDING_K:
            raise ValueError("funding k too high")
        if not 1 <= self.max_leverage <= MAX_LEVERAGE:
            raise ValueError("max leverage out of range")
        if self.maintenance_bps <= 0 or self.max_leverage * self.maintenance_bps >= BPS:
            raise ValueError("maintenance margin out of range")
        if not 0 < self.oi_cap_bps <= BPS:
            raise ValueError("oi cap out of range")
        if self.open_fee_bps > MAX_FEE_BPS or self.close_fee_bps > MAX_FEE_BPS:
            raise ValueError("fee too high")
        if self.liquidation_bonus_bps + self.close_fee_bps > self.maintenance_bps:
            raise ValueError("bonus and fee above maintenance")
        if not 0 < self.max_profit_bps <= MAX_PROFIT_BPS:
            raise ValueError("max profit out of range")
        if not 0 < self.depth_cap_bps <= BPS:
            raise ValueError("depth cap out of range")


DEFAULT_MARKET = MarketParams()


def _ceil_div(x: int, y: int) -> int:
    return -(-x // y)


def _trunc_div(x: int, y: int) -> int:
    """Integer division rounding toward zero (Vyper's `//` on int256)."""
    q = abs(x) // abs(y)
    return q if (x >= 0) == (y > 0) else -q


# ─── Opening ─────────────────────────────────────────────────────────────────


def open_fee(notional: int, params: MarketParams) -> int:
    return _ceil_div(notional * params.open_fee_bps, BPS)


def close_fee(notional: int, params: MarketParams) -> int:
    return _ceil_div(notional * params.close_fee_bps, BPS)


def size_at(notional: int, price: int) -> int:
    """Token units a position of `notional` USDC holds at `price` (rounded down)."""
    return notional * PRICE_SCALE // price


def reserve(notional: int, params: MarketParams) -> int:
    """A position's gain cap, which the pool reserves while it is open."""
    return _ceil_div(notional * params.max_profit_bps, BPS)


def max_notional(margin: int, params: MarketParams) -> int:
    """The largest notional `margin` USDC may open at maximum leverage (fee included)."""

    def fits(notional: int) -> bool:
        return (margin - open_fee(notional, params)) * params.max_leverage >= notional

    notional = margin * params.max_leverage * BPS // (BPS + params.max_leverage * params.open_fee_bps)
    while notional > 0 and not fits(notional):
        notional -= 1
    while fits(notional + 1):
        notional += 1
    return notional


def maintenance(notional: int, params: MarketParams) -> int:
    return _ceil_div(notional * params.maintenance_bps, BPS)


# ─── PnL and funding ─────────────────────────────────────────────────────────


def pnl(is_long: bool, size: int, notional: int, price: int) -> int:
    """Price PnL in USDC units at `price`, rounded against the trader."""
    if is_long:
        return size * price // PRICE_SCALE - notional
    return notional - _ceil_div(size * price, PRICE_SCALE)


def funding_rate(long_notional: int, short_notional: int, k: int) -> int:
    """Funding per hour (WAD fraction of the paying side's notional): positive when longs pay."""
    if long_notional == short_notional:
        return 0
    rate = k * abs(long_notional - short_notional) // (long_notional + short_notional)
    return rate if long_notional > short_notional else -rate


def accrue(
    long_index: int, short_index: int, long_notional: int, short_notional: int, k: int, elapsed: int
) -> tuple[int, int]:
    """Both funding indices after `elapsed` seconds (the contract's `_indices`)."""
    if elapsed == 0 or long_notional == short_notional:
        return long_index, short_index
    heavy, light = max(long_notional, short_notional), min(long_notional, short_notional)
    numerator = k * (heavy - light) * elapsed
    denominator = (heavy + light) * HOUR
    paid = _ceil_div(numerator, denominator)
    received = numerator // denominator * heavy // light if light else 0
    if long_notional > short_notional:
        return long_index + paid, short_index - received
    return long_index - received, short_index + paid


def funding_owed(notional: int, entry_index: int, index: int) -> int:
    """Funding a position owes (negative: receives), up when owed, toward zero when received."""
    delta = index - entry_index
    if delta > 0:
        return _ceil_div(notional * delta, WAD)
    return -(notional * -delta // WAD)


@dataclass(frozen=True)
class Position:
    is_long: bool
    margin: int
    size: int
    notional: int
    reserved: int
    entry_funding: int = 0

    @classmethod
    def opened(
        cls, is_long: bool, margin: int, notional: int, price: int, params: MarketParams, entry: int = 0
    ) -> Position:
        """The position `open_position(token, is_long, margin, notional)` creates at `price`."""
        return cls(
            is_long, margin - open_fee(notional, params), size_at(notional, price), notional, reserve(notional, params),
            entry,
        )  # fmt: skip


def gain(position: Position, price: int, index: int) -> tuple[int, int, int]:
    """(price PnL, funding owed, realised gain = PnL − funding capped at `reserved`)."""
    price_pnl = pnl(position.is_long, position.size, position.notional, price)
    owed = funding_owed(position.notional, position.entry_funding, index)
    return price_pnl, owed, min(price_pnl - owed, position.reserved)


def equity(position: Position, price: int, index: int) -> int:
    return position.margin + gain(position, price, index)[2]


def is_liquidatable(position: Position, price: int, index: int, params: MarketParams) -> bool:
    return equity(position, price, index) < maintenance(position.notional, params)


def liquidation_price(position: Position, params: MarketParams, funding: int = 0) -> int:
    """The TWAP at which the position turns liquidatable (funding owed so far included),
    to within rounding: longs are liquidatable below it, shorts above it. 0 for a long
    that no price liquidates."""
    need = maintenance(position.notional, params) - position.margin + funding
    if position.is_long:
        return max(0, _ceil_div((position.notional + need) * PRICE_SCALE, position.size))
    return max(0, (position.notional - need) * PRICE_SCALE // position.size)


@dataclass(frozen=True)
class Settlement:
    """What closing a position yields (the contract's `preview_close`)."""

    price: int
    pnl: int
    funding: int
    gain: int
    equity: int
    fee: int
    bonus: int
    bonus_from_insurance: int
    payout: int
    bad_debt: int
    bad_debt_covered: int

    @property
    def bad_debt_absorbed(self) -> int:
        return self.bad_debt - self.bad_debt_covered

    def pool_change(self, margin: int, insurance_fee_bps: int) -> int:
        """How pool_amount moves (the close fee's pool share included)."""
        fee_to_pool = self.fee - self.fee * insurance_fee_bps // BPS
        from_equity = self.bonus - self.bonus_from_insurance
        return margin - self.payout - from_equity - self.fee + self.bad_debt_covered + fee_to_pool

    def insurance_change(self, insurance_fee_bps: int) -> int:
        return self.fee * insurance_fee_bps // BPS - self.bonus_from_insurance - self.bad_debt_covered


def settle(
    position: Position, price: int, index: int, params: MarketParams, insurance: int, liquidation: bool
) -> Settlement:
    """Close (or liquidate) at `price` with the side's funding `index` and the insurance
    fund holding `insurance`: equity pays the fee, then the bonus, then the owner; the
    insurance fund tops up the bonus, then covers bad debt."""
    price_pnl, owed, realised = gain(position, price, index)
    eq = position.margin + realised
    available = max(eq, 0)
    bad_debt = max(-eq, 0)
    fee = min(close_fee(position.notional, params), available)
    available -= fee
    bonus = position.notional * params.liquidation_bonus_bps // BPS if liquidation else 0
    from_equity = min(bonus, available)
    available -= from_equity
    from_insurance = min(bonus - from_equity, insurance)
    covered = min(bad_debt, insurance - from_insurance)
    return Settlement(
        price, price_pnl, owed, realised, eq, fee, from_equity + from_insurance, from_insurance, available, bad_debt,
        covered,
    )  # fmt: skip


# ─── LP shares ───────────────────────────────────────────────────────────────


@dataclass
class OpenInterest:
    """One market's aggregates (the contract's Market fields of the same names)."""

    long_notional: int = 0
    short_notional: int = 0
    long_size: int = 0
    short_size: int = 0
    long_funding: int = 0
    short_funding: int = 0
    long_funding_basis: int = 0
    short_funding_basis: int = 0


@dataclass
class Side:
    """One side of a market beyond its open interest (the contract's `sides(token,
    is_long)`): Σ margin, Σ reserved, open positions, and the bounds that value it."""

    margin: int = 0
    reserved: int = 0
    count: int = 0
    bankrupt_bound: int = 0
    cap_bound: int = 0
    index_high: int = 0
    index_low: int = 0


def kinks(is_long: bool, margin: int, notional: int, reserved: int, size: int) -> tuple[int, int]:
    """(bankruptcy price, cap price) of a position, funding aside, rounded as the contract
    rounds them: its PnL reaches −margin, and its reserve, there."""
    if is_long:
        bankrupt = _ceil_div((notional - margin) * PRICE_SCALE, size) if notional > margin else 0
        return bankrupt, (notional + reserved) * PRICE_SCALE // size
    cap = _ceil_div((notional - reserved) * PRICE_SCALE, size) if notional > reserved else 0
    return (notional + margin) * PRICE_SCALE // size, cap


def add_to_side(side: Side, is_long: bool, position: Position) -> None:
    """What opening `position` does to its side (the contract's `_add_to_side`)."""
    bankrupt, cap = kinks(is_long, position.margin, position.notional, position.reserved, position.size)
    entry = position.entry_funding
    if side.count == 0:
        side.bankrupt_bound, side.cap_bound, side.index_high, side.index_low = bankrupt, cap, entry, entry
    elif is_long:
        side.bankrupt_bound, side.cap_bound = max(side.bankrupt_bound, bankrupt), min(side.cap_bound, cap)
    else:
        side.bankrupt_bound, side.cap_bound = min(side.bankrupt_bound, bankrupt), max(side.cap_bound, cap)
    side.index_high, side.index_low = max(side.index_high, entry), min(side.index_low, entry)
    side.margin += position.margin
    side.reserved += position.reserved
    side.count += 1


def widen_bankrupt_bound(side: Side, is_long: bool, position: Position) -> None:
    """After a margin removal (`position` holds the new margin)."""
    bankrupt, _ = kinks(is_long, position.margin, position.notional, position.reserved, position.size)
    side.bankrupt_bound = max(side.bankrupt_bound, bankrupt) if is_long else min(side.bankrupt_bound, bankrupt)


def side_worth(
    side: Side,
    is_long: bool,
    notional: int,
    size: int,
    basis: int,
    index: int,
    twap: int,
    spot: int,
    for_deposit: bool,
) -> int:
    """What a side's positions are worth to their traders (Σ of PnL − funding clamped to
    [−margin, reserved]), bounded against the LP who asks: from above for a withdrawal,
    from below for a deposit (the contract's `_side_worth`)."""
    funding = _trunc_div(index * notional - basis, WAD)
    received = _ceil_div(notional * (side.index_high - index), WAD) if side.index_high > index else 0
    owed = side.count + (_ceil_div(notional * (index - side.index_low), WAD) if index > side.index_low else 0)
    if not for_deposit:
        received = min(received, max(owed - funding + 1, 0))
        if is_long:
            price = max(spot, twap, side.bankrupt_bound)
            pnl_ = _ceil_div(size * price, PRICE_SCALE) - notional
        else:
            price = min(spot, twap, side.bankrupt_bound)
            pnl_ = notional - size * price // PRICE_SCALE
        return min(side.reserved, pnl_ + received)
    owed = min(owed, max(received + funding + 1 + side.count, 0))
    if is_long:
        price = min(spot, twap, side.cap_bound)
        pnl_ = size * price // PRICE_SCALE - notional
    else:
        price = max(spot, twap, side.cap_bound)
        pnl_ = notional - _ceil_div(size * price, PRICE_SCALE)
    return max(-side.margin, pnl_ - owed)


def pool_value(pool_amount: int, worths: list[int]) -> int:
    """The LP pool's net asset value given each open side's worth (`side_worth`)."""
    return max(pool_amount - sum(worths), 0)


def clamped_worth(position: Position, price: int, index: int) -> int:
    """What one position is worth to its trader against the pool, exactly: its PnL net
    of funding, clamped to [−margin, reserved] (the bounds above bound the sum of these)."""
    return max(gain(position, price, index)[2], -position.margin)


def spot_price(reserve_token: int, reserve_usdc: int) -> int:
    """A pool's spot price in Oracle units (USDC units per 10**18 token units × 10**18)."""
    return reserve_usdc * PRICE_SCALE // reserve_token


def depth(reserve_token: int, reserve_usdc: int, twap: int) -> int:
    """A pool's USDC side at TWAP-consistent reserves (√(x·y) · √TWAP / 10**18), which
    caps open interest per side (depth × depth_cap_bps / BPS)."""
    return isqrt(reserve_token * reserve_usdc) * isqrt(twap) // 10**18


def shares_for_deposit(amount: int, total_shares: int, value: int) -> int:
    """Shares a deposit mints to its LP (the first one: amount · SHARE_SCALE − MINIMUM_SHARES)."""
    if total_shares == 0:
        return amount * SHARE_SCALE - MINIMUM_SHARES
    return amount * total_shares // value


def amount_for_shares(shares: int, total_shares: int, value: int) -> int:
    return shares * value // total_shares
