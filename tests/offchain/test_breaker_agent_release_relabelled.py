"""abreak2 (s12): a release signed for escrow id N is bound to the id, not to the sale.
A reorg after the release moves our sale to id N+1 while a sale of the SAME user and
account (through another agent key, so not ordered behind our nonces) takes id N on the
new branch. The release's bytes, re-sent as they were, then pass every check the escrow
makes on id N (open, the user's provider and account, the amount due at most the
receipt's) and pay out that other sale, while ours sits open under N+1.

Fixed twice: the agent never re-sends those bytes (e58d7cf, 482f126, 20ac9e4), and a receipt
names the sale (rbind s13: the agent's key and its redeem's nonce), so the escrow refuses
them on another sale whoever includes them (a node or pool that still holds them)."""

from __future__ import annotations

import copy

import pytest
from agent_fakes import PAYEE, USER, Crash, crashing_at
from agent_world import ANTHROPIC
from test_agent_reorg_after_purchase import _released_then_reorged

from promptex.agent.machine import REORG_WINDOW
from promptex.agent.store import REJECTED, RELEASED, RELEASING
from promptex.protocol.redemption import STATUS_OPEN, sale_hash, sale_id, sale_ref
from promptex.protocol.units import USD_MICRO as USD

OTHER_AGENT = "0x00000000000000000000000000000000000A6E48"  # another agent key the same user granted


@pytest.fixture
def world(agent_world):
    return agent_world


def _the_users_other_sale_at_id_1(chain):  # noqa: ANN001, ANN202
    """The same user's sale, same account, $5, through another agent key (its first: nonce 0,
    the same sale_ref as ours): earlier on the new branch, it takes escrow id 1."""
    chain.s.redeems += 1
    chain.s.records[1] = {
        "user": USER, "payee": PAYEE, "usdc": 5 * USD, "deadline": chain.time + 3_600, "status": STATUS_OPEN,
        "hash": sale_hash(ANTHROPIC, chain.s.linked[(USER, ANTHROPIC)], sale_id(OTHER_AGENT, sale_ref(0))),
    }  # fmt: skip


def _two_passes__ours_rejected_at_id_2__the_other_sale_at_id_1_left_open(world, redemption_id):  # noqa: ANN001
    """The agent's next two passes after the reorg: our sale is escrow id 2 now and the
    receipt names id 1, which (another redemption's) is not ours to release."""
    chain = world.chain
    agent = world.agent()
    agent.run_once(check_rules=False)
    agent.run_once(check_rules=False)
    after = agent.store.get(redemption_id)
    assert chain.s.records[2]["user"] == USER and chain.s.records[2]["usdc"] == 20 * USD
    assert chain.s.records[1]["status"] == STATUS_OPEN, "our old release paid out the other sale at id 1"
    # Our row names the id that holds the user's USDC, and the user is told to refund it.
    assert (after.status, after.chain_redemption_id) == (REJECTED, 2)
    assert any("refund --redemption 2" in n.body for n in agent.store.notifications())
    assert len(world.billing.purchases) == 1


def test_reorg__release_re_sent_after_the_sale_moved__never_releases_the_users_other_sale_at_the_old_id(world):
    r = _released_then_reorged(world)
    _the_users_other_sale_at_id_1(world.chain)
    _two_passes__ours_rejected_at_id_2__the_other_sale_at_id_1_left_open(world, r.id)


def _release_unmined_then_reorged(world, monkeypatch):  # noqa: ANN001, ANN202
    """Redemption 1 sold (escrow id 1) and bought; its release signed and sent but never
    mined (the node lost it: still "sent" in the log); then a reorg back to before the sale,
    on whose new branch the same user's sale through another agent key takes id 1 first."""
    chain = world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    with crashing_at(monkeypatch, "receipted"), pytest.raises(Crash):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    chain.lose = True  # the release's broadcasts vanish: it stays open, unmined, in the log
    world.agent().run_once(check_rules=False)
    r = world.agent().store.get(1)
    assert (r.status, r.chain_redemption_id) == (RELEASING, 1) and chain.s.releases == 0
    chain.lose = False
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2] + 2
    _the_users_other_sale_at_id_1(chain)
    return r


def test_reorg__release_still_unmined_when_its_sale_is_orphaned__never_releases_the_users_other_sale_at_the_old_id(
    world, monkeypatch
):
    """cbreak3 (s13): e58d7cf voids a release orphaned WITH its sale, i.e. a mined one; a
    release still open when the reorg orphans the sale (pending, or lost by the node) was
    re-sent as it was after the re-sent redeem escrowed id 2: it released id 1, the other
    sale's, and the row said released at id 1 while our $20 sat open under id 2."""
    r = _release_unmined_then_reorged(world, monkeypatch)
    _two_passes__ours_rejected_at_id_2__the_other_sale_at_id_1_left_open(world, r.id)


