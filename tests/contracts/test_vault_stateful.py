"""CreditsVault against a plain-Python model, driven through titanoboa.

Deposits, spend caps (signed and direct, widened, revoked), settlements (with
over-debits that become shortfall), instant and trustless exits, cancels,
claims, reserve funding, pauses and time travel run in random orders against
a real CreditEscrow and ComputeToken. After every step:

- the vault holds, per asset, exactly the users' balances + the sellers'
  claimables + the protocol reserve;
- every balance, cap, pending exit, epoch, reserve and shortfall equals the model.

Inside the rules: a settlement never debits beyond a balance or a cap, epochs
are consecutive (a repeated or skipped one reverts), and a thawed trustless
exit always completes — paused or not.
"""

from dataclasses import dataclass, field

import boa
from eth_account import Account
from eth_utils import keccak
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from promptex.protocol.escrow import KIND_LISTED as LISTED
from promptex.protocol.escrow import KIND_TOKENIZED as TOKENIZED
from promptex.protocol.vault import (
    POLICY_WITHDRAWABLE,
    UNLIMITED,
    pack_debits,
    pack_lot_amount,
    quantize_per_epoch,
    sign_release,
    sign_spend_cap,
)

TOKEN = boa.load_partial("contracts/ComputeToken.vy")
USDC = boa.load_partial("contracts/test/MockUSDC.vy")
ESCROW = boa.load_partial("contracts/CreditEscrow.vy")
VAULT = boa.load_partial("contracts/CreditsVault.vy")
MARKET = boa.load_partial("contracts/test/MockExitMarket.vy")

EPOCH = 60
TERMS = b"\x11" * 32
MAX_CAP_TOTAL = 2**96 - 1
MAX_EXPIRY = 2**32 - 1
N_USERS = 3
# Typical deposit per asset, in the asset's unit: drives amounts for deposits and debits.
UNIT = {"USDC": 10**6, "CLD": 10**18}
PRICE = 2 * 10**6  # the exit market pays 2 USDC per CLD

KEYS = [keccak(text=f"vault machine user {i}") for i in range(N_USERS)]
COORDINATOR_KEY = keccak(text="vault machine coordinator")


@dataclass
class Position:
    balance: int = 0
    per_epoch: int = 0
    total: int = 0
    expiry: int = 0
    exit_amount: int = 0
    exit_unlock: int = 0


@dataclass
class AssetModel:
    policy: int
    positions: dict[str, Position]
    last_epoch: int = 0
    settled_window: int = 0  # 1 + window of the last settlement
    reserve: int = 0
    shortfall: int = 0
    claimable: int = 0  # the listed lot's seller (withdrawable asset only)
    cap_nonce: dict[str, int] = field(default_factory=dict)


class World:
    """Contracts and funded accounts, deployed once at import. titanoboa's pytest
    plugin runs every hypothesis example inside an anchor (a snapshot reverted
    afterwards), so each example starts from exactly this state."""

    def __init__(self) -> None:
        self.admin = boa.env.generate_address("admin")
        self.seller = boa.env.generate_address("seller")
        self.pauser = boa.env.generate_address("pauser")
        self.attacker = boa.env.generate_address("attacker")
        self.coordinator = Account.from_key(COORDINATOR_KEY).address
        self.users = [Account.from_key(k).address for k in KEYS]

        with boa.env.prank(self.admin):
            self.usdc = USDC.deploy()
            self.escrow = ESCROW.deploy(self.usdc.address, self.admin)
            self.vault = VAULT.deploy(self.usdc.address, self.escrow.address, EPOCH)
            self.cld = TOKEN.deploy("CLD credit", "CLD", "Anthropic", 4_218)
            self.cld.set_minter(self.escrow.address, True)
            self.cld.set_burner(self.escrow.address, True)
            self.cld.set_burner(self.vault.address, True)
            self.escrow.add_provider(self.cld.address)
            self.escrow.set_attestor(self.admin, True)
            self.escrow.set_settler(self.vault.address, True)
            self.vault.list_asset(self.cld.address, 2)
            self.vault.set_coordinator(self.coordinator, True)
            self.vault.set_pauser(self.pauser, True)
            self.market = MARKET.deploy(self.usdc.address, PRICE)
            self.vault.set_exit_market(self.market.address)

        # One tokenized lot (CLD draws) and one listed lot (USDC credits), both long-lived.
        self.usdc.mint(self.seller, 10**15)
        self.usdc.approve(self.escrow.address, 2**256 - 1, sender=self.seller)
        expiry = boa.env.evm.patch.timestamp + 10 * 365 * 86_400
        with boa.env.prank(self.admin):
            self.tokenized_lot = self.escrow.open_lot(
                self.seller, self.cld.address, TOKENIZED, 10**14, expiry, 10**13, TERMS, 0
            )
            self.listed_lot = self.escrow.open_lot(
                self.seller, self.cld.address, LISTED, 10**13, expiry, 10**12, TERMS, 6_000
            )
        self.cld.approve(self.vault.address, 2**256 - 1, sender=self.seller)
        self.usdc.approve(self.vault.address, 2**256 - 1, sender=self.seller)
        for user in self.users:
            self.cld.transfer(user, 10**6 * UNIT["CLD"], sender=self.seller)
            self.usdc.approve(self.vault.address, 2**256 - 1, sender=user)
            self.cld.approve(self.vault.address, 2**256 - 1, sender=user)
        self.chain_id = self.vault.eip712Domain()[3]
        self.genesis = self.vault.genesis()
        self.cld_supply = self.cld.totalSupply()


