"""xbreak (session 10): a redeem closed dropped (its nonce seen taken, no receipt within
the grace) is taken never to have run, and its redemption is sold again. Where the node
served the nonce before the receipt for longer than the grace (or a reorg within the
window orphaned what took the nonce, and the bytes landed), the user sold twice for one
purchase: the first sale's USDC sat in the escrow under an id no redemption names, nobody
told (nor `promptex reconcile`, which reads the agent's redemptions). Now the agent reads
such a redeem by receipt each pass while its nonce is not final, and tells the user once
what was sold and how to refund it."""

from __future__ import annotations

import pytest
from agent_fakes import USER

from promptex.agent.service import RedemptionPending
from promptex.agent.store import RELEASED
from promptex.protocol.units import USD_MICRO as USD


@pytest.fixture
def world(agent_world):
    return agent_world


def test_redeem_mined_its_receipt_served_after_the_grace__sold_again__the_user_is_told_of_the_first_sale(
    world, monkeypatch
):
    world.chain.hold = True
    with pytest.raises(RedemptionPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    (tx,) = world.agent().store.open_txs()
    lagging = {tx.tx_hash}  # the node serves the nonce, not yet the receipt
    real = world.chain.receipts.get
    monkeypatch.setattr(world.chain, "receipt", lambda h: None if h in lagging else real(h))
    monkeypatch.setattr(world.chain, "wait", lambda h, timeout: world.chain.receipt(h))
    world.chain.mine()
    world.chain.hold = False
    assert world.agent().run_once(check_rules=False).advanced == {1: RELEASED}  # sold again, released
    assert world.agent().store.tx(tx.id).status == "dropped" and world.chain.s.redeems == 2
    lagging.clear()  # the node catches up: the first sale is escrow redemption 1, which nothing names
    for _ in range(2):
        world.agent().run_once(check_rules=False)

    (stray,) = [n for n in world.agent().store.notifications() if n.kind == "stray_sale"]
    assert stray.user == USER and "Escrow redemption 1 sold tokens of yours for $20.00" in stray.body
    assert "`promptex wallet refund --redemption 1`" in stray.body
    assert world.chain.s.releases == 1 and len(world.billing.purchases) == 1


def test_sale_undone_after_the_purchase_its_redeem_dropped__then_it_lands__read_again_released_not_failed(world):
    """A reorg undid redemption 1's sale after the purchase; on the new branch the redeem's
    nonce went to a transaction outside the log (a wallet's cancel): the redeem closed
    dropped, the redemption failed ("nothing was sold"). A second reorg within the window
    orphans the cancel and the redeem lands (escrow id 1, the user's tokens sold), and its
    release with it. The books said failed while the chain sold and released; now the sale
    is read again: released, bought once."""
    import copy

    from test_agent_reorg_after_purchase import _released_then_reorged

    chain = world.chain
    r = _released_then_reorged(world)
    raws = [world.agent().store.tx(i).raw for i in (r.redeem_tx_id, r.release_tx_id)]
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    chain.burn_nonce()  # the cancel takes the redeem's nonce on this branch
    world.agent().run_once(check_rules=False)
    assert world.agent().store.get(r.id).status == "failed"
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2] + 3
    for raw in raws:
        chain.broadcast(raw)  # a pool's copies: the redeem (escrow id 1) and the release land
    for _ in range(2):
        world.agent().run_once(check_rules=False)

    after = world.agent().store.get(r.id)
    assert (after.status, after.chain_redemption_id) == (RELEASED, 1)
    s = chain.s
    assert s.redeems == 1 and s.releases == 1 and len(world.billing.purchases) == 1
