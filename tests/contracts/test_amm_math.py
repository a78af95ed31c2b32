"""Differential tests of the DEX arithmetic against its Python mirror (titanoboa).

The Router's `get_amount_out` / `get_amount_in` and the Pool's own output
computation (`swap_exact_in`) must equal `promptex.protocol.dex` exactly, over
hypothesis-generated reserves, amounts and fees; `get_amount_in` must be the
least input the pool's K check accepts.
"""

import boa
from boa_partial import LazyPartial
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from promptex.protocol.dex import FEE_DENOMINATOR as D
from promptex.protocol.dex import MAX_RESERVE, MINIMUM_LIQUIDITY, amount_in, amount_out

TOKEN = LazyPartial("contracts/test/MockERC20.vy")
POOL = LazyPartial("contracts/Pool.vy")
FACTORY = LazyPartial("contracts/Factory.vy")
ROUTER = LazyPartial("contracts/Router.vy")


# ── the reference ────────────────────────────────────────────────────────────


def k_accepts(reserve_in: int, reserve_out: int, paid: int, out: int, fee: int) -> bool:
    """The pool's K check for `paid` in and `out` out (no other balance change)."""
    balance_in, balance_out = reserve_in + paid, reserve_out - out
    return (balance_in * D - paid * fee) * (balance_out * D) >= reserve_in * reserve_out * D * D


# ── the contracts ────────────────────────────────────────────────────────────


class World:
    """Deployed once at import; titanoboa anchors every hypothesis example."""

    def __init__(self) -> None:
        self.admin = boa.env.generate_address("admin")
        self.trader = boa.env.generate_address("trader")
        with boa.env.prank(self.admin):
            blueprint = POOL.deploy_as_blueprint()
            self.factory = FACTORY.deploy(blueprint.address, keccak(POOL.compiler_data.bytecode))
            tokens = [TOKEN.deploy(f"Token {i}", f"TK{i}", 18) for i in range(2)]
            self.token0, self.token1 = sorted(tokens, key=lambda t: int(t.address, 16))
            self.router = ROUTER.deploy(self.factory.address, self.token1.address)
            self.pools = {}
            for fee in (5, 30, 100):
                pool = self.factory.create_pool(self.token0.address, self.token1.address, fee)
                self.pools[fee] = POOL.at(pool)

    def seed(self, fee: int, reserve0: int, reserve1: int):
        pool = self.pools[fee]
        self.token0.mint(pool.address, reserve0)
        self.token1.mint(pool.address, reserve1)
        pool.mint(self.admin)
        return pool


WORLD = World()

reserves = st.integers(1, MAX_RESERVE)
fees = st.one_of(st.sampled_from([0, 1, 5, 30, 100, 1_000, 9_999]), st.integers(0, D - 1))


@given(amount=st.integers(1, MAX_RESERVE), reserve_in=reserves, reserve_out=reserves, fee=fees)
def test_get_amount_out__any_reserves__equals_reference(amount, reserve_in, reserve_out, fee):
    assert WORLD.router.get_amount_out(amount, reserve_in, reserve_out, fee) == amount_out(
        amount, reserve_in, reserve_out, fee
    )


@given(data=st.data(), reserve_in=reserves, reserve_out=st.integers(2, MAX_RESERVE), fee=fees)
def test_get_amount_in__any_reserves__equals_reference_and_is_least_input(data, reserve_in, reserve_out, fee):
    out = data.draw(st.integers(1, reserve_out - 1))
    paid = WORLD.router.get_amount_in(out, reserve_in, reserve_out, fee)
    assert paid == amount_in(out, reserve_in, reserve_out, fee)
    # Enough: the pool accepts it and the forward quote gives at least `out`.
    assert amount_out(paid, reserve_in, reserve_out, fee) >= out
    assert k_accepts(reserve_in, reserve_out, paid, out, fee)
    # And least: one unit less would not buy `out`.
    assert amount_out(paid - 1, reserve_in, reserve_out, fee) < out


@given(reserve_in=reserves, reserve_out=st.integers(1, MAX_RESERVE), fee=fees, extra=st.integers(0, 10))
def test_get_amount_in__output_not_below_reserve__reverts(reserve_in, reserve_out, fee, extra):
    with boa.reverts("router: insufficient liquidity"):
        WORLD.router.get_amount_in(reserve_out + extra, reserve_in, reserve_out, fee)


def test_get_amount_out__zero_amount_or_reserve_or_fee_at_denominator__reverts():
    with boa.reverts("router: zero amount"):
        WORLD.router.get_amount_out(0, 10, 10, 30)
    with boa.reverts("router: no liquidity"):
        WORLD.router.get_amount_out(1, 0, 10, 30)
    with boa.reverts("router: no liquidity"):
        WORLD.router.get_amount_in(1, 10, 0, 30)
    with boa.reverts("router: fee too high"):
        WORLD.router.get_amount_out(1, 10, 10, D)


@given(
    fee=st.sampled_from([5, 30, 100]),
    reserve0=st.integers(10**3, 10**33),
    reserve1=st.integers(10**3, 10**33),
    fraction=st.floats(1e-12, 2.0),
    zero_for_one=st.booleans(),
)
def test_pool_swap_exact_in__seeded_pool__pays_reference_output(fee, reserve0, reserve1, fraction, zero_for_one):
    if reserve0 * reserve1 <= (MINIMUM_LIQUIDITY + 1) ** 2:
        return
    pool = WORLD.seed(fee, reserve0, reserve1)
    token_in, token_out = (WORLD.token0, WORLD.token1) if zero_for_one else (WORLD.token1, WORLD.token0)
    reserve_in, reserve_out = (reserve0, reserve1) if zero_for_one else (reserve1, reserve0)
    paid = max(1, int(reserve_in * fraction))
    if reserve_in + paid > MAX_RESERVE:
        return
    expected = amount_out(paid, reserve_in, reserve_out, fee)
    token_in.mint(pool.address, paid)
    if expected == 0:
        with boa.reverts("pool: zero output"):
            pool.swap_exact_in(token_in.address, paid, WORLD.trader)
        return
    assert pool.swap_exact_in(token_in.address, paid, WORLD.trader) == expected
    assert token_out.balanceOf(WORLD.trader) == expected


@given(
    fee=st.sampled_from([5, 30, 100]),
    reserve0=st.integers(10**3, 10**33),
    reserve1=st.integers(10**3, 10**33),
    fraction=st.floats(1e-9, 0.99),
)
def test_pool_swap__least_input_from_get_amount_in__accepted_one_less_rejected(fee, reserve0, reserve1, fraction):
    if reserve0 * reserve1 <= (MINIMUM_LIQUIDITY + 1) ** 2:
        return
    pool = WORLD.seed(fee, reserve0, reserve1)
    out = max(1, int(reserve1 * fraction))
    if out >= reserve1:
        return
    paid = amount_in(out, reserve0, reserve1, fee)
    if reserve0 + paid > MAX_RESERVE:
        return
    WORLD.token0.mint(pool.address, paid - 1)
    with boa.reverts("pool: k" if paid > 1 else "pool: insufficient input"):
        pool.swap(0, out, WORLD.trader)
    WORLD.token0.mint(pool.address, 1)
    pool.swap(0, out, WORLD.trader)
    assert pool.get_reserves()[:2] == (reserve0 + paid, reserve1 - out)
