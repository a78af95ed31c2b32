# pragma version ~=0.4.3
# pragma experimental-codegen
# pragma optimize codesize
# (venom, for size: the legacy pipeline's Perp passes EIP-170's 24,576 bytes; gas is within 1 % of venom's gas mode)
"""
@title Perp
@license MIT
@notice Isolated-margin perpetuals on provider-token prices (CLD, GPT, …)
        with USDC margin, priced only by the Oracle's TWAP. A company that
        buys compute hedges rising prices with a long; a seller of capacity
        hedges falling prices with a short.

        - Traders open a long or a short on a listed token with USDC margin
          (`open_position`), add or remove margin, close it; anyone
          liquidates a position below its maintenance margin for a bonus.
        - The counterparty is one USDC liquidity pool shared by every market
          (GMX style): LPs `deposit` for shares and `withdraw` them; the pool
          pays traders' profits and receives their losses, fees and funding.
        - An insurance fund, fed by a share of every fee (and by donations),
          covers bad debt before the pool does.

@dev Units. Prices are `Oracle.consult(token, twap_window)`: USDC units per
     10**18 token units as an 18-decimal fixed-point number, so `size` token
     units are worth size · p / 10**36 USDC units. A position holds `size`
     token units (its exposure) and `notional`, their USDC value at the entry
     price; margin, notional, fees and PnL are USDC units (6 decimals).
     Open interest, funding and caps are measured in entry notional, so they
     do not move with the price.

     PnL, rounded against the trader:
         long:  floor(size · p / 10**36) − notional
         short: notional − ceil(size · p / 10**36)
     A position's realised gain (PnL minus funding owed) is capped at its
     `reserved` amount, notional · max_profit_bps / 10,000 (rounded up).

     Funding. Per market, per hour, at the rate
         r = k · |L − S| / (L + S)          (L, S: long and short notional)
     the heavier side pays r of its notional per hour, and the lighter side
     receives the same total, pro rata to its notional: per unit of its
     notional r · heavier / lighter. Each side keeps a cumulative index of
     funding paid per unit of notional (WAD; negative means received),
     accrued before every change to the market's open interest or to a
     position (and on `accrue_funding`, public); a position owes
     notional · (index now − index at entry) / WAD, rounded up when it owes
     and down when it receives. When the lighter side is empty, the heavier
     side still pays r = k and the payment goes to the LP pool, which then
     carries the whole net exposure. Funding is settled lazily through the
     pool: the pool pays receivers when they close and collects from payers
     when they close, so across time it nets to zero, and the rounding is
     the pool's.

     Reserve and LP withdrawals. Every open position reserves its maximum
     gain; `total_reserved` is the pool's worst-case liability. Opening
     requires pool_amount ≥ total_reserved after the open, and an LP
     withdrawal must leave pool_amount ≥ total_reserved. Nothing else lowers
     pool_amount (the pool never pays a liquidation bonus, and bad debt only
     means the pool receives less), so every capped gain can always be paid.
     Open interest per side and market is capped twice when a position
     opens: at oi_cap_bps of pool_amount, and at depth_cap_bps of the depth
     of the DEX pool the Oracle reads (its USDC side at TWAP-consistent
     reserves, √k · √TWAP: swaps in the same transaction do not move it), so
     a TWAP pump against a thin pool cannot be paid by the LPs beyond a
     fraction of that pool (found: a pump against $25k pools paid against
     Perp LPs). A withdrawal may leave open interest above either cap (the
     reserve is the hard limit, the caps throttle opens); so may liquidity
     leaving the DEX pool after an open.

     Liquidation. A position is liquidatable when its equity
     (margin + capped gain) is below notional · maintenance_bps / 10,000
     (rounded up). The liquidator's bonus (notional · liquidation_bonus_bps,
     rounded down) and the close fee come out of the equity; what remains
     goes to the position's owner. Markets require bonus + close fee ≤
     maintenance, so at the threshold the equity covers both. When it does
     not, the insurance fund tops up the bonus (never the pool). Negative
     equity is bad debt: the pool was owed more than the margin it receives;
     the insurance fund covers it, then the pool absorbs what is left
     (it books less income). Every amount is stored (bad_debt_* totals) and
     logged (`BadDebtRecorded`).

     LP shares (not transferable; 18 decimals). Shares are priced at the
     pool's net asset value, pool_amount minus what the traders' positions
     are worth against it, valued so that an LP who enters or leaves can
     never pass a loss to the LPs who stay (found: an LP withdrew right after
     a spot jump, before the TWAP followed; and the withdrawal price netted a
     bankrupt position's uncollectable loss against other traders' gains).
     Per market and side, with no loop over positions:
       - price: the one worse for the LP who asks — leaving, longs at
         max(spot, TWAP) and shorts at min(spot, TWAP); entering, longs at
         min(spot, TWAP) and shorts at max(spot, TWAP) (spot from the
         Oracle's pool, read under its reentrancy lock);
       - a position's worth to its trader is its PnL net of funding,
         clamped to [−margin, reserved]: its loss never counts beyond its
         margin, its gain never beyond its cap. The side keeps bounds on its
         positions' kink prices (every bankruptcy price below `bankrupt_bound`
         for longs — above it for shorts — and every cap price on the other
         side of `cap_bound`, funding aside) and on their entry funding
         indices. Leaving, the side is valued at the price pushed past its
         bankrupt bound (where no loss is uncollectable), capped at its
         reserve: an upper bound on what the side can take. Entering, at the
         price pushed back to its cap bound (where no gain is capped),
         floored at minus its margins: a lower bound. Funding received
         (leaving) or owed (entering) is added from the index bounds.
     The bounds only widen while a side has positions (an open or a margin
     removal moves them out; a close never moves them in), so they can grow
     stale and price an LP more conservatively than needed; `refresh_bounds`
     (anyone, given every open position of the side) recomputes them, and a
     side that empties resets. Shares minted and USDC paid round down. The
     first deposit locks MINIMUM_SHARES at the zero address. Internal
     accounting only: donated USDC changes no price. Limit: a spot moved in
     the same transaction as an LP's own deposit or withdrawal can only make
     that LP's price worse; one moved around someone else's is a sandwich
     that the victim's `min_shares` / `min_amount` bounds.

     Money. The contract's USDC balance is at least
     pool_amount + total_margin + insurance_fund (equal, barring donations).
     Amounts of USDC per call are below 2**96; positions are at least
     MIN_NOTIONAL, which bounds the funding index.

     Known limits. The TWAP lags the spot price: a trader who sees spot move
     can trade at the older average; the open and close fees and the TWAP
     window must be set so that edge does not pay (the LPs carry it). If
     keepers stop calling `Oracle.update`, the average spans a longer time
     (smoother, never spot).

     Roles: admin (snekmate `ownable_2step`; the Timelock after deploy) lists
     markets, enables and disables them, sets k, the depth cap and the
     insurance share of fees, and grants pausers; `revoke_pauser` is separate
     (the Timelock's guardian calls it at once). A pauser may pause and
     unpause new positions; closing, margin, liquidation and LP exits stay
     open.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from snekmate.auth import ownable_2step
from snekmate.utils import math
from snekmate.utils import pausable

from .interfaces import IOracle
from .interfaces import IPool

initializes: ownable
initializes: ownable_2step[ownable := ownable]
initializes: pausable

exports: (
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    pausable.paused,
)


# ─── Constants ───────────────────────────────────────────────────────────────

# @notice Fees, caps and margins are in parts of this many.
BPS: public(constant(uint256)) = 10_000
# @notice Funding indices and k are 18-decimal fractions.
WAD: public(constant(uint256)) = 10**18
# @notice Funding rates are per this many seconds.
HOUR: public(constant(uint256)) = 3_600
# @notice Most markets (each withdrawal and deposit prices them all).
MAX_MARKETS: public(constant(uint256)) = 8
# @notice Highest maximum leverage a market may allow.
MAX_LEVERAGE: public(constant(uint256)) = 100
# @notice Highest funding k: 1 % of notional per hour at full imbalance.
MAX_FUNDING_K: public(constant(uint256)) = 10**16
# @notice Highest open or close fee (5 %).
MAX_FEE_BPS: public(constant(uint256)) = 500
# @notice Highest gain cap: ten times the notional.
MAX_PROFIT_BPS: public(constant(uint256)) = 100_000
# @notice Smallest position (1 USDC of notional).
MIN_NOTIONAL: public(constant(uint256)) = 10**6
# @notice Largest USDC amount of one call (margin, notional, deposit).
MAX_AMOUNT: public(constant(uint256)) = 2**96 - 1
# @notice Shares per USDC unit at the first deposit (shares have 18 decimals).
SHARE_SCALE: public(constant(uint256)) = 10**12
# @notice Shares locked at the zero address by the first deposit.
MINIMUM_SHARES: public(constant(uint256)) = 10**15
# @notice Longest TWAP window (Oracle.MAX_WINDOW).
MAX_TWAP_WINDOW: public(constant(uint256)) = 2**31
# @notice Most positions `refresh_bounds` takes in one call.
MAX_REFRESH: public(constant(uint256)) = 500

# @dev 10**36 = 10**18 token units per price × 10**18 fixed point (Oracle.consult).
_PRICE_SCALE: constant(uint256) = 10**36
_IWAD: constant(int256) = 10**18


# ─── Immutables and storage ──────────────────────────────────────────────────

# @notice The margin and pool asset.
usdc: public(immutable(address))
# @notice The Oracle whose TWAP prices every position.
oracle: public(immutable(address))
# @notice Seconds of TWAP positions are priced at.
twap_window: public(immutable(uint256))


# @notice A listed market, as `markets(token)` returns it.
struct Market:
    active: bool
    funding_k: uint256
    max_leverage: uint256
    maintenance_bps: uint256
    oi_cap_bps: uint256
    liquidation_bonus_bps: uint256
    open_fee_bps: uint256
    close_fee_bps: uint256
    max_profit_bps: uint256
    long_notional: uint256
    short_notional: uint256
    long_size: uint256
    short_size: uint256
    long_funding: int256
    short_funding: int256
    long_funding_basis: int256
    short_funding_basis: int256
    last_funding_time: uint256


# @notice One side (long or short) of a market, beyond its open interest, as
#         `sides(token, is_long)` returns it: Σ margin and Σ reserved of its open
#         positions, how many there are, and the bounds that value it for LPs
#         (see the contract @dev). Bounds are price units; indices WAD.
struct Side:
    margin: uint256
    reserved: uint256
    count: uint256
    bankrupt_bound: uint256
    cap_bound: uint256
    index_high: int256
    index_low: int256


# @notice An open position, as `positions(id)` returns it (all zero once closed).
struct Position:
    owner: address
    token: address
    is_long: bool
    margin: uint256
    size: uint256
    notional: uint256
    reserved: uint256
    entry_funding: int256


# @notice What closing a position at a price yields, as `preview_close` returns it.
struct Settlement:
    price: uint256
    pnl: int256
    funding: int256
    gain: int256
    equity: int256
    fee: uint256
    bonus: uint256
    bonus_from_insurance: uint256
    payout: uint256
    bad_debt: uint256
    bad_debt_covered: uint256


# @notice token → its market (zero `max_leverage`: not listed).
markets: public(HashMap[address, Market])
# @notice The listed tokens, in listing order.
market_tokens: public(DynArray[address, MAX_MARKETS])
# @notice id → position; ids run 1 .. position_count.
positions: public(HashMap[uint256, Position])
# @notice Positions opened so far.
position_count: public(uint256)
# @notice token → is_long → the side's margins, reserve, count and bounds.
sides: public(HashMap[address, HashMap[bool, Side]])
# @notice token → most open notional per side, in bps of the depth of the DEX
#         pool the Oracle reads (its USDC side at TWAP-consistent reserves).
depth_cap_bps: public(HashMap[address, uint256])
# @notice account → whether it may pause and unpause new positions.
is_pauser: public(HashMap[address, bool])

# @notice The LPs' USDC: capital, fees, realised trading results.
pool_amount: public(uint256)
# @notice Σ reserved of open positions: the pool's worst-case liability.
total_reserved: public(uint256)
# @notice Σ margin of open positions.
total_margin: public(uint256)
# @notice The insurance fund's USDC.
insurance_fund: public(uint256)
# @notice Share of every fee that goes to the insurance fund (bps).
insurance_fee_bps: public(uint256)

# @notice LP shares per holder (the zero address holds MINIMUM_SHARES).
shares_of: public(HashMap[address, uint256])
# @notice All LP shares.
total_shares: public(uint256)

# @notice Bad debt so far, what the insurance fund covered, what the pool absorbed.
bad_debt_total: public(uint256)
bad_debt_covered_by_insurance: public(uint256)
bad_debt_absorbed_by_pool: public(uint256)


# ─── Events ──────────────────────────────────────────────────────────────────

event MarketAdded:
    token: indexed(address)
    funding_k: uint256
    max_leverage: uint256
    maintenance_bps: uint256
    oi_cap_bps: uint256
    liquidation_bonus_bps: uint256
    open_fee_bps: uint256
    close_fee_bps: uint256
    max_profit_bps: uint256

event MarketActiveSet:
    token: indexed(address)
    active: bool

event FundingKSet:
    token: indexed(address)
    old_k: uint256
    new_k: uint256

event InsuranceFeeSet:
    old_bps: uint256
    new_bps: uint256

event DepthCapSet:
    token: indexed(address)
    old_bps: uint256
    new_bps: uint256

event PauserGranted:
    account: indexed(address)

event PauserRevoked:
    account: indexed(address)

event BoundsRefreshed:
    token: indexed(address)
    is_long: bool
    count: uint256
    bankrupt_bound: uint256
    cap_bound: uint256

event FundingAccrued:
    token: indexed(address)
    long_funding: int256
    short_funding: int256
    elapsed: uint256

event LiquidityDeposited:
    lp: indexed(address)
    amount: uint256
    shares: uint256

event LiquidityWithdrawn:
    lp: indexed(address)
    amount: uint256
    shares: uint256

event InsuranceFunded:
    funder: indexed(address)
    amount: uint256

event PositionOpened:
    position_id: indexed(uint256)
    owner: indexed(address)
    token: indexed(address)
    is_long: bool
    margin: uint256
    size: uint256
    notional: uint256
    price: uint256
    fee: uint256

event MarginAdded:
    position_id: indexed(uint256)
    amount: uint256
    margin: uint256

event MarginRemoved:
    position_id: indexed(uint256)
    amount: uint256
    margin: uint256

event PositionClosed:
    position_id: indexed(uint256)
    owner: indexed(address)
    liquidator: indexed(address)
    price: uint256
    pnl: int256
    funding: int256
    gain: int256
    fee: uint256
    bonus: uint256
    bonus_from_insurance: uint256
    payout: uint256

event BadDebtRecorded:
    position_id: indexed(uint256)
    token: indexed(address)
    amount: uint256
    covered_by_insurance: uint256
    absorbed_by_pool: uint256


@deploy
def __init__(usdc_: address, oracle_: address, twap_window_: uint256, insurance_fee_bps_: uint256):
    """
    @notice Deploys the perpetuals; the deployer becomes the admin.
    @param usdc_ USDC: the Oracle's quote asset.
    @param oracle_ The Oracle.
    @param twap_window_ Seconds of TWAP positions are priced at: at least
           the Oracle's period, at most MAX_TWAP_WINDOW.
    @param insurance_fee_bps_ Share of every fee for the insurance fund.
    """
    assert usdc_ != empty(address), "perp: zero address"
    assert oracle_.is_contract, "perp: oracle has no code"
    assert staticcall IOracle(oracle_).quote_token() == usdc_, "perp: oracle does not quote usdc"
    assert twap_window_ >= staticcall IOracle(oracle_).period(), "perp: twap window below oracle period"
    assert twap_window_ <= MAX_TWAP_WINDOW, "perp: twap window too long"
    assert insurance_fee_bps_ <= BPS, "perp: insurance share above 100%"
    ownable.__init__()
    ownable_2step.__init__()
    pausable.__init__()
    usdc = usdc_
    oracle = oracle_
    twap_window = twap_window_
    self.insurance_fee_bps = insurance_fee_bps_


# ─── Liquidity providers ─────────────────────────────────────────────────────


@external
@nonreentrant
def deposit(amount: uint256, min_shares: uint256) -> uint256:
    """
    @notice Adds `amount` USDC to the pool for shares.
    @dev Shares = amount · total_shares / value, rounded down, where value is
         the pool's net asset value priced for an entering LP (see the
         contract @dev). Reverts while an open market's TWAP is unavailable.
    @param amount USDC units; the caller approved them.
    @param min_shares Fewest shares accepted (the value moves with the TWAP).
    @return uint256 Shares minted to the caller.
    """
    assert amount != 0, "perp: zero amount"
    assert amount <= MAX_AMOUNT, "perp: amount too large"
    supply: uint256 = self.total_shares
    minted: uint256 = 0
    if supply == 0:
        minted = amount * SHARE_SCALE
        assert minted > MINIMUM_SHARES, "perp: first deposit too small"
        self.shares_of[empty(address)] = MINIMUM_SHARES
        minted -= MINIMUM_SHARES
        supply = MINIMUM_SHARES
    else:
        value: uint256 = self._pool_value(True)
        assert value != 0, "perp: pool has no value"
        minted = amount * supply // value
    assert minted != 0, "perp: zero shares"
    assert minted >= min_shares, "perp: too few shares"

    self.total_shares = supply + minted
    self.shares_of[msg.sender] += minted
    self.pool_amount += amount
    self._pull(msg.sender, amount)
    log LiquidityDeposited(lp=msg.sender, amount=amount, shares=minted)
    return minted


@external
@nonreentrant
def withdraw(shares: uint256, min_amount: uint256) -> uint256:
    """
    @notice Burns `shares` for their USDC.
    @dev amount = shares · value / total_shares, rounded down, where value
         is the pool's net asset value priced for a leaving LP (see the
         contract @dev). The amount must leave pool_amount ≥ total_reserved
         (the pool's worst-case liability): "perp: withdrawal exceeds free
         liquidity" otherwise.
    @param shares Shares of the caller to burn.
    @param min_amount Least USDC accepted.
    @return uint256 USDC units paid to the caller.
    """
    assert shares != 0, "perp: zero shares"
    assert shares <= self.shares_of[msg.sender], "perp: not enough shares"
    amount: uint256 = shares * self._pool_value(False) // self.total_shares
    assert amount != 0, "perp: zero amount"
    assert amount >= min_amount, "perp: amount below minimum"
    pool: uint256 = self.pool_amount
    assert amount + self.total_reserved <= pool, "perp: withdrawal exceeds free liquidity"

    self.shares_of[msg.sender] -= shares
    self.total_shares -= shares
    self.pool_amount = pool - amount
    self._push(msg.sender, amount)
    log LiquidityWithdrawn(lp=msg.sender, amount=amount, shares=shares)
    return amount


@external
@nonreentrant
def fund_insurance(amount: uint256):
    """
    @notice Donates `amount` USDC to the insurance fund.
    @param amount USDC units; the caller approved them.
    """
    assert amount != 0, "perp: zero amount"
    assert amount <= MAX_AMOUNT, "perp: amount too large"
    self.insurance_fund += amount
    self._pull(msg.sender, amount)
    log InsuranceFunded(funder=msg.sender, amount=amount)


# ─── Traders ─────────────────────────────────────────────────────────────────


@external
@nonreentrant
def open_position(token: address, is_long: bool, margin: uint256, notional: uint256) -> uint256:
    """
    @notice Opens a long or a short of `notional` USDC on `token` at its TWAP,
            with `margin` USDC (the open fee is taken from it).
    @dev size = notional · 10**36 / price (rounded down). The open fee,
         ceil(notional · open_fee_bps / BPS), is split between the insurance
         fund and the pool. Checks, in order: margin after the fee times
         max_leverage covers the notional; the side's open interest stays
         within oi_cap_bps of the pool and within depth_cap_bps of the depth
         of the Oracle's DEX pool; the pool covers total_reserved.
    @param token A listed, active market.
    @param is_long True for a long (gains when the price rises).
    @param margin USDC units pulled from the caller.
    @param notional USDC value of the exposure at the entry price; ≥ MIN_NOTIONAL.
    @return uint256 The new position's id.
    """
    pausable._require_not_paused()
    assert self.markets[token].active, "perp: market not active"
    assert notional >= MIN_NOTIONAL, "perp: notional too small"
    assert margin <= MAX_AMOUNT and notional <= MAX_AMOUNT, "perp: amount too large"
    fee: uint256 = math._ceil_div(notional * self.markets[token].open_fee_bps, BPS)
    assert margin > fee, "perp: margin below fee"
    kept: uint256 = margin - fee
    assert kept * self.markets[token].max_leverage >= notional, "perp: leverage too high"

    self._accrue(token)
    price: uint256 = self._price(token)
    size: uint256 = notional * _PRICE_SCALE // price
    assert size != 0, "perp: size rounds to zero"

    pool: uint256 = self.pool_amount
    cap: uint256 = pool * self.markets[token].oi_cap_bps // BPS
    entry: int256 = 0
    side_notional: uint256 = 0
    if is_long:
        side_notional = self.markets[token].long_notional + notional
        assert side_notional <= cap, "perp: open interest cap"
        entry = self.markets[token].long_funding
        self.markets[token].long_notional = side_notional
        self.markets[token].long_size += size
        self.markets[token].long_funding_basis += convert(notional, int256) * entry
    else:
        side_notional = self.markets[token].short_notional + notional
        assert side_notional <= cap, "perp: open interest cap"
        entry = self.markets[token].short_funding
        self.markets[token].short_notional = side_notional
        self.markets[token].short_size += size
        self.markets[token].short_funding_basis += convert(notional, int256) * entry
    assert side_notional * BPS <= self._depth(token, price) * self.depth_cap_bps[token], "perp: open interest above pool depth cap"
    reserved: uint256 = math._ceil_div(notional * self.markets[token].max_profit_bps, BPS)
    total_reserved: uint256 = self.total_reserved + reserved
    assert total_reserved <= pool, "perp: pool cannot cover the reserve"
    self.total_reserved = total_reserved
    self._add_to_side(token, is_long, kept, reserved, size, notional, entry)

    position_id: uint256 = self.position_count + 1
    self.position_count = position_id
    self.positions[position_id] = Position(
        owner=msg.sender,
        token=token,
        is_long=is_long,
        margin=kept,
        size=size,
        notional=notional,
        reserved=reserved,
        entry_funding=entry,
    )
    self.total_margin += kept
    self._take_fee(fee)
    self._pull(msg.sender, margin)
    log PositionOpened(
        position_id=position_id,
        owner=msg.sender,
        token=token,
        is_long=is_long,
        margin=kept,
        size=size,
        notional=notional,
        price=price,
        fee=fee,
    )
    return position_id


@external
@nonreentrant
def add_margin(position_id: uint256, amount: uint256):
    """
    @notice Adds `amount` USDC to the margin of the caller's position.
    @param position_id An open position of the caller.
    @param amount USDC units pulled from the caller.
    """
    assert self.positions[position_id].owner == msg.sender, "perp: not the position owner"
    assert amount != 0, "perp: zero amount"
    assert amount <= MAX_AMOUNT, "perp: amount too large"
    margin: uint256 = self.positions[position_id].margin + amount
    self.positions[position_id].margin = margin
    self.total_margin += amount
    # A larger margin only moves the bankruptcy price away: the side's bound stays valid.
    token: address = self.positions[position_id].token
    is_long: bool = self.positions[position_id].is_long
    self.sides[token][is_long].margin += amount
    self._pull(msg.sender, amount)
    log MarginAdded(position_id=position_id, amount=amount, margin=margin)


@external
@nonreentrant
def remove_margin(position_id: uint256, amount: uint256):
    """
    @notice Takes `amount` USDC of margin out of the caller's position.
    @dev What stays must carry the position within max leverage counting its
         losses but not its gains: (margin − amount + min(gain, 0)) ·
         max_leverage ≥ notional. Unrealised profit is never withdrawn.
    @param position_id An open position of the caller.
    @param amount USDC units sent to the caller.
    """
    assert self.positions[position_id].owner == msg.sender, "perp: not the position owner"
    assert amount != 0, "perp: zero amount"
    position: Position = self.positions[position_id]
    assert amount < position.margin, "perp: amount exceeds margin"
    self._accrue(position.token)
    pnl: int256 = 0
    funding: int256 = 0
    gain: int256 = 0
    pnl, funding, gain = self._gain(position, self._price(position.token))
    left: int256 = convert(position.margin - amount, int256) + min(gain, 0)
    assert left > 0, "perp: leverage too high"
    assert convert(left, uint256) * self.markets[position.token].max_leverage >= position.notional, "perp: leverage too high"

    self.positions[position_id].margin = position.margin - amount
    self.total_margin -= amount
    self.sides[position.token][position.is_long].margin -= amount
    bankrupt: uint256 = 0
    cap: uint256 = 0
    bankrupt, cap = self._kinks(position.is_long, position.margin - amount, position.notional, position.reserved, position.size)
    self._widen_bankrupt_bound(position.token, position.is_long, bankrupt)
    self._push(msg.sender, amount)
    log MarginRemoved(position_id=position_id, amount=amount, margin=position.margin - amount)


@external
@nonreentrant
def close_position(position_id: uint256, min_payout: uint256) -> uint256:
    """
    @notice Closes the caller's position at the TWAP and pays out its equity
            after the close fee.
    @param position_id An open position of the caller.
    @param min_payout Least USDC accepted (the TWAP moves).
    @return uint256 USDC units paid to the caller.
    """
    assert self.positions[position_id].owner == msg.sender, "perp: not the position owner"
    token: address = self.positions[position_id].token
    self._accrue(token)
    s: Settlement = self._settle(position_id, self._price(token), False)
    assert s.payout >= min_payout, "perp: payout below minimum"
    if s.payout != 0:
        self._push(msg.sender, s.payout)
    return s.payout


@external
@nonreentrant
def liquidate(position_id: uint256) -> uint256:
    """
    @notice Liquidates a position whose equity is below its maintenance
            margin; the caller receives the liquidation bonus.
    @dev Reverts "perp: position is healthy" otherwise (so a position saved
         by `add_margin` first cannot be liquidated). The bonus comes from
         the equity, topped up by the insurance fund only; the owner gets
         what remains after the close fee and the bonus.
    @param position_id An open position.
    @return uint256 The bonus paid to the caller.
    """
    owner: address = self.positions[position_id].owner
    assert owner != empty(address), "perp: no such position"
    token: address = self.positions[position_id].token
    self._accrue(token)
    s: Settlement = self._settle(position_id, self._price(token), True)
    if s.bonus != 0:
        self._push(msg.sender, s.bonus)
    if s.payout != 0:
        self._push(owner, s.payout)
    return s.bonus


@external
def accrue_funding(token: address):
    """
    @notice Brings `token`'s funding indices up to now (anyone; keepers may
            call it so that a change of imbalance is priced from its moment).
    @param token A listed market.
    """
    assert self.markets[token].max_leverage != 0, "perp: no such market"
    self._accrue(token)


@external
def refresh_bounds(token: address, is_long: bool, position_ids: DynArray[uint256, MAX_REFRESH]):
    """
    @notice Recomputes a side's bounds (see the contract @dev) from every one of
            its open positions, so that LPs are no longer priced by positions
            that have closed; anyone may.
    @dev The ids must be exactly the side's open positions, in increasing
         order (which proves each is counted once); a side with more than
         MAX_REFRESH positions keeps its wider, still valid, bounds.
    @param token A listed market.
    @param is_long The side.
    @param position_ids Every open position of that side, ascending.
    """
    assert self.markets[token].max_leverage != 0, "perp: no such market"
    assert len(position_ids) == self.sides[token][is_long].count, "perp: not every position of the side"
    bankrupt_bound: uint256 = 0
    cap_bound: uint256 = max_value(uint256)
    if not is_long:
        bankrupt_bound = max_value(uint256)
        cap_bound = 0
    index_high: int256 = min_value(int256)
    index_low: int256 = max_value(int256)
    last: uint256 = 0
    for position_id: uint256 in position_ids:
        assert position_id > last, "perp: ids not ascending"
        last = position_id
        position: Position = self.positions[position_id]
        assert position.owner != empty(address) and position.token == token and position.is_long == is_long, "perp: not a position of the side"
        bankrupt: uint256 = 0
        cap: uint256 = 0
        bankrupt, cap = self._kinks(is_long, position.margin, position.notional, position.reserved, position.size)
        if is_long:
            bankrupt_bound = max(bankrupt_bound, bankrupt)
            cap_bound = min(cap_bound, cap)
        else:
            bankrupt_bound = min(bankrupt_bound, bankrupt)
            cap_bound = max(cap_bound, cap)
        index_high = max(index_high, position.entry_funding)
        index_low = min(index_low, position.entry_funding)
    self.sides[token][is_long].bankrupt_bound = bankrupt_bound
    self.sides[token][is_long].cap_bound = cap_bound
    self.sides[token][is_long].index_high = index_high
    self.sides[token][is_long].index_low = index_low
    log BoundsRefreshed(
        token=token, is_long=is_long, count=len(position_ids), bankrupt_bound=bankrupt_bound, cap_bound=cap_bound
    )


# ─── Admin ───────────────────────────────────────────────────────────────────


@external
def add_market(
    token: address,
    funding_k: uint256,
    max_leverage: uint256,
    maintenance_bps: uint256,
    oi_cap_bps: uint256,
    liquidation_bonus_bps: uint256,
    open_fee_bps: uint256,
    close_fee_bps: uint256,
    max_profit_bps: uint256,
    depth_cap_bps: uint256,
):
    """
    @notice Lists a market on `token`, active at once.
    @dev Admin only. Requires max_leverage · maintenance_bps < BPS (a
         position at maximum leverage opens above maintenance) and
         liquidation_bonus_bps + close_fee_bps ≤ maintenance_bps (equity at
         the threshold pays the liquidator and the fee).
    @param token A provider token the Oracle prices (not USDC).
    @param funding_k Funding per hour at full imbalance (WAD fraction of notional).
    @param max_leverage Most notional per unit of margin, 1 .. MAX_LEVERAGE.
    @param maintenance_bps Equity below notional · this / BPS is liquidatable.
    @param oi_cap_bps Open notional per side at most pool_amount · this / BPS.
    @param liquidation_bonus_bps The liquidator's bonus, of notional.
    @param open_fee_bps Fee on notional when opening (≤ MAX_FEE_BPS).
    @param close_fee_bps Fee on notional when closing or liquidated (≤ MAX_FEE_BPS).
    @param max_profit_bps A position's gain cap, of notional (1 .. MAX_PROFIT_BPS).
    @param depth_cap_bps Open notional per side at most this / BPS of the depth
           of the Oracle's DEX pool for `token` (1 .. BPS).
    """
    ownable._check_owner()
    assert token != empty(address) and token != usdc, "perp: bad token"
    assert self.markets[token].max_leverage == 0, "perp: market exists"
    assert len(self.market_tokens) < MAX_MARKETS, "perp: too many markets"
    assert funding_k <= MAX_FUNDING_K, "perp: funding k too high"
    assert max_leverage != 0 and max_leverage <= MAX_LEVERAGE, "perp: max leverage out of range"
    assert maintenance_bps != 0 and max_leverage * maintenance_bps < BPS, "perp: maintenance margin out of range"
    assert oi_cap_bps != 0 and oi_cap_bps <= BPS, "perp: oi cap out of range"
    assert open_fee_bps <= MAX_FEE_BPS and close_fee_bps <= MAX_FEE_BPS, "perp: fee too high"
    assert liquidation_bonus_bps + close_fee_bps <= maintenance_bps, "perp: bonus and fee above maintenance"
    assert max_profit_bps != 0 and max_profit_bps <= MAX_PROFIT_BPS, "perp: max profit out of range"
    assert depth_cap_bps != 0 and depth_cap_bps <= BPS, "perp: depth cap out of range"
    self.depth_cap_bps[token] = depth_cap_bps
    self.markets[token] = Market(
        active=True,
        funding_k=funding_k,
        max_leverage=max_leverage,
        maintenance_bps=maintenance_bps,
        oi_cap_bps=oi_cap_bps,
        liquidation_bonus_bps=liquidation_bonus_bps,
        open_fee_bps=open_fee_bps,
        close_fee_bps=close_fee_bps,
        max_profit_bps=max_profit_bps,
        long_notional=0,
        short_notional=0,
        long_size=0,
        short_size=0,
        long_funding=0,
        short_funding=0,
        long_funding_basis=0,
        short_funding_basis=0,
        last_funding_time=block.timestamp,
    )
    self.market_tokens.append(token)
    log MarketAdded(
        token=token,
        funding_k=funding_k,
        max_leverage=max_leverage,
        maintenance_bps=maintenance_bps,
        oi_cap_bps=oi_cap_bps,
        liquidation_bonus_bps=liquidation_bonus_bps,
        open_fee_bps=open_fee_bps,
        close_fee_bps=close_fee_bps,
        max_profit_bps=max_profit_bps,
    )
    log DepthCapSet(token=token, old_bps=0, new_bps=depth_cap_bps)


@external
def set_market_active(token: address, active: bool):
    """
    @notice Enables or disables new positions on a market; open positions
            can always be closed and liquidated.
    @dev Admin only.
    @param token A listed market.
    @param active Whether positions may open.
    """
    ownable._check_owner()
    assert self.markets[token].max_leverage != 0, "perp: no such market"
    self.markets[token].active = active
    log MarketActiveSet(token=token, active=active)


@external
def set_funding_k(token: address, funding_k: uint256):
    """
    @notice Changes a market's funding k from now on (funding so far is
            accrued at the old k first).
    @dev Admin only.
    @param token A listed market.
    @param funding_k WAD fraction of notional per hour, ≤ MAX_FUNDING_K.
    """
    ownable._check_owner()
    assert self.markets[token].max_leverage != 0, "perp: no such market"
    assert funding_k <= MAX_FUNDING_K, "perp: funding k too high"
    self._accrue(token)
    log FundingKSet(token=token, old_k=self.markets[token].funding_k, new_k=funding_k)
    self.markets[token].funding_k = funding_k


@external
def set_insurance_fee_bps(insurance_fee_bps: uint256):
    """
    @notice Changes the insurance fund's share of fees.
    @dev Admin only.
    @param insurance_fee_bps 0 .. BPS.
    """
    ownable._check_owner()
    assert insurance_fee_bps <= BPS, "perp: insurance share above 100%"
    log InsuranceFeeSet(old_bps=self.insurance_fee_bps, new_bps=insurance_fee_bps)
    self.insurance_fee_bps = insurance_fee_bps


@external
def set_depth_cap_bps(token: address, depth_cap_bps: uint256):
    """
    @notice Changes how much open notional a side may have against the depth
            of the Oracle's DEX pool (checked at each open).
    @dev Admin only (the Timelock after deploy).
    @param token A listed market.
    @param depth_cap_bps 1 .. BPS.
    """
    ownable._check_owner()
    assert self.markets[token].max_leverage != 0, "perp: no such market"
    assert depth_cap_bps != 0 and depth_cap_bps <= BPS, "perp: depth cap out of range"
    log DepthCapSet(token=token, old_bps=self.depth_cap_bps[token], new_bps=depth_cap_bps)
    self.depth_cap_bps[token] = depth_cap_bps


@external
def grant_pauser(account: address):
    """
    @notice Lets `account` pause and unpause new positions.
    @dev Admin only (the Timelock after deploy: delayed).
    @param account The pauser.
    """
    ownable._check_owner()
    assert account != empty(address), "perp: zero address"
    self.is_pauser[account] = True
    log PauserGranted(account=account)


@external
def revoke_pauser(account: address):
    """
    @notice Takes the pauser role from `account`.
    @dev Admin only (the Timelock's guardian calls it at once).
    @param account A pauser.
    """
    ownable._check_owner()
    assert self.is_pauser[account], "perp: not a pauser"
    self.is_pauser[account] = False
    log PauserRevoked(account=account)


@external
def pause():
    """
    @notice Stops new positions; everything else keeps working.
    @dev A pauser only.
    """
    assert self.is_pauser[msg.sender], "perp: caller is not a pauser"
    pausable._pause()


@external
def unpause():
    """
    @notice Lifts the pause.
    @dev A pauser, or the admin (if every pauser was revoked).
    """
    assert self.is_pauser[msg.sender] or msg.sender == ownable.owner, "perp: caller is not a pauser"
    pausable._unpause()


# ─── Views ───────────────────────────────────────────────────────────────────


@external
@view
def price(token: address) -> uint256:
    """
    @notice The TWAP positions on `token` trade at now.
    @param token A token the Oracle tracks.
    @return uint256 USDC units per 10**18 token units, 18-decimal fixed point.
    """
    return self._price(token)


@external
@view
def funding_rate(token: address) -> int256:
    """
    @notice The current funding rate per hour: positive when longs pay.
    @param token A listed market.
    @return int256 WAD fraction of the paying side's notional per hour.
    """
    long_notional: uint256 = self.markets[token].long_notional
    short_notional: uint256 = self.markets[token].short_notional
    if long_notional == short_notional:
        return 0
    k: uint256 = self.markets[token].funding_k
    if long_notional > short_notional:
        return convert(k * (long_notional - short_notional) // (long_notional + short_notional), int256)
    return -convert(k * (short_notional - long_notional) // (long_notional + short_notional), int256)


@external
@view
def funding_indices(token: address) -> (int256, int256):
    """
    @notice The long and short funding indices as if accrued now.
    @param token A listed market.
    @return int256 Long index (WAD funding paid per unit of notional).
    @return int256 Short index.
    """
    long_funding: int256 = 0
    short_funding: int256 = 0
    long_funding, short_funding = self._indices(token)
    return long_funding, short_funding


@external
@view
def preview_close(position_id: uint256, liquidation: bool) -> Settlement:
    """
    @notice What closing (or liquidating) a position now would yield.
    @param position_id An open position.
    @param liquidation Price the liquidation (bonus) rather than a close.
    @return Settlement Price, PnL, funding owed, capped gain, equity, fee,
            bonus (and its insurance part), payout to the owner, bad debt
            (and what the insurance fund would cover).
    """
    position: Position = self.positions[position_id]
    assert position.owner != empty(address), "perp: no such position"
    long_funding: int256 = 0
    short_funding: int256 = 0
    long_funding, short_funding = self._indices(position.token)
    index: int256 = short_funding
    if position.is_long:
        index = long_funding
    return self._settlement(position, self._price(position.token), index, liquidation)


@external
@view
def is_liquidatable(position_id: uint256) -> bool:
    """
    @notice Whether `liquidate(position_id)` would succeed now.
    @param position_id A position id.
    @return bool True when open and below its maintenance margin.
    """
    position: Position = self.positions[position_id]
    if position.owner == empty(address):
        return False
    long_funding: int256 = 0
    short_funding: int256 = 0
    long_funding, short_funding = self._indices(position.token)
    index: int256 = short_funding
    if position.is_long:
        index = long_funding
    s: Settlement = self._settlement(position, self._price(position.token), index, True)
    return s.equity < convert(self._maintenance(position), int256)


@external
@view
def pool_value(for_deposit: bool) -> uint256:
    """
    @notice The pool's net asset value that prices shares.
    @param for_deposit True: priced for an entering LP (deposits); False: for a
           leaving LP (withdrawals). See the contract @dev.
    @return uint256 USDC units.
    """
    return self._pool_value(for_deposit)


@external
@view
def free_liquidity() -> uint256:
    """
    @notice USDC the pool holds beyond its worst-case liability: the most
            all LP withdrawals together may take now.
    @return uint256 pool_amount − total_reserved.
    """
    return self.pool_amount - self.total_reserved


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
@view
def _price(token: address) -> uint256:
    price: uint256 = staticcall IOracle(oracle).consult(token, twap_window)
    assert price != 0, "perp: no oracle price"
    return price


@internal
@view
def _indices(token: address) -> (int256, int256):
    long_funding: int256 = self.markets[token].long_funding
    short_funding: int256 = self.markets[token].short_funding
    elapsed: uint256 = block.timestamp - self.markets[token].last_funding_time
    long_notional: uint256 = self.markets[token].long_notional
    short_notional: uint256 = self.markets[token].short_notional
    if elapsed == 0 or long_notional == short_notional:
        return long_funding, short_funding
    heavy: uint256 = long_notional
    light: uint256 = short_notional
    if short_notional > long_notional:
        heavy = short_notional
        light = long_notional
    # Per unit of the heavier side's notional: k · imbalance · elapsed / hour,
    # rounded up for the payer; the lighter side gets the rounded-down amount
    # times heavy / light, rounded down.
    numerator: uint256 = self.markets[token].funding_k * (heavy - light) * elapsed
    denominator: uint256 = (heavy + light) * HOUR
    paid: int256 = convert(math._ceil_div(numerator, denominator), int256)
    received: int256 = 0
    if light != 0:
        received = convert(numerator // denominator * heavy // light, int256)
    if long_notional > short_notional:
        return long_funding + paid, short_funding - received
    return long_funding - received, short_funding + paid


@internal
def _accrue(token: address):
    last: uint256 = self.markets[token].last_funding_time
    if last == block.timestamp:
        return
    long_funding: int256 = 0
    short_funding: int256 = 0
    long_funding, short_funding = self._indices(token)
    self.markets[token].last_funding_time = block.timestamp
    if long_funding != self.markets[token].long_funding or short_funding != self.markets[token].short_funding:
        self.markets[token].long_funding = long_funding
        self.markets[token].short_funding = short_funding
        log FundingAccrued(
            token=token, long_funding=long_funding, short_funding=short_funding, elapsed=block.timestamp - last
        )


@internal
@pure
def _funding_owed(notional: uint256, entry: int256, index: int256) -> int256:
    # Rounded up when the position owes, toward zero when it receives.
    delta: int256 = index - entry
    if delta > 0:
        return convert(math._ceil_div(notional * convert(delta, uint256), WAD), int256)
    return -convert(notional * convert(-delta, uint256) // WAD, int256)


@internal
@pure
def _gain_at(position: Position, price: uint256, index: int256) -> (int256, int256, int256):
    pnl: int256 = 0
    if position.is_long:
        pnl = convert(position.size * price // _PRICE_SCALE, int256) - convert(position.notional, int256)
    else:
        pnl = convert(position.notional, int256) - convert(
            math._ceil_div(position.size * price, _PRICE_SCALE), int256
        )
    funding: int256 = self._funding_owed(position.notional, position.entry_funding, index)
    gain: int256 = min(pnl - funding, convert(position.reserved, int256))
    return pnl, funding, gain


@internal
@view
def _gain(position: Position, price: uint256) -> (int256, int256, int256):
    index: int256 = self.markets[position.token].short_funding
    if position.is_long:
        index = self.markets[position.token].long_funding
    return self._gain_at(position, price, index)


@internal
@view
def _maintenance(position: Position) -> uint256:
    return math._ceil_div(position.notional * self.markets[position.token].maintenance_bps, BPS)


@internal
@view
def _settlement(position: Position, price: uint256, index: int256, liquidation: bool) -> Settlement:
    s: Settlement = empty(Settlement)
    s.price = price
    pnl: int256 = 0
    funding: int256 = 0
    gain: int256 = 0
    pnl, funding, gain = self._gain_at(position, price, index)
    s.pnl = pnl
    s.funding = funding
    s.gain = gain
    s.equity = convert(position.margin, int256) + s.gain
    fee: uint256 = math._ceil_div(position.notional * self.markets[position.token].close_fee_bps, BPS)
    bonus: uint256 = 0
    if liquidation:
        bonus = position.notional * self.markets[position.token].liquidation_bonus_bps // BPS
    insurance: uint256 = self.insurance_fund
    available: uint256 = 0
    if s.equity > 0:
        available = convert(s.equity, uint256)
    else:
        s.bad_debt = convert(-s.equity, uint256)
    # Equity pays the fee first, then the bonus; the owner gets the rest.
    s.fee = min(fee, available)
    available -= s.fee
    from_equity: uint256 = min(bonus, available)
    available -= from_equity
    s.bonus_from_insurance = min(bonus - from_equity, insurance)
    insurance -= s.bonus_from_insurance
    s.bonus = from_equity + s.bonus_from_insurance
    s.payout = available
    s.bad_debt_covered = min(s.bad_debt, insurance)
    return s


@internal
def _settle(position_id: uint256, price: uint256, liquidation: bool) -> Settlement:
    position: Position = self.positions[position_id]
    token: address = position.token
    index: int256 = self.markets[token].short_funding
    if position.is_long:
        index = self.markets[token].long_funding
    s: Settlement = self._settlement(position, price, index, liquidation)
    if liquidation:
        assert s.equity < convert(self._maintenance(position), int256), "perp: position is healthy"

    # Open interest.
    basis: int256 = convert(position.notional, int256) * position.entry_funding
    if position.is_long:
        self.markets[token].long_notional -= position.notional
        self.markets[token].long_size -= position.size
        self.markets[token].long_funding_basis -= basis
    else:
        self.markets[token].short_notional -= position.notional
        self.markets[token].short_size -= position.size
        self.markets[token].short_funding_basis -= basis
    self.positions[position_id] = empty(Position)
    self.total_margin -= position.margin
    self.total_reserved -= position.reserved
    # The side's bounds stay (they only ever bound the positions left); an empty side resets at its next open.
    self.sides[token][position.is_long].margin -= position.margin
    self.sides[token][position.is_long].reserved -= position.reserved
    self.sides[token][position.is_long].count -= 1

    # The pool is the counterparty: it receives the margin less what leaves
    # to the owner and the liquidator and less the fee (credited below); a
    # negative amount is a gain it pays (at most `reserved`, which it holds).
    from_equity: uint256 = s.bonus - s.bonus_from_insurance
    pool: int256 = convert(self.pool_amount + position.margin, int256) - convert(
        s.payout + from_equity + s.fee, int256
    )
    insurance: uint256 = self.insurance_fund - s.bonus_from_insurance - s.bad_debt_covered
    self.insurance_fund = insurance
    self.pool_amount = convert(pool, uint256) + s.bad_debt_covered
    self._take_fee(s.fee)
    if s.bad_debt != 0:
        absorbed: uint256 = s.bad_debt - s.bad_debt_covered
        self.bad_debt_total += s.bad_debt
        self.bad_debt_covered_by_insurance += s.bad_debt_covered
        self.bad_debt_absorbed_by_pool += absorbed
        log BadDebtRecorded(
            position_id=position_id,
            token=token,
            amount=s.bad_debt,
            covered_by_insurance=s.bad_debt_covered,
            absorbed_by_pool=absorbed,
        )
    liquidator: address = empty(address)
    if liquidation:
        liquidator = msg.sender
    log PositionClosed(
        position_id=position_id,
        owner=position.owner,
        liquidator=liquidator,
        price=price,
        pnl=s.pnl,
        funding=s.funding,
        gain=s.gain,
        fee=s.fee,
        bonus=s.bonus,
        bonus_from_insurance=s.bonus_from_insurance,
        payout=s.payout,
    )
    return s


@internal
@view
def _pool_value(for_deposit: bool) -> uint256:
    # pool_amount minus what every side is worth to its traders, bounded per
    # side against the LP who asks (see the contract @dev): no loop over positions.
    value: int256 = convert(self.pool_amount, int256)
    for token: address in self.market_tokens:
        long_notional: uint256 = self.markets[token].long_notional
        short_notional: uint256 = self.markets[token].short_notional
        if long_notional == 0 and short_notional == 0:
            continue
        twap: uint256 = self._price(token)
        spot: uint256 = self._spot(token)
        long_funding: int256 = 0
        short_funding: int256 = 0
        long_funding, short_funding = self._indices(token)
        if long_notional != 0:
            value -= self._side_worth(
                token, True, long_notional, self.markets[token].long_size,
                self.markets[token].long_funding_basis, long_funding, twap, spot, for_deposit,
            )  # fmt: skip
        if short_notional != 0:
            value -= self._side_worth(
                token, False, short_notional, self.markets[token].short_size,
                self.markets[token].short_funding_basis, short_funding, twap, spot, for_deposit,
            )  # fmt: skip
    # Leaving: each side at most its reserve, and Σ reserve ≤ pool_amount.
    return convert(max(value, 0), uint256)


@internal
@view
def _side_worth(
    token: address,
    is_long: bool,
    notional: uint256,
    size: uint256,
    basis: int256,
    index: int256,
    twap: uint256,
    spot: uint256,
    for_deposit: bool,
) -> int256:
    # Σ over the side's positions of clamp(PnL − funding, −margin, reserved):
    # an upper bound when an LP leaves, a lower bound when one enters.
    side: Side = self.sides[token][is_long]
    # Funding: exactly Σ f = (index · N − basis) / WAD; received (f < 0) and owed
    # (f > 0) parts bounded by the entry-index bounds, each net of the other.
    funding: int256 = (index * convert(notional, int256) - basis) // _IWAD
    received: int256 = 0
    if side.index_high > index:
        received = convert(math._ceil_div(notional * convert(side.index_high - index, uint256), WAD), int256)
    owed: int256 = convert(side.count, int256)
    if index > side.index_low:
        owed += convert(math._ceil_div(notional * convert(index - side.index_low, uint256), WAD), int256)
    price: uint256 = 0
    pnl: int256 = 0
    if not for_deposit:
        received = min(received, max(owed - funding + 1, 0))
        if is_long:  # at max(spot, TWAP), and past every bankruptcy price
            price = max(max(spot, twap), side.bankrupt_bound)
            pnl = convert(math._ceil_div(size * price, _PRICE_SCALE), int256) - convert(notional, int256)
        else:
            price = min(min(spot, twap), side.bankrupt_bound)
            pnl = convert(notional, int256) - convert(size * price // _PRICE_SCALE, int256)
        return min(convert(side.reserved, int256), pnl + received)
    owed = min(owed, max(received + funding + 1 + convert(side.count, int256), 0))
    if is_long:  # at min(spot, TWAP), and back below every cap price
        price = min(min(spot, twap), side.cap_bound)
        pnl = convert(size * price // _PRICE_SCALE, int256) - convert(notional, int256)
    else:
        price = max(max(spot, twap), side.cap_bound)
        pnl = convert(notional, int256) - convert(math._ceil_div(size * price, _PRICE_SCALE), int256)
    return max(-convert(side.margin, int256), pnl - owed)


@internal
@view
def _reserves(token: address) -> (uint256, uint256):
    # (token reserve, USDC reserve) of the DEX pool the Oracle prices `token` by.
    pool: address = staticcall IOracle(oracle).pool_of(token)
    reserve0: uint256 = 0
    reserve1: uint256 = 0
    last: uint256 = 0
    reserve0, reserve1, last = staticcall IPool(pool).get_reserves()
    if staticcall IPool(pool).token0() == token:
        return reserve0, reserve1
    return reserve1, reserve0


@internal
@view
def _spot(token: address) -> uint256:
    reserve_token: uint256 = 0
    reserve_usdc: uint256 = 0
    reserve_token, reserve_usdc = self._reserves(token)
    return reserve_usdc * _PRICE_SCALE // reserve_token


@internal
@view
def _depth(token: address, twap: uint256) -> uint256:
    # The pool's USDC side at TWAP-consistent reserves: √(x·y) · √(TWAP) / 10**18.
    reserve_token: uint256 = 0
    reserve_usdc: uint256 = 0
    reserve_token, reserve_usdc = self._reserves(token)
    return isqrt(reserve_token * reserve_usdc) * isqrt(twap) // 10**18


@internal
@pure
def _kinks(is_long: bool, margin: uint256, notional: uint256, reserved: uint256, size: uint256) -> (uint256, uint256):
    # A position's bankruptcy price (its PnL reaches −margin) and cap price (its
    # PnL reaches its reserve), funding aside, each rounded so that the side's
    # bounds stay on the safe side of the contract's own PnL rounding.
    bankrupt: uint256 = 0
    cap: uint256 = 0
    if is_long:
        if notional > margin:
            bankrupt = math._ceil_div((notional - margin) * _PRICE_SCALE, size)
        cap = (notional + reserved) * _PRICE_SCALE // size
    else:
        bankrupt = (notional + margin) * _PRICE_SCALE // size
        if notional > reserved:
            cap = math._ceil_div((notional - reserved) * _PRICE_SCALE, size)
    return bankrupt, cap


@internal
def _add_to_side(
    token: address, is_long: bool, margin: uint256, reserved: uint256, size: uint256, notional: uint256, entry: int256
):
    side: Side = self.sides[token][is_long]
    bankrupt: uint256 = 0
    cap: uint256 = 0
    bankrupt, cap = self._kinks(is_long, margin, notional, reserved, size)
    if side.count == 0:  # an empty side starts afresh
        side.bankrupt_bound = bankrupt
        side.cap_bound = cap
        side.index_high = entry
        side.index_low = entry
    elif is_long:
        side.bankrupt_bound = max(side.bankrupt_bound, bankrupt)
        side.cap_bound = min(side.cap_bound, cap)
    else:
        side.bankrupt_bound = min(side.bankrupt_bound, bankrupt)
        side.cap_bound = max(side.cap_bound, cap)
    side.index_high = max(side.index_high, entry)
    side.index_low = min(side.index_low, entry)
    side.margin += margin
    side.reserved += reserved
    side.count += 1
    self.sides[token][is_long] = side


@internal
def _widen_bankrupt_bound(token: address, is_long: bool, bankrupt: uint256):
    if is_long:
        self.sides[token][is_long].bankrupt_bound = max(self.sides[token][is_long].bankrupt_bound, bankrupt)
    else:
        self.sides[token][is_long].bankrupt_bound = min(self.sides[token][is_long].bankrupt_bound, bankrupt)


@internal
def _take_fee(fee: uint256):
    if fee == 0:
        return
    to_insurance: uint256 = fee * self.insurance_fee_bps // BPS
    self.insurance_fund += to_insurance
    self.pool_amount += fee - to_insurance


@internal
def _pull(sender: address, amount: uint256):
    assert extcall IERC20(usdc).transferFrom(sender, self, amount, default_return_value=True), "perp: transfer failed"


@internal
def _push(to: address, amount: uint256):
    assert extcall IERC20(usdc).transfer(to, amount, default_return_value=True), "perp: transfer failed"
