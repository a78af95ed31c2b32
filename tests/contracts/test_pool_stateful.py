"""Pool against a plain-Python model, driven through titanoboa.

Liquidity is added and removed, both kinds of swap are tried (with outputs one
unit either side of the limit, so the K check is exercised at its edge), tokens
are donated, synced and skimmed, and time passes. After every step the pool must
agree with the model, and: k never decreases across a swap, the value of an LP
unit (k / supply²) never decreases, reserves ≤ balances, and an LP supply
implies non-zero reserves.
"""

from dataclasses import dataclass, field
from fractions import Fraction

import boa
from boa_partial import LazyPartial
from ci_share import ci_share
from eth_utils import keccak
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from promptex.protocol.dex import DEFAULT_FEE as FEE
from promptex.protocol.dex import FEE_DENOMINATOR as D
from promptex.protocol.dex import MAX_RESERVE, MINIMUM_LIQUIDITY, amount_out
from promptex.protocol.units import ZERO_ADDRESS as ZERO

TOKEN = LazyPartial("contracts/test/MockERC20.vy")
POOL = LazyPartial("contracts/Pool.vy")
FACTORY = LazyPartial("contracts/Factory.vy")


def isqrt(n: int) -> int:
    import math

    return math.isqrt(n)


class World:
    """Deployed once, at import. titanoboa's pytest plugin runs every hypothesis
    example inside `boa.env.anchor()`, so each starts from this state."""

    def __init__(self) -> None:
        self.admin = boa.env.generate_address("admin")
        self.actors = [boa.env.generate_address(f"actor{i}") for i in range(3)]
        with boa.env.prank(self.admin):
            blueprint = POOL.deploy_as_blueprint()
            factory = FACTORY.deploy(blueprint.address, keccak(POOL.compiler_data.bytecode))
            tokens = [TOKEN.deploy(f"Token {i}", f"TK{i}", 18) for i in range(2)]
            self.tokens = sorted(tokens, key=lambda t: int(t.address, 16))
            self.pool = POOL.at(factory.create_pool(self.tokens[0].address, self.tokens[1].address, FEE))
        for actor in self.actors:
            for token in self.tokens:
                token.mint(actor, 10**36)


WORLD = World()


