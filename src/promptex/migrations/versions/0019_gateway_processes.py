"""Gateway processes on PostgreSQL register themselves (`ledger_processes`) and hold an
advisory lock named by their id while they live; each hold records the process that made
it (`holds.process_id`), so a sweeper that can take a process's lock ends that dead
process's holds at once (status "orphaned") instead of after their lifetime. Holds made
before this revision, and every hold on SQLite, name no process.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_processes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.add_column("holds", sa.Column("process_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("process_id")
    op.drop_table("ledger_processes")
