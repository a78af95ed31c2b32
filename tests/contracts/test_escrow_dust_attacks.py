"""The dust-lot draw freeze (issue 19, session 5's breaker finding) and its siblings.

Found: 256 tokenized lots of one micro-dollar (256 micro-USDC of bond) expiring soonest
filled the MAX_DRAW_LOTS walk of `draw`/`drawable`: `drawable` reported ~0.06 CLD while an
honest lot behind them held 2.37 M CLD (0 once they passed expiry, until someone expired
each one 27 h later), every larger burn reverted, the coordinator quarantined the token's
records and the honest lot, never drawn, forfeited its bond at expiry.

Now a tokenized lot's face value is at least MIN_TOKENIZED_FACE ($10), so a full walk
draws at least 255 x $10 in one settlement and the next one walks on; lots past expiry
leave the head of the draw order without counting against the walk (MAX_PRUNE_LOTS of
them inside every draw, the rest through the permissionless `prune`), and lots asked to
close leave it at once. Each test asserts what the honest lot and the settlement get.

Round 2's escrow world and the crowd of 256 smallest lots, built once per module.
"""

from dataclasses import dataclass

import boa
import pytest
from test_attacks_round2 import (
    CLD_FACE,
    DAY,
    GRACE,
    TERMS,
    TOKENIZED,
    WINDOW,
    EscrowWorld,
    build_escrow_world,
    now,
)  # fmt: skip
from test_escrow_share_attacks import _draw

from promptex.protocol.escrow import MIN_LOT_VALIDITY, MIN_TOKENIZED_FACE

MAX_DRAW_LOTS = 256
MAX_PRUNE_LOTS = 256


@pytest.fixture(scope="module")
def world() -> EscrowWorld:
    return build_escrow_world()


@dataclass
class Crowded:
    w: EscrowWorld
    honest: int  # $10,000, 30 days: 2.37 M CLD
    dust: list[int]  # MAX_DRAW_LOTS smallest lots, expiring soonest (MIN_LOT_VALIDITY)


@pytest.fixture(scope="module")
def crowded() -> Crowded:
    """The finding's draw order with the smallest lots allowed, in a world of its own:
    the honest lot behind 256 lots of $10 expiring first. Opened once; each test runs
    in a snapshot of it."""
    w = build_escrow_world()
    honest = w.open(w.sellers[0], lifetime=30 * DAY)
    return Crowded(w, honest, _crowd(w, MAX_DRAW_LOTS))


def _crowd(w: EscrowWorld, count: int, lifetime: int = MIN_LOT_VALIDITY) -> list[int]:
    """`count` smallest tokenized lots the attacker may open, expiring after `lifetime`
    (its USDC minted once: each lot still needs its own allowance of exactly its bond)."""
    bond = w.escrow.tokenized_bond(w.cld.address, MIN_TOKENIZED_FACE)
    w.usdc.mint(w.attacker, count * bond)
    expiry = now() + lifetime
    lots = []
    for _ in range(count):
        w.usdc.approve(w.escrow.address, bond, sender=w.attacker)
        lots.append(w.escrow.open_lot(w.attacker, w.cld.address, TOKENIZED, MIN_TOKENIZED_FACE, expiry, bond,
                                      TERMS, 0, sender=w.attestor))  # fmt: skip
    return lots


def _min_capacity(w: EscrowWorld) -> int:
    return w.escrow.quote_mint(w.cld.address, MIN_TOKENIZED_FACE)[0]


def test_seller__dust_lots_below_ten_dollars__refused_and_the_constant_matches(world):
    w = world
    assert w.escrow.MIN_TOKENIZED_FACE() == MIN_TOKENIZED_FACE == 10_000_000
    assert w.escrow.MAX_DRAW_LOTS() == MAX_DRAW_LOTS and w.escrow.MAX_PRUNE_LOTS() == MAX_PRUNE_LOTS
    count = w.escrow.lot_count()
    for face in (1, MIN_TOKENIZED_FACE - 1):
        with boa.reverts("escrow: face value below minimum"):
            w.open(w.attacker, face=face)
    assert w.escrow.lot_count() == count
    # A listed lot is not in the draw order: no minimum beyond a positive face.
    w.open(w.attacker, kind=2, face=1, rate_bps=5_000)


