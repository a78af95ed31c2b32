"""Round 2 of issue 19's attacks: every "cannot" of the README's trust table tried again,
as an attacker holding each role key in turn (the Timelock's proposer, executor and
guardian, the attestor, the pausers, a seller gaming its bond), through titanoboa.

Each world is built once per module (a module fixture; titanoboa's pytest plugin runs
every test inside a snapshot it reverts afterwards), so each test starts from it. Every
test asserts the promise holds: the attack reverts or moves nothing it must not.
"""

from dataclasses import dataclass
from typing import Any

import boa
import pytest
from boa_dex import deploy_dex, seed_pools
from boa_partial import LazyPartial
from eth_utils import keccak

from promptex.protocol import perp as perp_params
from promptex.protocol.escrow import KIND_LISTED as LISTED
from promptex.protocol.escrow import KIND_TOKENIZED as TOKENIZED
from promptex.protocol.escrow import MIN_LOT_VALIDITY, MIN_TOKENIZED_FACE
from promptex.protocol.escrow import SETTLEMENT_GRACE as GRACE
from promptex.protocol.timelock import MIN_DELAY
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.vault import pack_debits, pack_lot_amount

TOKEN = LazyPartial("contracts/ComputeToken.vy")
USDC = LazyPartial("contracts/test/MockUSDC.vy")
ESCROW = LazyPartial("contracts/CreditEscrow.vy")
TIMELOCK = LazyPartial("contracts/Timelock.vy")
PERP = LazyPartial("contracts/Perp.vy")
REDEMPTION = LazyPartial("contracts/RedemptionEscrow.vy")

ZERO = "0x" + "00" * 20
SALT = b"\x00" * 32
TERMS = keccak(text="seller declares its provider agreement permits resale")
DAY = 86_400
WINDOW = 60  # the vault's epoch length; a close waits two
CLD_FACE = 4_218  # USD micro per whole CLD
FACE = 10_000 * USD


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def now() -> int:
    return boa.env.evm.patch.timestamp


# ─── The escrow under its Timelock ───────────────────────────────────────────


@dataclass
class EscrowWorld:
    usdc: Any
    escrow: Any
    cld: Any
    timelock: Any
    deployer: str
    attestor: str
    vault: str  # stands in for the CreditsVault: the escrow's only drawer, a token burner
    treasury: str
    proposer: str
    guardian: str
    sellers: list[str]
    holder: str
    attacker: str

    def open(self, seller: str, kind: int = TOKENIZED, face: int = FACE, bond: int | None = None,
             lifetime: int = 30 * DAY, rate_bps: int = 0) -> int:  # fmt: skip
        """The attestor opens a lot for `seller`, who holds and approved exactly its bond
        (a tokenized lot's is its token's share, the only one accepted)."""
        if bond is None:
            tokenized = kind == TOKENIZED
            bond = self.escrow.tokenized_bond(self.cld.address, face) if tokenized else self.escrow.min_bond(face)
        self.usdc.mint(seller, bond)
        self.usdc.approve(self.escrow.address, bond, sender=seller)
        expiry = now() + lifetime
        return self.escrow.open_lot(seller, self.cld.address, kind, face, expiry, bond, TERMS, rate_bps,
                                    sender=self.attestor)  # fmt: skip

    def tender(self, who: str, amount: int) -> int:
        """`who` sells `amount` of its CLD to the insurance fund; returns the USDC it got."""
        before = self.usdc.balanceOf(who)
        self.cld.approve(self.escrow.address, amount, sender=who)
        self.escrow.buy_back_unbacked(self.cld.address, amount, sender=who)
        return self.usdc.balanceOf(who) - before

    def through_timelock(self, target: str, data: bytes) -> None:
        """The proposer schedules `data` on `target`; anyone executes it after MIN_DELAY."""
        self.timelock.schedule(target, 0, data, SALT, SALT, MIN_DELAY, sender=self.proposer)
        boa.env.time_travel(seconds=MIN_DELAY)
        self.timelock.execute(target, 0, data, SALT, SALT)


