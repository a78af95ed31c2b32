"""The CLD/USDC pool and the Router as deployed: random swaps (exact in and exact out,
both ways) and liquidity moves pay exactly what the Router quotes, keep the reserves equal
to the pool's balances, never lower k on a swap, and account for every LP unit."""

from __future__ import annotations

from forkchain import FORK_SETTINGS, Roles
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from world import World

from promptex.protocol.dex import DEFAULT_FEE

USERS = st.sampled_from(range(len(Roles.USERS)))
PERCENT = st.integers(min_value=1, max_value=100)
DIRECTIONS = st.sampled_from(["USDC->CLD", "CLD->USDC"])


def run_pool_machine(world: World) -> None:
    chain, router, pool, roles = world.chain, world.router, world.pool, world.roles
    tokens = {"USDC": world.usdc, "CLD": world.cld}
    for user in roles.users:
        chain.send(pool.functions.approve(router.address, 2**256 - 1), user)

    def reserves() -> dict[str, int]:
        r0, r1, _ = pool.functions.get_reserves().call()
        token0 = pool.functions.token0().call()
        return {"CLD": r0, "USDC": r1} if token0 == world.cld.address else {"USDC": r0, "CLD": r1}

    def wallet(user: str, symbol: str) -> int:
        return tokens[symbol].functions.balanceOf(user).call()

    class PoolOnFork(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.snapshot = chain.snapshot()
            self.supply = pool.functions.totalSupply().call()

        def teardown(self) -> None:
            chain.restore(self.snapshot)

        @rule(who=USERS, direction=DIRECTIONS, percent=PERCENT)
        def swap_exact_in(self, who: int, direction: str, percent: int) -> None:
            user = roles.users[who]
            src, dst = direction.split("->")
            amount = wallet(user, src) * percent // 200
            if amount == 0:
                return
            path, fees = world.path(tokens[src], tokens[dst])
            quote = router.functions.get_amounts_out(amount, path, fees).call()[-1]
            call = router.functions.swap_exact_in(amount, quote, path, fees, user, world.deadline())
            if quote == 0:
                chain.reverts(call, user, "")
                return
            before, k = wallet(user, dst), self.k()
            chain.send(call, user)
            assert wallet(user, dst) == before + quote
            assert self.k() >= k

        @rule(who=USERS, direction=DIRECTIONS, percent=st.integers(min_value=1, max_value=20))
        def swap_exact_out(self, who: int, direction: str, percent: int) -> None:
            user = roles.users[who]
            src, dst = direction.split("->")
            amount_out = reserves()[dst] * percent // 100  # up to a fifth of the pool
            if amount_out == 0:
                return
            path, fees = world.path(tokens[src], tokens[dst])
            needed = router.functions.get_amounts_in(amount_out, path, fees).call()[0]
            call = router.functions.swap_exact_out(amount_out, needed, path, fees, user, world.deadline())
            if needed > wallet(user, src):
                chain.reverts(call, user, "")
                return
            paid, got, k = wallet(user, src), wallet(user, dst), self.k()
            chain.send(call, user)
            assert (wallet(user, src), wallet(user, dst)) == (paid - needed, got + amount_out)
            assert self.k() >= k

        @rule(who=USERS, percent=PERCENT)
        def add_liquidity(self, who: int, percent: int) -> None:
            user = roles.users[who]
            usdc = wallet(user, "USDC") * percent // 200
            cld = wallet(user, "CLD")
            if usdc == 0 or cld == 0:
                return
            lp_before = pool.functions.balanceOf(user).call()
            call = router.functions.add_liquidity(
                world.usdc.address, world.cld.address, DEFAULT_FEE, usdc, cld, 0, 0, user, world.deadline()
            )
            _, _, minted = call.call({"from": user})
            chain.send(call, user)
            assert pool.functions.balanceOf(user).call() == lp_before + minted
            self.supply += minted

        @rule(who=USERS, percent=PERCENT)
        def remove_liquidity(self, who: int, percent: int) -> None:
            user = roles.users[who]
            liquidity = pool.functions.balanceOf(user).call() * percent // 100
            if liquidity == 0:
                return
            call = router.functions.remove_liquidity(
                world.usdc.address, world.cld.address, DEFAULT_FEE, liquidity, 0, 0, user, world.deadline()
            )
            before = reserves()
            supply = pool.functions.totalSupply().call()
            chain.send(call, user)
            after = reserves()
            for symbol in tokens:  # a pro-rata share, rounded down
                assert before[symbol] - after[symbol] == before[symbol] * liquidity // supply
            self.supply -= liquidity

        def k(self) -> int:
            r = reserves()
            return r["USDC"] * r["CLD"]

        @invariant()
        def reserves_equal_balances(self) -> None:
            r = reserves()
            for symbol, token in tokens.items():
                assert token.functions.balanceOf(pool.address).call() == r[symbol], symbol

        @invariant()
        def every_lp_unit_accounted_for(self) -> None:
            assert pool.functions.totalSupply().call() == self.supply

    run_state_machine_as_test(PoolOnFork, settings=FORK_SETTINGS)


def test_pool__random_swaps_and_liquidity_on_the_fork__keep_the_invariants(fresh_world):
    run_pool_machine(fresh_world)
