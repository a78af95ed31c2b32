"""The coordinator on a real anvil: it posts what the ledger settled, its root proves each
record on chain, a batch the vault refuses is cut down to the entries at fault, and kill -9
at random points over many runs posts each epoch once and loses no usage."""

import contextlib
import json
import os
import random
import signal
import time

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import Web3

from fixtures.coordinator import ADMIN, SELLER, anvil_account, next_request_id
from promptex.chain.sender import Call
from promptex.cli.usage import usage_verify
from promptex.config import settings
from promptex.coordinator import factory, service
from promptex.coordinator.chain import Web3Chain
from promptex.indexer import effects
from promptex.indexer.followed import VAULT, Followed
from promptex.ledger import Ledger, Reservation, UsageRecord
from promptex.ledger.holds import ExtraTake
from promptex.ledger.lanes import NAME, Voucher
from promptex.ledger.usage import SIGNED
from promptex.proofs import leaf_of
from promptex.protocol.escrow import KIND_TOKENIZED, listed_credit
from promptex.protocol.merkle import MerkleTree
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USDC_UNIT
from promptex.protocol.vault import sign_session_key, sign_voucher


@pytest.fixture
def world(coordinator_world):
    return coordinator_world


def test_coordinator__usage_in_usdc_and_cld__chain_matches_ledger_and_proofs_verify(world, monkeypatch):
    a, a_addr = world.buyer(2, "USDC", 20 * USDC_UNIT)
    b, b_addr = world.buyer(3, "CLD", 5_000 * TOKEN)
    usdc_ids = [world.spend(a, "USDC", 1_234_567), world.spend(a, "USDC", 89)]
    cld_ids = [world.spend(b, "CLD", 7 * TOKEN + 3), world.spend(b, "CLD", TOKEN)]
    world.next_window()
    seller_usdc = world.vault.functions.claimable(SELLER.address, world.usdc.address).call()

    report = world.coordinator().run_once()

    assert report.caps == 2 and sorted(report.confirmed) == [("CLD", 1), ("USDC", 1)], report
    v = world.vault.functions
    assert v.balance_of(a_addr, world.usdc.address).call() == world.ledger.balance(a, "USDC").posted
    assert v.balance_of(b_addr, world.cld.address).call() == world.ledger.balance(b, "CLD").posted
    assert world.ledger.balance(a, "USDC").posted == 20 * USDC_UNIT - 1_234_656
    # The listed lot (60 % of list) is drawn by the list value served; its seller earns 60 % of it.
    drawn = (1_234_567 // 2 + 1) + (89 // 2 + 1)
    credit = listed_credit(0, drawn, 6_000)
    assert v.claimable(SELLER.address, world.usdc.address).call() - seller_usdc == credit
    assert v.reserve(world.usdc.address).call() == 1_234_567 + 89 - credit
    store = world.coordinator().store
    for asset, ids in (("USDC", usdc_ids), ("CLD", cld_ids)):
        tree = MerkleTree([leaf_of(store.record(r)).hash() for r in ids])
        assert world.chain.usage_root(asset, 1) == tree.root
    lots = world.escrow.functions
    assert lots.lots(world.usdc_lot).call()[9] == (1_234_567 // 2 + 1) + (89 // 2 + 1)  # consumed (list value)
    assert lots.lots(world.cld_lot).call()[9] == 8 * TOKEN + 3  # drawn down by the CLD burned

    monkeypatch.setenv("PROMPTEX_LEDGER_URL", world.ledger.engine.url.render_as_string(hide_password=False))
    monkeypatch.setattr(factory, "make_chain", lambda _s: world.chain)
    settings.cache_clear()
    try:
        runner = CliRunner()
        ok = runner.invoke(usage_verify, [cld_ids[0], "--json"])
        assert ok.exit_code == 0 and json.loads(ok.output)["verified"] is True, ok.output
        with world.ledger.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE usage_records SET cost = '1' WHERE request_id = ?", (cld_ids[0],))
        bad = runner.invoke(usage_verify, [cld_ids[0]])
        assert bad.exit_code != 0
    finally:
        settings.cache_clear()


def test_coordinator__payer_without_vault_funds__quarantined_rest_settled(world):
    good, good_addr = world.buyer(4, "CLD", 1_000 * TOKEN)
    broke, _ = world.buyer(5, "CLD", 1_000 * TOKEN, deposit=False)  # the ledger thinks it paid; the vault has nothing
    kept = world.spend(good, "CLD", 3 * TOKEN)
    refused = world.spend(broke, "CLD", 2 * TOKEN)
    world.next_window()

    report = world.coordinator().run_once()

    assert report.confirmed == [("CLD", 1)] and report.quarantined == 1
    store = world.coordinator().store
    assert store.record(refused).status == "quarantined"
    assert "uncovered debit" in store.record(refused).quarantine_reason
    assert store.record(kept).status == "batched"
    assert world.vault.functions.balance_of(good_addr, world.cld.address).call() == 997 * TOKEN
    assert world.settled_events("CLD") == [1]


STEPS = [
    None, "planned", "settle_signed", "settle_broadcast", "confirmed", "spend_cap_signed", "spend_cap_broadcast",
]  # fmt: skip


def _child(world, step):
    """One coordinator process: fresh database and RPC connections, the crash hook armed."""
    if step is not None:
        os.environ[service.CRASH_ENV] = step
    ledger = Ledger.open(world.db, sqlite_synchronous="NORMAL", migrate=False)
    chain = Web3Chain(world.url, world.deployment, ADMIN.key.hex())
    world.coordinator(ledger, chain).run_once()


def _run_killable(world, step, kill_after):
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            _child(world, step)
            code = 0
        finally:
            os._exit(code)
    if kill_after is not None:
        time.sleep(kill_after)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status


def test_coordinator__kill_9_at_random_points__each_epoch_once_no_usage_lost(world):
    rng = random.Random(int(os.environ.get("PROMPTEX_KILL_SEED", "6")))
    buyers = [world.buyer(i, "USDC", 50 * USDC_UNIT) for i in (6, 7)]
    buyers += [world.buyer(i, "CLD", 10_000 * TOKEN) for i in (8, 9)]
    spent = {}
    killed = 0
    for run in range(20):
        for account, address in rng.sample(buyers, 2):
            asset = "USDC" if address in {b[1] for b in buyers[:2]} else "CLD"
            cost = rng.randint(1, 50_000) * (1 if asset == "USDC" else 10**13)
            world.spend(account, asset, cost)
            spent[(address, asset)] = spent.get((address, asset), 0) + cost
        # A wider spend cap now and then, so its steps can be killed too; not while the last one
        # is still on its way (its nonce is the chain's still: another cap with it is refused, 409).
        if run % 3 == 2 and not world.coordinator().store.spend_caps():
            world.submit_cap(anvil_account(8), "CLD", 10_000 * TOKEN + run)
        world.next_window()
        step = rng.choice(STEPS)
        kill_after = rng.uniform(0.0, 0.4) if step is None and rng.random() < 0.5 else None
        status = _run_killable(world, step, kill_after)
        killed += os.WIFSIGNALED(status)
    for _ in range(4):  # recovery: clean runs until nothing is left in flight
        world.next_window()
        assert os.WIFEXITED(_run_killable(world, None, None))

    assert killed >= 5  # the test did kill coordinators mid-pass
    store = world.coordinator().store
    for asset in ("USDC", "CLD"):
        epochs = world.settled_events(asset)
        assert epochs == list(range(1, len(epochs) + 1))  # each epoch once, none skipped
        confirmed = store.batches(asset, "confirmed")
        assert [b.epoch for b in confirmed] == epochs
        for batch in confirmed:
            records = store.batch_records(batch.id)
            assert world.chain.usage_root(asset, batch.epoch) == batch.usage_root
            assert MerkleTree([leaf_of(r).hash() for r in records]).root == batch.usage_root
    with world.ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT r.status, b.status, r.address, r.asset, r.cost FROM usage_records r "
            "LEFT JOIN settlement_batches b ON b.id = r.batch_id"
        ).all()
    assert rows and all(r[0] == "batched" and r[1] == "confirmed" for r in rows), [
        r for r in rows if r[1] != "confirmed"
    ]
    posted = {}
    for _, _, address, asset, cost in rows:
        posted[(address, asset)] = posted.get((address, asset), 0) + int(cost)
    assert posted == spent  # every record in exactly one confirmed batch
    for (address, asset), amount in spent.items():
        balance = world.vault.functions.balance_of(address, world.chain.asset_address(asset)).call()
        assert balance == world.deposits[(address, asset)] - amount  # debited once, in full
    with world.ledger.engine.connect() as conn:
        listed = conn.exec_driver_sql("SELECT list_usd_micro FROM usage_records WHERE asset = 'USDC'").scalars()
        drawn = sum(int(x) for x in listed)
    assert world.escrow.functions.lots(world.usdc_lot).call()[9] == drawn  # drawn in the settlements themselves


def test_broadcast__same_signed_bytes_again_after_mined__no_error_and_a_bad_one_still_raises(world):
    """A rebroadcast after a crash may find its transaction mined (anvil: 'nonce too low') or
    still pending ('already known'): both are the success resolve_tx expects. web3 7 raises
    Web3RPCError, not ValueError, for them. A transaction the node refuses for another reason
    still raises."""
    sender = Account.create()
    world.w3.provider.make_request("anvil_setBalance", [sender.address, hex(10**18)])
    tx = {"to": SELLER.address, "value": 1, "gas": 21_000, "gasPrice": world.w3.eth.gas_price, "nonce": 0}
    raw = sender.sign_transaction({**tx, "chainId": world.w3.eth.chain_id}).raw_transaction.hex()
    world.chain.broadcast(raw)
    assert world.chain.wait(Web3.keccak(hexstr=raw).hex(), 10) is not None
    world.chain.broadcast(raw)  # mined already: fine
    poor = Account.create()  # no ether: the node refuses its transaction
    refused = poor.sign_transaction({**tx, "chainId": world.w3.eth.chain_id}).raw_transaction.hex()
    with pytest.raises(Exception, match="(?i)insufficient funds|funds"):
        world.chain.broadcast(refused)


def test_coordinator__settlement_orphaned_by_a_reorg__its_records_settle_again_once(world):
    """Found by the market machine: a settle the coordinator saw mined, then orphaned by a
    reorg, stayed "confirmed" in its store, so its records were charged in the ledger and
    never debited by the vault (the coordinator then settled the same epoch number with
    other records). A confirmed batch the chain does not hold is returned to pending."""
    account, address = world.buyer(2, "USDC", 20 * USDC_UNIT)
    assert world.coordinator().run_once().caps == 1  # registered before the fork: it stays
    first = [world.spend(account, "USDC", 1_000), world.spend(account, "USDC", 2_000)]
    world.next_window()
    fork = world.w3.provider.make_request("evm_snapshot", [])["result"]
    assert world.coordinator().run_once().confirmed == [("USDC", 1)]
    assert world.vault.functions.balance_of(address, world.usdc.address).call() == 20 * USDC_UNIT - 3_000

    world.w3.provider.make_request("evm_revert", [fork])  # the branch with the settle is gone
    later = world.spend(account, "USDC", 4_000)
    world.next_window()
    for _ in range(3):  # until nothing is left to settle
        world.coordinator().run_once()
        world.next_window()

    store = world.coordinator().store
    confirmed = store.batches("USDC", "confirmed")
    assert [b.epoch for b in confirmed] == world.settled_events("USDC")  # each confirmed batch is on chain
    for batch in confirmed:
        assert world.chain.usage_root("USDC", batch.epoch) == batch.usage_root
    assert {store.record(r).status for r in [*first, later]} == {"batched"}
    on_chain = world.vault.functions.balance_of(address, world.usdc.address).call()
    assert on_chain == 20 * USDC_UNIT - 7_000 == world.ledger.balance(account, "USDC").posted


def test_coordinator__reorg_orphans_two_settlements_and_a_cap__each_resolved_books_match(world):
    """The open bug of issue 20, made deterministic: a reorg below two settlements and the
    spend cap registered between them (three of the coordinator's nonces), and on the new
    branch another transaction of the coordinator's key takes the first nonce. Before the
    fix the coordinator replayed what its confirmed batches named but not the cap, so the
    second settle waited behind the cap's free nonce for good. Now every orphaned receipt
    is resolved again in nonce order: the first settle is dropped (its nonce taken), the
    cap registered again, the second settle refused (its epoch is no longer next) and all
    three records settle once on the new branch: the first's and the later one at epoch 1,
    the second's at epoch 2 again (a failed batch's record goes at once at its own epoch,
    under another only once the failure is final)."""
    account, address = world.buyer(2, "USDC", 20 * USDC_UNIT)
    assert world.coordinator().run_once().caps == 1
    fork = world.w3.provider.make_request("evm_snapshot", [])["result"]
    first = world.spend(account, "USDC", 1_000)
    world.next_window()
    assert world.coordinator().run_once().confirmed == [("USDC", 1)]
    world.submit_cap(anvil_account(2), "USDC", 30 * USDC_UNIT)  # a new cap, registered between the settles
    second = world.spend(account, "USDC", 2_000)
    world.next_window()
    assert world.coordinator().run_once().confirmed == [("USDC", 2)]
    cap_nonce = world.vault.functions.cap_nonce(address, world.usdc.address).call()

    world.w3.provider.make_request("evm_revert", [fork])  # both settles and the cap are gone
    world.send(ADMIN, world.usdc.functions.approve(SELLER.address, 1))  # the coordinator's key, the first nonce
    later = world.spend(account, "USDC", 4_000)
    world.next_window()
    reports = []
    for _ in range(3):
        reports.append(world.coordinator().run_once())
        world.next_window()

    assert all(r.waiting is None for r in reports), reports
    store = world.coordinator().store
    assert not store.open_txs() and store.open_batch("USDC") is None
    confirmed = store.batches("USDC", "confirmed")
    assert [b.epoch for b in confirmed] == world.settled_events("USDC") == [1, 2]
    for batch in confirmed:
        assert world.chain.usage_root("USDC", batch.epoch) == batch.usage_root
    by_epoch = [sorted(r.request_id for r in store.batch_records(b.id)) for b in confirmed]
    assert by_epoch == [sorted([first, later]), [second]]
    assert world.vault.functions.cap_nonce(address, world.usdc.address).call() == cap_nonce  # registered again
    assert [c.status for c in store.spend_caps(("registered",))] == ["registered", "registered"]
    on_chain = world.vault.functions.balance_of(address, world.usdc.address).call()
    assert on_chain == 20 * USDC_UNIT - 7_000 == world.ledger.balance(account, "USDC").posted


def test_coordinator__signed_mode__session_relayed_then_lanes_settled_within_their_vouchers(world):
    """Issue 23 on the real vault: the coordinator relays a wallet-signed SessionKey, and from
    the next window settles each lane's charges with settle_signed, within its voucher."""
    wallet = anvil_account(3)
    account, address = world.buyer(3, "USDC", 5 * USDC_UNIT)
    asset, key = world.chain.asset_address("USDC"), Account.create()
    domain = {"chain_id": world.deployment.chain_id, "vault": world.vault.address}
    nonce = world.vault.functions.session_nonce(address, asset).call()
    grant = {"account": address, "asset": asset, "key": key.address, "lanes": 2, "maximum": 2 * USDC_UNIT,
             "expiry": world.chain.now() + 86_400, "nonce": nonce}  # fmt: skip
    signature = sign_session_key(wallet.key, **domain, **grant)
    coordinator = world.coordinator()
    coordinator.submit_session_key(address, "USDC", key.address, 2, 2 * USDC_UNIT, grant["expiry"], grant["nonce"],
                                   signature)  # fmt: skip
    assert coordinator.run_once().session_keys == 1
    # The indexer's decoding and effect of the vault's event, on its real log.
    followed = Followed.from_deployment(world.deployment)
    raw = world.w3.provider.make_request("eth_getLogs", [{"address": world.vault.address, "fromBlock": "0x0"}])
    decoded = [followed.decoder.decode(VAULT, log) for log in raw["result"]]
    registered = [e for e in decoded if e is not None and e.name == "SessionKeyRegistered"][-1]
    assert world.ledger.apply_chain_facts(
        lambda facts: effects.apply(facts, registered, "sk:0", followed.symbol, "", world.deployment.chain_id)
    )
    event = registered.args
    session = world.ledger.session(account, "USDC")
    assert session is not None and (session.key, session.vault) == (key.address, world.vault.address)

    def spend(lane, cost, hold=100_000):
        charged = world.ledger.lane(account, "USDC", event["session"], lane).charged
        ceiling = charged + hold
        voucher = {"account": address, "asset": asset, "session": event["session"], "lane": lane, "ceiling": ceiling}
        sig = sign_voucher(key.key, **domain, **voucher)
        request_id = next_request_id()
        world.ledger.vouchers.plan(request_id, Voucher(event["session"], lane, ceiling, "0x" + sig.hex()))
        world.ledger.holds.reserve(
            Reservation(request_id, account, "USDC", hold, 600, extras=(ExtraTake(NAME, ceiling),))
        )
        world.ledger.vouchers.plan(request_id, None)
        record = UsageRecord(
            model="gpt-4o", input_tokens=1_000, output_tokens=100, list_usd_micro=cost // 2 + 1, gateway_lot_id=1,
            chain_lot_id=world.usdc_lot, lot_kind="listed", fee_bps=500, mode=SIGNED,
            voucher_session=event["session"], voucher_lane=lane, voucher_ceiling=ceiling,
        )  # fmt: skip
        world.ledger.holds.settle(request_id, cost, record=record)
        return request_id

    spent = [spend(0, 30_000), spend(0, 20_000), spend(1, 45_000)]
    before = world.vault.functions.balance_of(address, asset).call()
    # Its spend cap still serves this window and the next: the lanes wait, not quarantined.
    assert coordinator.run_once().quarantined == 0
    world.next_window()
    world.next_window()
    assert coordinator.run_once().quarantined == 0
    assert world.vault.functions.lane_settled(address, asset, 0).call() == 50_000
    assert world.vault.functions.lane_settled(address, asset, 1).call() == 45_000
    assert world.vault.functions.balance_of(address, asset).call() == before - 95_000
    assert [coordinator.store.record(r).status for r in spent] == ["batched"] * 3
    assert world.ledger.lane(account, "USDC", event["session"], 0).settled == 50_000
    spend(0, 10_000)  # several batches a window
    assert len(coordinator.run_once().confirmed) == 1
    assert world.vault.functions.lane_settled(address, asset, 0).call() == 60_000


class _ExitRacesTheSettle(Web3Chain):
    """The chain as the coordinator sees it, with one race staged: right before the first
    settle it broadcasts, the buyer takes its whole balance out with an instant exit (the
    settle then reverts: an uncovered debit) and, once the settle has reverted, deposits
    it back and uses the market again (the records the re-planned batch adds)."""

    def __init__(self, world, wallet, account):
        super().__init__(world.url, world.deployment, ADMIN.key.hex())
        self.world, self.wallet, self.account = world, wallet, account
        self.raced: str | None = None  # the settle that reverted
        self.spent_after: str | None = None

    def broadcast(self, raw):
        if self.raced is not None or self.world.w3.eth.get_transaction_count(ADMIN.address) != self._armed_at:
            return super().broadcast(raw)
        w, wallet, usdc = self.world, self.wallet, self.world.usdc
        balance = w.vault.functions.balance_of(wallet.address, usdc.address).call()
        nonce, expiry = w.vault.functions.release_nonce(wallet.address).call(), self.now() + 600
        release = self.sign_release(wallet.address, "USDC", balance, nonce, expiry)
        w.send(wallet, w.vault.functions.exit_instant(usdc.address, balance, 0, nonce, expiry, release))
        super().broadcast(raw)
        self.raced = Web3.keccak(hexstr=raw).to_0x_hex()
        assert w.w3.eth.wait_for_transaction_receipt(self.raced)["status"] == 0  # reverted on this branch
        w.send(wallet, usdc.functions.approve(w.vault.address, balance))
        w.send(wallet, w.vault.functions.deposit(usdc.address, balance))
        self.spent_after = w.spend(self.account, "USDC", 2_000)
        return None

    def arm(self):
        self._armed_at = self.world.w3.eth.get_transaction_count(ADMIN.address)


@pytest.mark.parametrize("network", ["quiet", "reincludes"])
def test_coordinator__settle_reverted_then_orphaned__its_records_settled_once(world, network):
    """Issue 20's open money bug, made deterministic. On branch A a settle reverts (the
    buyer's instant exit raced it); its batch fails, its records go back to pending and are
    planned again with newer ones into a second settle that lands, for the same epoch (the
    first never moved `last_epoch`). A reorg then orphans both. Re-sent in nonce order with
    the same bytes, the first settle succeeded (the exit is gone), took the epoch, the
    second was refused (`epoch not consecutive`), failed, and its records — the first's
    among them — were planned a third time: the first's usage debited twice. The vault
    refuses an epoch twice, not the same records under two epochs.

    Now the failed batch's settle is never re-sent: a no-op takes its nonce ("quiet").
    Should the network re-include the orphaned bytes before the coordinator can stop them
    ("reincludes"), the failed batch landed after all: its records, proven by its root, go
    back to it from the batch planned for the same epoch, and the rest settle next."""
    wallet = anvil_account(2)
    account, address = world.buyer(2, "USDC", 20 * USDC_UNIT)
    assert world.coordinator().run_once().caps == 1
    fork = world.w3.provider.make_request("evm_snapshot", [])["result"]
    first = world.spend(account, "USDC", 1_000)
    world.next_window()
    raced = _ExitRacesTheSettle(world, wallet, account)
    raced.arm()
    assert world.coordinator(chain=raced).run_once().failed == [("USDC", 1)]  # reverted: its record back to pending
    assert raced.raced is not None and raced.spent_after is not None
    assert world.coordinator().run_once().confirmed == [("USDC", 1)]  # re-planned with the newer one, same epoch
    store = world.coordinator().store
    assert [len(store.batch_records(b.id)) for b in store.batches("USDC")] == [0, 2]  # the first's record re-planned

    world.w3.provider.make_request("evm_revert", [fork])  # both settles (and the exit) are gone
    failed = store.tx(store.batches("USDC", "failed")[0].tx_id)
    if network == "reincludes":  # a node re-includes the orphaned settle on the new branch first
        world.chain.broadcast(failed.raw)
        assert world.w3.eth.wait_for_transaction_receipt(failed.tx_hash)["status"] == 1
        world.coordinator().run_once()
        assert store.record(first).batch_id == store.batch_of_tx(failed.id).id  # at once, before any planning
    for n in range(3):
        world.coordinator().run_once()
        world.next_window()
        if n == 0 and network == "reincludes":
            world.past_the_reorg_window()  # the re-planned batch's failure final: its other record settles

    store = world.coordinator().store
    assert not store.open_txs() and store.open_batch("USDC") is None
    assert failed.tx_hash == raced.raced
    confirmed = store.batches("USDC", "confirmed")
    if network == "quiet":
        assert store.tx(failed.id).status == "dropped"
        assert world.chain.receipt(failed.tx_hash) is None  # never landed on the new branch: a no-op took its nonce
        assert [tx.nonce for tx in store.landed_txs(0, 0) if tx.purpose == "noop"] == [failed.nonce]
        assert [b.epoch for b in confirmed] == world.settled_events("USDC") == [1]
    else:
        assert store.tx(failed.id).status == "succeeded"
        assert [b.epoch for b in confirmed] == world.settled_events("USDC") == [1, 2]
        assert [r.request_id for r in store.batch_records(confirmed[0].id)] == [first]  # back in its first batch
        assert [r.request_id for r in store.batch_records(confirmed[1].id)] == [raced.spent_after]
    for batch in confirmed:
        assert world.chain.usage_root("USDC", batch.epoch) == batch.usage_root
    assert {store.record(r).status for r in (first, raced.spent_after)} == {"batched"}
    on_chain = world.vault.functions.balance_of(address, world.usdc.address).call()
    assert on_chain == 20 * USDC_UNIT - 3_000 == world.ledger.balance(account, "USDC").posted  # each debited once
    # What the vault itself refuses: an epoch settled twice (any root), however it is sent.
    again = Call("vault", "settle", (1, world.usdc.address, [], [], 0, 0, b"\x01" * 32))
    assert world.chain.simulate(again) == "vault: epoch not consecutive"


DEEP = os.environ.get("HYPOTHESIS_PROFILE") in ("deep", "deep_part")


@pytest.mark.parametrize("crowd", [1, pytest.param(512, marks=pytest.mark.skipif(not DEEP, reason="deep only"))])
def test_coordinator__lots_past_expiry_lead_the_draw_order__pruned_and_the_batch_settles(world, crowd):
    """The prune-before-batch (0b1875d) on a real chain: `crowd` smallest tokenized lots
    ($10) expiring soonest, left to pass their expiry ahead of the world's CLD lot. With
    one, `drawable` skips it and the draw unlinks it; with 512 (deep), `drawable` is 0
    (256 skipped, 256 more fill the walk) until the coordinator sends `prune`, then its
    own draw unlinks the other 256. Either way the CLD batch settles, nothing quarantined,
    drawn from the world's lot, and the crowd's lots are untouched (open, undrawn)."""
    escrow, token = world.escrow.functions, world.cld.address
    face = 10 * USDC_UNIT
    bond = escrow.tokenized_bond(token, face).call()
    world.send(SELLER, world.usdc.functions.mint(SELLER.address, crowd * bond))
    expiry = world.chain.now() + 7 * 86_400 + 60
    gas_price = 10 * world.w3.eth.gas_price  # above any base fee the crowd's blocks reach: mined in order
    first = escrow.lot_count().call() + 1
    for _ in range(crowd):  # anvil's unlocked dev accounts; one block per transaction, in order
        world.usdc.functions.approve(world.escrow.address, bond).transact(
            {"from": SELLER.address, "gas": 80_000, "gasPrice": gas_price}
        )
        tx = escrow.open_lot(SELLER.address, token, KIND_TOKENIZED, face, expiry, bond, b"\x11" * 32, 0).transact(
            {"from": ADMIN.address, "gas": 900_000, "gasPrice": gas_price}
        )
        receipt = world.w3.eth.wait_for_transaction_receipt(tx, poll_latency=0.01)
        assert receipt["status"] == 1, receipt
    assert escrow.lot_count().call() == first + crowd - 1 and first in escrow.draw_order(token, 256).call()
    world.w3.provider.make_request("evm_increaseTime", [7 * 86_400 + 120])
    world.w3.provider.make_request("evm_mine", [])
    drawable = escrow.drawable(token).call()
    assert drawable >= escrow.remaining(world.cld_lot).call() if crowd <= 256 else drawable == 0
    consumed = {lot: escrow.lots(lot).call()[9] for lot in escrow.draw_order(token, 256).call()[-3:]}
    b, _ = world.buyer(3, "CLD", 5_000 * TOKEN)
    spent = world.spend(b, "CLD", 7 * TOKEN)
    world.next_window()

    report = world.coordinator().run_once()

    assert report.confirmed == [("CLD", 1)] and report.quarantined == 0, report
    assert world.coordinator().store.record(spent).status == "batched"
    # Drawn from the live lots behind the crowd (the seeded market's, nearest expiry first).
    head = escrow.draw_order(token, 1).call()[0]
    assert escrow.lots(head).call()[5] >= world.chain.now() and escrow.lots(head).call()[9] > consumed.get(head, 0)
    assert first not in escrow.draw_order(token, 256).call()  # the crowd unlinked
    for lot in (first, first + crowd - 1):
        assert escrow.lots(lot).call()[3] == 1 and escrow.lots(lot).call()[9] == 0  # open, undrawn
