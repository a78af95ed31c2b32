"""The indexer's tables (migration 0002; reorgs 0008): its cursor, the hashes of the
blocks it indexed, every followed chain event and every reorg it rewound. On the one
MetaData of `ledger.metadata`, in the ledger's database: a batch's events, its ledger
effects and the cursor commit together.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from promptex.ledger.metadata import ADDRESS, HASH, REF, metadata

# Where the indexer stands (one row): the last block whose events, ledger effects and this
# row were committed together. `rewinds` counts reorgs undone; it is part of every ledger
# event id, so a fact replayed after a rewind gets a fresh id (see indexer.effects).
indexer_cursor = Table(
    "indexer_cursor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("chain_id", BigInteger, nullable=False),
    Column("start_block", BigInteger, nullable=False),
    Column("block_number", BigInteger, nullable=False),  # start_block − 1 before the first batch
    Column("block_hash", String(HASH), nullable=True),
    Column("rewinds", Integer, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Hashes of the indexed blocks (the most recent ones; older rows are pruned): a reorg is
# found, and its fork point located, by comparing them with the chain's.
indexer_blocks = Table(
    "indexer_blocks",
    metadata,
    Column("number", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(HASH), nullable=False),
    Column("parent_hash", String(HASH), nullable=False),
)

# Every followed event, once per (tx hash, log index); `args` is JSON (ints as numbers,
# bytes as 0x-hex, addresses checksummed). `fact_id` is the ledger event id its effects
# were applied under (None: an event without ledger effects).
chain_events = Table(
    "chain_events",
    metadata,
    Column("tx_hash", String(HASH), primary_key=True),
    Column("log_index", Integer, primary_key=True, autoincrement=False),
    Column("block_number", BigInteger, nullable=False, index=True),
    Column("block_hash", String(HASH), nullable=False),
    Column("contract", String(ADDRESS), nullable=False),
    Column("source", String(32), nullable=False),  # CreditsVault, CreditEscrow, Factory, Pool, ...
    Column("name", String(64), nullable=False),
    Column("args", Text, nullable=False),
    Column("fact_id", String(REF), nullable=True),
    Index(None, "name", "block_number"),
)

# Every reorg the indexer rewound (it indexes only up to head − confirmations, so each
# one was deeper than the confirmations): where the branches part, how deep, what was
# undone and how many debts undoing it opened (funds already spent). Shown by
# `promptex indexer reorgs` and `promptex reconcile`, and logged as an error.
indexer_reorgs = Table(
    "indexer_reorgs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("detected_at", BigInteger, nullable=False),
    Column("fork_block", BigInteger, nullable=False),  # the highest block both branches share
    Column("old_tip", BigInteger, nullable=False),
    Column("old_tip_hash", String(HASH), nullable=True),
    Column("depth", BigInteger, nullable=False),  # old_tip − fork_block
    Column("confirmations", Integer, nullable=False),
    Column("events_undone", Integer, nullable=False),
    Column("debts_opened", Integer, nullable=False),
)
