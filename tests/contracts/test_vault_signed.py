"""CreditsVault's signed mode (issue 23), through titanoboa: session keys (register,
set, revoke), `settle_signed` and its views, every refusal the issue names, and the
hand-over from capped mode. The attacks a coordinator could try are at the end.
"""

import boa
import pytest
from eth_account import Account
from eth_utils import keccak
from vault_signed_world import EPOCH, ROOT, USD, SignedWorld

from promptex.ledger.sessions import settlement_close
from promptex.protocol.vault import (
    MAX_LANES,
    SECP256K1_N,
    SignedDebit,
    compact_signature,
    expand_signature,
    pack_debits,
    pack_signed_entries,
    pack_signed_entry,
    unpack_signed_entry,
)

MAX_UINT32 = 2**32 - 1


@pytest.fixture(scope="module")
def world():
    return SignedWorld()


@pytest.fixture
def w(world):
    # A function-scoped fixture: titanoboa's plugin reverts everything a test does.
    return world


@pytest.fixture
def buyer(w):
    return w.buyers[0]


@pytest.fixture
def live(w, buyer):
    """`buyer` has a 4-lane, 100 USD session, open to settlement (one window later)."""
    key = w.open_session(buyer)
    w.next_window()
    return key


def entry_word(debit: SignedDebit):
    return pack_signed_entry(debit)


# ─── packing helpers ─────────────────────────────────────────────────────────


def test_pack_signed_entry__round_trip__same_debit(w, buyer):
    signature = Account.from_key(keccak(text="k")).unsafe_sign_hash(keccak(text="m")).signature
    debit = SignedDebit(buyer.address, 7, 123_456, 789, bytes(signature))
    assert unpack_signed_entry(pack_signed_entry(debit)) == debit


def test_compact_signature__high_s__refused():
    r, s = 1, SECP256K1_N - 1
    with pytest.raises(ValueError, match="high-s"):
        compact_signature(r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27]))


def test_pack_signed_entries__same_lane_twice__refused(w, buyer):
    signature = expand_signature(1, 1)
    debit = SignedDebit(buyer.address, 0, 10, 1, signature)
    with pytest.raises(ValueError, match="twice"):
        pack_signed_entries([debit, SignedDebit(buyer.address, 0, 20, 2, signature)])
    with pytest.raises(ValueError, match="lane"):
        pack_signed_entry(SignedDebit(buyer.address, MAX_LANES, 10, 1, signature))


# ─── registration ────────────────────────────────────────────────────────────


def test_register_session_key__relayed__stored_and_logged(w, buyer):
    window = w.window()
    key = w.open_session(buyer, lanes=3, maximum=50 * USD, lifetime=3_600)
    session_key = Account.from_key(key).address
    (log,) = w.events("SessionKeyRegistered")
    assert (log["account"], log["key"], log["session"], log["lanes"], log["maximum"]) == (
        buyer.address,
        session_key,
        0,
        3,
        50 * USD,
    )
    assert log["signed_from"] == window + 1
    view = w.vault.session_key(buyer.address, w.usdc.address)
    expiry = view[5]
    last_window = (expiry - w.genesis) // EPOCH + 1
    assert view == (session_key, 0, 3, 50 * USD, 0, expiry, w.genesis + (last_window + 1) * EPOCH - 1, window + 1)
    assert w.vault.session_nonce(buyer.address, w.usdc.address) == 1


@pytest.mark.parametrize("lifetime", [1, EPOCH - 1, EPOCH, 7 * EPOCH + 3, 86_400])
def test_session_key__last_settlement_second__what_the_indexer_records(w, buyer, lifetime):
    """The ledger's `settlement_close` (the indexer records it with each session; the
    gateway refuses vouchers whose requests could be charged after it) is the vault's own
    ends_at for an unrevoked session, wherever the expiry falls in its window."""
    w.open_session(buyer, lifetime=lifetime)
    (log,) = w.events("SessionKeyRegistered")
    view = w.vault.session_key(buyer.address, w.usdc.address)
    close = settlement_close(log["expiry"], log["signed_from"], w.vault.genesis(), w.vault.epoch_length())
    assert close == view[6]


