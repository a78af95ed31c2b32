"""Attacks on CreditEscrow (issue 19, items 1 and 4), each asserting the amounts that
must not move. Found on the old escrow, tried as an attacker would:

- after `slash`, the seller sold its own lot's tokens to the insurance fund first and
  took its whole bond back while other holders got "insurance fund too small";
- a seller closed its lot just before a slash landed and recovered the whole bond;
- a lot left to expire unused returned the full bond while its tokens became unbacked;
- minting, selling and letting a lot expire undrawn paid (drawn oldest-first, any expiry);
- the escrow admin set the minimum bond to zero, made itself attestor and minted
  unbonded (three calls, no delay).
"""

import ape
import pytest

from promptex.chain.timelock import Call, deploy_timelock, selector
from promptex.chain.timelock import execute as execute_call
from promptex.chain.timelock import schedule as schedule_call
from promptex.protocol.escrow import KIND_LISTED, MIN_BOND_FLOOR_BPS, MIN_LOT_VALIDITY, STATUS_OPEN, buy_back_payout
from promptex.protocol.escrow import SETTLEMENT_GRACE as GRACE
from promptex.protocol.timelock import MIN_DELAY
from promptex.protocol.units import TOKEN_UNIT, USD_MICRO

CLD_FACE = 4_218
FACE = 10_000 * USD_MICRO
DAY = 86_400


