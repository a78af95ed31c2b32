"""The ledger: accounts, balances, holds, journal, wallets, deposits, exits, org budgets.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

from promptex.ledger.amounts import Amount

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    accounts = op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("kind", "name", name="uq_accounts_kind_name"),
    )
    op.create_table(
        "balances",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("posted", Amount(), nullable=False),
        sa.Column("held", Amount(), nullable=False),
        sa.Column("locked", Amount(), nullable=False),
        sa.Column("cap_remaining", Amount(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_balances_account_id_accounts"),
        sa.PrimaryKeyConstraint("account_id", "asset", name="pk_balances"),
    )
    op.create_table(
        "members",
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["accounts.id"], name="fk_members_org_id_accounts"),
        sa.ForeignKeyConstraint(["member_id"], ["accounts.id"], name="fk_members_member_id_accounts"),
        sa.PrimaryKeyConstraint("org_id", "member_id", name="pk_members"),
    )
    op.create_table(
        "budgets",
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("remaining", Amount(), nullable=False),
        sa.Column("held", Amount(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id", "member_id"],
            ["members.org_id", "members.member_id"],
            name="fk_budgets_org_id_member_id_members",
        ),
        sa.PrimaryKeyConstraint("org_id", "member_id", "asset", name="pk_budgets"),
    )
    op.create_table(
        "grants",
        sa.Column("grant_id", sa.String(200), nullable=False),
        sa.Column("treasury_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("amount", Amount(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["treasury_id"], ["accounts.id"], name="fk_grants_treasury_id_accounts"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_grants_account_id_accounts"),
        sa.PrimaryKeyConstraint("grant_id", name="pk_grants"),
    )
    op.create_table(
        "holds",
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("payer_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("amount", Amount(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.Column("cost", Amount(), nullable=True),
        sa.Column("charged", Amount(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_holds_account_id_accounts"),
        sa.ForeignKeyConstraint(["payer_id"], ["accounts.id"], name="fk_holds_payer_id_accounts"),
        sa.PrimaryKeyConstraint("request_id", name="pk_holds"),
    )
    op.create_index("ix_holds_status_expires_at", "holds", ["status", "expires_at"])
    op.create_table(
        "journal_entries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("ref", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_journal_entries"),
        sa.UniqueConstraint("ref", name="uq_journal_entries_ref"),
    )
    op.create_table(
        "journal_lines",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("entry_id", BigId, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("amount", Amount(), nullable=False),
        sa.ForeignKeyConstraint(["entry_id"], ["journal_entries.id"], name="fk_journal_lines_entry_id_journal_entries"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_journal_lines_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_journal_lines"),
    )
    op.create_index("ix_journal_lines_entry_id", "journal_lines", ["entry_id"])
    op.create_index("ix_journal_lines_account_id_asset", "journal_lines", ["account_id", "asset"])
    op.create_table(
        "wallets",
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("bound_at", sa.BigInteger(), nullable=False),
        sa.Column("nonce", sa.String(66), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_wallets_account_id_accounts"),
        sa.PrimaryKeyConstraint("address", name="pk_wallets"),
    )
    op.create_index("ix_wallets_account_id", "wallets", ["account_id"])
    op.create_table(
        "binding_challenges",
        sa.Column("nonce", sa.String(66), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("wallet", sa.String(42), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_binding_challenges_account_id_accounts"),
        sa.PrimaryKeyConstraint("nonce", name="pk_binding_challenges"),
    )
    op.create_table(
        "deposits",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("amount", Amount(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_deposits_account_id_accounts"),
        sa.PrimaryKeyConstraint("event_id", name="pk_deposits"),
    )
    op.create_index("ix_deposits_address", "deposits", ["address"])
    op.create_table(
        "exits",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("amount", Amount(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("closed_by", sa.String(200), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_exits_account_id_accounts"),
        sa.PrimaryKeyConstraint("event_id", name="pk_exits"),
        sa.UniqueConstraint("closed_by", name="uq_exits_closed_by"),
    )
    op.create_index("ix_exits_address_asset_status", "exits", ["address", "asset", "status"])

    now = int(time.time())
    op.bulk_insert(accounts, [{"kind": "system", "name": name, "created_at": now} for name in ("vault", "usage")])


def downgrade() -> None:
    for table in (
        "exits",
        "deposits",
        "binding_challenges",
        "wallets",
        "journal_lines",
        "journal_entries",
        "holds",
        "grants",
        "budgets",
        "members",
        "balances",
        "accounts",
    ):
        op.drop_table(table)
