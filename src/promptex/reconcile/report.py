"""A reconciliation's result: per subject (an account's balance in an asset, a pending
exit, a seller's claimable, a lot's draw-down, a redemption), what the books say, what
the chain says, and the named records that explain the difference. Pure data.

A difference is chain − books. Each explanation names one record (a request id, a debt,
a transaction hash, a batch) and carries the signed amount it accounts for; what they do
not add up to is unexplained, and any unexplained amount fails the reconciliation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from promptex.protocol.units import money, usd_text

BALANCE, EXIT, CLAIMABLE, LOT, REDEMPTION = "balance", "pending exit", "claimable", "lot", "redemption"
LIST_USD = "USD at list"  # a listed lot's draw-downs: USD micro-units of list price


@dataclass(frozen=True)
class Explanation:
    kind: str  # e.g. "unsettled request", "debt", "release in flight"
    ref: str  # the record: a request id, "debt 4", a tx hash, "batch 7"
    amount: int  # signed, in the row's asset's smallest unit
    note: str = ""


@dataclass
class Difference:
    section: str  # BALANCE, EXIT, CLAIMABLE, LOT or REDEMPTION
    subject: str  # "account 3 (0xAb…)", "lot 12", "redemption 5"
    asset: str  # the unit of the amounts: an asset symbol, or "USD micro" for listed lots
    books: int
    chain: int
    explanations: list[Explanation] = field(default_factory=list)

    @property
    def difference(self) -> int:
        return self.chain - self.books

    @property
    def explained(self) -> int:
        return sum(e.amount for e in self.explanations)

    @property
    def unexplained(self) -> int:
        return self.difference - self.explained

    def shown(self, amount: int) -> str:
        """An amount of this row for people (the one money formatter; --json is exact)."""
        return f"{usd_text(amount)} at list" if self.asset == LIST_USD else money(amount, self.asset)

    def to_json(self) -> dict[str, Any]:
        """Exact units, as strings (a JSON number past 2**53 is not exact everywhere)."""
        return {
            "section": self.section,
            "subject": self.subject,
            "asset": self.asset,
            "books": str(self.books),
            "chain": str(self.chain),
            "difference": str(self.difference),
            "explained_by": [
                {"kind": e.kind, "ref": e.ref, "amount": str(e.amount), "note": e.note} for e in self.explanations
            ],
            "unexplained": str(self.unexplained),
        }


@dataclass
class Report:
    block: int  # the block the chain was read at: the last one the indexer applied
    rows: list[Difference] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # section → subjects compared
    notes: list[str] = field(default_factory=list)  # e.g. reorgs rewound, what was not checked

    @property
    def differences(self) -> list[Difference]:
        """The rows where books and chain differ, or whose explanations do not add up."""
        return [row for row in self.rows if row.difference or row.explanations]

    @property
    def unexplained(self) -> list[Difference]:
        return [row for row in self.rows if row.unexplained]

    @property
    def ok(self) -> bool:
        return not self.unexplained

    def to_json(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "ok": self.ok,
            "checked": self.checked,
            "differences": [row.to_json() for row in self.differences],
            "unexplained": len(self.unexplained),
            "notes": self.notes,
        }
