"""The coordinator's tables (migration 0003): the transactions it signed, settlement
batches, listed lots' escrow draw-downs, user-signed spend caps waiting to be
registered, and the leader lease. On the one MetaData of `ledger.metadata`; the usage
records it batches and the releases it signs are the ledger's (`ledger.usage`,
`ledger.releases`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint

from promptex.chain.txlog import signed_txs
from promptex.ledger.amounts import Amount
from promptex.ledger.metadata import ADDRESS, ASSET, REASON, REF, metadata

# Every transaction the coordinator signs, stored before it is broadcast (the log and its
# rules are `chain.txlog`'s, shared with the agent's `agent.schema.agent_txs`).
coordinator_txs = signed_txs("coordinator_txs")

# One settlement per (asset, epoch): planned → submitted → confirmed (or failed, its
# records back to pending, when its transaction can no longer land).
settlement_batches = Table(
    "settlement_batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("asset", String(ASSET), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("usage_root", String(66), nullable=False),
    # The version of the usage leaves under `usage_root` (`protocol.merkle`): 1 before
    # migration 0006, 2 for every batch planned since.
    Column("leaf_version", Integer, nullable=False, server_default="1"),
    Column("payload", Text, nullable=False),  # JSON: debits, credits, lot_draws, fee, consumes
    Column("total", Amount, nullable=False),
    Column("records", Integer, nullable=False),
    Column("tx_id", Integer, ForeignKey("coordinator_txs.id"), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger, nullable=True),
    Column("error", String(REASON), nullable=True),
    Index(None, "asset", "status"),
)

# The escrow draw-down of each listed lot a confirmed USDC batch paid (one per lot per epoch),
# from when the coordinator called the escrow's `consume` itself. Written no more: the vault's
# `settle` draws every lot in the same call. Kept so existing databases migrate unchanged.
lot_consumptions = Table(
    "lot_consumptions",
    metadata,
    Column("batch_id", Integer, ForeignKey("settlement_batches.id"), primary_key=True),
    Column("chain_lot_id", BigInteger, primary_key=True),
    Column("amount", Amount, nullable=False),  # USD micro-units of list price
    Column("status", String(16), nullable=False),  # pending | submitted | done | failed
    Column("tx_id", Integer, ForeignKey("coordinator_txs.id"), nullable=True),
    Column("error", String(REASON), nullable=True),
)


def _relayed(name: str, *signed: Column[Any]) -> Table:
    """A table of wallet-signed messages the coordinator relays to the vault: who signed,
    for which asset, the message's own fields (`signed`), its expiry, nonce and signature,
    and the relay's state (pending → submitted → registered, or rejected) with its
    transaction. One submission per (address, asset, nonce)."""
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("address", String(ADDRESS), nullable=False),
        Column("asset", String(ASSET), nullable=False),
        *signed,
        Column("expiry", BigInteger, nullable=False),
        Column("nonce", BigInteger, nullable=False),
        Column("signature", String(132), nullable=False),
        Column("status", String(16), nullable=False),  # pending | submitted | registered | rejected
        Column("tx_id", Integer, ForeignKey("coordinator_txs.id"), nullable=True),
        Column("error", String(REASON), nullable=True),
        Column("created_at", BigInteger, nullable=False),
        UniqueConstraint("address", "asset", "nonce"),
    )


# User-signed EIP-712 spend caps waiting for the coordinator to register them on chain.
spend_cap_submissions = _relayed(
    "spend_cap_submissions",
    Column("per_epoch", Amount, nullable=False),
    Column("total", Amount, nullable=False),
)

# Signed mode (issue 23, migration 0014): wallet-signed SessionKeys the coordinator relays
# to the vault (`register_session_key`), as it relays spend caps.
session_key_submissions = _relayed(
    "session_key_submissions",
    Column("key", String(ADDRESS), nullable=False),
    Column("lanes", Integer, nullable=False),
    Column("maximum", Amount, nullable=False),
)

# The door's per-wallet request nonce (issue 21, migration 0015): an instant-exit request
# signed by a wallet must carry the wallet's next nonce, taken once it is verified, so a
# signed request is answered at most once, across restarts too (a replay is refused).
door_nonces = Table(
    "door_nonces",
    metadata,
    Column("address", String(ADDRESS), primary_key=True),
    Column("next_nonce", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Leader lease: one coordinator posts at a time (a row, so SQLite and PostgreSQL alike).
coordinator_lease = Table(
    "coordinator_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(REF), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)
