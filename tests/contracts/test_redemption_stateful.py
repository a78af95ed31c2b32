"""RedemptionEscrow against a plain-Python model, driven through titanoboa over a real
DEX (Pool blueprint, Factory, Router, Oracle).

Agents redeem for two users in two tokens (amounts that sometimes break the daily
limit or the slippage as the market moves), receipts are submitted (valid, forged,
replayed), users and others try refunds before and after deadlines, grants are
revoked and re-granted, and time passes (across UTC days). The model predicts each
outcome, and after every step:

- the escrow holds exactly the USDC of its open redemptions (`total_held`, and its
  USDC balance), and never a provider token;
- every redemption's status, and each (user, token)'s tokens sold today, equal the model.
"""

from dataclasses import dataclass, field

import boa
from boa_dex import FEE, deploy_dex, seed_pools
from eth_account import Account
from eth_utils import keccak
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from promptex.protocol.redemption import LOCAL_REFUND_DELAY as REFUND_DELAY
from promptex.protocol.redemption import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.redemption import STATUS_OPEN as OPEN
from promptex.protocol.redemption import STATUS_REFUNDED as REFUNDED
from promptex.protocol.redemption import STATUS_RELEASED as RELEASED
from promptex.protocol.redemption import account_ref, provider_id, sign_receipt, slippage_limit
from promptex.protocol.units import DAY
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD

ESCROW = boa.load_partial("contracts/RedemptionEscrow.vy")

