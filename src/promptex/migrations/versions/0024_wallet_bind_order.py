"""No two wallets of one account share a `bound_at`: the first one bound is the one
settlements debit (`wallets.first_bound`), and since 7475d91 a later binding takes a
`bound_at` past the account's newest (`wallets._bound_after`). A database from before
that may hold two wallets of one account bound in the same second (or by a host whose
clock was behind); for them `first_bound` fell back to the lower address.

Each account's wallets keep the order every reader has used, (bound_at, address) as the
database sorts it, so no account's debited wallet changes (batches planned or landed
before keep their entries); a wallet that ties with, or is not after, the one before it
gets that one's `bound_at` + 1, as `_bound_after` gives. Then a unique index on
(account_id, bound_at) makes the order total: a tie is refused, never settled by address.
Which of two wallets bound in one second was truly first cannot be told from the rows;
the downgrade keeps the new `bound_at`s (only the index goes).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

INDEX = "ix_wallets_account_id_bound_at"

_wallets = sa.table(
    "wallets", sa.column("address", sa.String()), sa.column("account_id", sa.Integer()),
    sa.column("bound_at", sa.BigInteger()),
)  # fmt: skip


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":  # no binding by a process still on the old code until the index is made
        conn.execute(sa.text("LOCK TABLE wallets IN SHARE ROW EXCLUSIVE MODE"))
    rows = conn.execute(
        sa.select(_wallets.c.account_id, _wallets.c.address, _wallets.c.bound_at).order_by(
            _wallets.c.account_id, _wallets.c.bound_at, _wallets.c.address
        )
    ).all()
    previous: tuple[int, int] | None = None  # (account, the bound_at given to its last wallet)
    for row in rows:
        account, at = int(str(row.account_id)), int(str(row.bound_at))
        if previous is not None and previous[0] == account and at <= previous[1]:
            at = previous[1] + 1
            conn.execute(sa.update(_wallets).where(_wallets.c.address == row.address).values(bound_at=at))
        previous = (account, at)
    op.create_index(INDEX, "wallets", ["account_id", "bound_at"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="wallets")
