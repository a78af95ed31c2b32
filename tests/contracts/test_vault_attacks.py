"""Issue 19's findings against the CreditsVault and the escrow's draws, each replayed as
an attacker would, with the amounts that must not move asserted — plus the siblings.

Item 2 (only burns draw tokenized capacity): a settler consuming a lot without a burn; an
absurd epoch blocking a lot; credits beyond what a lot served; choosing which lot is drawn.
Item 3 (no role blocks a trustless exit): the admin unsets the exit market or points it at
a contract that reverts, pauses, removes every coordinator, raises the thaw, delists.
Item 5 (the coordinator moves nothing a user did not sign): debits on empty accounts with
or without a cap paired with a credit to an accomplice's lot ($25,000 in one settlement;
$100 an epoch through one capped empty account); an instant exit's or an old exit's
balance billed to the reserve; one exit's allowance spent twice.
Item 6 (a pause is short and never lets served usage escape): a pause longer than the
thaw; pauses renewed back to back.
"""

import ape
import pytest
from eth_utils import keccak

from promptex.protocol.escrow import KIND_LISTED
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.vault import pack_debit, pack_debits, pack_lot_amount, sign_release

ROOT = keccak(text="usage records")
ZERO = "0x" + "00" * 20


# ─── helpers ─────────────────────────────────────────────────────────────────


@pytest.fixture
def reserve(vault, usdc, org):
    """The protocol's USDC reserve, funded with `amount` (the fees it kept)."""

    def _fund(amount):
        usdc.mint(org, amount, sender=org)
        usdc.approve(vault, amount, sender=org)
        vault.fund_reserve(usdc, amount, sender=org)

    return _fund


@pytest.fixture
def accomplice_lot(open_lot, attacker, gpt):
    """A listed lot of the coordinator's accomplice, at list price (credit == capacity drawn)."""
    return open_lot(attacker, gpt, kind=KIND_LISTED, face_value=100_000 * USD, rate_bps=10_000)


@pytest.fixture
def settle(vault, usdc, coordinator, next_window):
    """Post the next settlement of `asset` as the coordinator."""

    def _settle(debits, credits=(), burn=0, fee=0, asset=None):
        asset = usdc if asset is None else asset
        next_window(asset)
        words = pack_debits({getattr(a, "address", a): x for a, x in debits.items()})
        epoch = vault.last_epoch(asset) + 1
        return vault.settle(epoch, asset, words, list(credits), burn, fee, ROOT, sender=coordinator)

    return _settle


@pytest.fixture
def cld_holder(vault, cld, seller, buyer, tokenized_lot, cap):
    """The buyer holds 10 CLD in the vault under a cap."""
    cld.transfer(buyer, 10 * TOKEN, sender=seller)
    cld.approve(vault, 10 * TOKEN, sender=buyer)
    vault.deposit(cld, 10 * TOKEN, sender=buyer)
    cap(buyer, asset=cld)
    return buyer


@pytest.fixture
def market(project, admin, usdc, vault):
    """An honest exit market paying 2 USDC per CLD, set on the vault."""
    market = admin.deploy(project.MockExitMarket, usdc, 2 * USD)
    vault.set_exit_market(market, sender=admin)
    return market


def empty_accounts(n):
    return ["0x" + keccak(text=f"empty account {i}")[-20:].hex() for i in range(n)]


# ─── item 2: only burns draw tokenized capacity ──────────────────────────────


def test_settler__consumes_a_tokenized_lot_without_a_burn__refused_nothing_released(
    escrow, usdc, cld, seller, coordinator, attestor, admin, tokenized_lot
):
    lot = escrow.lots(tokenized_lot)
    supply, bonds = cld.totalSupply(), escrow.bonds_held()
    for caller in (coordinator, attestor, admin, seller):  # no role but the vault may draw
        with ape.reverts("escrow: caller is not the vault"):
            escrow.draw(cld, lot.capacity, 1, sender=caller)
        with ape.reverts("escrow: caller is not the vault"):
            escrow.consume(tokenized_lot, lot.capacity, 1, sender=caller)
    assert escrow.lots(tokenized_lot).consumed == 0 and escrow.bonds_held() == bonds
    assert usdc.balanceOf(seller) == 0  # no bond came back without usage
    assert cld.totalSupply() == supply and escrow.unbacked(cld) == 0


