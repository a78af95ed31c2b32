"""rbreak4 (s14): what a receipt's sale (`sale_id`: the agent's key and the `sale_ref` it
passed to `redeem`) is bound to.

1. The ref was the redeem's nonce: unique on one branch, not across a reorg. A reorg that
   orphans a sale already bought and released can give its nonce to the same user's next
   sale (signed after the run's re-check, before anything re-sent the orphaned redeem: the
   node forgot it). Both sales are then the same (key, nonce), same user and account, at
   the same escrow id on the new branch; the first one's receipt, public in its release's
   calldata, released the second (its old release bytes at their nonce, or anyone's
   transaction with the same arguments), for credits bought for a sale that no longer
   exists. Now the ref is fresh for each redeem signed (`new_sale_ref`).
2. rbind's open item 2: a purchase whose answer was lost, then the sale orphaned and its
   redeem dropped (a cancel took its nonce) and signed again: asked again under its kept
   key for the new sale, the billing API refuses (409); the redemption is rejected for the
   user to refund, the credits bought once.
"""

from __future__ import annotations

import copy

import pytest
from agent_fakes import AGENT, ESCROW, PAYEE, USER, Crash, crashing_at
from eth_abi.abi import encode
from eth_account import Account
from eth_utils.address import to_checksum_address
from test_agent_reorg_after_purchase import _released_then_reorged

from promptex.agent.chain import transaction_data
from promptex.agent.machine import REORG_WINDOW
from promptex.agent.store import ESCROWED, FAILED, REJECTED, RELEASED
from promptex.protocol.redemption import (
    REDEEM_SELECTOR,
    STATUS_OPEN,
    STATUS_REFUNDED,
    STATUS_RELEASED,
    new_sale_ref,
    redeem_sale_ref,
)
from promptex.protocol.units import USD_MICRO as USD


@pytest.fixture
def world(agent_world):
    return agent_world


def test_reorg__a_released_sales_nonce_reused_by_the_users_next_sale__its_receipt_never_releases_that_sale(
    world, monkeypatch
):
    chain = world.chain
    r1 = _released_then_reorged(world)  # escrow id 1, bought, released; a reorg back to before its sale
    store = world.agent().store
    release = store.tx(r1.release_tx_id)
    agent = world.agent()
    # The reorg landed just after this run re-checked its receipts (the node forgot the
    # orphaned transactions): the user's next sale is signed at redemption 1's nonce.
    monkeypatch.setattr(agent.machine, "recheck_orphaned_txs", lambda: None)
    with crashing_at(monkeypatch, "escrowed"), pytest.raises(Crash):
        agent.redeem(USER, "CLD", 5 * USD, "anthropic")
    r2 = store.get(2)
    assert (r2.status, r2.chain_redemption_id) == (ESCROWED, 1)
    assert store.tx(r2.redeem_tx_id).nonce == store.tx(r1.redeem_tx_id).nonce
    # Redemption 1's release (its bytes, public on the orphaned branch) is included again:
    # its nonce is the next. Before: sale (key, nonce 0) was both sales; id 1 paid out.
    chain.broadcast(release.raw)
    assert not chain.receipt(release.tx_hash).ok, "redemption 1's receipt released redemption 2's sale"
    assert chain.s.records[1]["status"] == STATUS_OPEN and chain.s.usdc.get(PAYEE, 0) == 0

    # The agent then reads both: redemption 1's sale undone (credits bought, named),
    # redemption 2 bought for and released with its own receipt.
    agent = world.agent()
    agent.run_once(check_rules=False)
    agent.run_once(check_rules=False)
    assert (store.get(1).status, store.get(2).status, store.get(2).chain_redemption_id) == (FAILED, RELEASED, 1)
    assert chain.s.records[1]["status"] == STATUS_RELEASED and chain.s.usdc[PAYEE] == 5 * USD
    assert len(world.billing.purchases) == 2


def test_sale_ref__read_from_the_signed_redeem__typed_and_legacy():
    """The agent reads a redeem's sale from the bytes it signed (no column: rows signed
    with the nonce as the ref read as such)."""
    ref = new_sale_ref()
    assert len(ref) == 32 and ref != new_sale_ref()
    types = ["address", "address", "uint256", "uint256", "uint256", "bytes32"]
    args = encode(types, [USER, AGENT.lower(), 20 * USD, 10**24, 1, ref])
    data = REDEEM_SELECTOR + args
    key = "0x" + "4d" * 32
    common = {"to": to_checksum_address(ESCROW), "value": 0, "gas": 300_000, "nonce": 7, "chainId": 31337, "data": data}
    typed = Account.sign_transaction({**common, "maxFeePerGas": 10**9, "maxPriorityFeePerGas": 1}, key)
    legacy = Account.sign_transaction({**common, "gasPrice": 10**9}, key)
    for signed in (typed, legacy):
        assert redeem_sale_ref(transaction_data("0x" + bytes(signed.raw_transaction).hex())) == ref
    assert redeem_sale_ref(b"\x01\x02\x03\x04" + args) is None  # another function
    assert redeem_sale_ref(data[:-1]) is None


def test_purchase_answer_lost__sale_orphaned_and_its_redeem_dropped_then_signed_again__refused_409_user_refunds(
    world,
):
    """rbind s13 open item 2. The purchase for escrow id 1 bought, its answer lost; a reorg
    orphaned the sale and a cancel took its redeem's nonce (a window deep: dropped); the
    redemption was sold again (a new redeem, another sale, escrow id 1 on the new branch).
    Asked again under the key first asked under, for another sale, the billing API answers
    409: rejected at once, never bought twice, never released; the user refunds id 1."""
    chain = world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    world.billing.fail_after_apply = 1
    agent = world.agent()
    r = agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    assert (r.status, r.chain_redemption_id, len(world.billing.purchases)) == (ESCROWED, 1, 1)
    first = agent.store.tx(r.redeem_tx_id)
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2] + 1
    chain.burn_nonce()  # a cancel takes the redeem's nonce on the new branch
    agent = world.agent()
    agent.run_once(check_rules=False)
    assert agent.store.get(r.id).status == "selling"  # not dropped before the cancel is a window deep
    chain.mine_blocks(REORG_WINDOW)
    chain.time += 60  # the purchase's retry is due
    agent.run_once(check_rules=False)
    after = agent.store.get(r.id)
    assert agent.store.tx(after.redeem_tx_id).nonce != first.nonce  # sold again, another sale
    assert (after.status, after.chain_redemption_id) == (REJECTED, 1), (after.status, after.error)
    assert len(world.billing.purchases) == 1 and world.billing.balances["acct_user_1"] == 25 * USD
    assert chain.s.records[1]["user"] == USER and chain.s.releases == 0
    note = [n for n in agent.store.notifications() if n.kind == "rejected"]
    assert len(note) == 1 and "`promptex wallet refund --redemption 1`" in note[0].body
    chain.time = chain.s.records[1]["deadline"] + 1
    chain.refund(1)
    assert chain.s.records[1]["status"] == STATUS_REFUNDED and chain.s.usdc[ESCROW] == 0
    assert agent.run_once(check_rules=False).advanced == {}
