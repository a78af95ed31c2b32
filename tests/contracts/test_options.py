"""Options through ape, over the real DEX and Oracle: deployment, series creation,
writing, the premium (offers and fills), unwinding, settlement at the TWAP over the
window ending at expiry, claims and reclaims, every event, and the failures of each
value path. Attacks (spot moved inside one block, settling twice, a friendlier
observation pair) are in test_options_attacks.py."""

from math import isqrt

import ape
import pytest

from fixtures.options import CALL_CAP, CALL_COLLATERAL, CALL_SIZE, CALL_STRIKE, CLD_SPOT, GPT_SPOT, PUT_COLLATERAL
from promptex.chain.options import read_observations, settle
from promptex.protocol import options as helpers
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.dex import LOCAL_ORACLE_PERIOD as PERIOD
from promptex.protocol.options import CALL, PUT, Terms
from promptex.protocol.options import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.units import DAY
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.units import WAD as FIXED

PREMIUM = 150 * USD  # per unit of the CLD call


@pytest.fixture
def move_price(router, lp, chain):
    """Trade `token`'s USDC pool (as lp) until its spot price is about `target` (Oracle units)."""

    def _move(pool, token, usdc, target):
        reserve0, reserve1, _ = pool.get_reserves()
        tokens, dollars = (reserve0, reserve1) if pool.token0() == token.address else (reserve1, reserve0)
        k = tokens * dollars
        wanted = isqrt(target * k // helpers.PRICE_SCALE)
        deadline = chain.pending_timestamp + 3_600
        if wanted > dollars:
            amount, path = (wanted - dollars) * 1_003 // 1_000, [usdc, token]
        else:
            amount, path = (k // wanted - tokens) * 1_003 // 1_000, [token, usdc]
        path[0].approve(router, amount, sender=lp)
        router.swap_exact_in(amount, 0, path, [DEFAULT_FEE], lp, deadline, sender=lp)

    return _move


def offer(options, series_id, units, premium, sender):
    """Make an offer; returns its id."""
    options.offer(series_id, units, premium, sender=sender)
    return options.offer_count()


# ─── Deployment ──────────────────────────────────────────────────────────────


def test_deploy__parameters_and_constants__recorded_and_mirrored(options, oracle, usdc):
    assert (options.usdc(), options.oracle(), options.twap_window()) == (usdc.address, oracle.address, TWAP_WINDOW)
    assert (options.CALL(), options.PUT()) == (helpers.CALL, helpers.PUT)
    assert (options.MAX_TERM(), options.MAX_VALUE()) == (helpers.MAX_TERM, helpers.MAX_VALUE)
    assert (options.PRICE_SCALE(), options.ORACLE_CARDINALITY()) == (helpers.PRICE_SCALE, oracle.CARDINALITY())
    assert (options.offer_count(), options.total_collateral()) == (0, 0)


def test_deploy__no_admin_and_no_mint_path__exposed(options):
    names = {item.name for item in options.contract_type.abi if getattr(item, "name", None)}
    assert names.isdisjoint({"safe_mint", "safe_mint_batch", "set_minter", "burn", "set_uri", "transfer_ownership"})
    assert "safeTransferFrom" in names and "balanceOf" in names


@pytest.mark.parametrize(
    "window, reason",
    [
        (PERIOD - 1, "options: twap window below oracle period"),
        (PERIOD * 16 + 1, "options: twap window too long"),
    ],
)
def test_deploy__bad_window__reverts(project, admin, oracle, usdc, window, reason):
    with ape.reverts(reason):
        admin.deploy(project.Options, usdc, oracle, window)


def test_deploy__collateral_not_the_oracle_quote_asset__reverts(project, admin, oracle, plain):
    with ape.reverts("options: oracle does not quote usdc"):
        admin.deploy(project.Options, plain[0], oracle, TWAP_WINDOW)


def test_deploy__oracle_without_code__reverts(project, admin, usdc, attacker):
    with ape.reverts("options: oracle has no code"):
        admin.deploy(project.Options, usdc, attacker, TWAP_WINDOW)


# ─── Series ──────────────────────────────────────────────────────────────────


def test_create_series__capped_call__stored_logged_and_id_mirrored(options, call_terms, keeper):
    receipt = options.create_series(*call_terms.args(), sender=keeper)
    assert call_terms.id == options.series_id(*call_terms.args())
    s = options.series(call_terms.id)
    assert (s.token, s.kind, s.strike, s.bound, s.expiry, s.size) == call_terms.args()
    assert s.collateral_per_unit == CALL_COLLATERAL == call_terms.collateral_per_unit
    assert (s.settled, s.settlement_price, s.payout_per_unit) == (False, 0, 0)
    event = options.SeriesCreated.from_receipt(receipt)[0]
    assert (event.series_id, event.token, event.kind, event.collateral_per_unit) == (
        call_terms.id,
        call_terms.token,
        CALL,
        CALL_COLLATERAL,
    )


def test_create_series__put_without_floor__collateral_is_strike_times_size(options, put_terms, keeper):
    options.create_series(*put_terms.args(), sender=keeper)
    assert options.series(put_terms.id).collateral_per_unit == PUT_COLLATERAL == put_terms.collateral_per_unit


def test_create_series__same_terms_twice__reverts(options, call_terms, keeper, attacker):
    options.create_series(*call_terms.args(), sender=keeper)
    with ape.reverts("options: series exists"):
        options.create_series(*call_terms.args(), sender=attacker)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"kind": 0}, "options: unknown kind"),
        ({"kind": 3}, "options: unknown kind"),
        ({"bound": CALL_STRIKE}, "options: cap not above strike"),
        ({"kind": PUT, "bound": CALL_STRIKE}, "options: floor not below strike"),
        ({"size": 0}, "options: zero size"),
        ({"size": CALL_SIZE + 1}, "options: collateral not a whole usdc unit"),
        ({"strike": 2**127}, "options: value too large"),
        ({"size": 2**127, "bound": CALL_STRIKE + 10**36}, "options: value too large"),
        ({"expiry": 0}, "options: expiry in the past"),
        ({"expiry": helpers.MAX_TERM + 2}, "options: expiry too far"),
    ],
)
def test_create_series__bad_terms__reverts(options, call_terms, keeper, chain, change, reason):
    fields = dict(zip(("token", "kind", "strike", "bound", "expiry", "size"), call_terms.args(), strict=True))
    fields.update(change)
    if fields["expiry"] == helpers.MAX_TERM + 2:
        fields["expiry"] = chain.pending_timestamp + helpers.MAX_TERM + 2
    with ape.reverts(reason):
        options.create_series(*fields.values(), sender=keeper)


