"""RedemptionEscrow against a plain-Python model, driven through titanoboa over a real
DEX (Pool blueprint, Factory, Router, Oracle), administered by the real Timelock.

Agents redeem for two users in two tokens (CLD-like token 0 is Anthropic's, token 1
OpenAI's; amounts that sometimes break the daily limit, the honest-price bound or the
slippage as an lp moves the pools and a keeper updates the Oracle), receipts are
submitted (valid, forged, replayed, signed by a revoked key, naming another sale), users and others try
refunds before and after deadlines, grants are revoked and re-granted, and time passes
(across UTC days). Against the users: the agent sandwiches its own sale inside the pool;
the pauser pauses; the Timelock's guardian revokes billing signers and pausers at once;
its proposer adds signers and pausers after the delay; the old admin key tries directly.
The model predicts each outcome, and after every step:

- the escrow holds exactly the USDC of its open redemptions (`total_held`, and its
  USDC balance), and never a provider token;
- every redemption's status, and each (user, token)'s tokens sold today, equal the model;
- every redemption buys the credits of its token's provider, on the account the user
  linked there, for its own sale (a receipt naming another sale is refused);
- no value reaches a role holder the rules do not give it: the agent holds no USDC and
  gains less than the 0.5 % tolerance on any sandwich; the payee gets exactly the
  released redemptions; the pauser, guardian and proposer get nothing.

At the end of every run the admin and the pauser do their worst (every signer revoked,
paused), and every open redemption still refunds to its user after its deadline.
"""

from dataclasses import dataclass, field

import boa
from boa_dex import FEE, PERIOD, deploy_dex, seed_pools
from boa_partial import LazyPartial
from ci_share import ci_share
from eth_account import Account
from eth_utils import keccak
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from promptex.protocol.dex import amount_in
from promptex.protocol.redemption import (
    IMPACT_TOLERANCE_BPS,
    account_ref,
    honest_limit,
    provider_id,
    sale_hash,
    sale_id,
    sign_receipt,
    slippage_limit,
)
from promptex.protocol.redemption import LOCAL_REFUND_DELAY as REFUND_DELAY
from promptex.protocol.redemption import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.redemption import STATUS_OPEN as OPEN
from promptex.protocol.redemption import STATUS_REFUNDED as REFUNDED
from promptex.protocol.redemption import STATUS_RELEASED as RELEASED
from promptex.protocol.timelock import MIN_DELAY
from promptex.protocol.units import DAY, MAX_UINT256
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD

ESCROW = LazyPartial("contracts/RedemptionEscrow.vy")
TIMELOCK = LazyPartial("contracts/Timelock.vy")

