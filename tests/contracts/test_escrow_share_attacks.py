"""Breaking CreditEscrow's "one bond share per token" (361f0a6), as a seller with a friend,
a holder, a keeper, an attestor and the Timelock admin would (issue 19, session 4).

Each test is an attack that must fail, and asserts the amounts that must not move:

- a seller and a friend holding its tokens end with no more USDC than the seller posted,
  whichever way its lot ends (slash, expire, finalized close) after partial use, at tiny
  face values (one micro-dollar, where every rounding is a whole unit) and huge ones;
- the fund is never short: after many lots of every size end every way, every holder of
  every unbacked token is paid the fixed share, in any order, and `unbacked` counts only
  tokens whose lot ended (a buy-back never eats into a live lot's backing);
- the Timelock's levers (fee, minimum bond, treasury, a second attestor, the provider
  added again) leave what existing holders recover unchanged.

Round 2's escrow world and helpers, built once per module (each test runs in a snapshot).
"""

import boa
import pytest
from test_attacks_round2 import (
    CLD_FACE,
    DAY,
    FACE,
    GRACE,
    TOKEN,
    WINDOW,
    EscrowWorld,
    build_escrow_world,
    now,
)  # fmt: skip

from promptex.protocol.escrow import MIN_LOT_VALIDITY, buy_back_payout
from promptex.protocol.escrow import MIN_TOKENIZED_FACE as MIN_FACE
from promptex.protocol.timelock import MIN_DELAY

SHARE_BPS = 1_000  # the world's CLD share
LOTS = 24


@pytest.fixture(scope="module")
def world() -> EscrowWorld:
    """Round 2's world: the escrow (CLD at a 10 % share) handed to a Timelock."""
    return build_escrow_world(SHARE_BPS)


def _draw(w: EscrowWorld, payer: str, amount: int, epoch: int) -> None:
    """A settlement of `amount` CLD: the vault burns `payer`'s tokens and draws as much."""
    w.cld.transfer(w.vault, amount, sender=payer)
    w.cld.burn(amount, sender=w.vault)
    w.escrow.draw(w.cld.address, amount, epoch, sender=w.vault)


def _end(w: EscrowWorld, lot: int, how: str) -> None:
    seller = w.escrow.lots(lot).seller
    if how == "slash":
        w.escrow.slash(lot, sender=w.attestor)
    elif how == "expire":
        expiry = w.escrow.lots(lot).expiry
        boa.env.time_travel(seconds=max(0, expiry + GRACE + 1 - now()))
        w.escrow.expire(lot)
    else:
        w.escrow.request_close(lot, sender=seller)
        boa.env.time_travel(seconds=2 * WINDOW)
        w.cld.approve(w.escrow.address, w.cld.balanceOf(seller), sender=seller)
        w.escrow.finalize_close(lot, sender=seller)


def _books_balance(w: EscrowWorld) -> None:
    """The escrow holds exactly its open bonds and its fund, and the fund every unbacked
    token's fixed share."""
    token = w.cld.address
    fund = w.escrow.insurance_fund(token)
    held = w.escrow.bonds_held() + fund + w.escrow.forfeited(token)
    assert w.usdc.balanceOf(w.escrow.address) == held
    assert fund >= buy_back_payout(w.escrow.unbacked(token), CLD_FACE, SHARE_BPS)