def test_create_series__token_the_oracle_does_not_track__reverts(options, plain, keeper, chain):
    terms = Terms(plain[0].address, CALL, CALL_STRIKE, CALL_CAP, chain.pending_timestamp + DAY, CALL_SIZE)
    with ape.reverts("options: token not tracked by oracle"):
        options.create_series(*terms.args(), sender=keeper)


# ─── Writing ─────────────────────────────────────────────────────────────────


def test_write__collateral__pulled_exactly_units_minted_and_logged(options, call_terms, writer, usdc, keeper):
    options.create_series(*call_terms.args(), sender=keeper)
    before = usdc.balanceOf(writer)
    receipt = options.write(call_terms.id, 7, sender=writer)
    assert before - usdc.balanceOf(writer) == 7 * CALL_COLLATERAL == usdc.balanceOf(options)
    assert options.balanceOf(writer, call_terms.id) == 7 == options.total_supply(call_terms.id)
    assert options.written(call_terms.id, writer) == 7
    assert options.collateral(call_terms.id) == options.total_collateral() == 7 * CALL_COLLATERAL
    event = options.Written.from_receipt(receipt)[0]
    assert (event.series_id, event.writer, event.units, event.collateral) == (
        call_terms.id,
        writer.address,
        7,
        7 * CALL_COLLATERAL,
    )


