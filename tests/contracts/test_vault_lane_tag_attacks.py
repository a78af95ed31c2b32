"""A second person attacks signed mode's one-lane tag (b548047; issue 19, session 6).

While an account has debited one lane of its session, the vault keeps no lane word: that
lane's total is the session's "maximum - maximum left" in the account slot, and a tag in
bits 96..103 (above the 96-bit balance) says which lane it is (0 none, 1 + l lane l, 255
several). Promise: no account is debited beyond its signed ceiling per lane or its
session's maximum, no debit is lost when the first lane's total moves to its own word,
and the vault holds exactly balances + claimables + reserve. The attacks: a second lane
after the first in one batch and across batches, lane 0 after lane 1, a session ended
and a new one registered in the very next window (never in its last one; also after a
revoke), a balance at 2**96 - 1 under the tag, a trustless exit between two signed
batches, and a seeded random replay of all of it against a Python model (every voucher
ever signed kept and re-posted by a rogue coordinator).
"""

import os
import random

import boa
import pytest
from vault_signed_world import EPOCH, USD, SignedWorld

MAX_BALANCE = 2**96 - 1
# The random replay's batches: 25 in CI, 400 with the deep profile.
BATCHES = 400 if os.environ.get("HYPOTHESIS_PROFILE") in ("deep", "deep_part") else 25


@pytest.fixture(scope="module")
def world():
    return SignedWorld()


@pytest.fixture
def w(world):
    return world  # titanoboa's plugin reverts what each test does


def _settled(w, buyer, lanes: int) -> list[int]:
    return [w.vault.lane_settled(buyer.address, w.usdc.address, lane) for lane in range(lanes)]


def test_second_lane_in_one_batch_then_lane_0_after_lane_1_across_batches__totals_kept_and_bounded(w):
    """Lane 1 alone (one-lane tag), then lanes 0 and 2 in one batch: lane 1's total moves
    to its word exactly; then, in the other account, lane 1 first and lane 0 in the next
    batch. Every lane stays bounded by its own highest voucher, the session by its maximum."""
    a, b = w.buyers[0], w.buyers[1]
    ka, kb = w.open_session(a, lanes=3, maximum=50 * USD), w.open_session(b, lanes=3, maximum=50 * USD)
    w.next_window()
    w.settle_signed([w.debit(ka, a, 1, 10 * USD, 7 * USD), w.debit(kb, b, 1, 10 * USD, 9 * USD)])
    assert _settled(w, a, 3) == [0, 7 * USD, 0] and _settled(w, b, 3) == [0, 9 * USD, 0]
    # a: lanes 0 and 2 in one batch, lane 1 again above its voucher: the whole batch reverts.
    with boa.reverts("vault: debit above the voucher"):
        w.settle_signed([w.debit(ka, a, 0, 5 * USD, 5 * USD), w.debit(ka, a, 1, 10 * USD, 4 * USD)])
    w.settle_signed([w.debit(ka, a, 0, 5 * USD, 5 * USD), w.debit(ka, a, 2, 30 * USD, 30 * USD)])
    assert _settled(w, a, 3) == [5 * USD, 7 * USD, 30 * USD]
    with boa.reverts("vault: debit above the voucher"):
        w.settle_signed([w.debit(ka, a, 1, 10 * USD, 3 * USD + 1)])
    w.settle_signed([w.debit(ka, a, 1, 10 * USD, 3 * USD)])  # exactly its ceiling
    assert _settled(w, a, 3) == [5 * USD, 10 * USD, 30 * USD]
    with boa.reverts("vault: debit above the session maximum"):
        w.settle_signed([w.debit(ka, a, 0, 50 * USD, 5 * USD + 1)])  # 45 + 5 + 1 > 50
    # b: lane 0 after lane 1, in the next batch.
    w.settle_signed([w.debit(kb, b, 0, 41 * USD, 41 * USD)])
    assert _settled(w, b, 3) == [41 * USD, 9 * USD, 0]
    with boa.reverts("vault: debit above the session maximum"):
        w.settle_signed([w.debit(kb, b, 2, 1 * USD, 1)])
    assert w.vault.balance_of(a.address, w.usdc.address) == 955 * USD
    assert w.vault.balance_of(b.address, w.usdc.address) == 950 * USD
    assert w.conserved()


