"""Signed mode's settlements (issue 23): the next `settle_signed` batch of lane debits.

Per lane of an account's session, the coordinator debits what the ledger charged on it
and no batch has taken yet — the lane's pending signed-mode records — covered by the
highest voucher the gateway stored for the lane: what the chain settled on the lane plus
the debit stays within the voucher's ceiling, else the records past it are held back
(the vault would refuse the whole batch). A record of a session that is no longer the
account's current one can never settle (the vault takes only the current session's
vouchers). A batch holds each lane at most once, at most `max_entries` lanes and
`MAX_LOTS` lots; the rest wait for the next batch of the same window. Its credits, burn
and fee come from the same records exactly as a capped batch's (`plan.aggregate`), its
usage root from their leaves (`plan.usage_tree`).

Pure arithmetic: no database, no chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from promptex.coordinator.plan import Entry
from promptex.protocol.vault import MAX_LOTS, MAX_SIGNED_ENTRIES


@dataclass(frozen=True)
class LaneVoucher:
    """A lane as the books know it: the highest voucher stored and what the chain settled."""

    address: str  # the wallet debited
    session: int
    lane: int
    ceiling: int
    signature: bytes  # 65 bytes r ‖ s ‖ v, signed by the session key
    settled: int


@dataclass(frozen=True)
class Signed:
    """A prepared record and the voucher (session, lane) it was charged under."""

    entry: Entry
    session: int
    lane: int


@dataclass(frozen=True)
class LaneDebit:
    """One entry of a batch: the lane's debit and the voucher that covers it."""

    address: str
    lane: int
    ceiling: int
    amount: int
    signature: bytes
    request_ids: tuple[str, ...]


@dataclass(frozen=True)
class SignedBatch:
    debits: list[LaneDebit]  # sorted by (address, lane), as the vault requires
    entries: list[Entry]  # the records it settles, oldest first

    @property
    def total(self) -> int:
        return sum(debit.amount for debit in self.debits)


def next_batch(
    records: Sequence[Signed],
    vouchers: Mapping[tuple[str, int], LaneVoucher],
    *,
    max_entries: int = MAX_SIGNED_ENTRIES,
    max_lots: int = MAX_LOTS,
) -> tuple[SignedBatch | None, dict[str, str]]:
    """(the next batch, or None; why each record that can never settle as it is waits).

    `records`: pending signed records, oldest first. `vouchers`: per (wallet, lane) of each
    account's CURRENT session. Lanes go into the batch in the order of their oldest record
    until it holds `max_entries` lanes or `max_lots` lots; each lane with all of its
    records that its voucher covers, oldest first."""
    held: dict[str, str] = {}
    lanes: dict[tuple[str, int], list[Entry]] = {}
    for record in records:
        e = record.entry
        voucher = vouchers.get((e.address, record.lane))
        if voucher is None or voucher.session != record.session:
            held[e.request_id] = (
                f"charged under session {record.session}, which is no longer {e.address}'s current session: "
                "the vault settles only the current session's vouchers"
            )
            continue
        lanes.setdefault((e.address, record.lane), []).append(e)
    debits: list[LaneDebit] = []
    entries: list[Entry] = []
    lots: set[int] = set()
    for key, lane_entries in lanes.items():
        voucher = vouchers[key]
        room = voucher.ceiling - voucher.settled
        taken: list[Entry] = []
        amount = 0
        for e in lane_entries:
            if amount + e.cost > room:
                held[e.request_id] = (
                    f"lane {voucher.lane} of {voucher.address} would be debited beyond its highest voucher "
                    f"({voucher.ceiling}, {voucher.settled} settled already)"
                )
                continue
            amount += e.cost
            taken.append(e)
        if not taken:
            continue
        more_lots = {e.lot_id for e in taken} - lots
        if len(debits) == max_entries or len(lots) + len(more_lots) > max_lots:
            continue  # the next batch
        lots |= more_lots
        entries.extend(taken)
        if amount:
            debits.append(
                LaneDebit(voucher.address, voucher.lane, voucher.ceiling, amount, voucher.signature,
                          tuple(e.request_id for e in taken))
            )  # fmt: skip
    if not entries:
        return None, held
    debits.sort(key=lambda d: (int(d.address, 16), d.lane))
    return SignedBatch(debits, entries), held
