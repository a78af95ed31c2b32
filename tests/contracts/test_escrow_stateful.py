"""CreditEscrow against a plain-Python model, driven through titanoboa.

Lots are opened, consumed, closed, expired and slashed in random orders, with
fee changes and time travel in between; after every step the contract must
agree with the model and the money invariants must hold.
"""

from dataclasses import dataclass

import boa
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from promptex.protocol.escrow import KIND_LISTED as LISTED
from promptex.protocol.escrow import KIND_TOKENIZED as TOKENIZED
from promptex.protocol.escrow import SETTLEMENT_GRACE as GRACE
from promptex.protocol.escrow import STATUS_CLOSED as CLOSED
from promptex.protocol.escrow import STATUS_EXPIRED as EXPIRED
from promptex.protocol.escrow import STATUS_OPEN as OPEN
from promptex.protocol.escrow import STATUS_SLASHED as SLASHED

TERMS = b"\x11" * 32

TOKEN = boa.load_partial("contracts/ComputeToken.vy")
USDC = boa.load_partial("contracts/test/MockUSDC.vy")
ESCROW = boa.load_partial("contracts/CreditEscrow.vy")
FACE_VALUES = {"CLD": 4_218, "GPT": 3_695_000}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class ModelLot:
    seller: str
    token: str
    kind: int
    capacity: int
    seller_minted: int
    bond: int
    expiry: int
    consumed: int = 0
    released: int = 0
    last_epoch: int = 0
    status: int = OPEN


class World:
    """Deployed once, at import. titanoboa's pytest plugin runs every hypothesis
    example inside `boa.env.anchor()`, so each starts from this state."""

    def __init__(self) -> None:
        self.admin = boa.env.generate_address("admin")
        self.attestor = boa.env.generate_address("attestor")
        self.settler = boa.env.generate_address("vault")  # stands in for the CreditsVault
        self.treasury = boa.env.generate_address("treasury")
        self.sellers = [boa.env.generate_address(f"seller{i}") for i in range(3)]
        with boa.env.prank(self.admin):
            self.usdc = USDC.deploy()
            self.escrow = ESCROW.deploy(self.usdc.address, self.treasury)
            self.tokens = {sym: TOKEN.deploy(f"{sym} credit", sym, sym, fv) for sym, fv in FACE_VALUES.items()}
            for token in self.tokens.values():
                token.set_minter(self.escrow.address, True)
                token.set_burner(self.escrow.address, True)
                self.escrow.add_provider(token.address)
            self.escrow.set_attestor(self.attestor, True)
            self.escrow.set_vault(self.settler)


WORLD = World()


class EscrowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        w = WORLD
        self.admin, self.attestor, self.settler = w.admin, w.attestor, w.settler
        self.treasury, self.sellers = w.treasury, w.sellers
        self.usdc, self.escrow, self.tokens = w.usdc, w.escrow, w.tokens
        self.lots: dict[int, ModelLot] = {}
        self.fee_bps = 5
        self.epoch = 0
        self.minted = {sym: 0 for sym in FACE_VALUES}  # tokens minted (seller + fee)
        self.burned = {sym: 0 for sym in FACE_VALUES}
        self.unbacked = {sym: 0 for sym in FACE_VALUES}
        self.insurance = {sym: 0 for sym in FACE_VALUES}
        self.paid_to = {s: 0 for s in self.sellers}  # USDC returned to each seller
        self.touched: int | None = None  # the lot the last step acted on

    # ── helpers ──────────────────────────────────────────────────────────────

    def open_lots(self) -> list[int]:
        return [i for i, lot in self.lots.items() if lot.status == OPEN]

    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    # ── rules ────────────────────────────────────────────────────────────────

    @rule(
        seller_idx=st.integers(0, 2),
        sym=st.sampled_from(sorted(FACE_VALUES)),
        tokenized=st.booleans(),
        face_value=st.integers(1, 10**13),
        extra_bond=st.integers(0, 10**9),
        rate_bps=st.integers(1, 10_000),
        lifetime=st.integers(1, 90 * 86_400),
    )
    def open_lot(self, seller_idx, sym, tokenized, face_value, extra_bond, rate_bps, lifetime):
        seller, token = self.sellers[seller_idx], self.tokens[sym]
        bond = ceil_div(face_value * 1_000, 10_000) + extra_bond
        self.usdc.mint(seller, bond)
        self.usdc.approve(self.escrow.address, bond, sender=seller)
        kind = TOKENIZED if tokenized else LISTED
        expiry = self.now() + lifetime
        lot_id = self.escrow.open_lot(
            seller,
            token.address,
            kind,
            face_value,
            expiry,
            bond,
            TERMS,
            0 if tokenized else rate_bps,
            sender=self.attestor,
        )
        capacity, seller_minted = face_value, 0
        if tokenized:
            capacity = face_value * 10**18 // FACE_VALUES[sym]
            fee = ceil_div(capacity * self.fee_bps, 10_000)
            seller_minted = capacity - fee
            self.minted[sym] += capacity
        self.lots[lot_id] = ModelLot(seller, sym, kind, capacity, seller_minted, bond, expiry)
        self.touched = lot_id
        lot = self.escrow.lots(lot_id)
        assert (lot.capacity, lot.seller_minted) == (capacity, seller_minted)

    def drawable(self, lot: ModelLot) -> bool:
        return lot.status == OPEN and self.now() <= lot.expiry + GRACE

    def draw_lot(self, lot_id: int, amount: int) -> None:
        lot = self.lots[lot_id]
        lot.consumed += amount
        lot.last_epoch = self.epoch
        released = lot.bond * lot.consumed // lot.capacity
        self.paid_to[lot.seller] += released - lot.released
        lot.released = released
        if lot.consumed == lot.capacity:
            lot.status = CLOSED

    @precondition(lambda self: any(lot.kind == LISTED for lot in self.lots.values() if lot.status == OPEN))
    @rule(data=st.data(), fraction=st.floats(0.0, 1.2))
    def consume_listed(self, data, fraction):
        lot_id = data.draw(st.sampled_from([i for i in self.open_lots() if self.lots[i].kind == LISTED]))
        lot = self.lots[lot_id]
        self.touched = lot_id
        remaining = lot.capacity - lot.consumed
        amount = int(lot.capacity * fraction)
        self.epoch += 1
        if not self.drawable(lot):
            with boa.reverts("escrow: lot not drawable"):
                self.escrow.consume(lot_id, max(amount, 1), self.epoch, sender=self.settler)
        elif amount == 0:
            with boa.reverts("escrow: zero amount"):
                self.escrow.consume(lot_id, 0, self.epoch, sender=self.settler)
        elif amount > remaining:
            with boa.reverts("escrow: over-consume"):
                self.escrow.consume(lot_id, amount, self.epoch, sender=self.settler)
        else:
            # Per lot, Σ seller credits == rate × Σ consumed, rounded down once.
            rate = self.escrow.lots(lot_id).rate_bps
            credit = (lot.consumed + amount) * rate // 10_000 - lot.consumed * rate // 10_000
            assert self.escrow.consume(lot_id, amount, self.epoch, sender=self.settler) == (lot.seller, credit)
            self.draw_lot(lot_id, amount)
            if lot.status == OPEN:  # the same epoch can never draw this lot again
                with boa.reverts("escrow: epoch already consumed"):
                    self.escrow.consume(lot_id, 1, self.epoch, sender=self.settler)

    @rule(sym=st.sampled_from(sorted(FACE_VALUES)), fraction=st.floats(0.0, 1.2))
    def draw_tokenized(self, sym, fraction):
        # Nearest expiry first (ties: lower id first), skipping lots no longer drawable.
        order = sorted(
            (i for i, lot in self.lots.items() if lot.kind == TOKENIZED and lot.token == sym and self.drawable(lot)),
            key=lambda i: (self.lots[i].expiry, i),
        )
        drawable = sum(self.lots[i].capacity - self.lots[i].consumed for i in order)
        assert self.escrow.drawable(self.tokens[sym].address) == drawable
        amount = int(drawable * fraction)
        self.epoch += 1
        token = self.tokens[sym].address
        if amount == 0:
            with boa.reverts("escrow: zero amount"):
                self.escrow.draw(token, 0, self.epoch, sender=self.settler)
            return
        if amount > drawable:
            with boa.reverts("escrow: draw exceeds drawable capacity"):
                self.escrow.draw(token, amount, self.epoch, sender=self.settler)
            return
        self.escrow.draw(token, amount, self.epoch, sender=self.settler)
        self.touched = None
        for lot_id in order:
            if amount == 0:
                break
            take = min(amount, self.lots[lot_id].capacity - self.lots[lot_id].consumed)
            self.draw_lot(lot_id, take)
            amount -= take
            lot, model = self.escrow.lots(lot_id), self.lots[lot_id]
            assert (lot.consumed, lot.bond_released, lot.status) == (model.consumed, model.released, model.status)

    @precondition(lambda self: self.open_lots())
    @rule(data=st.data())
    def close_lot(self, data):
        lot_id = data.draw(st.sampled_from(self.open_lots()))
        lot = self.lots[lot_id]
        self.touched = lot_id
        token = self.tokens[lot.token]
        if lot.kind == TOKENIZED:
            remaining = lot.capacity - lot.consumed
            returned = ceil_div(lot.seller_minted * remaining, lot.capacity)
            token.approve(self.escrow.address, returned, sender=lot.seller)
            if token.balanceOf(lot.seller) < returned:  # it sold some (buy-back): must buy them back first
                with boa.reverts("erc20: transfer amount exceeds balance"):
                    self.escrow.close_lot(lot_id, sender=lot.seller)
                return
            self.burned[lot.token] += returned
            self.unbacked[lot.token] += remaining - returned
        self.escrow.close_lot(lot_id, sender=lot.seller)
        self.paid_to[lot.seller] += lot.bond - lot.released
        lot.released, lot.status = lot.bond, CLOSED

    @precondition(lambda self: self.open_lots())
    @rule(data=st.data())
    def expire(self, data):
        lot_id = data.draw(st.sampled_from(self.open_lots()))
        lot = self.lots[lot_id]
        self.touched = lot_id
        if self.now() <= lot.expiry + GRACE:
            with boa.reverts("escrow: lot not expired"):
                self.escrow.expire(lot_id)
            return
        self.escrow.expire(lot_id)
        if lot.kind == TOKENIZED:
            self.unbacked[lot.token] += lot.capacity - lot.consumed
        self.paid_to[lot.seller] += lot.bond - lot.released
        lot.released, lot.status = lot.bond, EXPIRED

    @precondition(lambda self: self.open_lots())
    @rule(data=st.data())
    def slash(self, data):
        lot_id = data.draw(st.sampled_from(self.open_lots()))
        lot = self.lots[lot_id]
        self.touched = lot_id
        self.escrow.slash(lot_id, sender=self.attestor)
        self.insurance[lot.token] += lot.bond - lot.released
        if lot.kind == TOKENIZED:
            self.unbacked[lot.token] += lot.capacity - lot.consumed
        lot.released, lot.status = lot.bond, SLASHED

    @rule(seller_idx=st.integers(0, 2), sym=st.sampled_from(sorted(FACE_VALUES)), fraction=st.floats(0.0, 1.0))
    def buy_back_unbacked(self, seller_idx, sym, fraction):
        seller, token = self.sellers[seller_idx], self.tokens[sym]
        amount = min(int(self.unbacked[sym] * fraction), token.balanceOf(seller))
        payout = amount * FACE_VALUES[sym] // 10**18
        if amount == 0 or payout == 0 or payout > self.insurance[sym]:
            with boa.reverts():
                self.escrow.buy_back_unbacked(token.address, amount, sender=seller)
            return
        token.approve(self.escrow.address, amount, sender=seller)
        assert self.escrow.buy_back_unbacked(token.address, amount, sender=seller) == payout
        self.unbacked[sym] -= amount
        self.insurance[sym] -= payout
        self.burned[sym] += amount
        self.paid_to[seller] += payout

    @rule(bps=st.integers(0, 200))
    def set_fee(self, bps):
        if bps > 100:
            with boa.reverts("escrow: fee above cap"):
                self.escrow.set_mint_fee_bps(bps, sender=self.admin)
        else:
            self.escrow.set_mint_fee_bps(bps, sender=self.admin)
            self.fee_bps = bps

    @rule(seconds=st.integers(1, 60 * 86_400))
    def time_travel(self, seconds):
        boa.env.time_travel(seconds=seconds)

    # ── invariants ───────────────────────────────────────────────────────────

    @invariant()
    def touched_lot_matches_model(self):
        # Other lots cannot change unseen: the aggregate invariants below would break.
        if self.touched is None:
            return
        lot, model = self.escrow.lots(self.touched), self.lots[self.touched]
        assert (lot.consumed, lot.bond_released, lot.status) == (model.consumed, model.released, model.status)
        assert lot.consumed <= lot.capacity  # never consumed beyond face value

    @invariant()
    def minted_equals_face_value_over_token_value(self):
        # Each lot's capacity (= seller share + fee) was checked against face ÷ token value at open.
        for sym, token in self.tokens.items():
            assert token.totalSupply() == self.minted[sym] - self.burned[sym]
            assert self.escrow.unbacked(token.address) == self.unbacked[sym]

    @invariant()
    def bonds_held_equal_open_lots_unreleased_bonds(self):
        open_bonds = sum(m.bond - m.released for m in self.lots.values() if m.status == OPEN)
        assert self.escrow.bonds_held() == open_bonds
        insurance = sum(self.escrow.insurance_fund(t.address) for t in self.tokens.values())
        assert insurance == sum(self.insurance.values())
        assert self.usdc.balanceOf(self.escrow.address) == open_bonds + insurance

    @invariant()
    def sellers_got_exactly_their_releases(self):
        for seller, paid in self.paid_to.items():
            assert self.usdc.balanceOf(seller) == paid


TestEscrowMachine = EscrowMachine.TestCase
