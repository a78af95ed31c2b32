"""Coordinator: usage records (written with each settlement), settlement batches, the
transactions the coordinator signed, listed lots' escrow draw-downs, pending spend caps,
instant-exit releases and the leader lease.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from promptex.ledger.amounts import Amount

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordinator_lease",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_coordinator_lease"),
    )
    op.create_table(
        "coordinator_txs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("sender", sa.String(length=42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("raw_tx", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_coordinator_txs"),
        sa.UniqueConstraint("tx_hash", name="uq_coordinator_txs_tx_hash"),
    )
    op.create_index("ix_coordinator_txs_status_nonce", "coordinator_txs", ["status", "nonce"], unique=False)
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("amount", Amount(), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("expiry", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.String(length=132), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_releases_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_releases"),
    )
    op.create_index("ix_releases_address_status", "releases", ["address", "status"], unique=False)
    op.create_table(
        "settlement_batches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("usage_root", sa.String(length=66), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("total", Amount(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("tx_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(["tx_id"], ["coordinator_txs.id"], name="fk_settlement_batches_tx_id_coordinator_txs"),
        sa.PrimaryKeyConstraint("id", name="pk_settlement_batches"),
    )
    op.create_index("ix_settlement_batches_asset_status", "settlement_batches", ["asset", "status"], unique=False)
    op.create_table(
        "spend_cap_submissions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("per_epoch", Amount(), nullable=False),
        sa.Column("total", Amount(), nullable=False),
        sa.Column("expiry", sa.BigInteger(), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.String(length=132), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tx_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tx_id"], ["coordinator_txs.id"], name="fk_spend_cap_submissions_tx_id_coordinator_txs"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_spend_cap_submissions"),
        sa.UniqueConstraint("address", "asset", "nonce", name="uq_spend_cap_submissions_address_asset_nonce"),
    )
    op.create_table(
        "lot_consumptions",
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("chain_lot_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", Amount(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tx_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["settlement_batches.id"], name="fk_lot_consumptions_batch_id_settlement_batches"
        ),
        sa.ForeignKeyConstraint(["tx_id"], ["coordinator_txs.id"], name="fk_lot_consumptions_tx_id_coordinator_txs"),
        sa.PrimaryKeyConstraint("batch_id", "chain_lot_id", name="pk_lot_consumptions"),
    )
    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("payer_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", Amount(), nullable=False),
        sa.Column("gateway_lot_id", sa.Integer(), nullable=True),
        sa.Column("chain_lot_id", sa.BigInteger(), nullable=True),
        sa.Column("lot_kind", sa.String(length=16), nullable=True),
        sa.Column("list_usd_micro", Amount(), nullable=False),
        sa.Column("fee_bps", sa.Integer(), nullable=True),
        sa.Column("seller_share", Amount(), nullable=True),
        sa.Column("fee", Amount(), nullable=True),
        sa.Column("settled_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=True),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        sa.Column("quarantine_reason", sa.String(length=500), nullable=True),
        sa.Column("quarantined_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_usage_records_account_id_accounts"),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["settlement_batches.id"], name="fk_usage_records_batch_id_settlement_batches"
        ),
        sa.ForeignKeyConstraint(["payer_id"], ["accounts.id"], name="fk_usage_records_payer_id_accounts"),
        sa.ForeignKeyConstraint(["request_id"], ["holds.request_id"], name="fk_usage_records_request_id_holds"),
        sa.PrimaryKeyConstraint("request_id", name="pk_usage_records"),
    )
    op.create_index("ix_usage_records_batch_id", "usage_records", ["batch_id"], unique=False)
    op.create_index("ix_usage_records_status_asset", "usage_records", ["status", "asset"], unique=False)


def downgrade() -> None:
    for table in (
        "usage_records",
        "lot_consumptions",
        "spend_cap_submissions",
        "settlement_batches",
        "releases",
        "coordinator_txs",
        "coordinator_lease",
    ):
        op.drop_table(table)
