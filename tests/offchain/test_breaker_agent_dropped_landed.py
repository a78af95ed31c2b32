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
