"""An index on each signed-transaction log by (sender, status, nonce): every nonce-based
read takes the key in use's rows only (`SignedTxStore.final_nonce` and the others), and
after a key rotation the old key's rows may hold every nonce above the new key's: read
by (status, nonce) alone, each pass would step through all of them.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TABLES = ("coordinator_txs", "agent_txs", "seller_txs")


def upgrade() -> None:
    for name in TABLES:
        op.create_index(f"ix_{name}_sender_status_nonce", name, ["sender", "status", "nonce"], unique=False)


def downgrade() -> None:
    for name in TABLES:
        op.drop_index(f"ix_{name}_sender_status_nonce", table_name=name)
