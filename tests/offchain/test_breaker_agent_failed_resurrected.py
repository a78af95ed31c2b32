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
from promptex.protocol.units import utc_text


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


def test_rotated_key__the_old_keys_failed_redeem_orphaned__waits_only_until_its_swap_deadline(
    agent_world,  # noqa: ANN001
) -> None:
    """rbreak (session 9, item 2): after a rotation, the old key's failed redeem that a reorg
    took off the chain held the new key's agent for good ("only their key can fill their
    nonces: run that key's agent once"), the old key perhaps lost. Its bytes were signed
    with a swap deadline: past it they can only revert, so the new key sends them again
    like any other of that key's (they fill its nonce, fail again, sell nothing) and goes on."""
    from promptex.chain.txlog import OtherKeyPending  # noqa: PLC0415

    world, chain = agent_world, agent_world.chain
    chain.hold = True
    with pytest.raises(TxPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    fork = copy.deepcopy(chain.s), dict(chain.receipts)
    grant = chain.s.grants[USER]
    chain.s.grants[USER] = ("0x" + "0" * 40, 0, 0, 2)  # revoked before it is mined: it reverts
    chain.mine()
    chain.hold = False
    world.agent().run_once(check_rules=False)
    r1 = world.agent().store.get(1)
    assert r1.status == FAILED and r1.swap_deadline == chain.time + 300
    chain.sender = "0x000000000000000000000000000000000000bEEF"  # the agent's key rotated (the old one lost)
    head = chain.block
    chain.s, chain.receipts = copy.deepcopy(fork[0]), dict(fork[1])  # a reorg: the revert orphaned
    chain.s.grants[USER] = grant  # on this branch the grant stands: R1's bytes, before the deadline, would sell
    chain.block = head + 1

    agent = world.agent()
    assert r1.swap_deadline is not None
    with pytest.raises(OtherKeyPending, match=r"run that key's agent once") as waiting:
        agent.machine.wait_for_other_keys()  # its bytes could still sell: only its key may fill its nonce
    assert f"it can sell until {utc_text(r1.swap_deadline)}" in str(waiting.value) and chain.s.redeems == 0
    chain.time = r1.swap_deadline + 1  # past it those bytes revert ("deadline passed")
    for _ in range(2):
        agent.run_once(check_rules=False)  # sent again by the new key: mined, reverted; then its window
        assert agent.store.get(1).status == FAILED  # never "selling" again meanwhile
    assert agent.store.tx(r1.redeem_tx_id or 0).status == "reverted"
    chain.mine_blocks(128)
    assert agent.run_once(check_rules=False).waiting is None
    assert agent.store.get(1).status == FAILED and chain.s.redeems == 0  # nothing sold for R1
    r2 = agent.redeem(USER, "CLD", 20 * USD, "anthropic")  # the new key's agent works again
    assert (r2.id, r2.status) == (2, RELEASED) and chain.s.redeems == 1 and len(world.billing.purchases) == 1


def test_failed_redeem_orphaned__two_processes_replace_it_at_once__one_no_op_no_error(
    agent_world,  # noqa: ANN001
    monkeypatch,  # noqa: ANN001
) -> None:
    """rbreak (s11) item 5: `promptex redeem` and `promptex agent run` both re-check receipts,
    so both may find the failed redemption's orphaned redeem and replace it. The second,
    acting on its read from before the first's replace, closed it dropped again and stored
    a second no-op: here signed alike, the log's unique hash refused it and its pass failed
    (IntegrityError). Now the replace happens once: the second sees the first's no-op."""
    from promptex.agent import machine  # noqa: PLC0415

    world = agent_world
    _failed_then_retried_then_reorged(world)
    first, second = world.agent(), world.agent()
    read = machine.txlog.orphaned_txs(second.store, world.chain, second.machine.reorg_window, None)
    first.machine.recheck_orphaned_txs()  # replaces the failed redeem with a no-op
    monkeypatch.setattr(machine.txlog, "orphaned_txs", lambda *args: read)  # the second read before that
    second.machine.recheck_orphaned_txs()
    # (R2's release, orphaned with its sale, gets its own no-op at its nonce: abreak2 s12)
    noops = [tx for tx in second.store.open_txs() if tx.purpose == "noop" and tx.nonce == second.store.tx(1).nonce]
    assert len(noops) == 1 and second.store.tx(1).status == "dropped"
    monkeypatch.undo()
    for _ in range(2):
        second.run_once(check_rules=False)
    assert (second.store.get(1).status, second.store.get(2).status) == (FAILED, RELEASED)
    assert (world.chain.s.redeems, world.chain.s.releases, len(world.billing.purchases)) == (1, 1, 1)
