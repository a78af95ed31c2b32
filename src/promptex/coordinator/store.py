"""The coordinator's persisted state, in the ledger's database (migration 0003): batches,
the transactions it signed, pending spend caps and the leader lease; and, through the
ledger's functions in the same transactions, the usage records it batches and the releases
it signs. Each method is one transaction, so every state change is all or nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Select, Table, insert, or_, select, text, update
from sqlalchemy.exc import OperationalError

from promptex.chain.sender import Receipt, SignedTx
from promptex.chain.txlog import SENT, SUCCEEDED, SignedTxStore, StoredTx, TxPending
from promptex.coordinator.plan import Entry, Payload
from promptex.coordinator.schema import (
    coordinator_lease,
    coordinator_txs,
    door_nonces,
    session_key_submissions,
    settlement_batches,
    spend_cap_submissions,
)
from promptex.ledger import accounts as _accounts
from promptex.ledger import lanes as _lanes
from promptex.ledger import lots as _lots
from promptex.ledger import releases as _releases
from promptex.ledger import sessions as _sessions
from promptex.ledger import usage as _usage
from promptex.ledger import wallets as _wallets
from promptex.ledger.db import READ_ONLY
from promptex.ledger.errors import InsufficientFunds
from promptex.ledger.journal import insert_ignore
from promptex.ledger.lanes import Lane
from promptex.ledger.lots import LotState
from promptex.ledger.metadata import REASON
from promptex.ledger.releases import Release
from promptex.ledger.sessions import SessionKey
from promptex.ledger.usage import PENDING, StoredUsage
from promptex.protocol.merkle import LEAF_V1, LEAF_VERSION
from promptex.protocol.vault import UNLIMITED

PLANNED, SUBMITTED, CONFIRMED, FAILED = "planned", "submitted", "confirmed", "failed"
REJECTED, REGISTERED = "rejected", "registered"
LEASE = "coordinator"
LEASE_LOCK_TIMEOUT = "2s"  # how long taking the lease waits for a leader's fenced transaction
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout runs out
# PostgreSQL's clock, in unix seconds: the server's now (not its transaction's start).
DATABASE_NOW = text("SELECT CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT)")
# The batches a landed failed batch takes its records back from: another of its epoch.
_AT_EPOCH = (PLANNED, SUBMITTED, CONFIRMED)


@dataclass(frozen=True)
class Batch:
    id: int
    asset: str
    epoch: int
    status: str
    usage_root: bytes
    payload: Payload
    records: int
    tx_id: int | None
    error: str | None
    leaf_version: int = LEAF_V1  # of the leaves under usage_root


@dataclass
class Reattached:
    """What `reattach` did with a landed failed batch's records beyond putting them back."""

    taken_back: list[str] = field(default_factory=list)  # refunded meanwhile: the refund taken back
    left: list[str] = field(default_factory=list)  # in a batch of another epoch: the chain debited them twice


@dataclass(frozen=True)
class CapSubmission:
    id: int
    address: str
    asset: str
    per_epoch: int
    total: int
    expiry: int
    nonce: int
    signature: str
    status: str
    tx_id: int | None


@dataclass(frozen=True)
class SessionKeySubmission:
    """A wallet-signed SessionKey waiting to be relayed (signed mode, issue 23)."""

    id: int
    address: str
    asset: str
    key: str
    lanes: int
    maximum: int
    expiry: int
    nonce: int
    signature: str
    status: str
    tx_id: int | None


def _batch(row: Any) -> Batch:
    m = row._mapping
    return Batch(
        m["id"],
        m["asset"],
        m["epoch"],
        m["status"],
        bytes.fromhex(m["usage_root"][2:]),
        Payload.from_json(m["payload"]),
        m["records"],
        m["tx_id"],
        m["error"],
        m["leaf_version"],
    )


def _let_go(
    conn: Connection, batch_id: int, statuses: Sequence[str], reason: str, now: int, epoch: int | None = None
) -> bool:
    """Fail the batch if it is in one of `statuses` (and of `epoch`, if given): its records
    back to pending, their request ids kept in its payload (`Payload.members`), so that if
    its settle lands after all (a reorg, then the network re-includes it) exactly they go
    back to it (`reattach`). Whether it was failed here."""
    b = settlement_batches.c
    where = [b.id == batch_id, b.status.in_(tuple(statuses))] + ([] if epoch is None else [b.epoch == epoch])
    row = conn.execute(select(b.payload).where(*where)).first()
    if row is None:
        return False
    payload = Payload.from_json(row.payload)
    payload.members = _usage.batch_member_ids(conn, batch_id)
    done = conn.execute(
        update(settlement_batches)
        .where(*where)
        .values(status=FAILED, closed_at=now, error=reason[:REASON], payload=payload.to_json())
    ).rowcount
    if done:
        _usage.return_to_pending(conn, batch_id)
    return bool(done)


# A failed batch failed after its records were settled; the margin covers the clocks of
# the gateway that settled them and the coordinator that closed the batch.
_CLOCK_MARGIN = 3_600


