"""xbreak (session 10): a redeem closed dropped (its nonce seen taken, no receipt within
the grace) is taken never to have run, and its redemption is sold again. Where the node
served the nonce before the receipt for longer than the grace (or a reorg within the
window orphaned what took the nonce, and the bytes landed), the user sold twice for one
purchase: the first sale's USDC sat in the escrow under an id no redemption names, nobody
told (nor `promptex reconcile`, which reads the agent's redemptions). Now the agent reads
such a redeem by receipt each pass while its nonce is not final, and tells the user once
what was sold and how to refund it."""

from __future__ import annotations

import copy

import pytest
from agent_fakes import USER

from promptex.agent.service import RedemptionPending
from promptex.agent.store import RELEASED, SELLING
from promptex.protocol.units import USD_MICRO as USD


@pytest.fixture
def world(agent_world):
    return agent_world


@pytest.mark.parametrize("sibling", [False, True], ids=["alone", "a-refused-sibling-at-its-nonce"])
def test_redeem_mined_its_receipt_served_after_the_grace__not_sold_again__one_sale(world, monkeypatch, sibling):
    """The node serves the redeem's nonce taken, not yet its receipt (past the 3 s grace):
    nothing the log holds took the nonce, so the redeem is not dropped before that is a
    window deep; the receipt comes meanwhile and the sale is the redemption's own. Before:
    dropped, sold again (redeems == 2), the first sale stray. A sibling the log holds at
    that nonce without a receipt (another process's redeem the node refused) took nothing."""
    world.chain.hold = True
    with pytest.raises(RedemptionPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    (tx,) = world.agent().store.open_txs()
    if sibling:
        store, refused = world.agent().store, world.chain.sign_noop(tx.nonce, tx.tx_hash)
        with store._tx() as conn:
            sibling_id = store._store_tx(conn, "redeem", refused, world.chain.sender, 0)
        store.close_tx(sibling_id, "dropped", None, 0)
    lagging = {tx.tx_hash}  # the node serves the nonce, not yet the receipt
    real = world.chain.receipts.get
    monkeypatch.setattr(world.chain, "receipt", lambda h: None if h in lagging else real(h))
    monkeypatch.setattr(world.chain, "wait", lambda h, timeout: world.chain.receipt(h))
    world.chain.mine()
    world.chain.hold = False
    report = world.agent().run_once(check_rules=False)
    assert report.advanced == {} and "not taken for dropped (nor the tokens sold again) before block" in (
        report.waiting or ""
    )
    assert world.agent().store.get(1).status == SELLING and world.chain.s.redeems == 1
    lagging.clear()  # the node catches up: the first sale is the redemption's own
    assert world.agent().run_once(check_rules=False).advanced == {1: RELEASED}

    assert world.agent().store.tx(tx.id).status == "succeeded" and world.agent().store.get(1).chain_redemption_id == 1
    assert [n for n in world.agent().store.notifications() if n.kind == "stray_sale"] == []
    assert world.chain.s.redeems == 1 and world.chain.s.releases == 1 and len(world.billing.purchases) == 1


def test_redeem_nonce_taken_by_a_cancel_that_stays__sold_again_only_once_it_is_a_window_deep(world):
    """A wallet's cancel takes the redeem's nonce (outside the log) and stays: the
    redemption waits, selling, until the head at which that was first seen is reorg_window
    blocks deep, then sells again, once (a restart keeps the head: a new agent each pass)."""
    world.chain.lose = True
    with pytest.raises(RedemptionPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    world.chain.lose = False
    world.chain.burn_nonce()  # the cancel
    seen = world.chain.head()
    window = world.agent().machine.reorg_window
    report = world.agent().run_once(check_rules=False)
    assert f"(seen at block {seen})" in (report.waiting or "") and f"before block {seen + window}, {window} blocks" in (
        report.waiting or ""
    )
    world.chain.mine_blocks(window - 1)
    assert world.agent().run_once(check_rules=False).advanced == {}
    assert world.agent().store.get(1).status == SELLING and world.chain.s.redeems == 0
    world.chain.mine_blocks(1)
    assert world.agent().run_once(check_rules=False).advanced == {1: RELEASED}
    assert world.chain.s.redeems == 1 and world.chain.s.releases == 1 and len(world.billing.purchases) == 1


def test_cli_redeem__nonce_taken_outside_the_log__prints_the_waiting_line_not_a_traceback(world, monkeypatch):
    from test_agent_pending import _cli

    world.chain.lose = True
    code, out = _cli(world, monkeypatch, "20")
    assert code == 1 and "is selling, waiting for redeem tx 0x" in out
    world.chain.lose = False
    world.chain.burn_nonce()  # a wallet's cancel
    code, out = _cli(world, monkeypatch, "20", "--resume", "1")
    assert code == 1 and out.count("\n") == 1 and "Traceback" not in out
    assert "redemption 1 ($20.00 of anthropic credits for CLD) is selling, waiting: redeem tx 0x" in out
    assert f"not taken for dropped (nor the tokens sold again) before block {world.chain.head() + 128}" in out
    world.chain.mine_blocks(128)
    assert _cli(world, monkeypatch, "20", "--resume", "1") == (0, "redemption 1: released\n")
    assert world.chain.s.redeems == 1


@pytest.mark.parametrize("window", [128, 2], ids=["waits-selling", "window-passed-failed"])
def test_sale_undone_after_the_purchase_its_redeem_dropped__then_it_lands__read_again_released_not_failed(
    world, window
):
    """A reorg undid redemption 1's sale after the purchase; on the new branch the redeem's
    nonce went to a transaction outside the log (a wallet's cancel). The redeem is not
    dropped before that is a window deep: the redemption waits (releasing). Were the window
    passed (a short one here), the redeem closed dropped and the redemption failed ("nothing
    was sold"). A second reorg orphans the cancel and the redeem lands (escrow id 1, the
    user's tokens sold), and its release with it: released, bought once, either way."""
    import copy

    from test_agent_reorg_after_purchase import _released_then_reorged

    chain = world.chain
    r = _released_then_reorged(world)
    raws = [world.agent().store.tx(i).raw for i in (r.redeem_tx_id, r.release_tx_id)]
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    chain.burn_nonce()  # the cancel takes the redeem's nonce on this branch
    world.agent(reorg_window=window).run_once(check_rules=False)
    # waits, its redeem not dropped (receipted: its release, orphaned with the sale, is never re-sent: abreak2 s12)
    assert world.agent().store.get(r.id).status == "receipted"
    if window == 2:
        chain.mine_blocks(window)
        world.agent(reorg_window=window).run_once(check_rules=False)
        assert world.agent().store.get(r.id).status == "failed"
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2] + 3
    for raw in raws:
        chain.broadcast(raw)  # a pool's copies: the redeem (escrow id 1) and the release land
    for _ in range(2):
        world.agent(reorg_window=window).run_once(check_rules=False)

    after = world.agent().store.get(r.id)
    assert (after.status, after.chain_redemption_id) == (RELEASED, 1)
    s = chain.s
    assert s.redeems == 1 and s.releases == 1 and len(world.billing.purchases) == 1


def _redeem_lost_then_a_cancel_seen(world):  # noqa: ANN001, ANN202
    """The redeem's broadcast lost, a wallet's cancel takes its nonce, and a pass sees it
    taken (the head stored). Returns the chain's state before the cancel and that head."""
    chain = world.chain
    chain.lose = True
    with pytest.raises(RedemptionPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    chain.lose = False
    free = copy.deepcopy(chain.s)  # the branch without the first cancel
    chain.burn_nonce()  # the first cancel
    first = chain.head()
    assert f"(seen at block {first})" in (world.agent().run_once(check_rules=False).waiting or "")
    return free, first


def _a_second_cancel_a_window_after(world, first: int) -> None:  # noqa: ANN001
    """A second cancel takes the redeem's nonce, mined at `first` + the window: the redeem is
    not taken for dropped then (its window counts from that head), and is a window later —
    released, sold once."""
    chain, window = world.chain, world.agent().machine.reorg_window
    chain.burn_nonce()
    chain.mine_blocks(1)
    second = chain.head()
    assert second == first + window
    report = world.agent().run_once(check_rules=False)
    assert report.advanced == {} and f"(seen at block {second})" in (report.waiting or "")
    assert world.agent().store.get(1).status == SELLING and chain.s.redeems == 0
    chain.mine_blocks(window)
    assert world.agent().run_once(check_rules=False).advanced == {1: RELEASED}
    assert chain.s.redeems == 1 and chain.s.releases == 1 and len(world.billing.purchases) == 1


def test_redeem_nonce_cancel_orphaned_then_a_second_cancel__its_window_counts_from_the_second(world):
    """rbreak (session 11): a wallet's cancel took the redeem's nonce (seen at block H,
    stored); a reorg within the window orphaned it, and the agent sent the redeem's bytes
    again (its nonce free, the bytes waiting in the pool); then a second cancel took the
    nonce at block H + window. The stored head was still H: the redeem was taken for
    dropped at once and the tokens sold again while what took its nonce was one block
    deep (a reorg of it, the redeem landing, would sell twice for one purchase). A nonce
    seen free forgets the head: the window counts from the second cancel."""
    chain, window = world.chain, world.agent().machine.reorg_window
    free, first = _redeem_lost_then_a_cancel_seen(world)
    chain.mine_blocks(window - 1)
    chain.s, chain.hold = copy.deepcopy(free), True  # a reorg orphans it: the nonce is free
    assert "redeem tx" in (world.agent().run_once(check_rules=False).waiting or "")  # sent again, in the pool
    chain.mempool.clear()  # the second cancel replaces the redeem's bytes in the pool, and is mined
    chain.hold = False
    _a_second_cancel_a_window_after(world, first)


def test_redeem_nonce_cancel_swapped_by_a_reorg_between_passes__its_window_counts_from_after_the_swap(world):
    """rbreak (s11) item 4: a wallet's cancel took the redeem's nonce (seen at block H,
    stored); between two passes a reorg replaced that block and a later cancel took the
    nonce on the new branch at H + window - 1, the nonce never seen free. The stored head
    was still H: the redeem was taken for dropped at once and the tokens sold again while
    what took its nonce was a block deep. The block's hash is kept with its head: replaced,
    the window counts again from the head then."""
    chain, window = world.chain, world.agent().machine.reorg_window
    free, first = _redeem_lost_then_a_cancel_seen(world)
    chain.s = copy.deepcopy(free)  # a reorg from below the first cancel's block: the first cancel gone…
    chain.forks.append(first - 1)
    chain.mine_blocks(window - 1)
    _a_second_cancel_a_window_after(world, first)  # …and a second one takes the nonce on the new branch
