"""Turning settled usage records into one settlement: per-payer debits, and what the
vault's `settle` draws from the escrow in the same call — for USDC, each listed lot's
capacity at list price (the escrow pays its seller the lot's rate of it), plus the
protocol fee; for a provider token, the burn (the escrow draws that much of the
token's tokenized lots, nearest expiry first) — and the Merkle tree of the records.
Each lot's draw is capped at what the chain says it has left, so one overdrawn lot
never reverts a batch: the records past it are quarantined. Pure arithmetic: no
database, no chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from promptex.coordinator.chain import LotInfo
from promptex.ledger.usage import StoredUsage
from promptex.metering import split_usdc_charge
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, SETTLEMENT_GRACE, STATUS_OPEN, listed_credit
from promptex.protocol.merkle import LEAF_VERSION, Leaf, MerkleTree
from promptex.protocol.units import BPS, money, usd_text
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
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0

    def leaf(self) -> Leaf:
        """Its leaf in a new batch's tree (the current version, `LEAF_VERSION`)."""
        return Leaf(
            self.request_id,
            self.address,
            self.model,
            self.input_tokens,
            self.output_tokens,
            self.cost,
            self.lot_id,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cache_write_1h_tokens,
            self.reasoning_tokens,
            version=LEAF_VERSION,
        )


@dataclass
class Payload:
    """The arguments of `settle` (as dicts)."""

    debits: dict[str, int] = field(default_factory=dict)  # address → amount
    credits: dict[int, int] = field(default_factory=dict)  # listed lot → capacity drawn, USD micro at list price
    burn: int = 0  # provider token: burned, and drawn from its tokenized lots
    fee: int = 0
    # Signed mode (`settle_signed`, issue 23): per lane, (wallet, lane, ceiling, amount,
    # 0x voucher signature); `debits` then holds each wallet's total over its lanes.
    signed: list[tuple[str, int, int, int, str]] = field(default_factory=list)
    # A FAILED batch's request ids, kept when its records are let go: should its settle land
    # after all (a reorg, then the network re-includes it), exactly these go back to it.
    members: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.debits.values())

    def words(self) -> tuple[list[int], list[int]]:
        return (
            pack_debits({a: v for a, v in self.debits.items() if v}),
            [pack_lot_amount(lot, v) for lot, v in sorted(self.credits.items()) if v],
        )

    def to_json(self) -> str:
        body: dict[str, object] = {
            "debits": self.debits,
            "credits": {str(k): v for k, v in self.credits.items()},
            "burn": self.burn,
            "fee": self.fee,
        }
        if self.signed:
            body["signed"] = [list(lane) for lane in self.signed]
        if self.members:
            body["members"] = self.members
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Payload:
        d = json.loads(text)
        # Batches planned before the vault drew lots itself stored per-lot "draws" (the
        # burn) and the listed lots' "consumes" beside the seller "credits"; they are all
        # closed, so reading them back only needs to keep the totals.
        burn = int(d["burn"]) if "burn" in d else sum(d.get("draws", {}).values())
        credits = d.get("consumes", d["credits"]) if "burn" not in d else d["credits"]
        return cls(
            debits=dict(d["debits"]),
            credits={int(k): v for k, v in credits.items()},
            burn=burn,
            fee=int(d["fee"]),
            signed=[
                (str(a), int(lane), int(c), int(amount), str(sig)) for a, lane, c, amount, sig in d.get("signed", [])
            ],
            members=[str(r) for r in d.get("members", [])],
        )


def _most_drawable(consumed_before: int, paid: int, rate_bps: int) -> int:
    """The largest draw whose seller credit is at most `paid`."""
    ceiling = consumed_before * rate_bps // BPS + paid  # floor((c + k) × rate) may reach this
    return ((ceiling + 1) * BPS - 1) // rate_bps - consumed_before


