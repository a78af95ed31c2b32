"""CreditsVault's signed mode against a plain-Python model, driven through titanoboa.

Buyers open sessions (random lanes, maximum, lifetime), sign vouchers on random lanes,
revoke, and rotate; the coordinator posts random batches that mix honest debits with an
adversary's: stale and non-highest vouchers, vouchers of an earlier session, of another
lane, or signed by a stranger, amounts beyond the ceiling or the maximum, lanes beyond
the session's, sessions not yet open or already over; time moves by seconds or windows.
A batch with any bad entry must revert whole, a good one must apply exactly. After every
step:

- per lane, Σ settled ≤ the highest ceiling the session key signed for it (in the
  current session); per session, settled ≤ its maximum;
- every balance, lane total and session total equals the model;
- the vault holds exactly balances + claimables + reserve.

CI runs the default hypothesis profile; HYPOTHESIS_PROFILE=deep for long runs.
"""

from dataclasses import dataclass, field

import boa
from ci_share import ci_share
from eth_account import Account
from eth_utils import keccak
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from vault_signed_world import EPOCH, USD, SignedWorld

from promptex.protocol.vault import SignedDebit

WORLD = SignedWorld()
STRANGER = keccak(text="signed machine stranger")


@dataclass
class Session:
    key: bytes
    session: int
    lanes: int
    maximum: int
    signed_from: int
    last_window: int
    settled: int = 0
    lanes_settled: dict[int, int] = field(default_factory=dict)
    # The highest ceiling the key signed per lane (what the invariant bounds settled by).
    highest: dict[int, int] = field(default_factory=dict)


@dataclass
class Voucher:
    account: str
    session: int
    lane: int
    ceiling: int
    signature: bytes


class SignedVaultMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = WORLD
        self.buyers = WORLD.buyers
        self.balance = {b.address: 1_000 * USD for b in self.buyers}
        self.nonce = {b.address: 0 for b in self.buyers}
        self.sessions: dict[str, Session] = {}
        self.vouchers: list[Voucher] = []  # every voucher ever signed (the adversary keeps them all)
        self.claimable = 0
        self.count = 0

    # ── helpers ──────────────────────────────────────────────────────────────

    def window(self) -> int:
        return self.w.window()

    def live(self, account: str) -> Session | None:
        s = self.sessions.get(account)
        return s if s is not None and s.signed_from <= self.window() <= s.last_window else None

    @initialize()
    def two_live_sessions(self):
        """Buyers 0 and 1 start with a live session and a voucher on each lane, so the
        examples spend their steps on settlement rather than on reaching it."""
        for b in (0, 1):
            self.open_session(b, lanes=3, maximum=40, lifetime=20 * EPOCH)
            for lane in range(3):
                self.sign_voucher(b, lane, step=4, stranger=False)
        self.w.next_window()

    # ── sessions ─────────────────────────────────────────────────────────────

    @rule(b=st.integers(0, 3), lanes=st.integers(1, 4), maximum=st.integers(1, 60), lifetime=st.integers(1, 6 * EPOCH))
    def open_session(self, b, lanes, maximum, lifetime):
        buyer = self.buyers[b]
        old = self.sessions.get(buyer.address)
        window = self.window()
        self.count += 1
        key = keccak(text=f"signed machine key {self.count}")
        expiry = self.w.now() + lifetime
        if old is not None and window <= old.last_window:
            event("open_session: previous not over")
            with boa.reverts("vault: session not ended"):
                self.w.vault.set_session_key(
                    self.w.usdc.address,
                    Account.from_key(key).address,
                    lanes,
                    maximum * USD,
                    expiry,
                    sender=buyer.address,
                )
            return
        event("open_session: ok")
        self.w.vault.set_session_key(
            self.w.usdc.address, Account.from_key(key).address, lanes, maximum * USD, expiry, sender=buyer.address
        )
        signed_from = window + 1
        last_window = max((expiry - self.w.genesis) // EPOCH + 1, signed_from)
        self.sessions[buyer.address] = Session(
            key, self.nonce[buyer.address], lanes, maximum * USD, signed_from, last_window
        )
        self.nonce[buyer.address] += 1

    @rule(b=st.integers(0, 3))
    def revoke(self, b):
        buyer = self.buyers[b]
        s = self.sessions.get(buyer.address)
        window = self.window()
        if s is None or window > s.last_window:
            with boa.reverts("vault: no active session"):
                self.w.vault.revoke_session_key(self.w.usdc.address, sender=buyer.address)
            return
        self.w.vault.revoke_session_key(self.w.usdc.address, sender=buyer.address)
        s.last_window = min(s.last_window, max(window + 1, s.signed_from))
        self.nonce[buyer.address] += 1

    @rule(b=st.integers(0, 3), lane=st.integers(0, 4), step=st.integers(0, 8), stranger=st.booleans())
    def sign_voucher(self, b, lane, step, stranger):
        """The buyer's key signs lane's next ceiling (settled so far + a hold); sometimes a
        stranger signs instead (a forged voucher)."""
        buyer = self.buyers[b]
        s = self.sessions.get(buyer.address)
        if s is None:
            return
        base = max(s.highest.get(lane, 0), s.lanes_settled.get(lane, 0))
        ceiling = base + step * USD
        key = STRANGER if stranger else s.key
        signature = self.w.voucher(key, buyer, lane, ceiling, session=s.session)
        if not stranger:
            s.highest[lane] = max(s.highest.get(lane, 0), ceiling)
        self.vouchers.append(Voucher(buyer.address, s.session if not stranger else -1, lane, ceiling, signature))

    # ── settlement ───────────────────────────────────────────────────────────

    @precondition(lambda self: self.vouchers)
    @rule(
        picks=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 12)), min_size=1, max_size=4),
        sender_is_coordinator=st.booleans(),
    )
    def settle(self, picks, sender_is_coordinator):
        chosen: dict[tuple[str, int], tuple[Voucher, int]] = {}
        for index, units in picks:
            v = self.vouchers[index % len(self.vouchers)]
            chosen[(v.account, v.lane)] = (v, units * USD // 2)
        debits = [SignedDebit(v.account, v.lane, v.ceiling, amount, v.signature) for v, amount in chosen.values()]
        valid, reasons = True, []
        settled_by: dict[str, int] = {}
        for v, amount in chosen.values():
            s = self.live(v.account)
            ok = (
                s is not None
                and v.session == s.session
                and v.lane < s.lanes
                and s.lanes_settled.get(v.lane, 0) + amount <= v.ceiling
                and s.settled + settled_by.get(v.account, 0) + amount <= s.maximum
                and settled_by.get(v.account, 0) + amount <= self.balance[v.account]
            )
            settled_by[v.account] = settled_by.get(v.account, 0) + amount
            if not ok:
                valid = False
                reasons.append("bad entry")
        sender = self.w.coordinator if sender_is_coordinator else self.buyers[0].address
        if not sender_is_coordinator:
            valid = False
        event(f"settle: {'ok' if valid else 'refused'}")
        if not valid:
            with boa.reverts():
                self.w.settle_signed(debits, sender=sender)
            return
        self.w.settle_signed(debits, sender=sender)
        for v, amount in chosen.values():
            s = self.sessions[v.account]
            s.lanes_settled[v.lane] = s.lanes_settled.get(v.lane, 0) + amount
            s.settled += amount
            self.balance[v.account] -= amount
            self.claimable += amount

    @rule(b=st.integers(0, 3), share=st.integers(0, 4))
    def settle_honestly(self, b, share):
        """The coordinator settles every lane of a buyer up to a share of its highest voucher."""
        buyer = self.buyers[b]
        s = self.live(buyer.address)
        if s is None:
            return
        debits, total = [], 0
        for lane, ceiling in sorted(s.highest.items()):
            if lane >= s.lanes:
                continue
            amount = (ceiling - s.lanes_settled.get(lane, 0)) * share // 4
            if s.settled + total + amount > s.maximum or total + amount > self.balance[buyer.address]:
                continue
            voucher = next(
                v
                for v in reversed(self.vouchers)
                if (v.account, v.session, v.lane) == (buyer.address, s.session, lane) and v.ceiling == ceiling
            )
            debits.append(SignedDebit(buyer.address, lane, ceiling, amount, voucher.signature))
            total += amount
        if not debits:
            return
        event("settle_honestly: ok")
        self.w.settle_signed(debits)
        for d in debits:
            s.lanes_settled[d.lane] = s.lanes_settled.get(d.lane, 0) + d.amount
        s.settled += total
        self.balance[buyer.address] -= total
        self.claimable += total

    # ── time ─────────────────────────────────────────────────────────────────

    @rule(seconds=st.integers(1, EPOCH))
    def wait(self, seconds):
        boa.env.time_travel(seconds=seconds)

    @rule(windows=st.integers(1, 3))
    def next_window(self, windows):
        self.w.next_window(windows)

    # ── invariants ───────────────────────────────────────────────────────────

    @invariant()
    def lanes_within_their_highest_voucher_and_sessions_within_maximum(self):
        for s in self.sessions.values():
            for lane, settled in s.lanes_settled.items():
                assert settled <= s.highest.get(lane, 0)
            assert s.settled <= s.maximum
            assert sum(s.lanes_settled.values()) == s.settled

    @invariant()
    def vault_agrees_with_the_model(self):
        usdc = self.w.usdc.address
        for buyer in self.buyers:
            assert self.w.vault.balance_of(buyer.address, usdc) == self.balance[buyer.address]
            assert self.w.vault.session_nonce(buyer.address, usdc) == self.nonce[buyer.address]
            s = self.sessions.get(buyer.address)
            if s is None:
                continue
            view = self.w.vault.session_key(buyer.address, usdc)
            assert view[1] == s.session and view[4] == s.settled
            assert view[7] == s.signed_from and view[6] == self.w.genesis + (s.last_window + 1) * EPOCH - 1
            for lane in range(s.lanes):
                assert self.w.vault.lane_settled(buyer.address, usdc, lane) == s.lanes_settled.get(lane, 0)
        assert self.w.vault.claimable(self.w.seller, usdc) == self.claimable

    @invariant()
    def conservation(self):
        assert self.w.conserved()


TestSignedVaultMachine = SignedVaultMachine.TestCase
ci_share(TestSignedVaultMachine, max_examples=8, stateful_step_count=40)
