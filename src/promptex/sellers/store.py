"""What the tokenize/list path persists, each step in one transaction: the lot (its
sealed key, in the gateway's store) with its state `requested` (the ledger's); a signed
transaction (in `seller_txs`) together with the state it moves the lot to (`opening`
with its open_lot, `closing` with its request_close), before it is broadcast.
"""

from __future__ import annotations

from sqlalchemy import Engine, select

from promptex.chain.sender import SignedTx
from promptex.chain.txlog import SignedTxStore, StoredTx
from promptex.coordinator.store import CoordinatorStore
from promptex.gateway.routing import LISTED
from promptex.gateway.store import GatewayStore
from promptex.ledger import lots as _lots
from promptex.ledger import usage as _usage
from promptex.ledger.holds import capacity as _capacity
from promptex.ledger.lots import CLOSING, LotState
from promptex.protocol.units import BPS
from promptex.sealing.envelope import MasterKeys
from promptex.sellers.schema import seller_txs
from promptex.sellers.terms import Capacity


class SellerStore(SignedTxStore):
    txs_table = seller_txs

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.gateway = GatewayStore(engine)

    def record_lot(self, keys: MasterKeys, capacity: Capacity, *, route_until: int, now: int) -> int:
        """Seal the key and record the lot, then its state `requested` (it serves nothing:
        a crash in between leaves a lot without a state, which serves nothing either)."""
        values = {
            "provider": capacity.provider.lower(),
            "kind": capacity.kind,
            "api": capacity.api,
            "base_url": capacity.base_url,
            "seller": capacity.seller,
            "face_value_usd_micro": capacity.face_value_usd_micro,
            "remaining_usd_micro": capacity.face_value_usd_micro,
            "rate_bps": capacity.rate_bps if capacity.kind == LISTED else BPS,
            "expires_at": capacity.expires_at,
            "created_at": now,
            "resale_permitted": capacity.resale_permitted,
        }
        lot_id = self.gateway.add_lot(values, keys.seal(capacity.api_key.encode()))
        with self._tx() as conn:
            _lots.request(conn, lot_id, expires_at=capacity.expires_at, route_until=route_until, now=now)
        return lot_id

    def store_tx(self, purpose: str, signed: SignedTx, sender: str, now: int) -> StoredTx:
        with self._tx() as conn:
            tx_id = self._store_tx(conn, purpose, signed, sender, now)
        return self.tx(tx_id)

    def store_open(self, lot_id: int, signed: SignedTx, sender: str, now: int) -> StoredTx:
        """The signed open_lot and the lot's move to `opening`, together."""
        with self._tx() as conn:
            tx_id = self._store_tx(conn, "open_lot", signed, sender, now)
            _lots.opening(conn, lot_id, signed.tx_hash, now=now)
        return self.tx(tx_id)

    def store_close(self, chain_lot_id: int, signed: SignedTx, sender: str, now: int) -> StoredTx:
        """The signed request_close and the lot's move to `closing` (routing stops now,
        before the chain has it: a revert puts the lot back to open), together."""
        with self._tx() as conn:
            tx_id = self._store_tx(conn, "request_close", signed, sender, now)
            _lots.set_chain_state(conn, chain_lot_id, CLOSING, reason=f"close requested in {signed.tx_hash}", now=now)
        return self.tx(tx_id)

    def open_tx_of(self, lot: LotState) -> StoredTx | None:
        """The stored open_lot of a lot in `opening`, whichever attestor key signed it (its
        `sender`)."""
        if lot.open_tx is None:
            return None
        with self._tx() as conn:
            found = conn.execute(select(seller_txs.c.id).where(seller_txs.c.tx_hash == lot.open_tx)).scalar()
        return None if found is None else self.tx(int(found))

    # ─── The ledger's lot states ─────────────────────────────────────────────

    def state(self, lot_id: int) -> LotState | None:
        with self._tx() as conn:
            return _lots.get(conn, lot_id)

    def states(self) -> dict[int, LotState]:
        with self._tx() as conn:
            return _lots.all_states(conn)

    def by_chain_lot(self, chain_lot_id: int) -> LotState | None:
        with self._tx() as conn:
            return _lots.by_chain_lot(conn, chain_lot_id)

    def fail(self, lot_id: int, reason: str, now: int) -> LotState:
        with self._tx() as conn:
            return _lots.fail(conn, lot_id, reason, now=now)

    def confirm_open(self, lot_id: int, chain_lot_id: int, now: int) -> LotState:
        with self._tx() as conn:
            found = _lots.confirm_open(conn, chain_lot_id, lot_id=lot_id, now=now)
        assert found is not None  # by lot id: found, or LotStateError
        return found

    def unsettled(self) -> dict[int, int]:
        """Per gateway lot, what it served or holds for requests in flight that the chain has
        not drawn from it yet, in USD micro at list price: the capacity its active holds
        reserve, and its usage outside the coordinator's confirmed batches."""
        with self._tx() as conn:
            owed = _usage.unsettled_by_lot(conn, CoordinatorStore.confirmed_by(None))
            for lot_id, capacity in _capacity.capacities(conn).items():
                if capacity.reserved > 0:
                    owed[lot_id] = owed.get(lot_id, 0) + capacity.reserved
        return owed

    def set_chain_state(
        self, chain_lot_id: int, state: str, now: int, *, close_at: int | None = None, reason: str | None = None
    ) -> LotState | None:
        with self._tx() as conn:
            return _lots.set_chain_state(conn, chain_lot_id, state, close_at=close_at, reason=reason, now=now)