def test_seller__256_smallest_lots_expiring_soonest__one_draw_drains_them_the_next_reaches_the_honest_lot(crowded):
    """The finding with the smallest lots allowed: they are real capacity, drawn in
    order. One settlement draws all 256 ($2,560: at least 255 x $10 with a partly drawn
    head); the next reaches the honest lot, whose bond is released as it is drawn, long
    before its expiry; the attacker got back what its lots delivered, nothing more."""
    w, honest, dust = crowded.w, crowded.honest, crowded.dust
    capacity = w.escrow.lots(honest).capacity
    crowd = MAX_DRAW_LOTS * _min_capacity(w)  # every lot of the crowd is the same
    assert w.escrow.drawable(w.cld.address) == crowd  # the walk is full: the honest lot is the 257th
    _draw(w, w.sellers[0], crowd, 1)
    assert w.escrow.draw_order(w.cld.address, 2) == [honest]  # the crowd drained, closed, unlinked
    assert w.escrow.lots(dust[0]).status == w.escrow.lots(dust[-1]).status == 2
    assert w.escrow.drawable(w.cld.address) == capacity
    bond = w.escrow.lots(honest).bond
    _draw(w, w.sellers[0], capacity // 2, 2)
    assert w.escrow.lots(honest).consumed == capacity // 2
    assert w.usdc.balanceOf(w.sellers[0]) == bond * (capacity // 2) // capacity
    # The attacker posted the bond of its lots and got it back for capacity drawn: no more.
    posted = len(dust) * w.escrow.tokenized_bond(w.cld.address, MIN_TOKENIZED_FACE)
    assert w.usdc.balanceOf(w.attacker) == posted
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + GRACE)
    assert w.escrow.drawable(w.cld.address) == capacity - capacity // 2


def test_seller__lets_the_crowd_expire_at_the_head__the_draw_skips_it_and_reaches_the_honest_lot(crowded):
    """The finding's second half: the crowd left undrawn past its expiry. Before, the
    draw order's head held 256 lots no draw could take and `drawable` was 0 until each
    was expired 27 h later. Now the draw unlinks them first (not counted against its
    walk): no transaction between, and nothing moves for the crowd until `expire`."""
    w, honest, dust = crowded.w, crowded.honest, crowded.dust
    capacity = w.escrow.lots(honest).capacity
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + 1)
    assert w.escrow.drawable(w.cld.address) == capacity
    held = w.escrow.bonds_held()
    _draw(w, w.sellers[0], capacity // 2, 1)
    assert w.escrow.lots(honest).consumed == capacity // 2
    assert w.escrow.draw_order(w.cld.address, 2) == [honest]
    # The crowd's lots are unlinked, not ended: their bonds wait for `expire`.
    assert w.escrow.bonds_held() == held - w.escrow.lots(honest).bond_released
    assert all(w.escrow.lots(lot).status == 1 for lot in dust[:3])
    boa.env.time_travel(seconds=GRACE)
    w.escrow.expire(dust[0])
    assert w.escrow.lots(dust[0]).status == 3 and w.escrow.draw_order(w.cld.address, 2) == [honest]


def test_seller__expired_closing_and_live_dust_ahead__drawable_is_at_least_the_walks_floor(crowded):
    """The crowd expired at the head, then smaller crowds: lots asked to close (they
    leave the draw order with the request, never drawn) and live ones expiring before
    the honest lot. `drawable` is at least min(the routable capacity, 255 smallest lots)
    and one settlement draws past all of them into the honest lot."""
    w, honest, dust = crowded.w, crowded.honest, crowded.dust
    closing = _crowd(w, 12, lifetime=MIN_LOT_VALIDITY + DAY)
    live = _crowd(w, 30, lifetime=MIN_LOT_VALIDITY + 2 * DAY)
    for lot in closing:
        w.escrow.request_close(lot, sender=w.attacker)
    assert w.escrow.draw_order(w.cld.address, MAX_DRAW_LOTS)[-1] == dust[-1]  # then the live ones
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + 1)
    routable = sum(w.escrow.remaining(lot) for lot in live) + w.escrow.remaining(honest)
    drawable = w.escrow.drawable(w.cld.address)
    assert drawable == routable >= min(routable, (MAX_DRAW_LOTS - 1) * _min_capacity(w))
    _draw(w, w.sellers[0], drawable // 2, 1)  # more than the live crowd holds
    assert w.escrow.draw_order(w.cld.address, 2) == [honest]  # expired unlinked, live drained
    assert w.escrow.lots(honest).consumed > 0 and all(w.escrow.remaining(lot) == 0 for lot in live)
    assert all(w.escrow.lots(lot).consumed == 0 for lot in dust[:3] + dust[-3:] + closing)


def test_anyone__prunes_the_expired_crowd__in_order_and_no_money_moves(crowded):
    """`prune` (anyone) takes lots past expiry off the head in order, moving no money
    and ending no lot (a crowd longer than one draw unlinks needs it); a pruned lot's
    slash, close or expiry pays exactly what it would have; the order behind stays."""
    w, honest, dust = crowded.w, crowded.honest, crowded.dust
    token = w.cld.address
    later = w.open(w.sellers[1], lifetime=MIN_LOT_VALIDITY + DAY)
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + 1)
    with boa.reverts("escrow: too many lots to prune"):
        w.escrow.prune(token, MAX_PRUNE_LOTS + 1, sender=w.holder)
    money = (w.usdc.balanceOf(w.escrow.address), w.escrow.bonds_held(), w.escrow.insurance_fund(token))
    assert w.escrow.prune(token, 3, sender=w.holder) == 3
    assert w.escrow.draw_order(token, 2) == dust[3:5]
    assert w.escrow.prune(token, MAX_PRUNE_LOTS, sender=w.holder) == MAX_DRAW_LOTS - 3
    assert w.escrow.prune(token, MAX_PRUNE_LOTS, sender=w.holder) == 0  # `later` still routes
    assert w.escrow.draw_order(token, 3) == [later, honest]
    assert money == (w.usdc.balanceOf(w.escrow.address), w.escrow.bonds_held(), w.escrow.insurance_fund(token))
    assert all(w.escrow.lots(lot).status == 1 for lot in dust)
    # Each way a pruned lot ends pays what it would have (its whole bond to the fund here).
    w.escrow.slash(dust[0], sender=w.attestor)
    assert w.escrow.insurance_fund(token) == money[2] + w.escrow.lots(dust[0]).bond
    w.escrow.request_close(dust[1], sender=w.attacker)
    boa.env.time_travel(seconds=GRACE)
    fund = w.escrow.insurance_fund(token)
    w.escrow.expire(dust[2])
    assert w.escrow.insurance_fund(token) == fund + w.escrow.lots(dust[2]).bond
    # `later` is past its expiry now: still linked, skipped by `drawable`, pruned by anyone.
    assert w.escrow.draw_order(token, 3) == [later, honest]
    assert w.escrow.drawable(token) == w.escrow.lots(honest).capacity
    assert w.escrow.prune(token, MAX_PRUNE_LOTS) == 1
    # Pruning everything empties the order; a new lot links into it again.
    boa.env.time_travel(seconds=30 * DAY)
    assert w.escrow.prune(token, MAX_PRUNE_LOTS) == 1 and w.escrow.draw_order(token, 3) == []
    assert w.escrow.drawable(token) == 0
    fresh = w.open(w.sellers[2], lifetime=MIN_LOT_VALIDITY)
    assert w.escrow.draw_order(token, 3) == [fresh]
    assert w.escrow.drawable(token) == w.escrow.lots(fresh).capacity


