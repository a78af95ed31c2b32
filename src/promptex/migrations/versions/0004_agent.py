"""Redemption agent: users' contacts, linked provider accounts (sealed billing
credentials), auto-topup rules, the transactions the agent signed, redemptions and
the notification outbox.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from promptex.ledger.amounts import Amount

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_users",
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("email", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("address", name="pk_agent_users"),
    )
    op.create_table(
        "agent_accounts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_address", sa.String(length=42), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=200), nullable=False),
        sa.Column("account_salt", sa.String(length=66), nullable=False),
        sa.Column("account_ref", sa.String(length=66), nullable=False),
        sa.Column("billing_url", sa.Text(), nullable=False),
        sa.Column("secret_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("secret_nonce", sa.LargeBinary(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("wrap_nonce", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("balance_usd_micro", Amount(), nullable=True),
        sa.Column("balance_at", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agent_accounts"),
        sa.UniqueConstraint("user_address", "provider", name="uq_agent_accounts_user_address_provider"),
    )
    op.create_table(
        "agent_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_address", sa.String(length=42), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("token", sa.String(length=16), nullable=False),
        sa.Column("below_usd_micro", Amount(), nullable=False),
        sa.Column("add_usd_micro", Amount(), nullable=False),
        sa.Column("max_tokens_in", Amount(), nullable=False),
        sa.Column("enabled", sa.Integer(), nullable=False),
        sa.Column("last_checked_at", sa.BigInteger(), nullable=True),
        sa.Column("last_outcome", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agent_rules"),
    )
    op.create_index("ix_agent_rules_enabled", "agent_rules", ["enabled"], unique=False)
    op.create_table(
        "agent_txs",
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
        sa.PrimaryKeyConstraint("id", name="pk_agent_txs"),
        sa.UniqueConstraint("tx_hash", name="uq_agent_txs_tx_hash"),
    )
    op.create_index("ix_agent_txs_status_nonce", "agent_txs", ["status", "nonce"], unique=False)
    op.create_table(
        "agent_redemptions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_address", sa.String(length=42), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("token", sa.String(length=16), nullable=False),
        sa.Column("usd_micro", Amount(), nullable=False),
        sa.Column("max_tokens_in", Amount(), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("redeem_tx_id", sa.Integer(), nullable=True),
        sa.Column("release_tx_id", sa.Integer(), nullable=True),
        sa.Column("chain_redemption_id", sa.BigInteger(), nullable=True),
        sa.Column("tokens_in", Amount(), nullable=True),
        sa.Column("deadline", sa.BigInteger(), nullable=True),
        sa.Column("billing_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("billing_ref", sa.String(length=66), nullable=True),
        sa.Column("receipt_usd_micro", Amount(), nullable=True),
        sa.Column("receipt_signature", sa.String(length=132), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["agent_accounts.id"], name="fk_agent_redemptions_account_id_agent_accounts"
        ),
        sa.ForeignKeyConstraint(["rule_id"], ["agent_rules.id"], name="fk_agent_redemptions_rule_id_agent_rules"),
        sa.ForeignKeyConstraint(["redeem_tx_id"], ["agent_txs.id"], name="fk_agent_redemptions_redeem_tx_id_agent_txs"),
        sa.ForeignKeyConstraint(
            ["release_tx_id"], ["agent_txs.id"], name="fk_agent_redemptions_release_tx_id_agent_txs"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_agent_redemptions"),
    )
    op.create_index("ix_agent_redemptions_status", "agent_redemptions", ["status"], unique=False)
    op.create_index(
        "ix_agent_redemptions_user_address_provider", "agent_redemptions", ["user_address", "provider"], unique=False
    )
    op.create_table(
        "agent_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("user_address", sa.String(length=42), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_agent_outbox"),
        sa.UniqueConstraint("dedupe_key", name="uq_agent_outbox_dedupe_key"),
    )
    op.create_index("ix_agent_outbox_status", "agent_outbox", ["status"], unique=False)


def downgrade() -> None:
    for table in ("agent_outbox", "agent_redemptions", "agent_txs", "agent_rules", "agent_accounts", "agent_users"):
        op.drop_table(table)