def build_escrow_world(share_bps: int = 1_000) -> EscrowWorld:
    """Round 2's world: the escrow (CLD at `share_bps`) handed to a Timelock (also the
    share attacks' world)."""
    a = boa.env.generate_address
    deployer, attestor, vault, treasury = a("deployer"), a("attestor"), a("vault"), a("treasury")
    proposer, guardian, holder, attacker = a("proposer"), a("guardian"), a("holder"), a("attacker")
    sellers = [a(f"seller{i}") for i in range(3)]
    with boa.env.prank(deployer):
        usdc = USDC.deploy()
        escrow = ESCROW.deploy(usdc.address, treasury, WINDOW)
        cld = TOKEN.deploy("CLD credit", "CLD", "Anthropic", CLD_FACE, escrow.address, vault)
        escrow.add_provider(cld.address, share_bps)
        escrow.grant_attestor(attestor)
        escrow.set_vault(vault)
        revocations = [(escrow.address, selector("revoke_attestor(address)"))]
        timelock = TIMELOCK.deploy(MIN_DELAY, [proposer], [ZERO], [guardian], revocations)
        escrow.transfer_ownership(timelock.address)
    timelock.accept_ownership(escrow.address)
    return EscrowWorld(usdc, escrow, cld, timelock, deployer, attestor, vault, treasury, proposer, guardian,
                       sellers, holder, attacker)  # fmt: skip


@pytest.fixture(scope="module")
def ew() -> EscrowWorld:
    return build_escrow_world()


# ─── Attestor ────────────────────────────────────────────────────────────────


def test_attestor__opens_and_slashes_a_lot_a_seller_never_asked_for__the_bond_stays_with_the_seller(ew):
    """Found: a rogue attestor used a seller's standing USDC approval to open a lot the
    seller never asked for, then slashed it: the seller's USDC went to the insurance fund.
    Now the escrow opens a lot only against an allowance of exactly its bond."""
    seller = ew.sellers[0]
    ew.usdc.mint(seller, FACE)
    expiry = now() + 30 * DAY
    bond = ew.escrow.tokenized_bond(ew.cld.address, FACE)
    for standing in (MAX_UINT, FACE, 2 * bond):  # unlimited, larger, or another lot's bond
        ew.usdc.approve(ew.escrow.address, standing, sender=seller)
        with boa.reverts("escrow: bond not approved for this lot"):
            ew.escrow.open_lot(seller, ew.cld.address, TOKENIZED, FACE, expiry, bond, TERMS, 0, sender=ew.attestor)
    assert ew.usdc.balanceOf(seller) == FACE and ew.escrow.lot_count() == 0
    # The lot the seller did approve opens, once: the allowance is spent.
    ew.usdc.approve(ew.escrow.address, bond, sender=seller)
    lot = ew.escrow.open_lot(seller, ew.cld.address, TOKENIZED, FACE, expiry, bond, TERMS, 0, sender=ew.attestor)
    assert ew.escrow.lots(lot).bond == bond and ew.usdc.allowance(seller, ew.escrow.address) == 0
    with boa.reverts("escrow: bond not approved for this lot"):
        ew.escrow.open_lot(seller, ew.cld.address, TOKENIZED, FACE, expiry, bond, TERMS, 0, sender=ew.attestor)


def test_seller__257_dust_lots_expiring_last__cannot_block_lots_that_expire_sooner(ew):
    """Found: 257 one-micro-dollar lots expiring 20 years out (a micro-USDC of bond each,
    opened through the ordinary onboarding) filled the walk `open_lot` makes from the tail
    to keep the draw order: every later lot expiring sooner reverted. It now walks from
    the head when the tail is crowded (the crowd here: the smallest lots allowed, $10)."""
    for _ in range(257):
        ew.open(ew.attacker, face=MIN_TOKENIZED_FACE, lifetime=20 * 365 * DAY)
    honest = ew.open(ew.sellers[0], lifetime=30 * DAY)
    sooner = ew.open(ew.sellers[1], lifetime=10 * DAY)
    later = ew.open(ew.sellers[2], lifetime=60 * DAY)
    assert ew.escrow.draw_order(ew.cld.address, 3) == [sooner, honest, later]
    assert ew.escrow.drawable(ew.cld.address) >= 3 * ew.escrow.lots(honest).capacity * 9 // 10