def test_set_session_key__by_the_wallet__registered(w, buyer):
    key = Account.from_key(keccak(text="direct")).address
    w.vault.set_session_key(w.usdc.address, key, 2, 10 * USD, w.now() + 600, sender=buyer.address)
    assert w.vault.session_key(buyer.address, w.usdc.address)[:4] == (key, 0, 2, 10 * USD)


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("lanes", 0, "vault: lanes out of range"),
        ("lanes", MAX_LANES + 1, "vault: lanes out of range"),
        ("maximum", 0, "vault: empty session"),
        ("expiry", 0, "vault: session expired"),
        ("key", "0x" + "00" * 20, "vault: zero address"),
    ],
)
def test_set_session_key__bad_field__refused(w, buyer, field, value, reason):
    args = {"key": buyer.address, "lanes": 2, "maximum": USD, "expiry": w.now() + 600}
    args[field] = value
    with boa.reverts(reason):
        w.vault.set_session_key(
            w.usdc.address, args["key"], args["lanes"], args["maximum"], args["expiry"], sender=buyer.address
        )


def test_register_session_key__unlisted_asset__refused(w, buyer):
    with boa.reverts("vault: asset not listed"):
        w.vault.set_session_key(w.seller, buyer.address, 2, USD, w.now() + 600, sender=buyer.address)


@pytest.mark.parametrize("override", [{"chain_id": 31_337_000}, {"vault": "0x" + "12" * 20}, {"nonce": 1}])
def test_register_session_key__signed_for_another_domain_or_nonce__refused(w, buyer, override):
    key = buyer.address
    expiry = w.now() + 600
    signature = w.session_key_signature(buyer, key, 2, USD, expiry, **override)
    with boa.reverts("vault: bad session key signature"):
        w.vault.register_session_key(buyer.address, w.usdc.address, key, 2, USD, expiry, 0, signature)


def test_register_session_key__signed_by_another_wallet__refused(w, buyer):
    other = w.buyers[1]
    expiry = w.now() + 600
    signature = w.session_key_signature(other, other.address, 2, USD, expiry)
    with boa.reverts("vault: bad session key signature"):
        w.vault.register_session_key(buyer.address, w.usdc.address, other.address, 2, USD, expiry, 0, signature)


def test_register_session_key__stale_nonce__refused(w, buyer):
    w.open_session(buyer, lifetime=30)
    w.next_window(3)  # the first session is over
    expiry = w.now() + 600
    signature = w.session_key_signature(buyer, buyer.address, 2, USD, expiry, nonce=0)
    with boa.reverts("vault: bad nonce"):
        w.vault.register_session_key(buyer.address, w.usdc.address, buyer.address, 2, USD, expiry, 0, signature)


def test_register_session_key__previous_session_not_over__refused_until_it_is(w, buyer):
    w.open_session(buyer)
    w.vault.revoke_session_key(w.usdc.address, sender=buyer.address)  # ends at the close of the next window
    with boa.reverts("vault: session not ended"):
        w.open_session(buyer)
    w.next_window()
    with boa.reverts("vault: session not ended"):
        w.open_session(buyer)
    w.next_window()
    w.open_session(buyer)
    assert w.vault.session_key(buyer.address, w.usdc.address)[1] == 2  # nonce 1 was used up by the revoke


# ─── settle_signed ───────────────────────────────────────────────────────────


