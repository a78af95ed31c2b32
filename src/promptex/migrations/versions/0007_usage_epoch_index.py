"""An index on usage records by (asset, epoch): the gateway reads the newest settlement
epoch of each asset every few seconds to tell each answer the epoch it is expected to
settle in (`x-promptex-epoch`), which must not scan the whole table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_usage_records_asset_epoch", "usage_records", ["asset", "epoch"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_usage_records_asset_epoch", table_name="usage_records")
