"""The one tokenize/list path, used by `promptex seller add-capacity` and by the
dashboard's onboarding (`POST /api/seller/capacity`).

Everything that can be refused is checked before anything is stored or sent, and said in
one line (CapacityRefused): the terms, the key (one minimal upstream call), the attestor's
role, the bond (at least the escrow's minimum, held by the seller, approved to the escrow
for exactly that amount — approved here when the seller's key is given), a lot that would stop being routed at
once, and open_lot itself (simulated). Then:

    record the lot with its sealed key            state requested (serves nothing)
    sign open_lot, store it with the state        state opening   (serves nothing)
    broadcast, wait for the receipt               state open      (routed)  — or failed, with why

A lot is routed only once the chain has opened it, and only until its expiry less one
settlement epoch and a posting margin (`route_until`), so the usage it serves is settled
while the escrow still draws it. A crash after the open_lot is stored leaves the lot
`opening`: `resume` (run by every seller command) or the indexer's LotOpened finishes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx

from promptex import metering
from promptex.chain import txlog
from promptex.chain.sender import Web3Sender
from promptex.chain.txlog import DROPPED, REVERTED, SUCCEEDED, TxPending
from promptex.gateway.routing import TOKENIZED
from promptex.ledger.lots import OPENING
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.units import USDC_SYMBOL, money, usd_text
from promptex.sealing.envelope import MasterKeys
from promptex.sellers.chain import SellerChain
from promptex.sellers.store import SellerStore
from promptex.sellers.terms import Capacity, CapacityRefused, attestation, check_terms, probe_model, verify_key

CRASH_ENV = "PROMPTEX_SELLER_CRASH_AT"  # test hook: SIGKILL this process at the named step


class LotNotOpened(RuntimeError):
    """open_lot was sent and did not open the lot (reverted, or dropped): the lot is
    `failed` and serves nothing; the message says why."""


class LotPending(RuntimeError):
    """open_lot was sent but is not mined yet: the lot is `opening` and serves nothing
    until the chain confirms it (`resume`, or the indexer)."""


@dataclass(frozen=True)
class Onboarded:
    """A lot the chain opened: what the seller is told."""

    lot_id: int  # the gateway's
    chain_lot_id: int  # the escrow's
    tx: str  # the open_lot transaction
    provider: str
    kind: str
    token: str  # the provider token's symbol
    face_value_usd_micro: int
    bond_usdc: int
    minted: int  # provider tokens the seller received (tokenized; 18 decimals)
    fee: int  # provider tokens the treasury received (the mint fee)
    expires_at: int
    route_until: int
    approve_tx: str | None  # the bond approval this path sent, if any

    def summary(self) -> list[str]:
        """The readable summary: lot, face value in dollars, bond, tokens in whole units."""
        face = usd_text(self.face_value_usd_micro)
        lines = [
            f"lot {self.chain_lot_id} opened on chain (CreditEscrow) in {self.tx}; gateway lot {self.lot_id}",
            f"{self.kind} {self.provider} capacity: face value {face}",
            f"bond: {money(self.bond_usdc, USDC_SYMBOL)}"
            + (f" (approved in {self.approve_tx})" if self.approve_tx else ""),
        ]
        if self.kind == "tokenized":
            lines.append(
                f"minted: {money(self.minted, self.token)} to the seller (+ {money(self.fee, self.token)} mint fee)"
            )
        lines.append(
            f"routed until {_utc(self.route_until)} (expiry {_utc(self.expires_at)} less one settlement "
            "epoch and the posting margin)"
        )
        return lines

    def as_json(self) -> dict[str, object]:
        return {
            "lot": self.lot_id,
            "chain_lot_id": self.chain_lot_id,
            "tx": self.tx,
            "provider": self.provider,
            "kind": self.kind,
            "token": self.token,
            "face_value_usd_micro": self.face_value_usd_micro,
            "bond": self.bond_usdc,
            "minted": str(self.minted),
            "fee": str(self.fee),
            "expires_at": self.expires_at,
            "route_until": self.route_until,
            "approve_tx": self.approve_tx,
        }


def _usdc(amount: int) -> str:
    return money(amount, USDC_SYMBOL)


def _utc(moment: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment))


def _crash(step: str) -> None:
    txlog.crash_point(CRASH_ENV, step)


def _wall_clock() -> int:
    return int(time.time())


@dataclass
class Onboarding:
    """The tokenize/list path over one database and one chain."""

    store: SellerStore
    chain: SellerChain
    keys: MasterKeys
    catalog: metering.Catalog
    posting_margin: int  # seconds before expiry − one epoch that routing stops
    tx_timeout: float = 120.0
    clock: Callable[[], int] = _wall_clock
    # How the seller approves a bond this path cannot approve itself (no seller key given).
    approve_hint: str = (
        "from the seller's wallet, or pass --account ALIAS (its ape account) or set PROMPTEX_SELLER_PRIVATE_KEY "
        "to the seller's key so add-capacity approves it"
    )

    # ─── Checks (nothing stored, nothing sent) ───────────────────────────────

    def _attestor(self) -> Web3Sender:
        attestor = self.chain.attestor
        if attestor is None:
            raise CapacityRefused(
                "no attestor key to open lots with: set PROMPTEX_ATTESTOR_PRIVATE_KEY "
                "(an account with CreditEscrow's attestor role)"
            )
        if not self.chain.is_attestor(attestor.sender):
            raise CapacityRefused(
                f"{attestor.sender} is not an attestor of CreditEscrow {self.chain.escrow_address()}: "
                "set PROMPTEX_ATTESTOR_PRIVATE_KEY to an account with the role"
            )
        return attestor

    def _bond(self, capacity: Capacity) -> int:
        if capacity.kind == TOKENIZED:
            # Every token of a provider carries the same bond share (its failures are pooled),
            # so a tokenized lot's bond is exactly its token's share: no more, no less.
            token = self.chain.token_address(attestation(capacity)["token"])
            share = self.chain.tokenized_bond(token, capacity.face_value_usd_micro)
            if capacity.bond_usdc not in (0, share):
                raise CapacityRefused(
                    f"a tokenized lot's bond is exactly {_usdc(share)} for this face value (its token's "
                    "bond share; leave --bond out to post it)"
                )
            return share
        minimum = self.chain.min_bond(capacity.face_value_usd_micro)
        bond = capacity.bond_usdc or minimum
        if bond < minimum:
            raise CapacityRefused(
                f"the bond must be at least {_usdc(minimum)} for this face value (leave --bond out to post the minimum)"
            )
        return bond

    def route_until(self, expires_at: int, now: int) -> int:
        """When routing stops: one settlement epoch and the posting margin before expiry."""
        stop = self.chain.epoch_length() + self.posting_margin
        if expires_at - stop <= now:
            raise CapacityRefused(
                f"the lot would never be routed: it stops {stop} s before its expiry (one settlement "
                f"epoch, {stop - self.posting_margin} s, and the posting margin, {self.posting_margin} s), "
                "so its usage settles in time; choose a later expiry"
            )
        return expires_at - stop

    def _fund_bond(self, seller: str, bond: int) -> str | None:
        """The seller holds the bond and has approved exactly it to the escrow (the escrow
        opens a lot only against an allowance of exactly its bond, so no attestor can use a
        standing approval for a lot the seller never asked for); approves it with the
        seller's key when that is given. Returns the approval's tx hash, if one was sent."""
        held = self.chain.usdc_balance(seller)
        if held < bond:
            raise CapacityRefused(  # what to do: a new seller on the local market had no next step
                f"the seller {seller} holds {_usdc(held)}, the bond is {_usdc(bond)}: send it the USDC first "
                "(on a local market: `promptex wallet faucet --account ALIAS --amount N`)"
            )
        approved = self.chain.allowance(seller)
        if approved == bond:
            return None
        signer = self.chain.seller
        if signer is None or signer.sender.lower() != seller.lower():
            raise CapacityRefused(
                f"the seller {seller} has approved {_usdc(approved)} of the {_usdc(bond)} bond "
                f"to CreditEscrow {self.chain.escrow_address()}: approve it first (exactly that amount: "
                f"an allowance of any other amount opens nothing), {self.approve_hint}"
            )
        call = self.chain.approve_call(bond)
        reason = signer.simulate(call)
        if reason is not None:
            raise CapacityRefused(f"approving the bond would fail: {reason}")
        tx = self.store.store_tx("approve_bond", signer.sign(call, signer.pending_nonce()), signer.sender, self.clock())
        try:
            status = txlog.broadcast_stored(tx, signer, self.store.close_tx, self.clock, self.tx_timeout, _crash)
        except TxPending:
            raise CapacityRefused(f"the bond approval {tx.tx_hash} is not mined yet: try again shortly") from None
        if status != SUCCEEDED:
            raise CapacityRefused(f"the bond approval {tx.tx_hash} was {status}")
        return tx.tx_hash

    # ─── The path ────────────────────────────────────────────────────────────

    def add(
        self, capacity: Capacity, *, verify: bool = True, transport: httpx.BaseTransport | None = None
    ) -> Onboarded:
        """Check, approve, record, open; see the module's docstring. Raises CapacityRefused
        (nothing stored), LotNotOpened (the lot failed) or LotPending (still opening)."""
        check_terms(capacity, self.clock())  # what needs no chain first, then the key (a read)
        if verify:
            verify_key(capacity, probe_model(self.catalog, capacity.provider), transport=transport)
        now = self.chain.now()
        check_terms(capacity, now)
        attestor = self._attestor()
        bond = self._bond(capacity)
        route_until = self.route_until(capacity.expires_at, now)
        capacity = replace(capacity, bond_usdc=bond)
        att = attestation(capacity)
        token = self.chain.token_address(att["token"])
        # Tokenized lots join the token's draw order: the hint keeps any crowd of lots from
        # refusing the open (listed lots are not in it).
        hint = self.chain.insert_hint(token, int(att["expiry"])) if att["kind"] == KIND_TOKENIZED else 0
        call = self.chain.open_lot_call(att, token, hint)
        approve_tx = self._fund_bond(capacity.seller, bond)
        reason = attestor.simulate(call)
        if reason is not None:
            raise CapacityRefused(f"CreditEscrow refuses the lot: {reason}")

        lot_id = self.store.record_lot(self.keys, capacity, route_until=route_until, now=self.clock())
        _crash("recorded")
        try:
            signed = attestor.sign(call, attestor.pending_nonce())
        except Exception as exc:  # the chain moved between the simulation and the estimate
            self.store.fail(lot_id, f"open_lot could not be signed: {exc}", self.clock())
            raise LotNotOpened(f"lot {lot_id} was not opened: open_lot could not be signed ({exc})") from None
        tx = self.store.store_open(lot_id, signed, attestor.sender, self.clock())
        try:
            status = txlog.broadcast_stored(tx, attestor, self.store.close_tx, self.clock, self.tx_timeout, _crash)
        except TxPending:
            raise LotPending(
                f"open_lot {tx.tx_hash} is not mined yet: lot {lot_id} serves nothing until the chain "
                "confirms it (`promptex seller lots` shows it)"
            ) from None
        if status != SUCCEEDED:
            self.store.fail(lot_id, f"open_lot {status} in {tx.tx_hash}", self.clock())
            raise LotNotOpened(f"lot {lot_id} was not opened: open_lot {status} in {tx.tx_hash}; it serves nothing")
        opened = self.chain.opened(tx.tx_hash)
        self.store.confirm_open(lot_id, opened.lot_id, self.clock())
        self.store.gateway.set_attestation(lot_id, json.dumps(att), tx.tx_hash, chain_lot_id=opened.lot_id)
        return Onboarded(
            lot_id=lot_id,
            chain_lot_id=opened.lot_id,
            tx=tx.tx_hash,
            provider=capacity.provider,
            kind=capacity.kind,
            token=str(att["token"]),
            face_value_usd_micro=capacity.face_value_usd_micro,
            bond_usdc=bond,
            minted=opened.seller_amount if att["kind"] == KIND_TOKENIZED else 0,
            fee=opened.fee if att["kind"] == KIND_TOKENIZED else 0,
            expires_at=capacity.expires_at,
            route_until=route_until,
            approve_tx=approve_tx,
        )

    def resume(self) -> int:
        """Finish lots left `opening` (a crash, or a receipt not seen in time) from their
        stored open_lot: open, failed, or still opening. Returns how many changed. One
        another attestor key signed (the attestor rotated since) is finished too: its
        receipt read, its stored bytes sent again if the chain has none (anyone may send
        them, `txlog.send_others`), or found dropped by that account's nonce (its nonce went
        to another transaction: failed, serving nothing). One the node refuses (that account
        out of gas) stays `opening`, serving nothing, until its receipt."""
        changed = 0
        for lot in self.store.states().values():
            if lot.state != OPENING:
                continue
            tx = self.store.open_tx_of(lot)
            if tx is None:
                continue
            try:
                status = self._resolve_open(tx)
            except TxPending:
                continue
            if status == SUCCEEDED:
                opened = self.chain.opened(tx.tx_hash)
                self.store.confirm_open(lot.lot_id, opened.lot_id, self.clock())
                self.store.gateway.set_chain_lot_id(lot.lot_id, opened.lot_id)
            elif status in (REVERTED, DROPPED):
                self.store.fail(lot.lot_id, f"open_lot {status} in {tx.tx_hash}", self.clock())
            changed += 1
        return changed

    def _resolve_open(self, tx: txlog.StoredTx) -> str:
        """A stored open_lot's final status; TxPending while it has none (or no key is
        given to reach the chain with)."""
        attestor = self.chain.attestor
        if attestor is not None and (tx.sender or "").lower() == attestor.sender.lower():
            return txlog.resolve_tx(tx, attestor, self.store.close_tx, self.clock, self.tx_timeout)
        door = attestor or self.chain.seller  # another key's: any sender reads and sends
        if door is None:
            raise TxPending(f"open_lot tx {tx.tx_hash} of key {tx.sender}")
        receipt = door.receipt(tx.tx_hash)
        if receipt is None and tx.sender is not None and door.nonce_of(tx.sender) > tx.nonce:
            # Its nonce went to another transaction of that key, or it was mined a moment ago:
            # a short grace for the receipt, then dropped (that account's nonce proves it).
            receipt = door.wait(tx.tx_hash, min(self.tx_timeout, txlog.DROP_GRACE_SECONDS))
            if receipt is None:
                self.store.close_tx(tx.id, DROPPED, None, self.clock())
                return DROPPED
        if receipt is None and txlog.send_others(door, tx):
            receipt = door.receipt(tx.tx_hash)  # read at once, not waited for: that key may hold a gap before it
        if receipt is None:
            raise TxPending(f"open_lot tx {tx.tx_hash} of key {tx.sender} (nonce {tx.nonce})")
        status = SUCCEEDED if receipt.ok else REVERTED
        self.store.close_tx(tx.id, status, receipt.block_number, self.clock(), receipt.block_hash)
        return status