@dataclass
class Model:
    reserves: list[int] = field(default_factory=lambda: [0, 0])
    balances: list[int] = field(default_factory=lambda: [0, 0])  # the pool's token balances
    supply: int = 0
    lp: dict[str, int] = field(default_factory=dict)  # LP units by holder (pool and zero address included)
    cumulative: list[int] = field(default_factory=lambda: [0, 0])
    last: int = 0  # block.timestamp mod 2**32 of the last update


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool, self.tokens, self.actors = WORLD.pool, WORLD.tokens, WORLD.actors
        self.m = Model()

    # ── model helpers ────────────────────────────────────────────────────────

    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def update(self, balance0: int, balance1: int) -> None:
        """The pool's `_update`: advance the accumulators with the old reserves."""
        now = self.now() % 2**32
        elapsed = (now - self.m.last) % 2**32
        r0, r1 = self.m.reserves
        if elapsed and r0 and r1:
            self.m.cumulative[0] = (self.m.cumulative[0] + ((r1 << 112) // r0) * elapsed) % 2**256
            self.m.cumulative[1] = (self.m.cumulative[1] + ((r0 << 112) // r1) * elapsed) % 2**256
        self.m.reserves = [balance0, balance1]
        self.m.last = now

    def send(self, actor: str, index: int, amount: int) -> None:
        self.tokens[index].transfer(self.pool.address, amount, sender=actor)
        self.m.balances[index] += amount

    def fits(self) -> bool:
        return max(self.m.balances) <= MAX_RESERVE

    def k(self) -> int:
        return self.m.reserves[0] * self.m.reserves[1]

    def credit_lp(self, holder: str, amount: int) -> None:
        self.m.lp[holder] = self.m.lp.get(holder, 0) + amount

    # ── liquidity ────────────────────────────────────────────────────────────

    @rule(actor=st.integers(0, 2), amount0=st.integers(0, 10**30), amount1=st.integers(0, 10**30))
    def add_liquidity(self, actor, amount0, amount1):
        who = self.actors[actor]
        self.send(who, 0, amount0)
        self.send(who, 1, amount1)
        (b0, b1), (r0, r1) = self.m.balances, self.m.reserves
        a0, a1 = b0 - r0, b1 - r1
        if not self.fits():
            with boa.reverts("pool: overflow"):
                self.pool.mint(who, sender=who)
            return
        if self.m.supply == 0:
            liquidity = isqrt(a0 * a1) - MINIMUM_LIQUIDITY
        else:
            liquidity = min(a0 * self.m.supply // r0, a1 * self.m.supply // r1)
        if liquidity <= 0:
            with boa.reverts("pool: insufficient liquidity minted"):
                self.pool.mint(who, sender=who)
            return
        assert self.pool.mint(who, sender=who) == liquidity
        if self.m.supply == 0:
            self.credit_lp(ZERO, MINIMUM_LIQUIDITY)
            self.m.supply = MINIMUM_LIQUIDITY
        self.credit_lp(who, liquidity)
        self.m.supply += liquidity
        self.update(b0, b1)

    @precondition(lambda self: any(self.m.lp.get(actor, 0) for actor in WORLD.actors))
    @rule(data=st.data(), fraction=st.floats(0.0, 1.0))
    def remove_liquidity(self, data, fraction):
        who = data.draw(st.sampled_from([a for a in self.actors if self.m.lp.get(a, 0)]))
        liquidity = int(
            self.m.lp.get(who, 0) * Fraction(fraction)
        )  # exact: a float product of 2**53+ may round above the balance
        if liquidity:
            self.pool.transfer(self.pool.address, liquidity, sender=who)
            self.m.lp[who] -= liquidity
            self.credit_lp(self.pool.address, liquidity)
        burned = self.m.lp.get(self.pool.address, 0)  # all LP units the pool holds
        (b0, b1) = self.m.balances
        if burned == 0:
            with boa.reverts("pool: zero liquidity"):
                self.pool.burn(who, sender=who)
            return
        out0, out1 = burned * b0 // self.m.supply, burned * b1 // self.m.supply
        if out0 == 0 or out1 == 0:
            with boa.reverts("pool: insufficient liquidity burned"):
                self.pool.burn(who, sender=who)
            return
        if max(b0 - out0, b1 - out1) > MAX_RESERVE:
            with boa.reverts("pool: overflow"):
                self.pool.burn(who, sender=who)
            return
        assert self.pool.burn(who, sender=who) == (out0, out1)
        self.m.lp[self.pool.address] = 0
        self.m.supply -= burned
        self.m.balances = [b0 - out0, b1 - out1]
        self.update(b0 - out0, b1 - out1)

    # ── swaps ────────────────────────────────────────────────────────────────

    @precondition(lambda self: self.m.supply > 0)
    @rule(actor=st.integers(0, 2), zero_for_one=st.booleans(), amount=st.integers(1, 10**30))
    def swap_exact_in(self, actor, zero_for_one, amount):
        who = self.actors[actor]
        i, o = (0, 1) if zero_for_one else (1, 0)
        self.send(who, i, amount)
        k_before = self.k()
        r_in, r_out = self.m.reserves[i], self.m.reserves[o]
        b_in = self.m.balances[i]
        out = amount_out(amount, r_in, r_out)
        if b_in > MAX_RESERVE:
            expected_error = "pool: overflow"
        elif out == 0:
            expected_error = "pool: zero output"
        elif self.m.balances[o] - out > MAX_RESERVE:
            expected_error = "pool: overflow"
        else:
            expected_error = None
        if expected_error:
            with boa.reverts(expected_error):
                self.pool.swap_exact_in(self.tokens[i].address, amount, who, sender=who)
            return
        assert self.pool.swap_exact_in(self.tokens[i].address, amount, who, sender=who) == out
        self.m.balances[o] -= out
        self.update(*self.m.balances)
        assert self.k() >= k_before, "k decreased across a swap"

    @precondition(lambda self: self.m.supply > 0)
    @rule(
        actor=st.integers(0, 2),
        zero_for_one=st.booleans(),
        amount=st.integers(1, 10**30),
        delta=st.sampled_from([-1, 0, 1]),
    )
    def swap_exact_out(self, actor, zero_for_one, amount, delta):
        """Uniswap-v2 style: send input, ask for the quoted output ± 1."""
        who = self.actors[actor]
        i, o = (0, 1) if zero_for_one else (1, 0)
        self.send(who, i, amount)
        k_before = self.k()
        r = self.m.reserves
        out = max(0, amount_out(amount, r[i], r[o]) + delta)
        outs = [0, 0]
        outs[o] = out
        if out == 0:
            with boa.reverts("pool: zero output"):
                self.pool.swap(*outs, who, sender=who)
            return
        if out >= r[o]:
            with boa.reverts("pool: insufficient liquidity"):
                self.pool.swap(*outs, who, sender=who)
            return
        balances = list(self.m.balances)
        balances[o] -= out
        kept = [r[0] - outs[0], r[1] - outs[1]]
        paid = [max(0, balances[j] - kept[j]) for j in (0, 1)]
        adjusted = [balances[j] * D - paid[j] * FEE for j in (0, 1)]
        if max(balances) > MAX_RESERVE:
            expected_error = "pool: overflow"
        elif adjusted[0] * adjusted[1] < r[0] * r[1] * D * D:
            expected_error = "pool: k"
        else:
            expected_error = None
        if expected_error:
            with boa.reverts(expected_error):
                self.pool.swap(*outs, who, sender=who)
            return
        self.pool.swap(*outs, who, sender=who)
        self.m.balances = balances
        self.update(*balances)
        assert self.k() >= k_before, "k decreased across a swap"

    # ── donations and recovery ───────────────────────────────────────────────

    @rule(actor=st.integers(0, 2), index=st.integers(0, 1), amount=st.integers(1, 10**24), huge=st.integers(0, 19))
    def donate(self, actor, index, amount, huge):
        # One donation in twenty pushes the balance past MAX_RESERVE: the pool
        # refuses to mint, swap, burn or sync until someone skims it.
        self.send(self.actors[actor], index, 2**112 if huge == 0 else amount)

    @rule()
    def sync(self):
        if not self.fits():
            with boa.reverts("pool: overflow"):
                self.pool.sync()
            return
        self.pool.sync()
        self.update(*self.m.balances)

    @rule(actor=st.integers(0, 2))
    def skim(self, actor):
        who = self.actors[actor]
        before = [t.balanceOf(who) for t in self.tokens]
        self.pool.skim(who)
        excess = [self.m.balances[j] - self.m.reserves[j] for j in (0, 1)]
        assert [t.balanceOf(who) for t in self.tokens] == [before[j] + excess[j] for j in (0, 1)]
        self.m.balances = list(self.m.reserves)

    @rule(seconds=st.integers(1, 10 * 86_400))
    def time_travel(self, seconds):
        boa.env.time_travel(seconds=seconds)

    # ── invariants ───────────────────────────────────────────────────────────

    @invariant()
    def pool_matches_model(self):
        reserve0, reserve1, last = self.pool.get_reserves()
        assert [reserve0, reserve1] == self.m.reserves
        assert [t.balanceOf(self.pool.address) for t in self.tokens] == self.m.balances
        assert self.pool.totalSupply() == self.m.supply
        assert last == self.m.last
        assert [self.pool.price0_cumulative_last(), self.pool.price1_cumulative_last()] == self.m.cumulative

    @invariant()
    def reserves_never_exceed_balances(self):
        assert all(r <= b for r, b in zip(self.m.reserves, self.m.balances, strict=True))

    @invariant()
    def supply_implies_reserves(self):
        if self.m.supply > 0:
            assert self.m.supply >= MINIMUM_LIQUIDITY
            assert self.m.reserves[0] > 0 and self.m.reserves[1] > 0
            assert self.pool.balanceOf(ZERO) == MINIMUM_LIQUIDITY

    @invariant()
    def lp_units_are_conserved(self):
        assert sum(self.m.lp.values()) == self.m.supply
        for holder, units in self.m.lp.items():
            assert self.pool.balanceOf(holder) == units

    @invariant()
    def lp_unit_value_never_falls(self):
        # k / supply² (the square of what one LP unit is worth) never decreases:
        # mints and burns round in the pool's favour, swaps only add fees.
        k, supply = self.k(), self.m.supply
        previous = getattr(self, "_value", None)
        if supply and previous is not None:
            k0, s0 = previous
            assert k * s0 * s0 >= k0 * supply * supply, "LP unit lost value"
        self._value = (k, supply) if supply else None


TestPoolMachine = PoolMachine.TestCase
ci_share(TestPoolMachine, max_examples=15)  # 30 took ~20 s of CI's budget