def test_write__without_usdc_allowance__reverts_and_mints_nothing(options, call_terms, keeper, attacker, usdc):
    options.create_series(*call_terms.args(), sender=keeper)
    usdc.mint(attacker, 10**6 * USD, sender=attacker)
    with ape.reverts("erc20: insufficient allowance"):
        options.write(call_terms.id, 1, sender=attacker)
    assert options.total_supply(call_terms.id) == 0


def test_write__short_of_usdc__reverts(options, call_terms, keeper, attacker, usdc):
    options.create_series(*call_terms.args(), sender=keeper)
    usdc.approve(options, 2**256 - 1, sender=attacker)
    usdc.mint(attacker, CALL_COLLATERAL - 1, sender=attacker)
    with ape.reverts("erc20: transfer amount exceeds balance"):
        options.write(call_terms.id, 1, sender=attacker)


def test_write__unknown_series_zero_units_or_expired__reverts(options, written, call_terms, writer, chain):
    series = written(1)
    with ape.reverts("options: unknown series"):
        options.write(series + 1, 1, sender=writer)
    with ape.reverts("options: zero units"):
        options.write(series, 0, sender=writer)
    chain.pending_timestamp = call_terms.expiry
    with ape.reverts("options: series expired"):
        options.write(series, 1, sender=writer)


def test_write__two_writers__each_short_recorded(options, written, writer, holder):
    series = written(3)
    written(2, by=holder)
    assert (options.written(series, writer), options.written(series, holder)) == (3, 2)
    assert options.collateral(series) == 5 * CALL_COLLATERAL


# ─── Premium: offers and fills ───────────────────────────────────────────────


def test_buy__offer__premium_to_seller_units_to_buyer_and_logged(options, written, writer, holder, usdc):
    series = written(10)
    offered = options.Offered.from_receipt(options.offer(series, 6, PREMIUM, sender=writer))[0]
    offer_id = options.offer_count()
    assert offer_id == offered.offer_id == 1
    assert (offered.series_id, offered.seller, offered.units, offered.premium_per_unit) == (
        series,
        writer.address,
        6,
        PREMIUM,
    )
    writer_usdc, holder_usdc, held = usdc.balanceOf(writer), usdc.balanceOf(holder), usdc.balanceOf(options)
    receipt = options.buy(offer_id, 4, sender=holder)
    assert usdc.balanceOf(writer) - writer_usdc == 4 * PREMIUM == holder_usdc - usdc.balanceOf(holder)
    assert usdc.balanceOf(options) == held  # premiums never pass through Options
    assert (options.balanceOf(holder, series), options.balanceOf(writer, series)) == (4, 6)
    o = options.offers(offer_id)
    assert (o.seller, o.series_id, o.units, o.premium_per_unit) == (writer.address, series, 2, PREMIUM)
    event = options.Bought.from_receipt(receipt)[0]
    assert (event.offer_id, event.buyer, event.seller, event.units, event.premium) == (
        offer_id,
        holder.address,
        writer.address,
        4,
        4 * PREMIUM,
    )
    options.buy(offer_id, 2, sender=holder)
    with ape.reverts("options: offer closed"):
        options.buy(offer_id, 1, sender=holder)


def test_buy__any_holder_resells__second_hand_premium(options, written, writer, holder, keeper, usdc):
    series = written(2)
    options.buy(offer(options, series, 2, PREMIUM, sender=writer), 2, sender=holder)
    resale = offer(options, series, 1, 2 * PREMIUM, sender=holder)
    usdc.mint(keeper, 2 * PREMIUM, sender=keeper)
    usdc.approve(options, 2 * PREMIUM, sender=keeper)
    options.buy(resale, 1, sender=keeper)
    assert (options.balanceOf(keeper, series), usdc.balanceOf(keeper)) == (1, 0)


def test_buy__zero_premium_offer__units_given(options, written, writer, holder, usdc):
    series = written(1)
    before = usdc.balanceOf(holder)
    options.buy(offer(options, series, 1, 0, sender=writer), 1, sender=holder)
    assert (options.balanceOf(holder, series), usdc.balanceOf(holder)) == (1, before)


