# pragma version ~=0.4.3
"""
@title Pool
@license MIT
@notice A constant-product (x·y = k) pool of two ERC-20 tokens with a swap fee
        fixed at creation. Liquidity providers hold its LP token (an ERC-20
        with EIP-2612 permit). Created by the Factory from a blueprint, one
        pool per (pair, fee); users trade and provide liquidity through the
        Router, which checks slippage, deadlines and fee-on-transfer tokens.
@dev The core follows Uniswap v2's pair, written anew in Vyper:
       - tokens are sent to the pool first, then `mint`, `swap` or `burn`
         reads what arrived from the balances (no callbacks, no flash swaps);
       - `MINIMUM_LIQUIDITY` LP units are locked at the zero address on the
         first mint, so the LP supply never returns to zero;
       - the TWAP accumulators advance from the reserves as they were before
         the operation, once per block;
       - in both swaps the K check is the last word before the new reserves
         are written;
       - `skim` and `sync` recover from tokens donated to the pool.
     Two swaps: `swap` (v2's: name the outputs, the K check judges the input)
     and `swap_exact_in` (Curve's `exchange_received`: name the input already
     sent, the pool computes the output), which lets the Router chain hops
     without reading reserves and makes a fee-on-transfer input revert here.
     Every external entry point, views included, takes one reentrancy lock
     (transient storage on Cancun and later), so a token's callback can
     neither re-enter nor read reserves that are mid-update.

     Hot path storage: the two reserves and the timestamp of their last
     update share ONE slot, read once and written once per swap:

         bits   0..111  reserve0               uint112  (≤ MAX_RESERVE)
         bits 112..223  reserve1               uint112
         bits 224..255  block_timestamp_last   uint32   (block.timestamp mod 2**32)

     The accumulators `price{0,1}_cumulative_last` are UQ112.112 prices
     (reserve1 / reserve0 and reserve0 / reserve1) times seconds; they wrap
     modulo 2**256 by design, so readers take differences modulo 2**256.
     The tokens, the fee and the factory are immutables (in the code, not in
     storage).

     Fee: `fee` parts per FEE_DENOMINATOR (10,000) of every input, so 30 is
     0.30 %. The swap is accepted when
         (b0·D − in0·fee) · (b1·D − in1·fee) ≥ r0 · r1 · D²
     with b the balances after the swap, r the reserves before, in the
     amounts received and D = FEE_DENOMINATOR.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from snekmate.tokens import erc20

from .interfaces import IFactory
from .interfaces import IPool

implements: IPool

initializes: ownable
initializes: erc20[ownable := ownable]

# The LP token. `totalSupply` is re-exported below behind the reentrancy lock:
# during `burn` the supply has already fallen while the reserves have not.
exports: (
    erc20.transfer,
    erc20.approve,
    erc20.transferFrom,
    erc20.permit,
    erc20.DOMAIN_SEPARATOR,
    erc20.eip712Domain,
    erc20.name,
    erc20.symbol,
    erc20.decimals,
    erc20.balanceOf,
    erc20.allowance,
    erc20.nonces,
)


# ─── Constants ───────────────────────────────────────────────────────────────

# @notice LP units locked forever at the zero address by the first mint.
MINIMUM_LIQUIDITY: public(constant(uint256)) = 10**3
# @notice The fee is `fee` parts of this many.
FEE_DENOMINATOR: public(constant(uint256)) = 10_000
# @notice Largest reserve (uint112), so the K check cannot overflow.
MAX_RESERVE: public(constant(uint256)) = 2**112 - 1

_MASK112: constant(uint256) = 2**112 - 1
_MASK32: constant(uint256) = 2**32 - 1
_RESERVE1_SHIFT: constant(uint256) = 112
_TIMESTAMP_SHIFT: constant(uint256) = 224
_FEE_DENOMINATOR_SQUARED: constant(uint256) = FEE_DENOMINATOR * FEE_DENOMINATOR


# ─── Immutables ──────────────────────────────────────────────────────────────

# @notice The Factory that created this pool.
factory: public(immutable(address))
# @notice The token with the lower address.
token0: public(immutable(address))
# @notice The token with the higher address.
token1: public(immutable(address))
# @notice Swap fee in parts per FEE_DENOMINATOR (30 = 0.30 %).
fee: public(immutable(uint256))


# ─── Storage ─────────────────────────────────────────────────────────────────

# @dev reserve0 | reserve1 << 112 | block_timestamp_last << 224 (see the contract @dev).
_slot0: uint256
_price0_cumulative_last: uint256
_price1_cumulative_last: uint256


# ─── Events ──────────────────────────────────────────────────────────────────

event LiquidityAdded:
    sender: indexed(address)
    to: indexed(address)
    amount0: uint256
    amount1: uint256
    liquidity: uint256

event LiquidityRemoved:
    sender: indexed(address)
    to: indexed(address)
    amount0: uint256
    amount1: uint256
    liquidity: uint256

event Swapped:
    sender: indexed(address)
    to: indexed(address)
    amount0_in: uint256
    amount1_in: uint256
    amount0_out: uint256
    amount1_out: uint256

event Skimmed:
    to: indexed(address)
    amount0: uint256
    amount1: uint256

event ReservesSynced:
    reserve0: uint256
    reserve1: uint256


@deploy
def __init__():
    """
    @notice Created by the Factory (from its blueprint), which it asks for the
            tokens and the fee, so the pool's address depends only on the
            factory and (token0, token1, fee).
    @dev snekmate makes the deployer (the factory) an LP minter; `mint` is
         not exported, and the role is revoked anyway.
    """
    token0_: address = empty(address)
    token1_: address = empty(address)
    fee_: uint256 = 0
    token0_, token1_, fee_ = staticcall IFactory(msg.sender).pool_parameters()
    assert token0_ != empty(address), "pool: zero address"
    assert convert(token0_, uint160) < convert(token1_, uint160), "pool: tokens not sorted"
    assert fee_ < FEE_DENOMINATOR, "pool: fee too high"
    factory = msg.sender
    token0 = token0_
    token1 = token1_
    fee = fee_
    ownable.__init__()
    erc20.__init__("PROMPTEX Pool LP", "PX-LP", 18, "PROMPTEX Pool LP", "1")
    erc20.is_minter[msg.sender] = False
    log erc20.RoleMinterChanged(minter=msg.sender, status=False)


# ─── Views (locked against read-only reentrancy) ─────────────────────────────


@external
@view
@nonreentrant
def get_reserves() -> (uint256, uint256, uint256):
    """
    @notice The reserves and the time they were last written.
    @dev Reverts while the pool is mid-operation (read-only reentrancy).
    @return uint256 reserve0 in token0 units.
    @return uint256 reserve1 in token1 units.
    @return uint256 block_timestamp_last: block.timestamp mod 2**32 of the last update.
    """
    slot0: uint256 = self._slot0
    return slot0 & _MASK112, (slot0 >> _RESERVE1_SHIFT) & _MASK112, slot0 >> _TIMESTAMP_SHIFT


@external
@view
@nonreentrant
def price0_cumulative_last() -> uint256:
    """
    @notice Σ (reserve1 / reserve0 as UQ112.112) × seconds, up to the last update.
    @dev Wraps modulo 2**256; take differences modulo 2**256.
    @return uint256 The accumulator.
    """
    return self._price0_cumulative_last


@external
@view
@nonreentrant
def price1_cumulative_last() -> uint256:
    """
    @notice Σ (reserve0 / reserve1 as UQ112.112) × seconds, up to the last update.
    @dev Wraps modulo 2**256; take differences modulo 2**256.
    @return uint256 The accumulator.
    """
    return self._price1_cumulative_last


@external
@view
@nonreentrant
def current_cumulative_prices() -> (uint256, uint256, uint256):
    """
    @notice Both accumulators as they would be if the pool were updated now
            (the stored values plus the current reserves' prices times the
            seconds since the last update). What the Oracle observes.
    @return uint256 price0 cumulative (UQ112.112 seconds, wrapping).
    @return uint256 price1 cumulative (UQ112.112 seconds, wrapping).
    @return uint256 block.timestamp mod 2**32.
    """
    slot0: uint256 = self._slot0
    price0: uint256 = self._price0_cumulative_last
    price1: uint256 = self._price1_cumulative_last
    now: uint256 = block.timestamp & _MASK32
    elapsed: uint256 = unsafe_sub(now, slot0 >> _TIMESTAMP_SHIFT) & _MASK32
    reserve0: uint256 = slot0 & _MASK112
    reserve1: uint256 = (slot0 >> _RESERVE1_SHIFT) & _MASK112
    if elapsed != 0 and reserve0 != 0 and reserve1 != 0:
        price0 = unsafe_add(price0, unsafe_mul(unsafe_div(reserve1 << 112, reserve0), elapsed))
        price1 = unsafe_add(price1, unsafe_mul(unsafe_div(reserve0 << 112, reserve1), elapsed))
    return price0, price1, now


@external
@view
@nonreentrant
def totalSupply() -> uint256:
    """
    @notice LP units in existence (MINIMUM_LIQUIDITY of them locked).
    @dev Locked: during `burn` the supply falls before the reserves do.
    @return uint256 The LP supply.
    """
    return erc20.totalSupply


# ─── Liquidity ───────────────────────────────────────────────────────────────


@external
@nonreentrant
def mint(to: address) -> uint256:
    """
    @notice Mints LP units for the tokens sent to the pool since the last
            update (balance − reserve of each).
    @dev The first mint locks MINIMUM_LIQUIDITY at the zero address and
         gives `to` sqrt(amount0 · amount1) − MINIMUM_LIQUIDITY; later mints
         give the smaller pro-rata share, rounded down, so unbalanced
         deposits donate the excess to the pool. Call through the Router,
         which sends exact, balanced amounts in the same transaction.
    @param to Receives the LP units.
    @return uint256 LP units minted.
    """
    slot0: uint256 = self._slot0
    reserve0: uint256 = slot0 & _MASK112
    reserve1: uint256 = (slot0 >> _RESERVE1_SHIFT) & _MASK112
    balance0: uint256 = staticcall IERC20(token0).balanceOf(self)
    balance1: uint256 = staticcall IERC20(token1).balanceOf(self)
    self._check_fits(balance0, balance1)
    assert balance0 >= reserve0 and balance1 >= reserve1, "pool: balance below reserve"
    amount0: uint256 = unsafe_sub(balance0, reserve0)
    amount1: uint256 = unsafe_sub(balance1, reserve1)

    supply: uint256 = erc20.totalSupply
    liquidity: uint256 = 0
    if supply == 0:
        root: uint256 = isqrt(amount0 * amount1)
        assert root > MINIMUM_LIQUIDITY, "pool: insufficient liquidity minted"
        liquidity = unsafe_sub(root, MINIMUM_LIQUIDITY)
        # Locked at the zero address, which snekmate's `_mint` refuses.
        erc20.totalSupply = MINIMUM_LIQUIDITY
        erc20.balanceOf[empty(address)] = MINIMUM_LIQUIDITY
        log IERC20.Transfer(sender=empty(address), receiver=empty(address), value=MINIMUM_LIQUIDITY)
    else:
        liquidity = min(amount0 * supply // reserve0, amount1 * supply // reserve1)
        assert liquidity > 0, "pool: insufficient liquidity minted"
    erc20._mint(to, liquidity)

    self._update(balance0, balance1, reserve0, reserve1, slot0 >> _TIMESTAMP_SHIFT)
    log LiquidityAdded(sender=msg.sender, to=to, amount0=amount0, amount1=amount1, liquidity=liquidity)
    return liquidity


@external
@nonreentrant
def burn(to: address) -> (uint256, uint256):
    """
    @notice Burns the LP units sent to the pool and pays out their pro-rata
            share of both balances, rounded down.
    @param to Receives both tokens.
    @return uint256 token0 paid.
    @return uint256 token1 paid.
    """
    slot0: uint256 = self._slot0
    balance0: uint256 = staticcall IERC20(token0).balanceOf(self)
    balance1: uint256 = staticcall IERC20(token1).balanceOf(self)
    liquidity: uint256 = erc20.balanceOf[self]
    supply: uint256 = erc20.totalSupply
    assert liquidity > 0, "pool: zero liquidity"
    amount0: uint256 = liquidity * balance0 // supply
    amount1: uint256 = liquidity * balance1 // supply
    assert amount0 > 0 and amount1 > 0, "pool: insufficient liquidity burned"

    erc20._burn(self, liquidity)
    self._transfer_out(token0, to, amount0)
    self._transfer_out(token1, to, amount1)
    balance0 = staticcall IERC20(token0).balanceOf(self)
    balance1 = staticcall IERC20(token1).balanceOf(self)

    self._check_fits(balance0, balance1)
    self._update(
        balance0, balance1, slot0 & _MASK112, (slot0 >> _RESERVE1_SHIFT) & _MASK112, slot0 >> _TIMESTAMP_SHIFT
    )
    log LiquidityRemoved(sender=msg.sender, to=to, amount0=amount0, amount1=amount1, liquidity=liquidity)
    return amount0, amount1


# ─── Swap ────────────────────────────────────────────────────────────────────


@external
@nonreentrant
def swap(amount0_out: uint256, amount1_out: uint256, to: address):
    """
    @notice Sends the requested outputs to `to`, then accepts the trade only
            if the tokens sent to the pool beforehand keep the fee-adjusted
            product of the balances at or above the product of the reserves
            (Uniswap v2's swap, without flash-swap callbacks).
    @dev Input is read from the balances: send it to the pool first, in the
         same transaction (the Router does). Whatever arrived beyond the
         reserves counts as input, so a donation left in the pool is taken
         by the next swap — call `skim` or `sync` to settle it.
    @param amount0_out token0 units to send; below reserve0.
    @param amount1_out token1 units to send; below reserve1.
    @param to Receives the outputs; neither pool token nor the pool.
    """
    assert amount0_out != 0 or amount1_out != 0, "pool: zero output"
    slot0: uint256 = self._slot0
    reserve0: uint256 = slot0 & _MASK112
    reserve1: uint256 = (slot0 >> _RESERVE1_SHIFT) & _MASK112
    assert amount0_out < reserve0 and amount1_out < reserve1, "pool: insufficient liquidity"
    assert to != token0 and to != token1 and to != self, "pool: invalid recipient"

    if amount0_out != 0:
        self._transfer_out(token0, to, amount0_out)
    if amount1_out != 0:
        self._transfer_out(token1, to, amount1_out)
    balance0: uint256 = staticcall IERC20(token0).balanceOf(self)
    balance1: uint256 = staticcall IERC20(token1).balanceOf(self)

    # Both subtractions are safe: amount_out < reserve was checked above.
    kept0: uint256 = unsafe_sub(reserve0, amount0_out)
    kept1: uint256 = unsafe_sub(reserve1, amount1_out)
    amount0_in: uint256 = 0
    amount1_in: uint256 = 0
    if balance0 > kept0:
        amount0_in = unsafe_sub(balance0, kept0)
    if balance1 > kept1:
        amount1_in = unsafe_sub(balance1, kept1)
    assert amount0_in != 0 or amount1_in != 0, "pool: insufficient input"

    self._check_k_and_update(balance0, balance1, amount0_in, amount1_in, reserve0, reserve1, slot0 >> _TIMESTAMP_SHIFT)
    log Swapped(
        sender=msg.sender,
        to=to,
        amount0_in=amount0_in,
        amount1_in=amount1_in,
        amount0_out=amount0_out,
        amount1_out=amount1_out,
    )


@external
@nonreentrant
def swap_exact_in(token_in: address, amount_in: uint256, to: address) -> uint256:
    """
    @notice Swaps exactly `amount_in` of `token_in`, already sent to the pool,
            for the other token at the reserves' price net of the fee (the
            pool computes the output, like Curve's `exchange_received`).
    @dev The output is floor(in·(D − fee)·r_out / (r_in·D + in·(D − fee))),
         the Router's `get_amount_out`. Reverts "pool: input not received"
         unless the pool holds at least reserve + `amount_in` of `token_in`,
         which is how a fee-on-transfer token shows. Anything beyond that
         (a donation) is not paid out: it joins the reserves.
    @param token_in token0 or token1.
    @param amount_in Units of `token_in` sent to the pool; non-zero.
    @param to Receives the output; neither pool token nor the pool.
    @return uint256 Output units sent to `to`.
    """
    assert amount_in != 0, "pool: zero input"
    assert to != token0 and to != token1 and to != self, "pool: invalid recipient"
    slot0: uint256 = self._slot0
    reserve0: uint256 = slot0 & _MASK112
    reserve1: uint256 = (slot0 >> _RESERVE1_SHIFT) & _MASK112
    zero_for_one: bool = token_in == token0
    assert zero_for_one or token_in == token1, "pool: unknown token"

    reserve_in: uint256 = reserve0
    reserve_out: uint256 = reserve1
    token_out: address = token1
    if not zero_for_one:
        reserve_in = reserve1
        reserve_out = reserve0
        token_out = token0
    balance_in: uint256 = staticcall IERC20(token_in).balanceOf(self)
    assert balance_in <= MAX_RESERVE, "pool: overflow"
    assert balance_in >= reserve_in and unsafe_sub(balance_in, reserve_in) >= amount_in, "pool: input not received"
    # amount_in ≤ balance_in < 2**112 and D < 2**14: no overflow below.
    in_with_fee: uint256 = unsafe_mul(amount_in, unsafe_sub(FEE_DENOMINATOR, fee))
    amount_out: uint256 = unsafe_div(
        unsafe_mul(in_with_fee, reserve_out), unsafe_add(unsafe_mul(reserve_in, FEE_DENOMINATOR), in_with_fee)
    )
    assert amount_out != 0, "pool: zero output"

    self._transfer_out(token_out, to, amount_out)
    balance_out: uint256 = staticcall IERC20(token_out).balanceOf(self)
    received: uint256 = unsafe_sub(balance_in, reserve_in)
    if zero_for_one:
        self._check_k_and_update(balance_in, balance_out, received, 0, reserve0, reserve1, slot0 >> _TIMESTAMP_SHIFT)
        log Swapped(sender=msg.sender, to=to, amount0_in=received, amount1_in=0, amount0_out=0, amount1_out=amount_out)
    else:
        self._check_k_and_update(balance_out, balance_in, 0, received, reserve0, reserve1, slot0 >> _TIMESTAMP_SHIFT)
        log Swapped(sender=msg.sender, to=to, amount0_in=0, amount1_in=received, amount0_out=amount_out, amount1_out=0)
    return amount_out


# ─── Recovery ────────────────────────────────────────────────────────────────


@external
@nonreentrant
def skim(to: address):
    """
    @notice Sends whatever the pool holds beyond its reserves (donations,
            dust) to `to`, leaving balances equal to reserves.
    @param to Receives the surplus of both tokens.
    """
    slot0: uint256 = self._slot0
    excess0: uint256 = staticcall IERC20(token0).balanceOf(self) - (slot0 & _MASK112)
    excess1: uint256 = staticcall IERC20(token1).balanceOf(self) - ((slot0 >> _RESERVE1_SHIFT) & _MASK112)
    if excess0 != 0:
        self._transfer_out(token0, to, excess0)
    if excess1 != 0:
        self._transfer_out(token1, to, excess1)
    log Skimmed(to=to, amount0=excess0, amount1=excess1)


@external
@nonreentrant
def sync():
    """
    @notice Sets the reserves to the balances (adopting donations into the
            price), advancing the TWAP accumulators first.
    """
    slot0: uint256 = self._slot0
    balance0: uint256 = staticcall IERC20(token0).balanceOf(self)
    balance1: uint256 = staticcall IERC20(token1).balanceOf(self)
    self._check_fits(balance0, balance1)
    self._update(
        balance0, balance1, slot0 & _MASK112, (slot0 >> _RESERVE1_SHIFT) & _MASK112, slot0 >> _TIMESTAMP_SHIFT
    )


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
@pure
def _check_fits(balance0: uint256, balance1: uint256):
    assert balance0 <= MAX_RESERVE and balance1 <= MAX_RESERVE, "pool: overflow"


@internal
def _check_k_and_update(
    balance0: uint256,
    balance1: uint256,
    amount0_in: uint256,
    amount1_in: uint256,
    reserve0: uint256,
    reserve1: uint256,
    last: uint256,
):
    # The K check, the last word before the reserves change. Bounds: balances
    # < 2**112 (checked first) and fee < D < 2**14, so each factor < 2**126
    # and either product < 2**252: no overflow.
    self._check_fits(balance0, balance1)
    adjusted0: uint256 = unsafe_sub(unsafe_mul(balance0, FEE_DENOMINATOR), unsafe_mul(amount0_in, fee))
    adjusted1: uint256 = unsafe_sub(unsafe_mul(balance1, FEE_DENOMINATOR), unsafe_mul(amount1_in, fee))
    assert unsafe_mul(adjusted0, adjusted1) >= unsafe_mul(
        unsafe_mul(reserve0, reserve1), _FEE_DENOMINATOR_SQUARED
    ), "pool: k"
    self._update(balance0, balance1, reserve0, reserve1, last)


@internal
def _update(balance0: uint256, balance1: uint256, reserve0: uint256, reserve1: uint256, last: uint256):
    # Advance the accumulators with the OLD reserves, once per block, then
    # write the new reserves and the time in one slot.
    now: uint256 = block.timestamp & _MASK32
    elapsed: uint256 = unsafe_sub(now, last) & _MASK32
    if elapsed != 0 and reserve0 != 0 and reserve1 != 0:
        # reserve < 2**112, so reserve << 112 < 2**224 and × elapsed < 2**256.
        self._price0_cumulative_last = unsafe_add(
            self._price0_cumulative_last, unsafe_mul(unsafe_div(reserve1 << 112, reserve0), elapsed)
        )
        self._price1_cumulative_last = unsafe_add(
            self._price1_cumulative_last, unsafe_mul(unsafe_div(reserve0 << 112, reserve1), elapsed)
        )
    self._slot0 = balance0 | (balance1 << _RESERVE1_SHIFT) | (now << _TIMESTAMP_SHIFT)
    log ReservesSynced(reserve0=balance0, reserve1=balance1)


@internal
def _transfer_out(token: address, to: address, amount: uint256):
    assert extcall IERC20(token).transfer(to, amount, default_return_value=True), "pool: transfer failed"
