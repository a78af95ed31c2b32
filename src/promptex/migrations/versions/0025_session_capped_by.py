"""A session key remembers the spend cap the chain accepted after it (`capped_by`, the
SpendCapRegistered's event id): the vault takes a cap only once the session's vouchers no
longer settle (`CreditsVaultSigned._set_cap`), and from that cap on the gateway serves the
account's plain requests in the asset again, capped (README "Signed mode", leaving it).

Rows from before keep none: until this revision the gateway never served an account
capped after its first session, so nothing depends on a cap indexed before; a wallet that
set one after its session sets it again (`promptex wallet spend-cap`, the same limits or
wider) to be served capped. The downgrade drops the column.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("session_keys", sa.Column("capped_by", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session_keys") as batch:
        batch.drop_column("capped_by")