def test_settle_signed__two_accounts_several_lanes__debited_and_credited(w, buyer):
    other = w.buyers[1]
    k0 = w.open_session(buyer)
    k1 = w.open_session(other)
    w.next_window()
    before = w.held()
    debits = [
        w.debit(k0, buyer, 0, 5 * USD, 3 * USD),
        w.debit(k0, buyer, 2, 2 * USD, 2 * USD),
        w.debit(k1, other, 1, 9 * USD, 4 * USD),
    ]
    w.settle_signed(debits, fee=USD)
    (log,) = w.events("SignedBatchSettled")
    assert (log["batch"], log["usage_root"], log["total"], log["entries"]) == (1, ROOT, 9 * USD, 3)
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 995 * USD
    assert w.vault.balance_of(other.address, w.usdc.address) == 996 * USD
    assert [w.vault.lane_settled(buyer.address, w.usdc.address, lane) for lane in range(4)] == [3 * USD, 0, 2 * USD, 0]
    assert w.vault.session_key(buyer.address, w.usdc.address)[4] == 5 * USD
    assert w.vault.claimable(w.seller, w.usdc.address) == 8 * USD  # the lot's rate is 100 %
    assert w.vault.reserve(w.usdc.address) == USD
    assert w.held() == before and w.conserved()
    assert w.vault.last_epoch(w.usdc.address) == 1 and w.vault.usage_roots(w.usdc.address, 1) == ROOT


def test_settle_signed__several_batches_in_one_window__each_within_the_voucher(w, buyer, live):
    w.settle_signed([w.debit(live, buyer, 0, 2 * USD, USD)])
    w.settle_signed([w.debit(live, buyer, 0, 5 * USD, 4 * USD)])
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 0) == 5 * USD
    assert w.vault.last_epoch(w.usdc.address) == 2


def test_settle_signed__epoch_shared_with_settle__consecutive(w, buyer, live):
    with boa.reverts("vault: epoch not consecutive"):
        w.settle_signed([w.debit(live, buyer, 0, USD, USD)], epoch=2)
    w.settle_signed([w.debit(live, buyer, 0, USD, USD)])
    with boa.reverts("vault: epoch not consecutive"):
        w.settle_signed([w.debit(live, buyer, 0, 2 * USD, USD)], epoch=1)  # the same batch sent twice


def test_settle_signed__before_signed_from__refused(w, buyer):
    key = w.open_session(buyer)
    with boa.reverts("vault: signed mode not started"):
        w.settle_signed([w.debit(key, buyer, 0, USD, USD)])


def test_settle_signed__account_without_session__refused(w, buyer, live):
    other = w.buyers[1]
    with boa.reverts("vault: account not in signed mode"):
        w.settle_signed([w.debit(live, other, 0, USD, USD, session=0)])


@pytest.mark.parametrize(
    "override",
    [
        {"account": "0x" + "ab" * 20},  # a voucher of another account
        {"voucher_lane": 1},  # of another lane
        {"asset": "0x" + "cd" * 20},  # of another asset
        {"chain_id": 31_337_000},  # of another chain
        {"vault": "0x" + "ef" * 20},  # of another vault
        {"session": 1},  # of another session
    ],
)
def test_settle_signed__voucher_for_something_else__refused(w, buyer, live, override):
    debit = w.debit(live, buyer, 0, USD, USD, **override)
    with boa.reverts("vault: voucher not signed by the session key"):
        w.settle_signed([debit])


def test_settle_signed__voucher_for_something_else__refused_on_a_bound_lane_too(w, buyer, live):
    w.settle_signed([w.debit(live, buyer, 0, USD, USD)])
    for override in ({"voucher_lane": 1}, {"chain_id": 31_337_000}, {"session": 1}):
        with boa.reverts("vault: voucher not signed by the session key"):
            w.settle_signed([w.debit(live, buyer, 0, 2 * USD, USD, **override)])


def test_settle_signed__signed_by_another_key__refused(w, buyer, live):
    thief = keccak(text="not the session key")
    with boa.reverts("vault: voucher not signed by the session key"):
        w.settle_signed([w.debit(thief, buyer, 0, USD, USD)])


def test_settle_signed__stale_voucher__refused(w, buyer, live):
    w.settle_signed([w.debit(live, buyer, 0, 5 * USD, 5 * USD)])
    with boa.reverts("vault: debit above the voucher"):
        w.settle_signed([w.debit(live, buyer, 0, 4 * USD, 1)])  # below what is settled


def test_settle_signed__lane_beyond_lanes__refused(w, buyer, live):
    with boa.reverts("vault: lane out of range"):
        w.settle_signed([w.debit(live, buyer, 4, USD, USD)])


