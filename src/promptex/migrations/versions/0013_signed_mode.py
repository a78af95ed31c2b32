"""Signed mode (issue 23): the session keys the chain registered, each session's lanes
(charged, settled, the highest voucher, the request in flight), and each usage record's
mode ('capped' for every record before this revision) and covering voucher.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from promptex.ledger.amounts import Amount, is_non_negative

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_keys",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("session", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("asset_address", sa.String(42), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("vault", sa.String(42), nullable=False),
        sa.Column("key", sa.String(42), nullable=False),
        sa.Column("lanes", sa.Integer(), nullable=False),
        sa.Column("maximum", Amount(), nullable=False),
        sa.Column("expiry", sa.BigInteger(), nullable=False),
        sa.Column("signed_from", sa.BigInteger(), nullable=False),
        sa.Column("ends_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("revoke_event", sa.String(200), nullable=True),
        sa.Column("previous_cap", Amount(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_session_keys_account_id_accounts"),
        sa.PrimaryKeyConstraint("account_id", "asset", "session", name="pk_session_keys"),
        sa.UniqueConstraint("event_id", name="uq_session_keys_event_id"),
        sa.UniqueConstraint("revoke_event", name="uq_session_keys_revoke_event"),
    )
    op.create_table(
        "voucher_lanes",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("session", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("lane", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("charged", Amount(), nullable=False),
        sa.Column("settled", Amount(), nullable=False),
        sa.Column("ceiling", Amount(), nullable=False),
        sa.Column("signature", sa.String(132), nullable=True),
        sa.Column("inflight", sa.String(200), nullable=True),
        sa.Column("inflight_hold", Amount(), nullable=True),
        sa.Column("inflight_ceiling", Amount(), nullable=True),
        sa.Column("inflight_signature", sa.String(132), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_voucher_lanes_account_id_accounts"),
        sa.PrimaryKeyConstraint("account_id", "asset", "session", "lane", name="pk_voucher_lanes"),
        *(
            sa.CheckConstraint(is_non_negative(column), name=f"ck_voucher_lanes_{column}_non_negative")
            for column in ("charged", "settled", "ceiling")
        ),
    )
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("mode", sa.String(8), nullable=False, server_default="capped"))
        batch.add_column(sa.Column("voucher_session", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("voucher_lane", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("voucher_ceiling", Amount(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("voucher_ceiling")
        batch.drop_column("voucher_lane")
        batch.drop_column("voucher_session")
        batch.drop_column("mode")
    op.drop_table("voucher_lanes")
    op.drop_table("session_keys")
