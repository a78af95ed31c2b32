"""A second person attacks the escrow's dust-lot fix (4c6838b, 0b1875d; issue 19, session 6).

The fix's promises, as its author stated them: no seller or crowd of sellers blocks another
seller's lot from opening, a draw from completing, or an expiry, slash, close or buy-back
from working; `prune` moves no money; a pruned lot is still expirable, slashable and
closable and its bond goes where the rules say. Each test tries one way to break them
and asserts the amounts that must not move:

- equal expiries and a lot expiring in the very block of the draw (drawn at its expiry,
  pruned one second later, by the draw itself);
- prune interleaved with slash, close and expiry of the same lot, pruning the tail, and
  a seller opening again after its lot was pruned: every payout equals the one the same
  lot makes unpruned;
- a draw behind exactly 256 lots past expiry and 256 live ones, and one more expired:
  `drawable` says what one draw can take, that draw completes, one unit more reverts;
- the largest lot (2**128 - 1 units) slashed and bought back, and closed unused.

The insertion walk both ways (257 lots expiring later and 257 no later than a victim)
blocked every opening between them (cbreak's finding, session 6). `open_lot`'s hint
cures it: the 514-lot crowd opens nothing less with a hint (deep profile: 514 lots); in
CI, a hint inserts with no walk whatever expires later, a stale one walks forward to the
right place, every unusable one (another token's, listed, pruned, closing, expired,
drained, expiring later, never opened) falls back to the walks, and `insert_hint` pages.

hbreak (session 6) attacked the hint: the new lot's own future id, a non-head pruned lot,
a listed lot at the same expiry, the head a prune left, equal expiries, starts refused or
at the head; all hold (order sorted, links whole forward and back, later ends work). Deep:
256 lots behind a hint still open, 257 fall back; the hint's seller closing it in front of
the open refuses one open per close while the crowd both ways stands (a finding).

Round 2's escrow world, built once per module; titanoboa runs each test in a snapshot.
"""

import os

import boa
import pytest
from test_attacks_round2 import (
    DAY,
    GRACE,
    TERMS,
    TOKEN,
    TOKENIZED,
    WINDOW,
    EscrowWorld,
    build_escrow_world,
    now,
)  # fmt: skip
from test_escrow_share_attacks import _draw

from promptex.protocol.escrow import (
    MAX_DRAW_LOTS,
    MAX_HINT_STEPS,
    MAX_INSERT_WALK,
    MIN_LOT_VALIDITY,
    MIN_TOKENIZED_FACE,
)

OPEN, CLOSED, EXPIRED, SLASHED = 1, 2, 3, 4
# The two tests that open 513-515 lots (~30 s each on a loaded 2-core machine) run with
# the deep profile only; CI keeps the cheap ones (test_escrow_dust_attacks.py already
# walks a crowd of 256 in CI).
deep_only = pytest.mark.skipif(
    os.environ.get("HYPOTHESIS_PROFILE") not in ("deep", "deep_part"), reason="513+ lots: HYPOTHESIS_PROFILE=deep"
)


@pytest.fixture(scope="module")
def world() -> EscrowWorld:
    return build_escrow_world()


def _crowd(w: EscrowWorld, count: int, expiry: int, seller: str | None = None) -> list[int]:
    """`count` smallest tokenized lots of `seller` (the attacker), all expiring at `expiry`."""
    who = seller or w.attacker
    bond = w.escrow.tokenized_bond(w.cld.address, MIN_TOKENIZED_FACE)
    w.usdc.mint(who, count * bond)
    lots = []
    for _ in range(count):
        w.usdc.approve(w.escrow.address, bond, sender=who)
        lots.append(w.escrow.open_lot(who, w.cld.address, TOKENIZED, MIN_TOKENIZED_FACE, expiry, bond, TERMS, 0,
                                      sender=w.attestor))  # fmt: skip
    return lots


def _money(w: EscrowWorld) -> tuple[int, ...]:
    """Every USDC and unbacked figure a lot's end may move, and who holds what."""
    e, token = w.escrow, w.cld.address
    holders = [w.attacker, w.holder, *w.sellers]
    return (e.bonds_held(), e.insurance_fund(token), e.unbacked(token), w.usdc.balanceOf(e.address),
            *(w.usdc.balanceOf(h) for h in holders), *(w.cld.balanceOf(h) for h in holders))  # fmt: skip


def _order(w: EscrowWorld) -> list[int]:
    return list(w.escrow.draw_order(w.cld.address, MAX_DRAW_LOTS))