@pytest.mark.parametrize("revoke", [False, True])
def test_session_ended_new_one_in_the_next_window__tag_reset_old_vouchers_dead_new_maximum_its_own(w, revoke):
    """Session 0 debits one lane (tag set, 60 of 100), ends (expires, or is revoked) and
    session 1 (maximum 20) is registered in the very next window: the old tag and the old
    maximum left do not carry (lane 2 starts at 0, the new session spends at most 20),
    the old voucher moves nothing, and nothing settles before the new session starts."""
    buyer = w.buyers[0]
    old = w.open_session(buyer, lanes=4, maximum=100 * USD, lifetime=30 * 86_400 if revoke else 2 * EPOCH)
    w.next_window()
    high = w.debit(old, buyer, 2, 90 * USD, 60 * USD)
    w.settle_signed([high])
    if revoke:
        w.vault.revoke_session_key(w.usdc.address, sender=buyer.address)
    ends_at = w.vault.session_key(buyer.address, w.usdc.address)[6]
    boa.env.time_travel(seconds=ends_at - w.now())  # its last second: no new session in its window
    with boa.reverts("vault: session not ended"):
        w.open_session(buyer, lanes=4, maximum=20 * USD, tag="early")
    boa.env.time_travel(seconds=1)  # the first second after it ends
    with boa.reverts("vault: session ended"):
        w.settle_signed([w.debit(old, buyer, 2, 90 * USD, 1)])
    new = w.open_session(buyer, lanes=4, maximum=20 * USD, tag="new")
    with boa.reverts("vault: signed mode not started"):
        w.settle_signed([w.debit(new, buyer, 2, 20 * USD, 1)])
    w.next_window()
    assert _settled(w, buyer, 4) == [0, 0, 0, 0]
    for replay in (high, w.debit(old, buyer, 2, 90 * USD, 30 * USD)):
        with boa.reverts("vault: voucher not signed by the session key"):
            w.settle_signed([replay])
    w.settle_signed([w.debit(new, buyer, 2, 15 * USD, 15 * USD)])
    assert _settled(w, buyer, 4) == [0, 0, 15 * USD, 0]
    with boa.reverts("vault: debit above the session maximum"):
        w.settle_signed([w.debit(new, buyer, 3, 40 * USD, 5 * USD + 1)])
    w.settle_signed([w.debit(new, buyer, 3, 40 * USD, 5 * USD)])
    assert _settled(w, buyer, 4) == [0, 0, 15 * USD, 5 * USD]
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 920 * USD
    assert w.conserved()


