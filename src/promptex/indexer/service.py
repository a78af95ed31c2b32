"""The indexer: follows the chain up to head − confirmations, one block range per step.

One step reads the range's headers (one JSON-RPC batch) and then its logs (one
`eth_getLogs` over every followed address), checks that they belong to one chain that
extends the last indexed block, and commits the new events, their ledger effects, the
block hashes and the cursor in ONE database transaction: a crash at any point leaves
the ledger at a batch boundary, and a restart resumes from the cursor.

A reorg shows as a parent hash that is not the hash stored for the block before (or an
indexed tip the chain no longer has). The indexer then finds the fork point (see
`reorg`), undoes the ledger effects of the orphaned events newest first (reversing
journal entries), deletes their rows and block hashes and moves the cursor back to the
fork point, in one transaction; the next steps replay the new branch. It indexes only up
to head − confirmations, so every reorg it sees was deeper than them: each is recorded
(`indexer_reorgs`, shown by `promptex indexer reorgs` and `promptex reconcile`) in that
transaction and logged, as an error when undoing it opened debts (funds already spent;
see `ledger.debts`: never a negative balance).

A new chain under an old ledger is not a reorg: every service checks the chain identity
the database records before it starts (`Ledger.follow_chain`), the indexer first.

Headers are read before logs on purpose: if the chain moves in between, either a log's
block hash differs from its header (the step is retried), or the stored tip belongs to
the abandoned branch and the next step rewinds it.

One indexer per ledger database: two would race on the cursor.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from sqlalchemy import Connection

from promptex.indexer import effects, lots, store
from promptex.indexer.blockrange import AdaptiveRange
from promptex.indexer.decode import Event, LogDecodeError, checksum
from promptex.indexer.followed import FACTORY, VAULT, Followed
from promptex.indexer.progress import Progress, Totals
from promptex.indexer.reorg import find_fork_point
from promptex.indexer.rpc import ChainMoved, Header, RpcClient, RpcError, RpcUnavailable
from promptex.ledger import Ledger
from promptex.ledger import debts as ledger_debts
from promptex.ledger.chain_facts import ChainBatch
from promptex.ledger.db import READ_ONLY
from promptex.ledger.metadata import ASSET

log = logging.getLogger("promptex.indexer")
SYMBOL_SELECTOR = "0x95d89b41"  # symbol()
GENESIS_SELECTOR, EPOCH_LENGTH_SELECTOR = "0xa7f0b3de", "0x4231bfe1"  # the vault's genesis(), epoch_length()


class IndexerError(RuntimeError):
    """The indexer cannot go on without a person (wrong chain, unknown asset, …)."""


@dataclass(frozen=True)
class Options:
    confirmations: int = 0
    max_block_range: int = 2_000
    target_logs: int = 10_000
    keep_blocks: int = 10_000
    start_block: int | None = None  # None: where the followed contracts were deployed

    def __post_init__(self) -> None:
        if self.confirmations < 0 or self.keep_blocks < 1:
            raise ValueError("confirmations are ≥ 0 and at least one block hash is kept")


@dataclass(frozen=True)
class Step:
    head: int
    block: int  # the last indexed block after the step
    blocks: int = 0  # blocks indexed by the step
    events: int = 0  # events stored by the step
    undone: int = 0  # events undone by a rewind
    rewound: bool = False
    caught_up: bool = False


class Indexer:
    def __init__(self, ledger: Ledger, rpc: RpcClient, followed: Followed, options: Options | None = None) -> None:
        self.ledger, self.rpc, self.followed = ledger, rpc, followed
        self._clocks: dict[str, tuple[int, int]] = {}  # vault → its epoch clock (`_clock`)
        self.options = options or Options()
        self.range = AdaptiveRange(self.options.max_block_range, self.options.target_logs)
        self._checked_chain = False
        self._load_pools()

    # ─── Reading the database ────────────────────────────────────────────────

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.ledger.engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
            yield conn

    def _load_pools(self) -> None:
        """Pools are the factory's PoolCreated events stored so far (a rewind forgets some)."""
        with self._read() as conn:
            created = store.stored_args(conn, "PoolCreated")
        self.followed.pools = {checksum(str(args["pool"]).lower()) for args in created}

    def cursor(self) -> store.Cursor:
        """Where the indexer stands; on an empty ledger, a cursor before the start block."""
        with self._read() as conn:
            cursor = store.load_cursor(conn)
        if cursor is None:
            chain_id = self.rpc.chain_id()
            start = self.options.start_block if self.options.start_block is not None else self._deployed_at()
            self.ledger.apply_chain_facts(lambda facts: store.create_cursor(facts.conn, chain_id, start, facts.now))
            self._checked_chain = True
            return self.cursor()
        if not self._checked_chain:
            chain_id = self.rpc.chain_id()
            if chain_id != cursor.chain_id:
                raise IndexerError(f"this ledger follows chain {cursor.chain_id}; the node is chain {chain_id}")
            if self.options.start_block is not None and self.options.start_block != cursor.start_block:
                raise IndexerError(
                    f"this ledger is indexed from block {cursor.start_block}, not {self.options.start_block}"
                )
            self._checked_chain = True
        return cursor

    def anchored(self) -> bool:
        """Whether the last indexed block is on the node's chain (or nothing is indexed):
        the proof an indexer gives before adopting a ledger that records no chain."""
        with self._read() as conn:
            cursor = store.load_cursor(conn)
        if cursor is None or cursor.block_hash is None:
            return True
        tip = self.rpc.headers([cursor.block_number], missing_ok=True).get(cursor.block_number)
        return tip is not None and tip.hash == cursor.block_hash

    def _deployed_at(self) -> int:
        """The first block in which a followed contract has code (bisecting eth_getCode);
        0 when the node keeps no old state."""
        head = self.rpc.block_number()
        first = head
        try:
            for address in self.followed.contracts:
                if not self.rpc.code(address, head):
                    raise IndexerError(f"no contract at {address} on this chain: wrong network or deployment?")
                low, high = 0, head
                while low < high:
                    middle = (low + high) // 2
                    low, high = (low, middle) if self.rpc.code(address, middle) else (middle + 1, high)
                first = min(first, low)
        except RpcError as exc:
            log.warning("cannot find where the contracts were deployed (%s): indexing from block 0", exc)
            return 0
        return first

    # ─── One step ────────────────────────────────────────────────────────────

    def step(self) -> Step:
        """Index the next block range, or rewind a reorg; see the module docstring."""
        cursor = self.cursor()
        head = self.rpc.block_number()
        target = head - self.options.confirmations
        if cursor.block_number >= target:
            if cursor.block_hash is not None:
                tip = self.rpc.headers([cursor.block_number], missing_ok=True).get(cursor.block_number)
                if tip is None or tip.hash != cursor.block_hash:
                    return self._rewind(cursor, head)
            return Step(head, cursor.block_number, caught_up=True)
        low = cursor.block_number + 1
        while True:
            high = min(low + self.range.size - 1, target)
            try:
                return self._index(cursor, low, high, head)
            except ChainMoved:
                raise
            except RpcError as exc:
                if not exc.range_too_large or not self.range.shrink():
                    raise
                log.info("blocks %d..%d: %s; asking for %d blocks at a time", low, high, exc, self.range.size)

    def _index(self, cursor: store.Cursor, low: int, high: int, head: int) -> Step:
        numbers = range(low, high + 1)
        headers = self.rpc.headers(numbers)
        if cursor.block_hash is not None and headers[low].parent_hash != cursor.block_hash:
            return self._rewind(cursor, head)
        for number in numbers[1:]:
            if headers[number].parent_hash != headers[number - 1].hash:
                raise ChainMoved(f"block {number} does not extend block {number - 1}")
        events = self._events(self.rpc.logs(low, high, self.followed.addresses()), headers)
        found = {
            checksum(str(e.args["pool"]).lower()): e.block_number
            for e in events
            if e.source == FACTORY and e.name == "PoolCreated"
        }
        pools = {pool: block for pool, block in found.items() if pool not in self.followed.pools}
        self.followed.pools |= pools.keys()
        try:
            if pools:  # their own events in this range were not asked for: ask now
                events += self._events(self.rpc.logs(min(pools.values()), high, sorted(pools)), headers)
                events.sort(key=lambda e: (e.block_number, e.log_index))
            for event in events:  # name unknown assets (and read vault clocks) before the transaction, not inside it
                if event.source == VAULT and "asset" in event.args:
                    self._symbol(event.args["asset"])
                if event.source == VAULT and event.name == "SessionKeyRegistered":
                    self._clock(event.contract)
            kept = [headers[n] for n in numbers]
            stored = self.ledger.apply_chain_facts(lambda facts: self._commit(facts, cursor, events, kept))
        finally:
            if pools:
                self._load_pools()  # what was committed, nothing more
        self.range.observe(len(numbers), len(events))
        return Step(head, high, blocks=len(numbers), events=stored, caught_up=high >= head - self.options.confirmations)

    def _events(self, logs: Sequence[dict[str, Any]], headers: dict[int, Header]) -> list[Event]:
        events = []
        for raw in logs:
            if raw.get("removed"):
                raise ChainMoved("the node reports a removed log")
            source = self.followed.source(checksum(str(raw.get("address", "")).lower()))
            if source is None:
                raise RpcError(f"eth_getLogs returned a log of {raw.get('address')}, which was not asked for")
            event = self.followed.decoder.decode(source, raw)
            if event is None:
                continue
            header = headers.get(event.block_number)
            if header is None or header.hash != event.block_hash:
                raise ChainMoved(f"a log of block {event.block_number} is from another branch")
            events.append(event)
        return events

    def _commit(self, facts: ChainBatch, cursor: store.Cursor, events: list[Event], headers: list[Header]) -> int:
        fresh = store.new_events(facts.conn, events)
        facts_ids = [self._apply(facts, event, cursor) for event in fresh]
        facts.flush()
        store.save_events(facts.conn, fresh, facts_ids)
        lots.refold(facts.conn, lots.touched(fresh), facts.now)
        store.save_blocks(facts.conn, headers, self.options.keep_blocks)
        store.move_cursor(facts.conn, headers[-1].number, headers[-1].hash, facts.now)
        return len(fresh)

    def _apply(self, facts: ChainBatch, event: Event, cursor: store.Cursor) -> str | None:
        fact = effects.fact_id(event, cursor.rewinds)
        applied = effects.apply(facts, event, fact, self._symbol, self.followed.usdc, cursor.chain_id, self._clock)
        return fact if applied else None

    def _clock(self, vault: str) -> tuple[int, int]:
        """The vault's epoch clock (genesis, epoch_length): immutable, read once per vault."""
        known = self._clocks.get(vault)
        if known is not None:
            return known
        try:
            clock = tuple(
                int(abi_decode(["uint256"], self.rpc.eth_call(vault, selector))[0])
                for selector in (GENESIS_SELECTOR, EPOCH_LENGTH_SELECTOR)
            )
        except RpcUnavailable:
            raise  # a node outage, waited out by `run` (not the vault's fault)
        except (RpcError, ValueError, DecodingError) as exc:
            raise IndexerError(f"cannot read the vault {vault}'s epoch clock ({exc})") from None
        genesis, length = clock
        if length <= 0:
            raise IndexerError(f"the vault {vault} answers an epoch length of {length}")
        self._clocks[vault] = genesis, length
        return genesis, length

    def _symbol(self, token: str) -> str:
        """The ledger's name for an asset: from the deployment, or the token's symbol()."""
        known = self.followed.symbol(token)
        if known is not None:
            return known
        try:
            (symbol,) = abi_decode(["string"], self.rpc.eth_call(token, SYMBOL_SELECTOR))
        except RpcUnavailable:
            raise  # a node outage, waited out by `run` (not the token's fault)
        except (RpcError, ValueError, DecodingError) as exc:
            raise IndexerError(f"cannot name the asset {token}: symbol() failed ({exc})") from None
        if not isinstance(symbol, str) or not 0 < len(symbol) <= ASSET:
            raise IndexerError(f"the asset {token} has no usable symbol ({symbol!r})")
        self.followed.assets[checksum(token.lower())] = symbol
        return symbol

    # ─── Reorgs ──────────────────────────────────────────────────────────────

    def _rewind(self, cursor: store.Cursor, head: int) -> Step:
        with self._read() as conn:
            lowest = store.lowest_block(conn)
        if lowest is None:
            raise IndexerError("the indexed tip has no stored block hash")

        def stored(low: int, high: int) -> dict[int, str]:
            with self._read() as conn:
                return store.block_hashes(conn, low, high)

        def chain(low: int, high: int) -> dict[int, str]:
            return {n: h.hash for n, h in self.rpc.headers(range(low, high + 1), missing_ok=True).items()}

        fork = find_fork_point(cursor.block_number, lowest, cursor.start_block, stored, chain)

        def undo(facts: ChainBatch) -> store.Reorg:
            before = ledger_debts.last_id(facts.conn)
            orphaned = store.events_after(facts.conn, fork)
            for _tx, _index, fact in orphaned:
                if fact is not None:
                    facts.unwind(fact)
            lots_undone = lots.touched_after(facts.conn, fork)
            store.forget_after(facts.conn, fork)
            lots.refold(facts.conn, lots_undone, facts.now)
            fork_hash = store.block_hashes(facts.conn, fork, fork).get(fork)
            store.move_cursor(facts.conn, fork, fork_hash, facts.now, rewound=True)
            reorg = store.Reorg(
                id=0,
                detected_at=facts.now,
                fork_block=fork,
                old_tip=cursor.block_number,
                old_tip_hash=cursor.block_hash,
                depth=cursor.block_number - fork,
                confirmations=self.options.confirmations,
                events_undone=len(orphaned),
                debts_opened=len(ledger_debts.opened_after(facts.conn, before)),
            )
            store.record_reorg(facts.conn, reorg)
            return reorg

        reorg = self.ledger.apply_chain_facts(undo)
        self._load_pools()
        report = log.error if reorg.debts_opened else log.warning
        report(
            "reorg deeper than %d confirmations: blocks %d..%d left the chain; rewound to block %d, undid %d events%s",
            reorg.confirmations,
            fork + 1,
            cursor.block_number,
            fork,
            reorg.events_undone,
            f", {reorg.debts_opened} debts opened for funds already spent (promptex reconcile)"
            if reorg.debts_opened
            else "",
        )
        return Step(head, fork, undone=reorg.events_undone, rewound=True)

    # ─── Running ─────────────────────────────────────────────────────────────

    def catch_up(self, stop: threading.Event | None = None, progress: Progress | None = None) -> Totals:
        """Index up to head − confirmations (as it is when reached), then return."""
        progress = progress or Progress(log)
        while stop is None or not stop.is_set():
            step = self._step_once(progress)
            if step is not None and step.caught_up:
                break
        progress.tick(force=True)
        return progress.totals

    def run(self, stop: threading.Event, poll_seconds: float, progress: Progress | None = None) -> Totals:
        """Follow the chain until `stop` is set; node outages are waited out."""
        progress = progress or Progress(log)
        backoff = poll_seconds
        while not stop.is_set():
            try:
                step = self._step_once(progress)
            except RpcUnavailable as exc:
                log.warning("node unavailable (%s); trying again in %.0f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            backoff = poll_seconds
            if step is not None and step.caught_up:
                stop.wait(poll_seconds)
        progress.tick(force=True)
        return progress.totals

    def _step_once(self, progress: Progress) -> Step | None:
        try:
            step = self.step()
        except ChainMoved as exc:
            log.info("the chain moved while reading (%s); reading again", exc)
            return None
        totals = progress.totals
        totals.blocks += step.blocks
        totals.events += step.events
        totals.undone += step.undone
        totals.rewinds += step.rewound
        totals.block, totals.head = step.block, step.head
        progress.tick()
        return step


def serve(indexer: Indexer, *, once: bool, poll_seconds: float, progress: Progress | None = None) -> Totals:
    """Run the indexer until caught up (`once`) or until SIGINT/SIGTERM, which end it
    cleanly after the batch in progress (its transaction commits or rolls back whole)."""
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("%s: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if once:
            return indexer.catch_up(stop, progress)
        return indexer.run(stop, poll_seconds, progress)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["Indexer", "IndexerError", "LogDecodeError", "Options", "Step", "serve"]
