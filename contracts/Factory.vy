# pragma version ~=0.4.3
"""
@title Factory
@license MIT
@notice Creates constant-product Pools from a blueprint (ERC-5202), one per
        (pair, fee), and keeps the registry of them. Anyone may create a pool
        at an enabled fee; the admin can only enable more fee tiers (never
        disable one, never touch a pool).
@dev Pools are created with CREATE2 and a constructor without arguments (the
     pool asks `pool_parameters()` of its creator, which answers from
     transient storage), so a pool's address is a pure function of this
     factory, the salt keccak256(abi_encode(token0, token1, fee)) and the
     hash of the pool's init code: the Router derives it without a call.
     `pool_init_code_hash` is given at deployment and checked against the
     first CREATE2 result, so a wrong value cannot go unnoticed.
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

from .interfaces import IFactory

implements: IFactory

initializes: ownable
initializes: ownable_2step[ownable := ownable]

exports: (
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
)


# ─── Constants ───────────────────────────────────────────────────────────────

# @notice The fee of a pool created without naming one: 0.30 %.
DEFAULT_FEE: public(constant(uint256)) = 30
# @notice Highest fee tier the admin may enable: 10 %.
MAX_FEE: public(constant(uint256)) = 1_000
# @notice Fees are parts of this many (Pool.FEE_DENOMINATOR).
FEE_DENOMINATOR: public(constant(uint256)) = 10_000


# ─── Immutables and storage ──────────────────────────────────────────────────

# @notice The Pool blueprint (ERC-5202: 0xFE71 00 preamble + the pool's init code).
pool_blueprint: public(immutable(address))
# @notice keccak256 of the pool's init code (the blueprint's code after its 3-byte preamble).
pool_init_code_hash: public(immutable(bytes32))

# @notice Fee tier (parts per 10,000) → whether pools may be created with it.
fee_enabled: public(HashMap[uint256, bool])
# @notice token_a → token_b → fee → pool (filled in both token orders).
get_pool: public(HashMap[address, HashMap[address, HashMap[uint256, address]]])
# @notice Whether an address is a pool this factory created.
is_pool: public(HashMap[address, bool])
# @notice Pools in creation order.
all_pools: public(HashMap[uint256, address])
# @notice How many pools exist.
pool_count: public(uint256)

# @dev What the pool under construction reads back (EIP-1153 transient storage).
_next_token0: transient(address)
_next_token1: transient(address)
_next_fee: transient(uint256)


# ─── Events ──────────────────────────────────────────────────────────────────

event PoolCreated:
    token0: indexed(address)
    token1: indexed(address)
    fee: indexed(uint256)
    pool: address
    pool_count: uint256

event FeeEnabled:
    fee: indexed(uint256)


@deploy
def __init__(pool_blueprint_: address, pool_init_code_hash_: bytes32):
    """
    @notice Deploys the factory with the 0.05 %, 0.30 % and 1 % fee tiers
            enabled; the deployer becomes the admin.
    @param pool_blueprint_ A Pool blueprint (deployed with an ERC-5202 preamble).
    @param pool_init_code_hash_ keccak256 of the Pool's init code.
    """
    assert pool_blueprint_.is_contract, "factory: blueprint has no code"
    ownable.__init__()
    ownable_2step.__init__()
    pool_blueprint = pool_blueprint_
    pool_init_code_hash = pool_init_code_hash_
    for tier: uint256 in [5, DEFAULT_FEE, 100]:
        self._enable_fee(tier)


# ─── Pools ───────────────────────────────────────────────────────────────────


@external
def create_pool(token_a: address, token_b: address, fee: uint256 = DEFAULT_FEE) -> address:
    """
    @notice Creates the pool of a pair at a fee tier.
    @dev Permissionless. The tokens are sorted by address (token0 < token1).
    @param token_a One token (a contract).
    @param token_b The other token (a contract).
    @param fee An enabled fee tier in parts per 10,000 (default 30 = 0.30 %).
    @return address The new pool.
    """
    assert token_a != token_b, "factory: identical tokens"
    token0: address = token_a
    token1: address = token_b
    if convert(token_b, uint160) < convert(token_a, uint160):
        token0 = token_b
        token1 = token_a
    assert token0 != empty(address), "factory: zero address"
    assert token0.is_contract and token1.is_contract, "factory: token has no code"
    assert self.fee_enabled[fee], "factory: fee not enabled"
    assert self.get_pool[token0][token1][fee] == empty(address), "factory: pool exists"

    self._next_token0 = token0
    self._next_token1 = token1
    self._next_fee = fee
    salt: bytes32 = keccak256(abi_encode(token0, token1, fee))
    pool: address = create_from_blueprint(pool_blueprint, salt=salt)
    assert pool == self._derive(salt), "factory: wrong pool init code hash"

    self.get_pool[token0][token1][fee] = pool
    self.get_pool[token1][token0][fee] = pool
    self.is_pool[pool] = True
    count: uint256 = self.pool_count
    self.all_pools[count] = pool
    self.pool_count = count + 1
    log PoolCreated(token0=token0, token1=token1, fee=fee, pool=pool, pool_count=count + 1)
    return pool


@external
@view
def pool_parameters() -> (address, address, uint256):
    """
    @notice What the pool being created right now is made of; read by the
            Pool's constructor. Empty outside `create_pool`.
    @return address token0.
    @return address token1.
    @return uint256 fee.
    """
    return self._next_token0, self._next_token1, self._next_fee


@external
@view
def pool_address(token_a: address, token_b: address, fee: uint256) -> address:
    """
    @notice The address the pool of (pair, fee) has or would have, whether or
            not it exists yet (CREATE2).
    @param token_a One token.
    @param token_b The other token.
    @param fee Fee tier.
    @return address The pool's address.
    """
    token0: address = token_a
    token1: address = token_b
    if convert(token_b, uint160) < convert(token_a, uint160):
        token0 = token_b
        token1 = token_a
    return self._derive(keccak256(abi_encode(token0, token1, fee)))


# ─── Admin ───────────────────────────────────────────────────────────────────


@external
def enable_fee(fee: uint256):
    """
    @notice Enables a fee tier for new pools. Tiers cannot be disabled.
    @dev Admin only.
    @param fee Parts per 10,000; 1 .. MAX_FEE; not already enabled.
    """
    ownable._check_owner()
    assert not self.fee_enabled[fee], "factory: fee already enabled"
    self._enable_fee(fee)


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
def _enable_fee(fee: uint256):
    assert fee > 0 and fee <= MAX_FEE, "factory: fee out of range"
    self.fee_enabled[fee] = True
    log FeeEnabled(fee=fee)


@internal
@view
def _derive(salt: bytes32) -> address:
    digest: bytes32 = keccak256(concat(b"\xff", convert(self, bytes20), salt, pool_init_code_hash))
    return convert(convert(convert(digest, uint256) & convert(max_value(uint160), uint256), uint160), address)