def test_balance_at_2_pow_96_minus_1_under_the_tag__no_carry_either_way(w):
    """The balance fills its 96 bits under a one-lane tag of the highest lane (63: tag 64)
    and under the several-lanes tag (255): a deposit of one more unit is refused, the lane
    totals and the session's maximum left never move by a deposit, and a debit of the
    whole balance leaves the tag intact."""
    buyer = w.buyers[0]
    key = w.open_session(buyer, lanes=64, maximum=MAX_BALANCE)
    w.next_window()
    w.settle_signed([w.debit(key, buyer, 63, 3 * USD, 3 * USD)])
    top_up = MAX_BALANCE - w.vault.balance_of(buyer.address, w.usdc.address)
    w.usdc.mint(buyer.address, top_up + 1)
    with boa.reverts("vault: balance above bound"):
        w.vault.deposit(w.usdc.address, top_up + 1, sender=buyer.address)
    w.vault.deposit(w.usdc.address, top_up, sender=buyer.address)
    assert w.vault.balance_of(buyer.address, w.usdc.address) == MAX_BALANCE
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 63) == 3 * USD
    assert w.vault.session_key(buyer.address, w.usdc.address)[4] == 3 * USD
    w.settle_signed([w.debit(key, buyer, 0, 2 * USD, 2 * USD)])  # several lanes now
    w.usdc.mint(buyer.address, 2 * USD)
    w.vault.deposit(w.usdc.address, 2 * USD, sender=buyer.address)
    with boa.reverts("vault: balance above bound"):
        w.vault.deposit(w.usdc.address, 1, sender=buyer.address)
    assert [w.vault.lane_settled(buyer.address, w.usdc.address, x) for x in (0, 63)] == [2 * USD, 3 * USD]
    whole = MAX_BALANCE  # the whole balance through lane 1, a new lane at the bound
    w.settle_signed([w.debit(key, buyer, 1, whole, whole - 5 * USD)], fee=whole - 5 * USD, credit=False)
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 5 * USD
    assert [w.vault.lane_settled(buyer.address, w.usdc.address, x) for x in (0, 1, 63)] == [
        2 * USD,
        whole - 5 * USD,
        3 * USD,
    ]
    with boa.reverts("vault: debit above the session maximum"):
        w.settle_signed([w.debit(key, buyer, 2, 1, 1)])
    assert w.conserved()


def test_trustless_exit_between_two_signed_batches__only_the_exit_allowance_is_shortfall(w):
    """One lane debited (tag set), then the buyer leaves by a trustless exit with its whole
    balance; the next batch raises the same lane to its voucher: the part above the
    balance (0 now) is shortfall up to what the exit took, from the reserve, never more
    than the voucher; a second lane for more than the allowance left reverts the batch."""
    buyer = w.buyers[0]
    key = w.open_session(buyer, lanes=2, maximum=2_000 * USD, lifetime=30 * 86_400)
    w.next_window()
    w.usdc.mint(w.admin, 100 * USD)
    w.usdc.approve(w.vault.address, 100 * USD, sender=w.admin)
    w.vault.fund_reserve(w.usdc.address, 100 * USD, sender=w.admin)
    w.settle_signed([w.debit(key, buyer, 1, 10 * USD, 4 * USD)])
    w.vault.request_exit(w.usdc.address, 996 * USD, sender=buyer.address)
    boa.env.time_travel(seconds=w.vault.exit_unlocks_at(buyer.address, w.usdc.address) - w.now())
    w.vault.complete_exit(w.usdc.address, 0, False, sender=buyer.address)
    assert w.vault.balance_of(buyer.address, w.usdc.address) == 0
    with boa.reverts("vault: debit above the voucher"):
        w.settle_signed([w.debit(key, buyer, 1, 10 * USD, 6 * USD + 1)])
    w.settle_signed([w.debit(key, buyer, 1, 10 * USD, 6 * USD)])
    assert w.vault.shortfall(w.usdc.address) == 6 * USD and w.vault.reserve(w.usdc.address) == 94 * USD
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 1) == 10 * USD
    with boa.reverts("vault: uncovered debit"):
        w.settle_signed([w.debit(key, buyer, 0, 991 * USD, 990 * USD + 1)])
    w.settle_signed([w.debit(key, buyer, 0, 991 * USD, 90 * USD)])
    assert w.vault.lane_settled(buyer.address, w.usdc.address, 0) == 90 * USD
    assert w.vault.shortfall(w.usdc.address) == 96 * USD and w.vault.reserve(w.usdc.address) == 4 * USD
    assert w.conserved()


