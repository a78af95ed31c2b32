"""The sellers' tables: every transaction the tokenize/list path signs — the attestor's
open_lot, the seller's bond approval, request_close and finalize_close — stored before it
is broadcast (migration 0012; the log and its rules are `chain.txlog`'s); and the
attestor's reviews of lot health (migration 0016, see `sellers.attestor`). A lot's own
state is the ledger's (`ledger.lots`): the indexer and the gateway read it too.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, String, Table

from promptex.chain.txlog import signed_txs
from promptex.ledger.metadata import BigId, metadata

seller_txs = signed_txs("seller_txs")

# ─── The attestor's reviews of lot health (migration 0016) ───────────────────

# Each lot's health counts as the attestor's last review read them: the next review judges
# only what happened since (a lot that failed a month ago and healed is not reported again).
attestor_reviews = Table(
    "attestor_lot_reviews",
    metadata,
    Column("lot_id", Integer, primary_key=True, autoincrement=False),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("reviewed_at", BigInteger, nullable=False),
)

# A report the attestor acts on by hand: at most one open per lot, refreshed by each review
# that still finds the lot failing; closed only by a person (`promptex attestor resolve`).
attestor_reports = Table(
    "attestor_reports",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("lot_id", Integer, nullable=False, index=True),
    Column("chain_lot_id", BigInteger, nullable=True),  # the escrow's lot, what a slash would name
    Column("seller", String(42), nullable=False),
    Column("reasons", String(400), nullable=False),  # "; "-joined, for a person
    Column("requests", BigInteger, nullable=False),  # upstream calls in the reviews that found it failing
    Column("errors", BigInteger, nullable=False),
    Column("key_refused_at", BigInteger, nullable=True),
    Column("opened_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # open | dismissed | slashed
    Column("resolved_at", BigInteger, nullable=True),
    Column("note", String(400), nullable=True),  # the person's: why dismissed, or the slash's tx
)
