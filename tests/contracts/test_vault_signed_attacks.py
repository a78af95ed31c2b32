"""Attacks on CreditsVault's signed mode (issue 23) by a rogue coordinator, a thief of a
session key and a buyer, each asserting the promise holds: a lane is never debited beyond
its highest voucher, a session never beyond its maximum, a signed-mode account never by
the capped `settle`. (The basic refusals are in test_vault_signed.py; these are the
combinations it does not try: one key shared by assets, sessions or accounts, slot
rewrites between debits, the module called directly, and a randomized replay of every
voucher ever signed over several windows and batches.)
"""

import contextlib
import random

import boa
import pytest
from eth_account import Account
from eth_utils import keccak
from vault_signed_world import EPOCH, USD, SignedWorld

from promptex.protocol.vault import SignedDebit, pack_signed_entries


@pytest.fixture(scope="module")
def world():
    return SignedWorld()


@pytest.fixture
def w(world):
    return world  # titanoboa's plugin reverts what each test does


@pytest.fixture
def buyer(w):
    return w.buyers[0]


SHARED_KEY = keccak(text="one session key, reused")


def register(w, buyer, session_key: bytes, *, asset=None, lanes=4, maximum=100 * USD, lifetime=86_400):
    """Registers `session_key` (chosen by the test, so it can be reused) for `buyer`."""
    asset = w.usdc.address if asset is None else asset
    nonce = w.vault.session_nonce(buyer.address, asset)
    key = Account.from_key(session_key).address
    expiry = w.now() + lifetime
    signature = w.session_key_signature(buyer, key, lanes, maximum, expiry, asset=asset)
    w.vault.register_session_key(
        buyer.address, asset, key, lanes, maximum, expiry, nonce, signature, sender=w.coordinator
    )


def balance(w, buyer, asset=None):
    return w.vault.balance_of(buyer.address, w.usdc.address if asset is None else asset)


def test_attack__one_key_for_two_assets__a_usdc_voucher_never_debits_the_other_asset(w, buyer):
    """The wallet uses one session key for USDC and CLD: the coordinator posts the USDC
    voucher (ceiling 50) on the CLD session, fresh and on a lane CLD already bound."""
    register(w, buyer, SHARED_KEY)
    register(w, buyer, SHARED_KEY, asset=w.cld.address)
    w.next_window()
    usdc_voucher = w.debit(SHARED_KEY, buyer, 0, 50 * USD, 0)
    w.settle_signed([usdc_voucher])
    cld_before = balance(w, buyer, w.cld.address)
    stolen = SignedDebit(buyer.address, 0, 50 * USD, 1, usdc_voucher.signature)
    with boa.reverts("vault: voucher not signed by the session key"):
        w.settle_signed([stolen], asset=w.cld.address, credit=False)
    w.settle_signed([w.debit(SHARED_KEY, buyer, 1, 0, 0, asset=w.cld.address)], asset=w.cld.address, credit=False)
    with boa.reverts("vault: voucher not signed by the session key"):
        w.settle_signed(
            [SignedDebit(buyer.address, 1, 50 * USD, 1, usdc_voucher.signature)], asset=w.cld.address, credit=False
        )
    assert balance(w, buyer, w.cld.address) == cld_before
    assert w.vault.lane_settled(buyer.address, w.cld.address, 0) == 0


def test_attack__one_key_for_two_sessions__the_old_sessions_voucher_refused(w, buyer):
    """The wallet registers the SAME key again after its first session ended: session 0's
    highest voucher (ceiling 50, 10 settled) names session 0, so it moves nothing in the
    new session, whose lanes start at 0 (the key matches; the session id does not)."""
    register(w, buyer, SHARED_KEY, lifetime=EPOCH)
    w.next_window()
    old = w.debit(SHARED_KEY, buyer, 0, 50 * USD, 10 * USD)
    w.settle_signed([old])
    w.next_window(2)
    register(w, buyer, SHARED_KEY)
    w.next_window()
    before = balance(w, buyer)
    for amount in (40 * USD, 1):
        with boa.reverts("vault: voucher not signed by the session key"):
            w.settle_signed([SignedDebit(buyer.address, 0, 50 * USD, amount, old.signature)])
    assert balance(w, buyer) == before
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 0) == 0


def test_attack__one_key_for_two_accounts__a_voucher_never_moves_to_the_other_account(w, buyer):
    """Two wallets (e.g. one operator's) share one session key: buyer 0's voucher is posted
    against buyer 1, whose session's key is the very signer."""
    other = w.buyers[1]
    register(w, buyer, SHARED_KEY)
    register(w, other, SHARED_KEY)
    w.next_window()
    voucher = w.debit(SHARED_KEY, buyer, 0, 50 * USD, 5 * USD)
    w.settle_signed([voucher])
    w.settle_signed([w.debit(SHARED_KEY, other, 0, USD, USD)])  # other's lane 0 bound too
    for lane in (0, 1):
        with boa.reverts("vault: voucher not signed by the session key"):
            w.settle_signed([SignedDebit(other.address, lane, 50 * USD, 5 * USD, voucher.signature)])
    assert balance(w, other) == 999 * USD
    assert balance(w, buyer) == 995 * USD


