"""Books that never go negative and know their chain: debts, CHECK constraints on every
balance and budget, the chain identity, the indexer's reorg log.

A ledger from before this revision is brought forward with its balances unchanged. One
that holds a negative balance (round 1 let a reorg or an exit racing usage take `posted`
below zero) gets, for each, an explicit debt of that amount and a "debt" journal entry
from the new "debts" system account, which brings the balance to zero: the account's
journal sum and the books check stay consistent, and what was owed is now visible. A
spend cap or budget below zero (a limit lowered under what was being spent) becomes zero.
A negative `held` or `locked` cannot be explained by any path and is left to fail the
constraint: that ledger needs a person.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from promptex.ledger.amounts import Amount, is_non_negative

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CHECKED = {"balances": ("posted", "held", "locked", "cap_remaining"), "budgets": ("remaining", "held")}

_accounts = sa.table(
    "accounts", sa.column("id", sa.Integer()), sa.column("kind", sa.String()), sa.column("name", sa.String()),
    sa.column("created_at", sa.BigInteger()),
)  # fmt: skip
_balances = sa.table(
    "balances", sa.column("account_id", sa.Integer()), sa.column("asset", sa.String()), sa.column("posted", Amount()),
    sa.column("cap_remaining", Amount()),
)  # fmt: skip
_budgets = sa.table(
    "budgets", sa.column("org_id", sa.Integer()), sa.column("member_id", sa.Integer()), sa.column("asset", sa.String()),
    sa.column("remaining", Amount()),
)  # fmt: skip
_entries = sa.table(
    "journal_entries", sa.column("id", sa.Integer()), sa.column("ref", sa.String()), sa.column("kind", sa.String()),
    sa.column("created_at", sa.BigInteger()),
)  # fmt: skip
_lines = sa.table(
    "journal_lines", sa.column("entry_id", sa.Integer()), sa.column("account_id", sa.Integer()),
    sa.column("asset", sa.String()), sa.column("amount", Amount()),
)  # fmt: skip


def _create_tables() -> sa.Table:
    debts = op.create_table(
        "debts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(16), nullable=False),
        sa.Column("amount", Amount(), nullable=False),
        sa.Column("repaid", Amount(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(is_non_negative("amount"), name="ck_debts_amount_non_negative"),
        sa.CheckConstraint(is_non_negative("repaid"), name="ck_debts_repaid_non_negative"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_debts_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_debts"),
        sa.UniqueConstraint("source", "account_id", "asset", name="uq_debts_source_account_id_asset"),
    )
    op.create_index("ix_debts_account_id_asset_status", "debts", ["account_id", "asset", "status"])
    op.create_index("ix_debts_status", "debts", ["status"])
    op.create_table(
        "chain_identity",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("genesis_hash", sa.String(66), nullable=False),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("contracts", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.BigInteger(), nullable=False),
        sa.Column("recorded_by", sa.String(32), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_chain_identity_one_row"),
        sa.PrimaryKeyConstraint("id", name="pk_chain_identity"),
    )
    op.create_table(
        "indexer_reorgs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("detected_at", sa.BigInteger(), nullable=False),
        sa.Column("fork_block", sa.BigInteger(), nullable=False),
        sa.Column("old_tip", sa.BigInteger(), nullable=False),
        sa.Column("old_tip_hash", sa.String(66), nullable=True),
        sa.Column("depth", sa.BigInteger(), nullable=False),
        sa.Column("confirmations", sa.Integer(), nullable=False),
        sa.Column("events_undone", sa.Integer(), nullable=False),
        sa.Column("debts_opened", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_indexer_reorgs"),
    )
    return debts


def _negative(rows: Sequence[Any], column: str) -> list[Any]:
    return [row for row in rows if getattr(row, column) < 0]  # compared as ints: Amount reads them back exactly


def _negative_balances_to_debts(debts: sa.Table, debts_account: int, now: int) -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_balances.c.account_id, _balances.c.asset, _balances.c.posted)).all()
    for row in _negative(rows, "posted"):
        owed = -row.posted
        source = f"migration:0008:{row.account_id}:{row.asset}"
        debt: int = conn.execute(
            sa.insert(debts).values(
                account_id=row.account_id, asset=row.asset, amount=owed, repaid=0, source=source,
                reason="the balance was below zero before migration 0008 (a reorg or an exit "
                "took funds already spent)",
                status="open", created_at=now,
            ).returning(debts.c.id)
        ).scalar_one()  # fmt: skip
        entry: int = conn.execute(
            sa.insert(_entries).values(ref=f"debt:{debt}", kind="debt", created_at=now).returning(_entries.c.id)
        ).scalar_one()
        conn.execute(
            sa.insert(_lines),
            [
                {"entry_id": entry, "account_id": debts_account, "asset": row.asset, "amount": -owed},
                {"entry_id": entry, "account_id": row.account_id, "asset": row.asset, "amount": owed},
            ],
        )
        where = (_balances.c.account_id == row.account_id, _balances.c.asset == row.asset)
        conn.execute(sa.update(_balances).where(*where).values(posted=0))


def _negative_limits_to_zero() -> None:
    conn = op.get_bind()
    caps = conn.execute(sa.select(_balances.c.account_id, _balances.c.asset, _balances.c.cap_remaining)).all()
    for row in _negative(caps, "cap_remaining"):
        conn.execute(
            sa.update(_balances)
            .where(_balances.c.account_id == row.account_id, _balances.c.asset == row.asset)
            .values(cap_remaining=0)
        )
    limits = conn.execute(
        sa.select(_budgets.c.org_id, _budgets.c.member_id, _budgets.c.asset, _budgets.c.remaining)
    ).all()
    for row in _negative(limits, "remaining"):
        conn.execute(
            sa.update(_budgets)
            .where(
                _budgets.c.org_id == row.org_id, _budgets.c.member_id == row.member_id, _budgets.c.asset == row.asset
            )
            .values(remaining=0)
        )


def upgrade() -> None:
    now = int(time.time())
    debts = _create_tables()
    conn = op.get_bind()
    system_debts = sa.select(_accounts.c.id).where(_accounts.c.kind == "system", _accounts.c.name == "debts")
    debts_account = conn.execute(system_debts).scalar()  # kept by a downgrade
    if debts_account is None:
        debts_account = conn.execute(
            sa.insert(_accounts).values(kind="system", name="debts", created_at=now).returning(_accounts.c.id)
        ).scalar_one()
    _negative_balances_to_debts(debts, debts_account, now)
    _negative_limits_to_zero()
    for table, columns in CHECKED.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.create_check_constraint(f"ck_{table}_{column}_non_negative", is_non_negative(column))


def downgrade() -> None:
    """Drops the constraints and the new tables; debt entries stay in the journal (their
    lines keep every balance equal to its journal sum) and so does the "debts" account."""
    for table, columns in CHECKED.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.drop_constraint(f"ck_{table}_{column}_non_negative", type_="check")
    op.drop_table("indexer_reorgs")
    op.drop_table("chain_identity")
    op.drop_index("ix_debts_status", "debts")
    op.drop_index("ix_debts_account_id_asset_status", "debts")
    op.drop_table("debts")
