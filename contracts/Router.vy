# pragma version ~=0.4.3
"""
@title Router
@license MIT
@notice The user's entry to the DEX: add and remove liquidity with minimum
        amounts, swap an exact input or for an exact output along a path of
        up to four hops (CLD → USDC → GPT in one call), each hop naming its
        pool's fee tier, with a deadline; quotes. Also the CreditsVault's
        exit market (`sell`: a provider token for the quote asset, USDC).
@dev Stateless and holds nothing between calls: tokens go from the payer
     straight into the first pool, and each pool pays the next one.

     Pool addresses are derived (CREATE2: factory, keccak256(token0, token1,
     fee), the pool init code hash), never looked up; a derived address
     without code is a missing pool ("router: no pool").

     Amounts (D = 10,000, f = the hop's fee):
         out = floor(in·(D − f)·r_out / (r_in·D + in·(D − f)))
         in  = ceil(r_in·out·D / ((r_out − out)·(D − f)))
     Both round against the trader, and `in` is the least input that the
     pool's K check accepts for `out`. Exact-input swaps let each pool
     compute its own hop (`Pool.swap_exact_in`, the same formula); exact-
     output swaps compute every input first and use `Pool.swap`.

     Fee-on-transfer tokens are refused: an exact-input hop whose pool did
     not receive the full input reverts in the pool ("pool: input not
     received"); an exact-output hop is checked here against the pool's
     reserve + input; liquidity pulls are measured exactly; and the
     recipient of a swap must receive exactly the last hop's output — each
     "router: fee-on-transfer token". Removing liquidity is never refused,
     so an LP can always leave.
"""

from ethereum.ercs import IERC20

from .interfaces import IFactory
from .interfaces import IPool


# ─── Constants ───────────────────────────────────────────────────────────────

# @notice Longest path: five tokens, four hops.
MAX_HOPS: public(constant(uint256)) = 4
# @notice Fees are parts of this many (Pool.FEE_DENOMINATOR).
FEE_DENOMINATOR: public(constant(uint256)) = 10_000
# @notice The fee tier `sell` trades at (Factory.DEFAULT_FEE, 0.30 %).
EXIT_FEE: public(constant(uint256)) = 30
# @dev The CREATE2 marker byte 0xff, placed just above a 20-byte address.
_CREATE2_MARKER: constant(uint256) = 255 * 2**160


# ─── Immutables ──────────────────────────────────────────────────────────────

# @notice The Factory whose pools this router trades.
factory: public(immutable(address))
# @notice The asset `sell` pays out (USDC).
quote_token: public(immutable(address))
_pool_init_code_hash: immutable(bytes32)
# @dev 0xff << 160 | factory: the first 21 bytes hashed by CREATE2, right-aligned.
_create2_prefix: immutable(uint256)


@deploy
def __init__(factory_: address, quote_token_: address):
    """
    @notice Deploys the router for a factory's pools.
    @param factory_ The Factory.
    @param quote_token_ What `sell` pays out: USDC.
    """
    assert factory_.is_contract, "router: factory has no code"
    assert quote_token_ != empty(address), "router: zero address"
    factory = factory_
    quote_token = quote_token_
    _pool_init_code_hash = staticcall IFactory(factory_).pool_init_code_hash()
    _create2_prefix = _CREATE2_MARKER | convert(convert(factory_, uint160), uint256)


# ─── Liquidity ───────────────────────────────────────────────────────────────