# ─── Equal expiries, the draw's own block ────────────────────────────────────


def test_equal_expiries__drawn_by_id_and_a_later_equal_lot_goes_after_them(world):
    w = world
    expiry = now() + 20 * DAY
    lots = [_crowd(w, 1, expiry, seller)[0] for seller in w.sellers]
    sooner = _crowd(w, 1, expiry - 1)[0]
    again = _crowd(w, 1, expiry, w.sellers[0])[0]
    assert _order(w) == [sooner, *lots, again]
    cap = w.escrow.lots(lots[0]).capacity
    w.cld.transfer(w.holder, w.cld.balanceOf(w.attacker), sender=w.attacker)
    for seller in w.sellers:
        w.cld.transfer(w.holder, w.cld.balanceOf(seller), sender=seller)
    _draw(w, w.holder, 2 * cap + cap // 2, 1)  # sooner, lots[0], half of lots[1]
    assert [w.escrow.lots(x).consumed for x in (sooner, *lots, again)] == [cap, cap, cap // 2, 0, 0]
    assert _order(w) == [lots[1], lots[2], again]


def test_lot_expiring_in_the_draws_block__drawn_at_its_expiry_pruned_one_second_later(world):
    w = world
    expiry = now() + MIN_LOT_VALIDITY
    edge = _crowd(w, 1, expiry, w.sellers[0])[0]
    behind = _crowd(w, 1, expiry + DAY, w.sellers[1])[0]
    cap = w.escrow.lots(edge).capacity
    w.cld.transfer(w.holder, w.cld.balanceOf(w.sellers[0]), sender=w.sellers[0])
    w.cld.transfer(w.holder, w.cld.balanceOf(w.sellers[1]), sender=w.sellers[1])
    with boa.env.anchor():
        boa.env.time_travel(seconds=expiry - now())  # the draw's block is the expiry's
        assert w.escrow.drawable(w.cld.address) == 2 * cap
        _draw(w, w.holder, cap + 1, 1)
        assert w.escrow.lots(edge).consumed == cap and w.escrow.lots(behind).consumed == 1
    boa.env.time_travel(seconds=expiry + 1 - now())
    assert w.escrow.drawable(w.cld.address) == cap  # only `behind`: the coordinator plans on this
    with boa.reverts("escrow: draw exceeds drawable capacity"):
        w.escrow.draw(w.cld.address, cap + 1, 1, sender=w.vault)
    _draw(w, w.holder, cap, 1)  # prunes `edge` first, then drains `behind`
    assert w.escrow.lots(edge).consumed == 0 and w.escrow.lots(edge).status == OPEN
    assert _order(w) == []
    # `edge` ends the ordinary way: its whole bond to the fund at expiry, nothing to its seller.
    boa.env.time_travel(seconds=GRACE)
    fund, paid = w.escrow.insurance_fund(w.cld.address), w.usdc.balanceOf(w.sellers[0])
    w.escrow.expire(edge)
    assert w.escrow.insurance_fund(w.cld.address) == fund + w.escrow.lots(edge).bond
    assert w.usdc.balanceOf(w.sellers[0]) == paid


# ─── Prune interleaved with the ends of the same lot ─────────────────────────


@pytest.mark.parametrize("end", ["slash", "close_before_prune", "close_after_prune", "expire"])
def test_prune_interleaved_with_the_lots_end__same_payouts_as_unpruned(world, end):
    """Three lots past expiry at the head (one partly drawn), an honest lot behind. The
    middle one ends (slash, close asked before or after the prune, expiry) with and
    without a prune in between: every USDC, fund and unbacked figure is the same, and
    the honest lot still leads the draw order and is drawn."""
    w = world
    expiry = now() + MIN_LOT_VALIDITY
    head = _crowd(w, 3, expiry)
    honest = _crowd(w, 1, expiry + 10 * DAY, w.sellers[0])[0]
    _draw(w, w.attacker, w.escrow.lots(head[0]).capacity // 3, 1)
    victim = head[1]
    results = []
    for prune in (False, True):
        with boa.env.anchor():
            boa.env.time_travel(seconds=MIN_LOT_VALIDITY + 1)
            if end == "close_before_prune":
                w.escrow.request_close(victim, sender=w.attacker)
            if prune:
                assert w.escrow.prune(w.cld.address, 256, sender=w.holder) == (2 if end == "close_before_prune" else 3)
                assert _order(w) == [honest]
            if end == "slash":
                w.escrow.slash(victim, sender=w.attestor)
            elif end.startswith("close"):
                if end == "close_after_prune":
                    w.escrow.request_close(victim, sender=w.attacker)
                boa.env.time_travel(seconds=2 * WINDOW)
                w.cld.approve(w.escrow.address, w.cld.balanceOf(w.attacker), sender=w.attacker)
                w.escrow.finalize_close(victim, sender=w.attacker)
            else:
                boa.env.time_travel(seconds=GRACE)
                w.escrow.expire(victim)
            status = w.escrow.lots(victim).status
            assert w.escrow.lots(victim).bond_released == w.escrow.lots(victim).bond
            w.escrow.prune(w.cld.address, 256, sender=w.holder)
            assert _order(w) == [honest]
            _draw(w, w.attacker, 1, 2)
            assert w.escrow.lots(honest).consumed == 1
            results.append((status, _money(w)))
    assert results[0] == results[1]
    assert results[0][0] == {"slash": SLASHED, "expire": EXPIRED}.get(end, CLOSED)


def test_prune_the_tail_then_reopen__order_rebuilt_and_the_pruned_lots_end_unlinks_nothing(world):
    """Every lot past expiry, pruned one at a time down to the tail (head == tail),
    then the same seller opens again: the new lot is head and tail; expiring, slashing
    and closing the pruned lots afterwards leaves it linked and drawable."""
    w = world
    expiry = now() + MIN_LOT_VALIDITY
    old = _crowd(w, 3, expiry)
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + 1)
    assert w.escrow.drawable(w.cld.address) == 0
    for left in (2, 1, 0):
        assert w.escrow.prune(w.cld.address, 1) == 1
        assert _order(w) == old[3 - left :]
    assert w.escrow.prune(w.cld.address, 1) == 0
    fresh = _crowd(w, 1, now() + MIN_LOT_VALIDITY)[0]
    w.escrow.slash(old[0], sender=w.attestor)
    w.escrow.request_close(old[1], sender=w.attacker)
    assert _order(w) == [fresh]
    boa.env.time_travel(seconds=GRACE)
    w.escrow.expire(old[2])
    w.cld.approve(w.escrow.address, w.cld.balanceOf(w.attacker), sender=w.attacker)
    w.escrow.finalize_close(old[1], sender=w.attacker)
    assert _order(w) == [fresh]
    cap = w.escrow.lots(fresh).capacity
    assert w.escrow.drawable(w.cld.address) == cap
    second = _crowd(w, 1, now() + MIN_LOT_VALIDITY + 1, w.sellers[0])[0]
    assert _order(w) == [fresh, second]
    _draw(w, w.attacker, cap + 1, 1)
    assert w.escrow.lots(fresh).status == CLOSED and w.escrow.lots(second).consumed == 1
    assert _order(w) == [second]


# ─── A draw behind 256 expired and 256 live lots ─────────────────────────────


@deep_only
def test_draw_behind_256_expired_and_256_live_lots__drawable_is_what_one_draw_takes(world):
    """256 lots past expiry (one draw's prune) then 256 live ones (one draw's walk) and
    an honest lot: `drawable` is exactly the live crowd and one draw of it completes; with
    a 257th expired lot the walk holds one expired lot and 255 live ones: `drawable`
    says so, a draw of it completes and one unit more reverts (the coordinator prunes
    first when entries need more); nothing moves for the expired crowd."""
    w = world
    start = now()
    expired = _crowd(w, MAX_DRAW_LOTS, start + MIN_LOT_VALIDITY)
    live = _crowd(w, MAX_DRAW_LOTS, start + MIN_LOT_VALIDITY + 2 * DAY)
    honest = _crowd(w, 1, start + 30 * DAY, w.sellers[0])[0]
    extra = _crowd(w, 1, start + MIN_LOT_VALIDITY + 1)[0]  # the 257th: expires one second later
    cap = w.escrow.lots(honest).capacity
    boa.env.time_travel(seconds=start + MIN_LOT_VALIDITY + 1 - now())  # `extra` still routes
    assert w.escrow.drawable(w.cld.address) == 256 * cap  # `extra` + 255 live in the walk
    with boa.env.anchor():
        _draw(w, w.attacker, 256 * cap, 1)
        assert w.escrow.lots(live[-1]).consumed == 0 and w.escrow.lots(live[-2]).consumed == cap
    boa.env.time_travel(seconds=1)  # now 257 lots past expiry lead
    assert w.escrow.drawable(w.cld.address) == 255 * cap
    money = (w.escrow.bonds_held(), w.escrow.insurance_fund(w.cld.address), w.escrow.unbacked(w.cld.address))
    with boa.env.anchor():
        with boa.reverts("escrow: draw exceeds drawable capacity"):
            w.escrow.draw(w.cld.address, 255 * cap + 1, 1, sender=w.vault)
        _draw(w, w.attacker, 255 * cap, 1)
        assert w.escrow.lots(live[-2]).consumed == cap and w.escrow.lots(live[-1]).consumed == 0
        assert _order(w)[:2] == [live[-1], honest]
    # One prune first (what the coordinator sends): the whole live crowd and the honest lot.
    assert w.escrow.prune(w.cld.address, 256, sender=w.holder) == 256
    assert w.escrow.drawable(w.cld.address) == 256 * cap  # `extra` is pruned by the draw
    _draw(w, w.attacker, 256 * cap, 1)
    assert all(w.escrow.lots(x).status == CLOSED for x in live) and w.escrow.lots(honest).consumed == 0
    assert all(w.escrow.lots(x).consumed == 0 and w.escrow.lots(x).status == OPEN for x in [*expired, extra])
    assert money[1:] == (w.escrow.insurance_fund(w.cld.address), w.escrow.unbacked(w.cld.address))
    _draw(w, w.attacker, cap, 2)
    assert w.escrow.lots(honest).status == CLOSED


# ─── The largest lot ─────────────────────────────────────────────────────────


def test_largest_lot__slashed_and_every_token_bought_back__closed_unused_returns_every_token(world):
    """A lot of 2**128 - 1 units of capacity: slashed, every token (the seller's and the
    treasury's fee) buys back at the fixed share, the fund ends at its rounding dust; the
    same lot closed unused takes back exactly the seller's tokens and forfeits the fee
    share's bond only."""
    w = world
    e, token = w.escrow, w.cld.address
    cap = e.MAX_LOT_AMOUNT()
    face = cap * w.cld.face_value_usd_micro() // 10**18
    while e.quote_mint(token, face + 1)[0] <= cap:
        face += 1
    lot = _crowd_face(w, face)
    L = e.lots(lot)
    assert L.capacity <= cap < e.quote_mint(token, face + 1)[0]
    with boa.env.anchor():
        e.slash(lot, sender=w.attestor)
        assert e.insurance_fund(token) == L.bond and e.unbacked(token) == L.capacity
        got = w.tender(w.sellers[0], w.cld.balanceOf(w.sellers[0])) + w.tender(w.treasury, w.cld.balanceOf(w.treasury))
        assert got == L.bond - e.insurance_fund(token)
        assert e.unbacked(token) == 0 and e.insurance_fund(token) <= 2  # two tenders' rounding
        assert got <= L.bond and w.cld.totalSupply() == 0
    e.request_close(lot, sender=w.sellers[0])
    boa.env.time_travel(seconds=2 * WINDOW)
    mine = w.cld.balanceOf(w.sellers[0])
    w.cld.approve(e.address, mine, sender=w.sellers[0])
    e.finalize_close(lot, sender=w.sellers[0])
    assert w.cld.balanceOf(w.sellers[0]) == 0 and e.unbacked(token) == L.capacity - mine
    forfeit = -(-L.bond * (L.capacity - mine) // L.capacity)
    assert e.insurance_fund(token) == forfeit and w.usdc.balanceOf(w.sellers[0]) == L.bond - forfeit
    assert e.bonds_held() == 0


def _crowd_face(w: EscrowWorld, face: int) -> int:
    bond = w.escrow.tokenized_bond(w.cld.address, face)
    w.usdc.mint(w.sellers[0], bond)
    w.usdc.approve(w.escrow.address, bond, sender=w.sellers[0])
    return w.escrow.open_lot(w.sellers[0], w.cld.address, TOKENIZED, face, now() + 30 * DAY, bond, TERMS, 0,
                             sender=w.attestor)  # fmt: skip


# ─── The insertion walk both ways, and the hint that cures it ────────────────


def _open_hinted(
    w: EscrowWorld, who: str, expiry: int, hint: int | None, face: int = MIN_TOKENIZED_FACE
) -> tuple[int, int]:
    """One tokenized lot of `who` opened with `hint` (None: the 8-argument call, no hint);
    returns (its id, the open's gas)."""
    bond = w.escrow.tokenized_bond(w.cld.address, face)
    w.usdc.mint(who, bond)
    w.usdc.approve(w.escrow.address, bond, sender=who)
    args = (who, w.cld.address, TOKENIZED, face, expiry, bond, TERMS, 0)
    if hint is None:
        lot = w.escrow.open_lot(*args, sender=w.attestor)
    else:
        lot = w.escrow.open_lot(*args, hint, sender=w.attestor)
    return lot, w.escrow._computation.get_gas_used()


def _hint(w: EscrowWorld, expiry: int, page: int = MAX_HINT_STEPS) -> int:
    """The attestor's search (sellers.chain.SellerChain.insert_hint): page back from the tail."""
    hint, start = w.escrow.insert_hint(w.cld.address, expiry, 0, page)
    while start != 0:
        hint, start = w.escrow.insert_hint(w.cld.address, expiry, start, page)
    return hint


def _full_order(w: EscrowWorld) -> list[int]:
    """The whole draw order (draw_order stops at MAX_DRAW_LOTS), walked back from the
    tail by `insert_hint` one lot a page: every lot expires later than time 0."""
    tail, _ = w.escrow.insert_hint(w.cld.address, 2**64 - 1, 0, 1)
    order, start = [], tail
    while start != 0:
        order.append(start)
        _, start = w.escrow.insert_hint(w.cld.address, 0, start, 1)
    return order[::-1]


@deep_only
def test_insertion_walk_both_ways__514_dollar_lots_block_nothing_with_a_hint(world):
    """The finding (cbreak, session 6): 257 lots expiring far out and 257 at the minimum
    validity ($514 of bond) made every new lot of the token expiring between them revert
    "too many lots expire later". With the hint `insert_hint` finds, each opens in its
    place and the whole order stays sorted; without one (or with a hint the crowd has
    since buried under 257 lots) the old walks still refuse it: the hint is the cure."""
    w = world
    assert w.escrow.MAX_INSERT_WALK() == MAX_INSERT_WALK == 256
    far = now() + 20 * 365 * DAY
    tail = _crowd(w, MAX_INSERT_WALK + 1, far)
    head = _crowd(w, MAX_INSERT_WALK + 1, now() + MIN_LOT_VALIDITY)
    bond = w.escrow.tokenized_bond(w.cld.address, MIN_TOKENIZED_FACE)
    assert w.usdc.balanceOf(w.escrow.address) == 2 * (MAX_INSERT_WALK + 1) * bond == 514 * 10**6
    victim = w.sellers[0]
    with boa.reverts("escrow: too many lots expire later"):
        _open_hinted(w, victim, now() + 30 * DAY, None)
    with boa.env.anchor():  # a hint 256 lots stale (all of them expire no later) still opens
        lot, _ = _open_hinted(w, victim, now() + 30 * DAY, head[0])
        assert w.escrow.insert_hint(w.cld.address, now() + 30 * DAY, 0, MAX_HINT_STEPS) == (lot, 0)
    opened, gas = [], []
    for days in (7, 8, 30, 365, 19 * 365, 20 * 365):
        expiry = now() + days * DAY
        hint = _hint(w, expiry)
        lot, used = _open_hinted(w, victim, expiry, hint, face=10_000 * 10**6)
        assert w.escrow.lots(lot).status == OPEN
        opened.append(lot)
        gas.append(used)
    order = _full_order(w)
    # 7 days: after the head crowd (same expiry, by id); 20 years: ties the tail's expiry.
    assert order == [*head, *opened[:5], *tail, opened[5]]
    assert max(gas) < 400_000  # no walk: the ordinary open's gas (~390k with a mint)


def test_hint__inserts_in_one_step_whatever_expires_later__equal_expiries_go_after_by_id(world):
    """A usable hint costs the same gas with 3 or 40 lots expiring later (no walk); the
    new lot goes after every lot of its own expiry (ties by id) and before the rest."""
    w = world
    base = now() + 30 * DAY
    near = _crowd(w, 3, base)
    gas = []
    for later in (3, 40):
        with boa.env.anchor():
            crowd = _crowd(w, later, base + 365 * DAY)
            hint = _hint(w, base)
            assert hint == near[-1]
            lot, used = _open_hinted(w, w.sellers[0], base, hint)
            assert _order(w) == [*near, lot, *crowd]
            gas.append(used)
    assert gas[0] == gas[1]


def test_hint__stale_after_opens_in_between__walks_forward_to_the_right_place(world):
    """The hint was read before three lots expiring no later (one of them at the new
    lot's own expiry) and one expiring later opened: the lot still lands in order."""
    w = world
    base = now() + 30 * DAY
    first = _crowd(w, 2, base)
    hint = _hint(w, base + DAY)
    assert hint == first[-1]
    between = [_crowd(w, 1, base + t)[0] for t in (1, DAY, DAY)]
    later = _crowd(w, 1, base + 2 * DAY)[0]
    lot, _ = _open_hinted(w, w.sellers[0], base + DAY, hint)
    assert _order(w) == [*first, *between, lot, later]


@pytest.mark.parametrize("how", ["other_token", "listed", "pruned", "closing", "expired", "drained", "later", "junk"])
def test_hint__not_usable__falls_back_to_the_walks_and_opens_in_order(world, how):
    """Every unusable hint (another token's lot, a listed lot, one pruned, closing,
    expired and unlinked, drawn empty, one expiring later, an id never opened): the
    lot opens in its place by the ordinary walks, as with no hint, never reverting."""
    w = world
    e, start = w.escrow, now()
    soon = _crowd(w, 1, start + MIN_LOT_VALIDITY, w.sellers[1])[0]
    mid = _crowd(w, 2, start + 20 * DAY)
    last = _crowd(w, 1, start + 60 * DAY)[0]
    expiry = start + 30 * DAY
    if how == "other_token":
        other = TOKEN.deploy("GPT credit", "GPT", "OpenAI", 5_000, e.address, w.vault)
        with boa.env.prank(w.timelock.address):
            e.add_provider(other.address, 1_000)
        bond = e.tokenized_bond(other.address, MIN_TOKENIZED_FACE)
        w.usdc.mint(w.attacker, bond)
        w.usdc.approve(e.address, bond, sender=w.attacker)
        hint = e.open_lot(w.attacker, other.address, TOKENIZED, MIN_TOKENIZED_FACE, start + 20 * DAY, bond, TERMS, 0,
                          sender=w.attestor)  # fmt: skip
    elif how == "listed":
        hint = w.open(w.attacker, kind=2, lifetime=20 * DAY, rate_bps=9_000)
    elif how in ("pruned", "expired"):
        hint = soon
        boa.env.time_travel(seconds=MIN_LOT_VALIDITY + 1)
        expiry = now() + 30 * DAY
        if how == "pruned":
            assert e.prune(w.cld.address, 256) == 1
        else:
            boa.env.time_travel(seconds=GRACE)
            e.prune(w.cld.address, 256)
            e.expire(soon)
    elif how == "closing":
        hint = mid[1]
        e.request_close(hint, sender=w.attacker)
    elif how == "drained":
        hint = soon
        w.cld.transfer(w.attacker, w.cld.balanceOf(w.sellers[1]), sender=w.sellers[1])
        _draw(w, w.attacker, e.lots(soon).capacity, 1)
        assert e.lots(soon).status == CLOSED
    elif how == "later":
        hint = last
    else:
        hint = e.lot_count() + 7
    assert hint not in _order(w) or e.lots(hint).expiry > expiry
    with boa.env.anchor():
        plain, _ = _open_hinted(w, w.sellers[0], expiry, None)
        expected = _order(w)
    lot, _ = _open_hinted(w, w.sellers[0], expiry, hint)
    assert lot == plain and _order(w) == expected
    assert expected.index(lot) == expected.index(last) - 1


def test_insert_hint__pages_back_from_the_tail_and_refuses_a_stale_start(world):
    """`insert_hint` in pages of 2: (0, next) until found, then (the lot, 0); (0, 0)
    when every lot expires later; a start no longer in the order is refused."""
    w = world
    e, token, base = w.escrow, w.cld.address, now() + 30 * DAY
    lots = [_crowd(w, 1, base + i * DAY)[0] for i in range(6)]
    assert e.insert_hint(token, base + 9 * DAY, 0, 1) == (lots[5], 0)  # usually: the tail, at once
    assert e.insert_hint(token, base + DAY, 0, 2) == (0, lots[3])  # walked past lots[5], lots[4]
    assert e.insert_hint(token, base + DAY, lots[3], 2) == (lots[1], 0)  # past lots[3], lots[2]
    assert e.insert_hint(token, base + DAY, lots[3], 1) == (0, lots[2])
    assert e.insert_hint(token, base - 1, 0, MAX_HINT_STEPS) == (0, 0)  # goes first: no hint needed
    assert _hint(w, base + 2 * DAY, page=1) == lots[2]
    e.request_close(lots[3], sender=w.attacker)
    with boa.reverts("escrow: start not in the draw order"):
        e.insert_hint(token, base + DAY, lots[3], 2)
    with boa.reverts("escrow: zero steps"):
        e.insert_hint(token, base + DAY, 0, 0)
    with boa.reverts():
        e.insert_hint(token, base + DAY, 0, MAX_HINT_STEPS + 1)


# ─── The hint attacked (hbreak, session 6) ───────────────────────────────────


def _links_whole(w: EscrowWorld) -> list[int]:
    """The draw order read forward (next links) equals it read back (prev links, by
    `insert_hint`), sorted by (expiry, id); returns it."""
    order = _order(w)
    assert order == _full_order(w)
    keys = [(w.escrow.lots(x).expiry, x) for x in order]
    assert keys == sorted(keys)
    return order


@pytest.mark.parametrize("how", ["own_id", "pruned_second", "listed_same_expiry"])
def test_hint__own_future_id_a_pruned_non_head_lot_a_listed_lot__fall_back_as_without(world, how):
    """The new lot's own id (its Lot is written before `_link` reads the hint: not yet
    linked), the second lot a prune popped (its prev link zeroed, `_first_lot` moved past
    it), a listed lot of the same token expiring at the new lot's expiry: each opens the
    lot where the plain walks put it."""
    w = world
    e, start = w.escrow, now()
    soon = _crowd(w, 2, start + MIN_LOT_VALIDITY, w.sellers[1])
    _crowd(w, 2, start + 20 * DAY)
    last = _crowd(w, 1, start + 60 * DAY)[0]
    expiry = start + 30 * DAY
    if how == "own_id":
        hint = e.lot_count() + 1
    elif how == "pruned_second":
        boa.env.time_travel(seconds=MIN_LOT_VALIDITY + 1)
        expiry = now() + 30 * DAY
        assert e.prune(w.cld.address, 256) == 2
        hint = soon[1]
    else:
        hint = w.open(w.attacker, kind=2, lifetime=30 * DAY, rate_bps=9_000)
        expiry = e.lots(hint).expiry
    with boa.env.anchor():
        plain, _ = _open_hinted(w, w.sellers[0], expiry, None)
        expected = _links_whole(w)
    lot, _ = _open_hinted(w, w.sellers[0], expiry, hint)
    assert lot == plain and _links_whole(w) == expected
    assert expected.index(lot) == expected.index(last) - 1 and (hint == lot or hint not in expected)


def test_hint__the_head_after_a_prune_and_equal_expiries__links_whole_for_every_later_end(world):
    """Hint = the head a prune left (no prev link: linked only as `_first_lot`), at the
    new lot's very expiry: the lot goes after every equal lot (ties by id), before the
    later one. Then a pruned lot as hint, a slash of the head, a close, a draw, a hint at
    the tail's equal expiry, a prune and an expiry: the order read forward and back stays
    whole and sorted after each."""
    w = world
    e, token, start = w.escrow, w.cld.address, now()
    old = _crowd(w, 2, start + MIN_LOT_VALIDITY)
    mid = _crowd(w, 2, start + 20 * DAY)
    last = _crowd(w, 1, start + 60 * DAY)[0]
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + 1)
    assert e.prune(token, 256) == 2 and _links_whole(w) == [*mid, last]
    lot, _ = _open_hinted(w, w.sellers[0], start + 20 * DAY, mid[0])
    assert _links_whole(w) == [*mid, lot, last]
    lot2, _ = _open_hinted(w, w.sellers[1], start + 20 * DAY, old[0])  # pruned head: falls back
    assert _links_whole(w) == [*mid, lot, lot2, last]
    e.slash(mid[0], sender=w.attestor)
    assert _links_whole(w) == [mid[1], lot, lot2, last]
    e.request_close(lot2, sender=w.sellers[1])
    assert _links_whole(w) == [mid[1], lot, last]
    cap = e.lots(mid[1]).capacity
    _draw(w, w.attacker, cap + 1, 1)
    assert e.lots(mid[1]).status == CLOSED and e.lots(lot).consumed == 1
    assert _links_whole(w) == [lot, last]
    tail, _ = _open_hinted(w, w.sellers[1], start + 60 * DAY, lot)  # walks past `last` (equal)
    assert _links_whole(w) == [lot, last, tail]
    boa.env.time_travel(seconds=start + 20 * DAY + 1 - now())
    assert e.prune(token, 256) == 1 and _links_whole(w) == [last, tail]
    boa.env.time_travel(seconds=GRACE)
    e.expire(lot)
    assert e.lots(lot).status == EXPIRED and _links_whole(w) == [last, tail]
    _draw(w, w.attacker, e.lots(last).capacity + 1, 2)
    assert e.lots(last).status == CLOSED and e.lots(tail).consumed == 1 and _links_whole(w) == [tail]


def test_insert_hint__start_pruned_listed_or_another_tokens__refused_start_0_and_the_new_head_page(world):
    """`insert_hint`'s start: a pruned lot (links zeroed), a listed lot of the token and
    the token's lot asked for under another token are refused; 0 is the tail; the head
    left by a prune (no prev link) is a valid start and ends the walk: (0, 0) or itself."""
    w = world
    e, token, start = w.escrow, w.cld.address, now()
    old = _crowd(w, 2, start + MIN_LOT_VALIDITY)
    mid = _crowd(w, 2, start + 20 * DAY)
    listed = w.open(w.attacker, kind=2, lifetime=20 * DAY, rate_bps=9_000)
    boa.env.time_travel(seconds=MIN_LOT_VALIDITY + 1)
    assert e.prune(token, 256) == 2
    for bad in (old[0], old[1], listed):
        with boa.reverts("escrow: start not in the draw order"):
            e.insert_hint(token, start + 30 * DAY, bad, 2)
    with boa.reverts("escrow: start not in the draw order"):
        e.insert_hint(w.usdc.address, start + 30 * DAY, mid[1], 2)
    assert e.insert_hint(token, start + 30 * DAY, 0, 1) == (mid[1], 0)
    assert e.insert_hint(token, start + 20 * DAY - 1, mid[0], 5) == (0, 0)  # goes first
    assert e.insert_hint(token, start + 20 * DAY, mid[0], 1) == (mid[0], 0)
    assert e.insert_hint(token, start + 20 * DAY - 1, 0, 1) == (0, mid[0])  # page ends at the head
    assert e.insert_hint(token, start + 20 * DAY - 1, mid[0], 1) == (0, 0)


@deep_only
def test_hint__256_and_257_lots_behind_0_with_a_huge_list__and_the_hint_closed_by_its_seller(world):
    """257 lots far out and 258 at the minimum validity (the attacker's): hint = 0 for a
    lot expiring first opens at the head (the tail walk gives up, the head walk finds it at
    once); a hint with 256 lots after it expiring no later opens, with 257 it falls back
    and is refused exactly as without a hint. The finding (hbreak): the hint
    `insert_hint` returns is the attacker's last crowd lot; its seller front-runs the open
    with `request_close` (its own call, no attestor needed): the hint is unlinked, the open
    falls back and is refused; one closed lot refuses one open (258 = 257 + 1 refusal),
    not the 257 front-run lots the README stated; the next hint then opens. This pins
    today's behaviour (README: the hint's limit, not fixed): a fix makes the refused open
    succeed; change that assertion then."""
    w = world
    e, start = w.escrow, now()
    head = _crowd(w, MAX_INSERT_WALK + 2, start + MIN_LOT_VALIDITY + 10)
    tail = _crowd(w, MAX_INSERT_WALK + 1, start + 20 * 365 * DAY)  # each expires last: no walk
    victim, expiry = w.sellers[0], start + 30 * DAY
    with boa.env.anchor():
        lot, _ = _open_hinted(w, victim, start + MIN_LOT_VALIDITY, 0)
        assert _order(w)[:2] == [lot, head[0]]
    with boa.env.anchor():
        lot, _ = _open_hinted(w, victim, expiry, head[1])  # 256 lots behind the hint: found
        assert _full_order(w) == [*head, lot, *tail]
    for hint in (head[0], None):  # 257 behind: falls back, refused as without a hint
        with boa.reverts("escrow: too many lots expire later"):
            _open_hinted(w, victim, expiry, hint)
    hint = _hint(w, expiry)
    assert hint == head[-1]
    e.request_close(hint, sender=w.attacker)  # the front-run: one tx of the hint's seller
    with boa.reverts("escrow: too many lots expire later"):
        _open_hinted(w, victim, expiry, hint)
    hint = _hint(w, expiry)
    assert hint == head[-2]
    e.request_close(hint, sender=w.attacker)  # 256 crowd lots left: the fallback walks through
    lot, _ = _open_hinted(w, victim, expiry, hint)
    full = _full_order(w)
    assert full == [*head[:-2], lot, *tail]