def failed_batches_naming(conn: Connection, records: Sequence[StoredUsage]) -> dict[str, Batch]:
    """For each pending or quarantined record of `records`: the newest failed batch whose
    settle was sent with it among its kept members (`Payload.members`): what it may wait
    for to be final before it is settled under a later epoch, or refunded. Read from the
    failed batches of their assets closed since the oldest of them was settled."""
    waiting = {r.request_id: r for r in records if r.status in (_usage.PENDING, _usage.QUARANTINED)}
    if not waiting:
        return {}
    b = settlement_batches.c
    since = min(r.settled_at for r in waiting.values()) - _CLOCK_MARGIN
    rows = conn.execute(
        select(settlement_batches)
        .where(
            b.asset.in_(sorted({r.asset for r in waiting.values()})),
            b.status == FAILED,
            b.tx_id.is_not(None),
            b.closed_at >= since,
        )
        .order_by(b.id)
    ).all()
    found: dict[str, Batch] = {}
    for row in rows:
        batch = _batch(row)
        for request_id in batch.payload.members:
            if request_id in waiting:
                found[request_id] = batch  # the newest wins
    return found


def _lease_now(conn: Connection, clock: Callable[[], int] | None) -> int:
    """The lease's clock, read in `conn`'s transaction: ONE clock for every coordinator on
    the database, whose expiries each writes and the others compare (lbreak's item 3: with
    each process's own, a killed coordinator whose clock ran a day ahead left an expiry no
    other reached for a day, and a standby whose clock ran ahead took the lease right after
    the leader renewed it). PostgreSQL's own (`clock_timestamp()`: the server's, now, not
    the transaction's start); SQLite's database is one host's, so that host's clock.
    `clock` (tests): a clock standing for the database's, shared by the coordinators."""
    if clock is not None:
        return clock()
    if conn.dialect.name == "postgresql":
        return int(conn.execute(DATABASE_NOW).scalar_one())
    return int(time.time())


def _locked_lease(conn: Connection) -> Any:
    """The lease row (holder, expires_at), locked for the transaction (FOR UPDATE on
    PostgreSQL; SQLite's write transactions hold the database's lock from BEGIN IMMEDIATE):
    read before the lease's clock, so a wait for a leader's transaction comes first."""
    lease = coordinator_lease.c
    return conn.execute(select(lease.holder, lease.expires_at).where(lease.name == LEASE).with_for_update()).first()


def _hold_lease(conn: Connection, holder: str, clock: Callable[[], int] | None, ttl: int) -> None:
    """The fence (`CoordinatorStore.fenced`), inside the caller's transaction."""
    lease = coordinator_lease.c
    row = _locked_lease(conn)
    now = _lease_now(conn, clock)
    if row is None or row.holder != holder or row.expires_at < now:
        whose = "no one's" if row is None else f"{row.holder}'s" if row.holder != holder else "expired"
        raise LeaseLost(f"the lease of {holder} ran out during the pass (now {whose}): nothing more is written")
    if row.expires_at - now < ttl / 2:
        conn.execute(update(coordinator_lease).where(lease.name == LEASE).values(expires_at=now + ttl))


class ReleaseRefused(ValueError):
    """The amount is not free of unsettled usage: the user must take the trustless exit.
    `code` and `fields` (exact smallest units) are for machines; the message for people."""

    def __init__(self, message: str, code: str = "release_refused", **fields: Any) -> None:
        super().__init__(message)
        self.code, self.fields = code, fields


class LeaseLost(TxPending):
    """The pass outlived its lease (a slow RPC, a receipt waited for, a stopped process):
    another coordinator may have run a pass since, past the key rule's check, so this one
    writes, signs and sends nothing more."""