def test_settle_signed__one_lane_then_a_second__the_first_lanes_total_kept_and_bounded(w, buyer, live):
    """While one lane is debited its total is the session's (no lane slot); the second
    lane's first debit moves that total to the first lane's own slot, where its voucher
    still bounds it."""
    w.settle_signed([w.debit(live, buyer, 1, 5 * USD, 3 * USD)])
    lanes = [w.vault.lane_settled(buyer.address, w.usdc.address, lane) for lane in range(4)]
    assert lanes == [0, 3 * USD, 0, 0]
    with boa.reverts("vault: debit above the voucher"):  # the first lane's 3 are carried over
        w.settle_signed([w.debit(live, buyer, 0, 2 * USD, 2 * USD), w.debit(live, buyer, 1, 5 * USD, 3 * USD)])
    w.settle_signed([w.debit(live, buyer, 0, 2 * USD, 2 * USD), w.debit(live, buyer, 1, 5 * USD, 2 * USD)])
    lanes = [w.vault.lane_settled(buyer.address, w.usdc.address, lane) for lane in range(4)]
    assert lanes == [2 * USD, 5 * USD, 0, 0]
    with boa.reverts("vault: debit above the voucher"):
        w.settle_signed([w.debit(live, buyer, 1, 5 * USD, 1)])
    with boa.reverts("vault: debit above the voucher"):
        w.settle_signed([w.debit(live, buyer, 0, 2 * USD, 1)])
    w.settle_signed([w.debit(live, buyer, 3, USD, USD)])
    assert w.vault.session_key(buyer.address, w.usdc.address)[4] == 8 * USD
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 992 * USD


def test_settle_signed__any_lanes_debited_before__a_stranger_or_a_lane_beyond_refused(w, buyer, live):
    """Every path an entry can take (the account's first lane, its only lane so far, a
    second lane, one of several) checks the signer and the lane number; lane 254 is the
    one whose tag (255) means "several lanes"."""
    thief = keccak(text="not the session key")
    for before in ([], [1], [1, 2]):
        for debit in before:
            w.settle_signed([w.debit(live, buyer, debit, 10 * USD, USD)])
        for lane in (1, 3):
            with boa.reverts("vault: voucher not signed by the session key"):
                w.settle_signed([w.debit(thief, buyer, lane, 20 * USD, USD)])
        for lane in (4, 63, 64, 254, 255):
            debit = w.debit(live, buyer, lane, 20 * USD, USD)
            r, vs = compact_signature(debit.signature)  # (the packer refuses lanes ≥ MAX_LANES)
            entry = (int(buyer.address, 16) << 96 | lane << 80, 20 * USD << 128 | USD, r, vs)
            with boa.reverts("vault: lane out of range"):
                w.settle_signed(None, entries=[entry])
    lanes = [w.vault.lane_settled(buyer.address, w.usdc.address, lane) for lane in (0, 1, 2, 254)]
    assert lanes == [0, 2 * USD, USD, 0]


def test_settle_signed__balance_at_its_bound__lane_totals_untouched(w, buyer, live):
    """The balance (96 bits) sits under the lane tag in the account slot: a deposit up to
    MAX_BALANCE leaves the lanes' totals as they were, one unit more is refused."""
    w.settle_signed([w.debit(live, buyer, 2, 5 * USD, 3 * USD)])
    bound = w.vault.MAX_BALANCE()
    assert bound == 2**96 - 1
    top_up = bound - w.vault.balance_of(buyer.address, w.usdc.address)
    w.usdc.mint(buyer.address, top_up + 1)
    w.usdc.approve(w.vault.address, top_up + 1, sender=buyer.address)
    w.vault.deposit(w.usdc.address, top_up, sender=buyer.address)
    with boa.reverts("vault: balance above bound"):
        w.vault.deposit(w.usdc.address, 1, sender=buyer.address)
    assert w.vault.balance_of(buyer.address, w.usdc.address) == bound
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 2) == 3 * USD
    w.settle_signed([w.debit(live, buyer, 2, 6 * USD, 3 * USD)])
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 2) == 6 * USD
    assert w.vault.balance_of(buyer.address, w.usdc.address) == bound - 3 * USD


