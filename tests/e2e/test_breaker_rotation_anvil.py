"""cbreak2 (session 12): the coordinator's key rotation on a real anvil.

The old key's last settle S is lost by the node (never mined) and its nonce then taken by a
transaction outside the log: the old account drained by whoever holds the old key (a key
rotated because it leaked), or a wallet's cancel of the stuck settle. The new key used to
wait for good ("some not yet mined"): only the old key's own coordinator could call S
dropped, by its account's nonce, and that key may be lost. Any key can read another
account's nonce: the new key now calls S dropped as S's own coordinator would, its batch
fails (its records back to pending, kept as its members) and the rules for another key's
failed batch take over (at its epoch at once; should S land after all, a reorg orphaning
what took its nonce, its batch takes its records back)."""

import os

import pytest
from web3 import Web3

from fixtures.coordinator import ADMIN, anvil_account
from promptex.coordinator.chain import Web3Chain
from promptex.coordinator.service import Coordinator
from promptex.protocol.units import USD_MICRO as USDC_UNIT

DEEP = os.environ.get("HYPOTHESIS_PROFILE") in ("deep", "deep_part")
NEW = anvil_account(10)  # the new coordinator key (funded and granted the role here)


@pytest.fixture
def world(coordinator_world):
    w = coordinator_world
    owner = w.vault.functions.owner().call()
    for method, params in (("anvil_impersonateAccount", [owner]), ("anvil_setBalance", [owner, hex(10**21)])):
        w.w3.provider.make_request(method, params)
    w.w3.provider.make_request("anvil_setBalance", [NEW.address, hex(10**21)])
    grant = w.vault.functions.grant_coordinator(NEW.address).build_transaction({"from": owner})
    assert w.w3.eth.wait_for_transaction_receipt(w.w3.eth.send_transaction(grant))["status"] == 1
    return w


def _coordinator(world, key, holder):
    chain = Web3Chain(world.url, world.deployment, key.key.hex())
    return Coordinator(world.ledger.engine, chain, holder=holder, tx_timeout=0.5, lease_seconds=600)


def _rpc(world, method, *params):
    answer = world.w3.provider.make_request(method, list(params))
    assert "error" not in answer, answer
    return answer["result"]


def _old_keys_settle_lost_its_nonce_taken(world):
    """X's record in the old key's settle S (epoch 1), lost by the node; a fork point; then
    the old account's nonce taken outside the log (its ether sent away). Returns X's
    account and address, S, and the fork (before the transfer)."""
    account, address = world.buyer(2, "USDC", 20 * USDC_UNIT)
    old = _coordinator(world, ADMIN, "old")
    assert old.run_once().caps == 1
    request = world.spend(account, "USDC", 1_000)
    world.next_window()
    _rpc(world, "evm_setAutomine", False)
    try:
        assert old.run_once().waiting is not None  # S sent, not mined
        (s,) = old.store.open_txs()
        _rpc(world, "anvil_dropTransaction", s.tx_hash)  # lost by the node; a pool elsewhere may keep it
    finally:
        _rpc(world, "evm_setAutomine", True)
    old.store.release_lease("old")  # the old coordinator stopped; its key gone
    world.past_the_reorg_window()  # its mined transactions final: the new key does not wait for them
    fork = _rpc(world, "evm_snapshot")
    world.send(ADMIN, world.usdc.functions.approve(ADMIN.address, 0))  # the old key's nonce, outside the log
    assert world.w3.eth.get_transaction_count(ADMIN.address) == s.nonce + 1
    return account, address, request, s, fork


def _books_equal_chain(world, store, account, address, spent):
    assert not store.open_txs() and store.open_batch("USDC") is None
    confirmed = store.batches("USDC", "confirmed")
    assert [b.epoch for b in confirmed] == world.settled_events("USDC")
    for batch in confirmed:
        assert world.chain.usage_root("USDC", batch.epoch) == batch.usage_root
    on_chain = world.vault.functions.balance_of(address, world.usdc.address).call()
    assert on_chain == 20 * USDC_UNIT - spent == world.ledger.balance(account, "USDC").posted


def test_old_keys_lost_settle_its_nonce_taken_outside_the_log__the_new_key_calls_it_dropped__settles_once(world):
    account, address, request, s, _ = _old_keys_settle_lost_its_nonce_taken(world)
    new = _coordinator(world, NEW, "new")
    world.next_window()
    report = new.run_once()  # before: "some not yet mined", every pass, for good
    assert report.waiting is None and report.confirmed == [("USDC", 1)], report
    store = new.store
    assert store.tx(s.id).status == "dropped"
    (batch,) = store.batches("USDC", "confirmed")
    assert store.tx(batch.tx_id).sender == NEW.address and store.record(request).batch_id == batch.id
    _books_equal_chain(world, store, account, address, 1_000)


@pytest.mark.skipif(not DEEP, reason="deep only: its CI form is test_breaker_dropped_landed.py (FakeChain)")
def test_old_keys_settle_called_dropped_by_the_new_key__the_transfer_orphaned__its_bytes_land__debited_once(world):
    """The new key called S dropped and settled X again at S's epoch (G). A reorg orphans
    the transfer that took S's nonce and G; a pool's copy of S lands at epoch 1, G
    re-included reverts: S's batch takes X back, X debited once."""
    account, address, request, s, fork = _old_keys_settle_lost_its_nonce_taken(world)
    new = _coordinator(world, NEW, "new")
    world.next_window()
    assert new.run_once().confirmed == [("USDC", 1)]
    (g,) = new.store.batches("USDC", "confirmed")
    g_raw = new.store.tx(g.tx_id).raw

    _rpc(world, "evm_revert", fork)  # the transfer and G gone
    for raw in (s.raw, g_raw):  # the network re-includes S (a pool kept it), then G: it reverts
        world.chain.broadcast(raw)
        assert world.chain.wait(Web3.keccak(hexstr=raw).to_0x_hex(), 10) is not None
    for _ in range(3):
        world.next_window()
        new.run_once()

    store = new.store
    assert store.record(request).batch_id == store.batch_of_tx(s.id).id
    assert world.settled_events("USDC") == [1]
    _books_equal_chain(world, store, account, address, 1_000)
