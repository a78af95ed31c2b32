"""Which seller lot serves a request: model → provider → that provider's lots of the
kind the paying asset calls for.

- paid in the provider's token: tokenized lots, oldest first (FIFO);
- paid in USDC: listed lots, cheapest rate first, oldest first among equals.

An expired or exhausted lot serves nothing. Lots live in memory, re-read from the
database every few seconds (other processes draw them down too). A draw applies here at
once and is written to the database with the next refresh (one UPDATE per lot, not one
per request): a crash loses at most one refresh interval of draw-downs. Usage records
are not kept here: the ledger writes each with its settlement.
Secrets are opened once per lot and never leave this process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from promptex.gateway.store import GatewayStore, Lot
from promptex.sealing.envelope import MasterKeys

TOKENIZED, LISTED = "tokenized", "listed"
KINDS = (TOKENIZED, LISTED)


@dataclass(eq=False)
class LiveLot:
    id: int
    provider: str
    kind: str
    api: str
    base_url: str
    rate_bps: int
    expires_at: int
    created_at: int
    remaining_usd_micro: int
    secret: str
    chain_lot_id: int | None = None  # the CreditEscrow lot; None until it is opened on chain
    inflight: int = 0

    def __repr__(self) -> str:  # never the secret
        return f"LiveLot(id={self.id}, provider={self.provider!r}, kind={self.kind!r}, rate_bps={self.rate_bps})"

    def serves(self, now: int) -> bool:
        return self.expires_at > now and self.remaining_usd_micro > 0


def _order(lot: LiveLot) -> tuple[int, int, int]:
    return (lot.rate_bps if lot.kind == LISTED else 0, lot.created_at, lot.id)


class LotRegistry:
    def __init__(self, store: GatewayStore, keys: MasterKeys, clock: Callable[[], int]) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self._lots: dict[int, LiveLot] = {}
        self._by: dict[tuple[str, str], list[LiveLot]] = {}
        self._pending: dict[int, int] = {}  # lot id → USD micro drawn, not yet written
        self._lock = threading.Lock()

    def flush(self) -> None:
        """Write the draws made since the last flush (call from a thread)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        written: set[int] = set()
        try:
            for lot_id, usd in pending.items():
                self.store.draw_lot(lot_id, usd)
                written.add(lot_id)
        finally:
            with self._lock:  # what was not written waits for the next flush
                for lot_id, usd in pending.items():
                    if lot_id not in written:
                        self._pending[lot_id] = self._pending.get(lot_id, 0) + usd

    def refresh(self) -> None:
        """Write pending draws, then re-read every lot (call from a thread: it queries the database)."""
        self.flush()
        fresh: dict[int, LiveLot] = {}
        for lot in self.store.lots():
            with self._lock:
                unwritten = self._pending.get(lot.id, 0)
            live = self._lots.get(lot.id)
            if live is None:
                live = self._open(lot)
            else:
                live.remaining_usd_micro = lot.remaining_usd_micro - unwritten
                live.expires_at = lot.expires_at
                live.chain_lot_id = lot.chain_lot_id
            fresh[lot.id] = live
        by: dict[tuple[str, str], list[LiveLot]] = {}
        for live in fresh.values():
            by.setdefault((live.provider, live.kind), []).append(live)
        for group in by.values():
            group.sort(key=_order)
        self._lots, self._by = fresh, by

    def _open(self, lot: Lot) -> LiveLot:
        return LiveLot(
            lot.id,
            lot.provider.lower(),
            lot.kind,
            lot.api,
            lot.base_url,
            lot.rate_bps,
            lot.expires_at,
            lot.created_at,
            lot.remaining_usd_micro,
            self.keys.open(lot.sealed).decode(),
            lot.chain_lot_id,
        )

    def candidates(self, provider: str, kind: str) -> list[LiveLot]:
        """The lots that may serve, in the order they are tried."""
        now = self.clock()
        return [lot for lot in self._by.get((provider.lower(), kind), ()) if lot.serves(now)]

    def draw(self, lot: LiveLot, usd_micro: int) -> None:
        lot.remaining_usd_micro -= usd_micro
        with self._lock:
            self._pending[lot.id] = self._pending.get(lot.id, 0) + usd_micro
