"""Breaking the agent's reorg re-check with a retried redemption (rbreak, session 9).

Found: a redeem reverted (the redemption failed, the user told "nothing was sold"); the
user granted again and redeemed again (R2: sold, credits bought, released). A reorg then
orphaned the revert, and the agent re-sent the failed redeem's bytes (a failed redeem was
"selling" again on a reorg), which sold at the first nonce and took escrow id 1; R2's
re-sent release, whose receipt names id 1, released it; R2's own sale escrowed id 2 and
stayed open. Tokens sold twice, credits bought once, and both redemptions read "released"
while escrow 2 held the user's USDC unreported. As the coordinator does with a failed
batch's settle: a failed redeem the chain no longer holds is never re-sent; its nonce is
filled with a no-op (should a node include the old bytes first, the no-op is found
dropped and the sale is read again from their receipt).
"""

from __future__ import annotations

import copy

import pytest
from agent_fakes import USER

from promptex.agent.store import FAILED, RELEASED
from promptex.chain.txlog import TxPending
from promptex.protocol.redemption import STATUS_OPEN
from promptex.protocol.units import USD_MICRO as USD


def _failed_then_retried_then_reorged(world):  # noqa: ANN001, ANN202
    """R1 reverts (the grant revoked first); the user grants again and R2 goes through;
    then a reorg back to before R1 was mined, which re-includes nothing."""
    chain = world.chain
    chain.hold = True
    with pytest.raises(TxPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    fork = copy.deepcopy(chain.s), dict(chain.receipts)
    grant = chain.s.grants[USER]
    chain.s.grants[USER] = ("0x" + "0" * 40, 0, 0, 2)  # revoked before it is mined
    chain.mine()
    chain.hold = False
    world.agent().run_once(check_rules=False)
    assert world.agent().store.get(1).status == FAILED
    chain.s.grants[USER] = grant  # granted again; the user retries
    assert world.agent().redeem(USER, "CLD", 20 * USD, "anthropic").status == RELEASED
    head = chain.block
    chain.s, chain.receipts = copy.deepcopy(fork[0]), dict(fork[1])  # the reorg: R1's revert orphaned
    chain.block = head + 1


def test_failed_redeem_orphaned_after_the_user_retried__never_re_sent__sold_once_nothing_left_in_escrow(
    agent_world,  # noqa: ANN001
) -> None:
    world, chain = agent_world, agent_world.chain
    _failed_then_retried_then_reorged(world)
    agent = world.agent()
    for _ in range(3):
        agent.run_once(check_rules=False)

    r1, r2 = agent.store.get(1), agent.store.get(2)
    assert (r1.status, r2.status) == (FAILED, RELEASED)
    assert (chain.s.redeems, chain.s.releases, len(world.billing.purchases)) == (1, 1, 1)
    open_ = [i for i in range(1, chain.s.redeems + 1) if chain.redemption(i).status == STATUS_OPEN]
    assert open_ == [] and chain.redemption(r2.chain_redemption_id or 0).status != STATUS_OPEN


def test_failed_redeem_orphaned__a_node_includes_its_old_bytes_before_the_no_op__the_sale_is_read_again(
    agent_world,  # noqa: ANN001
) -> None:
    """The same, but a node mines the failed redeem's old bytes before the no-op: the no-op
    is found dropped and the redemption, failed, reads its sale again (escrowed, bought,
    released) instead of staying failed with the user's USDC in its escrow. (The chain sold
    twice here; R2's own re-sent sale, escrowed under id 2, is the reorg-after-purchase
    rule's: left open in the findings.)"""
    world, chain = agent_world, agent_world.chain
    _failed_then_retried_then_reorged(world)
    agent = world.agent()
    r1_redeem = agent.store.tx(agent.store.get(1).redeem_tx_id or 0)
    chain.hold = True
    assert agent.run_once(check_rules=False).waiting is not None  # the no-op stored and sent, held
    assert [tx.purpose for tx in agent.store.open_txs()][0] == "noop"
    chain.mempool.clear()  # the no-op and the rest lost; the old bytes mined first
    chain.hold = False
    chain.broadcast(r1_redeem.raw)
    for _ in range(4):
        agent.run_once(check_rules=False)

    r1 = agent.store.get(1)
    assert (r1.status, r1.chain_redemption_id) == (RELEASED, 1) and chain.redemption(1).status != STATUS_OPEN
