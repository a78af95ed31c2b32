"""Exact token accounting: usage records carry cache reads and writes (and one-hour
writes) and reasoning tokens; settlement batches record the version of their Merkle
leaves, so batches posted before (version 1) still prove.

Existing rows keep their meaning: a round-1 record had no cached or reasoning tokens
counted apart (0), and every batch planned before this revision hashed version-1 leaves.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TOKEN_COLUMNS = ("cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens")


def upgrade() -> None:
    for name in TOKEN_COLUMNS:
        op.add_column("usage_records", sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("settlement_batches", sa.Column("leaf_version", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("settlement_batches") as batch:
        batch.drop_column("leaf_version")
    with op.batch_alter_table("usage_records") as batch:
        for name in TOKEN_COLUMNS:
            batch.drop_column(name)
