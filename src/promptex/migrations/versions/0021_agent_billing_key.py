"""Each redemption keeps the idempotency key of its billing purchase, set with the step
that escrowed its sale: the escrow's redemption id AND the redeem transaction's hash
(`agent.machine.idempotency_key`). The id alone let a reorg give one redemption's receipt
to another: a redemption that took the id of one undone by the reorg got that one's
receipt back (same key), for another account. Rows escrowed before this revision have
none and keep the key they may already have bought under (the id alone).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agent_redemptions", sa.Column("billing_key", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_redemptions") as batch:
        batch.drop_column("billing_key")