class CoordinatorStore(SignedTxStore):
    txs_table = coordinator_txs

    def __init__(self, engine: Engine, lease_clock: Callable[[], int] | None = None) -> None:
        super().__init__(engine)
        # The lease's times: None, the database's clock (`_lease_now`); tests give a shared one.
        self.lease_clock = lease_clock
        self._fence = threading.local()  # this thread's pass: (holder, ttl), or None

    @contextmanager
    def fenced(self, holder: str, ttl: int) -> Iterator[None]:
        """Within: every transaction of this thread first reads the lease row, locked, and
        raises LeaseLost (rolled back: nothing written) unless `holder` has held it without
        a break (ours, not expired; renewed here once half of `ttl` is spent), so a pass
        that outlived its lease (a long wait, a stopped process) writes nothing once another
        may have taken it. Locked: on PostgreSQL the row FOR UPDATE, on SQLite every
        transaction holds the write lock from its BEGIN IMMEDIATE, so no one takes the lease
        between the check and the commit: a check-then-act that a stop between the two
        defeats. Other threads (the door's) are not fenced."""
        self._fence.lease = (holder, ttl)
        try:
            yield
        finally:
            self._fence.lease = None

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            lease = getattr(self._fence, "lease", None)
            if lease is not None:
                holder, ttl = lease
                _hold_lease(conn, holder, self.lease_clock, ttl)
            yield conn

    # ─── Lease ───────────────────────────────────────────────────────────────

    def _lease_row(self) -> tuple[Any, int]:
        """The lease's (holder, expires_at) as it is now, read without a lock (None before
        any), and the lease's clock (`_lease_now`) read in the same transaction."""
        lease = coordinator_lease.c
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
            row = conn.execute(select(lease.holder, lease.expires_at).where(lease.name == LEASE)).first()
            return row, _lease_now(conn, self.lease_clock)

    def acquire_lease(self, holder: str, ttl: int) -> bool:
        """Take or renew the leader lease: free, expired, or already ours. False, too, when
        the row stays locked past LEASE_LOCK_TIMEOUT (PostgreSQL): a leader inside a fenced
        transaction holds it, and one stopped there (SIGSTOP) would hold it for good.
        Ours with more than half of `ttl` left: True without a write (or a wait for that row).
        Its times are the lease's clock (`_lease_now`: the database's), never the caller's."""
        row, now = self._lease_row()
        if row is not None and row.holder == holder and row.expires_at - now > ttl / 2:
            return True  # no one may take it before it expires
        try:
            with self.engine.begin() as conn:  # never fenced: it is how a lease is taken
                if conn.dialect.name == "postgresql":
                    conn.execute(text(f"SET LOCAL lock_timeout = '{LEASE_LOCK_TIMEOUT}'"))
                _locked_lease(conn)  # the wait for a leader's fenced transaction, before the clock is read
                now = _lease_now(conn, self.lease_clock)
                insert_ignore(conn, coordinator_lease, {"name": LEASE, "holder": holder, "expires_at": now + ttl})
                taken = conn.execute(
                    update(coordinator_lease)
                    .where(
                        coordinator_lease.c.name == LEASE,
                        or_(coordinator_lease.c.holder == holder, coordinator_lease.c.expires_at < now),
                    )
                    .values(holder=holder, expires_at=now + ttl)
                ).rowcount
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            return False
        return bool(taken == 1)

    def holds_lease(self, holder: str) -> bool:
        """Whether `holder` holds the lease now (ours, not expired): a read that neither
        takes nor renews it. Only passes take and renew it (the door asks this)."""
        row, now = self._lease_row()
        return row is not None and row.holder == holder and row.expires_at >= now

    def hold_lease(self, holder: str, ttl: int) -> bool:
        """Renew the lease only if `holder` has held it without a break (ours, not yet
        expired): False once it ran out, whether or not another coordinator took it since."""
        with self.engine.begin() as conn:  # a lease operation: never fenced
            lease = coordinator_lease.c
            _locked_lease(conn)
            now = _lease_now(conn, self.lease_clock)
            held = conn.execute(
                update(coordinator_lease)
                .where(lease.name == LEASE, lease.holder == holder, lease.expires_at >= now)
                .values(expires_at=now + ttl)
            ).rowcount
        return bool(held == 1)

    def release_lease(self, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(coordinator_lease)
                .where(coordinator_lease.c.name == LEASE, coordinator_lease.c.holder == holder)
                .values(expires_at=0)
            )

    # ─── Usage records ───────────────────────────────────────────────────────

    def pending_assets(self) -> list[str]:
        with self._tx() as conn:
            return _usage.pending_assets(conn)

    def pending_records(self, asset: str, limit: int) -> list[StoredUsage]:
        with self._tx() as conn:
            return _usage.pending_records(conn, asset, limit)

    def pending_signed_records(self, asset: str, limit: int) -> list[StoredUsage]:
        with self._tx() as conn:
            return _usage.pending_records(conn, asset, limit, _usage.SIGNED)

    def session_lanes(self, account: int, asset: str) -> tuple[SessionKey | None, list[Lane]]:
        """The account's current session in `asset` and its lanes, as the ledger has them."""
        with self._tx() as conn:
            found = _sessions.current(conn, account, asset)
            if found is None:
                return None, []
            return found, _lanes.lanes(conn, account, asset, found.session, found.lanes)

    def set_lane_settled(
        self, account: int, asset: str, session: int, lane: int, settled: int, now: int, *, lower: bool = False
    ) -> None:
        """What the chain has settled on the lane (read from the vault once a batch landed):
        never lowered unless `lower` (a reorg took a settle back: `ledger.lanes.set_settled`)."""
        with self._tx() as conn:
            _lanes.set_settled(conn, account, asset, session, lane, settled, now, lower=lower)

    def account_of(self, address: str) -> int | None:
        with self._tx() as conn:
            return _wallets.bound_account(conn, address)

    def funds_account(self, address: str, now: int) -> int:
        """The account a bound address's vault funds belong to: its account if it is the
        wallet settlements debit, else its own unclaimed account (`wallets.account_for_address`)."""
        with self._tx() as conn:
            return _wallets.account_for_address(conn, address, now)

    def wallet_of(self, account: int) -> str | None:
        """The wallet debited for an account: its first bound (then lowest) address."""
        with self._tx() as conn:
            return _wallets.first_bound(conn, account)

    def quarantine(self, reasons: Mapping[str, str], now: int) -> int:
        """Set pending records aside with their reason (they stay visible; nothing is deleted)."""
        with self._tx() as conn:
            return _usage.quarantine(conn, {r: reason[:REASON] for r, reason in reasons.items()}, now)

    def quarantined(self, asset: str | None = None) -> list[StoredUsage]:
        with self._tx() as conn:
            return _usage.quarantined(conn, asset)

    def requeue(self, request_id: str, chain_lot_id: int | None = None) -> bool:
        """A quarantined record whose cause is fixed goes back to pending (see `ledger.usage.requeue`)."""
        with self._tx() as conn:
            return _usage.requeue(conn, request_id, chain_lot_id=chain_lot_id)

    def refund(self, request_id: str, reason: str, now: int) -> bool:
        """A quarantined record the chain can never settle is refunded to its payer (`ledger.usage.refund`)."""
        with self._tx() as conn:
            return _usage.refund(conn, request_id, reason, now=now)

    def lot_states(self) -> dict[int, LotState]:
        """Every seller lot's state (`ledger.lots`), by the gateway's lot id."""
        with self._tx() as conn:
            return _lots.all_states(conn)

    def record(self, request_id: str) -> StoredUsage | None:
        with self._tx() as conn:
            return _usage.get_usage(conn, request_id)

    def batch_records(self, batch_id: int) -> list[StoredUsage]:
        with self._tx() as conn:
            return _usage.batch_records(conn, batch_id)

    # ─── Batches ─────────────────────────────────────────────────────────────

    def open_batch(self, asset: str) -> Batch | None:
        """The asset's batch still in flight (planned or submitted), if any."""
        with self._tx() as conn:
            row = conn.execute(
                select(settlement_batches)
                .where(settlement_batches.c.asset == asset, settlement_batches.c.status.in_((PLANNED, SUBMITTED)))
                .order_by(settlement_batches.c.id)
                .limit(1)
            ).first()
        return None if row is None else _batch(row)

    def batch(self, batch_id: int) -> Batch:
        with self._tx() as conn:
            return _batch(conn.execute(select(settlement_batches).where(settlement_batches.c.id == batch_id)).one())

    def batches_at(self, asset: str, epoch: int) -> list[Batch]:
        """The asset's batches of `epoch`, whatever their status."""
        b = settlement_batches.c
        with self._tx() as conn:
            rows = conn.execute(select(settlement_batches).where(b.asset == asset, b.epoch == epoch).order_by(b.id))
            return [_batch(row) for row in rows.all()]

    def batch_of_tx(self, tx_id: int) -> Batch | None:
        with self._tx() as conn:
            row = conn.execute(select(settlement_batches).where(settlement_batches.c.tx_id == tx_id)).first()
        return None if row is None else _batch(row)

    def batches(self, asset: str | None = None, status: str | None = None) -> list[Batch]:
        stmt = select(settlement_batches).order_by(settlement_batches.c.id)
        if asset is not None:
            stmt = stmt.where(settlement_batches.c.asset == asset)
        if status is not None:
            stmt = stmt.where(settlement_batches.c.status == status)
        with self._tx() as conn:
            return [_batch(row) for row in conn.execute(stmt).all()]

    def plan(self, asset: str, epoch: int, entries: Sequence[Entry], payload: Payload, root: bytes, now: int) -> Batch:
        """Store the batch and assign its records to it, in one transaction."""
        with self._tx() as conn:
            batch_id: int = conn.execute(
                insert(settlement_batches)
                .values(
                    asset=asset,
                    epoch=epoch,
                    status=PLANNED,
                    usage_root="0x" + root.hex(),
                    leaf_version=LEAF_VERSION,  # `plan.usage_tree` made the root of such leaves
                    payload=payload.to_json(),
                    total=payload.total,
                    records=len(entries),
                    created_at=now,
                )
                .returning(settlement_batches.c.id)
            ).scalar_one()
            for e in entries:
                assigned = _usage.assign_to_batch(
                    conn,
                    e.request_id,
                    batch_id=batch_id,
                    epoch=epoch,
                    address=e.address,
                    seller_share=e.seller_share,
                    fee=e.fee,
                )
                if not assigned:
                    raise RuntimeError(f"usage record {e.request_id!r} is no longer pending")  # rolls back the plan
        return self.batch(int(batch_id))

    def submit(self, batch_id: int, signed: SignedTx, sender: str, now: int) -> int:
        """Store the signed settle transaction and mark the batch submitted: before broadcast."""
        with self._tx() as conn:
            tx_id = self._store_tx(conn, "settle", signed, sender, now)
            conn.execute(
                update(settlement_batches)
                .where(settlement_batches.c.id == batch_id, settlement_batches.c.status == PLANNED)
                .values(status=SUBMITTED, tx_id=tx_id)
            )
        return tx_id

    def store_expire(self, signed: SignedTx, sender: str, now: int) -> int:
        """Store a signed `CreditEscrow.expire` (no batch or spend cap owns it) before it is broadcast."""
        with self._tx() as conn:
            return self._store_tx(conn, "expire", signed, sender, now)

    def store_prune(self, signed: SignedTx, sender: str, now: int) -> int:
        """Store a signed `CreditEscrow.prune` (no batch owns it) before it is broadcast."""
        with self._tx() as conn:
            return self._store_tx(conn, "prune", signed, sender, now)

    def confirm(self, batch: Batch, now: int) -> None:
        """The batch is on chain (its settlement drew its lots in the same call): close it."""
        with self._tx() as conn:
            conn.execute(
                update(settlement_batches)
                .where(settlement_batches.c.id == batch.id, settlement_batches.c.status.in_((PLANNED, SUBMITTED)))
                .values(status=CONFIRMED, closed_at=now)
            )

    def confirmed_from(self, asset: str, epoch: int) -> list[Batch]:
        """The asset's confirmed batches of `epoch` or later (those a reorg may have orphaned)."""
        with self._tx() as conn:
            rows = conn.execute(
                select(settlement_batches)
                .where(
                    settlement_batches.c.asset == asset,
                    settlement_batches.c.status == CONFIRMED,
                    settlement_batches.c.epoch >= epoch,
                )
                .order_by(settlement_batches.c.id)
            ).all()
        return [_batch(row) for row in rows]

    def reopen(self, batch: Batch) -> None:
        """A confirmed batch the chain no longer holds (a reorg orphaned its settlement):
        submitted again with its transaction unresolved, so that the next pass rebroadcasts
        the same signed bytes, or fails the batch (its records back to pending) when that
        transaction can no longer land."""
        with self._tx() as conn:
            done = conn.execute(
                update(settlement_batches)
                .where(settlement_batches.c.id == batch.id, settlement_batches.c.status == CONFIRMED)
                .values(status=SUBMITTED, closed_at=None)
            ).rowcount
            if done and batch.tx_id is not None:
                self._reopen_tx(conn, batch.tx_id)

    def reopen_tx(self, tx: StoredTx) -> str:
        """A transaction whose receipt a reorg orphaned, unresolved again with what it
        decided: a confirmed settlement is submitted again, a registered (or refused) spend
        cap submitted again; a failed batch stays failed (its records are pending or in a
        later batch already). Returns what it reopened, for the log."""
        batches, caps = settlement_batches, spend_cap_submissions
        with self._tx() as conn:
            self._reopen_tx(conn, tx.id)
            reopened = conn.execute(
                update(batches)
                .where(batches.c.tx_id == tx.id, batches.c.status == CONFIRMED)
                .values(status=SUBMITTED, closed_at=None)
            ).rowcount
            if reopened:
                return "its confirmed settlement"
            other = conn.execute(select(batches.c.id, batches.c.status).where(batches.c.tx_id == tx.id)).first()
            if other is not None:
                left = " (left failed)" if other.status == FAILED else ""
                return f"the settlement of {other.status} batch {other.id}{left}"
            capped = conn.execute(
                update(caps)
                .where(caps.c.tx_id == tx.id, caps.c.status.in_((REGISTERED, REJECTED)))
                .values(status=SUBMITTED, error=None)
            ).rowcount
            if capped:
                return "its spend cap"
            keys = session_key_submissions
            relayed = conn.execute(
                update(keys)
                .where(keys.c.tx_id == tx.id, keys.c.status.in_((REGISTERED, REJECTED)))
                .values(status=SUBMITTED, error=None)
            ).rowcount
            return "its session key" if relayed else "it"

    def fail(self, batch: Batch, reason: str, now: int) -> None:
        """The batch can never land: close it and put its records back to pending."""
        with self._tx() as conn:
            _let_go(conn, batch.id, (PLANNED, SUBMITTED), reason, now)

    def let_go_confirmed(self, batch: Batch, reason: str, now: int) -> bool:
        """A confirmed batch the chain no longer holds (a reorg) whose settle must never land
        again (it debits records another batch holds): failed, the records it holds back to
        pending. Its kept members (`Payload.members`, from when it was first let go) stay as
        they are, all of them: should it land after all, `reattach` finds and proves them.
        Whether it was confirmed (and is failed now)."""
        b = settlement_batches.c
        with self._tx() as conn:
            done = conn.execute(
                update(settlement_batches)
                .where(b.id == batch.id, b.status == CONFIRMED)
                .values(status=FAILED, closed_at=now, error=reason[:REASON])
            ).rowcount
            if done:
                _usage.return_to_pending(conn, batch.id)
        return bool(done)

    def unfinal_failures(self, asset: str, final_nonce: int, sender: str) -> list[Batch]:
        """The asset's failed batches whose settle could still land after a reorg: signed at
        a nonce not yet final (`SignedTxStore.final_nonce`), whatever became of it since
        (reverted, dropped, its nonce given to a no-op). A batch refused before signing is
        not among them: nothing of it was ever sent. Only `sender`'s: `final_nonce` is its
        nonce, never another key's. (Read by the (asset, status) index.)"""
        b, t = settlement_batches.c, coordinator_txs.c
        stmt = (
            select(settlement_batches)
            .join(coordinator_txs, t.id == b.tx_id)
            .where(b.asset == asset, b.status == FAILED, t.sender == sender, t.nonce >= final_nonce)
            .order_by(b.id)
        )
        with self._tx() as conn:
            return [_batch(row) for row in conn.execute(stmt).all()]

    def failure_senders(self) -> list[str]:
        """The keys that signed the settle of some failed batch (by the batches' (asset,
        status) index: failed batches are few; one refused before signing has no settle)."""
        b, t = settlement_batches.c, coordinator_txs.c
        stmt = (
            select(t.sender)
            .select_from(settlement_batches)
            .join(coordinator_txs, t.id == b.tx_id)
            .where(b.status == FAILED)
            .distinct()
        )
        with self._tx() as conn:
            return sorted(str(r[0]) for r in conn.execute(stmt).all())

    def failed_settles(self, sender: str, final_nonce: int) -> list[tuple[Batch, StoredTx]]:
        """`sender`'s failed batches whose settle may be on chain unseen, with that settle,
        whatever the log says of it (open, dropped, reverted, even succeeded): signed at a
        nonce not yet final (`SignedTxStore.final_nonce`), or still open at any nonce. In
        batch order. (Read by the (asset, status) index: failed batches are few.)"""
        b, t = settlement_batches.c, coordinator_txs.c
        stmt = (
            select(settlement_batches, coordinator_txs.c.id.label("settle_id"))
            .join(coordinator_txs, t.id == b.tx_id)
            .where(b.status == FAILED, t.sender == sender, or_(t.nonce >= final_nonce, t.status == SENT))
            .order_by(b.id)
        )
        with self._tx() as conn:
            rows = conn.execute(stmt).all()
        return [(_batch(row), self.tx(int(row.settle_id))) for row in rows]

    def failed_batches_naming(self, records: Sequence[StoredUsage]) -> dict[str, Batch]:
        """See `failed_batches_naming`."""
        with self._tx() as conn:
            return failed_batches_naming(conn, records)

    def reattach_candidates(self, batch: Batch) -> list[StoredUsage]:
        """Where the records of `batch` (failed, its records let go) are now if it landed
        after all: its asset's oldest records of its mode pending or in another batch of
        its epoch (planned, submitted, or confirmed on a branch a reorg orphaned: none can
        land, the chain holds `batch` at that epoch), as many as `batch` held. The caller
        proves the membership by the root."""
        b = settlement_batches.c
        open_at_epoch = select(b.id).where(
            b.asset == batch.asset, b.epoch == batch.epoch, b.status.in_(_AT_EPOCH), b.id != batch.id
        )
        mode = _usage.SIGNED if batch.payload.signed else _usage.CAPPED
        with self._tx() as conn:
            if batch.payload.members:  # kept when it failed: exactly its records, wherever they are
                return _usage.records_named(conn, batch.payload.members)
            # Failed before its members were kept: the oldest, as `plan` took them (a record
            # settled later in the same second, or requeued meanwhile, can be taken instead).
            return _usage.oldest_unconfirmed(conn, batch.asset, mode, open_at_epoch, batch.records)

    def reattach(
        self,
        batch: Batch,
        entries: Sequence[Entry],
        receipt: Receipt,
        now: int,
        *,
        orphaned: Collection[int] = (),
        noops: Sequence[tuple[int, SignedTx]] = (),
        sender: str = "",
    ) -> Reattached:
        """The failed `batch` landed after all (its settle, re-included by the network, won
        its nonce): its records (`entries`, proven by its root) go back to it from pending,
        from quarantine, or from the batch of the same epoch holding them (failed: it can no
        longer land; its own transaction, if a reorg orphaned it, is then never re-sent),
        its transaction is succeeded in `receipt`'s block, the batch confirmed. A record refunded
        meanwhile goes back too, its refund taken back (`ledger.usage.take_back_refund`:
        the chain debited it; a debt for what the payer's balance lacks). One transaction,
        so a crash books all of it or none, and a second call finds nothing refunded.
        `orphaned`: batches of other epochs holding some of the records (settled again
        after the failure), planned, submitted or confirmed in the books but not on chain
        (the caller checked): let go as well (failed, their other records back to pending),
        their settle's nonce filled with a no-op so that the chain debits nothing twice:
        `noops` (transaction id, the no-op from `sender`) for those not yet re-sent, replaced
        here in the same transaction; the others the orphaned-transaction check replaces."""
        b = settlement_batches.c
        done = Reattached()
        with self._tx() as conn:
            for holder in _usage.batches_holding(conn, [e.request_id for e in entries]):
                if holder in orphaned:
                    why = f"its records were debited on chain by batch {batch.id} (epoch {batch.epoch}) after a reorg"
                    _let_go(conn, holder, _AT_EPOCH, why, now)
                else:
                    _let_go(conn, holder, _AT_EPOCH, f"epoch {batch.epoch} went to batch {batch.id}", now, batch.epoch)
            for tx_id, noop in noops:
                self._replace_tx(conn, tx_id, noop, sender, now)
            for e in entries:
                if _usage.assign_to_batch(
                    conn, e.request_id, batch_id=batch.id, epoch=batch.epoch, address=e.address,
                    seller_share=e.seller_share, fee=e.fee, quarantined=True,
                ):  # fmt: skip
                    continue
                if _usage.take_back_refund(
                    conn, e.request_id, batch_id=batch.id, epoch=batch.epoch, address=e.address,
                    seller_share=e.seller_share, fee=e.fee, now=now,
                ):  # fmt: skip
                    done.taken_back.append(e.request_id)
                else:
                    done.left.append(e.request_id)
            conn.execute(
                update(settlement_batches)
                .where(b.id == batch.id, b.status == FAILED)
                .values(status=CONFIRMED, closed_at=now, error=None)
            )
            t = self.txs_table.c
            conn.execute(
                update(self.txs_table)
                .where(t.id == batch.tx_id)
                .values(
                    status=SUCCEEDED, block_number=receipt.block_number, block_hash=receipt.block_hash, closed_at=now
                )
            )
        return done

    # ─── Spend caps ──────────────────────────────────────────────────────────

    def add_spend_cap(
        self, address: str, asset: str, per_epoch: int, total: int, expiry: int, nonce: int, signature: str, now: int
    ) -> int:
        """Queue a user-signed SpendCap for registration (idempotent per address, asset, nonce)."""
        if min(per_epoch, total) <= 0 or max(per_epoch, total) > UNLIMITED:
            raise ValueError("a spend cap's limits are 1 .. 2**256 - 1")
        signed = {"per_epoch": per_epoch, "total": total}
        return self._add_relayed(spend_cap_submissions, address, asset, signed, expiry, nonce, signature, now)

    def add_session_key(
        self,
        address: str,
        asset: str,
        key: str,
        lanes: int,
        maximum: int,
        expiry: int,
        nonce: int,
        signature: str,
        now: int,
    ) -> int:
        """Queue a wallet-signed SessionKey for the vault (idempotent per address, asset, nonce)."""
        if lanes < 1 or maximum < 0:
            raise ValueError("a session key has at least one lane and no negative maximum")
        signed = {"key": key, "lanes": lanes, "maximum": maximum}
        return self._add_relayed(session_key_submissions, address, asset, signed, expiry, nonce, signature, now)

    def session_keys(self, statuses: Sequence[str] = (PENDING, SUBMITTED)) -> list[SessionKeySubmission]:
        keys = session_key_submissions
        with self._tx() as conn:
            rows = conn.execute(select(keys).where(keys.c.status.in_(tuple(statuses))).order_by(keys.c.id)).all()
        return [_session_key_row(r) for r in rows]

    def session_key_submission(self, submission_id: int) -> SessionKeySubmission:
        keys = session_key_submissions
        with self._tx() as conn:
            return _session_key_row(conn.execute(select(keys).where(keys.c.id == submission_id)).one())

    def submit_session_key(self, submission_id: int, signed: SignedTx, sender: str, now: int) -> int:
        return self._submit_relayed(session_key_submissions, "session_key", submission_id, signed, sender, now)

    def close_session_key(self, submission_id: int, status: str, error: str | None = None) -> None:
        self._close_relayed(session_key_submissions, submission_id, status, error)

    def spend_caps(self, statuses: Sequence[str] = (PENDING, SUBMITTED)) -> list[CapSubmission]:
        with self._tx() as conn:
            rows = conn.execute(
                select(spend_cap_submissions)
                .where(spend_cap_submissions.c.status.in_(tuple(statuses)))
                .order_by(spend_cap_submissions.c.id)
            ).all()
        return [_cap_row(r) for r in rows]

    def spend_cap_submission(self, cap_id: int) -> CapSubmission:
        caps = spend_cap_submissions
        with self._tx() as conn:
            return _cap_row(conn.execute(select(caps).where(caps.c.id == cap_id)).one())

    def submit_spend_cap(self, cap_id: int, signed: SignedTx, sender: str, now: int) -> int:
        return self._submit_relayed(spend_cap_submissions, "spend_cap", cap_id, signed, sender, now)

    def close_spend_cap(self, cap_id: int, status: str, error: str | None = None) -> None:
        self._close_relayed(spend_cap_submissions, cap_id, status, error)

    def _add_relayed(
        self,
        table: Table,
        address: str,
        asset: str,
        signed: Mapping[str, Any],
        expiry: int,
        nonce: int,
        signature: str,
        now: int,
    ) -> int:
        """Queue a wallet-signed message (its own fields: `signed`) for the vault; the id of
        the submission, the first one's if this (address, asset, nonce) was queued before —
        unless the relay rejected that one (the vault refused it: its nonce unused on chain),
        which this one replaces. Before (claims s16), a rejected submission kept its nonce for
        good: every message the wallet signed again with it (the vault's next nonce) was
        answered "queued" and never relayed."""
        values = {"address": address, "asset": asset, **signed, "expiry": expiry, "nonce": nonce,
                  "signature": signature, "status": PENDING, "created_at": now}  # fmt: skip
        same = (table.c.address == address, table.c.asset == asset, table.c.nonce == nonce)
        with self._tx() as conn:
            insert_ignore(conn, table, values)
            conn.execute(
                update(table).where(*same, table.c.status == REJECTED).values(**values, tx_id=None, error=None)
            )
            row: int = conn.execute(select(table.c.id).where(*same)).scalar_one()
        return int(row)

    def _submit_relayed(self, table: Table, purpose: str, row_id: int, signed: SignedTx, sender: str, now: int) -> int:
        """A relayed message's transaction, stored (before its broadcast) with the message it sends."""
        with self._tx() as conn:
            tx_id = self._store_tx(conn, purpose, signed, sender, now)
            conn.execute(update(table).where(table.c.id == row_id).values(status=SUBMITTED, tx_id=tx_id))
        return tx_id

    def _close_relayed(self, table: Table, row_id: int, status: str, error: str | None) -> None:
        with self._tx() as conn:
            conn.execute(
                update(table)
                .where(table.c.id == row_id)
                .values(status=status, error=None if error is None else error[:REASON])
            )

    # ─── What the chain has seen, as of a block (for `promptex reconcile`) ────

    @staticmethod
    def confirmed_by(block: int | None) -> Select[Any]:
        """Ids of the batches confirmed in a block at or before `block` (None: any)."""
        stmt = (
            select(settlement_batches.c.id)
            .join(coordinator_txs, coordinator_txs.c.id == settlement_batches.c.tx_id)
            .where(settlement_batches.c.status == CONFIRMED)
        )
        return stmt if block is None else stmt.where(coordinator_txs.c.block_number <= block)

    def settled_batches(self, block: int | None) -> list[tuple[Batch, str]]:
        """The batches confirmed at or before `block`, with their transaction's hash."""
        with self._tx() as conn:
            rows = conn.execute(
                select(settlement_batches, coordinator_txs.c.tx_hash)
                .join(coordinator_txs, coordinator_txs.c.id == settlement_batches.c.tx_id)
                .where(settlement_batches.c.id.in_(self.confirmed_by(block)))
                .order_by(settlement_batches.c.id)
            ).all()
        return [(_batch(row), str(row.tx_hash)) for row in rows]

    def unsettled_records(self, block: int | None) -> list[StoredUsage]:
        """The charges the chain had not debited at `block` (see `ledger.usage.unsettled_records`)."""
        with self._tx() as conn:
            return _usage.unsettled_records(conn, self.confirmed_by(block))

    # ─── Releases ────────────────────────────────────────────────────────────

    def unsettled(self, account: int, asset: str) -> int:
        """What the account owes that the chain has not yet debited: active holds, and settled
        usage not in a confirmed batch (pending, in flight, or quarantined)."""
        confirmed = select(settlement_batches.c.id).where(settlement_batches.c.status == CONFIRMED)
        with self._tx() as conn:
            return _usage.unsettled(conn, account, asset, confirmed)

    def locked(self, account: int, asset: str) -> int:
        with self._tx() as conn:
            return _accounts.balance(conn, account, asset).locked

    def active_releases(self, address: str | None = None) -> list[Release]:
        with self._tx() as conn:
            return _releases.active_releases(conn, address)

    def door_nonce(self, address: str) -> int:
        """The nonce the wallet's next request to the door must carry (0 at first)."""
        with self._tx() as conn:
            found = conn.execute(select(door_nonces.c.next_nonce).where(door_nonces.c.address == address)).scalar()
        return int(found or 0)

    def take_door_nonce(self, address: str, nonce: int, now: int) -> bool:
        """Use the wallet's request nonce `nonce` if it is the next one (atomically: of two
        requests with the same nonce, one wins); False if it is not (a replay, or ahead)."""
        n = door_nonces.c
        with self._tx() as conn:
            if nonce == 0:
                insert_ignore(conn, door_nonces, {"address": address, "next_nonce": 0, "updated_at": now})
            taken = conn.execute(
                update(door_nonces)
                .where(n.address == address, n.next_nonce == nonce)
                .values(next_nonce=nonce + 1, updated_at=now)
            ).rowcount
        return bool(taken == 1)

    def add_release(
        self, account: int, address: str, asset: str, amount: int, nonce: int, expiry: int, signature: str, now: int
    ) -> Release:
        """Lock `amount` of the account's ledger balance and record the signed release, at once;
        refused if the ledger's own spendable balance does not cover it."""
        try:
            with self._tx() as conn:
                return _releases.lock_release(conn, account, address, asset, amount, nonce, expiry, signature, now)
        except InsufficientFunds as exc:
            raise ReleaseRefused(str(exc), "ledger_short") from None

    def close_release(self, release: Release, status: str, now: int) -> None:
        """The release was used or expired: unlock its amount (once)."""
        with self._tx() as conn:
            _releases.close_release(conn, release, status, now)


def _session_key_row(r: Any) -> SessionKeySubmission:
    return SessionKeySubmission(
        r.id, r.address, r.asset, r.key, r.lanes, r.maximum, r.expiry, r.nonce, r.signature, r.status, r.tx_id
    )


def _cap_row(r: Any) -> CapSubmission:
    return CapSubmission(
        r.id, r.address, r.asset, r.per_epoch, r.total, r.expiry, r.nonce, r.signature, r.status, r.tx_id
    )