def test_seller__largest_lot_accepted__every_end_pays_without_overflow_and_larger_is_refused(world):
    """Found: `finalize_close` multiplied seller_minted by the remaining capacity and
    overflowed above ~2**128 token units. Lots are now capped at MAX_LOT_AMOUNT (face,
    capacity and bond), so every product of two fits; the largest lot drawn, closed and
    expired pays out exactly."""
    w = world
    cap = w.escrow.MAX_LOT_AMOUNT()
    assert cap == 2**128 - 1
    largest = cap * CLD_FACE // 10**18  # the largest face whose capacity fits
    with boa.reverts("escrow: amount too large"):
        w.open(w.sellers[0], face=largest + 1)
    with boa.reverts("escrow: amount too large"):
        w.open(w.sellers[0], face=cap + 1)
    closing = w.open(w.sellers[0], face=largest)
    expiring = w.open(w.sellers[1], face=largest, lifetime=MIN_LOT_VALIDITY)
    capacity = w.escrow.lots(closing).capacity
    assert capacity <= cap and capacity > cap - 10**18 // CLD_FACE - 1
    _draw(w, w.sellers[1], capacity // 3, 1)  # from `expiring`, drawn first
    w.escrow.request_close(closing, sender=w.sellers[0])
    boa.env.time_travel(seconds=2 * WINDOW)
    w.cld.approve(w.escrow.address, w.cld.balanceOf(w.sellers[0]), sender=w.sellers[0])
    w.escrow.finalize_close(closing, sender=w.sellers[0])
    assert w.escrow.lots(closing).status == 2
    assert w.usdc.balanceOf(w.sellers[0]) > 0
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + GRACE)
    w.escrow.expire(expiring)
    assert w.escrow.bonds_held() == 0
    assert w.usdc.balanceOf(w.escrow.address) == w.escrow.insurance_fund(w.cld.address)