def test_buy__failures__revert_and_move_nothing(options, written, writer, holder, attacker, chain, call_terms):
    series = written(5)
    offer_id = offer(options, series, 3, PREMIUM, sender=writer)
    with ape.reverts("options: offer too small"):
        options.buy(offer_id, 4, sender=holder)
    with ape.reverts("options: zero units"):
        options.buy(offer_id, 0, sender=holder)
    with ape.reverts("options: own offer"):
        options.buy(offer_id, 1, sender=writer)
    with ape.reverts("options: offer closed"):
        options.buy(offer_id + 1, 1, sender=holder)
    with ape.reverts("erc20: insufficient allowance"):
        options.buy(offer_id, 1, sender=attacker)  # holds no approval
    chain.pending_timestamp = call_terms.expiry
    with ape.reverts("options: series expired"):
        options.buy(offer_id, 1, sender=holder)
    assert options.balanceOf(writer, series) == 5 and options.offers(offer_id).units == 3


def test_buy__seller_moved_its_units__reverts(options, written, writer, holder, attacker):
    series = written(2)
    offer_id = offer(options, series, 2, PREMIUM, sender=writer)
    options.safeTransferFrom(writer, attacker, series, 2, b"", sender=writer)
    with ape.reverts("options: seller lacks units"):
        options.buy(offer_id, 1, sender=holder)


def test_offer__failures__revert(options, written, writer, chain, call_terms):
    series = written(1)
    with ape.reverts("options: unknown series"):
        options.offer(series + 1, 1, PREMIUM, sender=writer)
    with ape.reverts("options: zero units"):
        options.offer(series, 0, PREMIUM, sender=writer)
    with ape.reverts("options: value too large"):
        options.offer(series, 1, 2**127, sender=writer)
    chain.pending_timestamp = call_terms.expiry
    with ape.reverts("options: series expired"):
        options.offer(series, 1, PREMIUM, sender=writer)


def test_cancel_offer__seller__closes_it_others_cannot(options, written, writer, holder, attacker):
    series = written(2)
    offer_id = offer(options, series, 2, PREMIUM, sender=writer)
    with ape.reverts("options: not the seller"):
        options.cancel_offer(offer_id, sender=attacker)
    receipt = options.cancel_offer(offer_id, sender=writer)
    assert options.OfferCancelled.from_receipt(receipt)[0].units_left == 2
    with ape.reverts("options: offer closed"):
        options.buy(offer_id, 1, sender=holder)
    with ape.reverts("options: offer closed"):
        options.cancel_offer(offer_id, sender=writer)


# ─── Unwinding ───────────────────────────────────────────────────────────────


def test_unwind__writer_holding_units__full_collateral_back(options, written, writer, usdc):
    series = written(5)
    before = usdc.balanceOf(writer)
    receipt = options.unwind(series, 3, sender=writer)
    assert usdc.balanceOf(writer) - before == 3 * CALL_COLLATERAL
    assert options.written(series, writer) == options.balanceOf(writer, series) == options.total_supply(series) == 2
    assert options.collateral(series) == 2 * CALL_COLLATERAL == usdc.balanceOf(options)
    assert options.Unwound.from_receipt(receipt)[0].collateral == 3 * CALL_COLLATERAL


def test_unwind__failures__revert(options, written, writer, holder, settle_series, call_terms):
    series = written(4)
    options.buy(offer(options, series, 3, PREMIUM, sender=writer), 3, sender=holder)
    with ape.reverts("options: not written by caller"):
        options.unwind(series, 1, sender=holder)  # holds units, wrote none
    with ape.reverts("options: not written by caller"):
        options.unwind(series, 5, sender=writer)
    with ape.reverts("erc1155: burn amount exceeds balance"):
        options.unwind(series, 2, sender=writer)  # wrote 4, holds 1
    with ape.reverts("options: zero units"):
        options.unwind(series, 0, sender=writer)
    settle_series(call_terms)
    with ape.reverts("options: series settled"):
        options.unwind(series, 1, sender=writer)


# ─── Settlement ──────────────────────────────────────────────────────────────


