"""The sellers' table (migration 0012): every transaction the tokenize/list path signs —
the attestor's open_lot, the seller's bond approval, request_close and finalize_close —
stored before it is broadcast (the log and its rules are `chain.txlog`'s). A lot's own
state is the ledger's (`ledger.lots`): the indexer and the gateway read it too.
"""

from __future__ import annotations

from promptex.chain.txlog import signed_txs

seller_txs = signed_txs("seller_txs")