SLIPPAGE_BPS = 150
DAILY = 2_000 * UNIT  # per (user, token); a token trades at $0.50 or $2
PRICES = (USD // 2, 2 * USD)  # USDC units per whole token
DEPTH = 500_000 * USD
PROVIDERS = (provider_id("anthropic"), provider_id("openai"))  # token 0's, token 1's
KEYS = {p: [keccak(text=f"billing {i} of {p.hex()}") for i in range(3)] for p in PROVIDERS}
FORGER_KEY = keccak(text="redemption machine forger")
N_USERS = 2
MASK = MAX_UINT256


def signer_of(key: bytes) -> str:
    return Account.from_key(key).address


class World:
    """Deployed once, at import; titanoboa's pytest plugin runs every hypothesis example
    inside an anchor, so each starts from this state."""

    def __init__(self) -> None:
        def address(name: str) -> str:
            return boa.env.generate_address(name)

        self.admin, self.lp, self.agent, self.payee = (address(n) for n in ("admin", "lp", "agent", "payee"))
        self.stranger, self.keeper, self.pauser = (address(n) for n in ("stranger", "keeper", "pauser"))
        self.proposer, self.guardian = address("proposer"), address("guardian")
        self.users = [address(f"user{i}") for i in range(N_USERS)]
        dex = deploy_dex(self.admin)
        self.usdc, self.tokens, self.router, self.oracle = dex.usdc, dex.tokens, dex.router, dex.oracle
        with boa.env.prank(self.admin):
            self.escrow = ESCROW.deploy(self.usdc.address, self.oracle.address, TWAP_WINDOW, REFUND_DELAY)
            for token, provider in zip(self.tokens, PROVIDERS, strict=True):
                self.escrow.register_token(token.address, provider)
                self.escrow.add_billing_signer(provider, signer_of(KEYS[provider][0]))
            self.escrow.grant_pauser(self.pauser)
            revocations = [
                (self.escrow.address, self.selector("revoke_billing_signer(bytes32,address)")),
                (self.escrow.address, self.selector("revoke_pauser(address)")),
            ]
            self.timelock = TIMELOCK.deploy(MIN_DELAY, [self.proposer], [boa.eval("empty(address)")],
                                            [self.guardian], revocations)  # fmt: skip
            self.escrow.transfer_ownership(self.timelock.address)
        self.timelock.accept_ownership(self.escrow.address)
        seed_pools(dex, self.lp, PRICES, DEPTH, TWAP_WINDOW)
        self.pools = dex.pools

        self.expiry = boa.env.evm.patch.timestamp + 10 * 365 * DAY
        self.accounts = {(u, p): account_ref(f"{u} at {p.hex()}") for u in self.users for p in PROVIDERS}
        for user in self.users:
            for provider in PROVIDERS:
                self.escrow.link_account(provider, self.accounts[(user, provider)], sender=user)
            for token in self.tokens:
                token.mint(user, 10**6 * UNIT)
                token.approve(self.escrow.address, MASK, sender=user)
            self.grant(user)
        for token in self.tokens:  # the agent's own stock, to sandwich with
            token.mint(self.agent, 10**6 * UNIT)
            token.approve(self.router.address, MASK, sender=self.agent)
        self.usdc.approve(self.router.address, MASK, sender=self.agent)
        self.chain_id = self.escrow.eip712Domain()[3]

    @staticmethod
    def selector(signature: str) -> bytes:
        return keccak(text=signature)[:4]

    def grant(self, user: str) -> None:
        tokens = [t.address for t in self.tokens]
        self.escrow.set_grant(self.agent, self.payee, self.expiry, SLIPPAGE_BPS, tokens, [DAILY] * 2, sender=user)


WORLD = World()


@dataclass
class Redemption:
    user: str
    token: int
    usdc: int
    deadline: int
    sale: bytes
    status: int = OPEN


@dataclass
class Model:
    redemptions: dict[int, Redemption] = field(default_factory=dict)
    granted: dict[str, bool] = field(default_factory=dict)
    spent: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # (user, token) → (day, sold)
    signers: dict[bytes, set[bytes]] = field(default_factory=dict)  # provider → keys of its live signers
    since: dict[bytes, int] = field(default_factory=dict)  # key → when it was last added (deploy: 0)
    pausers: set[str] = field(default_factory=set)
    paused: bool = False
    payee_usdc: int = 0

    def sold_today(self, user: str, token: int, now: int) -> int:
        day, sold = self.spent.get((user, token), (-1, 0))
        return sold if day == now // DAY else 0


class RedemptionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = WORLD
        self.escrow, self.usdc, self.timelock = WORLD.escrow, WORLD.usdc, WORLD.timelock
        self.m = Model(
            granted={u: True for u in WORLD.users},
            signers={p: {KEYS[p][0]} for p in PROVIDERS},
            pausers={WORLD.pauser},
        )
        self.touched: set[int] = set()  # redemptions whose status a step may have changed
        self.salt = 0

    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def open_ids(self) -> list[int]:
        return [i for i, r in self.m.redemptions.items() if r.status == OPEN]

    def reserves(self, token: int) -> tuple[int, int]:
        """(token reserve, USDC reserve) of the token's pool (the Oracle's)."""
        pool = self.w.pools[token]
        reserve0, reserve1, _ = pool.get_reserves()
        return (reserve0, reserve1) if pool.token0() == self.w.tokens[token].address else (reserve1, reserve0)

    # ── agent ────────────────────────────────────────────────────────────────

    def expected_refusal(self, who: str, token: int, usd: int) -> tuple[str | None, int]:
        """The reason `redeem` reverts (None: it goes through) and the input it takes."""
        tok = self.w.tokens[token]
        reserve_token, reserve_usdc = self.reserves(token)
        tokens_in = amount_in(usd, reserve_token, reserve_usdc, FEE)
        price = self.w.oracle.consult(tok.address, TWAP_WINDOW)
        if self.m.paused:
            return "pausable: contract is paused", tokens_in
        if not self.m.granted[who]:
            return "redemption: no grant", tokens_in
        if not self.m.signers[PROVIDERS[token]]:
            return "redemption: unknown provider", tokens_in
        if tokens_in > honest_limit(usd, reserve_token * reserve_usdc, price, FEE):
            return "redemption: price beyond twap tolerance", tokens_in
        if tokens_in > slippage_limit(usd, price, SLIPPAGE_BPS):
            return "redemption: slippage beyond grant", tokens_in
        if self.m.sold_today(who, token, self.now()) + tokens_in > DAILY:
            return "redemption: daily limit exceeded", tokens_in
        return None, tokens_in

    def do_redeem(self, user: int, token: int, usd: int) -> bool:
        who, tok = self.w.users[user], self.w.tokens[token]
        reason, tokens_in = self.expected_refusal(who, token, usd)
        ref = (len(self.m.redemptions) + 1).to_bytes(32, "big")  # unique among the agent's sales, as its nonce
        args = (who, tok.address, usd, MASK, self.now() + 60, ref)
        if reason:
            with boa.reverts(reason):
                self.escrow.redeem(*args, sender=self.w.agent)
            event(f"redeem refused: {reason}")
            return False
        before = tok.balanceOf(who)
        redemption_id = self.escrow.redeem(*args, sender=self.w.agent)
        assert tok.balanceOf(who) == before - tokens_in
        assert redemption_id == len(self.m.redemptions) + 1
        # The credits are bought from the token's provider, on the user's account there.
        provider = PROVIDERS[token]
        sale = sale_id(self.w.agent, ref)
        assert bytes(self.escrow.redemptions(redemption_id)[2]) == sale_hash(
            provider, self.w.accounts[(who, provider)], sale
        )
        self.m.redemptions[redemption_id] = Redemption(who, token, usd, self.now() + REFUND_DELAY, sale)
        self.touched.add(redemption_id)
        self.m.spent[(who, token)] = (self.now() // DAY, self.m.sold_today(who, token, self.now()) + tokens_in)
        return True

    @rule(user=st.integers(0, N_USERS - 1), token=st.integers(0, 1), usd=st.integers(1, 1_500 * USD))
    def redeem(self, user, token, usd):
        self.do_redeem(user, token, usd)

    @rule(user=st.integers(0, N_USERS - 1), token=st.integers(0, 1), usd=st.integers(100 * USD, 1_500 * USD),
          dump_bps=st.integers(1, 60))  # fmt: skip
    def agent_sandwiches_its_own_sale(self, user, token, usd, dump_bps):
        """The agent dumps the token (spot falls), redeems, buys the token back with the
        USDC the dump raised, all in one block: it gains less than the tolerance."""
        tok, agent = self.w.tokens[token], self.w.agent
        price = self.w.oracle.consult(tok.address, TWAP_WINDOW)
        held = (tok.balanceOf(agent), self.usdc.balanceOf(agent))
        dump = self.reserves(token)[0] * dump_bps // 10_000
        deadline = self.now() + 60
        raised = self.w.router.swap_exact_in(dump, 0, [tok.address, self.usdc.address], [FEE], agent, deadline,
                                             sender=agent)  # fmt: skip
        went_through = self.do_redeem(user, token, usd)
        self.w.router.swap_exact_in(raised, 0, [self.usdc.address, tok.address], [FEE], agent, deadline, sender=agent)
        assert self.usdc.balanceOf(agent) == held[1]
        gain = (tok.balanceOf(agent) - held[0]) * price // 10**36  # USDC units, at the TWAP
        assert gain < usd * IMPACT_TOLERANCE_BPS // 10_000 or not went_through and gain < 0
        event("sandwich " + ("went through" if went_through else "refused"))

    # ── market and time ──────────────────────────────────────────────────────

    @rule(token=st.integers(0, 1), up=st.booleans(), pct=st.integers(1, 10))
    def lp_trades(self, token, up, pct):
        tok, lp, deadline = self.w.tokens[token], self.w.lp, self.now() + 600
        if up:
            path, amount = [self.usdc.address, tok.address], self.reserves(token)[1] * pct // 100
        else:
            path, amount = [tok.address, self.usdc.address], self.reserves(token)[0] * pct // 100
        self.w.router.swap_exact_in(amount, 0, path, [FEE], lp, deadline, sender=lp)

    @rule(seconds=st.sampled_from([PERIOD, 5 * PERIOD, TWAP_WINDOW + 1, 2 * REFUND_DELAY]))
    def time_passes_keeper_updates(self, seconds):
        boa.env.time_travel(seconds=seconds)
        for token in self.w.tokens:
            self.w.oracle.update(token.address, sender=self.w.keeper)

    @rule()
    def next_day(self):
        boa.env.time_travel(seconds=DAY - self.now() % DAY)

    # ── release ──────────────────────────────────────────────────────────────

    def receipt(self, redemption_id: int, key: bytes, usd_micro: int, sale: bytes | None = None) -> tuple:
        r = self.m.redemptions[redemption_id]
        provider = PROVIDERS[r.token]
        account = self.w.accounts[(r.user, provider)]
        fields = {
            "redemption_id": redemption_id,
            "sale": r.sale if sale is None else sale,
            "provider": provider,
            "account_ref": account,
            "usd_micro": usd_micro,
            "billing_ref": b"\x07" * 32,
        }
        signature = sign_receipt(key, chain_id=self.w.chain_id, escrow=self.escrow.address, **fields)
        return redemption_id, fields["sale"], provider, account, usd_micro, fields["billing_ref"], signature

    @precondition(lambda self: self.m.redemptions)
    @rule(data=st.data(), extra=st.integers(0, 10), key=st.sampled_from(["live", "revoked", "forged", "other sale"]))
    def release(self, data, extra, key):
        """A receipt for the redemption: signed by a live, revoked or forged key, or by a live
        key for another sale under this id (a reorg's: the agent's other sale_ref, or the same
        ref from another agent key): refused whatever the key."""
        redemption_id = data.draw(st.sampled_from(sorted(self.m.redemptions)))
        r = self.m.redemptions[redemption_id]
        provider = PROVIDERS[r.token]
        live = sorted(self.m.signers[provider])
        dead = sorted(set(KEYS[provider]) - self.m.signers[provider])
        chosen = {"live": live, "revoked": dead, "forged": [FORGER_KEY], "other sale": live}[key]
        if not chosen:
            return
        signing_key = data.draw(st.sampled_from(chosen))
        self.touched.add(redemption_id)
        other = None
        if key == "other sale":
            ref = data.draw(st.integers(1, len(self.m.redemptions) + 1)).to_bytes(32, "big")
            agent = data.draw(st.sampled_from([self.w.agent, self.w.stranger]))
            other = sale_id(agent, ref)
            if other == r.sale:
                other = sale_id(self.w.stranger, ref)
        args = self.receipt(redemption_id, signing_key, r.usdc + extra, other)
        if r.status != OPEN:
            with boa.reverts("redemption: not open"):
                self.escrow.release(*args, sender=self.w.stranger)
        elif key == "other sale":
            with boa.reverts("redemption: sale, provider or account mismatch"):
                self.escrow.release(*args, sender=self.w.stranger)
        elif key != "live":
            with boa.reverts("redemption: receipt not signed by billing signer"):
                self.escrow.release(*args, sender=self.w.stranger)
        elif self.m.since.get(signing_key, 0) > r.deadline - REFUND_DELAY:
            # A key the admin added after the sale (through the Timelock's delay, while the
            # agent kept selling): never releases it, live or not (rbreak4 s14).
            with boa.reverts("redemption: billing signer newer than the sale"):
                self.escrow.release(*args, sender=self.w.stranger)
            event("release by a key newer than the sale refused")
        else:
            self.escrow.release(*args, sender=self.w.stranger)
            self.m.payee_usdc += r.usdc
            r.status = RELEASED

    @precondition(lambda self: self.m.redemptions)
    @rule(data=st.data())
    def release_below_amount_due(self, data):
        redemption_id = data.draw(st.sampled_from(sorted(self.m.redemptions)))
        r = self.m.redemptions[redemption_id]
        key = KEYS[PROVIDERS[r.token]][0]
        with boa.reverts():  # not open, or the receipt is below the amount due (or its key revoked)
            self.escrow.release(*self.receipt(redemption_id, key, r.usdc - 1), sender=self.w.stranger)

    # ── refund ───────────────────────────────────────────────────────────────

    def expected_refund_refusal(self, r: Redemption, by_user: bool) -> str | None:
        if r.status != OPEN:
            return "redemption: not open"
        if not by_user:
            return "redemption: caller is not the user"
        if self.now() <= r.deadline:
            return "redemption: deadline not reached"
        return None

    @precondition(lambda self: self.m.redemptions)
    @rule(data=st.data(), by_user=st.booleans())
    def refund(self, data, by_user):
        redemption_id = data.draw(st.sampled_from(sorted(self.m.redemptions)))
        self.do_refund(redemption_id, by_user)

    def do_refund(self, redemption_id: int, by_user: bool) -> None:
        r = self.m.redemptions[redemption_id]
        self.touched.add(redemption_id)
        caller = r.user if by_user else self.w.stranger
        reason = self.expected_refund_refusal(r, by_user)
        if reason:
            with boa.reverts(reason):
                self.escrow.refund(redemption_id, sender=caller)
            return
        before = self.usdc.balanceOf(r.user)
        self.escrow.refund(redemption_id, sender=caller)
        assert self.usdc.balanceOf(r.user) == before + r.usdc
        r.status = REFUNDED

    # ── users ────────────────────────────────────────────────────────────────

    @rule(user=st.integers(0, N_USERS - 1))
    def toggle_grant(self, user):
        who = self.w.users[user]
        if self.m.granted[who]:
            self.escrow.revoke_grant(self.w.agent, sender=who)
        else:
            self.w.grant(who)
        self.m.granted[who] = not self.m.granted[who]

    # ── roles acting against users ───────────────────────────────────────────

    @rule()
    def pauser_toggles(self):
        if WORLD.pauser not in self.m.pausers:
            with boa.reverts("redemption: caller is not a pauser"):
                self.escrow.pause(sender=self.w.pauser)
            return
        if self.m.paused:
            self.escrow.unpause(sender=self.w.pauser)
        else:
            self.escrow.pause(sender=self.w.pauser)
        self.m.paused = not self.m.paused

    @rule(provider=st.sampled_from(PROVIDERS), data=st.data())
    def guardian_revokes_a_signer_at_once(self, provider, data):
        live = sorted(self.m.signers[provider])
        if not live:
            return
        key = data.draw(st.sampled_from(live))
        self.timelock.revoke(self.escrow.address, self.escrow.revoke_billing_signer.prepare_calldata(
            provider, signer_of(key)), sender=self.w.guardian)  # fmt: skip
        self.m.signers[provider].discard(key)
        event("signer revoked")

    @rule()
    def guardian_revokes_the_pauser_at_once(self):
        if WORLD.pauser in self.m.pausers:
            self.timelock.revoke(self.escrow.address, self.escrow.revoke_pauser.prepare_calldata(self.w.pauser),
                                 sender=self.w.guardian)  # fmt: skip
            self.m.pausers.discard(WORLD.pauser)

    def through_timelock(self, calldata: bytes) -> None:
        """The proposer schedules a call to the escrow; it runs only after the delay."""
        self.salt += 1
        salt = self.salt.to_bytes(32, "big")
        target, zero = self.escrow.address, b"\0" * 32
        self.timelock.schedule(target, 0, calldata, zero, salt, MIN_DELAY, sender=self.w.proposer)
        boa.env.time_travel(seconds=MIN_DELAY - 1)
        with boa.reverts():  # not ready a second early
            self.timelock.execute(target, 0, calldata, zero, salt, sender=self.w.stranger)
        boa.env.time_travel(seconds=1)
        self.timelock.execute(target, 0, calldata, zero, salt, sender=self.w.stranger)

    @rule(provider=st.sampled_from(PROVIDERS), data=st.data())
    def timelock_adds_a_signer_after_the_delay(self, provider, data):
        candidates = sorted(set(KEYS[provider]) - self.m.signers[provider])
        if not candidates:
            return
        key = data.draw(st.sampled_from(candidates))
        self.through_timelock(self.escrow.add_billing_signer.prepare_calldata(provider, signer_of(key)))
        self.m.signers[provider].add(key)
        self.m.since[key] = self.now()
        event("signer added through the timelock")

    @rule()
    def timelock_grants_the_pauser_after_the_delay(self):
        if WORLD.pauser not in self.m.pausers:
            self.through_timelock(self.escrow.grant_pauser.prepare_calldata(self.w.pauser))
            self.m.pausers.add(WORLD.pauser)

    @rule(provider=st.sampled_from(PROVIDERS))
    def old_admin_key_acts_directly(self, provider):
        with boa.reverts("ownable: caller is not the owner"):
            self.escrow.add_billing_signer(provider, signer_of(FORGER_KEY), sender=self.w.admin)

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

    @invariant()
    def no_value_reaches_a_role_holder_beyond_the_rules(self):
        assert self.usdc.balanceOf(self.w.payee) == self.m.payee_usdc
        for holder in (self.w.agent, self.w.pauser, self.w.guardian, self.w.proposer, self.timelock.address):
            assert self.usdc.balanceOf(holder) == 0
        assert self.escrow.paused() == self.m.paused

    def teardown(self):
        for redemption_id, r in self.m.redemptions.items():
            assert self.escrow.redemptions(redemption_id)[-1] == r.status
        # The admin and the pauser at their worst: every signer revoked, paused. Every
        # open redemption still refunds to its user once its deadline has passed.
        for provider in PROVIDERS:
            for key in sorted(self.m.signers[provider]):
                self.timelock.revoke(self.escrow.address, self.escrow.revoke_billing_signer.prepare_calldata(
                    provider, signer_of(key)), sender=self.w.guardian)  # fmt: skip
        if WORLD.pauser in self.m.pausers and not self.m.paused:
            self.escrow.pause(sender=self.w.pauser)
        boa.env.time_travel(seconds=REFUND_DELAY + 1)
        for redemption_id in self.open_ids():
            self.do_refund(redemption_id, by_user=True)
        assert self.escrow.total_held() == 0 == self.usdc.balanceOf(self.escrow.address)


TestRedemptionMachine = RedemptionMachine.TestCase
ci_share(TestRedemptionMachine, max_examples=12)
