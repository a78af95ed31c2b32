"""Capacity and holds as ledger facts: each seller lot's capacity (`lot_capacity`), its
leases to gateway processes (`capacity_leases`) and the lot capacity a hold reserved (new
`holds` columns); none of their counts below zero.

A database from before this revision keeps every row. Each gateway lot gets its capacity
row: what round 1 believed remains (`remaining_usd_micro`) as the chain's remaining, with
nothing used or reserved since; its holds reserved no capacity (NULL lot).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("lot_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("lot_amount", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("lease_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("extras", sa.String(200), nullable=True))
    capacity = op.create_table(
        "lot_capacity",
        sa.Column("lot_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("chain_lot_id", sa.BigInteger(), nullable=True),
        sa.Column("chain_remaining", sa.BigInteger(), nullable=False),
        sa.Column("chain_consumed", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        *(
            sa.CheckConstraint(f"{name} >= 0", name=f"ck_lot_capacity_{name}_non_negative")
            for name in ("chain_remaining", "chain_consumed", "used", "reserved")
        ),
        sa.PrimaryKeyConstraint("lot_id", name="pk_lot_capacity"),
    )
    op.create_table(
        "capacity_leases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("lot_id", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["lot_id"], ["lot_capacity.lot_id"], name="fk_capacity_leases_lot_id_lot_capacity"),
        sa.PrimaryKeyConstraint("id", name="pk_capacity_leases"),
        sa.UniqueConstraint("lot_id", "holder", name="uq_capacity_leases_lot_id_holder"),
        sa.CheckConstraint("reserved >= 0", name="ck_capacity_leases_reserved_non_negative"),
        sa.CheckConstraint("used >= 0", name="ck_capacity_leases_used_non_negative"),
        sa.CheckConstraint("reserved + used <= amount", name="ck_capacity_leases_within_amount"),
    )
    lots = sa.table(
        "gateway_lots",
        sa.column("id", sa.Integer()),
        sa.column("remaining_usd_micro", sa.BigInteger()),
        sa.column("chain_lot_id", sa.BigInteger()),
    )
    now = int(time.time())
    rows = op.get_bind().execute(sa.select(lots.c.id, lots.c.remaining_usd_micro, lots.c.chain_lot_id)).all()
    if rows:
        op.bulk_insert(
            capacity,
            [
                {
                    "lot_id": lot_id,
                    "chain_lot_id": chain_lot_id,
                    "chain_remaining": max(0, int(str(remaining))),
                    "chain_consumed": 0,
                    "used": 0,
                    "reserved": 0,
                    "updated_at": now,
                }
                for lot_id, remaining, chain_lot_id in rows  # (Row unpacks untyped)
            ],
        )


def downgrade() -> None:
    op.drop_table("capacity_leases")
    op.drop_table("lot_capacity")
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("extras")
        batch.drop_column("lease_id")
        batch.drop_column("lot_amount")
        batch.drop_column("lot_id")