WORLD = World()


class VaultMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.__dict__.update(vars(WORLD))
        self.keys = dict(zip(self.users, KEYS, strict=True))
        self.tokens = {"USDC": self.usdc, "CLD": self.cld}
        self.assets = {
            sym: AssetModel(
                policy=POLICY_WITHDRAWABLE if sym == "USDC" else 2,
                positions={u: Position() for u in self.users},
                cap_nonce={u: 0 for u in self.users},
            )
            for sym in self.tokens
        }
        self.release_nonce = {u: 0 for u in self.users}
        self.paused = False
        self.last_release: tuple | None = None
        # What the last rule touched: checked against the contract after it.
        self.touched: set[tuple[str, str]] = set()
        self.touched_assets: set[str] = set()

    def teardown(self) -> None:
        # Compare everything once at the end of each example.
        self.touched = {(sym, u) for sym in self.tokens for u in self.users}
        self.touched_assets = set(self.tokens)
        self.touched_state_agrees_with_model()

    # ── helpers ──────────────────────────────────────────────────────────────

    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def window(self) -> int:
        return (self.now() - self.genesis) // EPOCH

    @staticmethod
    def debitable(pos: Position, now: int) -> int:
        if now > pos.expiry:
            return 0
        return min(pos.balance, pos.total, pos.per_epoch)

    # ── deposits ─────────────────────────────────────────────────────────────

    @rule(
        user=st.integers(0, N_USERS - 1),
        sym=st.sampled_from(["USDC", "CLD"]),
        units=st.integers(0, 1_000),
        by_org=st.booleans(),
    )
    def deposit(self, user, sym, units, by_org):
        self.touched.add((sym, self.users[user]))
        account, token = self.users[user], self.tokens[sym]
        amount = units * UNIT[sym] // 10
        payer = self.seller if by_org else account
        if sym == "USDC":
            self.usdc.mint(payer, amount)
        if self.paused or amount == 0:
            reason = "pausable: contract is paused" if self.paused else "vault: zero amount"
            with boa.reverts(reason):
                self.vault.deposit_for(account, token.address, amount, sender=payer)
            return
        if by_org:
            self.vault.deposit_for(account, token.address, amount, sender=payer)
        else:
            self.vault.deposit(token.address, amount, sender=account)
        self.assets[sym].positions[account].balance += amount

    # ── spend caps ───────────────────────────────────────────────────────────

    @rule(
        user=st.integers(0, N_USERS - 1),
        sym=st.sampled_from(["USDC", "CLD"]),
        per_epoch_units=st.integers(1, 330),  # above 300: no limit
        total_units=st.integers(1, 3_300),  # above 3,000: no limit
        lifetime=st.integers(1, 20 * EPOCH),
        signed=st.booleans(),
    )
    def set_cap(self, user, sym, per_epoch_units, total_units, lifetime, signed):
        self.touched.add((sym, self.users[user]))
        account, asset = self.users[user], self.assets[sym]
        per_epoch = UNLIMITED if per_epoch_units > 300 else per_epoch_units * UNIT[sym] // 10
        total = UNLIMITED if total_units > 3_000 else total_units * UNIT[sym] // 10
        expiry = self.now() + lifetime
        nonce = asset.cap_nonce[account]
        pos = asset.positions[account]
        new = (quantize_per_epoch(per_epoch), min(total, MAX_CAP_TOTAL), min(expiry, MAX_EXPIRY))

        reason = None
        if per_epoch == UNLIMITED and total == UNLIMITED:
            reason = "vault: cap sets no limit"
        elif self.now() <= pos.expiry and not (
            new[0] >= pos.per_epoch and new[1] >= pos.total and new[2] >= pos.expiry
        ):
            reason = "vault: new cap lowers the active cap"

        event(f"set_cap: {reason or 'ok'}")
        token = self.tokens[sym].address
        if signed:
            signature = sign_spend_cap(
                self.keys[account],
                chain_id=self.chain_id,
                vault=self.vault.address,
                account=account,
                asset=token,
                per_epoch=per_epoch,
                total=total,
                expiry=expiry,
                nonce=nonce,
            )
            call = lambda: self.vault.register_spend_cap(  # noqa: E731
                account, token, per_epoch, total, expiry, nonce, signature, sender=self.coordinator
            )
        else:
            call = lambda: self.vault.set_spend_cap(token, per_epoch, total, expiry, sender=account)  # noqa: E731
        if reason:
            with boa.reverts(reason):
                call()
            return
        call()
        pos.per_epoch, pos.total, pos.expiry = new
        asset.cap_nonce[account] = nonce + 1
        if signed:  # replaying the same signed cap fails on its nonce
            with boa.reverts("vault: bad nonce"):
                call()

    @rule(user=st.integers(0, N_USERS - 1), sym=st.sampled_from(["USDC", "CLD"]))
    def revoke_cap(self, user, sym):
        self.touched.add((sym, self.users[user]))
        account, asset = self.users[user], self.assets[sym]
        self.vault.revoke_spend_cap(self.tokens[sym].address, sender=account)
        pos = asset.positions[account]
        pos.expiry = min(pos.expiry, self.genesis + (self.window() + 2) * EPOCH - 1)
        asset.cap_nonce[account] += 1

    # ── settlement ───────────────────────────────────────────────────────────

    @rule(
        sym=st.sampled_from(["USDC", "CLD"]),
        # Per user: left out (None), or a share of what the vault would let us
        # debit — above 1 is usage the vault must cut (shortfall).
        shares=st.lists(st.one_of(st.none(), st.floats(0, 1.3)), min_size=N_USERS, max_size=N_USERS),
        fee_bps=st.integers(0, 3_000),
        wait=st.sampled_from([True, True, True, False]),
        epoch_offset=st.sampled_from([0, 0, 0, 0, 0, 0, -1, 1]),
    )
    def settle(self, sym, shares, fee_bps, wait, epoch_offset):
        self.touched.update((sym, u) for u in self.users)
        self.touched_assets.add(sym)
        asset, token = self.assets[sym], self.tokens[sym]
        if wait and self.now() < self.genesis + asset.settled_window * EPOCH:
            boa.env.time_travel(seconds=self.genesis + asset.settled_window * EPOCH - self.now())
        now = self.now()
        debits = {
            u: int(max(self.debitable(asset.positions[u], now), UNIT[sym]) * share)
            for u, share in zip(self.users, shares, strict=True)
            if share is not None
        }
        requested = sum(debits.values())
        fee = requested * fee_bps // 10_000
        payout = requested - fee
        lots = [pack_lot_amount(self.tokenized_lot if sym == "CLD" else self.listed_lot, payout)] if payout else []
        credits, draws = ([], lots) if sym == "CLD" else (lots, [])
        epoch = asset.last_epoch + 1 + epoch_offset
        charged = {u: min(x, self.debitable(asset.positions[u], now)) for u, x in debits.items()}
        missing = requested - sum(charged.values())

        def call():
            return self.vault.settle(
                epoch,
                token.address,
                pack_debits(debits),
                credits,
                draws,
                fee,
                b"\x22" * 32,
                sender=self.coordinator,
            )

        reason = None
        if self.paused:
            reason = "pausable: contract is paused"
        elif epoch_offset:
            reason = "vault: epoch not consecutive"  # a repeated or skipped epoch
        elif self.window() + 1 <= asset.settled_window:
            reason = "vault: epoch window already settled"
        elif missing > asset.reserve + fee:
            reason = "vault: shortfall exceeds reserve"
        event(f"settle {sym}: {reason or ('shortfall' if missing else 'ok')}")
        if reason:
            with boa.reverts(reason):
                call()
            return

        before = {u: self.vault.balance_of(u, token.address) for u in debits}
        call()
        for u, take in charged.items():
            pos = asset.positions[u]
            # Never beyond the balance, the per-epoch maximum or the total left.
            assert before[u] - self.vault.balance_of(u, token.address) == take
            assert take <= pos.balance and take <= pos.total and take <= pos.per_epoch
            assert take == 0 or now <= pos.expiry
            pos.balance -= take
            pos.total -= take
        asset.last_epoch = epoch
        asset.settled_window = self.window() + 1
        asset.reserve += fee - missing
        asset.shortfall += missing
        if sym == "USDC":
            asset.claimable += payout
        else:
            self.cld_supply -= payout

    @rule()
    def settle_as_non_coordinator(self):
        reason = "pausable: contract is paused" if self.paused else "vault: caller is not a coordinator"
        with boa.reverts(reason):
            self.vault.settle(
                self.assets["USDC"].last_epoch + 1,
                self.usdc.address,
                [],
                [],
                [],
                0,
                b"\x00" * 32,
                sender=self.attacker,
            )

    # ── leaving the vault ────────────────────────────────────────────────────
    # Rules draw from positions where the action makes sense; the trivial
    # reverts (nothing pending, nothing to claim) are unit-tested through ape.

    def credit_sale(self, account: str, proceeds: int) -> None:
        """A sold spend-only token's USDC, credited to the seller's vault balance."""
        self.assets["USDC"].positions[account].balance += proceeds
        self.touched.add(("USDC", account))
        self.touched_assets.add("USDC")

    def positions(self, pending: bool | None = None) -> list[tuple[str, str]]:
        """(asset, user) pairs: with a pending exit (True), funded without one
        (False), or funded at all (None)."""
        return [
            (sym, user)
            for sym, asset in self.assets.items()
            for user, pos in asset.positions.items()
            if (bool(pos.exit_amount) if pending else pos.balance > 0 and (pending is None or not pos.exit_amount))
        ]

    @precondition(lambda self: self.positions(pending=False))
    @rule(data=st.data(), permille=st.integers(0, 1_200))
    def request_exit(self, data, permille):
        sym, account = data.draw(st.sampled_from(self.positions(pending=False)))
        self.touched.add((sym, account))
        pos = self.assets[sym].positions[account]
        amount = pos.balance * permille // 1_000
        reason = (
            "vault: zero amount" if amount == 0 else "vault: amount exceeds balance" if amount > pos.balance else None
        )
        if reason:
            with boa.reverts(reason):
                self.vault.request_exit(self.tokens[sym].address, amount, sender=account)
            return
        self.vault.request_exit(self.tokens[sym].address, amount, sender=account)
        pos.exit_amount, pos.exit_unlock = amount, self.now() + 2 * EPOCH
        with boa.reverts("vault: exit already pending"):
            self.vault.request_exit(self.tokens[sym].address, amount, sender=account)

    @precondition(lambda self: self.positions(pending=True))
    @rule(data=st.data())
    def cancel_exit(self, data):
        sym, account = data.draw(st.sampled_from(self.positions(pending=True)))
        self.touched.add((sym, account))
        self.vault.cancel_exit(self.tokens[sym].address, sender=account)
        pos = self.assets[sym].positions[account]
        pos.exit_amount = pos.exit_unlock = 0

    @precondition(lambda self: self.positions(pending=True))
    @rule(data=st.data(), wait=st.booleans())
    def complete_exit(self, data, wait):
        sym, account = data.draw(st.sampled_from(self.positions(pending=True)))
        self.touched.add((sym, account))
        pos, token = self.assets[sym].positions[account], self.tokens[sym].address
        if wait and self.now() < pos.exit_unlock:
            boa.env.time_travel(seconds=pos.exit_unlock - self.now())
        event(f"complete_exit: {'thawing' if self.now() < pos.exit_unlock else 'completed'}")
        if self.now() < pos.exit_unlock:
            with boa.reverts("vault: exit still thawing"):
                self.vault.complete_exit(token, 0, sender=account)
            return
        # Thawed: must complete whatever else happened (pause, settlements, roles).
        amount = min(pos.exit_amount, pos.balance)
        before = self.tokens[sym].balanceOf(account)
        proceeds = self.vault.complete_exit(token, 0, sender=account)
        if sym == "CLD":  # sold: the USDC lands in the account's vault balance
            assert proceeds == amount * PRICE // 10**18
            self.credit_sale(account, proceeds)
        else:
            assert proceeds == amount and self.tokens[sym].balanceOf(account) - before == amount
        pos.balance -= amount
        pos.exit_amount = pos.exit_unlock = 0

    @precondition(lambda self: self.positions())
    @rule(data=st.data(), permille=st.integers(1, 1_000))
    def exit_instant(self, data, permille):
        sym, account = data.draw(st.sampled_from(self.positions()))
        self.touched.add((sym, account))
        pos, token = self.assets[sym].positions[account], self.tokens[sym].address
        amount = max(1, pos.balance * permille // 1_000)
        nonce, expiry = self.release_nonce[account], self.now() + EPOCH
        signature = sign_release(
            COORDINATOR_KEY,
            chain_id=self.chain_id,
            vault=self.vault.address,
            account=account,
            asset=token,
            amount=amount,
            nonce=nonce,
            expiry=expiry,
        )
        args = (token, amount, 0, nonce, expiry, signature)
        if self.paused:
            with boa.reverts("pausable: contract is paused"):
                self.vault.exit_instant(*args, sender=account)
            return
        proceeds = self.vault.exit_instant(*args, sender=account)
        if sym == "CLD":
            self.credit_sale(account, proceeds)
        pos.balance -= amount
        self.release_nonce[account] += 1
        self.last_release = (account, args)

    @precondition(lambda self: self.last_release is not None)
    @rule()
    def replay_release(self):
        account, args = self.last_release
        with boa.reverts():  # the nonce moved on (or the vault is paused): never pays twice
            self.vault.exit_instant(*args, sender=account)

    @precondition(lambda self: self.assets["USDC"].claimable > 0)
    @rule()
    def claim(self):
        self.touched_assets.add("USDC")
        asset = self.assets["USDC"]
        assert self.vault.claim(self.usdc.address, sender=self.seller) == asset.claimable
        asset.claimable = 0

    @rule(sym=st.sampled_from(["USDC", "CLD"]), units=st.integers(1, 500))
    def fund_reserve(self, sym, units):
        self.touched_assets.add(sym)
        amount = units * UNIT[sym] // 10
        if sym == "USDC":
            self.usdc.mint(self.seller, amount)
        self.vault.fund_reserve(self.tokens[sym].address, amount, sender=self.seller)
        self.assets[sym].reserve += amount

    # ── pause and time ───────────────────────────────────────────────────────

    @rule(pause=st.sampled_from([False, False, False, True]))
    def set_paused(self, pause):
        if pause and not self.paused:
            self.vault.pause(sender=self.pauser)
        elif self.paused and not pause:
            self.vault.unpause(sender=self.admin)
        self.paused = pause

    @rule(seconds=st.integers(1, 3 * EPOCH))
    def time_travel(self, seconds):
        boa.env.time_travel(seconds=seconds)

    # ── invariants ───────────────────────────────────────────────────────────

    @invariant()
    def vault_holds_exactly_what_it_owes(self):
        for sym, asset in self.assets.items():
            owed = sum(p.balance for p in asset.positions.values()) + asset.claimable + asset.reserve
            assert self.tokens[sym].balanceOf(self.vault.address) == owed

    @invariant()
    def touched_state_agrees_with_model(self):
        # Untouched positions cannot change unseen: the balance invariant above
        # would break, and teardown compares everything.
        for sym, user in self.touched:
            token, pos = self.tokens[sym].address, self.assets[sym].positions[user]
            assert self.vault.balance_of(user, token) == pos.balance
            assert self.vault.spend_cap(user, token) == (pos.per_epoch, pos.total, pos.expiry)
            assert self.vault.pending_exits(user, token) == (pos.exit_amount, pos.exit_unlock)
        for sym in self.touched_assets:
            token, asset = self.tokens[sym].address, self.assets[sym]
            assert self.vault.last_epoch(token) == asset.last_epoch
            assert self.vault.reserve(token) == asset.reserve
            assert self.vault.shortfall(token) == asset.shortfall
            if sym == "USDC":
                assert self.vault.claimable(self.seller, token) == asset.claimable
            else:
                assert self.cld.totalSupply() == self.cld_supply
        self.touched.clear()
        self.touched_assets.clear()


TestVaultMachine = VaultMachine.TestCase
