"""A lot is routable only while the chain says it is open: each seller lot's persisted
state (`lot_states`), the sellers' log of signed transactions (`seller_txs`: open_lot,
bond approvals, closes, each stored before broadcast), and refunds of quarantined usage
(`usage_records.refund_reason`, `refunded_at`).

A database from before this revision keeps every row. Each gateway lot gets its state:
one with an escrow lot id is `open` (the indexer corrects it from the chain's events),
routed until its expiry less the longest settlement epoch (3,600 s) and the default
posting margin (300 s); one without is `failed` (round 1 served from such lots, and
their usage could never settle: the coordinator now refunds it).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ROUND_1_STOP = 3_600 + 300  # seconds before expiry a round-1 lot stops being routed
NEVER_OPENED = "recorded before lots were tracked, and never opened on chain"

_lots = sa.table(
    "gateway_lots",
    sa.column("id", sa.Integer()),
    sa.column("expires_at", sa.BigInteger()),
    sa.column("chain_lot_id", sa.BigInteger()),
    sa.column("chain_lot_tx", sa.String()),
)


def upgrade() -> None:
    states = op.create_table(
        "lot_states",
        sa.Column("lot_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("route_until", sa.BigInteger(), nullable=False),
        sa.Column("chain_lot_id", sa.BigInteger(), nullable=True),
        sa.Column("open_tx", sa.String(66), nullable=True),
        sa.Column("close_at", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lot_id", name="pk_lot_states"),
        sa.UniqueConstraint("chain_lot_id", name="uq_lot_states_chain_lot_id"),
        sa.UniqueConstraint("open_tx", name="uq_lot_states_open_tx"),
    )
    op.create_index("ix_lot_states_state", "lot_states", ["state"])
    op.create_table(
        "seller_txs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("raw_tx", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_seller_txs"),
        sa.UniqueConstraint("tx_hash", name="uq_seller_txs_tx_hash"),
    )
    op.create_index("ix_seller_txs_status_nonce", "seller_txs", ["status", "nonce"])
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("refund_reason", sa.String(500), nullable=True))
        batch.add_column(sa.Column("refunded_at", sa.BigInteger(), nullable=True))

    now = int(time.time())
    rows = [
        (int(str(lot_id)), int(str(expires_at)), None if chain_lot_id is None else int(str(chain_lot_id)))
        for lot_id, expires_at, chain_lot_id in op.get_bind().execute(
            sa.select(_lots.c.id, _lots.c.expires_at, _lots.c.chain_lot_id)
        )  # (Row unpacks untyped)
    ]
    if rows:
        op.bulk_insert(
            states,
            [
                {
                    "lot_id": lot_id,
                    "state": "failed" if chain_lot_id is None else "open",
                    "reason": NEVER_OPENED if chain_lot_id is None else None,
                    "expires_at": expires_at,
                    "route_until": expires_at - ROUND_1_STOP,
                    "chain_lot_id": chain_lot_id,
                    "open_tx": None,
                    "close_at": None,
                    "updated_at": now,
                }
                for lot_id, expires_at, chain_lot_id in rows
            ],
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("refunded_at")
        batch.drop_column("refund_reason")
    op.drop_index("ix_seller_txs_status_nonce", "seller_txs")
    op.drop_table("seller_txs")
    op.drop_index("ix_lot_states_state", "lot_states")
    op.drop_table("lot_states")
