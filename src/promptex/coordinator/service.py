"""The settlement coordinator: every epoch window, for each asset, it settles the usage
records not yet in a batch, as a crash-safe state machine persisted per (asset, epoch):

    planned    records assigned, payload and Merkle root stored       (one DB transaction)
    submitted  signed raw transaction and its hash stored             (before broadcast)
    confirmed  receipt ok, or the chain's usage_roots(asset, epoch) is ours
    failed     it can never land (reverted, or its nonce went to another transaction;
               orphaned by a reorg, its nonce is filled with a no-op, never re-sent):
               its records go back to pending and are planned again, at once at its
               epoch, under a later one (or refunded) only once the failure is
               `reorg_window` blocks deep (`_plannable`)

On restart every stored transaction still "sent" is looked up by hash; if it is not
mined and its nonce is still free, the SAME signed bytes are broadcast again. Nothing
new is signed while one is unresolved. So an epoch is posted once, and a record is in
at most one confirmed batch or quarantined, never lost.

The coordinator holds no escrow role (it calls only `expire`, which anyone may, for the
market's lots past their expiry and settlement grace): the vault's `settle` draws the lots itself (a
provider token's burn from its tokenized lots, nearest expiry first; each listed lot it
credits, at list price). Planning caps every draw at what the chain says the lot (or the
token) has left, and quarantines the records past it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine

from promptex.chain import txlog
from promptex.chain.sender import Call, Receipt, SignedTx
from promptex.chain.txlog import DROPPED, REVERTED, SENT, SUCCEEDED, OtherKeyPending, StoredTx, TxPending
from promptex.coordinator.chain import Chain, LotInfo
from promptex.coordinator.plan import Entry, Payload, aggregate, fit, fit_capacity, lot_problem, prepare, usage_tree
from promptex.coordinator.quarantine import REFUND, REQUEUE, decide, never_settles
from promptex.coordinator.requests import queued_once
from promptex.coordinator.signed_plan import LaneDebit, LaneVoucher, Signed, SignedBatch, next_batch
from promptex.coordinator.store import (
    CONFIRMED,
    FAILED,
    PLANNED,
    REGISTERED,
    REJECTED,
    SUBMITTED,
    Batch,
    CoordinatorStore,
    LeaseLost,
    ReleaseRefused,
)
from promptex.ledger.binding import checksum_address
from promptex.ledger.lots import CLOSING, OPEN
from promptex.ledger.releases import EXPIRED, USED, Release
from promptex.ledger.usage import PENDING, QUARANTINED, StoredUsage
from promptex.protocol.escrow import MAX_PRUNE_LOTS, STATUS_OPEN
from promptex.protocol.units import money, money_exact, utc_text
from promptex.protocol.vault import UNLIMITED, SignedDebit, pack_signed_entries

log = logging.getLogger("promptex.coordinator")

CRASH_ENV = "PROMPTEX_COORDINATOR_CRASH_AT"  # test hook: SIGKILL this process at the named step
REORG_WINDOW = 128  # blocks: receipts this recent are checked still canonical each pass
MAX_PENDING_READ = 20_000  # records read per asset per pass (the rest wait for the next)
MAX_SIGNED_BATCHES_PER_PASS = 16  # settle_signed batches per asset per pass (the rest: the next pass)
# `CreditEscrow.prune` calls per token per pass when lots past expiry crowd the draw's walk
# (MAX_PRUNE_LOTS each, ~3.4 M gas: 2,048 lots, which cost their opener ~800 M gas).
MAX_PRUNES_PER_PASS = 8
# Reverts caused by particular entries (their payers or lots), not by timing or roles.
ENTRY_REVERTS = (
    "vault: shortfall exceeds reserve",
    "vault: uncovered debit",
    "vault: debit above the spend cap",
    "vault: debit without an active spend cap",
    "escrow: not a listed lot",
    "escrow: lot not drawable",
    "escrow: zero amount",
    "escrow: over-consume",
    "escrow: draw exceeds drawable capacity",
    "escrow: epoch already consumed",
)
# Reverts of `settle_signed` caused by particular lanes (their vouchers, sessions or balances).
SIGNED_ENTRY_REVERTS = (
    "vault: debit above the voucher",
    "vault: debit above the session maximum",
    "vault: voucher not signed by the session key",
    "vault: lane out of range",
    "vault: session ended",
    "vault: account not in signed mode",
    "vault: signed mode not started",
    "vault: no active session",
)
SIGNED_NOT_YET = "vault: signed mode not started"  # the lane waits (pending) for the next window


class Relayed(Protocol):
    """A stored user-signed message waiting to be registered (a spend cap, a session key)."""

    @property
    def id(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def tx_id(self) -> int | None: ...


def crash_point(step: str) -> None:
    """Die here, as kill -9 would, when the test hook names this step."""
    txlog.crash_point(CRASH_ENV, step)


@dataclass
class PassReport:
    leader: bool = True
    confirmed: list[tuple[str, int]] = field(default_factory=list)  # (asset, epoch)
    failed: list[tuple[str, int]] = field(default_factory=list)
    quarantined: int = 0
    requeued: int = 0  # quarantined records back to pending, their cause fixed
    refunded: int = 0  # quarantined records refunded to their payers
    taken_back: int = 0  # refunds taken back: the chain debited those records after all (a reorg)
    held: set[str] = field(default_factory=set)  # records of a failed batch waiting for its failure to be final
    caps: int = 0
    session_keys: int = 0  # SessionKeys registered on chain this pass
    expired: list[int] = field(default_factory=list)  # escrow lots this pass expired
    waiting: str | None = None


def _wall_clock() -> int:
    return int(time.time())


class _Leased:
    """The chain as a pass resolves its transactions through it (`txlog.resolve_tx`): the
    lease renewed before each broadcast and between slices of a wait (a third of the lease
    each), so a leader waiting up to `tx_timeout` for a receipt keeps it, and one that lost
    it (stopped past it, another took it) sends nothing: LeaseLost."""

    def __init__(self, chain: Chain, keep: Callable[[], None], slice_seconds: float) -> None:
        self._chain, self._keep, self._slice = chain, keep, slice_seconds

    def receipt(self, tx_hash: str) -> Receipt | None:
        return self._chain.receipt(tx_hash)

    def nonce(self) -> int:
        return self._chain.nonce()

    def broadcast(self, raw: str) -> None:
        self._keep()
        self._chain.broadcast(raw)

    def wait(self, tx_hash: str, timeout: float) -> Receipt | None:
        left = timeout
        while True:
            self._keep()
            step = min(left, self._slice)
            receipt = self._chain.wait(tx_hash, step)
            left -= step
            if receipt is not None or left <= 0:
                return receipt


def _waiting(failures: Sequence[Batch], records: Sequence[StoredUsage]) -> dict[str, Batch]:
    """Which of `records` wait for which of the unfinal `failures`: a failed batch's
    members (kept in its payload when it failed). A batch that failed before failed
    batches kept them (an upgraded database) could hold any of its asset's records: all
    of them wait for it (its reattach finds them by age, `store.reattach_candidates`)."""
    waits: dict[str, Batch] = {}
    blind: dict[str, Batch] = {}
    for batch in failures:
        if batch.payload.members:
            waits.update(dict.fromkeys(batch.payload.members, batch))
        else:
            blind.setdefault(batch.asset, batch)
    if blind:
        for record in records:
            if record.asset in blind and record.request_id not in waits:
                waits[record.request_id] = blind[record.asset]
    return waits


class Coordinator:
    def __init__(
        self,
        engine: Engine,
        chain: Chain,
        *,
        holder: str | None = None,
        lease_seconds: int = 30,
        tx_timeout: float = 120.0,
        release_expiry: int = 600,
        quarantine_retry: int = 600,
        quarantine_refund: int = 86_400,
        reorg_window: int = REORG_WINDOW,
        clock: Callable[[], int] | None = None,
        lease_clock: Callable[[], int] | None = None,
    ) -> None:
        # The lease's times are the database's clock (`store._lease_now`: PostgreSQL's,
        # SQLite's host's), never this process's: coordinators on other hosts compare them.
        # Tests: `lease_clock`, a clock standing for the database's; given only `clock`, that.
        self.store = CoordinatorStore(engine, lease_clock=lease_clock or clock)
        self.chain = chain
        self.holder = holder or f"{os.uname().nodename}:{os.getpid()}"
        self.lease_seconds = lease_seconds
        self.tx_timeout = tx_timeout
        self.release_expiry = release_expiry
        self.quarantine_retry = quarantine_retry  # seconds between retries of a quarantined record
        self.quarantine_refund = quarantine_refund  # seconds after its settlement it is refunded at the latest
        self.reorg_window = reorg_window  # blocks back within which a mined transaction is checked still canonical
        self.clock = clock or _wall_clock
        self._report = PassReport()
        self._lots: dict[int, LotInfo] = {}  # the lots of the batch being planned, as the chain has them
        self._said_held: dict[str, set[str]] = {}  # what waits, logged once: asset (or "refund") → request ids
        # The head at which this process last re-checked its receipts (None: not yet): the
        # next re-check reaches back a window below it, and finality is read at it.
        self._checked_head: int | None = None
        self._taken_deep: set[int] = set()  # other keys' failed batches whose epoch a deep settle took

    # ─── One pass ────────────────────────────────────────────────────────────

    def run_once(self) -> PassReport:
        """Resolve what is in flight, register spend caps, settle each asset (drawing its lots)."""
        self._report = report = PassReport()
        if not self.store.acquire_lease(self.holder, self.lease_seconds):
            report.leader = False
            self._checked_head = None  # as after a restart: the leader checks receipts meanwhile
            # Said in the report too: `--once` stood by and did nothing (the README's way out
            # after a rotation, run while the other coordinator's pass or door held the lease).
            report.waiting = (
                "another coordinator holds the lease (its pass, or its door answering an instant exit): "
                "this one stood by and did nothing; it tries again next pass (with --once: run it again)"
            )
            log.info("another coordinator holds the lease; standing by")
            return report
        # Fenced: each database transaction of the pass first checks the lease, locked, so a
        # step after it ran out (a wait, a stopped process) writes nothing (LeaseLost).
        with self.store.fenced(self.holder, self.lease_seconds):
            try:
                return self._pass(report)
            except Exception:
                # A pass that failed (its node down, a database error) gives the lease back:
                # else a leader whose every pass fails keeps it for good and a standby with a
                # working node never leads. Alone, this coordinator takes it again next pass.
                self._checked_head = None
                try:
                    self.store.release_lease(self.holder)
                except Exception:  # the database itself: the lease runs out by itself
                    log.warning("the lease of %s could not be given back after a failed pass", self.holder)
                raise

    def _pass(self, report: PassReport) -> PassReport:
        try:
            # Another key's mined transactions are re-checked first, every pass, this one
            # waiting or not: their own coordinator may be stopped (a rotated key), and a
            # reorg within their window must be seen before the window ends.
            self._recheck_other_keys_txs()
            # Any key's failed batch whose settle is on chain after all: waiting or not,
            # before `wait_for_other_keys` closes another key's open one without its batch,
            # and before anything is planned.
            self._landed_after_all()
            # Another key's open transaction its account's nonce has passed unmined: dropped.
            self._others_dropped()
            # Another key's transactions not yet final (a rotated key, a standby with its
            # own key): nothing is planned or sent, this key's receipts are not re-checked,
            # and the lease goes back so that key's coordinator can take it and finish them.
            txlog.wait_for_other_keys(
                self.store, self.chain, self.reorg_window, "coordinator", self.clock, self._may_resend
            )
        except (OtherKeyPending, LeaseLost) as exc:  # a reattach here holds the lease first
            self.store.release_lease(self.holder)
            report.leader, report.waiting = False, str(exc)
            self._checked_head = None
            return report
        try:
            self._recheck_orphaned_txs()
            for asset in self.chain.assets():
                self._recheck_confirmed(asset)
            # In nonce order: a reorg's orphans are re-sent as the network would.
            for tx in self.store.open_txs(self.chain.sender):
                tx = self.store.tx(tx.id)  # as it is now: a reattach earlier in this loop may have replaced it
                if (failed := self._let_go_settle(tx)) is not None:
                    let_go = "was let go while open (another key's reattach took its records)"
                    tx = self.store.tx(self._replace(tx, failed, let_go))  # its no-op goes now, in its nonce's turn
                self._resolve_tx(tx)
            self._hold_lease()  # renewed between steps too: only one step longer than the lease stops a pass
            self._register_spend_caps()
            self._register_session_keys()
            self._quarantine_unknown_assets()
            self._resolve_quarantine()
            for asset in self.chain.assets():
                self._hold_lease()
                self._settle_asset(asset)
            self._expire_lots()
            self._sweep_releases()
        except LeaseLost as exc:
            report.leader, report.waiting = False, str(exc)
            self._checked_head = None
            log.warning("%s", exc)
        except TxPending as exc:
            report.waiting = str(exc)
            log.info("waiting for %s", exc)
        return report

    def _hold_lease(self) -> None:
        """Before each transaction this pass signs and each batch it plans, each broadcast
        and each slice of a receipt's wait (`_Leased`): the lease still held without a
        break, renewed; else LeaseLost. (The pass's database transactions check it too,
        locked: `CoordinatorStore.fenced`.) The rule that a key waits for
        another key's fresh transactions is checked once, at the pass's start, and holds
        only while no other coordinator (another key: a standby) runs a pass meanwhile."""
        if not self.store.hold_lease(self.holder, self.lease_seconds):
            raise LeaseLost(
                f"the lease of {self.holder} ran out during the pass (longer than {self.lease_seconds} s): "
                "nothing more is signed; standing by"
            )

    # ─── Transactions ────────────────────────────────────────────────────────

    def _leased(self) -> _Leased:
        return _Leased(self.chain, self._hold_lease, max(1.0, self.lease_seconds / 3))

    def _resolve_tx(self, tx: StoredTx) -> str:
        """The final status of a stored transaction, rebroadcasting it if it is not mined."""
        return txlog.resolve_tx(tx, self._leased(), self.store.close_tx, self.clock, self.tx_timeout)

    def _broadcast(self, tx_id: int) -> str:
        tx = self.store.tx(tx_id)
        return txlog.broadcast_stored(tx, self._leased(), self.store.close_tx, self.clock, self.tx_timeout, crash_point)

    # ─── Settlement ──────────────────────────────────────────────────────────

    def _call(self, batch_asset: str, epoch: int, payload: Payload, root: bytes) -> Call:
        debits, credits = payload.words()
        asset = self.chain.asset_address(batch_asset)
        if payload.signed:  # signed mode: one entry per lane, with the voucher that covers it
            entries = pack_signed_entries(
                SignedDebit(address, lane, ceiling, amount, bytes.fromhex(sig[2:]))
                for address, lane, ceiling, amount, sig in payload.signed
            )
            return Call("vault", "settle_signed", (epoch, asset, entries, credits, payload.burn, payload.fee, root))
        return Call("vault", "settle", (epoch, asset, debits, credits, payload.burn, payload.fee, root))

    def _batch_call(self, batch: Batch) -> Call:
        return self._call(batch.asset, batch.epoch, batch.payload, batch.usage_root)

    def _entries_call(self, asset: str, epoch: int, entries: list[Entry], spend_only: bool) -> Call:
        payload = aggregate(entries, spend_only=spend_only, lots=self._lots)
        return self._call(asset, epoch, payload, usage_tree(entries).root)

    def _landed(self, batch: Batch) -> bool:
        """Whether the chain holds this batch: its epoch is settled with our root."""
        chain = self.chain
        return (
            chain.last_epoch(batch.asset) >= batch.epoch
            and chain.usage_root(batch.asset, batch.epoch) == batch.usage_root
        )

    def _settle_asset(self, asset: str) -> None:
        # Several batches can be open at once after a reorg reopened them: oldest first.
        if not self._close_open(asset):
            return
        self._plan(asset)
        for _ in range(MAX_SIGNED_BATCHES_PER_PASS):  # signed mode: as many batches as it takes
            if not self._close_open(asset) or not self._plan_signed(asset):
                return

    def _close_open(self, asset: str) -> bool:
        """Resolve the asset's batches in flight; whether none is left open."""
        while (batch := self.store.open_batch(asset)) is not None:
            if batch.status == PLANNED:
                self._submit(batch)
                return False
            if not self._finish_submitted(batch):
                return False
        return True

    def _finish_submitted(self, batch: Batch) -> bool:
        """Close a submitted batch if its transaction's fate is known; False while it is not."""
        assert batch.tx_id is not None
        tx = self.store.tx(batch.tx_id)
        if tx.status == SENT and tx.sender not in (None, self.chain.sender) and self.chain.receipt(tx.tx_hash) is None:
            # Another key's settle (a rotated key's batch a reorg reopened): its nonce is that
            # account's, never compared with this key's (it is not dropped because this key's
            # nonce passed it). Its bytes are sent again (anyone may), and it stays open
            # until the chain serves its receipt (`txlog.wait_for_other_keys` closes it then)
            # or its own account's nonce passes it (`_others_dropped` closes it dropped).
            self._hold_lease()
            txlog.send_others(self.chain, tx)
            raise TxPending(f"{tx.purpose} tx {tx.tx_hash} of key {tx.sender} (nonce {tx.nonce})")
        status = self._resolve_tx(tx)
        if status == SUCCEEDED or self._landed(batch):
            self._confirm(batch)
            return True
        if status in (REVERTED, DROPPED):
            self.store.fail(batch, f"settle transaction {status}", self.clock())
            self._report.failed.append((batch.asset, batch.epoch))
            log.warning(
                "%s epoch %d: settle %s; its %d records return to pending",
                batch.asset,
                batch.epoch,
                status,
                batch.records,
            )
            return True
        return False

    def _recheck_orphaned_txs(self) -> None:
        """A receipt counts only while the canonical chain holds it. A reorg can orphan any
        number of the coordinator's transactions (settlements, spend caps, in any order):
        each is unresolved again with what it decided (`store.reopen_tx`), and the pass then
        re-sends them all in nonce order with the same signed bytes (what the network does
        with an orphaned block's transactions), so none waits for good behind a nonce that
        only an orphaned transaction held. A transaction whose nonce another one took is
        found dropped, and its batch fails (its records back to pending).

        One exception keeps a record in at most one settlement: the settle of a batch that
        had FAILED (it reverted on the orphaned branch, so its records went back to pending
        and may sit in a later batch already) is never re-sent. Its nonce is filled with a
        no-op instead (`_replace`). Re-sent, it could succeed on the new branch: it would take
        its epoch (the vault's `last_epoch` moved only with the batch planned after it, for
        the same epoch number), the vault would then refuse that later batch as "epoch not
        consecutive", and its records (the failed batch's among them) would be planned a
        third time: the failed batch's usage debited twice. The vault refuses an epoch
        twice, not the same records under two epochs. So: a transaction re-sent with its
        bytes keeps its records (a confirmed batch is submitted again); a transaction whose
        records were let go never lands. Where the network got there first (the orphaned
        settle is already on the new branch, in another block), the failed batch landed
        after all and takes its records back (`_reattach`)."""
        # Back a window below the head last checked at, and the outcome compared too
        # (`txlog.orphaned_txs`): a reorg while this process was down or between passes,
        # and a competing block at the stored height, are both seen.
        head, orphaned = txlog.orphaned_txs(self.store, self.chain, self.reorg_window, self._checked_head)
        for tx, receipt in orphaned:
            self._orphaned(tx, receipt)
        self._checked_head = head

    def _recheck_other_keys_txs(self) -> None:
        """The same re-check for another key's mined transactions (`txlog.others_orphaned_txs`:
        by receipt only, never by this key's nonce), each handled as this key's own are
        (`_orphaned`), except that this key can neither fill another key's nonce with a
        no-op nor wait for it to be taken: a reopened one's bytes are sent again at once
        (anyone may), and a failed settle off the chain and not re-included makes this key
        wait (raises OtherKeyPending) until that key's coordinator fills its nonce, its own
        bytes (sent again) land, or its epoch is taken deep (`_others_failed_settle_off_chain`)."""
        off: list[str] = []
        for tx, receipt in txlog.others_orphaned_txs(self.store, self.chain, self.reorg_window, self._checked_head):
            if not self._orphaned(tx, receipt):
                off.append(f"{tx.purpose} tx {tx.tx_hash} of key {tx.sender} (nonce {tx.nonce})")
        if off:
            message = (
                f"failed settles no longer on chain (a reorg), their records let go: {', '.join(off)}; "
                "only their key can fill their nonces: run that key's coordinator --once"
            )
            log.warning("%s", message)
            raise OtherKeyPending(message)

    def _orphaned(self, tx: StoredTx, receipt: Receipt | None) -> bool:
        """Handle one transaction the canonical chain no longer holds as stored (`receipt`:
        its canonical one, if any); False when it is another key's failed settle that only
        that key can keep off the chain (left as stored)."""
        ours = tx.sender in (None, self.chain.sender)
        batch = self.store.batch_of_tx(tx.id) if tx.purpose == "settle" else None
        if batch is not None and batch.status == CONFIRMED and receipt is None and self._holds_elsewhere(batch):
            # A let-go batch that landed anyway (`_reattach` left records in another landed
            # batch): its bytes debit those again. Re-sent as a confirmed batch's are, they
            # would; it is let go again and handled as any failed settle off the chain.
            reason = "no longer on chain (a reorg); its settle debits records another landed batch holds"
            if self.store.let_go_confirmed(batch, reason, self.clock()):
                log.warning(
                    "%s epoch %d: settle %s (nonce %d) of key %s is no longer on chain (a reorg); it landed after "
                    "its batch was let go and other batches hold some of its records: it is never sent again",
                    batch.asset, batch.epoch, tx.tx_hash, tx.nonce, tx.sender,
                )  # fmt: skip
            batch = self.store.batch(batch.id)
        if batch is not None and batch.status == FAILED:
            if receipt is None:
                if not ours:
                    return self._others_failed_settle_off_chain(tx, batch)
                self._replace(tx, batch)
            elif receipt.ok:  # the network re-included it on the new branch before we could stop it
                self._reattach(batch, receipt)
            else:  # re-included and reverted again: its records stay let go; its new block noted
                self.store.move_tx(tx, REVERTED, receipt, self.clock())
            return True
        if batch is not None:  # its lanes as the vault has them without it: first, as `_confirm` does
            self._lanes_settled(batch, reorged=True)
        what = self.store.reopen_tx(tx)
        log.warning(
            "%s tx %s (nonce %d) of key %s is no longer on chain (a reorg): %s resolved again",
            tx.purpose,
            tx.tx_hash,
            tx.nonce,
            tx.sender,
            what,
        )
        if not ours:  # this key's pass re-sends only its own nonces: another key's bytes go now
            self._hold_lease()
            txlog.send_others(self.chain, tx)
        return True

    def _holds_elsewhere(self, batch: Batch) -> bool:
        """Whether some of the records a let-go batch was sent with (its kept members) are
        now in another batch: it landed after all, and `_reattach` left them where another
        landed batch held them (a double debit, reconcile's)."""
        if not batch.payload.members:
            return False  # never let go: its records are its own
        held = {record.request_id for record in self.store.batch_records(batch.id)}
        return not held.issuperset(batch.payload.members)

    def _others_failed_settle_off_chain(self, tx: StoredTx, batch: Batch) -> bool:
        """Another key's failed settle the chain no longer holds (a reorg) nor re-included:
        only its key can fill its nonce with a no-op, and that key may be lost (rbreak's
        item 1: the wait was then for good). Whether this key may stop waiting for it:
        its epoch taken on chain by another batch whose settle is `reorg_window` blocks
        deep, it can never debit, wherever its bytes go (the vault takes an epoch once).
        Until then its own bytes are sent again (anyone may), while each of its records is
        pending, quarantined or in a batch of its epoch: of it and that batch at most one
        lands, and it landing is `_reattach`'s (re-checked next pass). With its key lost
        they are the one transaction that frees its nonce, behind which that key's later
        transactions (its retry, at the next nonce) wait."""
        taken = self._epoch_taken_deep(batch)
        if taken is not None:
            holder, block = taken
            log.warning(
                "%s epoch %d: failed settle %s (nonce %d) of key %s is off the chain (a reorg), and batch %d took "
                "its epoch in block %d, %d blocks deep or more: it can never debit; no longer waited for",
                batch.asset, batch.epoch, tx.tx_hash, tx.nonce, tx.sender, holder.id, block, self.reorg_window,
            )  # fmt: skip
            return True
        if self._only_at_its_epoch(batch):
            self._hold_lease()
            txlog.send_others(self.chain, tx)
        return False

    def _epoch_taken_deep(self, batch: Batch) -> tuple[Batch, int] | None:
        """The batch whose settle holds `batch`'s epoch on the chain (its root), and the block
        of that settle's canonical receipt, when it is `reorg_window` blocks deep: a settle
        of that epoch can then never land. None otherwise."""
        chain = self.chain
        if chain.last_epoch(batch.asset) < batch.epoch:
            return None
        root = chain.usage_root(batch.asset, batch.epoch)
        deep = chain.head() - self.reorg_window
        for other in self.store.batches_at(batch.asset, batch.epoch):
            if other.id == batch.id or other.usage_root != root or other.tx_id is None:
                continue
            receipt = chain.receipt(self.store.tx(other.tx_id).tx_hash)
            if receipt is not None and receipt.ok and receipt.block_number <= deep:
                return other, receipt.block_number
        return None

    def _only_at_its_epoch(self, batch: Batch) -> bool:
        """Whether each record of the failed `batch` (its kept members) is pending,
        quarantined, or in a batch of its epoch: its settle landing then debits none twice."""
        if not batch.payload.members:
            return False  # failed before members were kept: where its records are is not known
        for record in self.store.reattach_candidates(batch):
            if record.batch_id is None:
                if record.status not in (PENDING, QUARANTINED):
                    return False  # refunded meanwhile
            elif record.batch_id != batch.id and self.store.batch(record.batch_id).epoch != batch.epoch:
                return False
        return True

    def _may_resend(self, tx: StoredTx) -> bool:
        """Whether another key's open transaction's bytes may be sent again by this key: all
        but the settle of a let-go (failed) batch, whose nonce only its key's no-op may take."""
        batch = self.store.batch_of_tx(tx.id) if tx.purpose == "settle" else None
        return batch is None or batch.status != FAILED

    def _failed_batch_of_open_settle(self, tx: StoredTx) -> Batch | None:
        """The batch of `tx` when `tx` is an open settle whose batch was let go (failed)."""
        if tx.status != SENT or tx.purpose != "settle":
            return None
        batch = self.store.batch_of_tx(tx.id)
        return batch if batch is not None and batch.status == FAILED else None

    def _landed_after_all(self) -> None:
        """The one check for "a failed batch's settle landed after all": every failed (let-go)
        batch whose settle, any key's, whatever the log says of it (open, dropped, reverted,
        succeeded), may still be on chain unseen is read by receipt; an ok one on the
        canonical chain means the batch holds its records again (`_reattach`: back to it
        where they can go; an error naming reconcile where another landed batch holds them).
        Its ways there: bytes still in a node's pool mined before their key's no-op took the
        nonce (the no-op then found dropped), or before another key's let-go settle left
        open was closed by its receipt (`txlog.wait_for_other_keys` would close it without
        its batch); a nonce taken by a transaction outside the log (a wallet's cancel of a
        stuck settle, closed dropped) that a reorg within the window orphans, or a node that
        served the nonce before the receipt for longer than the grace; a revert a reorg
        undid and the network re-included as a success. Left failed, its records, back to
        pending, would be settled again under a later epoch once the failure is final:
        debited twice, the books saying once.

        Read while the settle's nonce is not final (`final_nonce`: a later transaction of
        its key in the log mined `reorg_window` deep below the head this process last
        re-checked receipts at; after a restart, below the newest block its key's rows
        hold, as `txlog.orphaned_txs` reaches back), and while it is open at any nonce.
        Past that, whatever took its nonce is history: had the settle itself, an earlier
        pass read it landed (a deeper reorg is reconcile's). The common pass, with no failed
        batch at all, costs one indexed read; one without an unfinal failure no receipt."""
        for sender in self.store.failure_senders():
            base = self._checked_head if self._checked_head is not None else self.store.newest_block(sender)
            final = 0 if base is None else self.store.final_nonce(base - self.reorg_window, sender)
            for batch, tx in self.store.failed_settles(sender, final):
                if self.store.batch(batch.id).status != FAILED or batch.id in self._taken_deep:
                    continue  # an earlier reattach in this loop took it back; its epoch another's, deep
                receipt = self.chain.receipt(tx.tx_hash)
                if receipt is None or not receipt.ok:
                    continue
                log.warning(
                    "%s epoch %d: its failed batch's settle %s (nonce %d, key %s, %s in the log) is on chain "
                    "after all: its batch takes its records back",
                    batch.asset, batch.epoch, tx.tx_hash, tx.nonce, tx.sender, tx.status,
                )  # fmt: skip
                self._reattach(self.store.batch(batch.id), receipt)

    def _others_dropped(self) -> None:
        """Another key's open transaction that the canonical chain has no receipt for while
        its key's account nonce is past it (read from the chain: any key can read another
        account's nonce) is closed dropped, as its own coordinator's `txlog.resolve_tx`
        would close it (after the same grace for a node serving the nonce before the
        receipt). Before, only its own key's coordinator could: the new key waited "some
        not yet mined" for good once the old key was lost, its last settle lost by the
        node and its nonce taken by a transaction outside the log (cbreak2: the old account
        drained by whoever holds the leaked key, or a wallet's cancel of the stuck settle).
        A dropped settle's batch then fails in `_finish_submitted` (its records back to
        pending, kept as its members), as its own key's does: another key's failed batch,
        whose records may be planned again at once at its epoch only (`_plannable`), and
        which takes them back should its bytes land after all (`_landed_after_all`: a reorg
        orphaning what took its nonce). A let-go batch's open settle is closed alike (its
        batch stays failed, read by `_landed_after_all` while its nonce is not final)."""
        others = self.store.others_open(self.chain.sender)
        if not others:
            return
        nonces: dict[str, int] = {}
        for tx in others:
            sender = tx.sender or ""
            if sender not in nonces:
                nonces[sender] = self.chain.nonce_of(sender)
            if nonces[sender] <= tx.nonce or self.chain.receipt(tx.tx_hash) is not None:
                continue  # its nonce still free (sent again by `wait_for_other_keys`), or mined
            if self.chain.wait(tx.tx_hash, min(self.tx_timeout, txlog.DROP_GRACE_SECONDS)) is not None:
                continue  # mined after all: `wait_for_other_keys` closes it with its receipt
            self.store.close_tx(tx.id, DROPPED, None, self.clock())
            log.warning(
                "%s tx %s (nonce %d) of key %s: that account's nonce went to another transaction; dropped",
                tx.purpose, tx.tx_hash, tx.nonce, sender,
            )  # fmt: skip

    def _let_go_settle(self, tx: StoredTx) -> Batch | None:
        """The failed batch of this key's open settle `tx`, if it was let go while the settle
        was open and neither mined nor passed by this key's nonce (None otherwise): another
        key's `_reattach` lets go a later batch holding the reattached records but cannot
        fill this key's nonce, so the settle is left open. Its bytes are never sent again
        (they would debit those records a second time): its nonce goes to a no-op, as for
        this key's own let-go batches."""
        batch = self._failed_batch_of_open_settle(tx)
        if batch is None:
            return None
        if self.chain.receipt(tx.tx_hash) is not None or self.chain.nonce() > tx.nonce:
            return None  # mined, or its nonce gone: resolved as it is, never sent again
        return batch

    def _replace(self, tx: StoredTx, batch: Batch, why: str = "is no longer on chain (a reorg)") -> int:
        """Fill the nonce of a failed batch's orphaned settle with a no-op, stored before it
        is sent (the pass sends it in nonce order with the rest); returns the no-op's id. On
        anvil and on a chain whose pools honour replacement by fee the old bytes can then
        never land; should a node include them anyway, the no-op is found dropped and
        `_landed_after_all` gives the failed batch its records back."""
        self._hold_lease()
        noop = self.chain.sign_noop(tx.nonce, tx.tx_hash)
        noop_id = self.store.replace_tx(tx, noop, self.chain.sender, self.clock())
        log.warning(
            "%s epoch %d: its failed settle %s (nonce %d) %s; its records were let go, so its nonce is "
            "filled with the no-op %s, never the old bytes",
            batch.asset,
            batch.epoch,
            tx.tx_hash,
            tx.nonce,
            why,
            noop.tx_hash,
        )
        return noop_id

    def _reattach(self, batch: Batch, receipt: Receipt) -> None:
        """A failed batch whose settle landed after all holds its records again, so that
        none is settled twice: they are its asset's oldest records pending or in another
        batch of the same epoch (which can no longer land), as `plan` took them, and the
        chain's root for the epoch proves it. Done before anything is planned in the pass.
        With its members kept (`Payload.members`) they are exactly its records, wherever
        they are: a record quarantined meanwhile goes back to it too; one refunded meanwhile
        goes back with its refund taken back (the chain took what the ledger gave back: the
        payer is debited again, a debt for what its balance lacks). Without them (failed
        before they were kept), should the root not match nothing is moved."""
        records = self.store.reattach_candidates(batch)
        spend_only = self.chain.is_spend_only(batch.asset)
        wallets = {r.payer: self.store.wallet_of(r.payer) for r in records}
        entries = [prepare(r, wallets[r.payer], spend_only=spend_only) for r in records]
        found = [e for e in entries if isinstance(e, Entry)]
        proven = self._landed(batch) and len(found) == batch.records and usage_tree(found).root == batch.usage_root
        if not proven:
            log.error(
                "%s epoch %d: its failed settle landed after a reorg and its records cannot be proven "
                "by its root: they may be settled twice; run `promptex reconcile`",
                batch.asset,
                batch.epoch,
            )
            return
        # A record settled again meanwhile under a later epoch (requeued after the failure,
        # in a batch a reorg orphaned with this one's revert): that batch must never land
        # as well, or the chain debits the record twice (and, should its bytes revert, the
        # record would go back to pending and be settled a third time). It is let go like
        # the batches of this epoch, and its settle's nonce filled with a no-op: here if it
        # is still to be sent (reopened by an earlier pass), else by the orphaned-transaction
        # check that comes to it later in this pass (its nonce is higher).
        orphaned: list[Batch] = []
        for held in sorted({r.batch_id for r in records if r.batch_id is not None and r.batch_id != batch.id}):
            holder = self.store.batch(held)
            unlanded = holder.status in (PLANNED, SUBMITTED, CONFIRMED) and not self._landed(holder)
            if holder.epoch != batch.epoch and unlanded:
                orphaned.append(holder)
        self._hold_lease()
        noops: list[tuple[StoredTx, SignedTx]] = []  # stored with the rest: a crash cannot leave one to re-send
        for holder in orphaned:
            tx = self.store.tx(holder.tx_id) if holder.tx_id is not None else None
            if tx is not None and tx.status == SENT and tx.sender in (None, self.chain.sender):
                noops.append((tx, self.chain.sign_noop(tx.nonce, tx.tx_hash)))
        done = self.store.reattach(
            batch, found, receipt, self.clock(), orphaned={b.id for b in orphaned},
            noops=[(tx.id, noop) for tx, noop in noops], sender=self.chain.sender,
        )  # fmt: skip
        for tx, noop in noops:
            log.warning(
                "%s epoch %d: settle %s (nonce %d) of a later batch holding its records is never re-sent: "
                "its nonce is filled with the no-op %s",
                batch.asset,
                batch.epoch,
                tx.tx_hash,
                tx.nonce,
                noop.tx_hash,
            )
        for holder in orphaned:  # another key's open settle: only that key may take its nonce
            tx = self.store.tx(holder.tx_id) if holder.tx_id is not None else None
            if tx is not None and tx.status == SENT and tx.sender not in (None, self.chain.sender):
                log.warning(
                    "%s epoch %d: settle %s (nonce %d) of key %s, of a later batch holding its records, is let go "
                    "and never sent again; only that key can fill its nonce: run that key's coordinator --once",
                    batch.asset,
                    batch.epoch,
                    tx.tx_hash,
                    tx.nonce,
                    tx.sender,
                )
        self._lanes_settled(batch)  # a signed batch: its lanes as the vault now has them, as `_confirm` does
        self._report.taken_back += len(done.taken_back)
        for request_id in done.taken_back:
            log.warning(
                "%s epoch %d: usage %s was refunded, then debited on chain by this settle: the refund is "
                "taken back (a debt for what the payer's balance lacks)",
                batch.asset,
                batch.epoch,
                request_id,
            )
        if done.left:
            log.error(
                "%s epoch %d: its failed settle landed after a reorg and debited %s on chain, which another "
                "landed batch holds too: run `promptex reconcile`",
                batch.asset,
                batch.epoch,
                ", ".join(done.left),
            )
        self._report.confirmed.append((batch.asset, batch.epoch))
        if back := len(found) - len(done.left):  # none when every one is held elsewhere (the error above)
            log.warning(
                "%s epoch %d: its failed settle landed after a reorg (the network re-included it); "
                "its %d records are back in it, confirmed",
                batch.asset,
                batch.epoch,
                back,
            )

    def _recheck_confirmed(self, asset: str) -> None:
        """A settlement is confirmed only while the chain holds it: a reorg can orphan a
        mined settle. Its batch is reopened (`store.reopen`) before anything is planned, so
        its records are neither lost (charged, never debited) nor settled twice.
        A let-go batch that landed anyway (`_reattach` left some of its records in another
        landed batch) is never reopened: its bytes, re-sent, would debit those records again.
        It is handled as the receipt re-check handles it (`_orphaned`), which finds it first
        while its row is within the re-check's window; found only here (its row past that
        window: another key's retired rows, or a reorg deeper than the window), it is let go
        again, its own key's nonce filled with a no-op, another key's bytes not sent (that
        key's coordinator fills its nonce). Another key's is then unresolved again in the
        log (open, its batch failed: never sent again, `_may_resend`), so that every pass
        waits for that key as in the window (`txlog.wait_for_other_keys`) and reads it by
        receipt (`_landed_after_all`): its row, stale past the window, is re-checked no more."""
        for batch in self.store.confirmed_from(asset, self.chain.last_epoch(asset)):
            if self._landed(batch):
                continue
            log.warning("%s epoch %d: its settlement is no longer on chain (a reorg); resolving it again",
                        asset, batch.epoch)  # fmt: skip
            if batch.tx_id is not None and self._holds_elsewhere(batch):
                tx = self.store.tx(batch.tx_id)
                if not self._orphaned(tx, self.chain.receipt(tx.tx_hash)):
                    self.store.reopen_tx(tx)
                    raise OtherKeyPending(
                        f"{asset} epoch {batch.epoch}: settle {tx.tx_hash} (nonce {tx.nonce}) of key {tx.sender} "
                        "landed after its batch was let go and is no longer on chain; it is never sent again: "
                        "only its key can fill its nonce: run that key's coordinator --once"
                    )
                continue
            self._lanes_settled(batch, reorged=True)  # its lanes as the vault has them without it: first
            self.store.reopen(batch)

    def _confirm(self, batch: Batch) -> None:
        # The lanes' settled totals first: a batch is confirmed once, so one killed between
        # the two (or whose lane read failed) left the ledger's lanes behind the chain for
        # good (xbreak s18); read again from the chain, they are set again harmlessly.
        self._lanes_settled(batch)
        self.store.confirm(batch, self.clock())
        self._report.confirmed.append((batch.asset, batch.epoch))
        log.info(
            "%s epoch %d settled: %d record%s, %s debited, root 0x%s",
            batch.asset, batch.epoch, batch.records, "" if batch.records == 1 else "s",
            money_exact(batch.payload.total, batch.asset), batch.usage_root.hex(),
        )  # fmt: skip
        crash_point("confirmed")

    def _submit(self, batch: Batch) -> None:
        call = self._batch_call(batch)
        reason = self.chain.simulate(call)
        if reason is not None:
            if self._landed(batch):
                self._confirm(batch)
                return
            # Never signed, never sent: safe to drop and plan again (quarantining if entries are at fault).
            self.store.fail(batch, f"refused before signing: {reason}", self.clock())
            self._report.failed.append((batch.asset, batch.epoch))
            log.warning(
                "%s epoch %d: the vault refuses the planned batch (%s); planning again",
                batch.asset,
                batch.epoch,
                reason,
            )
            return
        self._hold_lease()
        signed = self.chain.sign(call, self.chain.pending_nonce())
        tx_id = self.store.submit(batch.id, signed, self.chain.sender, self.clock())
        log.info("%s epoch %d: settle sent as %s", batch.asset, batch.epoch, signed.tx_hash)
        self._broadcast(tx_id)
        self._finish_submitted(self.store.batch(batch.id))

    def _plan(self, asset: str) -> None:
        chain = self.chain
        records = self.store.pending_records(asset, MAX_PENDING_READ)
        if not records:
            return
        # The epoch is read once: the records are chosen for it (`_plannable`: a failed batch's
        # record goes at once only at that batch's epoch), the batch is simulated and planned
        # at it. Read again, a failed settle re-included meanwhile (a reorg) would have taken
        # it, and the retry of its records, moved to the next epoch, would debit them twice.
        # Chosen before the window is checked, so that every pass reports what waits (`held`).
        epoch = chain.last_epoch(asset) + 1
        records = self._plannable(asset, epoch, records)
        if not records or chain.now() < chain.next_settlement_at(asset):
            return  # nothing to settle, or this window's settlement is posted already
        spend_only = chain.is_spend_only(asset)
        self._lots = {}
        entries = self._prepare(asset, records, spend_only)
        entries, _later = fit(entries)
        drawable = self._drawable(asset, entries) if spend_only else 0
        entries, over = fit_capacity(entries, spend_only=spend_only, lots=self._lots, drawable=drawable, asset=asset)
        self._quarantine(over)
        entries = self._fit_chain(asset, epoch, entries, spend_only)
        if not entries:
            return
        payload = aggregate(entries, spend_only=spend_only, lots=self._lots)
        root = usage_tree(entries).root
        self._hold_lease()
        batch = self.store.plan(asset, epoch, entries, payload, root, self.clock())
        log.info("%s epoch %d planned: %d records, %d payers", asset, epoch, len(entries), len(payload.debits))
        crash_point("planned")
        self._submit(batch)

    # ─── A failed batch's records, until its failure is final ────────────────

    def _unfinal_failures(self, assets: Collection[str]) -> list[Batch]:
        """The failed batches (of `assets`) a reorg could still undo the failure of: their
        settle's nonce is not yet taken in a block `reorg_window` deep (by its revert, or by
        what took it: a no-op, another transaction). Until it is, the old bytes can come
        back (a node re-includes an orphaned block's transactions) and the batch lands.
        Read at the head the pass re-checked its receipts at, never a later one: a reorg
        after that check could have orphaned a block the later head counts as deep.
        Each key's settles at that key's nonces (two accounts' nonces are never compared),
        other keys' too: one whose settle was closed DROPPED (its nonce taken by a
        transaction outside the log, a wallet's cancel) leaves no row of its key open or
        mined, so `txlog.wait_for_other_keys` never waits for it (cbreak's finding: its
        records went under a later epoch at once). Its key may be retired, nothing of it
        ever mined past that nonce: another key's failure is also final once its epoch is
        taken on chain by a settle `reorg_window` deep (`_epoch_taken_deep`: it can never
        land then; remembered, a deeper reorg being reconcile's)."""
        sender, head = self.chain.sender, self._checked_head
        found: list[Batch] = []
        for key in sorted({sender, *self.store.failure_senders()}):
            # Receipts not yet re-checked: nothing is final.
            final = 0 if head is None else self.store.final_nonce(head - self.reorg_window, key)
            for asset in assets:
                for batch in self.store.unfinal_failures(asset, final, key):
                    if key != sender and batch.id not in self._taken_deep and self._epoch_taken_deep(batch):
                        self._taken_deep.add(batch.id)
                    if key == sender or batch.id not in self._taken_deep:
                        found.append(batch)
        return sorted(found, key=lambda batch: (batch.asset, batch.id))

    def _plannable(self, asset: str, epoch: int, records: list[StoredUsage]) -> list[StoredUsage]:
        """The records that may be planned at `epoch`. A record of a failed batch may be
        planned again at once at the SAME epoch (the vault takes an epoch once: of the
        failed batch and the retry, at most one ever lands), under a later epoch only once
        the failure is final. Before, should a reorg orphan the revert and the network
        re-include the old settle and the later batch both, the chain would debit the record
        twice, and nothing on chain stops it (the vault refuses an epoch twice, never one
        record under two epochs): rbreak's finding. On a real chain the wait is
        `reorg_window` blocks (128: ~26 min at 12 s) after the revert."""
        failures = [batch for batch in self._unfinal_failures([asset]) if batch.epoch != epoch]
        held = _waiting(failures, records)
        said = self._said_held.setdefault(asset, set())
        said.intersection_update(held)  # forget what no longer waits, so that it is said again should it wait again
        if not held:
            return records
        kept: list[StoredUsage] = []
        for record in records:
            failed = held.get(record.request_id)
            if failed is None:
                kept.append(record)
                continue
            self._report.held.add(record.request_id)
            if record.request_id not in said:
                said.add(record.request_id)
                whose = "its batch" if failed.payload.members else "a batch that kept no member list (may hold it):"
                log.info(
                    "usage %s waits: %s %d (epoch %d) failed, and until that failure is %d blocks deep a "
                    "reorg could still land it; it may be settled again at epoch %d at once, under epoch %d then",
                    record.request_id, whose, failed.id, failed.epoch, self.reorg_window, failed.epoch, epoch,
                )  # fmt: skip
        return kept

    # ─── Signed mode (issue 23) ──────────────────────────────────────────────

    def _plan_signed(self, asset: str) -> bool:
        """Plan and submit the next `settle_signed` batch of the asset's signed-mode records
        (any number per window; see `signed_plan`); whether one was submitted."""
        chain = self.chain
        records = self.store.pending_signed_records(asset, MAX_PENDING_READ)
        epoch = chain.last_epoch(asset) + 1  # read once, as in `_plan`
        records = self._plannable(asset, epoch, records) if records else records
        if not records:
            return False
        spend_only = chain.is_spend_only(asset)
        self._lots = {}
        by_id = {record.request_id: record for record in records}
        entries = self._prepare(asset, records, spend_only)
        drawable = self._drawable(asset, entries) if spend_only else 0
        entries, over = fit_capacity(entries, spend_only=spend_only, lots=self._lots, drawable=drawable, asset=asset)
        self._quarantine(over)
        signed: list[Signed] = []
        for e in entries:
            record = by_id[e.request_id]
            assert record.voucher_session is not None and record.voucher_lane is not None
            signed.append(Signed(e, record.voucher_session, record.voucher_lane))
        planned, held = next_batch(signed, self._lane_vouchers(asset, signed))
        self._quarantine(held)
        if planned is None:
            return False
        planned = self._fit_signed(asset, epoch, planned, spend_only)
        if planned is None:
            return False
        payload = aggregate(planned.entries, spend_only=spend_only, lots=self._lots)
        payload.signed = [(d.address, d.lane, d.ceiling, d.amount, "0x" + d.signature.hex()) for d in planned.debits]
        self._hold_lease()
        batch = self.store.plan(asset, epoch, planned.entries, payload, usage_tree(planned.entries).root, self.clock())
        log.info("%s epoch %d planned (signed): %d records, %d lanes", asset, epoch, len(planned.entries),
                 len(planned.debits))  # fmt: skip
        crash_point("planned")
        self._submit(batch)
        return True

    def _lane_vouchers(self, asset: str, signed: list[Signed]) -> dict[tuple[str, int], LaneVoucher]:
        """Per (wallet, lane) the records name: the lane's highest stored voucher of the
        account's current session, and what the chain settled on it (read from the vault)."""
        wanted: dict[int, set[int]] = defaultdict(set)
        wallets: dict[int, str] = {}
        for item in signed:
            wanted[item.entry.payer].add(item.lane)
            wallets[item.entry.payer] = item.entry.address
        found: dict[tuple[str, int], LaneVoucher] = {}
        for account, numbers in wanted.items():
            session, lanes = self.store.session_lanes(account, asset)
            wallet = wallets[account]
            if session is None or session.address.lower() != wallet.lower():
                continue  # its records are held: no voucher of the wallet debited covers them
            for lane in lanes:
                if lane.lane in numbers and lane.voucher is not None:
                    settled = self.chain.lane_settled(wallet, asset, lane.lane)
                    signature = bytes.fromhex(lane.voucher.signature[2:])
                    found[(wallet, lane.lane)] = LaneVoucher(
                        wallet, session.session, lane.lane, lane.voucher.ceiling, signature, settled
                    )
        return found

    def _fit_signed(self, asset: str, epoch: int, batch: SignedBatch, spend_only: bool) -> SignedBatch | None:
        """The batch the vault accepts, found by eth_call: when it reverts for a reason its
        entries cause, each lane is tried alone and the refused ones' records quarantined."""
        reason = self.chain.simulate(self._signed_call(asset, epoch, batch, spend_only))
        if reason is None:
            return batch
        if not reason.startswith(ENTRY_REVERTS + SIGNED_ENTRY_REVERTS):
            log.warning("%s: the vault refuses the signed batch (%s); trying again next pass", asset, reason)
            return None
        ids = {e.request_id: e for e in batch.entries}
        reasons: dict[str, str] = {}
        kept: list[LaneDebit] = []
        waiting: set[str] = set()
        for debit in batch.debits:
            alone = SignedBatch([debit], [ids[r] for r in debit.request_ids])
            refused = self.chain.simulate(self._signed_call(asset, epoch, alone, spend_only))
            if refused is None:
                kept.append(debit)
            elif refused.startswith(SIGNED_NOT_YET):  # registered this window: settles from the next
                waiting.update(debit.request_ids)
            else:
                for request_id in debit.request_ids:
                    reasons[request_id] = f"vault refuses lane {debit.lane} of {debit.address}: {refused}"
        self._quarantine(reasons)
        if not kept:
            return None
        rest = SignedBatch(kept, [e for e in batch.entries if e.request_id not in reasons | dict.fromkeys(waiting)])
        if self.chain.simulate(self._signed_call(asset, epoch, rest, spend_only)) is not None:
            return None  # refused together (a shared reserve): the next pass tries again
        return rest

    def _signed_call(self, asset: str, epoch: int, batch: SignedBatch, spend_only: bool) -> Call:
        payload = aggregate(batch.entries, spend_only=spend_only, lots=self._lots)
        payload.signed = [(d.address, d.lane, d.ceiling, d.amount, "0x" + d.signature.hex()) for d in batch.debits]
        return self._call(asset, epoch, payload, usage_tree(batch.entries).root)

    def _lanes_settled(self, batch: Batch, *, reorged: bool = False) -> None:
        """After a signed batch landed, or before a batch whose landed settle a reorg orphaned
        is reopened (`reorged`): each lane's settled total, as the vault has it, into the ledger
        (what `GET /v1/promptex/lanes` reports; the unanswered-settle give-back's lane guard).
        Read before the batch's record changes, so that a coordinator killed between the two
        reads them again. Before (xbreak s18), a reopened batch's lanes kept the orphaned
        settle's totals until it, or its records in a later batch, landed again.

        Per the batch's own session (its records' vouchers'): the vault reads the lanes of the
        account's LAST registered session only, so a lane is read only while that is the
        batch's, and written onto the batch's session's lane — never lowered, but by a reorg.
        Before (review1 F6), the vault's last session's lane was written onto the ledger's
        current session's: a batch confirmed after the buyer's next session was registered
        wrote that session's 0 over the batch's lane (the give-back's guard then read a total
        below what the chain settled). Such a lane is left as it was and said (its total is
        not readable from the vault once the next session is registered: it catches up only
        if a later batch of that session lands — none can, its session over)."""
        if not batch.payload.signed:
            return
        sessions: dict[tuple[str, int], set[int]] = {}
        for record in self.store.batch_records(batch.id):
            if record.address is not None and record.voucher_session is not None and record.voucher_lane is not None:
                sessions.setdefault((record.address.lower(), record.voucher_lane), set()).add(record.voucher_session)
        chain_sessions: dict[str, int] = {}
        for address, lane, _ceiling, _amount, _sig in batch.payload.signed:
            account = self.store.account_of(address)
            if account is None:
                continue
            own = sessions.get((address.lower(), lane), set())
            if len(own) != 1:  # (one voucher per lane and session in a batch: never several)
                continue
            (session,) = own
            if address not in chain_sessions:
                chain_sessions[address] = self.chain.signed_session(address, batch.asset)
            on_chain = chain_sessions[address]
            if on_chain != session:
                log.warning(
                    "%s epoch %d: lane %d of %s's session %d not read: the vault now reads session %d's lanes; "
                    "the ledger keeps the lane's settled total as it was",
                    batch.asset, batch.epoch, lane, address, session, on_chain,
                )  # fmt: skip
                continue
            settled = self.chain.lane_settled(address, batch.asset, lane)
            self.store.set_lane_settled(account, batch.asset, session, lane, settled, self.clock(), lower=reorged)

    def _prepare(self, asset: str, records: list[StoredUsage], spend_only: bool) -> list[Entry]:
        """Records as entries; those that cannot be settled are quarantined with their reason."""
        wallets: dict[int, str | None] = {}
        lots: dict[int, str | None] = {}
        asset_address = self.chain.asset_address(asset)
        now = self.chain.now()
        entries: list[Entry] = []
        reasons: dict[str, str] = {}
        for record in records:
            if record.payer not in wallets:
                wallets[record.payer] = self.store.wallet_of(record.payer)
            prepared = prepare(record, wallets[record.payer], spend_only=spend_only)
            if isinstance(prepared, str):
                reasons[record.request_id] = prepared
                continue
            if prepared.lot_id not in lots:
                self._lots[prepared.lot_id] = lot = self.chain.lot(prepared.lot_id)
                lots[prepared.lot_id] = lot_problem(lot, spend_only=spend_only, asset_address=asset_address, now=now)
            problem = lots[prepared.lot_id]
            if problem is not None:
                reasons[record.request_id] = f"lot {prepared.lot_id}: {problem}"
                continue
            entries.append(prepared)
        self._quarantine(reasons)
        return entries

    def _quarantine(self, reasons: dict[str, str]) -> None:
        if not reasons:
            return
        count = self.store.quarantine(reasons, self.clock())
        self._report.quarantined += count
        for request_id, reason in reasons.items():
            log.error("usage %s quarantined: %s", request_id, reason)

    def _fit_chain(self, asset: str, epoch: int, entries: list[Entry], spend_only: bool) -> list[Entry]:
        """The entries the vault accepts, found by eth_call: when the whole batch reverts for
        a reason entries cause, each (payer, lot) group is tried alone and refused groups are
        quarantined; if the rest still reverts together (a shared reserve falls short), payers
        are set aside largest on-chain shortfall first."""
        if not entries:
            return entries
        reason = self.chain.simulate(self._entries_call(asset, epoch, entries, spend_only))
        if reason is None:
            return entries
        if not reason.startswith(ENTRY_REVERTS):
            log.warning("%s epoch %d: the vault refuses the batch (%s); trying again next pass", asset, epoch, reason)
            return []
        log.warning("%s epoch %d: the vault refuses the batch (%s); finding the entries at fault", asset, epoch, reason)
        groups: dict[tuple[str, int], list[Entry]] = defaultdict(list)
        for e in entries:
            groups[(e.address, e.lot_id)].append(e)
        reasons: dict[str, str] = {}
        for (address, lot_id), group in groups.items():
            refused = self.chain.simulate(self._entries_call(asset, epoch, group, spend_only))
            if refused is not None and refused.startswith(ENTRY_REVERTS):
                for e in group:
                    reasons[e.request_id] = f"vault refuses payer {address} on lot {lot_id}: {refused}"
        rest = [e for e in entries if e.request_id not in reasons]
        while rest:
            refused = self.chain.simulate(self._entries_call(asset, epoch, rest, spend_only))
            if refused is None:
                break
            if not refused.startswith(ENTRY_REVERTS):
                self._quarantine(reasons)
                return []
            owed: dict[str, int] = defaultdict(int)
            for e in rest:
                owed[e.address] += e.cost
            short = {a: amount - min(amount, self.chain.debitable(a, asset)) for a, amount in owed.items()}
            worst = max(short, key=lambda a: (short[a], owed[a]))
            for e in rest:
                if e.address == worst:
                    reasons[e.request_id] = (
                        f"vault refuses the batch ({refused}); payer {worst} is short {short[worst]}"
                    )
            rest = [e for e in rest if e.address != worst]
        self._quarantine(reasons)
        return rest

    def _resolve_quarantine(self) -> None:
        """Each quarantined record ends settled in a later epoch once its cause is fixed,
        or refunded to its payer in the ledger when the chain can never settle it (see
        `coordinator.quarantine`)."""
        records = self.store.quarantined()
        if not records:
            return
        known = set(self.chain.assets())
        states = self.store.lot_states()
        lots: dict[int, LotInfo] = {}
        # A record of a failed batch is refunded only once the failure is final: should the
        # batch land after all, the refund would be taken back (`_reattach`).
        unfinal = _waiting(self._unfinal_failures({record.asset for record in records}), records)
        said = self._said_held.setdefault("refund", set())
        said.intersection_update(unfinal)
        now, chain_now = self.clock(), self.chain.now()
        for record in records:
            asset_known = record.asset in known
            state = states.get(record.gateway_lot_id) if record.gateway_lot_id is not None else None
            lot = None
            if asset_known and record.chain_lot_id is not None:
                if record.chain_lot_id not in lots:
                    lots[record.chain_lot_id] = self.chain.lot(record.chain_lot_id)
                lot = lots[record.chain_lot_id]
            cause = never_settles(
                record,
                asset_known=asset_known,
                spend_only=asset_known and self.chain.is_spend_only(record.asset),
                state=state,
                lot=lot,
                asset_address=self.chain.asset_address(record.asset) if asset_known else None,
                now=chain_now,
            )
            verdict = decide(
                record, cause=cause, state=state, now=now, retry=self.quarantine_retry, refund=self.quarantine_refund
            )
            if verdict.action == REQUEUE and self.store.requeue(record.request_id, verdict.chain_lot_id):
                self._report.requeued += 1
                log.info("usage %s back to pending: %s is resolved or worth a retry", record.request_id,
                         record.quarantine_reason)  # fmt: skip
            elif verdict.action == REFUND and record.request_id in unfinal:
                self._report.held.add(record.request_id)
                if record.request_id not in said:
                    said.add(record.request_id)
                    failed = unfinal[record.request_id]
                    log.info("usage %s: its refund waits until the failure of its batch %d (epoch %d) is %d blocks "
                             "deep (%s)", record.request_id, failed.id, failed.epoch, self.reorg_window,
                             verdict.reason)  # fmt: skip
            elif verdict.action == REFUND and verdict.reason is not None:
                if self.store.refund(record.request_id, verdict.reason, self.clock()):
                    self._report.refunded += 1
                    log.warning("usage %s refunded to payer %d: %s", record.request_id, record.payer, verdict.reason)

    def _quarantine_unknown_assets(self) -> None:
        known = set(self.chain.assets())
        for asset in self.store.pending_assets():
            if asset not in known:
                records = self.store.pending_records(asset, MAX_PENDING_READ)
                self._quarantine({r.request_id: f"asset {asset!r} is not in the deployment" for r in records})

    # ─── Lots past their expiry ──────────────────────────────────────────────

    def _expire_lots(self) -> None:
        """End the market's lots past their expiry and the escrow's settlement grace with
        `CreditEscrow.expire` (anyone may call it): the seller gets its bond back and, for
        a tokenized lot, the bond share of the unconsumed capacity goes to the insurance
        fund that buys back the tokens left unbacked. The coordinator does it because it
        already runs the market's periodic chain work with a crash-safe, reorg-checked log
        of what it signs, and it settles a lot's last usage (due before the grace ends:
        the gateway stops routing a lot an epoch and a margin before its expiry) in the
        same passes, first. The indexer then sees LotExpired and the ledger follows."""
        states = [s for s in self.store.lot_states().values() if s.state in (OPEN, CLOSING) and s.chain_lot_id]
        if not states:
            return
        now, grace = self.chain.now(), self.chain.settlement_grace()
        for state in states:
            if now <= state.expires_at + grace:
                continue  # the ledger's expiry is the one the lot was opened with
            assert state.chain_lot_id is not None
            lot = self.chain.lot(state.chain_lot_id)
            if lot.status != STATUS_OPEN or now <= lot.expiry + grace:
                continue  # ended already (the indexer has not said so yet), or not due
            call = Call("escrow", "expire", (state.chain_lot_id,))
            reason = self.chain.simulate(call)
            if reason is not None:
                log.warning("lot %d: expire refused (%s); trying again next pass", state.chain_lot_id, reason)
                continue
            self._hold_lease()
            signed = self.chain.sign(call, self.chain.pending_nonce())
            tx_id = self.store.store_expire(signed, self.chain.sender, self.clock())
            if self._broadcast(tx_id) == SUCCEEDED:
                self._report.expired.append(state.chain_lot_id)
                log.info("lot %d expired on chain in %s", state.chain_lot_id, signed.tx_hash)
            else:
                log.warning("lot %d: expire %s did not succeed; trying again next pass", state.chain_lot_id,
                            signed.tx_hash)  # fmt: skip

    def _drawable(self, asset: str, entries: list[Entry]) -> int:
        """What one settlement of the provider token may burn. When the entries need more
        and lots past their expiry lead the escrow's draw order (more than one draw unlinks
        by itself: a crowd left to expire), the coordinator first sends
        `CreditEscrow.prune` (anyone may) so that their records are not quarantined for
        room the walk lacks, not capacity: as many as it takes, up to
        MAX_PRUNES_PER_PASS. (Found: one prune a pass left a crowd of 769+ lots filling
        the walk, and that pass quarantined every record of the token.)"""
        drawable = self.chain.drawable(asset)
        needed = sum(e.cost for e in entries)
        for _ in range(MAX_PRUNES_PER_PASS):
            if needed <= drawable or not self.chain.prunable(asset):
                break
            call = Call("escrow", "prune", (self.chain.asset_address(asset), MAX_PRUNE_LOTS))
            reason = self.chain.simulate(call)
            if reason is not None:
                log.warning("%s: prune refused (%s); trying again next pass", asset, reason)
                break
            self._hold_lease()
            signed = self.chain.sign(call, self.chain.pending_nonce())
            tx_id = self.store.store_prune(signed, self.chain.sender, self.clock())
            if self._broadcast(tx_id) != SUCCEEDED:
                log.warning("%s: prune %s did not succeed; trying again next pass", asset, signed.tx_hash)
                break
            log.info("%s: lots past expiry pruned from the draw order in %s", asset, signed.tx_hash)
            drawable = self.chain.drawable(asset)
        return drawable

    # ─── Spend caps ──────────────────────────────────────────────────────────

    def submit_spend_cap(
        self, address: str, asset: str, per_epoch: int, total: int, expiry: int, nonce: int, signature: bytes
    ) -> int:
        """Queue a user-signed SpendCap; it is registered on chain before the next settlement.
        Idempotent per (address, asset, nonce) for the same cap; another cap with a nonce
        already queued and not rejected is refused (409 already_queued, naming the queued
        cap in whole units and its expiry as a UTC date), as a SessionKey is
        (`requests.queue_session_key`). Before, it was answered the first one's id, as if
        queued, while the relay registered the first."""
        self.chain.asset_address(asset)  # a known asset, or KeyError
        address = checksum_address(address)
        signed = "0x" + signature.hex()
        queued = self.store.spend_cap_submission(
            self.store.add_spend_cap(address, asset, per_epoch, total, expiry, nonce, signed, self.clock())
        )
        return queued_once(
            "SpendCap", queued, (queued.per_epoch, queued.total, queued.expiry), (per_epoch, total, expiry),
            f"per epoch {money(queued.per_epoch, asset, unlimited=UNLIMITED)}, total "
            f"{money(queued.total, asset, unlimited=UNLIMITED)}, expiry {utc_text(queued.expiry)}", queued=queued.id,
        )  # fmt: skip

    def _register_spend_caps(self) -> None:
        caps = self.store.spend_caps()
        self._report.caps += self._relay(
            "register_spend_cap",
            caps,
            lambda cap: (
                cap.address,
                self.chain.asset_address(cap.asset),
                cap.per_epoch,
                cap.total,
                cap.expiry,
                cap.nonce,
                bytes.fromhex(cap.signature[2:]),
            ),  # fmt: skip
            self.store.submit_spend_cap,
            self.store.close_spend_cap,
        )

    # ─── Session keys (signed mode, issue 23) ────────────────────────────────

    def submit_session_key(
        self, address: str, asset: str, key: str, lanes: int, maximum: int, expiry: int, nonce: int, signature: bytes
    ) -> int:
        """Queue a wallet-signed SessionKey; it is registered on chain (gaslessly for the
        wallet) on the next pass, like a spend cap. The vault moves the account's asset to
        signed mode from the next window; the indexer then records the session."""
        self.chain.asset_address(asset)  # a known asset, or KeyError
        return self.store.add_session_key(
            checksum_address(address), asset, checksum_address(key), lanes, maximum, expiry, nonce,
            "0x" + signature.hex(), self.clock(),
        )  # fmt: skip

    def _register_session_keys(self) -> None:
        self._report.session_keys += self._relay(
            "register_session_key",
            self.store.session_keys(),
            lambda k: (
                k.address,
                self.chain.asset_address(k.asset),
                k.key,
                k.lanes,
                k.maximum,
                k.expiry,
                k.nonce,
                bytes.fromhex(k.signature[2:]),
            ),  # fmt: skip
            self.store.submit_session_key,
            self.store.close_session_key,
        )

    def _relay(
        self,
        function: str,
        submissions: Sequence[Relayed],
        args: Callable[[Any], tuple[Any, ...]],
        submit: Callable[[int, SignedTx, str, int], int],
        close: Callable[..., None],
    ) -> int:
        """Send each user-signed message the vault registers for anyone (`function`), its
        signed transaction stored first; returns how many were registered. One the vault
        refuses is rejected with the reason; one still unresolved waits for the next pass."""
        registered = 0
        for item in submissions:
            if item.status == SUBMITTED:
                assert item.tx_id is not None
                status = self._resolve_tx(self.store.tx(item.tx_id))
            else:
                try:
                    call = Call("vault", function, args(item))
                except KeyError as exc:  # queued straight into the store for an asset not deployed
                    close(item.id, REJECTED, f"unknown asset {exc}")
                    continue
                reason = self.chain.simulate(call)
                if reason is not None:
                    close(item.id, REJECTED, reason)
                    log.warning("%s %d of %s refused: %s", function, item.id, item.address, reason)
                    continue
                self._hold_lease()
                signed = self.chain.sign(call, self.chain.pending_nonce())
                tx_id = submit(item.id, signed, self.chain.sender, self.clock())
                status = self._broadcast(tx_id)
            if status == SUCCEEDED:
                close(item.id, REGISTERED)
                registered += 1
            elif status == REVERTED:
                close(item.id, REJECTED, f"{function} reverted on chain")
            else:
                close(item.id, PENDING)
        return registered

    # ─── Instant-exit releases ───────────────────────────────────────────────

    def sign_release(self, address: str, asset: str, amount: int) -> Release:
        """Co-sign an instant exit of `amount` only if it is free of unsettled usage:
        ≤ the on-chain balance − (active holds + settled usage not yet confirmed on chain
        + what is already locked). The amount stays locked in the ledger until the release
        is used or expires. Raises ReleaseRefused (the trustless exit remains open)."""
        if amount <= 0:
            raise ReleaseRefused("a release must be for a positive amount", "bad_amount")
        address = checksum_address(address)
        if self.store.account_of(address) is None:
            raise ReleaseRefused(
                f"{address} is not bound to an account: bind it first (get an API key by signing with it on the "
                "dashboard, or `promptex buyer signup --wallet` then `promptex buyer bind`)",
                "not_bound",
            )
        # Its funds' account: a later wallet's are its own, never debited for its account's usage.
        account = self.store.funds_account(address, self.clock())
        outstanding = self.store.active_releases(address)
        if outstanding:
            raise ReleaseRefused(
                f"a release for {address} is outstanding until {utc_text(outstanding[0].expiry)} (chain time): "
                "use it or let it expire first",
                "release_outstanding",
                expiry=outstanding[0].expiry,
            )
        on_chain = self.chain.balance_of(address, asset)
        owed = self.store.unsettled(account, asset)
        locked = self.store.locked(account, asset)
        free = on_chain - owed - locked
        if amount > free:
            raise ReleaseRefused(
                f"only {money(max(0, free), asset, rounding='down')} of {address} is free of unsettled usage "
                f"(vault balance {money(on_chain, asset, rounding='down')}, unsettled {money(owed, asset)}, "
                f"locked {money(locked, asset)}); the rest leaves by the trustless exit: `promptex wallet withdraw` "
                "(the dashboard's Request withdrawal)",
                "unsettled_usage",
                free_units=str(max(0, free)),
                balance_units=str(on_chain),
                unsettled_units=str(owed),
                locked_units=str(locked),
                asked_units=str(amount),
            )
        nonce = self.chain.release_nonce(address)
        expiry = self.chain.now() + self.release_expiry
        signature = self.chain.sign_release(address, asset, amount, nonce, expiry)
        release = self.store.add_release(
            account, address, asset, amount, nonce, expiry, "0x" + signature.hex(), self.clock()
        )
        log.info("release signed: %s may take %d %s (nonce %d) until %d", address, amount, asset, nonce, expiry)
        return release

    def _sweep_releases(self) -> None:
        releases = self.store.active_releases()
        if not releases:
            return
        now = self.chain.now()
        for r in releases:
            if self.chain.release_nonce(r.address) > r.nonce:
                self.store.close_release(r, USED, self.clock())
            elif now > r.expiry:
                self.store.close_release(r, EXPIRED, self.clock())


def serve(coordinator: Coordinator, poll_seconds: float, stop: threading.Event | None = None) -> None:
    """Run passes until SIGTERM/SIGINT (or `stop`), logging each one's progress."""
    stop = stop or threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after this pass", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    log.info("coordinator %s started (poll every %.1f s)", coordinator.holder, poll_seconds)
    while not stop.is_set():
        try:
            report = coordinator.run_once()
            moved = report.quarantined or report.requeued or report.refunded or report.taken_back
            if report.confirmed or report.failed or moved:
                log.info(
                    "pass: settled %s, failed %s, quarantined %d, requeued %d, refunded %d, refunds taken back %d, "
                    "%d records waiting for a failure to be final",
                    report.confirmed, report.failed, report.quarantined, report.requeued, report.refunded,
                    report.taken_back, len(report.held),
                )  # fmt: skip
        except Exception:  # an RPC or database hiccup: the state machine resumes next pass
            log.exception("coordinator pass failed")
        stop.wait(poll_seconds)
    coordinator.store.release_lease(coordinator.holder)
    log.info("coordinator stopped")


__all__ = ["Coordinator", "PassReport", "ReleaseRefused", "TxPending", "serve"]