def aggregate(entries: Iterable[Entry], *, spend_only: bool, lots: Mapping[int, LotInfo]) -> Payload:
    """Sum entries into one settlement that balances as the vault checks it:
    Σ debits == Σ seller credits + fee (USDC) or == burn (a provider token).

    A listed lot draws the list value its records served; the escrow pays its seller
    the lot's on-chain rate of that. When that credit would exceed what the lot's
    records paid (a run of tiny requests, each list value rounded up), the draw is
    lowered until it does not, so the fee never goes negative."""
    p = Payload()
    drawn: dict[int, int] = {}
    paid: dict[int, int] = {}
    for e in entries:
        p.debits[e.address] = p.debits.get(e.address, 0) + e.cost
        if spend_only:
            p.burn += e.cost
        else:
            drawn[e.lot_id] = drawn.get(e.lot_id, 0) + e.list_usd_micro
            paid[e.lot_id] = paid.get(e.lot_id, 0) + e.cost
    credited = 0
    for lot_id, amount in drawn.items():
        lot = lots[lot_id]
        amount = min(amount, _most_drawable(lot.consumed, paid[lot_id], lot.rate_bps))
        if amount > 0:
            p.credits[lot_id] = amount
            credited += listed_credit(lot.consumed, amount, lot.rate_bps)
    if not spend_only:
        p.fee = p.total - credited
    return p


def usage_tree(entries: Iterable[Entry]) -> MerkleTree:
    """The tree of a new batch: leaves of version `LEAF_VERSION`, as `plan` records."""
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
        cache_read_tokens=record.cache_read_tokens,
        cache_write_tokens=record.cache_write_tokens,
        cache_write_1h_tokens=record.cache_write_1h_tokens,
        reasoning_tokens=record.reasoning_tokens,
    )


def lot_problem(lot: LotInfo, *, spend_only: bool, asset_address: str, now: int) -> str | None:
    """Why the vault (or escrow) would refuse to pay for usage this lot served, from its state.
    A provider token's usage is drawn from its tokenized lots nearest expiry first, so the
    lot that served only has to be one of that token's; a listed lot is drawn itself."""
    if spend_only:
        if lot.kind != KIND_TOKENIZED or lot.token.lower() != asset_address.lower():
            return "lot is not a tokenized lot of this token"
        return None
    if lot.kind != KIND_LISTED:
        return "lot is not a listed lot"
    if lot.status != STATUS_OPEN:
        return f"lot is not open (status {lot.status})"
    if now > lot.expiry + SETTLEMENT_GRACE:
        return "lot expired past its settlement grace"
    return None


def fit_capacity(
    entries: list[Entry], *, spend_only: bool, lots: Mapping[int, LotInfo], drawable: int, asset: str = "CREDIT"
) -> tuple[list[Entry], dict[str, str]]:
    """(the entries whose draws fit what the chain has left, why each other one waits):
    a listed lot draws at most its remaining capacity, a provider token's burn at most
    its tokenized lots' drawable total. Oldest records first; the rest stay quarantined
    (the books resolve them), so one overdrawn lot never reverts the whole batch. `asset`
    (the provider token's symbol) names amounts in the reasons people read."""
    left = {lot_id: lot.capacity - lot.consumed for lot_id, lot in lots.items()}
    fits: list[Entry] = []
    over: dict[str, str] = {}
    for e in entries:
        if spend_only:
            if e.cost > drawable:
                over[e.request_id] = (
                    f"the token's drawable capacity ({money(drawable, asset, rounding='down')} left) "
                    f"cannot cover {money(e.cost, asset, rounding='up')}"
                )
                continue
            drawable -= e.cost
        else:
            if e.list_usd_micro > left[e.lot_id]:
                over[e.request_id] = (
                    f"lot {e.lot_id} has {usd_text(left[e.lot_id], rounding='down')} of capacity left at list price, "
                    f"this record draws {usd_text(e.list_usd_micro, rounding='up')}"
                )
                continue
            left[e.lot_id] -= e.list_usd_micro
        fits.append(e)
    return fits, over


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
