"""A seller's lots after onboarding: the table `promptex seller lots` prints, and closing
one (`promptex seller close LOT`): `request_close` on chain, which stops routing at once
(the lot is `closing` from the moment the signed transaction is stored), then, once the
escrow's close delay (two vault windows) has passed, `finalize_close`, which returns the
rest of the bond (a tokenized lot's seller first hands back its token share): by
`promptex seller close LOT` again, or by itself with `promptex seller finalize --watch`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from web3 import Web3

from promptex.chain import txlog
from promptex.chain.sender import Call, Web3Sender
from promptex.chain.txlog import SUCCEEDED, TxPending
from promptex.ledger.lots import CLOSED, CLOSING, OPEN, LotState
from promptex.protocol.units import USD_MICRO, USDC_SYMBOL, money, token_value_text, usd_text
from promptex.sellers.chain import ChainLot, SellerChain
from promptex.sellers.store import SellerStore

# Forward only: what a read of the chain may move a lot to here. Moving back (a reorg
# undoing a close) is the indexer's, which folds the events it keeps.
_ORDER = {OPEN: 0, CLOSING: 1, CLOSED: 2, "expired": 2, "slashed": 2}


class CloseRefused(ValueError):
    """The lot cannot be closed now; the message says why, in one line. Nothing was sent."""


@dataclass(frozen=True)
class LotRow:
    lot_id: int  # the gateway's
    chain_lot_id: int | None
    provider: str
    kind: str
    seller: str
    state: str
    face_value_usd_micro: int
    remaining: str  # in the lot's unit, less usage not yet settled, for a person ("—" when not on chain)
    expires_at: int
    why: str  # why it is not routed, or until when it is


def _when(moment: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment))


def _remaining(chain: SellerChain, lot: ChainLot, unsettled_usd: int) -> str:
    """What the lot can still serve: the chain's capacity less what settlements drew, less
    what it served or holds for requests in flight that no settlement has drawn yet (list
    value, in the lot's unit: a tokenized lot's capacity is tokens, capacity ÷ face value
    per USD micro, rounded up: never more than it can serve). Shown so that a used lot never
    reads as untouched nor as more than it has: dollars exactly when not whole cents
    ("$99.9995" after $0.0005 served, not "$100.00"), tokens rounded down with their dollars
    at the Oracle's TWAP ("(no price yet)" while it has none)."""
    left = lot.capacity - lot.consumed if lot.status == 1 else 0
    if left and unsettled_usd and lot.face_value:
        left = max(0, left - -(-unsettled_usd * lot.capacity // lot.face_value))
    if lot.kind == 1:  # KIND_TOKENIZED: tokens
        symbol = next(
            (n.split(":", 1)[1] for n, c in chain.deployment.contracts.items()
             if n.startswith("token:") and c.address.lower() == lot.token.lower()),
            "tokens",
        )  # fmt: skip
        return token_value_text(left, symbol, chain.twap(lot.token), rounding="down")
    return usd_text(left, exact=bool(left % (USD_MICRO // 100)))


def _sync(store: SellerStore, state: LotState, lot: ChainLot, now: int) -> LotState:
    """Move the lot's state forward to what the chain says now."""
    said = lot.state
    if said == state.state or _ORDER.get(said, 0) <= _ORDER.get(state.state, -1):
        return state
    assert state.chain_lot_id is not None
    moved = store.set_chain_state(state.chain_lot_id, said, now, close_at=lot.close_at or None, reason=state.reason)
    return moved or state


def lot_rows(store: SellerStore, chain: SellerChain | None, now: int, *, seller: str | None = None) -> list[LotRow]:
    """Every lot of this gateway (or of `seller`), its state as the chain says it (read
    now when `chain` is given) and why it is or is not routed."""
    states = store.states()
    unsettled = store.unsettled() if chain is not None else {}
    rows = []
    for lot in store.gateway.lots():
        if seller is not None and lot.seller.lower() != seller.lower():
            continue
        state = states.get(lot.id)
        remaining = "—"
        if state is not None and state.chain_lot_id is not None and chain is not None:
            on_chain = chain.lot(state.chain_lot_id)
            state = _sync(store, state, on_chain, now)
            remaining = _remaining(chain, on_chain, unsettled.get(lot.id, 0))
        if state is None:
            name, why = "requested", "interrupted before open_lot was sent; it serves nothing"
        else:
            name = state.state
            why = state.why_not_routed(now) or f"routed until {_when(state.route_until)}"
            if name == CLOSING and state.close_at:
                why = f"close requested; finalize from {_when(state.close_at)}"
        rows.append(
            LotRow(
                lot.id,
                None if state is None else state.chain_lot_id,
                lot.provider,
                lot.kind,
                lot.seller,
                name,
                lot.face_value_usd_micro,
                remaining,
                lot.expires_at,
                why,
            )
        )
    return rows


@dataclass
class Closing:
    """Closes a seller's lots with the seller's key."""

    store: SellerStore
    chain: SellerChain
    tx_timeout: float = 120.0
    clock: Callable[[], int] = lambda: int(time.time())

    def _send(self, signer: Web3Sender, purpose: str, call: Call) -> str:
        reason = signer.simulate(call)
        if reason is not None:
            raise CloseRefused(f"{call.function} would fail: {reason}")
        tx = self.store.store_tx(purpose, signer.sign(call, signer.pending_nonce()), signer.sender, self.clock())
        return self._broadcast(signer, tx)

    def _broadcast(self, signer: Web3Sender, tx: txlog.StoredTx) -> str:
        try:
            status = txlog.broadcast_stored(tx, signer, self.store.close_tx, self.clock, self.tx_timeout, _no_crash)
        except TxPending:
            raise CloseRefused(f"{tx.purpose} {tx.tx_hash} is not mined yet: run the command again shortly") from None
        if status != SUCCEEDED:
            raise CloseRefused(f"{tx.purpose} {tx.tx_hash} was {status}")
        return tx.tx_hash

    def close(self, chain_lot_id: int) -> list[str]:
        """Request the close of an open lot, or finalize a closing one whose delay is over.
        Returns what happened, in lines for a person; CloseRefused says why not."""
        state = self.store.by_chain_lot(chain_lot_id)
        if state is None:
            raise CloseRefused(f"lot {chain_lot_id} is not a lot of this gateway (`promptex seller lots`)")
        if not self.chain.closes_in_two_steps():
            raise CloseRefused(
                f"CreditEscrow {self.chain.escrow_address()} has no request_close: redeploy the contracts "
                "(`promptex up --fresh`) to close lots from here"
            )
        signer = self.chain.seller
        if signer is None:
            raise CloseRefused(
                "pass --account ALIAS (the seller's ape account) or set PROMPTEX_SELLER_PRIVATE_KEY to the seller's "
                "key: closing a lot is the seller's"
            )
        lot = self.chain.lot(chain_lot_id)
        if Web3.to_checksum_address(lot.seller) != Web3.to_checksum_address(signer.sender):
            raise CloseRefused(f"lot {chain_lot_id} is {lot.seller}'s, not {signer.sender}'s")
        state = _sync(self.store, state, lot, self.clock())
        if lot.state == OPEN:
            return self._request(signer, state, chain_lot_id)
        if lot.state == CLOSING:
            now = self.chain.now()
            if now < lot.close_at:
                raise CloseRefused(
                    f"lot {chain_lot_id} is closing and serves nothing; finalize_close is due from "
                    f"{_when(lot.close_at)}: run this command again then"
                )
            return self._finalize(signer, lot)
        raise CloseRefused(f"lot {chain_lot_id} is {lot.state} already")

    def finalize_due(self) -> tuple[list[str], int | None]:
        """Finalize every lot of the signer (PROMPTEX_SELLER_PRIVATE_KEY) whose close delay
        is over, so a close finishes without the seller coming back for it (`promptex
        seller finalize --watch` runs this every few seconds). Returns what happened, in
        lines for a person (a lot refused is said and the others still run), and when the
        next closing lot is due (None: none is closing)."""
        signer = self.chain.seller
        if signer is None:
            raise CloseRefused(
                "pass --account ALIAS (the seller's ape account) or set PROMPTEX_SELLER_PRIVATE_KEY to the seller's "
                "key: finalizing is the seller's"
            )
        if not self.chain.closes_in_two_steps():
            return [], None
        me = Web3.to_checksum_address(signer.sender)
        lines: list[str] = []
        next_due: int | None = None
        now = self.chain.now()
        for state in self.store.states().values():
            if state.chain_lot_id is None or state.state not in (OPEN, CLOSING):
                continue  # never opened, or ended (the chain said so)
            lot = self.chain.lot(state.chain_lot_id)
            if Web3.to_checksum_address(lot.seller) != me or lot.state != CLOSING:
                continue
            _sync(self.store, state, lot, self.clock())
            if now < lot.close_at:
                next_due = lot.close_at if next_due is None else min(next_due, lot.close_at)
                continue
            try:
                lines += self._finalize(signer, lot)
            except CloseRefused as exc:
                lines.append(f"lot {lot.lot_id}: not finalized: {exc}")
        return lines, next_due

    def _request(self, signer: Web3Sender, state: LotState, chain_lot_id: int) -> list[str]:
        call = self.chain.request_close_call(chain_lot_id)
        reason = signer.simulate(call)
        if reason is not None:
            raise CloseRefused(f"request_close would fail: {reason}")
        signed = signer.sign(call, signer.pending_nonce())
        tx = self.store.store_close(chain_lot_id, signed, signer.sender, self.clock())
        try:
            self._broadcast(signer, tx)
        except CloseRefused:
            if self.store.tx(tx.id).status != txlog.SENT:  # it will never land: routed again
                self.store.set_chain_state(chain_lot_id, OPEN, self.clock(), reason=state.reason)
            raise
        close_at = self.chain.lot(chain_lot_id).close_at
        self.store.set_chain_state(
            chain_lot_id, CLOSING, self.clock(), close_at=close_at, reason=f"close requested in {tx.tx_hash}"
        )
        return [
            f"lot {chain_lot_id}: close requested in {tx.tx_hash}; it is no longer routed",
            f"finalize_close is due from {_when(close_at)}: run `promptex seller close {chain_lot_id}` again "
            "then to take back the rest of the bond (or leave `promptex seller finalize --watch` running)",
        ]

    def _finalize(self, signer: Web3Sender, lot: ChainLot) -> list[str]:
        lines = []
        share = self.chain.token_share_to_return(lot)
        if share:
            symbol = next(
                n.split(":", 1)[1] for n, c in self.chain.deployment.contracts.items()
                if n.startswith("token:") and c.address.lower() == lot.token.lower()
            )  # fmt: skip
            token_sender, approve = self.chain.token_approve_call(symbol, share)
            approve_tx = self._send(token_sender, "approve_tokens", approve)
            lines.append(f"approved {money(share, symbol)} (the seller's share) in {approve_tx}")
        before = self.chain.usdc_balance(signer.sender)
        tx = self._send(signer, "finalize_close", self.chain.finalize_close_call(lot.lot_id))
        released = self.chain.usdc_balance(signer.sender) - before
        self.store.set_chain_state(lot.lot_id, CLOSED, self.clock(), reason=f"closed in {tx}")
        lines.append(f"lot {lot.lot_id}: closed in {tx}; bond released to the seller: {money(released, USDC_SYMBOL)}")
        return lines


def _no_crash(_step: str) -> None:
    """Closing has no kill -9 test hook."""


__all__ = ["CloseRefused", "Closing", "LotRow", "lot_rows"]