SLIPPAGE_BPS = 150
DAILY = 2_000 * UNIT  # per (user, token); a token trades at $0.50 or $2
PRICES = (USD // 2, 2 * USD)  # USDC units per whole token
PROVIDER = provider_id("anthropic")
BILLING_KEY = keccak(text="redemption machine billing")
FORGER_KEY = keccak(text="redemption machine forger")
N_USERS = 2


class World:
    """Deployed once, at import; titanoboa's pytest plugin runs every hypothesis example
    inside an anchor, so each starts from this state."""

    def __init__(self) -> None:
        self.admin = boa.env.generate_address("admin")
        self.lp = boa.env.generate_address("lp")
        self.agent = boa.env.generate_address("agent")
        self.payee = boa.env.generate_address("payee")
        self.stranger = boa.env.generate_address("stranger")
        self.users = [boa.env.generate_address(f"user{i}") for i in range(N_USERS)]
        self.accounts = [account_ref(f"machine user {i}") for i in range(N_USERS)]
        dex = deploy_dex(self.admin)
        self.usdc, self.tokens, self.router, self.oracle = dex.usdc, dex.tokens, dex.router, dex.oracle
        with boa.env.prank(self.admin):
            self.escrow = ESCROW.deploy(
                self.usdc.address, self.router.address, self.oracle.address, TWAP_WINDOW, REFUND_DELAY
            )
            self.escrow.set_billing_signer(PROVIDER, Account.from_key(BILLING_KEY).address)
        seed_pools(dex, self.lp, PRICES, 500_000 * USD, TWAP_WINDOW)

        self.expiry = boa.env.evm.patch.timestamp + 365 * DAY
        for user, account in zip(self.users, self.accounts, strict=True):
            self.escrow.link_account(PROVIDER, account, sender=user)
            for token in self.tokens:
                token.mint(user, 10**6 * UNIT)
                token.approve(self.escrow.address, 2**256 - 1, sender=user)
            self.grant(user)
        self.chain_id = self.escrow.eip712Domain()[3]

    def grant(self, user: str) -> None:
        tokens = [t.address for t in self.tokens]
        self.escrow.set_grant(self.agent, self.payee, self.expiry, SLIPPAGE_BPS, tokens, [DAILY] * 2, sender=user)


WORLD = World()


@dataclass
class Redemption:
    user: str
    usdc: int
    deadline: int
    status: int = OPEN


@dataclass
class Model:
    redemptions: dict[int, Redemption] = field(default_factory=dict)
    granted: dict[str, bool] = field(default_factory=dict)
    spent: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # (user, token) → (day, sold)

    def sold_today(self, user: str, token: int, now: int) -> int:
        day, sold = self.spent.get((user, token), (-1, 0))
        return sold if day == now // DAY else 0


class RedemptionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = WORLD
        self.escrow, self.usdc = WORLD.escrow, WORLD.usdc
        self.m = Model(granted={u: True for u in WORLD.users})
        self.touched: set[int] = set()  # redemptions whose status a step may have changed

    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def open_ids(self) -> list[int]:
        return [i for i, r in self.m.redemptions.items() if r.status == OPEN]

    # ── agent ────────────────────────────────────────────────────────────────

    @rule(user=st.integers(0, N_USERS - 1), token=st.integers(0, 1), usd=st.integers(1, 1_500 * USD))
    def redeem(self, user, token, usd):
        who, tok = self.w.users[user], self.w.tokens[token]
        path = [tok.address, self.usdc.address]
        tokens_in = self.w.router.get_amounts_in(usd, path, [FEE])[0]
        price = self.w.oracle.consult(tok.address, TWAP_WINDOW)
        sold = self.m.sold_today(who, token, self.now())
        if not self.m.granted[who]:
            reason = "redemption: no grant"
        elif tokens_in > slippage_limit(usd, price, SLIPPAGE_BPS):
            reason = "redemption: slippage beyond grant"
        elif sold + tokens_in > DAILY:
            reason = "redemption: daily limit exceeded"
        else:
            reason = None
        args = (who, usd, 2**256 - 1, path, [FEE], PROVIDER, self.now() + 60)
        if reason:
            with boa.reverts(reason):
                self.escrow.redeem(*args, sender=self.w.agent)
            return
        before = tok.balanceOf(who)
        redemption_id = self.escrow.redeem(*args, sender=self.w.agent)
        assert tok.balanceOf(who) == before - tokens_in
        assert redemption_id == len(self.m.redemptions) + 1
        self.m.redemptions[redemption_id] = Redemption(who, usd, self.now() + REFUND_DELAY)
        self.touched.add(redemption_id)
        self.m.spent[(who, token)] = (self.now() // DAY, sold + tokens_in)

    # ── release ──────────────────────────────────────────────────────────────

    def receipt(self, redemption_id: int, key: bytes, usd_micro: int) -> tuple:
        account = self.w.accounts[self.w.users.index(self.m.redemptions[redemption_id].user)]
        fields = {
            "redemption_id": redemption_id,
            "provider": PROVIDER,
            "account_ref": account,
            "usd_micro": usd_micro,
            "billing_ref": b"\x07" * 32,
        }
        signature = sign_receipt(key, chain_id=self.w.chain_id, escrow=self.escrow.address, **fields)
        return redemption_id, PROVIDER, account, usd_micro, fields["billing_ref"], signature

    @precondition(lambda self: self.m.redemptions)
    @rule(data=st.data(), extra=st.integers(0, 10), forged=st.booleans())
    def release(self, data, extra, forged):
        redemption_id = data.draw(st.sampled_from(sorted(self.m.redemptions)))
        r = self.m.redemptions[redemption_id]
        self.touched.add(redemption_id)
        args = self.receipt(redemption_id, FORGER_KEY if forged else BILLING_KEY, r.usdc + extra)
        if r.status != OPEN:
            with boa.reverts("redemption: not open"):
                self.escrow.release(*args, sender=self.w.stranger)
        elif forged:
            with boa.reverts("redemption: receipt not signed by billing signer"):
                self.escrow.release(*args, sender=self.w.stranger)
        else:
            before = self.usdc.balanceOf(self.w.payee)
            self.escrow.release(*args, sender=self.w.stranger)
            assert self.usdc.balanceOf(self.w.payee) == before + r.usdc
            r.status = RELEASED

    @precondition(lambda self: self.m.redemptions)
    @rule(data=st.data())
    def release_below_amount_due(self, data):
        redemption_id = data.draw(st.sampled_from(sorted(self.m.redemptions)))
        r = self.m.redemptions[redemption_id]
        with boa.reverts():  # not open, or the receipt is below the amount due
            self.escrow.release(*self.receipt(redemption_id, BILLING_KEY, r.usdc - 1), sender=self.w.stranger)

    # ── refund ───────────────────────────────────────────────────────────────

    @precondition(lambda self: self.m.redemptions)
    @rule(data=st.data(), by_user=st.booleans())
    def refund(self, data, by_user):
        redemption_id = data.draw(st.sampled_from(sorted(self.m.redemptions)))
        r = self.m.redemptions[redemption_id]
        self.touched.add(redemption_id)
        caller = r.user if by_user else self.w.stranger
        if r.status != OPEN:
            reason = "redemption: not open"
        elif not by_user:
            reason = "redemption: caller is not the user"
        elif self.now() <= r.deadline:
            reason = "redemption: deadline not reached"
        else:
            reason = None
        if reason:
            with boa.reverts(reason):
                self.escrow.refund(redemption_id, sender=caller)
            return
        before = self.usdc.balanceOf(r.user)
        self.escrow.refund(redemption_id, sender=caller)
        assert self.usdc.balanceOf(r.user) == before + r.usdc
        r.status = REFUNDED

    # ── grants, time ─────────────────────────────────────────────────────────

    @rule(user=st.integers(0, N_USERS - 1))
    def toggle_grant(self, user):
        who = self.w.users[user]
        if self.m.granted[who]:
            self.escrow.revoke_grant(self.w.agent, sender=who)
        else:
            self.w.grant(who)
        self.m.granted[who] = not self.m.granted[who]

    @rule(seconds=st.integers(1, 2 * REFUND_DELAY))
    def time_travel(self, seconds):
        boa.env.time_travel(seconds=seconds)

    @rule()
    def next_day(self):
        boa.env.time_travel(seconds=DAY - self.now() % DAY)

    # ── invariants ───────────────────────────────────────────────────────────

    @invariant()
    def escrow_holds_exactly_its_open_redemptions(self):
        owed = sum(r.usdc for r in self.m.redemptions.values() if r.status == OPEN)
        assert self.escrow.total_held() == owed
        assert self.usdc.balanceOf(self.escrow.address) == owed
        assert all(token.balanceOf(self.escrow.address) == 0 for token in self.w.tokens)

    @invariant()
    def redemptions_and_daily_counters_agree_with_model(self):
        # Untouched redemptions cannot change unseen: the balance invariant would
        # break, and teardown compares them all.
        assert self.escrow.redemption_count() == len(self.m.redemptions)
        for redemption_id in self.touched:
            assert self.escrow.redemptions(redemption_id)[-1] == self.m.redemptions[redemption_id].status
        self.touched.clear()
        for user in self.w.users:
            for index, token in enumerate(self.w.tokens):
                sold = self.m.sold_today(user, index, self.now())
                assert self.escrow.spent_today(user, self.w.agent, token.address) == sold

    def teardown(self):
        for redemption_id, r in self.m.redemptions.items():
            assert self.escrow.redemptions(redemption_id)[-1] == r.status


TestRedemptionMachine = RedemptionMachine.TestCase