def test_settle_signed__session_maximum__reached_not_exceeded(w, buyer):
    key = w.open_session(buyer, maximum=10 * USD)
    w.next_window()
    w.settle_signed([w.debit(key, buyer, 0, 6 * USD, 6 * USD), w.debit(key, buyer, 1, 4 * USD, 4 * USD)])
    with boa.reverts("vault: debit above the session maximum"):
        w.settle_signed([w.debit(key, buyer, 2, 50 * USD, 1)])
    assert w.vault.session_key(buyer.address, w.usdc.address)[4] == 10 * USD


def test_settle_signed__high_s_signature__refused(w, buyer, live):
    """The malleated twin (r, n − s) of a valid signature: in EIP-2098 form its s only fits
    below 2**255 in a narrow band, but any s above n / 2 must be refused before ecrecover."""
    debit = w.debit(live, buyer, 0, USD, USD)
    head, amounts, r, vs = pack_signed_entry(debit)
    parity = vs >> 255
    for high in (SECP256K1_N // 2 + 1, 2**255 - 1):
        with boa.reverts("vault: high-s signature"):
            w.settle_signed(None, entries=[(head, amounts, r, high | parity << 255)])
    w.settle_signed(None, entries=[(head, amounts, r, vs)])


def test_settle_signed__unsorted_or_duplicate_entries__refused(w, buyer, live):
    a = pack_signed_entry(w.debit(live, buyer, 0, USD, USD))
    b = pack_signed_entry(w.debit(live, buyer, 1, USD, USD))
    with boa.reverts("vault: entries not sorted by account and lane"):
        w.settle_signed(None, entries=[b, a])
    with boa.reverts("vault: entries not sorted by account and lane"):
        w.settle_signed(None, entries=[a, a])


def test_settle_signed__paused__refused(w, buyer, live):
    w.vault.pause(sender=w.pauser)
    with boa.reverts("vault: paused"):
        w.settle_signed([w.debit(live, buyer, 0, USD, USD)])


def test_settle_signed__not_a_coordinator__refused(w, buyer, live):
    with boa.reverts("vault: caller is not a coordinator"):
        w.settle_signed([w.debit(live, buyer, 0, USD, USD)], sender=buyer.address)


def test_settle_signed__unbalanced__refused(w, buyer, live):
    with boa.reverts("vault: debits do not balance"):
        w.settle_signed([w.debit(live, buyer, 0, USD, USD)], credit=False)


# ─── revocation and expiry ───────────────────────────────────────────────────


def test_revoke_session_key__settles_until_the_close_of_the_next_window_only(w, buyer, live):
    w.vault.revoke_session_key(w.usdc.address, sender=buyer.address)
    (log,) = w.events("SessionKeyRevoked")
    assert log["ends_at"] == w.genesis + (w.window() + 2) * EPOCH - 1
    assert w.vault.session_key(buyer.address, w.usdc.address)[6] == log["ends_at"]
    w.settle_signed([w.debit(live, buyer, 0, USD, USD)])  # in grace: this window
    w.next_window()
    w.settle_signed([w.debit(live, buyer, 0, 2 * USD, USD)])  # and the next
    w.next_window()
    with boa.reverts("vault: session ended"):
        w.settle_signed([w.debit(live, buyer, 0, 3 * USD, USD)])


def test_revoke_session_key__before_the_first_debit__ends_the_same(w, buyer):
    key = w.open_session(buyer)
    w.next_window()
    w.vault.revoke_session_key(w.usdc.address, sender=buyer.address)
    w.next_window(2)
    with boa.reverts("vault: session ended"):
        w.settle_signed([w.debit(key, buyer, 0, USD, USD)])


def test_revoke_session_key__no_session__refused(w, buyer):
    with boa.reverts("vault: no active session"):
        w.vault.revoke_session_key(w.usdc.address, sender=buyer.address)


def test_settle_signed__expired_session__settles_through_the_next_window_only(w, buyer):
    key = w.open_session(buyer, lifetime=EPOCH)  # expires in the next window
    w.next_window()
    w.settle_signed([w.debit(key, buyer, 0, USD, USD)])
    w.next_window()  # expired: its grace window
    w.settle_signed([w.debit(key, buyer, 0, 2 * USD, USD)])
    w.next_window()
    with boa.reverts("vault: session ended"):
        w.settle_signed([w.debit(key, buyer, 0, 3 * USD, USD)])


def test_new_session__lanes_start_at_zero__old_vouchers_refused(w, buyer):
    old = w.open_session(buyer, lifetime=EPOCH)
    w.next_window()
    w.settle_signed([w.debit(old, buyer, 0, 5 * USD, 5 * USD)])
    w.next_window(2)
    new = w.open_session(buyer, tag="new")
    w.next_window()
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 0) == 0
    assert w.vault.session_key(buyer.address, w.usdc.address)[4] == 0
    with boa.reverts("vault: voucher not signed by the session key"):
        w.settle_signed([w.debit(old, buyer, 0, 9 * USD, USD, session=0)])
    w.settle_signed([w.debit(new, buyer, 0, USD, USD)])
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 0) == USD


