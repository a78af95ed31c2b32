"""The persisted log of signed transactions, shared by every service that signs (the
coordinator and the redemption agent, each with its own table and key).

Every transaction is stored before it is broadcast: after a crash each is found by its
hash, re-sent byte for byte, or proven dropped — never signed anew. Also the kill -9
test hook both services use.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    insert,
    or_,
    select,
    true,
    update,
)

from promptex.ledger.metadata import ADDRESS, metadata

if TYPE_CHECKING:  # the sender imports web3; a store (and the migrations) need not
    from promptex.chain.sender import Receipt, SignedTx

log = logging.getLogger(__name__)

SENT, SUCCEEDED, REVERTED, DROPPED = "sent", "succeeded", "reverted", "dropped"
NOOP = "noop"  # the purpose of a 0-value self-transfer filling the nonce of a transaction that must never land
DROP_GRACE_SECONDS = 3.0


class CloseTx(Protocol):
    def __call__(self, tx_id: int, status: str, block: int | None, now: int, block_hash: str | None = None) -> None: ...


def signed_txs(name: str, *extra: Column[Any]) -> Table:
    """A log of signed transactions, one per signer service (each checks its own nonces),
    on the ledger's one MetaData (its migrations build it); `extra`: a service's own columns."""
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("purpose", String(32), nullable=False),  # e.g. settle | consume | spend_cap | redeem | release
        Column("sender", String(ADDRESS), nullable=False),
        Column("nonce", BigInteger, nullable=False),
        Column("tx_hash", String(66), nullable=False, unique=True),
        Column("raw_tx", Text, nullable=False),
        Column("status", String(16), nullable=False),  # sent | succeeded | reverted | dropped
        Column("block_number", BigInteger, nullable=True),
        Column("block_hash", String(66), nullable=True),  # of that block (None: closed before it was kept)
        Column("created_at", BigInteger, nullable=False),
        Column("closed_at", BigInteger, nullable=True),
        Index(None, "status", "nonce"),
        Index(None, "sender", "status", "nonce"),  # one key's nonces (a rotated key's rows may sit above)
        *extra,
    )


@dataclass(frozen=True)
class StoredTx:
    id: int
    purpose: str
    nonce: int
    tx_hash: str
    raw: str
    status: str
    block: int | None = None  # the block its receipt named, once closed
    block_hash: str | None = None  # that block's hash (None: not known)
    sender: str | None = None  # the key that signed it (None: not read)


def _stored(m: Any) -> StoredTx:
    return StoredTx(
        m["id"], m["purpose"], m["nonce"], m["tx_hash"], m["raw_tx"], m["status"], m["block_number"], m["block_hash"],
        m["sender"],
    )  # fmt: skip


class SignedTxStore:
    """A service's database access, with its log of signed transactions (`txs_table`):
    stored before broadcast, looked up after a crash, closed once resolved."""

    txs_table: Table

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _store_tx(self, conn: Connection, purpose: str, signed: SignedTx, sender: str, now: int) -> int:
        t = self.txs_table
        values = {"purpose": purpose, "sender": sender, "nonce": signed.nonce, "tx_hash": signed.tx_hash}
        row = insert(t).values(**values, raw_tx=signed.raw, status=SENT, created_at=now).returning(t.c.id)
        return int(conn.execute(row).scalar_one())

    def tx(self, tx_id: int) -> StoredTx:
        with self._tx() as conn:
            return _stored(conn.execute(select(self.txs_table).where(self.txs_table.c.id == tx_id)).one()._mapping)

    def _of(self, sender: str | None) -> Any:
        """The rows of one key (None: of every key, for a reader of the whole log): nonces
        of two accounts are never compared (a rotated key, a standby with its own key)."""
        return true() if sender is None else self.txs_table.c.sender == sender

    def open_txs(self, sender: str | None = None) -> list[StoredTx]:
        t = self.txs_table
        with self._tx() as conn:
            rows = conn.execute(select(t).where(t.c.status == SENT, self._of(sender)).order_by(t.c.nonce)).all()
        return [_stored(r._mapping) for r in rows]

    def landed_txs(self, from_block: int, from_nonce: int | None, sender: str | None = None) -> list[StoredTx]:
        """Closed transactions a reorg may have orphaned: mined (succeeded or reverted) in
        `from_block` or later, or with a nonce at or past `from_nonce` (the sender's nonce on
        the canonical chain: such a transaction cannot be on it; None: not known, another
        key's), of `sender`."""
        t = self.txs_table
        landed = t.c.status.in_((SUCCEEDED, REVERTED))
        recent = t.c.block_number >= from_block
        if from_nonce is not None:
            recent = or_(recent, t.c.nonce >= from_nonce)
        with self._tx() as conn:
            rows = conn.execute(select(t).where(landed, recent, self._of(sender)).order_by(t.c.nonce)).all()
        return [_stored(r._mapping) for r in rows]

    def newest_block(self, sender: str | None = None) -> int | None:
        """The highest block a mined transaction of `sender` was found in (None: none yet):
        the service last checked its receipts at a head no lower than that."""
        t = self.txs_table
        with self._tx() as conn:
            newest = select(func.max(t.c.block_number)).where(t.c.status.in_((SUCCEEDED, REVERTED)), self._of(sender))
            found = conn.execute(newest).scalar()
        return None if found is None else int(found)

    def other_senders(self, sender: str) -> dict[str, int]:
        """Every key but `sender` with a mined transaction in the log, and the highest block
        one of them was found in (`newest_block` for each)."""
        t = self.txs_table
        mined = (t.c.sender != sender, t.c.status.in_((SUCCEEDED, REVERTED)))
        with self._tx() as conn:
            rows = conn.execute(select(t.c.sender, func.max(t.c.block_number)).where(*mined).group_by(t.c.sender)).all()
        return {str(r[0]): int(r[1]) for r in rows if r[1] is not None}

    def others_open(self, sender: str) -> list[StoredTx] | None:
        """Other keys' open transactions; None when the log holds no open or mined
        transaction of another key at all (the common case, in one indexed read)."""
        t = self.txs_table
        with self._tx() as conn:
            others = (t.c.sender != sender, t.c.status.in_((SENT, SUCCEEDED, REVERTED)))
            if conn.execute(select(t.c.id).where(*others).limit(1)).first() is None:
                return None
            rows = conn.execute(select(t).where(t.c.sender != sender, t.c.status == SENT).order_by(t.c.nonce)).all()
        return [_stored(r._mapping) for r in rows]

    def others_unfinal(self, sender: str, deep: int) -> list[tuple[str, int, int, int]]:
        """Per other key, its transactions open or mined above block `deep`: (key, how many,
        the newest block among them or 0, how many of them are mined), by key."""
        t = self.txs_table
        others = (t.c.sender != sender, t.c.status.in_((SENT, SUCCEEDED, REVERTED)))
        unfinal = or_(t.c.status == SENT, t.c.block_number > deep)
        stmt = select(t.c.sender, func.count(), func.max(t.c.block_number), func.count(t.c.block_number))
        with self._tx() as conn:
            rows = conn.execute(stmt.where(*others, unfinal).group_by(t.c.sender).order_by(t.c.sender)).all()
        return [(str(r[0]), int(r[1]), int(r[2] or 0), int(r[3])) for r in rows]

    def final_nonce(self, deep: int, sender: str | None = None) -> int:
        """`sender`'s nonces below this one are final: taken in block `deep` or earlier, as
        far as the log knows (a transaction it holds mined there, succeeded or reverted;
        nonces are taken in order, so every lower one was taken no later). Whatever held
        such a nonce, or tried to, can never land once `deep` is as far below the head as
        the service's reorg window, which stops re-checking receipts there."""
        t = self.txs_table
        top = -1
        with self._tx() as conn:
            for status in (SUCCEEDED, REVERTED):  # one each: the (status, nonce) index read from the top down
                found = conn.execute(
                    select(t.c.nonce)
                    .where(t.c.status == status, t.c.block_number <= deep, self._of(sender))
                    .order_by(t.c.nonce.desc())
                    .limit(1)
                ).scalar()
                top = max(top, -1 if found is None else int(found))
        return top + 1

    def _reopen_tx(self, conn: Connection, tx_id: int) -> None:
        """Back to "sent": its receipt was on a branch the chain no longer has. The next
        resolution re-sends the same signed bytes, or finds its nonce went to another."""
        t = self.txs_table
        conn.execute(
            update(t).where(t.c.id == tx_id).values(status=SENT, block_number=None, block_hash=None, closed_at=None)
        )

    def replace_tx(self, tx: StoredTx, noop: SignedTx, sender: str, now: int) -> int:
        """`tx` must never land: closed as dropped and, in the same database transaction,
        the no-op signed for its nonce stored (before its broadcast); returns the no-op's id.
        Once only: should another process have replaced it first (the agent's pass and
        `promptex redeem` both finding a failed redemption's redeem orphaned), its no-op is
        the one: its id is returned and no second one stored (two no-ops at one nonce, or,
        signed alike, the log's unique hash refusing the second)."""
        with self._tx() as conn:
            return self._replace_tx(conn, tx.id, noop, sender, now)

    def _replace_tx(self, conn: Connection, tx_id: int, noop: SignedTx, sender: str, now: int) -> int:
        t = self.txs_table
        closed = conn.execute(
            update(t)
            .where(t.c.id == tx_id, t.c.status != DROPPED)
            .values(status=DROPPED, block_number=None, block_hash=None, closed_at=now)
        ).rowcount
        if closed != 1:  # already dropped: replaced by another process, whose no-op stands
            at = (t.c.purpose == NOOP, t.c.sender == sender, t.c.nonce == noop.nonce, t.c.id > tx_id)
            first = conn.execute(select(t.c.id).where(*at).order_by(t.c.id).limit(1)).scalar()
            if first is not None:
                return int(first)
        return self._store_tx(conn, NOOP, noop, sender, now)

    def dropped_at(self, nonce: int, sender: str | None = None) -> list[StoredTx]:
        """The transactions of `sender` closed as dropped at `nonce`: replaced by a no-op, or
        their nonce taken by another transaction."""
        t = self.txs_table
        with self._tx() as conn:
            at = (t.c.nonce == nonce, t.c.status == DROPPED, self._of(sender))
            rows = conn.execute(select(t).where(*at).order_by(t.c.id)).all()
        return [_stored(r._mapping) for r in rows]

    def others_at_nonce(self, tx: StoredTx) -> list[StoredTx]:
        """The log's other transactions of `tx`'s key at its nonce (a no-op, another redeem)."""
        t = self.txs_table
        with self._tx() as conn:
            at = (t.c.sender == tx.sender, t.c.nonce == tx.nonce, t.c.id != tx.id)
            rows = conn.execute(select(t).where(*at).order_by(t.c.id)).all()
        return [_stored(r._mapping) for r in rows]

    def dropped_txs(self, purpose: str, from_nonce: int, sender: str) -> list[StoredTx]:
        """`sender`'s transactions of `purpose` closed as dropped at `from_nonce` or above."""
        t = self.txs_table
        at = (t.c.purpose == purpose, t.c.status == DROPPED, t.c.nonce >= from_nonce, self._of(sender))
        with self._tx() as conn:
            rows = conn.execute(select(t).where(*at).order_by(t.c.nonce, t.c.id)).all()
        return [_stored(r._mapping) for r in rows]

    def move_tx(self, tx: StoredTx, status: str, receipt: Receipt, now: int) -> None:
        """A mined transaction found again in another block (a reorg, then re-included)."""
        t = self.txs_table
        values = {"block_number": receipt.block_number, "block_hash": receipt.block_hash}
        with self._tx() as conn:
            conn.execute(update(t).where(t.c.id == tx.id).values(status=status, **values, closed_at=now))

    def close_tx(self, tx_id: int, status: str, block: int | None, now: int, block_hash: str | None = None) -> None:
        t = self.txs_table
        with self._tx() as conn:
            conn.execute(
                update(t)
                .where(t.c.id == tx_id, t.c.status == SENT)
                .values(status=status, block_number=block, block_hash=block_hash, closed_at=now)
            )


class TxChain(Protocol):
    """What resolving a stored transaction needs from a chain (the coordinator's and the agent's)."""

    def receipt(self, tx_hash: str) -> Receipt | None: ...
    def nonce(self) -> int: ...
    def broadcast(self, raw: str) -> None: ...
    def wait(self, tx_hash: str, timeout: float) -> Receipt | None: ...


class HeadChain(TxChain, Protocol):
    """What re-checking stored receipts after a reorg needs: also the canonical head, and
    the key in use (the log may hold another key's transactions: a rotation, a standby)."""

    @property
    def sender(self) -> str: ...
    def head(self) -> int: ...


class TxPending(Exception):
    """A signed transaction is neither mined nor provably dropped yet: wait for the next pass."""


class OtherKeyPending(TxPending):
    """The log holds another key's transactions not yet final: this key waits for them."""


def send_others(chain: TxChain, tx: StoredTx) -> bool:
    """Send another key's stored bytes again, as anyone may: a best effort, whether the node
    took them. A refusal the chain's `broadcast` does not take as done ("already known",
    "nonce too low") is logged, not raised: that account may no longer pay gas (drained
    after a rotation), and only its key's service can finish such a transaction. Raised,
    every pass would fail with it instead of waiting for that key (`--once` a traceback)."""
    try:
        chain.broadcast(tx.raw)
    except Exception as exc:  # noqa: BLE001 (a best effort: e.g. that account no longer pays gas)
        log.warning("%s tx %s (nonce %d) of key %s not sent again: the node refused it (%s)", tx.purpose,
                    tx.tx_hash, tx.nonce, tx.sender, exc)  # fmt: skip
        return False
    return True


def wait_for_other_keys(
    store: SignedTxStore,
    chain: HeadChain,
    window: int,
    service: str,
    now: Callable[[], int],
    resend: Callable[[StoredTx], bool] = lambda tx: True,
) -> None:
    """Raises OtherKeyPending (logged once, at WARNING) while the log holds a transaction of
    another key that is open or mined less than `window` blocks below the head: after a key
    rotation, or at a change of leader between keys. This key cannot re-check, re-send as
    dropped or fill such a transaction's nonce (its nonces are another account's), and a
    failure of it is not final until that key's nonce is deep: only that key's service can
    finish them. Once `window` deep they are history (a deeper reorg is reconcile's).
    One thing any key can do: an open one the canonical chain serves a receipt for is
    closed with it, as its own service would (which may have died before it could: the
    old key retired, maybe lost), so that it counts by its depth, not as open for good.
    And one not mined is sent again, its same signed bytes (anyone may send them; its own
    service would): its key's service may have died between storing and sending it, and
    the key be lost. Unless `resend` says no (the coordinator: a let-go batch's settle,
    which only its key's no-op may take the nonce of). One whose nonce another transaction
    took is never mined: its key's own service closes it dropped, and so may a service of
    another key that reads that account's nonce past it (the coordinator's `_others_dropped`,
    with the same grace); this function leaves it open."""
    open_ = store.others_open(chain.sender)
    if open_ is None:
        return  # the common case, without reading the head
    for row in open_:
        receipt = chain.receipt(row.tx_hash)
        if receipt is None and resend(row):
            send_others(chain, row)  # the same bytes: idempotent; refused if its nonce is taken
            receipt = chain.receipt(row.tx_hash)
        if receipt is not None:  # closed only while still open (`close_tx`): its own service may race
            status = SUCCEEDED if receipt.ok else REVERTED
            store.close_tx(row.id, status, receipt.block_number, now(), receipt.block_hash)
    rows = store.others_unfinal(chain.sender, chain.head() - window)
    if not rows:
        return
    said = []
    for sender, count, newest, mined in rows:
        when = f"newest at block {newest}, final at {newest + window}" if mined == count else "some not yet mined"
        said.append(
            f"the log holds {count} transactions of key {sender} not yet final ({when}): waiting; "
            f"let that key's {service} finish them"
        )
    message = "; ".join(said)
    log.warning("%s", message)
    raise OtherKeyPending(message)


def still_ours(tx: StoredTx, receipt: Receipt | None) -> bool:
    """The canonical chain still holds `tx` as the log stored it: a receipt (only a canonical
    one is served, see `Web3Sender.receipt`) in the stored block number, with the stored
    outcome, and in the stored block (its hash, where both are known: a transaction closed
    before the log kept hashes is compared by number and outcome). The same number is not
    the same block: a competing block at that height may hold the transaction reverted
    where it succeeded, or the reverse, or succeeded with other effects (the escrow's
    redemption id, when another redeem came first in it)."""
    if receipt is None or receipt.block_number != tx.block or receipt.ok != (tx.status == SUCCEEDED):
        return False
    return tx.block_hash is None or receipt.block_hash is None or receipt.block_hash == tx.block_hash


def orphaned_txs(
    store: SignedTxStore, chain: HeadChain, window: int, checked: int | None
) -> tuple[int, list[tuple[StoredTx, Receipt | None]]]:
    """The head read, and the log's mined transactions the canonical chain no longer holds as
    stored (a reorg), each with its canonical receipt (None: none, or its nonce not yet
    taken again). Re-checked: every transaction mined within `window` blocks below the head
    the caller LAST checked at (`checked`; None after a restart: the newest block the log
    holds stands for it, the last head checked was no lower), not below the head now: a
    reorg within the window while the service was down, or between two passes, can orphan
    blocks that are below `head - window` by now. And any past the sender's canonical nonce.
    The caller records the returned head as checked once it has acted on what was found.
    Only the chain's key's own transactions: its nonce says nothing of another key's."""
    nonce = chain.nonce()
    head = chain.head()
    if checked is None:
        checked = store.newest_block(chain.sender)
    since = (head if checked is None else min(head, checked)) - window
    return head, _not_as_stored(store.landed_txs(since, nonce, chain.sender), chain, nonce)


def others_orphaned_txs(
    store: SignedTxStore, chain: HeadChain, window: int, checked: int | None
) -> list[tuple[StoredTx, Receipt | None]]:
    """`orphaned_txs` for every OTHER key's mined transactions (a rotated key, a standby's):
    while this key waits out their window (`wait_for_other_keys`) their service may be
    stopped, so this key watches them, or a reorg within the window that flips one's
    outcome goes unseen and the stale outcome counts as final at the window's end. Each
    key's rows mined within `window` blocks below its newest stored block (or below the
    head this key last checked, `checked`, if lower) are compared by receipt only (number,
    outcome, hash: `still_ours`), never by nonce: this key's nonce says nothing of theirs.
    Every key's in its nonce order, as the caller handles them. A key whose newest row was
    already a window deep at the head last checked is skipped: its rows were final then
    (a deeper reorg is reconcile's), so a retired key costs no receipt reads for good."""
    found: list[tuple[StoredTx, Receipt | None]] = []
    for sender, newest in sorted(store.other_senders(chain.sender).items()):
        if checked is not None and newest < checked - window:
            continue
        since = (newest if checked is None else min(newest, checked)) - window
        found += _not_as_stored(store.landed_txs(since, None, sender), chain, None)
    return found


def _not_as_stored(txs: list[StoredTx], chain: HeadChain, nonce: int | None) -> list[tuple[StoredTx, Receipt | None]]:
    """Those of `txs` the canonical chain no longer holds as stored, each with its canonical
    receipt; one at or past `nonce` (its key's canonical nonce, where known) without one."""
    found: list[tuple[StoredTx, Receipt | None]] = []
    for tx in txs:
        receipt = None
        if nonce is None or tx.nonce < nonce:
            receipt = chain.receipt(tx.tx_hash)
            if still_ours(tx, receipt):
                continue
        found.append((tx, receipt))
    return found


def crash_point(env_var: str, step: str) -> None:
    """Die here, as kill -9 would, when the test hook `env_var` names this step."""
    if os.environ.get(env_var) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def resolve_tx(
    tx: StoredTx,
    chain: TxChain,
    close_tx: CloseTx,
    now: Callable[[], int],
    timeout: float,
    before_dropped: Callable[[StoredTx], None] | None = None,
) -> str:
    """The final status of a stored transaction, rebroadcasting it if it is not mined.
    Raises TxPending while it is neither mined nor dropped (its nonce went to another).
    `before_dropped` (the agent's redeems) is called before it is closed dropped, and may
    raise TxPending to keep it open a while longer (its nonce not yet final)."""
    if tx.status != SENT:
        return tx.status
    receipt = chain.receipt(tx.tx_hash)
    if receipt is None and chain.nonce() > tx.nonce:
        # Mined between the two reads, or a node that shows the sender's nonce moved a moment
        # before it serves the receipt: give the receipt a short grace before calling it dropped.
        receipt = chain.wait(tx.tx_hash, min(timeout, DROP_GRACE_SECONDS))
        if receipt is None:
            if before_dropped is not None:
                before_dropped(tx)
            log.warning("%s tx %s: nonce %d went to another transaction", tx.purpose, tx.tx_hash, tx.nonce)
            close_tx(tx.id, DROPPED, None, now())
            return DROPPED
    if receipt is None:
        chain.broadcast(tx.raw)  # the same signed bytes: idempotent
        receipt = chain.wait(tx.tx_hash, timeout)
    if receipt is None:
        raise TxPending(f"{tx.purpose} tx {tx.tx_hash} (nonce {tx.nonce})")
    status = SUCCEEDED if receipt.ok else REVERTED
    close_tx(tx.id, status, receipt.block_number, now(), receipt.block_hash)
    return status


def broadcast_stored(
    tx: StoredTx,
    chain: TxChain,
    close_tx: CloseTx,
    now: Callable[[], int],
    timeout: float,
    crash: Callable[[str], None],
) -> str:
    """Send a just-stored transaction and resolve it; `crash` is the service's kill -9 hook,
    called as "<purpose>_signed" before the broadcast and "<purpose>_broadcast" after."""
    crash(f"{tx.purpose}_signed")
    chain.broadcast(tx.raw)
    crash(f"{tx.purpose}_broadcast")
    return resolve_tx(tx, chain, close_tx, now, timeout)
