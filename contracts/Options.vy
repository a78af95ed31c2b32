# pragma version ~=0.4.3
"""
@title Options
@license MIT
@notice Capped-cost options on provider tokens (CLD, GPT, …), cash-settled in
        USDC at the Oracle's TWAP over the window ending at expiry. A company
        exposed to rising compute prices caps its cost with a *capped call*; a
        seller of capacity floors its income with a *put*.

        A series is (token, kind, strike, bound, expiry, size):
          - CALL (a call spread): bound is the cap > strike; one unit pays
            min(max(0, price − strike), cap − strike) × size;
          - PUT: bound is the floor < strike (0 for a plain put); one unit pays
            min(max(0, strike − price), strike − floor) × size.
        Prices are the Oracle's: USDC units per 10**18 token units as an
        18-decimal fixed-point number; size is in token units, so x of price
        over `size` token units is worth x · size / 10**36 USDC units.

        1. Anyone creates a series (`create_series`); its id is the hash of its
           terms, so a series exists once.
        2. A writer posts exactly |bound − strike| × size / 10**36 USDC per unit
           (`write`) and receives that many units (ERC-1155 tokens, id = the
           series id, freely transferable); the writer's short position is
           recorded here and is not transferable.
        3. Premium: any holder offers units at a fixed USDC premium per unit
           (`offer`); a buyer fills any part (`buy`), paying the premium
           straight to the seller, and receives the units. An offer never
           changes (a new price is a new offer), so a fill cannot be
           front-run into a worse price. No offer is filled at or after expiry.
        4. After expiry anyone settles a series, once (`settle`).
        5. Holders claim units × payout (`claim`); writers reclaim their
           written units × (collateral − payout) (`reclaim`). Before
           settlement a writer who holds units may burn them against its
           short position for their full collateral (`unwind`).

@dev Settlement price. The Oracle's `consult` averages up to *now*, so it
     cannot price a window that ended in the past. Settlement reads two of
     its recorded observations instead (time mod 2**32, accumulator):
       - end: the NEWEST observation recorded at or before expiry;
       - start: the NEWEST observation recorded at or before end − window;
     price = (accumulator_end − accumulator_start) / (t_end − t_start), the
     exact time-weighted average of the pool price over a span of at least
     `twap_window` that ends at or before expiry (with a keeper updating
     every `period`, it ends less than a period before expiry and is longer
     than the window by less than a period). Every number in it was recorded
     at or before expiry: an observation at time t holds the pool's
     accumulator up to t, which uses the reserves from before the first trade
     of t's block. So nothing that happens after expiry — trades in every
     block, Oracle updates, an update made just before expiry so that the
     next one is refused for a period — moves the price. Both observations
     are forced: the settler passes their ranks as hints and the contract
     checks the neighbours, so nobody can pick a friendlier pair
     (`settlement_ranks` computes the hints). Settlement needs no Oracle
     update after expiry: a series settles from the second after its expiry.

     Fallback (collateral is never locked). The Oracle keeps CARDINALITY
     observations per token; once the ring has overwritten the window's
     start (≥ 45 keeper periods after expiry, since `twap_window` ≤ period ×
     CARDINALITY / 4), or never held one (a token first observed too
     shortly before expiry), the forced pair no longer exists, and it never
     will again (newer observations are all after expiry). The series then
     settles at the Oracle's TWAP over `twap_window` ending when it is
     settled (`consult`) — prices after expiry, so a late settlement is
     weaker: the contract checks, from the same rank hints (the rank
     `observation_count` standing for "not retained"), that the forced pair
     is really gone before it falls back (`Settled.late`). Keepers (the
     `promptex hedge` CLI) settle at expiry; holders and writers each have
     ≥ 45 periods to settle at the honest price first.

     Rounding and solvency. Collateral per unit must be an exact integer
     (creation refuses terms where |bound − strike| × size is not a multiple
     of 10**36), so a writer posts exactly (cap − strike) × N. The payout per
     unit is rounded down once at settlement and never exceeds the collateral
     per unit; holders get units × payout, writers units × (collateral −
     payout), which sums to exactly the collateral posted: the contract
     always holds `total_collateral` ≥ the maximum payout of every open
     series, and nothing is left behind. USDC is accounted internally.

     Storage, one slot each:
       - _terms[id]: token (0..159) | kind (160..167) | expiry (168..231);
       - _prices[id]: strike (0..127) | bound (128..255);
       - _sizes[id]: size (0..127) | collateral per unit (128..255);
       - _outcomes[id]: settlement price, saturated at 2**128 − 1 (0..127) |
         payout per unit (128..254) | settled (255);
       - _offers[id]: seller (0..159) | premium per unit (160..255) and
         _offer_terms[id]: series id, units left.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from snekmate.tokens import erc1155

from .interfaces import IOracle

initializes: ownable
initializes: erc1155[ownable := ownable]

exports: (
    erc1155.safeTransferFrom,
    erc1155.safeBatchTransferFrom,
    erc1155.balanceOf,
    erc1155.balanceOfBatch,
    erc1155.setApprovalForAll,
    erc1155.isApprovedForAll,
    erc1155.supportsInterface,
    erc1155.uri,
    erc1155.total_supply,
    erc1155.exists,
)


# ─── Constants ───────────────────────────────────────────────────────────────

# @notice Series kinds.
CALL: public(constant(uint8)) = 1
PUT: public(constant(uint8)) = 2
# @notice Longest time from creation to expiry.
MAX_TERM: public(constant(uint256)) = 2 * 365 * 86_400
# @notice Largest strike, bound, size and collateral per unit (128 bits).
MAX_VALUE: public(constant(uint256)) = 2**127 - 1
# @notice Observations the Oracle keeps per token (Oracle.CARDINALITY).
ORACLE_CARDINALITY: public(constant(uint256)) = 64
# @notice 10**36 = 10**18 token units per price × 10**18 fixed point (Oracle.consult).
PRICE_SCALE: public(constant(uint256)) = 10**36

_MASK32: constant(uint256) = 2**32 - 1
_MASK64: constant(uint256) = 2**64 - 1
_MASK112: constant(uint256) = 2**112 - 1
_MASK128: constant(uint256) = 2**128 - 1
_ADDRESS_MASK: constant(uint256) = 2**160 - 1
_KIND_SHIFT: constant(uint256) = 160
_EXPIRY_SHIFT: constant(uint256) = 168
_HIGH_SHIFT: constant(uint256) = 128
_SETTLED_BIT: constant(uint256) = 2**255
_PREMIUM_SHIFT: constant(uint256) = 160
_MAX_LAG: constant(uint256) = 2**31


# ─── Immutables and storage ──────────────────────────────────────────────────

# @notice The collateral and premium asset (the Oracle's quote asset).
usdc: public(immutable(address))
# @notice The Oracle whose observations settle every series.
oracle: public(immutable(address))
# @notice Seconds of the TWAP window ending at expiry.
twap_window: public(immutable(uint256))


# @notice A series' terms and outcome, as `series(id)` returns them.
struct Series:
    token: address
    kind: uint8
    strike: uint256
    bound: uint256
    expiry: uint256
    size: uint256
    collateral_per_unit: uint256
    settled: bool
    settlement_price: uint256
    payout_per_unit: uint256


# @notice An offer, as `offers(id)` returns it.
struct Offer:
    seller: address
    series_id: uint256
    units: uint256
    premium_per_unit: uint256


# @notice series id → writer → units written and not yet unwound or reclaimed.
written: public(HashMap[uint256, HashMap[address, uint256]])
# @notice series id → USDC held for it.
collateral: public(HashMap[uint256, uint256])
# @notice USDC held for all series (the contract holds exactly this).
total_collateral: public(uint256)
# @notice Offers made so far; ids run 1 .. offer_count.
offer_count: public(uint256)

_terms: HashMap[uint256, uint256]
_prices: HashMap[uint256, uint256]
_sizes: HashMap[uint256, uint256]
_outcomes: HashMap[uint256, uint256]
_offers: HashMap[uint256, uint256]
_offer_series: HashMap[uint256, uint256]
_offer_units: HashMap[uint256, uint256]


# ─── Events ──────────────────────────────────────────────────────────────────

event SeriesCreated:
    series_id: indexed(uint256)
    token: indexed(address)
    kind: uint8
    strike: uint256
    bound: uint256
    expiry: uint256
    size: uint256
    collateral_per_unit: uint256

event Written:
    series_id: indexed(uint256)
    writer: indexed(address)
    units: uint256
    collateral: uint256

event Unwound:
    series_id: indexed(uint256)
    writer: indexed(address)
    units: uint256
    collateral: uint256

event Offered:
    offer_id: indexed(uint256)
    series_id: indexed(uint256)
    seller: indexed(address)
    units: uint256
    premium_per_unit: uint256

event OfferCancelled:
    offer_id: indexed(uint256)
    units_left: uint256

event Bought:
    offer_id: indexed(uint256)
    series_id: indexed(uint256)
    buyer: indexed(address)
    seller: address
    units: uint256
    premium: uint256

event Settled:
    series_id: indexed(uint256)
    price: uint256
    payout_per_unit: uint256
    start_time: uint256
    end_time: uint256
    late: bool

event Claimed:
    series_id: indexed(uint256)
    holder: indexed(address)
    units: uint256
    usdc: uint256

event Reclaimed:
    series_id: indexed(uint256)
    writer: indexed(address)
    units: uint256
    usdc: uint256


@deploy
def __init__(usdc_: address, oracle_: address, twap_window_: uint256):
    """
    @notice Deploys the options market. It has no admin.
    @param usdc_ USDC: the Oracle's quote asset, the collateral and premium asset.
    @param oracle_ The Oracle.
    @param twap_window_ Seconds of the settlement TWAP: at least the Oracle's
           period and at most period × ORACLE_CARDINALITY / 4 (see the
           contract @dev on liveness).
    """
    assert usdc_ != empty(address), "options: zero address"
    assert oracle_.is_contract, "options: oracle has no code"
    assert staticcall IOracle(oracle_).quote_token() == usdc_, "options: oracle does not quote usdc"
    period: uint256 = staticcall IOracle(oracle_).period()
    assert twap_window_ >= period, "options: twap window below oracle period"
    assert twap_window_ <= period * ORACLE_CARDINALITY // 4, "options: twap window too long"
    ownable.__init__()
    erc1155.__init__("")
    # Nobody mints but this contract's own logic: drop the module's roles.
    erc1155.is_minter[msg.sender] = False
    ownable._transfer_ownership(empty(address))
    usdc = usdc_
    oracle = oracle_
    twap_window = twap_window_


# ─── Series ──────────────────────────────────────────────────────────────────


@external
def create_series(
    token: address, kind: uint8, strike: uint256, bound: uint256, expiry: uint256, size: uint256
) -> uint256:
    """
    @notice Creates a series; anyone may.
    @dev The id is `series_id(...)`, the hash of the terms; creating the same
         terms twice reverts. The token must be tracked by the Oracle (some
         `Oracle.update(token)` happened), so the series can settle.
    @param token A provider token with a TWAP.
    @param kind CALL (capped call) or PUT.
    @param strike Price (Oracle units); non-zero for a PUT.
    @param bound CALL: the cap, above strike. PUT: the floor, below strike (0: none).
    @param expiry Unix seconds, in the future, at most MAX_TERM away.
    @param size Token units one option unit covers (10**18: one token).
    @return uint256 The series id (also its ERC-1155 token id).
    """
    assert kind == CALL or kind == PUT, "options: unknown kind"
    assert strike <= MAX_VALUE and bound <= MAX_VALUE and size <= MAX_VALUE, "options: value too large"
    assert size != 0, "options: zero size"
    spread: uint256 = 0
    if kind == CALL:
        assert bound > strike, "options: cap not above strike"
        spread = bound - strike
    else:
        assert bound < strike, "options: floor not below strike"
        spread = strike - bound
    assert (spread * size) % PRICE_SCALE == 0, "options: collateral not a whole usdc unit"
    collateral_per_unit: uint256 = spread * size // PRICE_SCALE
    assert collateral_per_unit <= MAX_VALUE, "options: value too large"
    assert expiry > block.timestamp, "options: expiry in the past"
    assert expiry <= block.timestamp + MAX_TERM, "options: expiry too far"
    assert staticcall IOracle(oracle).pool_of(token) != empty(address), "options: token not tracked by oracle"

    series_id: uint256 = self._series_id(token, kind, strike, bound, expiry, size)
    assert self._terms[series_id] == 0, "options: series exists"
    self._terms[series_id] = (
        convert(convert(token, uint160), uint256)
        | (convert(kind, uint256) << _KIND_SHIFT)
        | (expiry << _EXPIRY_SHIFT)
    )
    self._prices[series_id] = strike | (bound << _HIGH_SHIFT)
    self._sizes[series_id] = size | (collateral_per_unit << _HIGH_SHIFT)
    log SeriesCreated(
        series_id=series_id,
        token=token,
        kind=kind,
        strike=strike,
        bound=bound,
        expiry=expiry,
        size=size,
        collateral_per_unit=collateral_per_unit,
    )
    return series_id


@external
@pure
def series_id(token: address, kind: uint8, strike: uint256, bound: uint256, expiry: uint256, size: uint256) -> uint256:
    """
    @notice The id of the series with these terms (whether created or not).
    @return uint256 uint256(keccak256(abi_encode(token, kind, strike, bound, expiry, size))).
    """
    return self._series_id(token, kind, strike, bound, expiry, size)


@external
@view
def series(series_id: uint256) -> Series:
    """
    @notice A series' terms and, once settled, its outcome.
    @param series_id A series id.
    @return Series Zeroes for an unknown id.
    """
    terms: uint256 = self._terms[series_id]
    prices: uint256 = self._prices[series_id]
    sizes: uint256 = self._sizes[series_id]
    outcome: uint256 = self._outcomes[series_id]
    return Series(
        token=self._token(terms),
        kind=convert((terms >> _KIND_SHIFT) & 255, uint8),
        strike=prices & _MASK128,
        bound=prices >> _HIGH_SHIFT,
        expiry=(terms >> _EXPIRY_SHIFT) & _MASK64,
        size=sizes & _MASK128,
        collateral_per_unit=sizes >> _HIGH_SHIFT,
        settled=outcome & _SETTLED_BIT != 0,
        settlement_price=outcome & _MASK128,
        payout_per_unit=(outcome >> _HIGH_SHIFT) & MAX_VALUE,
    )


# ─── Writers ─────────────────────────────────────────────────────────────────


@external
@nonreentrant
def write(series_id: uint256, units: uint256) -> uint256:
    """
    @notice Posts collateral for `units` of a series and receives them.
    @dev Pulls units × collateral_per_unit USDC from the caller (approve
         this contract first). Only before expiry. The units go to the
         caller (a contract must accept ERC-1155 tokens).
    @param series_id An existing series.
    @param units Option units to write; non-zero.
    @return uint256 USDC posted.
    """
    terms: uint256 = self._terms[series_id]
    assert terms != 0, "options: unknown series"
    assert block.timestamp < self._expiry(terms), "options: series expired"
    assert units != 0, "options: zero units"
    amount: uint256 = units * (self._sizes[series_id] >> _HIGH_SHIFT)

    self.written[series_id][msg.sender] += units
    self.collateral[series_id] += amount
    self.total_collateral += amount
    log Written(series_id=series_id, writer=msg.sender, units=units, collateral=amount)
    assert extcall IERC20(usdc).transferFrom(msg.sender, self, amount, default_return_value=True), "options: transfer failed"
    erc1155._safe_mint(msg.sender, series_id, units, b"")
    return amount


@external
@nonreentrant
def unwind(series_id: uint256, units: uint256) -> uint256:
    """
    @notice Before settlement, burns `units` the caller holds against as many
            units it wrote, and returns their whole collateral.
    @param series_id A series.
    @param units Units to close; at most both the caller's balance and its written units.
    @return uint256 USDC returned.
    """
    assert self._outcomes[series_id] & _SETTLED_BIT == 0, "options: series settled"
    assert units != 0, "options: zero units"
    assert self.written[series_id][msg.sender] >= units, "options: not written by caller"
    amount: uint256 = units * (self._sizes[series_id] >> _HIGH_SHIFT)

    erc1155._burn(msg.sender, series_id, units)
    self.written[series_id][msg.sender] -= units
    self.collateral[series_id] -= amount
    self.total_collateral -= amount
    log Unwound(series_id=series_id, writer=msg.sender, units=units, collateral=amount)
    self._pay(msg.sender, amount)
    return amount


@external
@nonreentrant
def reclaim(series_id: uint256) -> uint256:
    """
    @notice After settlement, returns what is left of the caller's collateral:
            written units × (collateral per unit − payout per unit).
    @param series_id A settled series in which the caller wrote units.
    @return uint256 USDC returned (may be 0 when the series paid in full).
    """
    outcome: uint256 = self._outcomes[series_id]
    assert outcome & _SETTLED_BIT != 0, "options: series not settled"
    units: uint256 = self.written[series_id][msg.sender]
    assert units != 0, "options: nothing to reclaim"
    payout_per_unit: uint256 = (outcome >> _HIGH_SHIFT) & MAX_VALUE
    amount: uint256 = units * ((self._sizes[series_id] >> _HIGH_SHIFT) - payout_per_unit)

    self.written[series_id][msg.sender] = 0
    self.collateral[series_id] -= amount
    self.total_collateral -= amount
    log Reclaimed(series_id=series_id, writer=msg.sender, units=units, usdc=amount)
    if amount != 0:
        self._pay(msg.sender, amount)
    return amount


# ─── Premium: offers ─────────────────────────────────────────────────────────


@external
def offer(series_id: uint256, units: uint256, premium_per_unit: uint256) -> uint256:
    """
    @notice Offers up to `units` of a series at `premium_per_unit` USDC each.
    @dev Nothing is escrowed: a fill moves the seller's units then, so the
         seller must still hold them. An offer never changes; cancel it and
         make another to change the price.
    @param series_id An unexpired series.
    @param units Units on offer; non-zero.
    @param premium_per_unit USDC units per option unit (0: a gift).
    @return uint256 The offer id.
    """
    terms: uint256 = self._terms[series_id]
    assert terms != 0, "options: unknown series"
    assert block.timestamp < self._expiry(terms), "options: series expired"
    assert units != 0, "options: zero units"
    assert premium_per_unit <= MAX_VALUE, "options: value too large"
    offer_id: uint256 = self.offer_count + 1
    self.offer_count = offer_id
    self._offers[offer_id] = convert(convert(msg.sender, uint160), uint256) | (premium_per_unit << _PREMIUM_SHIFT)
    self._offer_series[offer_id] = series_id
    self._offer_units[offer_id] = units
    log Offered(
        offer_id=offer_id, series_id=series_id, seller=msg.sender, units=units, premium_per_unit=premium_per_unit
    )
    return offer_id


@external
def cancel_offer(offer_id: uint256):
    """
    @notice Withdraws what is left of the caller's offer.
    @param offer_id An offer of the caller's with units left.
    """
    assert self._offer_units[offer_id] != 0, "options: offer closed"
    assert self._token(self._offers[offer_id]) == msg.sender, "options: not the seller"
    log OfferCancelled(offer_id=offer_id, units_left=self._offer_units[offer_id])
    self._offer_units[offer_id] = 0


@external
@nonreentrant
def buy(offer_id: uint256, units: uint256) -> uint256:
    """
    @notice Fills `units` of an offer: pays units × premium_per_unit USDC to
            the seller and receives the units.
    @dev Only before the series' expiry. Pulls the premium from the caller
         (approve this contract first) straight to the seller; this contract
         never holds premiums.
    @param offer_id An open offer.
    @param units Units to buy; at most the offer's units left.
    @return uint256 Premium paid.
    """
    left: uint256 = self._offer_units[offer_id]
    assert left != 0, "options: offer closed"
    assert units != 0, "options: zero units"
    assert units <= left, "options: offer too small"
    series_id: uint256 = self._offer_series[offer_id]
    assert block.timestamp < self._expiry(self._terms[series_id]), "options: series expired"
    word: uint256 = self._offers[offer_id]
    seller: address = self._token(word)
    assert seller != msg.sender, "options: own offer"
    assert erc1155.balanceOf[seller][series_id] >= units, "options: seller lacks units"
    premium: uint256 = units * (word >> _PREMIUM_SHIFT)

    self._offer_units[offer_id] = left - units
    log Bought(offer_id=offer_id, series_id=series_id, buyer=msg.sender, seller=seller, units=units, premium=premium)
    if premium != 0:
        assert extcall IERC20(usdc).transferFrom(msg.sender, seller, premium, default_return_value=True), "options: transfer failed"
    erc1155._safe_transfer_from(seller, msg.sender, series_id, units, b"")
    return premium


@external
@view
def offers(offer_id: uint256) -> Offer:
    """
    @notice An offer (units left 0: filled or cancelled).
    @param offer_id An offer id.
    @return Offer Zeroes for an unknown id.
    """
    word: uint256 = self._offers[offer_id]
    return Offer(
        seller=self._token(word),
        series_id=self._offer_series[offer_id],
        units=self._offer_units[offer_id],
        premium_per_unit=word >> _PREMIUM_SHIFT,
    )


# ─── Settlement ──────────────────────────────────────────────────────────────


@external
@nonreentrant
def settle(series_id: uint256, start_rank: uint256, end_rank: uint256) -> uint256:
    """
    @notice Settles an expired series at the TWAP over the window ending at
            or before expiry (see the contract @dev), once; anyone may.
    @dev `start_rank` and `end_rank` are Oracle observation ranks (0 = the
         newest): the newest observation at or before expiry, and the
         newest at or before that one's time − twap_window. A rank equal to
         `observation_count` says "not retained": then the series settles
         late, at `Oracle.consult(token, twap_window)`, after the contract
         checks the ring holds no such observation. `settlement_ranks`
         returns the pair; any other reverts. Moves no funds.
    @param series_id An expired (block time > expiry), unsettled series.
    @param start_rank Rank of the window's start observation.
    @param end_rank Rank of the window's end observation.
    @return uint256 The payout per unit (USDC units).
    """
    terms: uint256 = self._terms[series_id]
    assert terms != 0, "options: unknown series"
    assert self._outcomes[series_id] & _SETTLED_BIT == 0, "options: series settled"
    expiry: uint256 = self._expiry(terms)
    assert block.timestamp > expiry, "options: not expired"
    token: address = self._token(terms)

    price: uint256 = 0
    start_time: uint256 = 0
    end_time: uint256 = 0
    late: bool = False
    lag: uint256 = block.timestamp - expiry
    if lag + twap_window >= _MAX_LAG:
        late = True  # ages modulo 2**32 can no longer place expiry: nothing before it is readable
    else:
        now: uint256 = block.timestamp & _MASK32
        count: uint256 = staticcall IOracle(oracle).observation_count(token)
        assert count != 0 and start_rank <= count and end_rank <= count, "options: bad ranks"
        # Ages grow with rank, so each choice is pinned by one neighbour.
        if end_rank == count:  # "nothing at or before expiry is retained": even the oldest is later
            assert self._age(self._observed_time(token, count - 1), now) < lag, "options: bad end rank"
            late = True
        else:
            end_cumulative: uint256 = 0
            end_time, end_cumulative = staticcall IOracle(oracle).observation(token, end_rank)
            end_age: uint256 = self._age(end_time, now)
            assert end_age >= lag, "options: bad end rank"  # recorded at or before expiry…
            if end_rank != 0:  # …and the newest such
                assert self._age(self._observed_time(token, end_rank - 1), now) < lag, "options: bad end rank"
            threshold: uint256 = end_age + twap_window
            if start_rank == count:  # "the window's start is not retained": even the oldest is later
                assert self._age(self._observed_time(token, count - 1), now) < threshold, "options: bad start rank"
                late = True
            else:
                assert start_rank > end_rank, "options: bad ranks"
                start_cumulative: uint256 = 0
                start_time, start_cumulative = staticcall IOracle(oracle).observation(token, start_rank)
                start_age: uint256 = self._age(start_time, now)
                assert start_age >= threshold, "options: bad start rank"
                if start_rank - 1 != end_rank:  # else that neighbour is the end, younger than threshold
                    assert self._age(self._observed_time(token, start_rank - 1), now) < threshold, "options: bad start rank"
                average: uint256 = unsafe_sub(end_cumulative, start_cumulative) // (start_age - end_age)  # UQ112.112
                price = (average >> 112) * PRICE_SCALE + (((average & _MASK112) * PRICE_SCALE) >> 112)
                start_time = block.timestamp - start_age
                end_time = block.timestamp - end_age
    if late:
        price = staticcall IOracle(oracle).consult(token, twap_window)
        start_time = 0
        end_time = 0
    payout_per_unit: uint256 = self._payout_per_unit(series_id, terms, price)

    self._outcomes[series_id] = min(price, _MASK128) | (payout_per_unit << _HIGH_SHIFT) | _SETTLED_BIT
    log Settled(
        series_id=series_id,
        price=price,
        payout_per_unit=payout_per_unit,
        start_time=start_time,
        end_time=end_time,
        late=late,
    )
    return payout_per_unit


@external
@view
def settlement_ranks(series_id: uint256) -> (uint256, uint256):
    """
    @notice The observation ranks `settle` needs now (for off-chain callers).
    @dev Either rank is `Oracle.observation_count(token)` when the ring does
         not hold that observation (a late settlement, see the contract @dev).
    @param series_id An expired series (block time > expiry).
    @return uint256 start_rank.
    @return uint256 end_rank.
    """
    terms: uint256 = self._terms[series_id]
    assert terms != 0, "options: unknown series"
    expiry: uint256 = self._expiry(terms)
    assert block.timestamp > expiry, "options: not expired"
    token: address = self._token(terms)
    count: uint256 = staticcall IOracle(oracle).observation_count(token)
    lag: uint256 = block.timestamp - expiry
    if lag + twap_window >= _MAX_LAG:
        return count, count
    now: uint256 = block.timestamp & _MASK32
    end_rank: uint256 = count
    threshold: uint256 = 0
    for rank: uint256 in range(count, bound=ORACLE_CARDINALITY):
        age: uint256 = self._age(self._observed_time(token, rank), now)
        if end_rank == count:
            if age >= lag:
                end_rank = rank
                threshold = age + twap_window
        elif age >= threshold:
            return rank, end_rank
    return count, end_rank


# ─── Holders ─────────────────────────────────────────────────────────────────


@external
@nonreentrant
def claim(series_id: uint256) -> uint256:
    """
    @notice After settlement, burns all the caller's units of a series and
            pays units × payout per unit.
    @param series_id A settled series in which the caller holds units.
    @return uint256 USDC paid (0 for a series that expired worthless).
    """
    outcome: uint256 = self._outcomes[series_id]
    assert outcome & _SETTLED_BIT != 0, "options: series not settled"
    units: uint256 = erc1155.balanceOf[msg.sender][series_id]
    assert units != 0, "options: no units"
    amount: uint256 = units * ((outcome >> _HIGH_SHIFT) & MAX_VALUE)

    erc1155._burn(msg.sender, series_id, units)
    self.collateral[series_id] -= amount
    self.total_collateral -= amount
    log Claimed(series_id=series_id, holder=msg.sender, units=units, usdc=amount)
    if amount != 0:
        self._pay(msg.sender, amount)
    return amount


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
@pure
def _series_id(token: address, kind: uint8, strike: uint256, bound: uint256, expiry: uint256, size: uint256) -> uint256:
    return convert(keccak256(abi_encode(token, kind, strike, bound, expiry, size)), uint256)


@internal
@pure
def _token(word: uint256) -> address:
    return convert(convert(word & _ADDRESS_MASK, uint160), address)


@internal
@pure
def _expiry(terms: uint256) -> uint256:
    return (terms >> _EXPIRY_SHIFT) & _MASK64


@internal
@pure
def _age(time: uint256, now: uint256) -> uint256:
    return unsafe_sub(now, time) & _MASK32


@internal
@view
def _observed_time(token: address, rank: uint256) -> uint256:
    time: uint256 = 0
    cumulative: uint256 = 0
    time, cumulative = staticcall IOracle(oracle).observation(token, rank)
    return time


@internal
@view
def _payout_per_unit(series_id: uint256, terms: uint256, price: uint256) -> uint256:
    prices: uint256 = self._prices[series_id]
    strike: uint256 = prices & _MASK128
    bound: uint256 = prices >> _HIGH_SHIFT
    intrinsic: uint256 = 0
    if convert((terms >> _KIND_SHIFT) & 255, uint8) == CALL:
        intrinsic = min(price, bound) - min(price, strike)  # min(max(0, price − strike), cap − strike)
    else:
        intrinsic = max(price, strike) - max(price, bound)  # min(max(0, strike − price), strike − floor)
    # Rounded down: never above the collateral per unit, spread × size / 10**36.
    return intrinsic * (self._sizes[series_id] & _MASK128) // PRICE_SCALE


@internal
def _pay(to: address, amount: uint256):
    assert extcall IERC20(usdc).transfer(to, amount, default_return_value=True), "options: transfer failed"