# ─── capped mode hand-over ───────────────────────────────────────────────────


def capped(w, buyer, per_epoch=50 * USD):
    w.vault.set_spend_cap(w.usdc.address, per_epoch, 10**12, MAX_UINT32, sender=buyer.address)


def settle_capped(w, debits, sender=None):
    words = pack_debits(debits)
    total = sum(debits.values())
    epoch = w.vault.last_epoch(w.usdc.address) + 1
    credits = [w_pack(w, total)] if total else []
    return w.vault.settle(epoch, w.usdc.address, words, credits, 0, 0, ROOT, sender=sender or w.coordinator)


def w_pack(w, total):
    from promptex.protocol.vault import pack_lot_amount

    return pack_lot_amount(w.lot, total)


def test_capped_account__registers__capped_usage_of_this_window_then_signed_only(w, buyer):
    capped(w, buyer)
    w.next_window()
    key = w.open_session(buyer)
    registered = w.window()
    assert w.vault.session_key(buyer.address, w.usdc.address)[7] == registered + 2
    with boa.reverts("vault: account in signed mode"):
        capped(w, buyer)
    w.next_window()
    # Window w + 1: the cap still settles window w's usage; signed mode has not started.
    settle_capped(w, {buyer.address: 7 * USD})
    with boa.reverts("vault: signed mode not started"):
        w.settle_signed([w.debit(key, buyer, 0, USD, USD)])
    w.next_window()
    # Window w + 2: capped debits are refused, signed ones accepted.
    with boa.reverts("vault: debit without an active spend cap"):
        settle_capped(w, {buyer.address: USD})
    w.settle_signed([w.debit(key, buyer, 0, USD, USD)])
    w.next_window()
    with boa.reverts("vault: debit without an active spend cap"):
        settle_capped(w, {buyer.address: USD})
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 992 * USD
    assert w.vault.spend_cap(buyer.address, w.usdc.address) == (0, 0, 0)
    assert w.vault.debitable(buyer.address, w.usdc.address) == 0


def test_after_the_session__a_spend_cap_again__capped_mode(w, buyer):
    key = w.open_session(buyer, lifetime=EPOCH)
    w.next_window()
    w.settle_signed([w.debit(key, buyer, 0, USD, USD)])
    w.next_window(2)
    capped(w, buyer)
    w.next_window()
    settle_capped(w, {buyer.address: 2 * USD})
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 997 * USD
    with boa.reverts("vault: session ended"):
        w.settle_signed([w.debit(key, buyer, 0, 2 * USD, USD)])


