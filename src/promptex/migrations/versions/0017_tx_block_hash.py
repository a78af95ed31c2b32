"""Each signed-transaction log keeps the hash of the block a receipt named: the re-check
after a reorg compares it (`txlog.still_ours`), since a competing block at the same height
can hold the transaction with the same outcome and other effects. Rows closed before
this revision keep none and are compared by block number and outcome.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TABLES = ("coordinator_txs", "agent_txs", "seller_txs")


def upgrade() -> None:
    for name in TABLES:
        op.add_column(name, sa.Column("block_hash", sa.String(66), nullable=True))


def downgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name) as batch:
            batch.drop_column("block_hash")