def test_settler__absurd_epoch__cannot_be_passed_later_draws_go_on(
    vault, escrow, cld, coordinator, cld_holder, tokenized_lot, settle
):
    with ape.reverts("escrow: caller is not the vault"):
        escrow.draw(cld, 1, 2**255, sender=coordinator)
    for _ in range(3):  # the vault's own consecutive epochs
        settle({cld_holder: TOKEN}, burn=TOKEN, asset=cld)
    lot = escrow.lots(tokenized_lot)
    assert (lot.consumed, lot.last_epoch) == (3 * TOKEN, vault.last_epoch(cld))


def test_coordinator__credits_a_listed_lot_beyond_what_it_served__paid_only_its_rate_and_never_past_capacity(
    vault, escrow, usdc, seller, buyer, fund, cap, open_lot, gpt, settle
):
    lot = open_lot(seller, gpt, kind=KIND_LISTED, face_value=100 * USD, rate_bps=6_000)
    fund(buyer, 1_000 * USD)
    cap(buyer)
    # The seller's credit is the lot's rate of the capacity drawn, whatever the coordinator wants.
    with ape.reverts("vault: debits do not balance"):
        settle({buyer: 100 * USD}, credits=[pack_lot_amount(lot, 100 * USD)])  # 100 % paid for 60 %
    with ape.reverts("escrow: over-consume"):
        settle({buyer: 61 * USD}, credits=[pack_lot_amount(lot, 101 * USD)])  # past the face value
    settle({buyer: 60 * USD}, credits=[pack_lot_amount(lot, 100 * USD)])
    assert vault.claimable(seller, usdc) == 60 * USD == escrow.lots(lot).consumed * 6_000 // 10_000
    with ape.reverts("escrow: lot not drawable"):  # fully drawn: closed
        settle({buyer: 1}, credits=[pack_lot_amount(lot, 1)], fee=0)


def test_coordinator__wants_its_accomplices_tokenized_lot_drawn_first__the_escrow_draws_nearest_expiry(
    escrow, usdc, cld, seller, attacker, attestor, cld_holder, tokenized_lot, expiry, settle
):
    # The accomplice's lot expires later: a burn must first empty the honest seller's lot.
    bond = escrow.min_bond(10_000 * USD)
    usdc.mint(attacker, bond, sender=attacker)
    usdc.approve(escrow, bond, sender=attacker)
    escrow.open_lot(attacker, cld, 1, 10_000 * USD, expiry + 86_400, bond, ROOT, 0, sender=attestor)
    accomplice = escrow.lot_count()
    settle({cld_holder: 5 * TOKEN}, burn=5 * TOKEN, asset=cld)
    assert escrow.lots(tokenized_lot).consumed == 5 * TOKEN
    assert escrow.lots(accomplice).consumed == 0
    assert usdc.balanceOf(attacker) == 0  # no bond released for capacity it did not serve


# ─── item 3: no role can block a trustless exit ──────────────────────────────


def test_admin__unsets_the_exit_market_after_request__the_exit_still_sells_through_it(
    vault, usdc, cld, admin, cld_holder, market, chain
):
    vault.request_exit(cld, 10 * TOKEN, sender=cld_holder)
    vault.set_exit_market(ZERO, sender=admin)
    chain.pending_timestamp = vault.exit_unlocks_at(cld_holder, cld)
    vault.complete_exit(cld, 20 * USD, True, sender=cld_holder)
    assert vault.balance_of(cld_holder, usdc) == 20 * USD and vault.balance_of(cld_holder, cld) == 0


@pytest.mark.parametrize("market_kind", ["zero", "reverting"])
def test_admin__blocks_the_exit_market_before_request__the_user_takes_the_token(
    project, vault, cld, admin, cld_holder, chain, market_kind
):
    blocked = ZERO if market_kind == "zero" else admin.deploy(project.RevertingExitMarket).address
    vault.set_exit_market(blocked, sender=admin)
    vault.request_exit(cld, 10 * TOKEN, sender=cld_holder)
    chain.pending_timestamp = vault.exit_unlocks_at(cld_holder, cld)
    with ape.reverts("vault: no exit market" if market_kind == "zero" else "market: closed"):
        vault.complete_exit(cld, 0, True, sender=cld_holder)
    vault.complete_exit(cld, 0, False, sender=cld_holder)
    assert cld.balanceOf(cld_holder) == 10 * TOKEN  # the token itself: spend-only's one exception
    assert vault.balance_of(cld_holder, cld) == 0 and cld.balanceOf(vault) == 0