@external
def add_liquidity(
    token_a: address,
    token_b: address,
    fee: uint256,
    amount_a_desired: uint256,
    amount_b_desired: uint256,
    amount_a_min: uint256,
    amount_b_min: uint256,
    to: address,
    deadline: uint256,
) -> (uint256, uint256, uint256):
    """
    @notice Deposits both tokens at the pool's current ratio (creating the
            pool at an enabled fee tier if it does not exist) and mints LP
            units to `to`.
    @dev Of the two desired amounts, one is used in full and the other cut
         to the ratio (rounded down); the cut one must stay at or above its
         minimum. An empty pool takes both desired amounts: they set its price.
    @param token_a One token.
    @param token_b The other token.
    @param fee The pool's fee tier (parts per 10,000).
    @param amount_a_desired Most token_a to deposit; non-zero.
    @param amount_b_desired Most token_b to deposit; non-zero.
    @param amount_a_min Least token_a to deposit.
    @param amount_b_min Least token_b to deposit.
    @param to Receives the LP units.
    @param deadline Latest block timestamp.
    @return uint256 token_a deposited.
    @return uint256 token_b deposited.
    @return uint256 LP units minted.
    """
    self._check_deadline(deadline)
    assert token_a != token_b, "router: identical tokens"
    assert amount_a_desired != 0 and amount_b_desired != 0, "router: zero amount"
    assert to != empty(address), "router: zero address"
    pool: address = self._pool_for(token_a, token_b, fee)
    if not pool.is_contract:
        pool = extcall IFactory(factory).create_pool(token_a, token_b, fee)

    reserve_a: uint256 = 0
    reserve_b: uint256 = 0
    reserve_a, reserve_b = self._reserves(pool, token_a, token_b)
    amount_a: uint256 = amount_a_desired
    amount_b: uint256 = amount_b_desired
    if reserve_a != 0 and reserve_b != 0:
        b_optimal: uint256 = self._quote(amount_a_desired, reserve_a, reserve_b)
        if b_optimal <= amount_b_desired:
            assert b_optimal >= amount_b_min, "router: insufficient b amount"
            amount_b = b_optimal
        else:
            a_optimal: uint256 = self._quote(amount_b_desired, reserve_b, reserve_a)
            assert a_optimal >= amount_a_min, "router: insufficient a amount"
            amount_a = a_optimal
    assert amount_a >= amount_a_min, "router: insufficient a amount"
    assert amount_b >= amount_b_min, "router: insufficient b amount"

    self._pull_exact(token_a, msg.sender, pool, amount_a)
    self._pull_exact(token_b, msg.sender, pool, amount_b)
    liquidity: uint256 = extcall IPool(pool).mint(to)
    return amount_a, amount_b, liquidity


@external
def remove_liquidity(
    token_a: address,
    token_b: address,
    fee: uint256,
    liquidity: uint256,
    amount_a_min: uint256,
    amount_b_min: uint256,
    to: address,
    deadline: uint256,
) -> (uint256, uint256):
    """
    @notice Burns `liquidity` LP units of the caller (approved to the router,
            or by permit on the pool) for their share of both tokens.
    @dev Never refused for a fee-on-transfer token: an LP can always leave.
         The amounts are what the pool paid.
    @param token_a One token.
    @param token_b The other token.
    @param fee The pool's fee tier.
    @param liquidity LP units to burn; non-zero.
    @param amount_a_min Least token_a to receive.
    @param amount_b_min Least token_b to receive.
    @param to Receives both tokens.
    @param deadline Latest block timestamp.
    @return uint256 token_a paid.
    @return uint256 token_b paid.
    """
    self._check_deadline(deadline)
    assert token_a != token_b, "router: identical tokens"
    assert liquidity != 0, "router: zero amount"
    assert to != empty(address), "router: zero address"
    pool: address = self._existing_pool(token_a, token_b, fee)
    assert extcall IERC20(pool).transferFrom(msg.sender, pool, liquidity), "router: transfer failed"
    amount0: uint256 = 0
    amount1: uint256 = 0
    amount0, amount1 = extcall IPool(pool).burn(to)
    amount_a: uint256 = amount0
    amount_b: uint256 = amount1
    if convert(token_b, uint160) < convert(token_a, uint160):
        amount_a = amount1
        amount_b = amount0
    assert amount_a >= amount_a_min, "router: insufficient a amount"
    assert amount_b >= amount_b_min, "router: insufficient b amount"
    return amount_a, amount_b


