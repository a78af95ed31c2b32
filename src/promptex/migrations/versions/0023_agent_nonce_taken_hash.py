"""A redeem whose nonce a transaction outside the agent's log took keeps, with the head at
which that was first seen (0022), that block's hash: should a reorg replace the block
(a cancel swapped for a later one between two passes, the nonce never seen free), the
window counts again from the head then, not from the first cancel's
(`RedemptionMachine._hold_dropped_redeem`).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agent_txs", sa.Column("nonce_taken_hash", sa.String(66), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_txs") as batch:
        batch.drop_column("nonce_taken_hash")