def test_random_batches_and_rotations_against_a_model__every_lane_and_session_bounded_no_debit_lost(w):
    """A seeded random run (CI: 25 batches, deep: 400): three buyers, sessions of 1-4 lanes rotated
    (revoked or let expire), batches of up to 6 entries across lanes in any order of first
    use; a rogue coordinator adds one bad entry to some batches (a kept voucher of an older
    session or spent past its ceiling, one unit above a lane's voucher or the session's
    maximum, a voucher signed for another lane): those batches revert whole. After each
    batch every lane total, the session's total, every balance and the vault's books equal
    the model's."""
    rng = random.Random(19)
    buyers = w.buyers[:3]
    sessions: dict[str, dict] = {}
    kept: list = []  # every voucher ever signed: the rogue coordinator keeps them all
    balance = {b.address: w.vault.balance_of(b.address, w.usdc.address) for b in buyers}

    def start(b) -> None:
        lanes, maximum = rng.randint(1, 4), rng.randint(1, 60) * USD
        key = w.open_session(b, lanes=lanes, maximum=maximum, lifetime=30 * 86_400, tag=str(rng.random()))
        sessions[b.address] = {"key": key, "lanes": lanes, "maximum": maximum, "settled": [0] * lanes}

    for b in buyers:
        start(b)
    w.next_window()
    refused = rotated = 0
    for step in range(BATCHES):
        entries = []
        for b in rng.sample(buyers, rng.randint(1, 3)):
            s = sessions[b.address]
            left = s["maximum"] - sum(s["settled"])
            for lane in sorted(rng.sample(range(s["lanes"]), rng.randint(1, s["lanes"]))):
                amount = rng.randint(0, max(0, left // 2))
                left -= amount
                ceiling = s["settled"][lane] + amount + rng.choice([0, 0, 1, 5 * USD])
                entries.append((b, lane, ceiling, amount))
        entries.sort(key=lambda e: (int(e[0].address, 16), e[1]))
        debits = [w.debit(sessions[b.address]["key"], b, lane, ceiling, amount) for b, lane, ceiling, amount in entries]
        kept += debits
        bad = rng.random() < 0.35
        if bad:
            b, lane, ceiling, amount = rng.choice(entries)
            s = sessions[b.address]
            i = entries.index((b, lane, ceiling, amount))
            how = rng.choice(["voucher", "maximum", "lane", "kept"])
            if how == "voucher":
                over = w.debit(s["key"], b, lane, s["settled"][lane] + amount, amount + 1)
            elif how == "maximum":
                extra = s["maximum"] - sum(s["settled"]) - sum(e[3] for e in entries if e[0] == b) + 1
                over = w.debit(s["key"], b, lane, s["settled"][lane] + amount + extra, amount + extra)
            elif how == "lane":
                over = w.debit(s["key"], b, lane, ceiling, amount, voucher_lane=s["lanes"])
            else:
                old = [d for d in kept[: -len(debits)] if d.account == b.address and d.lane == lane]
                if not old:
                    bad = False
                else:
                    k = old[rng.randrange(len(old))]  # above its ceiling (or another session's)
                    over = type(k)(
                        k.account, k.lane, k.ceiling, max(1, k.ceiling - s["settled"][lane] + 1), k.signature
                    )
            if bad:
                refused += 1
                with boa.reverts():
                    w.settle_signed([*debits[:i], over, *debits[i + 1 :]])
        w.settle_signed(debits)
        for b, lane, _, amount in entries:
            sessions[b.address]["settled"][lane] += amount
            balance[b.address] -= amount
        for b in buyers:
            s = sessions[b.address]
            assert _settled(w, b, s["lanes"]) == s["settled"], step
            assert w.vault.session_key(b.address, w.usdc.address)[4] == sum(s["settled"])
            assert w.vault.balance_of(b.address, w.usdc.address) == balance[b.address]
        assert w.conserved()
        if rng.random() < 0.2:  # one buyer rotates its session (revoke, or let it run out)
            b = rng.choice(buyers)
            w.vault.revoke_session_key(w.usdc.address, sender=b.address)
            ends_at = w.vault.session_key(b.address, w.usdc.address)[6]
            boa.env.time_travel(seconds=ends_at + 1 - w.now())
            start(b)
            rotated += 1
            w.next_window()
            # Every other buyer's session keeps its totals across the windows that passed.
    assert refused >= 5 and rotated >= 3 and sum(balance.values()) < 3_000 * USD
