"""A redemption may carry the request id its `promptex redeem` run was given (unique per
user): the same command run again with it after the redemption ended prints that one's
outcome instead of selling again. And the swap deadline its redeem was signed with:
past it those bytes can only revert, so another key's failed redeem a reorg took off the
chain stops holding the new key's agent (`RedemptionMachine.wait_for_other_keys`).
Rows from before this revision have neither.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agent_redemptions", sa.Column("request_id", sa.String(200), nullable=True))
    op.add_column("agent_redemptions", sa.Column("swap_deadline", sa.BigInteger, nullable=True))
    op.create_index(
        "ix_agent_redemptions_user_address_request_id", "agent_redemptions", ["user_address", "request_id"],
        unique=True,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_agent_redemptions_user_address_request_id", table_name="agent_redemptions")
    with op.batch_alter_table("agent_redemptions") as batch:
        batch.drop_column("swap_deadline")
        batch.drop_column("request_id")