def test_admin_pauser_and_coordinator__all_against_one_exit__it_completes_by_its_bound(
    vault, usdc, cld, admin, pauser, coordinator, cld_holder, market, chain
):
    receipt = vault.request_exit(cld, 10 * TOKEN, sender=cld_holder)
    bound = receipt.timestamp + vault.thaw_period() + vault.MAX_PAUSE()
    vault.pause(sender=pauser)
    vault.set_exit_market(ZERO, sender=admin)
    vault.revoke_coordinator(coordinator, sender=admin)
    vault.revoke_coordinator(admin, sender=admin)
    vault.set_thaw_period(vault.MAX_THAW_PERIOD(), sender=admin)  # only exits requested later
    vault.delist_asset(cld, sender=admin)
    assert vault.exit_unlocks_at(cld_holder, cld) <= bound
    chain.pending_timestamp = bound
    vault.complete_exit(cld, 0, False, sender=cld_holder)
    assert cld.balanceOf(cld_holder) == 10 * TOKEN


def test_pauser__pauses_again_as_soon_as_allowed__an_exit_is_delayed_by_max_pause_at_most(
    vault, usdc, fund, buyer, pauser, admin, chain
):
    fund(buyer, 100 * USD)
    thaw = 10 * vault.MAX_PAUSE()  # a long thaw: several pauses fit in it
    vault.set_thaw_period(thaw, sender=admin)
    receipt = vault.request_exit(usdc, 100 * USD, sender=buyer)
    bound = receipt.timestamp + thaw + vault.MAX_PAUSE()
    renew = vault.MAX_PAUSE() + 2 * vault.epoch_length()
    paused = 0
    while chain.pending_timestamp + renew < bound:
        vault.pause(sender=pauser)
        paused += vault.MAX_PAUSE()
        with ape.reverts("vault: pause renewed too soon"):
            chain.pending_timestamp += vault.MAX_PAUSE()
            vault.pause(sender=pauser)
        chain.pending_timestamp += 2 * vault.epoch_length()
    assert paused > vault.MAX_PAUSE()  # it paused many times during the thaw
    chain.pending_timestamp = bound
    vault.complete_exit(usdc, 0, False, sender=buyer)
    assert usdc.balanceOf(buyer) == 100 * USD


# ─── item 5: the coordinator moves nothing a user did not sign ───────────────


def test_coordinator__25000_dollars_from_empty_accounts_to_its_accomplice__reverts_reserve_untouched(
    vault, usdc, escrow, attacker, accomplice_lot, reserve, settle, cap, accounts
):
    reserve(30_000 * USD)
    uncapped = empty_accounts(5)
    debits = {a: 5_000 * USD for a in uncapped}
    with ape.reverts("vault: debit without an active spend cap"):
        settle(debits, credits=[pack_lot_amount(accomplice_lot, 25_000 * USD)])
    capped = accounts[9]  # an empty account whose owner registered a cap
    cap(capped)
    with ape.reverts("vault: uncovered debit"):
        settle({capped: 25_000 * USD}, credits=[pack_lot_amount(accomplice_lot, 25_000 * USD)])
    assert vault.reserve(usdc) == 30_000 * USD and vault.shortfall(usdc) == 0
    assert vault.claimable(attacker, usdc) == 0 and escrow.lots(accomplice_lot).consumed == 0


def test_coordinator__100_dollars_an_epoch_through_one_capped_empty_account__every_epoch_reverts(
    vault, usdc, attacker, org, accomplice_lot, reserve, settle, cap
):
    reserve(1_000 * USD)
    cap(org)  # org holds nothing in the vault
    for _ in range(5):
        with ape.reverts("vault: uncovered debit"):
            settle({org: 100 * USD}, credits=[pack_lot_amount(accomplice_lot, 100 * USD)])
    assert vault.reserve(usdc) == 1_000 * USD and vault.claimable(attacker, usdc) == 0


def test_coordinator__bills_an_instant_exit_it_cosigned__reverts(
    vault, usdc, fund, cap, buyer, coordinator, chain, accomplice_lot, reserve, settle
):
    reserve(1_000 * USD)
    fund(buyer, 100 * USD)
    cap(buyer)
    nonce, expiry = vault.release_nonce(buyer), chain.pending_timestamp + 600
    signature = sign_release(
        coordinator.private_key,
        chain_id=chain.chain_id,
        vault=vault.address,
        account=buyer.address,
        asset=usdc.address,
        amount=100 * USD,
        nonce=nonce,
        expiry=expiry,
    )
    vault.exit_instant(usdc, 100 * USD, 0, nonce, expiry, signature, sender=buyer)
    assert vault.exit_allowance(buyer, usdc) == 0  # it said the 100 were free of usage
    with ape.reverts("vault: uncovered debit"):
        settle({buyer: 50 * USD}, credits=[pack_lot_amount(accomplice_lot, 50 * USD)])
    assert vault.reserve(usdc) == 1_000 * USD