def test_after_a_revoked_session__cap_refused_while_its_vouchers_settle__then_capped__no_window_for_both(
    w, buyer, live
):
    """The way back after a revocation (README "Leaving signed mode"): in the revocation's
    window and the next the session's vouchers still settle and a spend cap is refused; from
    the window after, the cap is taken, `settle` debits under it and the session's vouchers
    are refused — no window settles the account both ways."""
    w.settle_signed([w.debit(live, buyer, 0, USD, USD)])
    w.vault.revoke_session_key(w.usdc.address, sender=buyer.address)
    ends_at = w.vault.session_key(buyer.address, w.usdc.address)[6]
    with boa.reverts("vault: account in signed mode"):  # the revocation's window
        capped(w, buyer)
    w.next_window()
    with boa.reverts("vault: account in signed mode"):  # its last window: the vouchers still settle
        capped(w, buyer)
    w.settle_signed([w.debit(live, buyer, 1, USD, USD)])
    w.next_window()
    assert boa.env.evm.patch.timestamp > ends_at
    capped(w, buyer)
    w.next_window()
    settle_capped(w, {buyer.address: 3 * USD})
    with boa.reverts("vault: session ended"):
        w.settle_signed([w.debit(live, buyer, 0, 2 * USD, USD)])
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 995 * USD  # 1 + 1 by vouchers, 3 capped


# ─── shortfall: the same rule as settle ──────────────────────────────────────


def test_settle_signed__above_balance_after_a_trustless_exit__booked_as_shortfall(w, buyer, live):
    w.usdc.mint(w.admin, 100 * USD)
    w.usdc.approve(w.vault.address, 100 * USD, sender=w.admin)
    w.vault.fund_reserve(w.usdc.address, 100 * USD, sender=w.admin)
    w.vault.request_exit(w.usdc.address, 1_000 * USD, sender=buyer.address)
    boa.env.time_travel(seconds=w.vault.exit_unlocks_at(buyer.address, w.usdc.address) - w.now())
    w.vault.complete_exit(w.usdc.address, 0, False, sender=buyer.address)
    w.settle_signed([w.debit(live, buyer, 0, 3 * USD, 3 * USD)])
    assert w.vault.shortfall(w.usdc.address) == 3 * USD
    assert w.vault.reserve(w.usdc.address) == 97 * USD
    assert w.conserved()


def test_settle_signed__above_balance_without_exit__refused(w, buyer):
    key = w.open_session(buyer, maximum=5_000 * USD)
    w.next_window()
    with boa.reverts("vault: uncovered debit"):
        w.settle_signed([w.debit(key, buyer, 0, 2_000 * USD, 1_001 * USD)])


# ─── attacks: a coordinator against signed-mode buyers ───────────────────────


def test_attack__replaying_an_old_sessions_voucher__nothing_moves(w, buyer):
    """The coordinator kept session 0's highest voucher (ceiling 50, 10 settled) and
    posts the unspent 40 after the buyer rotated to session 2."""
    old = w.open_session(buyer, lifetime=EPOCH)
    w.next_window()
    high = w.debit(old, buyer, 0, 50 * USD, 10 * USD)
    w.settle_signed([high])
    w.next_window(2)
    w.open_session(buyer, tag="rotated")
    w.next_window()
    balance = w.vault.balance_of(buyer.address, w.usdc.address)
    replay = SignedDebit(buyer.address, 0, 50 * USD, 40 * USD, high.signature)
    with boa.reverts("vault: voucher not signed by the session key"):
        w.settle_signed([replay])
    assert w.vault.balance_of(buyer.address, w.usdc.address) == balance


def test_attack__splitting_one_voucher_over_batches_beyond_its_ceiling__refused(w, buyer, live):
    voucher = w.debit(live, buyer, 0, 10 * USD, 6 * USD)
    w.settle_signed([voucher])
    with boa.reverts("vault: debit above the voucher"):
        w.settle_signed([SignedDebit(buyer.address, 0, 10 * USD, 6 * USD, voucher.signature)])
    w.next_window()
    with boa.reverts("vault: debit above the voucher"):
        w.settle_signed([SignedDebit(buyer.address, 0, 10 * USD, 5 * USD, voucher.signature)])
    w.settle_signed([SignedDebit(buyer.address, 0, 10 * USD, 4 * USD, voucher.signature)])  # exactly the rest
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 990 * USD


