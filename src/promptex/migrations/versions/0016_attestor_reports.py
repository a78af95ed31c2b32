"""The attestor's reviews of lot health (`sellers.attestor`): each lot's health counts as
the last review read them, and the reports a person acts on (never an automatic slash).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attestor_lot_reviews",
        sa.Column("lot_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("reviewed_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lot_id", name="pk_attestor_lot_reviews"),
    )
    op.create_table(
        "attestor_reports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("lot_id", sa.Integer(), nullable=False),
        sa.Column("chain_lot_id", sa.BigInteger(), nullable=True),
        sa.Column("seller", sa.String(42), nullable=False),
        sa.Column("reasons", sa.String(400), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("key_refused_at", sa.BigInteger(), nullable=True),
        sa.Column("opened_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resolved_at", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.String(400), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_attestor_reports"),
    )
    op.create_index("ix_attestor_reports_lot_id", "attestor_reports", ["lot_id"])


def downgrade() -> None:
    op.drop_index("ix_attestor_reports_lot_id", table_name="attestor_reports")
    op.drop_table("attestor_reports")
    op.drop_table("attestor_lot_reviews")