def test_settle__flat_market__twap_of_the_window_and_logged(options, oracle, written, settle_series, call_terms):
    series = written(1)
    receipt = settle_series(call_terms)
    observations = read_observations(oracle, call_terms.token)
    expected = helpers.settlement_price(observations, receipt.timestamp, call_terms.expiry, TWAP_WINDOW)
    s = options.series(series)
    assert s.settled and s.settlement_price == expected
    assert abs(expected - CLD_SPOT) <= CLD_SPOT // 10**9  # the pool did not move
    assert s.payout_per_unit == call_terms.payout_per_unit(expected)
    assert 0 < s.payout_per_unit < CALL_COLLATERAL  # strike $0.004 < $0.004218 < cap
    event = options.Settled.from_receipt(receipt)[0]
    assert (event.price, event.payout_per_unit, event.late) == (expected, s.payout_per_unit, False)
    assert (event.start_time, event.end_time) == (call_terms.expiry - TWAP_WINDOW, call_terms.expiry)


@pytest.mark.parametrize(
    "dollars, expect",
    [
        ("0.005", "inside"),  # between strike and cap: pays price − strike
        ("0.009", "capped"),  # above the cap: pays cap − strike, all the collateral
        ("0.003", "zero"),  # below the strike: worthless
    ],
)
def test_settle__capped_call__payout_follows_the_twap(
    options, written, settle_series, call_terms, move_price, markets, usdc, dollars, expect
):
    series = written(1)
    move_price(markets[3], markets[0], usdc, helpers.price_of_dollars(dollars))
    settle_series(call_terms)
    s = options.series(series)
    assert s.payout_per_unit == call_terms.payout_per_unit(s.settlement_price)
    if expect == "inside":
        assert abs(s.settlement_price - helpers.price_of_dollars(dollars)) < helpers.price_of_dollars(dollars) // 100
        assert s.payout_per_unit == (s.settlement_price - CALL_STRIKE) * CALL_SIZE // helpers.PRICE_SCALE
    elif expect == "capped":
        assert s.payout_per_unit == CALL_COLLATERAL
    else:
        assert s.payout_per_unit == 0


@pytest.mark.parametrize("dollars, capped", [("3.2", False), ("1.0", True)])
def test_settle__put_with_floor__payout_follows_the_twap(
    options, put_terms, writer, keeper, settle_series, move_price, markets, usdc, dollars, capped
):
    floored = Terms(put_terms.token, PUT, put_terms.strike, 2_500_000 * FIXED, put_terms.expiry, put_terms.size)
    options.create_series(*floored.args(), sender=keeper)
    options.write(floored.id, 1, sender=writer)
    move_price(markets[4], markets[1], usdc, helpers.price_of_dollars(dollars))
    settle_series(floored)
    s = options.series(floored.id)
    assert s.settlement_price < GPT_SPOT
    assert s.payout_per_unit == floored.payout_per_unit(s.settlement_price) > 0
    if capped:  # below the $2.50 floor: strike − floor, all the collateral
        assert s.payout_per_unit == floored.collateral_per_unit == 1_000 * USD


def test_settle__at_expiry_or_unknown__reverts(options, oracle, written, call_terms, chain, keeper):
    series = written(1)
    chain.pending_timestamp = call_terms.expiry  # an update may still land in the expiry second
    with ape.reverts("options: not expired"):
        options.settle(series, 1, 0, sender=keeper)
    with ape.reverts("options: unknown series"):
        options.settle(series + 1, 1, 0, sender=keeper)


def test_settle__last_update_a_second_before_expiry__settles_with_no_update_after(
    options, oracle, written, call_terms, chain, keeper, observe_through
):
    series = written(1)
    observe_through(call_terms.token, call_terms.expiry - TWAP_WINDOW - PERIOD - 1, call_terms.expiry - 1)
    count = oracle.observation_count(call_terms.token)
    chain.mine(1, timestamp=call_terms.expiry + 5)
    assert options.settlement_ranks(series) == (10, 0)  # no observation after expiry is needed
    receipt = settle(options, series, keeper)
    assert oracle.observation_count(call_terms.token) == count  # and none was recorded
    event = options.Settled.from_receipt(receipt)[0]
    assert (event.start_time, event.end_time, event.late) == (
        call_terms.expiry - TWAP_WINDOW - 1,
        call_terms.expiry - 1,
        False,
    )


