"""CreditEscrow as deployed: random lots opened, consumed (nearest expiry first), closed
(request, then finalize), expired and slashed, and unbacked tokens bought back at the
common rate, keep the escrow's USDC equal to the bonds it holds plus the insurance funds,
and the token supply equal to what lots minted minus what was burned."""

from __future__ import annotations

from forkchain import FORK_SETTINGS
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from world import World, open_lot

from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, MIN_LOT_VALIDITY
from promptex.protocol.escrow import SETTLEMENT_GRACE as GRACE
from promptex.protocol.escrow import STATUS_OPEN as OPEN
from promptex.protocol.units import USD_MICRO as USDC_UNIT

KINDS = st.sampled_from([KIND_TOKENIZED, KIND_LISTED])
PERCENT = st.integers(min_value=1, max_value=100)


def run_escrow_machine(world: World) -> None:
    chain, escrow, roles, usdc, cld = world.chain, world.escrow, world.roles, world.usdc, world.cld

    def lot(lot_id: int) -> dict:
        fields = escrow.functions.lots(lot_id).call()
        names = [
            "seller",
            "token",
            "kind",
            "status",
            "rate_bps",
            "expiry",
            "face_value",
            "capacity",
            "seller_minted",
            "consumed",
            "last_epoch",
            "bond",
            "bond_released",
            "terms_hash",
            "close_at",
        ]
        return dict(zip(names, fields, strict=True))

    def usdc_held() -> int:
        return usdc.functions.balanceOf(escrow.address).call()

    def owed() -> int:
        funds = escrow.functions.insurance_fund(cld.address).call() + escrow.functions.forfeited(cld.address).call()
        return escrow.functions.bonds_held().call() + funds

    class EscrowOnFork(RuleBasedStateMachine):
        lots = Bundle("lots")

        def __init__(self) -> None:
            super().__init__()
            self.snapshot = chain.snapshot()
            self.start = (usdc_held(), owed())
            self.supply = cld.functions.totalSupply().call()
            self.unbacked = escrow.functions.unbacked(cld.address).call()
            self.epoch = 10**6  # above any epoch the deployed vault used
            self.vault = chain.impersonate(world.vault.address)  # the only caller of consume/draw

        def teardown(self) -> None:
            chain.restore(self.snapshot)

        # $10 at least: the smallest tokenized lot the escrow opens
        @rule(target=lots, kind=KINDS, dollars=st.integers(min_value=10, max_value=20_000), days=st.integers(8, 30))
        def open(self, kind: int, dollars: int, days: int) -> int:
            assert days * 86_400 > MIN_LOT_VALIDITY
            lot_id = open_lot(chain, roles, escrow, cld, kind, dollars * USDC_UNIT, chain.now() + days * 86_400)
            if kind == KIND_TOKENIZED:
                self.supply += lot(lot_id)["capacity"]  # seller's share + the treasury's fee
            return lot_id

        @rule(percent=PERCENT)
        def draw(self, percent: int) -> None:
            """The vault draws CLD capacity (as its settle does with the burn): nearest expiry first."""
            drawable = escrow.functions.drawable(cld.address).call()
            amount = drawable * percent // 100
            self.epoch += 1
            call = escrow.functions.draw(cld.address, amount, self.epoch)
            chain.reverts(call, roles.attestor, "escrow: caller is not the vault")
            if amount == 0:
                chain.reverts(call, self.vault, "escrow: zero amount")
                return
            chain.send(call, self.vault)
            assert escrow.functions.drawable(cld.address).call() == drawable - amount

        @rule(lot_id=lots, percent=PERCENT)
        def consume(self, lot_id: int, percent: int) -> None:
            state = lot(lot_id)
            amount = (state["capacity"] - state["consumed"]) * percent // 100
            self.epoch += 1
            call = escrow.functions.consume(lot_id, amount, self.epoch)
            chain.reverts(call, roles.attestor, "escrow: caller is not the vault")
            if state["kind"] != KIND_LISTED:
                chain.reverts(call, self.vault, "escrow: not a listed lot")
                return
            if state["status"] != OPEN or chain.now() > state["expiry"] + GRACE:
                chain.reverts(call, self.vault, "escrow: lot not drawable")
                return
            if amount == 0:
                chain.reverts(call, self.vault, "escrow: zero amount")
                return
            seller_usdc = usdc.functions.balanceOf(roles.seller).call()
            chain.send(call, self.vault)
            after = lot(lot_id)
            assert after["consumed"] == state["consumed"] + amount
            assert after["bond_released"] == state["bond"] * after["consumed"] // state["capacity"]  # never ahead
            assert (
                usdc.functions.balanceOf(roles.seller).call()
                == seller_usdc + after["bond_released"] - state["bond_released"]
            )

        @rule(lot_id=lots)
        def close(self, lot_id: int) -> None:
            state = lot(lot_id)
            if state["status"] != OPEN:
                chain.reverts(escrow.functions.request_close(lot_id), roles.seller, "escrow: lot not open")
                return
            if state["close_at"] == 0:
                chain.send(escrow.functions.request_close(lot_id), roles.seller)
                state = lot(lot_id)
            chain.warp(max(0, state["close_at"] - chain.now()))
            call = escrow.functions.finalize_close(lot_id)
            remaining = state["capacity"] - state["consumed"]
            returned = -(-state["seller_minted"] * remaining // state["capacity"])
            if state["kind"] == KIND_TOKENIZED and cld.functions.balanceOf(roles.seller).call() < returned:
                chain.reverts(call, roles.seller, "erc20: transfer amount exceeds balance")
                return
            supply = cld.functions.totalSupply().call()
            chain.send(call, roles.seller)
            if state["kind"] == KIND_TOKENIZED:
                assert cld.functions.totalSupply().call() == supply - returned
                self.supply -= returned
                self.unbacked += remaining - returned

        @rule(lot_id=lots)
        def slash(self, lot_id: int) -> None:
            state = lot(lot_id)
            call = escrow.functions.slash(lot_id)
            if state["status"] != OPEN:
                chain.reverts(call, roles.attestor, "escrow: lot not open")
                return
            chain.send(call, roles.attestor)
            if state["kind"] == KIND_TOKENIZED:
                self.unbacked += state["capacity"] - state["consumed"]

        @rule(lot_id=lots)
        def expire(self, lot_id: int) -> None:
            state = lot(lot_id)
            if state["status"] != OPEN:
                return
            chain.warp(max(0, state["expiry"] + GRACE + 1 - chain.now()))
            chain.send(escrow.functions.expire(lot_id), roles.users[0])
            if state["kind"] == KIND_TOKENIZED:
                self.unbacked += state["capacity"] - state["consumed"]

        @rule(percent=PERCENT)
        def buy_back(self, percent: int) -> None:
            face = cld.functions.face_value_usd_micro().call()
            share = escrow.functions.token_bond_bps(cld.address).call()
            amount = min(self.unbacked, cld.functions.balanceOf(roles.seller).call()) * percent // 100
            # One fixed rate for every token: its token's bond share of face value.
            if amount == 0 or amount * face * share // (10**18 * 10_000) == 0:
                return
            chain.send(escrow.functions.buy_back_unbacked(cld.address, amount), roles.seller)  # approved in world.py
            self.supply -= amount
            self.unbacked -= amount

        @invariant()
        def usdc_held_equals_bonds_plus_insurance(self) -> None:
            held, due = usdc_held(), owed()
            assert held - self.start[0] == due - self.start[1]

        @invariant()
        def supply_and_unbacked_match_the_model(self) -> None:
            assert cld.functions.totalSupply().call() == self.supply
            assert escrow.functions.unbacked(cld.address).call() == self.unbacked

    run_state_machine_as_test(EscrowOnFork, settings=FORK_SETTINGS)


def test_escrow__random_lots_on_the_fork__keep_usdc_and_supply_exact(fresh_world):
    run_escrow_machine(fresh_world)