# ─── Swaps ───────────────────────────────────────────────────────────────────


@external
def swap_exact_in(
    amount_in: uint256,
    min_out: uint256,
    path: DynArray[address, MAX_HOPS + 1],
    fees: DynArray[uint256, MAX_HOPS],
    to: address,
    deadline: uint256,
) -> uint256:
    """
    @notice Sells exactly `amount_in` of path[0] for at least `min_out` of
            the last token of `path`.
    @dev Each hop's output is computed by that pool from its reserves just
         before it swaps, so a path may pass the same pool again later, but
         not on two consecutive hops (A → B → A in one pool is a no-op round
         trip the pool would have to pay to itself).
    @param amount_in path[0] units the caller pays (approved to the router); non-zero.
    @param min_out Least output `to` must receive.
    @param path Tokens, first to last: 2 .. MAX_HOPS + 1 of them.
    @param fees Fee tier of each hop's pool: len(path) − 1 of them.
    @param to Receives the output.
    @param deadline Latest block timestamp.
    @return uint256 Output received by `to`.
    """
    self._check_deadline(deadline)
    assert amount_in != 0, "router: zero amount"
    assert to != empty(address), "router: zero address"
    last: uint256 = self._check_path(path, fees) - 1
    pool: address = self._existing_pool(path[0], path[1], fees[0])
    self._pull(path[0], msg.sender, pool, amount_in)

    # Each pool computes its hop's output from its own reserves
    # (Pool.swap_exact_in) and pays it straight into the next pool.
    amount: uint256 = amount_in
    for i: uint256 in range(last, bound=MAX_HOPS - 1):
        next_pool: address = self._existing_pool(path[i + 1], path[i + 2], fees[i + 1])
        assert next_pool != pool, "router: pool repeated in path"
        amount = extcall IPool(pool).swap_exact_in(path[i], amount, next_pool)
        pool = next_pool
    amount = self._last_hop(pool, path[last], path[last + 1], amount, to)
    assert amount >= min_out, "router: insufficient output"
    return amount


@external
def swap_exact_out(
    amount_out: uint256,
    max_in: uint256,
    path: DynArray[address, MAX_HOPS + 1],
    fees: DynArray[uint256, MAX_HOPS],
    to: address,
    deadline: uint256,
) -> uint256:
    """
    @notice Buys exactly `amount_out` of the last token of `path`, paying at
            most `max_in` of path[0].
    @dev Inputs are computed backwards from the current reserves, so a path
         must not pass the same pool twice.
    @param amount_out Output `to` receives; non-zero.
    @param max_in Most path[0] units the caller pays (approved to the router).
    @param path Tokens, first to last: 2 .. MAX_HOPS + 1 of them.
    @param fees Fee tier of each hop's pool: len(path) − 1 of them.
    @param to Receives the output.
    @param deadline Latest block timestamp.
    @return uint256 path[0] units paid.
    """
    self._check_deadline(deadline)
    assert amount_out != 0, "router: zero amount"
    assert to != empty(address), "router: zero address"
    hops: uint256 = self._check_path(path, fees)

    pools: DynArray[address, MAX_HOPS] = []
    for i: uint256 in range(hops, bound=MAX_HOPS):
        pool: address = self._existing_pool(path[i], path[i + 1], fees[i])
        assert pool not in pools, "router: pool repeated in path"
        pools.append(pool)

    # Backwards: amounts[i] is what enters hop i; amounts[hops] is the output.
    amounts: uint256[MAX_HOPS + 1] = empty(uint256[MAX_HOPS + 1])
    reserves_in: uint256[MAX_HOPS] = empty(uint256[MAX_HOPS])
    amounts[hops] = amount_out
    for k: uint256 in range(hops, bound=MAX_HOPS):
        i: uint256 = hops - 1 - k
        reserve_in: uint256 = 0
        reserve_out: uint256 = 0
        reserve_in, reserve_out = self._reserves(pools[i], path[i], path[i + 1])
        amounts[i] = self._get_amount_in(amounts[i + 1], reserve_in, reserve_out, fees[i])
        reserves_in[i] = reserve_in
    assert amounts[0] <= max_in, "router: excessive input"

    self._pull(path[0], msg.sender, pools[0], amounts[0])
    for i: uint256 in range(hops, bound=MAX_HOPS):
        self._check_received(path[i], pools[i], reserves_in[i], amounts[i])
        if i + 1 == hops:
            self._swap_to_recipient(pools[i], path[i], path[i + 1], amounts[i + 1], to)
        else:
            self._swap(pools[i], path[i], path[i + 1], amounts[i + 1], pools[i + 1])
    return amounts[0]


