"""Signed mode (issue 23): the wallet-signed SessionKeys the coordinator relays to the
vault (`register_session_key`), as it relays spend caps.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from promptex.ledger.amounts import Amount

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_key_submissions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("key", sa.String(42), nullable=False),
        sa.Column("lanes", sa.Integer(), nullable=False),
        sa.Column("maximum", Amount(), nullable=False),
        sa.Column("expiry", sa.BigInteger(), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.String(132), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tx_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tx_id"], ["coordinator_txs.id"], name="fk_session_key_submissions_tx_id_coordinator_txs"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_session_key_submissions"),
        sa.UniqueConstraint("address", "asset", "nonce", name="uq_session_key_submissions_address_asset_nonce"),
    )


def downgrade() -> None:
    op.drop_table("session_key_submissions")
