"""Indexer: its cursor, block hashes, chain events, and the spend caps the chain set.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from promptex.ledger.amounts import Amount

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "indexer_cursor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("start_block", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=True),
        sa.Column("rewinds", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_indexer_cursor"),
    )
    op.create_table(
        "indexer_blocks",
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(66), nullable=False),
        sa.Column("parent_hash", sa.String(66), nullable=False),
        sa.PrimaryKeyConstraint("number", name="pk_indexer_blocks"),
    )
    op.create_table(
        "chain_events",
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("log_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("contract", sa.String(42), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("fact_id", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("tx_hash", "log_index", name="pk_chain_events"),
    )
    op.create_index("ix_chain_events_block_number", "chain_events", ["block_number"])
    op.create_index("ix_chain_events_name_block_number", "chain_events", ["name", "block_number"])
    op.create_table(
        "chain_spend_caps",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("previous", Amount(), nullable=False),
        sa.Column("remaining", Amount(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_chain_spend_caps_account_id_accounts"),
        sa.PrimaryKeyConstraint("event_id", name="pk_chain_spend_caps"),
    )


def downgrade() -> None:
    for table in ("chain_spend_caps", "chain_events", "indexer_blocks", "indexer_cursor"):
        op.drop_table(table)
