"""`promptex reconcile`: the books (ledger, coordinator, agent) against the chain (vault,
escrow, RedemptionEscrow) at the block the indexer last applied; every difference is
explained by named records whose amounts add up to it exactly, or the reconciliation
fails. `compare` does the comparing, `chain` the reading, `report` holds the result."""

from promptex.reconcile.compare import reconcile, summary
from promptex.reconcile.report import Difference, Explanation, Report

__all__ = ["Difference", "Explanation", "Report", "reconcile", "summary"]
