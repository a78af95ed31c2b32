# pragma version ~=0.4.3
"""
@title Oracle
@license MIT
@notice Time-weighted average prices of tokens in the quote asset (USDC),
        from the cumulative prices of the DEX's token/USDC pools. Anyone
        calls `update(token)` (a keeper, every `period` seconds); it records
        an observation in a ring buffer of CARDINALITY per token. `consult`
        averages from a recorded observation to now. Never a spot price.
        Read by grants (slippage bounds), metering across tokens and hedging.
@dev A token's price pool is the Factory's (token, quote_token, fee) pool,
     found at the token's first `update`. The price of `token` is the pool's
     reserve ratio quote/token as a UQ112.112 number, so the accumulator is
     `price0_cumulative` when the token is the pool's token0 and
     `price1_cumulative` otherwise.

     Storage, one slot each:
       - state[token]: pool (bits 0..159) | token is token0 (bit 160) |
         index of the newest observation (bits 168..175) | number of
         observations (bits 176..183) | time of the newest (bits 192..223);
       - observations[token][i]: the accumulator with its low 32 bits
         replaced by the time (block.timestamp mod 2**32) it was read.
     Dropping the low 32 bits of a UQ112.112·seconds accumulator changes an
     average over s seconds by less than 2**32 / s units of 2**-112, i.e.
     below 2**-80 / s quote units per token unit; differences stay modulo
     2**256, so the pool's wrap-around is still handled. Times are modulo
     2**32, like the pool's (good until 2106, and across the wrap).

     `consult(token, window)` takes the newest observation at least `window`
     seconds old (binary search) and returns the exact average over the span
     from it to now; with updates every `period`, that span is between
     `window` and `window + period` plus any gap in updates.
"""


from .interfaces import IFactory
from .interfaces import IOracle
from .interfaces import IPool

implements: IOracle


# ─── Constants ───────────────────────────────────────────────────────────────

# @notice Observations kept per token (a ring buffer).
CARDINALITY: public(constant(uint256)) = 64
# @notice Longest window `consult` accepts (half the 2**32-second clock).
MAX_WINDOW: public(constant(uint256)) = 2**31

_SEARCH_STEPS: constant(uint256) = 7  # ceil(log2(CARDINALITY)) + 1
_MASK32: constant(uint256) = 2**32 - 1
_MASK112: constant(uint256) = 2**112 - 1
_POOL_MASK: constant(uint256) = 2**160 - 1
_IS_TOKEN0_BIT: constant(uint256) = 2**160
_INDEX_SHIFT: constant(uint256) = 168
_COUNT_SHIFT: constant(uint256) = 176
_TIME_SHIFT: constant(uint256) = 192
_BYTE_MASK: constant(uint256) = 2**8 - 1
# @dev 10**36 = 10**18 token units per price × 10**18 fixed point.
_PRICE_SCALE: constant(uint256) = 10**36


# ─── Immutables and storage ──────────────────────────────────────────────────

# @notice The Factory whose pools are observed.
factory: public(immutable(address))
# @notice The asset prices are expressed in (USDC).
quote_token: public(immutable(address))
# @notice Fee tier of the pools that price each token.
fee: public(immutable(uint256))
# @notice Least seconds between two observations of a token.
period: public(immutable(uint256))

_state: HashMap[address, uint256]
_observations: HashMap[address, uint256[CARDINALITY]]


# ─── Events ──────────────────────────────────────────────────────────────────

event PoolTracked:
    token: indexed(address)
    pool: indexed(address)

event ObservationRecorded:
    token: indexed(address)
    timestamp: uint256
    price_cumulative: uint256


@deploy
def __init__(factory_: address, quote_token_: address, fee_: uint256, period_: uint256):
    """
    @notice Deploys the oracle.
    @param factory_ The Factory.
    @param quote_token_ The quote asset (USDC).
    @param fee_ Fee tier of the token/quote pools to observe (30 = 0.30 %).
    @param period_ Least seconds between observations of a token; non-zero.
    """
    assert factory_ != empty(address) and quote_token_ != empty(address), "oracle: zero address"
    assert period_ > 0 and period_ <= MAX_WINDOW, "oracle: period out of range"
    factory = factory_
    quote_token = quote_token_
    fee = fee_
    period = period_


# ─── Observations ────────────────────────────────────────────────────────────


@external
def update(token: address) -> bool:
    """
    @notice Records an observation of `token`'s price pool if `period`
            seconds have passed since the last one; otherwise does nothing.
    @dev Permissionless. The first call finds the token's pool; it must
         exist and hold liquidity. Costs about 40k gas once the ring has
         wrapped (a fresh slot costs 20k more), and 23k when it records nothing.
    @param token A token with a (token, quote_token, fee) pool.
    @return bool Whether an observation was recorded.
    """
    state: uint256 = self._state[token]
    now: uint256 = block.timestamp & _MASK32
    if state != 0 and unsafe_sub(now, (state >> _TIME_SHIFT) & _MASK32) & _MASK32 < period:
        return False

    if state == 0:
        state = self._track(token)
    cumulative: uint256 = self._cumulative(self._pool_of(state), state)

    count: uint256 = (state >> _COUNT_SHIFT) & _BYTE_MASK
    index: uint256 = 0
    if count != 0:
        index = (((state >> _INDEX_SHIFT) & _BYTE_MASK) + 1) % CARDINALITY
    if count < CARDINALITY:
        count += 1
    self._observations[token][index] = (cumulative & ~_MASK32) | now
    self._state[token] = (
        (state & (_POOL_MASK | _IS_TOKEN0_BIT))
        | (index << _INDEX_SHIFT)
        | (count << _COUNT_SHIFT)
        | (now << _TIME_SHIFT)
    )
    log ObservationRecorded(token=token, timestamp=now, price_cumulative=cumulative & ~_MASK32)
    return True


