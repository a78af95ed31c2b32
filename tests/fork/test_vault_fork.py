"""CreditsVault as deployed: random deposits, caps, exits (instant, trustless, sold) and
settlements by a coordinator never create or lose a unit, and every balance matches a
model of what each action should do."""

from __future__ import annotations

from forkchain import FORK_SETTINGS, Roles, dev_key
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from world import World

from promptex.protocol.units import MAX_UINT256 as MAX
from promptex.protocol.vault import pack_debits, pack_lot_amount, sign_release

USERS = st.sampled_from(range(len(Roles.USERS)))
ASSETS = st.sampled_from(["USDC", "CLD"])
PERCENT = st.integers(min_value=1, max_value=100)
PER_EPOCH = st.sampled_from([MAX, 10**6, 10**20])
TOTAL = st.sampled_from([MAX, 5 * 10**6, 10**21])
CHARGES = st.lists(st.tuples(USERS, PERCENT), min_size=1, max_size=3, unique_by=lambda c: c[0])


def run_vault_machine(world: World) -> None:
    chain, vault, roles = world.chain, world.vault, world.roles
    tokens = {"USDC": world.usdc, "CLD": world.cld}
    coordinator_key = dev_key(Roles.COORDINATOR)
    epoch_length = vault.functions.epoch_length().call()
    thaw = vault.functions.thaw_period().call()

    class VaultOnFork(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.snapshot = chain.snapshot()
            # Everything the vault holds for others before we start, so the checks are exact
            # on a fork of a chain with other users too.
            self.start = {symbol: self.held(symbol) for symbol in tokens}
            self.balances = {(u, s): self.balance(u, s) for u in roles.users for s in tokens}
            self.pending = {(u, s): 0 for u in roles.users for s in tokens}

        def teardown(self) -> None:
            chain.restore(self.snapshot)

        # ─── Reading the chain ───────────────────────────────────────────────

        def balance(self, user: str, symbol: str) -> int:
            return vault.functions.balance_of(user, tokens[symbol].address).call()

        def wallet(self, user: str, symbol: str) -> int:
            return tokens[symbol].functions.balanceOf(user).call()

        def held(self, symbol: str) -> tuple[int, int]:
            """(tokens in the vault, what it owes: our users' balances + reserve + seller claims)."""
            asset = tokens[symbol].address
            owed = sum(vault.functions.balance_of(u, asset).call() for u in roles.users)
            owed += vault.functions.reserve(asset).call() + vault.functions.claimable(roles.seller, asset).call()
            return tokens[symbol].functions.balanceOf(vault.address).call(), owed

        # ─── Rules ───────────────────────────────────────────────────────────

        @rule(who=USERS, symbol=ASSETS, percent=PERCENT)
        def deposit(self, who: int, symbol: str, percent: int) -> None:
            user = roles.users[who]
            amount = self.wallet(user, symbol) * percent // 400
            if amount == 0:
                return
            chain.send(vault.functions.deposit(tokens[symbol].address, amount), user)
            self.balances[user, symbol] += amount

        @rule(who=USERS, symbol=ASSETS, per_epoch=PER_EPOCH, total=TOTAL)
        def set_cap(self, who: int, symbol: str, per_epoch: int, total: int) -> None:
            user = roles.users[who]
            expiry = chain.now() + 30 * 86_400
            call = vault.functions.set_spend_cap(tokens[symbol].address, per_epoch, total, expiry)
            if per_epoch == total == MAX:
                chain.reverts(call, user, "vault: cap sets no limit")
                return
            old_per_epoch, old_total, old_expiry = vault.functions.spend_cap(user, tokens[symbol].address).call()
            narrower = vault.functions.quantize_per_epoch(per_epoch).call() < old_per_epoch or total < old_total
            if old_expiry >= chain.now() and narrower:  # an active cap can only widen
                chain.reverts(call, user, "vault: new cap lowers the active cap")
                return
            chain.send(call, user)

        @rule(who=USERS, symbol=ASSETS, percent=PERCENT)
        def request_exit(self, who: int, symbol: str, percent: int) -> None:
            user = roles.users[who]
            amount = self.balances[user, symbol] * percent // 100
            call = vault.functions.request_exit(tokens[symbol].address, amount)
            if self.pending[user, symbol]:
                if amount:
                    chain.reverts(call, user, "vault: exit already pending")
                return
            if amount == 0:
                chain.reverts(call, user, "vault: zero amount")
                return
            chain.send(call, user)
            self.pending[user, symbol] = amount

        @rule(who=USERS, symbol=ASSETS)
        def cancel_exit(self, who: int, symbol: str) -> None:
            user = roles.users[who]
            call = vault.functions.cancel_exit(tokens[symbol].address)
            if not self.pending[user, symbol]:
                chain.reverts(call, user, "vault: no pending exit")
                return
            chain.send(call, user)
            self.pending[user, symbol] = 0

        @rule(who=USERS, symbol=ASSETS)
        def complete_exit(self, who: int, symbol: str) -> None:
            user = roles.users[who]
            if not self.pending[user, symbol]:
                return
            chain.warp(thaw)
            amount = min(self.pending[user, symbol], self.balances[user, symbol])
            self.leave(user, symbol, amount, vault.functions.complete_exit(tokens[symbol].address, 0, True))
            self.pending[user, symbol] = 0

        @rule(who=USERS, symbol=ASSETS, percent=PERCENT)
        def exit_instant(self, who: int, symbol: str, percent: int) -> None:
            user = roles.users[who]
            amount = self.balances[user, symbol] * percent // 100
            if amount == 0:
                return
            asset = tokens[symbol].address
            nonce = vault.functions.release_nonce(user).call()
            expiry = chain.now() + 3_600
            signature = sign_release(
                coordinator_key,
                chain_id=chain.w3.eth.chain_id,
                vault=vault.address,
                account=user,
                asset=asset,
                amount=amount,
                nonce=nonce,
                expiry=expiry,
            )
            self.leave(user, symbol, amount, vault.functions.exit_instant(asset, amount, 0, nonce, expiry, signature))

        def leave(self, user: str, symbol: str, amount: int, call: object) -> None:
            """Funds leave: USDC to the wallet; CLD is sold, its USDC stays in the vault."""
            wallet_before = self.wallet(user, "USDC")
            quote = 0
            if symbol == "CLD" and amount:
                path, fees = world.path(world.cld, world.usdc)
                quote = world.router.functions.get_amounts_out(amount, path, fees).call()[-1]
            chain.send(call, user)
            self.balances[user, symbol] -= amount
            if symbol == "USDC":
                assert self.wallet(user, "USDC") == wallet_before + amount
            else:
                assert self.wallet(user, "USDC") == wallet_before  # sold inside the vault
                self.balances[user, "USDC"] += quote

        @rule(symbol=ASSETS, charges=CHARGES)
        def settle(self, symbol: str, charges: list[tuple[int, int]]) -> None:
            """The coordinator posts an epoch within the users' balances and caps (a debit
            beyond them reverts the batch: tests/contracts cover that); the vault draws the
            lots in the same call."""
            chain.warp(epoch_length)
            asset = tokens[symbol].address
            debits = {}
            for who, percent in charges:
                user = roles.users[who]
                amount = vault.functions.debitable(user, asset).call() * percent // 100
                if amount:
                    debits[user] = amount
            total = sum(debits.values())
            epoch = vault.functions.last_epoch(asset).call() + 1
            credits, burn, fee = [], 0, 0
            if symbol == "USDC":
                # The listed lot (60 % of list) draws the list value served; its seller earns 60 % of it.
                consumed = (total - total // 10) * 10_000 // 6_000
                before = world.escrow.functions.lots(world.listed_lot).call()[9]
                credit = (before + consumed) * 6_000 // 10_000 - before * 6_000 // 10_000
                credits, fee = ([pack_lot_amount(world.listed_lot, consumed)] if consumed else []), total - credit
            else:
                burn = total
            call = vault.functions.settle(epoch, asset, pack_debits(debits), credits, burn, fee, b"\x11" * 32)
            supply = tokens[symbol].functions.totalSupply().call()
            drawable = world.escrow.functions.drawable(asset).call() if symbol == "CLD" else 0
            chain.send(call, roles.coordinator)
            for user, take in debits.items():
                self.balances[user, symbol] -= take
            assert vault.functions.usage_roots(asset, epoch).call() == b"\x11" * 32
            if symbol == "CLD":
                assert tokens[symbol].functions.totalSupply().call() == supply - total  # burned...
                assert world.escrow.functions.drawable(asset).call() == drawable - total  # ...and drawn

        @rule()
        def claim(self) -> None:
            asset = world.usdc.address
            owed = vault.functions.claimable(roles.seller, asset).call()
            if owed == 0:
                chain.reverts(vault.functions.claim(asset), roles.seller, "vault: nothing to claim")
                return
            before = self.wallet(roles.seller, "USDC")
            chain.send(vault.functions.claim(asset), roles.seller)
            assert self.wallet(roles.seller, "USDC") == before + owed

        # ─── Invariants ──────────────────────────────────────────────────────

        @invariant()
        def balances_match_the_model(self) -> None:
            for (user, symbol), expected in self.balances.items():
                assert self.balance(user, symbol) == expected, (user, symbol)

        @invariant()
        def vault_holds_exactly_what_it_owes(self) -> None:
            for symbol in tokens:
                (held, owed), (held0, owed0) = self.held(symbol), self.start[symbol]
                assert held - held0 == owed - owed0, symbol

    run_state_machine_as_test(VaultOnFork, settings=FORK_SETTINGS)


def test_vault__random_actions_on_the_fork__conserve_every_unit(fresh_world):
    run_vault_machine(fresh_world)
