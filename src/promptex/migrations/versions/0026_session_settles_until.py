"""A session key remembers the last second the vault settles its vouchers (`settles_until`:
the close of its last window, `ledger.sessions.settlement_close`), read from the vault's
epoch clock by the indexer when it records the registration; the gateway refuses a voucher
whose request could still be charged, or not yet settled, after it (403 session_ending).

Rows from before keep none: the gateway then takes the session's expiry as its close (the
chain's is at least one window later), stricter than the chain, never looser. The
downgrade drops the column.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("session_keys", sa.Column("settles_until", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session_keys") as batch:
        batch.drop_column("settles_until")
