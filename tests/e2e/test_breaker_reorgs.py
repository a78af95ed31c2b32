"""Breaker attacks on the coordinator's reorg handling (issue 20), on a real anvil.

The promise attacked: a failed batch's orphaned settle gets its nonce filled with a no-op;
a re-sent transaction keeps its records; a failed settle the network re-includes first
takes its own records back (proven by its Merkle root). So no record is debited twice and
none is lost. Each test stages, deterministically, what a public network may do: a settle
reverts on one branch (the buyer's instant exit raced it), its records are planned again,
then a reorg orphans everything and the network re-includes the OLD signed bytes first.
"""

from __future__ import annotations

import itertools

import pytest
from web3 import Web3

from fixtures.coordinator import ADMIN, anvil_account
from promptex.coordinator.chain import Web3Chain
from promptex.coordinator.service import Coordinator
from promptex.ledger import UsageRecord
from promptex.protocol.units import USD_MICRO as USDC_UNIT

_ids = itertools.count()


@pytest.fixture
def world(coordinator_world):
    return coordinator_world


class Clock:
    """The ledger's clock (its `settled_at`), set by the test."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def spend(world, account, cost, request_id):
    """A USDC request on the listed lot, charged and settled in the ledger (as World.spend,
    with the request id given: the gateway's ids are random hex). Its list value is a
    multiple of 5, so the lot's 60 % seller credit never rounds: a settle's payload is then
    valid on any branch, as a re-included one must be to land."""
    world.ledger.reserve(account, "USDC", cost, request_id, ttl=600)
    record = UsageRecord(
        model="gpt-4o", input_tokens=1_000, output_tokens=100, list_usd_micro=cost // 10 * 5, gateway_lot_id=1,
        chain_lot_id=world.usdc_lot, lot_kind="listed", fee_bps=500,
    )  # fmt: skip
    world.ledger.settle(request_id, cost, record=record)
    return request_id


class ExitRacesNextSettle(Web3Chain):
    """The coordinator's chain with one race staged per `arm()`: right before the next
    settle it broadcasts, the buyer takes its whole balance out by an instant exit (the
    settle reverts: an uncovered debit); once it reverted, the buyer deposits it back and
    `after()` runs (the buyer's next requests)."""

    def __init__(self, world, wallet):
        super().__init__(world.url, world.deployment, ADMIN.key.hex())
        self.world, self.wallet = world, wallet
        self.armed = False
        self.after = lambda: None
        self.raced: list[str] = []  # the settles that reverted, in order

    def arm(self, after, redeposit=True):
        self.armed, self.after, self.redeposit = True, after, redeposit

    def broadcast(self, raw):
        if not self.armed:
            return super().broadcast(raw)
        self.armed = False
        w, wallet, usdc = self.world, self.wallet, self.world.usdc
        balance = w.vault.functions.balance_of(wallet.address, usdc.address).call()
        nonce, expiry = w.vault.functions.release_nonce(wallet.address).call(), self.now() + 600
        release = self.sign_release(wallet.address, "USDC", balance, nonce, expiry)
        w.send(wallet, w.vault.functions.exit_instant(usdc.address, balance, 0, nonce, expiry, release))
        super().broadcast(raw)
        tx_hash = Web3.keccak(hexstr=raw).to_0x_hex()
        assert w.w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 0  # reverted on this branch
        self.raced.append(tx_hash)
        if self.redeposit:
            w.send(wallet, usdc.functions.approve(w.vault.address, balance))
            w.send(wallet, w.vault.functions.deposit(usdc.address, balance))
        self.after()
        return None


def _buyer_then_fork(world):
    """The ledger on a clock the test sets, a USDC buyer (anvil account 2, 20 USDC, its
    spend cap registered), then the fork point a reorg goes back to: (clock, account,
    address, snapshot id)."""
    clock = world.ledger.clock = Clock(world.chain.now())
    account, address = world.buyer(2, "USDC", 20 * USDC_UNIT)
    assert world.coordinator().run_once().caps == 1
    return clock, account, address, world.w3.provider.make_request("evm_snapshot", [])["result"]


def _settle_until_quiet(world, passes=4):
    """Passes, each in a new window; after the first (which sees the re-inclusion and fills
    the nonces of what must never land with no-ops), past the reorg window: a record of a
    batch let go then may be settled under a later epoch only once that failure is final."""
    for n in range(passes):
        world.coordinator().run_once()
        world.next_window()
        if n == 0:
            world.past_the_reorg_window()


def _assert_each_debited_once(world, account, address, spent):
    """The promise: every record in one confirmed batch the chain holds; the vault debited
    each once (== the ledger)."""
    store = world.coordinator().store
    assert not store.open_txs() and store.open_batch("USDC") is None
    confirmed = store.batches("USDC", "confirmed")
    assert [b.epoch for b in confirmed] == world.settled_events("USDC")
    for batch in confirmed:
        assert world.chain.usage_root("USDC", batch.epoch) == batch.usage_root
    assert {store.record(r).status for r in spent} == {"batched"}
    total = sum(spent.values())
    on_chain = world.vault.functions.balance_of(address, world.usdc.address).call()
    assert (on_chain, world.ledger.balance(account, "USDC").posted) == (20 * USDC_UNIT - total,) * 2


def test_breaker__failed_settle_reincluded__a_same_second_request_with_a_lower_id_does_not_take_its_place(world):
    """A request settled in the same second as the failed batch's record, after it was
    planned, with a request id sorting before it (the gateway's ids are random hex): the
    re-included failed settle must take back ITS record, not the other one."""
    clock, account, address, fork = _buyer_then_fork(world)
    spent = {spend(world, account, 1_000, "req_f1"): 1_000}
    world.next_window()
    racer = ExitRacesNextSettle(world, anvil_account(2))
    racer.arm(lambda: spent.update({spend(world, account, 2_000, "req_a0"): 2_000}))  # same second, lower id
    assert world.coordinator(chain=racer).run_once().failed == [("USDC", 1)]
    assert world.coordinator().run_once().confirmed == [("USDC", 1)]  # both records, the same epoch

    world.w3.provider.make_request("evm_revert", [fork])
    world.chain.broadcast(_raw(world, racer.raced[0]))  # a node re-includes the failed settle first
    world.chain.wait(racer.raced[0], 10)
    _settle_until_quiet(world)

    _assert_each_debited_once(world, account, address, spent)
    store = world.coordinator().store
    epochs = {b.epoch: [r.request_id for r in store.batch_records(b.id)] for b in store.batches("USDC", "confirmed")}
    assert epochs == {1: ["req_f1"], 2: ["req_a0"]}  # the failed batch took back its own record


def test_breaker__two_failed_settles_of_two_windows_reincluded__each_takes_back_its_own_records(world):
    """Two windows at once: a settle fails in window 1 and in window 2 (each re-planned and
    confirmed in the same epoch), then a reorg orphans all four and the network re-includes
    all four signed transactions in nonce order: both failed settles land (epochs 1 and 2),
    both re-planned ones revert. The second failed batch's records must not be planned a
    third time."""
    clock, account, address, fork = _buyer_then_fork(world)
    racer = ExitRacesNextSettle(world, anvil_account(2))

    def later(cost):
        def after():
            clock.now += 1
            spent[spend(world, account, cost, f"req_{next(_ids):04d}_after")] = cost

        return after

    spent = {spend(world, account, 1_000, "req_w1"): 1_000}
    world.next_window()
    racer.arm(later(2_000))
    assert world.coordinator(chain=racer).run_once().failed == [("USDC", 1)]
    assert world.coordinator().run_once().confirmed == [("USDC", 1)]
    clock.now += 1
    spent[spend(world, account, 3_000, "req_w2")] = 3_000
    world.next_window()
    racer.arm(later(4_000))
    assert world.coordinator(chain=racer).run_once().failed == [("USDC", 2)]
    assert world.coordinator().run_once().confirmed == [("USDC", 2)]
    store = world.coordinator().store
    txs = [store.tx(b.tx_id) for b in store.batches("USDC")]
    assert [t.tx_hash for t in txs if t.status == "reverted"] == racer.raced

    world.w3.provider.make_request("evm_revert", [fork])
    for tx in sorted(txs, key=lambda t: t.nonce):  # the network re-includes the orphaned block's transactions
        world.next_window()
        world.chain.broadcast(tx.raw)
        world.chain.wait(tx.tx_hash, 10)
    statuses = [world.w3.eth.get_transaction_receipt(tx.tx_hash)["status"] for tx in sorted(txs, key=lambda t: t.nonce)]
    assert statuses == [1, 0, 1, 0]  # both failed settles landed, both re-planned ones reverted
    _settle_until_quiet(world)

    _assert_each_debited_once(world, account, address, spent)
    store = world.coordinator().store
    epochs = {b.epoch: [r.request_id for r in store.batch_records(b.id)] for b in store.batches("USDC", "confirmed")}
    assert epochs[1] == ["req_w1"] and epochs[2] == ["req_w2"]  # each failed batch took back its own


@pytest.mark.parametrize("between", ["quarantined", "refunded"])
def test_breaker__failed_settles_record_quarantined_before_the_reinclusion__taken_back_not_settled_again(
    world, between
):
    """Quarantine in between: the settle fails (the buyer's exit raced it) and the buyer
    stays out, so the next pass quarantines the record (its payer is short on chain). A
    reorg then orphans the exit and the network re-includes the failed settle: it debits
    the record on chain. The quarantined record must go back to that batch, not be
    requeued (its cause is gone on the new branch) and settled a second time. Refunded
    in between ("refunded": past its deadline), the record goes back too and its refund
    is taken back: the ledger debits the payer again, as the chain did."""
    _, account, address, fork = _buyer_then_fork(world)
    spent = {spend(world, account, 1_000, "req_q1"): 1_000}
    world.next_window()
    racer = ExitRacesNextSettle(world, anvil_account(2))
    racer.arm(lambda: None, redeposit=False)
    assert world.coordinator(chain=racer).run_once().failed == [("USDC", 1)]
    assert world.coordinator().run_once().quarantined == 1  # the payer has nothing left on this branch
    store = world.coordinator().store
    assert store.record("req_q1").status == "quarantined"
    if between == "refunded":  # its deadline passed: the ledger gives the charge back
        # Not before the failure is final: the reorg below is then deeper than the window (the
        # take-back is the defence in depth behind that rule), modelled by a window of 0 blocks.
        refunding = Coordinator(world.ledger.engine, world.chain, holder="e2e", tx_timeout=10, lease_seconds=600,
                                quarantine_refund=0, clock=world.chain.now, reorg_window=0)  # fmt: skip
        assert refunding.run_once().refunded == 1
        assert world.ledger.balance(account, "USDC").posted == 20 * USDC_UNIT

    world.w3.provider.make_request("evm_revert", [fork])
    world.chain.broadcast(_raw(world, racer.raced[0]))  # a node re-includes the failed settle
    world.chain.wait(racer.raced[0], 10)
    world.next_window()  # the next settlement is due in the very pass that first sees the re-inclusion
    retrying = Coordinator(world.ledger.engine, world.chain, holder="e2e", tx_timeout=10, lease_seconds=600,
                           quarantine_retry=0)  # fmt: skip
    taken_back = 0
    for _ in range(3):
        taken_back += retrying.run_once().taken_back
        world.next_window()
    assert taken_back == (1 if between == "refunded" else 0)

    _assert_each_debited_once(world, account, address, spent)
    epochs = {b.epoch: [r.request_id for r in store.batch_records(b.id)] for b in store.batches("USDC", "confirmed")}
    assert epochs == {1: ["req_q1"]}


def test_breaker__the_noop_orphaned_and_the_old_settle_reincluded_in_its_place__its_records_taken_back_once(world):
    """Two reorgs: the first orphans a failed settle and its re-planned batch (the failed
    one's nonce goes to a no-op, the re-planned one is re-sent and lands); the second
    orphans the no-op and the re-sent batch, and the network puts the failed settle's OLD
    bytes in the no-op's place. The failed batch landed after all: its record goes back to
    it, the re-planned batch cannot land, and nothing is debited twice."""
    _, account, address, fork = _buyer_then_fork(world)
    spent = {spend(world, account, 1_000, "req_n1"): 1_000}
    world.next_window()
    racer = ExitRacesNextSettle(world, anvil_account(2))
    racer.arm(lambda: spent.update({spend(world, account, 2_000, "req_n2"): 2_000}))
    assert world.coordinator(chain=racer).run_once().failed == [("USDC", 1)]
    assert world.coordinator().run_once().confirmed == [("USDC", 1)]

    world.w3.provider.make_request("evm_revert", [fork])  # reorg 1: both gone
    fork = world.w3.provider.make_request("evm_snapshot", [])["result"]
    world.next_window()
    world.coordinator().run_once()  # the no-op takes the failed settle's nonce; the re-planned batch is re-sent
    store = world.coordinator().store
    noops = [tx for tx in store.landed_txs(0, 0) if tx.purpose == "noop"]
    assert len(noops) == 1 and world.settled_events("USDC") == [1]

    world.w3.provider.make_request("evm_revert", [fork])  # reorg 2: the no-op and the re-sent batch gone
    world.chain.broadcast(_raw(world, racer.raced[0]))  # ... and the old settle in the no-op's place
    world.chain.wait(racer.raced[0], 10)
    world.next_window()
    _settle_until_quiet(world)

    _assert_each_debited_once(world, account, address, spent)
    epochs = {b.epoch: [r.request_id for r in store.batch_records(b.id)] for b in store.batches("USDC", "confirmed")}
    assert epochs == {1: ["req_n1"], 2: ["req_n2"]}


def _raw(world, tx_hash):
    store = world.coordinator().store
    return next(store.tx(b.tx_id).raw for b in store.batches("USDC") if store.tx(b.tx_id).tx_hash == tx_hash)