# ─── Prices ──────────────────────────────────────────────────────────────────


@external
@view
def consult(token: address, window: uint256) -> uint256:
    """
    @notice The time-weighted average price of `token` over at least the
            last `window` seconds.
    @dev Reverts "oracle: window not covered" until an observation at least
         `window` seconds old exists. The span averaged runs from the
         newest such observation to now (see the contract @dev).
    @param token A tracked token.
    @param window Seconds; 1 .. MAX_WINDOW.
    @return uint256 Quote units per 10**18 token units, as an 18-decimal
            fixed-point number, rounded down (CLD at $0.004218 against USDC:
            4_218 * 10**18).
    """
    assert window != 0, "oracle: zero window"
    assert window <= MAX_WINDOW, "oracle: window too long"
    state: uint256 = self._state[token]
    assert state != 0, "oracle: token not tracked"
    now: uint256 = block.timestamp & _MASK32
    count: uint256 = (state >> _COUNT_SHIFT) & _BYTE_MASK
    newest: uint256 = (state >> _INDEX_SHIFT) & _BYTE_MASK
    # Ring position k (0 = oldest .. count − 1 = newest) is slot (oldest + k) % CARDINALITY.
    oldest: uint256 = 0
    if count == CARDINALITY:
        oldest = (newest + 1) % CARDINALITY

    assert self._age(self._observations[token][oldest], now) >= window, "oracle: window not covered"
    # Ages fall from oldest to newest: find the last position still >= window.
    low: uint256 = 0
    high: uint256 = count - 1
    for _: uint256 in range(_SEARCH_STEPS):
        if low >= high:
            break
        middle: uint256 = (low + high + 1) // 2
        if self._age(self._observations[token][(oldest + middle) % CARDINALITY], now) >= window:
            low = middle
        else:
            high = middle - 1
    observation: uint256 = self._observations[token][(oldest + low) % CARDINALITY]

    elapsed: uint256 = self._age(observation, now)
    current: uint256 = self._cumulative(self._pool_of(state), state) & ~_MASK32
    average: uint256 = unsafe_sub(current, observation & ~_MASK32) // elapsed  # UQ112.112
    return (average >> 112) * _PRICE_SCALE + (((average & _MASK112) * _PRICE_SCALE) >> 112)


@external
@view
def pool_of(token: address) -> address:
    """
    @notice The pool that prices `token`, once tracked.
    @param token A token.
    @return address Its (token, quote_token, fee) pool, or the zero address.
    """
    return self._pool_of(self._state[token])


@external
@view
def observation_count(token: address) -> uint256:
    """
    @notice How many observations of `token` the ring holds.
    @param token A token.
    @return uint256 0 .. CARDINALITY.
    """
    return (self._state[token] >> _COUNT_SHIFT) & _BYTE_MASK


@external
@view
def observation(token: address, age_rank: uint256) -> (uint256, uint256):
    """
    @notice One recorded observation, newest first.
    @param token A tracked token.
    @param age_rank 0 for the newest, 1 for the one before, … (< observation_count).
    @return uint256 Time recorded (block.timestamp mod 2**32).
    @return uint256 The price accumulator then, low 32 bits cleared.
    """
    state: uint256 = self._state[token]
    assert age_rank < (state >> _COUNT_SHIFT) & _BYTE_MASK, "oracle: no such observation"
    newest: uint256 = (state >> _INDEX_SHIFT) & _BYTE_MASK
    word: uint256 = self._observations[token][(newest + CARDINALITY - age_rank) % CARDINALITY]
    return word & _MASK32, word & ~_MASK32


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
def _track(token: address) -> uint256:
    assert token != quote_token, "oracle: token is the quote asset"
    pool: address = staticcall IFactory(factory).get_pool(token, quote_token, fee)
    assert pool != empty(address), "oracle: no pool"
    # A pool's reserves never return to zero once it has liquidity (its
    # MINIMUM_LIQUIDITY is locked), so the accumulator never stalls after this.
    reserve0: uint256 = 0
    reserve1: uint256 = 0
    last: uint256 = 0
    reserve0, reserve1, last = staticcall IPool(pool).get_reserves()
    assert reserve0 != 0 and reserve1 != 0, "oracle: pool has no liquidity"
    state: uint256 = convert(convert(pool, uint160), uint256)
    if staticcall IPool(pool).token0() == token:
        state |= _IS_TOKEN0_BIT
    log PoolTracked(token=token, pool=pool)
    return state


@internal
@pure
def _pool_of(state: uint256) -> address:
    return convert(convert(state & _POOL_MASK, uint160), address)


@internal
@view
def _cumulative(pool: address, state: uint256) -> uint256:
    price0: uint256 = 0
    price1: uint256 = 0
    now: uint256 = 0
    price0, price1, now = staticcall IPool(pool).current_cumulative_prices()
    if state & _IS_TOKEN0_BIT != 0:
        return price0
    return price1


@internal
@pure
def _age(observation: uint256, now: uint256) -> uint256:
    return unsafe_sub(now, observation & _MASK32) & _MASK32
