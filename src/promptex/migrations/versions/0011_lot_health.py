"""Lot health (`gateway.health`): each lot's upstream calls, errors and latency as every
gateway process counted them, when the upstream last refused the seller's key, and
whether its circuit is open — what the seller and the attestor read.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_lot_health",
        sa.Column("lot_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("answered", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_total", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.String(64), nullable=True),
        sa.Column("last_error_at", sa.BigInteger(), nullable=True),
        sa.Column("key_refused_at", sa.BigInteger(), nullable=True),
        sa.Column("circuit_open_until", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lot_id", name="pk_gateway_lot_health"),
    )


def downgrade() -> None:
    op.drop_table("gateway_lot_health")