def test_attack__one_lane_twice_in_a_batch__refused(w, buyer, live):
    a = pack_signed_entry(w.debit(live, buyer, 0, 10 * USD, 10 * USD))
    b = pack_signed_entry(w.debit(live, buyer, 0, 20 * USD, 10 * USD))
    with boa.reverts("vault: entries not sorted by account and lane"):
        w.settle_signed(None, entries=[a, b])
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 1_000 * USD


def test_attack__lane_number_aliasing__refused(w, buyer, live):
    """A head whose bits below the lane are set, or a lane ≥ 2**16 spilling into the
    account: neither reaches another lane or account."""
    head, amounts, r, vs = pack_signed_entry(w.debit(live, buyer, 0, USD, USD))
    with boa.reverts():
        w.settle_signed(None, entries=[(head | 1 << 96, amounts, r, vs)])  # account's lowest bit flipped
    w.settle_signed(None, entries=[(head | 12345, amounts, r, vs)])  # reserved low bits: ignored
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 0) == USD


def test_attack__a_stolen_key_after_revocation__at_most_the_session_maximum(w, buyer):
    key = w.open_session(buyer, maximum=30 * USD)
    w.next_window()
    w.vault.revoke_session_key(w.usdc.address, sender=buyer.address)
    w.settle_signed([w.debit(key, buyer, lane, 10**12, 10 * USD) for lane in range(3)])
    with boa.reverts("vault: debit above the session maximum"):
        w.settle_signed([w.debit(key, buyer, 3, 10**12, 1)])
    w.next_window(2)
    with boa.reverts("vault: session ended"):
        w.settle_signed([w.debit(key, buyer, 3, 10**12, 1)])
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 970 * USD


def test_attack__capped_debit_of_a_signed_mode_account__refused(w, buyer, live):
    """A signed-mode account's slot reuses the cap's bits: `settle` must read no cap in
    them, however large the session maximum."""
    w.settle_signed([w.debit(live, buyer, 0, USD, USD)])
    with boa.reverts("vault: debit without an active spend cap"):
        settle_capped(w, {buyer.address: USD})
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 999 * USD


# ─── the delegated module matches the vault ──────────────────────────────────


def _flat_layout(deployer) -> dict[str, tuple[int, str]]:
    from vyper.compiler.output import build_layout_output

    flat = {}
    for name, item in build_layout_output(deployer.compiler_data)["storage_layout"].items():
        if "slot" not in item:  # an initialized module: its variables, by their own names
            flat.update({inner: (v["slot"], v["type"]) for inner, v in item.items()})
        else:
            flat[name] = (item["slot"], item["type"])
    return flat


def test_signed_module__storage_layout__the_vaults_slot_for_slot():
    from vault_signed_world import SIGNED, VAULT

    vault, module = _flat_layout(VAULT), _flat_layout(SIGNED)
    assert module == vault, "CreditsVaultSigned's storage must repeat CreditsVault's, in order"


def test_signed_module__events_and_functions__the_vaults():
    """Every event the module logs is declared (so decodable) in the vault's ABI, and every
    external function of the module is a vault function of the same signature."""
    from vault_signed_world import SIGNED, VAULT
    from vyper.compiler.output import build_abi_output

    def signatures(deployer, kind):
        return {
            (e["name"], tuple(i["type"] for i in e["inputs"]))
            for e in build_abi_output(deployer.compiler_data)
            if e.get("type") == kind
        }

    assert signatures(SIGNED, "event") <= signatures(VAULT, "event")
    assert signatures(SIGNED, "function") <= signatures(VAULT, "function")


def test_signed_module__called_directly__reverts(w, buyer):
    module = w.vault.signed_module()
    from vault_signed_world import SIGNED

    direct = SIGNED.at(module)
    with boa.reverts():
        direct.set_session_key(w.usdc.address, buyer.address, 2, USD, w.now() + 600, sender=buyer.address)