@external
def sell(token: address, amount: uint256, min_out: uint256, recipient: address) -> uint256:
    """
    @notice The CreditsVault's exit market: sells exactly `amount` of `token`
            for the quote asset (USDC) in the 0.30 % pool, paying at least
            `min_out` to `recipient`.
    @dev No deadline: the caller (the vault) bounds the price with `min_out`.
    @param token The token sold (approved to the router).
    @param amount Token units; non-zero.
    @param min_out Least USDC `recipient` must receive.
    @param recipient Receives the USDC.
    @return uint256 USDC received by `recipient`.
    """
    assert amount != 0, "router: zero amount"
    assert recipient != empty(address), "router: zero address"
    pool: address = self._existing_pool(token, quote_token, EXIT_FEE)
    self._pull(token, msg.sender, pool, amount)
    amount_out: uint256 = self._last_hop(pool, token, quote_token, amount, recipient)
    assert amount_out >= min_out, "router: insufficient output"
    return amount_out


# ─── Quotes ──────────────────────────────────────────────────────────────────


@external
@pure
def get_amount_out(amount_in: uint256, reserve_in: uint256, reserve_out: uint256, fee: uint256) -> uint256:
    """
    @notice Output of one hop for an exact input, rounded down.
    @param amount_in Input units; non-zero.
    @param reserve_in The pool's reserve of the input token; non-zero.
    @param reserve_out The pool's reserve of the output token; non-zero.
    @param fee The pool's fee (parts per 10,000).
    @return uint256 Output units.
    """
    return self._get_amount_out(amount_in, reserve_in, reserve_out, fee)


@external
@pure
def get_amount_in(amount_out: uint256, reserve_in: uint256, reserve_out: uint256, fee: uint256) -> uint256:
    """
    @notice Least input of one hop for an exact output, rounded up.
    @param amount_out Output units; non-zero and below `reserve_out`.
    @param reserve_in The pool's reserve of the input token; non-zero.
    @param reserve_out The pool's reserve of the output token; non-zero.
    @param fee The pool's fee (parts per 10,000).
    @return uint256 Input units.
    """
    return self._get_amount_in(amount_out, reserve_in, reserve_out, fee)


@external
@pure
def quote(amount_a: uint256, reserve_a: uint256, reserve_b: uint256) -> uint256:
    """
    @notice token_b worth `amount_a` at the reserves' ratio (no fee, no
            price impact), rounded down: the add-liquidity ratio.
    @param amount_a token_a units.
    @param reserve_a The pool's token_a reserve; non-zero.
    @param reserve_b The pool's token_b reserve.
    @return uint256 token_b units.
    """
    return self._quote(amount_a, reserve_a, reserve_b)


