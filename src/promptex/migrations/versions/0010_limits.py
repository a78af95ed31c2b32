"""Limits per API key, org member and org (`gateway.limits`): the limits, their counters
per window, and what each request in flight took of them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from promptex.ledger.amounts import Amount, is_non_negative

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_limits",
        sa.Column("subject", sa.String(80), nullable=False),
        sa.Column("requests_per_minute", sa.BigInteger(), nullable=True),
        sa.Column("tokens_per_minute", sa.BigInteger(), nullable=True),
        sa.Column("concurrent", sa.BigInteger(), nullable=True),
        sa.Column("cost", Amount(), nullable=True),
        sa.Column("cost_asset", sa.String(16), nullable=True),
        sa.Column("cost_window_seconds", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject", name="pk_gateway_limits"),
    )
    op.create_table(
        "gateway_limit_counters",
        sa.Column("subject", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("ends_at", sa.BigInteger(), nullable=False),
        sa.Column("used", Amount(), nullable=False),
        sa.CheckConstraint(is_non_negative("used"), name="ck_gateway_limit_counters_used_non_negative"),
        sa.PrimaryKeyConstraint("subject", "kind", "window_start", name="pk_gateway_limit_counters"),
    )
    op.create_table(
        "gateway_limit_takes",
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("subject", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("amount", Amount(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "subject", "kind", name="pk_gateway_limit_takes"),
    )


def downgrade() -> None:
    op.drop_table("gateway_limit_takes")
    op.drop_table("gateway_limit_counters")
    op.drop_table("gateway_limits")