def test_coordinator__bills_an_exit_twice_or_too_late__only_what_it_took_in_its_windows(
    vault, usdc, fund, cap, buyer, chain, accomplice_lot, reserve, settle
):
    reserve(1_000 * USD)
    fund(buyer, 40 * USD)
    cap(buyer)
    vault.request_exit(usdc, 40 * USD, sender=buyer)
    chain.pending_timestamp = vault.exit_unlocks_at(buyer, usdc)
    vault.complete_exit(usdc, 0, False, sender=buyer)
    settle({buyer: 30 * USD}, credits=[pack_lot_amount(accomplice_lot, 30 * USD)])  # usage it left behind
    with ape.reverts("vault: uncovered debit"):  # the exit took 40: 10 are left, not 11
        settle({buyer: 11 * USD}, credits=[pack_lot_amount(accomplice_lot, 11 * USD)])
    chain.pending_timestamp += 2 * vault.epoch_length()  # two windows on: the allowance lapsed
    with ape.reverts("vault: uncovered debit"):
        settle({buyer: 10 * USD}, credits=[pack_lot_amount(accomplice_lot, 10 * USD)])
    assert vault.shortfall(usdc) == 30 * USD and vault.reserve(usdc) == 970 * USD


def test_coordinator__debits_a_user_beyond_its_cap__reverts(vault, usdc, fund, cap, buyer, accomplice_lot, settle):
    fund(buyer, 1_000 * USD)
    cap(buyer, per_epoch=10 * USD, total=15 * USD)
    with ape.reverts("vault: debit above the spend cap"):
        settle({buyer: 11 * USD}, credits=[pack_lot_amount(accomplice_lot, 11 * USD)])
    settle({buyer: 10 * USD}, credits=[pack_lot_amount(accomplice_lot, 10 * USD)])
    with ape.reverts("vault: debit above the spend cap"):  # 5 left in total
        settle({buyer: 6 * USD}, credits=[pack_lot_amount(accomplice_lot, 6 * USD)])
    assert vault.balance_of(buyer, usdc) == 990 * USD


# ─── item 6: a pause is short and never lets served usage escape ─────────────


def test_pause__longer_than_the_thaw__impossible_and_served_usage_settles_before_the_exit(
    vault, usdc, fund, cap, buyer, seller, pauser, coordinator, listed_lot, chain, next_window
):
    # The finding: settlement paused longer than the thaw let a buyer leave with the balance
    # that paid for its usage, and the batch after unpause reverted with the seller unpaid.
    fund(buyer, 100 * USD)
    cap(buyer)
    served = 60 * USD  # served by the gateway before the buyer asked to leave
    receipt = vault.request_exit(usdc, 100 * USD, sender=buyer)
    vault.pause(sender=pauser)
    assert vault.paused_until() - chain.pending_timestamp <= vault.MAX_PAUSE() <= vault.thaw_period()
    chain.mine(timestamp=vault.paused_until())  # it ends by itself
    assert not vault.paused()
    # The thaw counted no paused time: the exit is still locked when settlement resumes.
    assert vault.exit_unlocks_at(buyer, usdc) > chain.pending_timestamp
    assert vault.exit_unlocks_at(buyer, usdc) <= receipt.timestamp + vault.thaw_period() + vault.MAX_PAUSE()
    next_window(usdc)
    words = [pack_debit(buyer.address, served)]
    vault.settle(1, usdc, words, [pack_lot_amount(listed_lot, served)], 0, 0, ROOT, sender=coordinator)
    assert chain.pending_timestamp < vault.exit_unlocks_at(buyer, usdc)  # settled before it completes
    chain.pending_timestamp = vault.exit_unlocks_at(buyer, usdc)
    vault.complete_exit(usdc, 0, False, sender=buyer)
    assert usdc.balanceOf(buyer) == 40 * USD  # left with what it had not spent
    assert vault.claimable(seller, usdc) == served  # the seller is paid in full
