"""Turning settled usage records into one settlement: per-payer debits, per-lot credits
(USDC: the listed lot's seller share, plus the protocol fee) or draws (a provider token:
the tokenized lot's draw-down, burned), the escrow draw-downs of listed lots at list
price, and the Merkle tree of the records. Pure arithmetic: no database, no chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from promptex.coordinator.chain import LotInfo
from promptex.ledger.usage import StoredUsage
from promptex.metering import split_usdc_charge
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, STATUS_OPEN
from promptex.protocol.merkle import Leaf, MerkleTree
from promptex.protocol.vault import DEBIT_AMOUNT_BITS, MAX_ENTRIES, MAX_LOTS, pack_debits, pack_lot_amount

LOT_KINDS = {"tokenized": KIND_TOKENIZED, "listed": KIND_LISTED}


@dataclass(frozen=True)
class Entry:
    """A usage record with what planning decided: the wallet debited and, for USDC, the split."""

    request_id: str
    payer: int
    address: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: int
    lot_id: int
    list_usd_micro: int
    seller_share: int  # USDC: to the listed lot's seller; a provider token: the lot draw
    fee: int

    def leaf(self) -> Leaf:
        return Leaf(
            self.request_id,
            self.address,
            self.model,
            self.input_tokens,
            self.output_tokens,
            self.cost,
            self.lot_id,
        )


@dataclass
class Payload:
    """The arguments of `settle` (as dicts) and the listed lots' escrow draw-downs."""

    debits: dict[str, int] = field(default_factory=dict)  # address → amount
    credits: dict[int, int] = field(default_factory=dict)  # listed lot → seller share
    draws: dict[int, int] = field(default_factory=dict)  # tokenized lot → tokens burned
    fee: int = 0
    consumes: dict[int, int] = field(default_factory=dict)  # listed lot → USD micro at list price

    @property
    def total(self) -> int:
        return sum(self.debits.values())

    def words(self) -> tuple[list[int], list[int], list[int]]:
        return (
            pack_debits({a: v for a, v in self.debits.items() if v}),
            [pack_lot_amount(lot, v) for lot, v in sorted(self.credits.items()) if v],
            [pack_lot_amount(lot, v) for lot, v in sorted(self.draws.items()) if v],
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "debits": self.debits,
                "credits": {str(k): v for k, v in self.credits.items()},
                "draws": {str(k): v for k, v in self.draws.items()},
                "fee": self.fee,
                "consumes": {str(k): v for k, v in self.consumes.items()},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Payload:
        d = json.loads(text)
        return cls(
            debits=dict(d["debits"]),
            credits={int(k): v for k, v in d["credits"].items()},
            draws={int(k): v for k, v in d["draws"].items()},
            fee=int(d["fee"]),
            consumes={int(k): v for k, v in d["consumes"].items()},
        )


def aggregate(entries: Iterable[Entry], *, spend_only: bool) -> Payload:
    """Sum entries into one settlement; conservation holds by construction
    (Σ debits = Σ credits + fee + Σ draws, entry by entry)."""
    p = Payload()
    for e in entries:
        p.debits[e.address] = p.debits.get(e.address, 0) + e.cost
        if spend_only:
            p.draws[e.lot_id] = p.draws.get(e.lot_id, 0) + e.cost
        else:
            p.credits[e.lot_id] = p.credits.get(e.lot_id, 0) + e.seller_share
            p.fee += e.fee
            if e.list_usd_micro:
                p.consumes[e.lot_id] = p.consumes.get(e.lot_id, 0) + e.list_usd_micro
    return p


def usage_tree(entries: Iterable[Entry]) -> MerkleTree:
    return MerkleTree([e.leaf().hash() for e in entries])


def prepare(record: StoredUsage, wallet: str | None, *, spend_only: bool) -> Entry | str:
    """The record as a batch entry, or why it cannot be settled (a quarantine reason)."""
    if record.chain_lot_id is None:
        lot = f"gateway lot {record.gateway_lot_id}" if record.gateway_lot_id is not None else "an unknown lot"
        return f"served by {lot}, which has no on-chain lot id (never opened on CreditEscrow)"
    wanted = "tokenized" if spend_only else "listed"
    if record.lot_kind != wanted:
        return f"{record.asset} usage must be served by a {wanted} lot, lot {record.chain_lot_id} is {record.lot_kind}"
    if wallet is None:
        return f"payer account {record.payer} has no bound wallet to debit"
    if record.cost >= 2**DEBIT_AMOUNT_BITS:
        return f"cost {record.cost} does not fit a debit word"
    seller, fee = record.cost, 0
    if not spend_only:
        if record.fee_bps is None:
            return "a USDC record without its protocol fee rate cannot be split"
        seller, fee = split_usdc_charge(record.cost, record.fee_bps)
    return Entry(
        request_id=record.request_id,
        payer=record.payer,
        address=wallet,
        model=record.model,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cost=record.cost,
        lot_id=record.chain_lot_id,
        list_usd_micro=record.list_usd_micro,
        seller_share=seller,
        fee=fee,
    )


def lot_problem(lot: LotInfo, *, spend_only: bool, asset_address: str) -> str | None:
    """Why the vault (or escrow) would refuse to pay or draw this lot, read from its state."""
    if lot.status != STATUS_OPEN:
        return f"lot is not open (status {lot.status})"
    if spend_only and (lot.kind != KIND_TOKENIZED or lot.token.lower() != asset_address.lower()):
        return "lot is not a tokenized lot of this token"
    if not spend_only and lot.kind != KIND_LISTED:
        return "lot is not a listed lot"
    return None


def fit(entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """(what fits one settlement, what waits for the next): at most MAX_ENTRIES payers
    and MAX_LOTS lots, oldest records first (the caller passes them in that order)."""
    payers: set[str] = set()
    lots: set[int] = set()
    now: list[Entry] = []
    later: list[Entry] = []
    for e in entries:
        if (e.address in payers or len(payers) < MAX_ENTRIES) and (e.lot_id in lots or len(lots) < MAX_LOTS):
            payers.add(e.address)
            lots.add(e.lot_id)
            now.append(e)
        else:
            later.append(e)
    return now, later