def test_reorg__network_re_includes_sale_and_release_after_another_sale_took_the_id__row_names_where_our_usdc_is(
    world,
):
    """cbreak3 (s13): a node re-includes the orphaned redeem and release on the new branch
    (their bytes were in its pool) before the agent's next pass, after the same user's sale
    through another agent key took escrow id 1: the redeem escrows id 2 and the old release
    bytes released id 1 (the contract bound a receipt to the id only: abreak2's item 2, not
    the agent's to stop). The row said released at id 1; our $20 sat open under id 2, named
    by no row or notice. Now (rbind s13) the receipt names our sale: the release reverts on
    the other sale, nothing is paid out, and the row names id 2 (the user told to refund it:
    the receipt names id 1). Fails with the fake escrow's sale check removed."""
    chain = world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    r = world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    assert (r.status, r.chain_redemption_id) == (RELEASED, 1)
    store = world.agent().store
    redeem, release = store.tx(r.redeem_tx_id), store.tx(r.release_tx_id)
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2] + 2
    _the_users_other_sale_at_id_1(chain)
    chain.hold = True
    chain.broadcast(redeem.raw)  # the node re-includes the orphaned block's transactions
    chain.broadcast(release.raw)
    chain.hold = False
    chain.mine()
    assert chain.receipt(redeem.tx_hash).ok and not chain.receipt(release.tx_hash).ok
    assert (chain.s.records[1]["status"], chain.s.records[2]["status"]) == (STATUS_OPEN, STATUS_OPEN)
    assert chain.s.usdc.get(PAYEE, 0) == 0 and chain.s.records[2]["usdc"] == 20 * USD
    agent = world.agent()
    agent.run_once(check_rules=False)
    agent.run_once(check_rules=False)
    after = agent.store.get(r.id)
    assert (after.status, after.chain_redemption_id) == (REJECTED, 2), "the row names an id that is not our sale"
    assert any("refund --redemption 2" in n.body for n in agent.store.notifications())
    assert len(world.billing.purchases) == 1 and chain.s.records[1]["status"] == STATUS_OPEN


def test_reorg__pass_killed_after_reopening_the_sale_before_the_release__the_release_still_never_re_sent(world):
    """cbreak3 (s13): the rule read "its sale orphaned" as "its redeem among the rows this
    re-check found orphaned". A pass killed (kill -9) after it reopened the redeem and before
    it came to the release (they are handled in nonce order, each in its own database
    transaction) left the redeem open: the next pass found only the release orphaned and
    re-sent its bytes, releasing the other sale at id 1. A redeem open again (only a reorg
    reopens one) counts as its sale orphaned too."""
    chain = world.chain
    r = _released_then_reorged(world)
    _the_users_other_sale_at_id_1(chain)
    store = world.agent().store
    store.reopen_tx(store.tx(r.redeem_tx_id), chain.time)  # the killed pass's first step, committed
    agent = world.agent()
    agent.run_once(check_rules=False)
    agent.run_once(check_rules=False)
    assert chain.s.records[1]["status"] == STATUS_OPEN, "our old release paid out the other sale at id 1"
    assert (agent.store.get(r.id).status, agent.store.get(r.id).chain_redemption_id) == (REJECTED, 2)


def test_rotated_key__the_old_keys_sale_and_release_orphaned__the_new_key_never_re_sends_the_release(world):
    """cbreak3 (s13): after the agent's key is rotated, the new key re-checks the old key's
    mined rows and re-sent each orphaned one's bytes (`wait_for_other_keys`), the release of
    a sale orphaned with it included: with the same user's sale at id 1 on the new branch it
    released id 1. The new key cannot fill the old key's nonce with a no-op: the release is
    closed dropped and its redemption receipted again; its sale, re-escrowed as id 2, is
    rejected naming 2."""
    chain = world.chain
    r = _released_then_reorged(world)
    chain.sender = "0x000000000000000000000000000000000000bEEF"  # the agent restarted with a new key
    _the_users_other_sale_at_id_1(chain)
    agent = world.agent()
    for _ in range(2):
        agent.run_once(check_rules=False)
        chain.mine_blocks(REORG_WINDOW + 1)  # the old key's re-sent redeem final
    after = agent.store.get(r.id)
    assert chain.s.records[1]["status"] == STATUS_OPEN, "the old key's release paid out the other sale at id 1"
    assert (after.status, after.chain_redemption_id) == (REJECTED, 2)
    assert len(world.billing.purchases) == 1
