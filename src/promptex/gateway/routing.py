"""Which seller lot serves a request: model → provider → that provider's lots of the
kind the paying asset calls for.

- paid in the provider's token: tokenized lots, nearest expiry first (the order in which
  CreditEscrow lets a settlement draw them), the lower lot id among equals;
- paid in USDC: listed lots, cheapest rate first, oldest first among equals.

A lot serves only while the chain says it is open, and stops before its expiry (its
`route_until`: one settlement epoch and a posting margin earlier, so its usage settles
while the escrow still draws it): its state is the ledger's (`promptex.ledger.lots`).
An exhausted lot serves nothing. Lots live in memory, re-read from the
database every few seconds. Their capacity is the ledger's: a hold reserves it in the
transaction that holds the buyer's funds (`promptex.ledger.holds`), so nothing here can
overdraw a lot; the headroom kept here (as of the last refresh, less what this process
settled since) only skips lots that are already full. Secrets are opened once per lot
and never leave this process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from promptex.gateway.store import GatewayStore, Lot
from promptex.ledger import LotCapacity
from promptex.ledger.lots import OPEN, LotState
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
    headroom_usd_micro: int  # the ledger's capacity left (a hint: the ledger decides)
    secret: str
    chain_lot_id: int | None = None  # the CreditEscrow lot; None until it is opened on chain
    inflight: int = 0
    routed: bool = False  # the ledger says open
    route_until: int = 0  # routed only before this (expiry − one epoch − the posting margin)

    def __repr__(self) -> str:  # never the secret
        return f"LiveLot(id={self.id}, provider={self.provider!r}, kind={self.kind!r}, rate_bps={self.rate_bps})"

    def serves(self, now: int) -> bool:
        return self.routed and now < self.route_until and self.expires_at > now and self.headroom_usd_micro > 0

    def follow(self, state: LotState | None) -> None:
        """Take the lot's state from the ledger (no state: it serves nothing)."""
        self.routed = state is not None and state.state == OPEN and state.chain_lot_id is not None
        self.route_until = state.route_until if state is not None else 0
        if state is not None and state.chain_lot_id is not None:
            self.chain_lot_id = state.chain_lot_id


_NOT_ON_CHAIN = 2**63  # a lot with no on-chain id yet sorts after those with one


def _order(lot: LiveLot) -> tuple[int, int, int]:
    if lot.kind == LISTED:
        return (lot.rate_bps, lot.created_at, lot.id)
    chain_id = lot.chain_lot_id if lot.chain_lot_id is not None else _NOT_ON_CHAIN
    return (lot.expires_at, chain_id, lot.id)


class LotRegistry:
    def __init__(
        self,
        store: GatewayStore,
        keys: MasterKeys,
        clock: Callable[[], int],
        capacity: Callable[[], Mapping[int, LotCapacity]],
        states: Callable[[], Mapping[int, LotState]],
    ) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.capacity = capacity  # the ledger's lot capacities
        self.states = states  # the ledger's lot states
        self._lots: dict[int, LiveLot] = {}
        self._by: dict[tuple[str, str], list[LiveLot]] = {}

    def refresh(self) -> None:
        """Re-read every lot and its capacity (call from a thread: it queries the database)."""
        capacities = self.capacity()
        states = self.states()
        fresh: dict[int, LiveLot] = {}
        for lot in self.store.lots():
            found = capacities.get(lot.id)
            headroom = found.headroom if found is not None else 0  # no capacity row: not servable
            live = self._lots.get(lot.id)
            if live is None:
                live = self._open(lot, headroom)
            else:
                live.headroom_usd_micro = headroom
                live.expires_at = lot.expires_at
                live.chain_lot_id = lot.chain_lot_id
            live.follow(states.get(lot.id))
            fresh[lot.id] = live
        by: dict[tuple[str, str], list[LiveLot]] = {}
        for live in fresh.values():
            by.setdefault((live.provider, live.kind), []).append(live)
        for group in by.values():
            group.sort(key=_order)
        self._lots, self._by = fresh, by

    def _open(self, lot: Lot, headroom: int) -> LiveLot:
        return LiveLot(
            lot.id,
            lot.provider.lower(),
            lot.kind,
            lot.api,
            lot.base_url,
            lot.rate_bps,
            lot.expires_at,
            lot.created_at,
            headroom,
            self.keys.open(lot.sealed).decode(),
            lot.chain_lot_id,
        )

    def candidates(self, provider: str, kind: str) -> list[LiveLot]:
        """The lots that may serve, in the order they are tried."""
        now = self.clock()
        return [lot for lot in self._by.get((provider.lower(), kind), ()) if lot.serves(now)]

    def used(self, lot: LiveLot, usd_micro: int) -> None:
        """This process settled `usd_micro` on the lot: lower its headroom hint until the next refresh."""
        lot.headroom_usd_micro -= usd_micro

    def full(self, lot_id: int, available: int) -> None:
        """The ledger refused a hold on the lot: `available` is what it has left."""
        live = self._lots.get(lot_id)
        if live is not None:
            live.headroom_usd_micro = min(live.headroom_usd_micro, available)