@external
@view
def get_amounts_out(
    amount_in: uint256, path: DynArray[address, MAX_HOPS + 1], fees: DynArray[uint256, MAX_HOPS]
) -> DynArray[uint256, MAX_HOPS + 1]:
    """
    @notice What `swap_exact_in` would produce at the current reserves, hop by hop.
    @param amount_in path[0] units.
    @param path Tokens, first to last.
    @param fees Fee tier of each hop's pool.
    @return DynArray[uint256, 5] amounts[0] = amount_in, amounts[i + 1] = output of hop i.
    """
    hops: uint256 = self._check_path(path, fees)
    amounts: DynArray[uint256, MAX_HOPS + 1] = [amount_in]
    for i: uint256 in range(hops, bound=MAX_HOPS):
        reserve_in: uint256 = 0
        reserve_out: uint256 = 0
        pool: address = self._existing_pool(path[i], path[i + 1], fees[i])
        reserve_in, reserve_out = self._reserves(pool, path[i], path[i + 1])
        amounts.append(self._get_amount_out(amounts[i], reserve_in, reserve_out, fees[i]))
    return amounts


@external
@view
def get_amounts_in(
    amount_out: uint256, path: DynArray[address, MAX_HOPS + 1], fees: DynArray[uint256, MAX_HOPS]
) -> DynArray[uint256, MAX_HOPS + 1]:
    """
    @notice What `swap_exact_out` would charge at the current reserves, hop by hop.
    @param amount_out Output units of the last token.
    @param path Tokens, first to last.
    @param fees Fee tier of each hop's pool.
    @return DynArray[uint256, 5] amounts[i] = input of hop i; the last is `amount_out`.
    """
    hops: uint256 = self._check_path(path, fees)
    amounts: uint256[MAX_HOPS + 1] = empty(uint256[MAX_HOPS + 1])
    amounts[hops] = amount_out
    for k: uint256 in range(hops, bound=MAX_HOPS):
        i: uint256 = hops - 1 - k
        reserve_in: uint256 = 0
        reserve_out: uint256 = 0
        pool: address = self._existing_pool(path[i], path[i + 1], fees[i])
        reserve_in, reserve_out = self._reserves(pool, path[i], path[i + 1])
        amounts[i] = self._get_amount_in(amounts[i + 1], reserve_in, reserve_out, fees[i])
    result: DynArray[uint256, MAX_HOPS + 1] = []
    for i: uint256 in range(hops + 1, bound=MAX_HOPS + 1):
        result.append(amounts[i])
    return result


@external
@view
def pool_for(token_a: address, token_b: address, fee: uint256) -> address:
    """
    @notice The address of the pool of (pair, fee), derived; it may not exist.
    @param token_a One token.
    @param token_b The other token.
    @param fee Fee tier.
    @return address The pool's (possible) address.
    """
    return self._pool_for(token_a, token_b, fee)


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
def _last_hop(pool: address, token_in: address, token_out: address, amount_in: uint256, to: address) -> uint256:
    # The pool computes the output; `to` must receive all of it (no fee on transfer).
    held: uint256 = staticcall IERC20(token_out).balanceOf(to)
    amount_out: uint256 = extcall IPool(pool).swap_exact_in(token_in, amount_in, to)
    assert staticcall IERC20(token_out).balanceOf(to) == held + amount_out, "router: fee-on-transfer token"
    return amount_out


@internal
def _swap(pool: address, token_in: address, token_out: address, amount_out: uint256, to: address):
    if convert(token_in, uint160) < convert(token_out, uint160):
        extcall IPool(pool).swap(0, amount_out, to)
    else:
        extcall IPool(pool).swap(amount_out, 0, to)


@internal
def _swap_to_recipient(pool: address, token_in: address, token_out: address, amount_out: uint256, to: address):
    # The last hop: `to` must receive exactly the output (no fee on transfer).
    held: uint256 = staticcall IERC20(token_out).balanceOf(to)
    self._swap(pool, token_in, token_out, amount_out, to)
    assert staticcall IERC20(token_out).balanceOf(to) == held + amount_out, "router: fee-on-transfer token"


@internal
@view
def _check_received(token_in: address, pool: address, reserve_in: uint256, amount_in: uint256):
    # The hop's input must all have arrived on top of the reserve.
    assert staticcall IERC20(token_in).balanceOf(pool) >= reserve_in + amount_in, "router: fee-on-transfer token"