# ─── A seller gaming its bond ────────────────────────────────────────────────


def test_seller__sells_half_lets_its_lot_expire_undrawn_and_tenders_first__same_rate_as_its_buyer(ew):
    """The baseline the findings below break: a lot left to expire forfeits its whole
    bond to the fund; its seller, tendering its own tokens first, gets the buyer's rate
    (the floor share of face value) and back at most what it posted."""
    seller, holder = ew.sellers[0], ew.holder
    lot = ew.open(seller, lifetime=MIN_LOT_VALIDITY)
    posted = ew.escrow.lots(lot).bond
    ew.cld.transfer(holder, ew.cld.balanceOf(seller) // 2, sender=seller)
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + GRACE + 1)
    ew.escrow.expire(lot)
    assert ew.usdc.balanceOf(seller) == 0  # nothing of the bond came back at expiry
    mine, theirs = ew.cld.balanceOf(seller), ew.cld.balanceOf(holder)
    seller_got = ew.tender(seller, mine)
    holder_got = ew.tender(holder, theirs)
    assert seller_got + holder_got <= posted
    assert holder_got * UNIT // theirs >= seller_got * UNIT // mine  # tendering first gained nothing
    assert holder_got >= theirs * CLD_FACE // UNIT // 10 - 1  # the 10 % floor of face value


def test_seller__fails_at_the_share_after_a_better_bonded_failure__no_profit_first_holders_keep_their_rate(ew):
    """Found (round 2): one pooled rate over failures of unequal bond shares. A lot bonded
    100 % was slashed; a seller then opened a lot at the 10 % minimum, kept its tokens, let
    it expire and tendered them at the pooled rate: $5,497 back for the $1,000 it posted,
    the first lot's holders 55 % of face instead of 100 %. Now every tokenized lot of a
    token is bonded at exactly the token's share (more is refused, and the Timelock's
    minimum bond moves listed lots only), and a buy-back pays that share, fixed: the
    breaker's sequence replayed gains the failing seller nothing and costs the first
    lot's holders nothing."""
    honest, breaker, holder = ew.sellers[0], ew.attacker, ew.holder
    share = ew.escrow.tokenized_bond(ew.cld.address, FACE)
    assert share == FACE // 10
    # The first step of the breaker's world is refused: no tokenized lot bonded above its share.
    ew.usdc.mint(honest, FACE)
    ew.usdc.approve(ew.escrow.address, FACE, sender=honest)
    with boa.reverts("escrow: bond not the token's share"):
        ew.escrow.open_lot(honest, ew.cld.address, TOKENIZED, FACE, now() + 30 * DAY, FACE, TERMS, 0,
                           sender=ew.attestor)  # fmt: skip
    ew.usdc.approve(ew.escrow.address, 0, sender=honest)
    # Nor through the Timelock: a minimum bond raised to 100 % binds listed lots only.
    ew.through_timelock(ew.escrow.address, ew.escrow.set_min_bond_bps.prepare_calldata(10_000))
    assert ew.escrow.min_bond(FACE) == FACE and ew.escrow.tokenized_bond(ew.cld.address, FACE) == share
    first = ew.open(honest, face=10 * FACE)
    ew.cld.transfer(holder, ew.cld.balanceOf(honest), sender=honest)  # all sold to a holder
    ew.escrow.slash(first, sender=ew.attestor)
    held = ew.cld.balanceOf(holder)
    rate_before = ew.escrow.quote_buy_back(ew.cld.address, held)
    # The breaker opens a lot, keeps every token, lets it expire undrawn and tenders them all.
    lot = ew.open(breaker, face=10 * FACE, lifetime=MIN_LOT_VALIDITY)
    posted = ew.escrow.lots(lot).bond
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + GRACE + 1)
    ew.escrow.expire(lot)
    got = ew.usdc.balanceOf(breaker) + ew.tender(breaker, ew.cld.balanceOf(breaker))
    assert got <= posted  # before: $5,497 for $1,000; now less than it posted (the fee tokens' share)
    assert ew.escrow.quote_buy_back(ew.cld.address, held) == rate_before  # the failure diluted nothing
    paid = ew.tender(holder, held)
    assert paid == rate_before == held * CLD_FACE * 1_000 // (UNIT * 10_000)  # the share of face, fixed
    # Whatever else is left unbacked (the fee tokens) is still fully payable at the share.
    fund, left = ew.escrow.insurance_fund(ew.cld.address), ew.escrow.unbacked(ew.cld.address)
    assert fund * UNIT * 10_000 >= left * CLD_FACE * 1_000