def _ceil_div(a, b):
    return -(-a // b)


def _rate_bound(payout, amount):
    """USDC per whole token a sale got, as a fraction (payout ÷ amount × 10**18)."""
    return payout * TOKEN_UNIT // amount


def _tender(escrow, usdc, token, who, amount):
    """Sell `amount` of `who`'s unbacked tokens to the fund; returns the USDC it got."""
    before = usdc.balanceOf(who)
    token.approve(escrow, amount, sender=who)
    escrow.buy_back_unbacked(token, amount, sender=who)
    return usdc.balanceOf(who) - before


@pytest.fixture
def holder(buyer):
    return buyer


# ─── Item 1(c): one rate for every tendered token ────────────────────────────


def test_attack__seller_sells_its_own_tokens_to_the_fund_first_after_a_slash(
    escrow, usdc, cld, seller, holder, attestor, open_lot
):
    lot_id = open_lot(seller, cld)
    lot = escrow.lots(lot_id)
    cld.transfer(holder, lot.seller_minted // 2, sender=seller)  # half sold on the market before the failure
    escrow.slash(lot_id, sender=attestor)
    fund = escrow.insurance_fund(cld)
    assert fund == lot.bond

    # The seller rushes to tender everything it still holds.
    mine = cld.balanceOf(seller)
    seller_paid = _tender(escrow, usdc, cld, seller, mine)
    # The other holder comes later and is paid the same rate (to the rounding unit).
    theirs = cld.balanceOf(holder)
    holder_paid = _tender(escrow, usdc, cld, holder, theirs)

    assert seller_paid == buy_back_payout(mine, CLD_FACE)  # CLD's bond share of face, not face value
    assert seller_paid < lot.bond // 2 + 1  # the seller did not take its bond back
    assert _rate_bound(holder_paid, theirs) >= _rate_bound(seller_paid, mine)  # coming second costs nothing
    assert usdc.balanceOf(seller) == seller_paid and usdc.balanceOf(holder) == holder_paid
    assert escrow.insurance_fund(cld) == fund - seller_paid - holder_paid
    assert escrow.insurance_fund(cld) <= lot.bond * (lot.capacity - mine - theirs) // lot.capacity + 2


def test_attack__order_and_size_of_tenders_gain_nothing(escrow, usdc, cld, seller, holder, attestor, open_lot):
    lot_id = open_lot(seller, cld)
    lot = escrow.lots(lot_id)
    cld.transfer(holder, lot.seller_minted // 2, sender=seller)
    escrow.slash(lot_id, sender=attestor)
    rate = escrow.insurance_fund(cld) * TOKEN_UNIT // escrow.unbacked(cld)
    # Ten small tenders by one, one big tender by the other: each pays at least the rate
    # the first saw (rounding only ever favours those who remain).
    piece = cld.balanceOf(seller) // 10
    for _ in range(10):
        paid = _tender(escrow, usdc, cld, seller, piece)
        assert paid >= piece * rate // TOKEN_UNIT
    theirs = cld.balanceOf(holder)
    paid = _tender(escrow, usdc, cld, holder, theirs)
    assert paid >= theirs * rate // TOKEN_UNIT


def test_attack__buying_tokens_after_a_slash_gets_no_priority(
    escrow, usdc, cld, seller, holder, attacker, attestor, open_lot
):
    lot_id = open_lot(seller, cld)
    escrow.slash(lot_id, sender=attestor)
    fund, unbacked = escrow.insurance_fund(cld), escrow.unbacked(cld)
    # An attacker buys cheap tokens after the slash and tenders them at once.
    bought = cld.balanceOf(seller) // 4
    cld.transfer(attacker, bought, sender=seller)
    paid = _tender(escrow, usdc, cld, attacker, bought)
    assert paid == buy_back_payout(bought, CLD_FACE)  # the common rate, never face value
    assert fund * TOKEN_UNIT * 10_000 >= unbacked * CLD_FACE * 1_000  # the fund holds every share
    assert paid < bought * CLD_FACE // TOKEN_UNIT


# ─── Item 1(b): closing takes two steps, and a slash still lands ─────────────


def test_attack__seller_closes_just_before_a_slash(escrow, chain, usdc, cld, seller, attestor, open_lot):
    lot_id = open_lot(seller, cld)
    lot = escrow.lots(lot_id)
    cld.approve(escrow, lot.seller_minted, sender=seller)
    escrow.request_close(lot_id, sender=seller)  # the seller sees the failure coming
    # Still slashable for the close delay (the old escrow closed at once and paid the bond).
    escrow.slash(lot_id, sender=attestor)
    chain.pending_timestamp = escrow.lots(lot_id).close_at
    with ape.reverts("escrow: lot not open"):
        escrow.finalize_close(lot_id, sender=seller)
    assert usdc.balanceOf(seller) == 0
    assert escrow.insurance_fund(cld) == lot.bond
    assert cld.balanceOf(seller) == lot.seller_minted  # nothing returned, nothing burned


def test_attack__close_stops_routing_at_once_but_not_the_bond(escrow, chain, cld, seller, open_lot):
    lot_id = open_lot(seller, cld)
    escrow.request_close(lot_id, sender=seller)
    assert not escrow.is_routable(lot_id)
    chain.pending_timestamp = escrow.lots(lot_id).close_at - 1
    with ape.reverts("escrow: close delay not over"):
        escrow.finalize_close(lot_id, sender=seller)
    assert escrow.lots(lot_id).status == STATUS_OPEN
    assert escrow.bonds_held() == escrow.lots(lot_id).bond


# ─── Item 1(a): an unused lot forfeits its bond share on expiry ──────────────


def test_attack__lot_left_to_expire_unused_returns_nothing(escrow, chain, usdc, cld, seller, holder, open_lot):
    lot_id = open_lot(seller, cld)
    lot = escrow.lots(lot_id)
    cld.transfer(holder, lot.seller_minted, sender=seller)  # minted and sold
    chain.pending_timestamp = lot.expiry + GRACE + 1
    escrow.expire(lot_id, sender=holder)
    assert usdc.balanceOf(seller) == 0  # the whole bond stays with the tokens it backed
    assert escrow.insurance_fund(cld) == lot.bond
    assert escrow.unbacked(cld) == lot.capacity
    # Holders recover the bond share of face value (10 % here), not nothing.
    paid = _tender(escrow, usdc, cld, holder, lot.seller_minted)
    assert paid == lot.seller_minted * lot.bond // lot.capacity
    # (to the micro-dollar the payout rounds down)
    assert (paid + 1) * 10_000 >= lot.seller_minted * CLD_FACE // TOKEN_UNIT * MIN_BOND_FLOOR_BPS


def test_attack__lot_half_used_then_expired_keeps_half_the_bond_for_holders(
    escrow, chain, usdc, cld, seller, open_lot, draw_down
):
    lot_id = open_lot(seller, cld)
    lot = escrow.lots(lot_id)
    draw_down(lot_id, lot.capacity // 2)
    chain.pending_timestamp = lot.expiry + GRACE + 1
    escrow.expire(lot_id, sender=seller)
    forfeited = _ceil_div(lot.bond * (lot.capacity - lot.capacity // 2), lot.capacity)
    assert escrow.insurance_fund(cld) == forfeited
    assert usdc.balanceOf(seller) == lot.bond - forfeited


# ─── Item 1(d): nearest-expiry first, and a minimum validity ─────────────────


def _lot_expiring_in(escrow, usdc, attestor, seller, token, chain, seconds):
    bond = escrow.min_bond(FACE)
    usdc.mint(seller, bond, sender=seller)
    usdc.approve(escrow, bond, sender=seller)
    escrow.open_lot(seller, token, 1, FACE, chain.pending_timestamp + seconds, bond, b"\x11" * 32, 0, sender=attestor)
    return escrow.lot_count()


def test_attack__short_lot_opened_later_is_drawn_first(
    escrow, chain, usdc, cld, seller, holder, attestor, open_lot, draw_down
):
    # The old escrow let the coordinator draw any lot: a seller could mint, sell and let
    # its short lot expire undrawn while older lots served. Now the escrow draws the
    # nearest expiry first, whoever names it.
    older = open_lot(seller, cld)  # 30 days
    short = _lot_expiring_in(escrow, usdc, attestor, holder, cld, chain, MIN_LOT_VALIDITY)
    assert escrow.draw_order(cld, 2) == [short, older]
    draw_down(older, TOKEN_UNIT, payer=seller)  # burns the seller's tokens: draws `short`
    assert escrow.lots(short).consumed == TOKEN_UNIT
    assert escrow.lots(older).consumed == 0
    # A burn larger than what the short lot has left empties it, then draws the next.
    cld.transfer(seller, cld.balanceOf(holder), sender=holder)  # enough tokens to spend
    rest = escrow.remaining(short)
    draw_down(older, rest + TOKEN_UNIT, payer=seller)
    assert escrow.lots(short).status == 2 and escrow.remaining(short) == 0
    assert escrow.lots(older).consumed == TOKEN_UNIT


def test_draw__lots_that_stopped_routing__are_skipped(
    escrow, chain, usdc, cld, seller, holder, attestor, open_lot, draw_down
):
    older = open_lot(seller, cld)
    closing = _lot_expiring_in(escrow, usdc, attestor, holder, cld, chain, MIN_LOT_VALIDITY)
    escrow.request_close(closing, sender=holder)
    expired = _lot_expiring_in(escrow, usdc, attestor, holder, cld, chain, MIN_LOT_VALIDITY + DAY)
    chain.pending_timestamp = escrow.lots(expired).expiry + 1  # inside the grace: open, but no longer routed
    draw_down(older, TOKEN_UNIT, payer=seller)
    assert escrow.drawable(cld) == escrow.remaining(older)
    assert escrow.lots(older).consumed == TOKEN_UNIT
    assert escrow.lots(closing).consumed == escrow.lots(expired).consumed == 0
    assert escrow.lots(expired).status == STATUS_OPEN  # it still expires (and forfeits) normally
    assert escrow.draw_order(cld, 3) == [older]


def test_draw__listed_lots__named_by_the_settlement(escrow, cld, seller, open_lot, draw_down):
    first = open_lot(seller, cld, kind=KIND_LISTED, rate_bps=6_000)
    second = open_lot(seller, cld, kind=KIND_LISTED, rate_bps=6_000)
    draw_down(second, 1_000)
    draw_down(first, 1_000)
    assert escrow.lots(first).consumed == escrow.lots(second).consumed == 1_000


def test_attack__lot_shorter_than_the_minimum_validity__refused(escrow, chain, usdc, cld, holder, attestor):
    with ape.reverts("escrow: expiry too soon"):
        _lot_expiring_in(escrow, usdc, attestor, holder, cld, chain, MIN_LOT_VALIDITY - 1)
    assert cld.totalSupply() == 0


# ─── Item 4: no unbonded mint, every lever behind the timelock ───────────────


@pytest.fixture
def governed_escrow(escrow, admin, accounts):
    """The escrow handed to a Timelock (proposer accounts[8], guardian accounts[9]), as deploy does."""
    proposer, guardian = accounts[8], accounts[9]
    timelock = deploy_timelock(
        admin,
        delay=MIN_DELAY,
        proposers=[proposer.address],
        guardians=[guardian.address],
        revocations=[(escrow.address, selector(escrow, "revoke_attestor"))],
    )
    escrow.transfer_ownership(timelock, sender=admin)
    timelock.accept_ownership(escrow, sender=admin)
    return timelock, proposer, guardian


def test_attack__min_bond_to_zero_self_attestor_unbonded_mint(
    escrow, chain, usdc, cld, admin, attacker, governed_escrow
):
    timelock, proposer, guardian = governed_escrow
    supply = cld.totalSupply()
    # 1. The former admin goes around the timelock: every lever refuses it.
    for call in (
        lambda: escrow.set_min_bond_bps(0, sender=admin),
        lambda: escrow.grant_attestor(admin, sender=admin),
        lambda: escrow.set_vault(admin, sender=admin),
    ):
        with ape.reverts("ownable: caller is not the owner"):
            call()
    # 2. Through the timelock, the minimum bond cannot go below the immutable floor.
    zero_bond = Call.of(escrow, "set_min_bond_bps", 0)
    schedule_call(timelock, zero_bond, sender=proposer)
    # 3. Granting itself the attestor role is announced and waits the whole delay.
    grant = Call.of(escrow, "grant_attestor", attacker.address)
    receipt = timelock.schedule(grant.target, 0, grant.data, b"\x00" * 32, b"\x00" * 32, MIN_DELAY, sender=proposer)
    assert len(receipt.events.filter(timelock.CallScheduled)) == 1
    with ape.reverts("timelock_controller: operation is not ready"):
        execute_call(timelock, grant, sender=attacker)
    chain.pending_timestamp += MIN_DELAY
    with ape.reverts("escrow: bond share below floor"):
        execute_call(timelock, zero_bond, sender=attacker)
    execute_call(timelock, grant, sender=attacker)
    # 4. Even as attestor, an unbonded (or under-bonded) lot is refused.
    usdc.mint(attacker, FACE, sender=attacker)
    usdc.approve(escrow, FACE, sender=attacker)
    expiry = chain.pending_timestamp + 30 * DAY
    for bond in (0, escrow.tokenized_bond(cld, FACE) - 1):
        with ape.reverts("escrow: bond not the token's share"):
            escrow.open_lot(attacker, cld, 1, FACE, expiry, bond, b"\x11" * 32, 0, sender=attacker)
    assert cld.totalSupply() == supply
    assert escrow.min_bond_bps() == MIN_BOND_FLOOR_BPS
    # 5. The guardian takes the role back at once.
    timelock.revoke(escrow, Call.of(escrow, "revoke_attestor", attacker.address).data, sender=guardian)
    assert not escrow.is_attestor(attacker)


def test_attack__guardian_cancels_an_announced_grant(escrow, chain, attacker, governed_escrow):
    timelock, proposer, guardian = governed_escrow
    grant = Call.of(escrow, "grant_attestor", attacker.address)
    op = schedule_call(timelock, grant, sender=proposer)
    timelock.cancel(op, sender=guardian)
    chain.pending_timestamp += MIN_DELAY
    with ape.reverts("timelock_controller: operation is not ready"):
        execute_call(timelock, grant, sender=attacker)
    assert not escrow.is_attestor(attacker)


def test_attack__guardian_cannot_grant_or_lower_the_bond_at_once(escrow, attacker, governed_escrow):
    timelock, _, guardian = governed_escrow
    for call in (Call.of(escrow, "grant_attestor", guardian.address), Call.of(escrow, "set_min_bond_bps", 1_000)):
        with ape.reverts("timelock: not a registered revocation"):
            timelock.revoke(escrow, call.data, sender=guardian)
    assert not escrow.is_attestor(guardian)