def test_settle__window_start_overwritten__settles_late_at_the_twap_then(
    options, oracle, written, call_terms, chain, keeper, observe_through
):
    series = written(1)
    # Updates every period from the window's start until the ring (64) has dropped it.
    observe_through(call_terms.token, call_terms.expiry - TWAP_WINDOW, call_terms.expiry + 54 * PERIOD)
    chain.pending_timestamp = call_terms.expiry + 54 * PERIOD + 1
    count = oracle.observation_count(call_terms.token)
    start, end = helpers.settlement_ranks(
        read_observations(oracle, call_terms.token), chain.pending_timestamp, call_terms.expiry, TWAP_WINDOW
    )
    assert (start, end) == (count, 54)  # the end (at expiry) is still held, the start is not
    chain.mine(1, timestamp=chain.pending_timestamp)
    assert options.settlement_ranks(series) == (count, 54)
    chain.pending_timestamp += 1
    receipt = options.settle(series, start, end, sender=keeper)
    event = options.Settled.from_receipt(receipt)[0]
    assert event.late and (event.start_time, event.end_time) == (0, 0)
    twap = oracle.consult(call_terms.token, TWAP_WINDOW)  # same block state as the settlement
    assert options.series(series).settlement_price == event.price == twap
    assert options.series(series).payout_per_unit == call_terms.payout_per_unit(twap)


def test_settle__nothing_before_expiry_retained__settles_late(
    options, oracle, written, call_terms, chain, keeper, observe_through
):
    series = written(1)
    observe_through(call_terms.token, call_terms.expiry + PERIOD, call_terms.expiry + 65 * PERIOD)
    chain.pending_timestamp = call_terms.expiry + 65 * PERIOD + 1
    count = oracle.observation_count(call_terms.token)
    chain.mine(1, timestamp=chain.pending_timestamp)
    assert options.settlement_ranks(series) == (count, count)
    with ape.reverts("options: bad ranks"):
        options.settle(series, count + 1, count, sender=keeper)
    options.settle(series, count, count, sender=keeper)
    assert options.series(series).settled


def test_settle__late_claimed_while_the_window_is_held__reverts(
    options, oracle, written, call_terms, chain, keeper, observe_through
):
    series = written(1)
    observe_through(call_terms.token, call_terms.expiry - TWAP_WINDOW - PERIOD, call_terms.expiry + PERIOD)
    chain.pending_timestamp = call_terms.expiry + PERIOD + 1
    count = oracle.observation_count(call_terms.token)
    start, end = helpers.settlement_ranks(
        read_observations(oracle, call_terms.token), chain.pending_timestamp, call_terms.expiry, TWAP_WINDOW
    )
    with ape.reverts("options: bad start rank"):
        options.settle(series, count, end, sender=keeper)  # "start not retained": it is
    with ape.reverts("options: bad end rank"):
        options.settle(series, start, count, sender=keeper)  # "nothing before expiry": there is
    with ape.reverts("options: bad end rank"):
        options.settle(series, count, count, sender=keeper)
    options.settle(series, start, end, sender=keeper)
    assert options.series(series).settled


def test_settle__ranks_off_by_one__reverts(options, oracle, written, call_terms, chain, keeper, observe_through):
    series = written(1)
    observe_through(call_terms.token, call_terms.expiry - TWAP_WINDOW - 2 * PERIOD, call_terms.expiry + 2 * PERIOD)
    chain.pending_timestamp = call_terms.expiry + 2 * PERIOD + 1
    start, end = helpers.settlement_ranks(
        read_observations(oracle, call_terms.token), chain.pending_timestamp, call_terms.expiry, TWAP_WINDOW
    )
    assert (start, end) == (12, 2)
    for bad_start, bad_end, reason in [
        (start + 1, end, "options: bad start rank"),  # older than needed
        (start - 1, end, "options: bad start rank"),  # inside the window
        (start, end - 1, "options: bad end rank"),  # after expiry
        (start, end + 1, "options: bad end rank"),  # not the newest before expiry
        (end, end, "options: bad ranks"),
        (64, end, "options: bad ranks"),
    ]:
        with ape.reverts(reason):
            options.settle(series, bad_start, bad_end, sender=keeper)
    options.settle(series, start, end, sender=keeper)
    assert options.series(series).settled


