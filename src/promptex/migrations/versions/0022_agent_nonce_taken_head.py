"""A redeem the agent signed whose nonce went to a transaction its log does not hold (a
wallet's cancel, or a node that served the nonce before the receipt) keeps the head at
which that was first seen: the redeem is not taken for dropped, nor its redemption sold
again, until that head is a reorg window deep (`RedemptionMachine._hold_dropped_redeem`).
Before, it was dropped after a 3 s grace, and a redeem that ran after all sold twice.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agent_txs", sa.Column("nonce_taken_head", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_txs") as batch:
        batch.drop_column("nonce_taken_head")