def test_seller__every_way_out_after_partial_use__recovers_no_more_than_it_posted_plus_what_was_drawn(ew):
    """Slash, expire and a finalized close, each after part of the lot was drawn (a burn
    elsewhere), fee tokens included: the seller's USDC (bond released, paid at the end,
    and its own tokens tendered) never exceeds its bond, and every other holder of a
    failed lot is paid the same share per token."""
    holder = ew.holder
    market = ew.open(ew.attacker, face=10 * FACE, lifetime=60 * DAY)  # drawn last: expires last
    ew.cld.transfer(holder, ew.escrow.lots(market).seller_minted, sender=ew.attacker)
    for seller, end in zip(ew.sellers, ("slash", "expire", "close"), strict=True):
        lot = ew.open(seller, face=FACE + 13, lifetime=MIN_LOT_VALIDITY)
        posted, capacity = ew.escrow.lots(lot).bond, ew.escrow.lots(lot).capacity
        # It sells a third (less one unit: a close needs ⌈its share of what remains⌉ back).
        ew.cld.transfer(holder, ew.escrow.lots(lot).seller_minted // 3 - 1, sender=seller)
        # A third of the lot is drawn (nearest expiry first): the vault burns the holder's tokens.
        ew.cld.transfer(ew.vault, capacity // 3, sender=holder)
        ew.cld.burn(capacity // 3, sender=ew.vault)
        ew.escrow.draw(ew.cld.address, capacity // 3, 1, sender=ew.vault)
        if end == "slash":
            ew.escrow.slash(lot, sender=ew.attestor)
        elif end == "expire":
            boa.env.time_travel(seconds=MIN_LOT_VALIDITY + GRACE + 1)
            ew.escrow.expire(lot)
        else:
            ew.escrow.request_close(lot, sender=seller)
            boa.env.time_travel(seconds=2 * WINDOW)
            ew.cld.approve(ew.escrow.address, ew.cld.balanceOf(seller), sender=seller)
            ew.escrow.finalize_close(lot, sender=seller)
        mine = ew.cld.balanceOf(seller)
        got = ew.usdc.balanceOf(seller) + (ew.tender(seller, mine) if mine else 0)
        assert got <= posted, end
        fees = ew.cld.balanceOf(ew.treasury)  # every lot's fee share, some of it unbacked
        tendered = min(fees, ew.escrow.unbacked(ew.cld.address))
        assert ew.tender(ew.treasury, tendered) == tendered * CLD_FACE * 1_000 // (UNIT * 10_000), end


def test_seller__its_listed_lot_slashed_while_closing__the_bond_is_lost_to_it(ew):
    seller = ew.sellers[0]
    lot = ew.open(seller, LISTED, rate_bps=5_000)
    ew.escrow.request_close(lot, sender=seller)
    ew.escrow.slash(lot, sender=ew.attestor)
    boa.env.time_travel(seconds=2 * WINDOW)
    with boa.reverts("escrow: lot not open"):
        ew.escrow.finalize_close(lot, sender=seller)
    assert ew.usdc.balanceOf(seller) == 0


def test_seller__its_listed_lot_slashed__cannot_win_the_bond_back_with_a_tokenized_lot_left_to_expire(ew):
    """Found: a listed lot's slashed bond went to the token's insurance fund, where no
    unbacked token claimed it; the same seller (any address) then opened a tokenized lot at
    the minimum bond, let it expire undrawn and sold its own tokens to the fund at up to
    face value: $1,999 back for the $1,000 it posted, the slashed bond recovered. A listed
    lot's slashed bond is now forfeited for good."""
    failed, alias = ew.sellers[0], ew.sellers[1]
    listed = ew.open(failed, LISTED, rate_bps=10_000)
    ew.escrow.slash(listed, sender=ew.attestor)  # its key failed
    slashed = ew.escrow.lots(listed).bond
    lot = ew.open(alias, lifetime=MIN_LOT_VALIDITY)
    posted = ew.escrow.lots(lot).bond
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + GRACE + 1)
    ew.escrow.expire(lot)
    got = ew.tender(alias, ew.cld.balanceOf(alias))
    # At most its own tokenized lot's forfeit comes back (its unsold tokens harmed no one).
    assert got <= posted and ew.usdc.balanceOf(failed) == 0
    assert (
        ew.escrow.forfeited(ew.cld.address)
        == slashed
        == ew.usdc.balanceOf(ew.escrow.address) - ew.escrow.insurance_fund(ew.cld.address)
    )


# ─── The Timelock's guardian and proposer ────────────────────────────────────


def test_guardian__revokes_the_open_executor_role__refused_operations_still_execute(ew):
    """Deploy opens execution to anyone (the executor role of the zero address). The
    guardian's `revoke_role` took it: no operation could ever execute again, including the
    one that would grant an executor back: every lever frozen for good."""
    executor = ew.timelock.EXECUTOR_ROLE()
    with boa.reverts("timelock: the open executor role is timelocked"):
        ew.timelock.revoke_role(executor, ZERO, sender=ew.guardian)
    assert ew.timelock.hasRole(executor, ZERO)
    ew.through_timelock(ew.escrow.address, ew.escrow.set_mint_fee_bps.prepare_calldata(7))
    assert ew.escrow.mint_fee_bps() == 7  # a stranger executed it after the delay


def test_guardian__revokes_every_proposer__governance_stops_but_no_value_moves(ew):
    """A documented limit, not a fix: the guardian may take a leaked proposer key at once,
    even the last one; then nothing can be scheduled again (deploy with two proposers).
    What it cannot do is move value or grant anything."""
    proposer_role = ew.timelock.PROPOSER_ROLE()
    ew.timelock.revoke_role(proposer_role, ew.proposer, sender=ew.guardian)
    data = ew.escrow.grant_attestor.prepare_calldata(ew.guardian)
    with boa.reverts("access_control: account is missing role"):
        ew.timelock.schedule(ew.escrow.address, 0, data, SALT, SALT, MIN_DELAY, sender=ew.proposer)
    for grant in (data, ew.escrow.set_min_bond_bps.prepare_calldata(10_000)):
        with boa.reverts("timelock: not a registered revocation"):
            ew.timelock.revoke(ew.escrow.address, grant, sender=ew.guardian)
    assert not ew.escrow.is_attestor(ew.guardian) and ew.usdc.balanceOf(ew.guardian) == 0


def test_proposer__calls_the_guardians_instant_path_through_an_operation__refused(ew):
    """An operation runs as the Timelock, which holds no guardian role: the proposer cannot
    borrow `revoke` (nor `revoke_role`) to skip the guardian."""
    inner = ew.escrow.revoke_attestor.prepare_calldata(ew.attestor)
    data = ew.timelock.revoke.prepare_calldata(ew.escrow.address, inner)
    ew.timelock.schedule(ew.timelock.address, 0, data, SALT, SALT, MIN_DELAY, sender=ew.proposer)
    boa.env.time_travel(seconds=MIN_DELAY)
    with boa.reverts():
        ew.timelock.execute(ew.timelock.address, 0, data, SALT, SALT)
    assert ew.escrow.is_attestor(ew.attestor)


def test_proposer__registers_a_grant_as_a_revocation__announced_a_whole_delay_before_use(ew):
    """A limit: `set_revocation` cannot tell a revocation from a grant, so an operation
    registering `grant_attestor` would let the guardian grant at once afterwards. It is an
    operation like any other: announced, and unusable for MIN_DELAY (users can leave first)."""
    grant = selector("grant_attestor(address)")
    data = ew.timelock.set_revocation.prepare_calldata(ew.escrow.address, grant, True)
    ew.timelock.schedule(ew.timelock.address, 0, data, SALT, SALT, MIN_DELAY, sender=ew.proposer)
    payload = ew.escrow.grant_attestor.prepare_calldata(ew.attacker)
    boa.env.time_travel(seconds=MIN_DELAY - 1)
    with boa.reverts("timelock: not a registered revocation"):
        ew.timelock.revoke(ew.escrow.address, payload, sender=ew.guardian)
    with boa.reverts("timelock_controller: operation is not ready"):
        ew.timelock.execute(ew.timelock.address, 0, data, SALT, SALT)
    assert not ew.escrow.is_attestor(ew.attacker)


# ─── Pausers: what a pause can freeze ────────────────────────────────────────


@dataclass
class PerpWorld:
    usdc: Any
    gpt: Any
    perp: Any
    admin: str
    pauser: str
    lp: str
    trader: str


@pytest.fixture(scope="module")
def pw() -> PerpWorld:
    a = boa.env.generate_address
    admin, pauser, maker, lp, trader = a("perp admin"), a("perp pauser"), a("maker"), a("lp"), a("trader")
    dex = deploy_dex(admin)
    twap_window = perp_params.LOCAL_TWAP_WINDOW
    with boa.env.prank(admin):
        perp = PERP.deploy(dex.usdc.address, dex.oracle.address, twap_window, perp_params.DEFAULT_INSURANCE_FEE_BPS)
        perp.add_market(dex.tokens[0].address, *perp_params.MarketParams().as_args())
        perp.grant_pauser(pauser)
    seed_pools(dex, maker, (2 * USD, USD // 2), 300_000 * USD, twap_window)
    for who in (lp, trader):
        dex.usdc.mint(who, 10**12)
        dex.usdc.approve(perp.address, MAX_UINT, sender=who)
    perp.deposit(100_000 * USD, 0, sender=lp)
    return PerpWorld(dex.usdc, dex.tokens[0], perp, admin, pauser, lp, trader)


def test_perp_pauser__pauses_for_a_year__freezes_opens_only_never_a_close_margin_or_lp_withdrawal(pw):
    """The perp's pause has no time bound (a pauser may pause again right after an unpause;
    only the guardian's `revoke_pauser` ends that), but all it stops is new positions."""
    perp, trader, lp = pw.perp, pw.trader, pw.lp
    kept = perp.open_position(pw.gpt.address, True, 100 * USD, 500 * USD, sender=trader)
    closed = perp.open_position(pw.gpt.address, False, 100 * USD, 500 * USD, sender=trader)
    perp.pause(sender=pw.pauser)
    boa.env.time_travel(seconds=365 * DAY)
    assert perp.paused()
    with boa.reverts("pausable: contract is paused"):
        perp.open_position(pw.gpt.address, True, 100 * USD, 500 * USD, sender=trader)
    perp.add_margin(kept, 10 * USD, sender=trader)
    perp.remove_margin(kept, 10 * USD, sender=trader)
    assert perp.close_position(closed, 0, sender=trader) > 0
    assert perp.close_position(kept, 0, sender=trader) > 0
    before = pw.usdc.balanceOf(lp)
    perp.withdraw(perp.shares_of(lp) // 2, 0, sender=lp)
    assert pw.usdc.balanceOf(lp) > before
    perp.deposit(USD, 0, sender=lp)
    perp.unpause(sender=pw.admin)
    perp.pause(sender=pw.pauser)  # at once again: no bound, no cool-down
    assert perp.paused()


# ─── The vault's roles ───────────────────────────────────────────────────────


def test_vault_guardian__revokes_a_role_never_held__refused_and_nothing_logged(ew):
    """Found (round 2): the vault's `revoke_coordinator` and `revoke_pauser` accepted an
    account that never held the role, unlike every other revocation, and logged a
    revocation that changed nothing (an indexer or a reader of the guardian's log was told
    a role ended that never existed). Both now refuse it; the holder's revocation works."""
    signed = LazyPartial("contracts/CreditsVaultSigned.vy").deploy()
    vault = LazyPartial("contracts/CreditsVault.vy").deploy(
        ew.usdc.address, ew.escrow.address, WINDOW, 2 * WINDOW, signed.address, sender=ew.deployer
    )
    stranger, coordinator, pauser = ew.attacker, ew.sellers[2], ew.sellers[1]
    vault.grant_coordinator(coordinator, sender=ew.deployer)
    vault.grant_pauser(pauser, sender=ew.deployer)
    with boa.reverts("vault: not a coordinator"):
        vault.revoke_coordinator(stranger, sender=ew.deployer)
    with boa.reverts("vault: not a pauser"):
        vault.revoke_pauser(stranger, sender=ew.deployer)
    assert vault.is_coordinator(coordinator) and vault.is_pauser(pauser)  # the holders still do
    vault.revoke_coordinator(coordinator, sender=ew.deployer)
    vault.revoke_pauser(pauser, sender=ew.deployer)
    assert not vault.is_coordinator(coordinator) and not vault.is_pauser(pauser)
    with boa.reverts("vault: not a coordinator"):  # and not twice
        vault.revoke_coordinator(coordinator, sender=ew.deployer)


def test_vault_pauser__pauses_as_a_listed_lots_last_window_ends__a_keeper_cannot_expire_it_before_it_settles(ew):
    """Found: with one-hour windows (the longest the escrow accepts) and the vault's pause
    of two windows (deploy's rule), a pause from the end of the window holding a listed
    lot's expiry outlasted the two-hour settlement grace: a keeper expired the lot and the
    window's credit could never be posted ("escrow: lot not drawable"), its seller unpaid.
    The grace now covers the expiry's window, the longest pause and two windows to post."""
    w = 3_600
    admin, seller, buyer, pauser, keeper = ew.deployer, ew.sellers[0], ew.holder, ew.sellers[1], ew.attacker
    with boa.env.prank(admin):
        escrow = ESCROW.deploy(ew.usdc.address, ew.treasury, w)
        signed = LazyPartial("contracts/CreditsVaultSigned.vy").deploy()
        vault = LazyPartial("contracts/CreditsVault.vy").deploy(
            ew.usdc.address, escrow.address, w, 2 * w, signed.address
        )
        cld = TOKEN.deploy("CLD credit", "CLD", "Anthropic", CLD_FACE, escrow.address, vault.address)
        escrow.add_provider(cld.address, 1_000)
        escrow.grant_attestor(admin)
        escrow.set_vault(vault.address)
        vault.grant_coordinator(admin)
        vault.grant_pauser(pauser)
    bond = escrow.min_bond(FACE)
    ew.usdc.mint(seller, bond)
    ew.usdc.approve(escrow.address, bond, sender=seller)
    genesis = vault.genesis()
    window_end = genesis + ((now() - genesis) // w + 8 * 24 + 1) * w  # a window end ~8 days out
    lot = escrow.open_lot(seller, cld.address, LISTED, FACE, window_end - 1, bond, TERMS, 10_000, sender=admin)
    ew.usdc.mint(buyer, 100 * USD)
    ew.usdc.approve(vault.address, 100 * USD, sender=buyer)
    vault.deposit(ew.usdc.address, 100 * USD, sender=buyer)
    vault.set_spend_cap(ew.usdc.address, 100 * USD, 100 * USD, window_end + 10 * DAY, sender=buyer)
    # The lot served $10 in its last window; the window ends; the pauser moves first.
    boa.env.time_travel(seconds=window_end - now())
    vault.pause(sender=pauser)
    boa.env.time_travel(seconds=2 * w)  # the pause ends by itself
    with boa.reverts("escrow: lot not expired"):
        escrow.expire(lot, sender=keeper)
    epoch = vault.last_epoch(ew.usdc.address) + 1
    debits, credits = pack_debits({buyer: 10 * USD}), [pack_lot_amount(lot, 10 * USD)]
    vault.settle(epoch, ew.usdc.address, debits, credits, 0, 0, b"\x22" * 32, sender=admin)
    assert escrow.lots(lot).consumed == 10 * USD  # the seller is credited for what it served
    boa.env.time_travel(seconds=GRACE)
    escrow.expire(lot, sender=keeper)  # and the lot still ends, a day later