@internal
def _pull(token: address, payer: address, pool: address, amount: uint256):
    assert extcall IERC20(token).transferFrom(payer, pool, amount, default_return_value=True), "router: transfer failed"


@internal
def _pull_exact(token: address, payer: address, pool: address, amount: uint256):
    held: uint256 = staticcall IERC20(token).balanceOf(pool)
    self._pull(token, payer, pool, amount)
    assert staticcall IERC20(token).balanceOf(pool) == held + amount, "router: fee-on-transfer token"


@internal
@view
def _check_deadline(deadline: uint256):
    assert block.timestamp <= deadline, "router: expired"


@internal
@pure
def _check_path(path: DynArray[address, MAX_HOPS + 1], fees: DynArray[uint256, MAX_HOPS]) -> uint256:
    assert len(path) >= 2, "router: path too short"
    hops: uint256 = len(path) - 1
    assert len(fees) == hops, "router: one fee per hop"
    return hops


@internal
@view
def _pool_for(token_a: address, token_b: address, fee: uint256) -> address:
    token0: address = token_a
    token1: address = token_b
    if convert(token_b, uint160) < convert(token_a, uint160):
        token0 = token_b
        token1 = token_a
    salt: bytes32 = keccak256(abi_encode(token0, token1, fee))
    # CREATE2: keccak256(0xff ++ factory ++ salt ++ init code hash)[12:]. The
    # first word ends in 0xff ++ factory; its first 11 bytes are skipped.
    digest: bytes32 = keccak256(slice(abi_encode(_create2_prefix, salt, _pool_init_code_hash), 11, 85))
    return convert(convert(convert(digest, uint256) & convert(max_value(uint160), uint256), uint160), address)


@internal
@view
def _existing_pool(token_a: address, token_b: address, fee: uint256) -> address:
    # Every hop of every path passes here: the one place adjacent tokens are compared.
    assert token_a != token_b, "router: identical tokens"
    pool: address = self._pool_for(token_a, token_b, fee)
    assert pool.is_contract, "router: no pool"
    return pool


@internal
@view
def _reserves(pool: address, token_a: address, token_b: address) -> (uint256, uint256):
    reserve0: uint256 = 0
    reserve1: uint256 = 0
    last: uint256 = 0
    reserve0, reserve1, last = staticcall IPool(pool).get_reserves()
    if convert(token_a, uint160) < convert(token_b, uint160):
        return reserve0, reserve1
    return reserve1, reserve0


@internal
@pure
def _get_amount_out(amount_in: uint256, reserve_in: uint256, reserve_out: uint256, fee: uint256) -> uint256:
    assert amount_in != 0, "router: zero amount"
    assert reserve_in != 0 and reserve_out != 0, "router: no liquidity"
    assert fee < FEE_DENOMINATOR, "router: fee too high"
    in_with_fee: uint256 = amount_in * (FEE_DENOMINATOR - fee)
    return in_with_fee * reserve_out // (reserve_in * FEE_DENOMINATOR + in_with_fee)


@internal
@pure
def _get_amount_in(amount_out: uint256, reserve_in: uint256, reserve_out: uint256, fee: uint256) -> uint256:
    assert amount_out != 0, "router: zero amount"
    assert reserve_in != 0 and reserve_out != 0, "router: no liquidity"
    assert amount_out < reserve_out, "router: insufficient liquidity"
    assert fee < FEE_DENOMINATOR, "router: fee too high"
    numerator: uint256 = reserve_in * amount_out * FEE_DENOMINATOR
    denominator: uint256 = (reserve_out - amount_out) * (FEE_DENOMINATOR - fee)
    return (numerator + denominator - 1) // denominator


@internal
@pure
def _quote(amount_a: uint256, reserve_a: uint256, reserve_b: uint256) -> uint256:
    assert amount_a != 0, "router: zero amount"
    assert reserve_a != 0, "router: no liquidity"
    return amount_a * reserve_b // reserve_a