def test_attack__slot_rewrites_between_debits__the_session_maximum_is_never_reset(w, buyer):
    """The account slot carries the session's maximum left; a deposit, an exit request,
    a spend-cap revocation and the session's revocation all rewrite or touch that slot
    between debits. None gives the coordinator (or a thief of the key) a fresh maximum."""
    key = w.open_session(buyer, maximum=30 * USD)
    w.next_window()
    w.settle_signed([w.debit(key, buyer, 0, 10**12, 20 * USD)])
    w.usdc.mint(buyer.address, 5 * USD)
    w.vault.deposit(w.usdc.address, 5 * USD, sender=buyer.address)
    w.vault.revoke_spend_cap(w.usdc.address, sender=buyer.address)
    w.vault.revoke_session_key(w.usdc.address, sender=buyer.address)
    with boa.reverts("vault: debit above the session maximum"):
        w.settle_signed([w.debit(key, buyer, 1, 10**12, 10 * USD + 1)])
    w.settle_signed([w.debit(key, buyer, 1, 10**12, 10 * USD)])
    w.next_window()
    with boa.reverts("vault: debit above the session maximum"):
        w.settle_signed([w.debit(key, buyer, 2, 10**12, 1)])
    assert balance(w, buyer) == 975 * USD
    assert w.vault.session_key(buyer.address, w.usdc.address)[4] == 30 * USD


def test_attack__the_delegated_module_called_directly__moves_nothing(w, buyer):
    """Anyone may call CreditsVaultSigned itself: it has no vault clock, so each entry
    point reverts, and the vault's own state is not its storage anyway."""
    from vault_signed_world import SIGNED

    key = w.open_session(buyer)
    w.next_window()
    module = SIGNED.at(w.vault.signed_module())
    debit = w.debit(key, buyer, 0, 10 * USD, 10 * USD)
    with boa.reverts():
        module.settle_signed(
            1, w.usdc.address, pack_signed_entries([debit]), [], 0, 0, b"\x00" * 32, sender=w.coordinator
        )
    with boa.reverts():
        module.revoke_session_key(w.usdc.address, sender=buyer.address)
    with boa.reverts():
        module.register_session_key(
            buyer.address, w.usdc.address, buyer.address, 1, USD, w.now() + 600, 0, b"\x00" * 65
        )
    assert balance(w, buyer) == 1_000 * USD
    assert w.vault.session_key(buyer.address, w.usdc.address)[0] == Account.from_key(key).address


def test_attack__replaying_every_voucher_ever_signed__each_lane_within_its_highest(w, buyer):
    """A rogue coordinator keeps every voucher the key signed (3 lanes, rising ceilings over
    4 windows) and, seeded, posts random (voucher, amount) picks — replays, stale ones,
    split ones — in several batches per window. Whatever lands: Σ settled on a lane ≤ its
    highest voucher, Σ over the session ≤ its maximum, and the balance moved by that Σ."""
    rng = random.Random(23)
    maximum = 120 * USD
    key = w.open_session(buyer, lanes=3, maximum=maximum)
    w.next_window()
    signed: dict[int, list[SignedDebit]] = {lane: [] for lane in range(3)}
    highest = dict.fromkeys(range(3), 0)
    for _ in range(4):
        for lane in range(3):
            highest[lane] += rng.randrange(1, 30) * USD
            signed[lane].append(w.debit(key, buyer, lane, highest[lane], 0))
        for _ in range(3):
            picks = []
            for lane in rng.sample(range(3), rng.randrange(1, 4)):
                v = rng.choice(signed[lane])
                amount = rng.choice([v.ceiling, v.ceiling // 2, rng.randrange(1, v.ceiling + 1)])
                picks.append(SignedDebit(buyer.address, lane, v.ceiling, amount, v.signature))
            picks.sort(key=lambda d: d.lane)
            with contextlib.suppress(boa.BoaError):  # refused as a whole: the next try
                w.settle_signed(picks)
        w.next_window()
    settled = [w.vault.lane_settled(buyer.address, w.usdc.address, lane) for lane in range(3)]
    for lane in range(3):
        assert settled[lane] <= highest[lane]
    assert sum(settled) <= maximum
    assert sum(settled) > 0  # the run did land debits (else it proves nothing)
    assert balance(w, buyer) == 1_000 * USD - sum(settled)
    assert w.conserved()