@pytest.mark.parametrize("how", ["slash", "expire", "close"])
@pytest.mark.parametrize("face", [MIN_FACE, MIN_FACE + 7, FACE + 13, 10**21 + 1])
def test_seller_and_friend__every_end_at_tiny_and_huge_face__recover_at_most_what_it_posted(world, how, face):
    """The seller gives its friend half its tokens; a third of its lot is drawn by a
    stranger's usage (the vault burns the stranger's tokens from another, later lot);
    then the lot ends. Seller + friend: the bond released, what the end pays, and every
    token either still holds tendered to the fund — at most the bond posted. The
    stranger's and the treasury's unbacked tokens still get the full share."""
    w = world
    seller, friend, stranger = w.sellers[0], w.sellers[1], w.holder
    market = w.open(w.attacker, face=max(face, FACE) * 3, lifetime=60 * DAY)  # expires last: drawn last
    w.cld.transfer(stranger, w.escrow.lots(market).seller_minted, sender=w.attacker)
    lot = w.open(seller, face=face, lifetime=MIN_LOT_VALIDITY)
    posted, capacity, minted = (w.escrow.lots(lot).bond, w.escrow.lots(lot).capacity,
                                w.escrow.lots(lot).seller_minted)  # fmt: skip
    keep = -(-minted * 2 // 3) + 1  # enough to return its share of what remains on a close
    w.cld.transfer(friend, minted - keep, sender=seller)
    if capacity // 3:
        _draw(w, stranger, capacity // 3, 1)
    _end(w, lot, how)
    got = w.usdc.balanceOf(seller) + w.usdc.balanceOf(friend)
    for who in (seller, friend):
        mine = min(w.cld.balanceOf(who), w.escrow.unbacked(w.cld.address))
        if buy_back_payout(mine, CLD_FACE, SHARE_BPS):
            got += w.tender(who, mine)
    assert got <= posted
    _books_balance(w)
    # Whatever the pair took, every other unbacked token is still paid its share, exactly.
    rest = w.escrow.unbacked(w.cld.address)
    fund = w.escrow.insurance_fund(w.cld.address)
    quote = buy_back_payout(rest, CLD_FACE, SHARE_BPS)
    assert fund >= quote
    if quote:
        holder = stranger if w.cld.balanceOf(stranger) >= rest else w.treasury
        if w.cld.balanceOf(holder) >= rest:
            assert w.tender(holder, rest) == quote


def test_fund__two_dozen_lots_of_every_size_end_every_way__every_holder_paid_the_share_in_any_order(world):
    """Dust lots (one micro-dollar: capacity and bond whole units apart), odd sizes and
    one huge lot, each drawn partly (nearest expiry first) and ended by slash, expiry or
    close, their tokens spread over holders; then every holder tenders all it can, in
    reverse order and in uneven pieces. No tender is refused while unbacked tokens are
    left, each pays the fixed share of what it tendered, and the fund keeps only
    rounding."""
    w = world
    holders = [w.holder, w.sellers[2], w.treasury]
    sizes = [MIN_FACE + n for n in (0, 1, 2, 5, 9, 11, 999, 4_219)] + [FACE + 1, 10**21 + 7]
    lots = []
    for i in range(LOTS):
        seller = w.sellers[i % 2]
        lot = w.open(seller, face=sizes[i % len(sizes)], lifetime=MIN_LOT_VALIDITY + i * DAY)
        lots.append(lot)
        minted = w.escrow.lots(lot).seller_minted
        w.cld.transfer(holders[i % 2], minted // 3, sender=seller)
    # Usage draws the nearest lots first: a burn of a holder's tokens, a few settlements.
    total = sum(w.escrow.lots(lot).capacity for lot in lots)
    for epoch, part in enumerate((total // 1_000, total // 997 + 3, 5), start=1):
        payer = max(holders[:2], key=w.cld.balanceOf)
        _draw(w, payer, min(part, w.cld.balanceOf(payer)), epoch)
    ends = ("slash", "close", "expire")
    for i, lot in enumerate(lots):
        if w.escrow.lots(lot).status == 1:  # still open (a draw may have emptied it)
            how = ends[i % 3]
            if how == "close" and w.escrow.lots(lot).close_at:
                how = "slash"
            seller = w.escrow.lots(lot).seller
            if how == "close":
                remaining = w.escrow.lots(lot).capacity - w.escrow.lots(lot).consumed
                need = -(-w.escrow.lots(lot).seller_minted * remaining // w.escrow.lots(lot).capacity)
                if w.cld.balanceOf(seller) < need:
                    how = "slash"
            _end(w, lot, how)
        _books_balance(w)
    token = w.cld.address
    for who in reversed([*holders, *w.sellers]):
        balance = w.cld.balanceOf(who)
        for piece in (balance // 7, balance // 3, balance):
            piece = min(piece, w.cld.balanceOf(who), w.escrow.unbacked(token))
            if buy_back_payout(piece, CLD_FACE, SHARE_BPS) == 0:
                continue
            fund = w.escrow.insurance_fund(token)
            paid = w.tender(who, piece)
            assert paid == buy_back_payout(piece, CLD_FACE, SHARE_BPS)
            assert w.escrow.insurance_fund(token) == fund - paid
            _books_balance(w)
    # Everything unbacked that is worth a unit was paid; what the fund keeps is rounding.
    assert buy_back_payout(w.escrow.unbacked(token), CLD_FACE, SHARE_BPS) <= 1
    assert w.escrow.insurance_fund(token) <= 2 * LOTS + 3 * 7 + 2  # each lot's ceilings, each tender's floor


def test_unbacked__counts_only_ended_lots__a_buy_back_never_eats_a_live_lots_backing(world):
    """A holder of a live lot's tokens tenders them after another lot failed: it is paid
    only the share (its own loss, never the fund's), `unbacked` never exceeds what ended,
    the live lot's whole remaining capacity is still drawable and the failed lot's
    holders, now backed by it, spend their tokens at face."""
    w = world
    live = w.open(w.sellers[0], face=FACE, lifetime=30 * DAY)
    failed = w.open(w.sellers[1], face=FACE, lifetime=MIN_LOT_VALIDITY)
    _draw(w, w.sellers[1], w.escrow.lots(failed).capacity // 4, 1)
    w.escrow.slash(failed, sender=w.attestor)
    token = w.cld.address
    lost = w.escrow.lots(failed).capacity - w.escrow.lots(failed).consumed
    assert w.escrow.unbacked(token) == lost  # not a unit of the live lot's capacity
    supply = w.cld.totalSupply()
    assert supply == w.escrow.remaining(live) + lost
    with boa.reverts("escrow: more than unbacked"):
        w.escrow.buy_back_unbacked(token, lost + 1, sender=w.sellers[0])
    # The live lot's seller tenders its own (backed) tokens up to the unbacked count.
    paid = w.tender(w.sellers[0], lost)
    assert paid == buy_back_payout(lost, CLD_FACE, SHARE_BPS)
    assert w.escrow.unbacked(token) == 0 and w.escrow.insurance_fund(token) >= 0
    # The failed lot's holder's tokens are now all backed by the live lot: spent at face.
    assert w.escrow.drawable(token) == w.escrow.remaining(live) == w.cld.totalSupply()
    _draw(w, w.sellers[1], w.cld.balanceOf(w.sellers[1]), 2)
    _books_balance(w)


def test_timelock_levers__fee_bond_treasury_attestor_share__leave_existing_holders_recovery_unchanged(world):
    """Before the levers move: one lot failed (holders owed the share), one live. The
    Timelock then raises the fee to its cap, the minimum bond to 100 %, names the attacker
    treasury and attestor, and tries to add CLD again at another share. The failed lot's
    holders get exactly the quote of before; the live lot, failing after, pays the same
    rate; the attacker-attestor's own lots cannot change it."""
    w = world
    token = w.cld.address
    failed = w.open(w.sellers[0], face=FACE, lifetime=MIN_LOT_VALIDITY)
    live = w.open(w.sellers[1], face=FACE, lifetime=30 * DAY)
    w.escrow.slash(failed, sender=w.attestor)
    owed = w.escrow.unbacked(token)
    quote = w.escrow.quote_buy_back(token, owed)
    esc = w.escrow
    for data in (
        esc.set_mint_fee_bps.prepare_calldata(100),
        esc.set_min_bond_bps.prepare_calldata(10_000),
        esc.set_treasury.prepare_calldata(w.attacker),
        esc.grant_attestor.prepare_calldata(w.attacker),
    ):
        w.through_timelock(esc.address, data)
    again = esc.add_provider.prepare_calldata(token, 10_000)
    salt = b"\x00" * 32
    w.timelock.schedule(esc.address, 0, again, salt, salt, MIN_DELAY, sender=w.proposer)  # scheduling is open
    boa.env.time_travel(seconds=MIN_DELAY)
    with boa.reverts("escrow: provider already added"):  # the share is the token's for good
        w.timelock.execute(esc.address, 0, again, salt, salt)
    assert esc.token_bond_bps(token) == SHARE_BPS
    assert esc.quote_buy_back(token, owed) == quote
    # The attacker, now attestor and treasury, opens its own lot and slashes it: same rate.
    own = w.open(w.attacker, face=FACE, lifetime=30 * DAY)
    esc.slash(own, sender=w.attacker)
    esc.slash(live, sender=w.attacker)
    everything = esc.unbacked(token)
    assert esc.quote_buy_back(token, everything) == buy_back_payout(everything, CLD_FACE, SHARE_BPS)
    first = w.cld.balanceOf(w.sellers[0])
    assert w.tender(w.sellers[0], first) == buy_back_payout(first, CLD_FACE, SHARE_BPS)
    _books_balance(w)
    # Whoever holds the rest (sellers, the old treasury's fees, the attacker) is paid the rate.
    for who in (w.treasury, w.sellers[1], w.attacker):
        mine = min(w.cld.balanceOf(who), esc.unbacked(token))
        if mine:
            assert w.tender(who, mine) == buy_back_payout(mine, CLD_FACE, SHARE_BPS)
    assert w.usdc.balanceOf(w.attacker) <= esc.lots(own).bond  # its own bond back at most


@pytest.mark.parametrize("how", ["slash", "expire", "close"])
def test_lots_of_capacity_two__a_token_worth_ten_micro_dollars_a_unit__every_unit_paid_its_share(world, how):
    """The smallest lots: a token whose 10**-18 unit is worth $5 (added through the
    Timelock at the 10 % share), lots of the smallest face, $10: two units (one the
    seller's, one the fee). Every unit left unbacked is paid its share, $0.50, by whoever
    tenders first or last; the seller recovers at most its own unit's share of the two
    it posted."""
    w = world
    face = MIN_FACE * 10**18 // 2  # USD micro per whole token: $5 per unit
    with boa.env.prank(w.deployer):
        tiny = TOKEN.deploy("Tiny credit", "TNY", "Tiny", face, w.escrow.address, w.vault)
    w.through_timelock(w.escrow.address, w.escrow.add_provider.prepare_calldata(tiny.address, SHARE_BPS))
    seller = w.sellers[0]
    bond = w.escrow.tokenized_bond(tiny.address, MIN_FACE)
    assert bond == MIN_FACE // 10 and w.escrow.quote_mint(tiny.address, MIN_FACE) == (2, 1, 1)
    w.usdc.mint(seller, bond)
    w.usdc.approve(w.escrow.address, bond, sender=seller)
    lot = w.escrow.open_lot(seller, tiny.address, 1, MIN_FACE, now() + MIN_LOT_VALIDITY, bond, b"\x11" * 32, 0,
                            sender=w.attestor)  # fmt: skip
    if how == "slash":
        w.escrow.slash(lot, sender=w.attestor)
    elif how == "expire":
        boa.env.time_travel(seconds=MIN_LOT_VALIDITY + GRACE + 1)
        w.escrow.expire(lot)
    else:
        w.escrow.request_close(lot, sender=seller)
        boa.env.time_travel(seconds=2 * WINDOW)
        tiny.approve(w.escrow.address, 1, sender=seller)
        w.escrow.finalize_close(lot, sender=seller)  # burns its one unit; the fee's unit is unbacked
    paid = 0
    for who in (w.treasury, seller):  # the fee's unit first, then the seller's (if still out)
        if tiny.balanceOf(who) and w.escrow.unbacked(tiny.address):
            tiny.approve(w.escrow.address, 1, sender=who)
            w.escrow.buy_back_unbacked(tiny.address, 1, sender=who)
            paid += 1
            assert w.usdc.balanceOf(who) >= bond // 2  # $0.50 per unit: the share, not rounded away
    assert w.escrow.unbacked(tiny.address) == 0 and w.escrow.insurance_fund(tiny.address) == 0
    assert w.usdc.balanceOf(seller) <= bond // 2  # the fee unit's share went to the treasury's unit
    _books_balance(w)