# ─── Claims and reclaims ─────────────────────────────────────────────────────


def test_claim_and_reclaim__settled_series__pay_exactly_the_collateral(
    options, written, writer, holder, attacker, settle_series, call_terms, usdc
):
    series = written(10)
    options.buy(offer(options, series, 6, PREMIUM, sender=writer), 6, sender=holder)
    options.safeTransferFrom(holder, attacker, series, 2, b"", sender=holder)  # positions are transferable
    settle_series(call_terms)
    payout = options.series(series).payout_per_unit
    assert payout > 0

    paid = {}
    for account, units in ((holder, 4), (attacker, 2), (writer, 4)):
        before = usdc.balanceOf(account)
        receipt = options.claim(series, sender=account)
        paid[account.address] = usdc.balanceOf(account) - before
        assert paid[account.address] == units * payout
        assert options.balanceOf(account, series) == 0
        assert options.Claimed.from_receipt(receipt)[0].units == units
    before = usdc.balanceOf(writer)
    receipt = options.reclaim(series, sender=writer)
    reclaimed = usdc.balanceOf(writer) - before
    assert reclaimed == 10 * (CALL_COLLATERAL - payout)
    assert options.Reclaimed.from_receipt(receipt)[0].usdc == reclaimed
    assert sum(paid.values()) + reclaimed == 10 * CALL_COLLATERAL
    assert options.collateral(series) == options.total_collateral() == usdc.balanceOf(options) == 0
    assert options.total_supply(series) == 0 and options.written(series, writer) == 0


def test_claim__worthless_series__burns_units_pays_nothing(
    options, written, writer, settle_series, call_terms, move_price, markets, usdc
):
    series = written(2)
    move_price(markets[3], markets[0], usdc, helpers.price_of_dollars("0.003"))
    settle_series(call_terms)
    before = usdc.balanceOf(writer)
    assert options.Claimed.from_receipt(options.claim(series, sender=writer))[0].usdc == 0
    assert options.balanceOf(writer, series) == 0 and usdc.balanceOf(writer) == before
    options.reclaim(series, sender=writer)
    assert usdc.balanceOf(writer) - before == 2 * CALL_COLLATERAL


def test_claim_and_reclaim__before_settlement_twice_or_with_nothing__revert(
    options, written, writer, holder, attacker, settle_series, call_terms
):
    series = written(2)
    with ape.reverts("options: series not settled"):
        options.claim(series, sender=writer)
    with ape.reverts("options: series not settled"):
        options.reclaim(series, sender=writer)
    settle_series(call_terms)
    with ape.reverts("options: no units"):
        options.claim(series, sender=attacker)
    with ape.reverts("options: nothing to reclaim"):
        options.reclaim(series, sender=holder)
    options.claim(series, sender=writer)
    options.reclaim(series, sender=writer)
    with ape.reverts("options: no units"):
        options.claim(series, sender=writer)
    with ape.reverts("options: nothing to reclaim"):
        options.reclaim(series, sender=writer)


def test_collateral__two_series_two_writers__held_equals_the_sum(
    options, written, put_terms, writer, holder, keeper, usdc
):
    call = written(3)
    options.create_series(*put_terms.args(), sender=keeper)
    options.write(put_terms.id, 2, sender=holder)
    assert options.collateral(call) == 3 * CALL_COLLATERAL
    assert options.collateral(put_terms.id) == 2 * PUT_COLLATERAL
    assert options.total_collateral() == usdc.balanceOf(options) == 3 * CALL_COLLATERAL + 2 * PUT_COLLATERAL
