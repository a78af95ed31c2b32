"""Gateway: API keys and seller lots, made by Alembic like every other table.

Until now the gateway made its two tables itself (`create_all`, versioned in
`gateway_schema_version`). A database that has them already is adopted, its rows kept:
a version-1 `gateway_lots` gets its `chain_lot_id` column, the constraints `create_all`
left unnamed (SQLite) or named by the server (PostgreSQL) get the names of the shared
naming convention, and `gateway_schema_version` is dropped. Version 1's `gateway_usage`
table, if present, is left alone (as the gateway always did).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

from promptex.ledger.amounts import Amount

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

VERSION_TABLE = "gateway_schema_version"  # the gateway's own version table, before this revision
ROUND_ONE_VERSION = 2  # what it held when this revision was written


def _api_keys() -> list[SchemaItem]:
    return [
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("payer_id", sa.Integer(), nullable=True),
        sa.Column("default_asset", sa.String(length=16), nullable=True),
        sa.Column("budget_asset", sa.String(length=16), nullable=True),
        sa.Column("budget_remaining", Amount(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_gateway_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_gateway_api_keys_key_hash"),
    ]


def _lots() -> list[SchemaItem]:
    return [
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("api", sa.String(length=16), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("seller", sa.String(length=64), nullable=False),
        sa.Column("face_value_usd_micro", sa.BigInteger(), nullable=False),
        sa.Column("remaining_usd_micro", sa.BigInteger(), nullable=False),
        sa.Column("rate_bps", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("resale_permitted", sa.Boolean(), nullable=False),
        sa.Column("secret_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("secret_nonce", sa.LargeBinary(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("wrap_nonce", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("attestation", sa.Text(), nullable=True),
        sa.Column("chain_lot_tx", sa.String(length=80), nullable=True),
        sa.Column("chain_lot_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_gateway_lots"),
    ]


TABLES = {"gateway_api_keys": _api_keys, "gateway_lots": _lots}


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for name, columns in TABLES.items():
        if name not in existing:
            op.create_table(name, *columns())
            continue
        if name == "gateway_lots" and "chain_lot_id" not in {c["name"] for c in sa.inspect(bind).get_columns(name)}:
            op.add_column(name, sa.Column("chain_lot_id", sa.BigInteger(), nullable=True))  # a version-1 table
        _adopt(name, columns())
    if VERSION_TABLE in existing:
        op.drop_table(VERSION_TABLE)


def _adopt(name: str, columns: list[SchemaItem]) -> None:
    """Give a table `create_all` made the constraint names a fresh one gets; rows untouched."""
    bind = op.get_bind()
    wanted = sa.Table(name, sa.MetaData(), *columns)
    if bind.dialect.name == "postgresql":
        # The server named them (<table>_pkey, <table>_<column>_key): rename in place.
        inspector = sa.inspect(bind)
        uniques = {tuple(u["column_names"]): u["name"] for u in inspector.get_unique_constraints(name)}
        renames = [(inspector.get_pk_constraint(name)["name"], wanted.primary_key.name)]
        for constraint in wanted.constraints:
            if isinstance(constraint, sa.UniqueConstraint):
                renames.append((uniques[tuple(c.name for c in constraint.columns)], constraint.name))
        for old, new in renames:
            if old != new:
                op.execute(sa.text(f'ALTER TABLE {name} RENAME CONSTRAINT "{old}" TO "{new}"'))
    else:
        # SQLite keeps constraints unnamed in the table's SQL and cannot rename them: copy
        # the table into one made from the named definition (same columns, same rows).
        with op.batch_alter_table(name, recreate="always", copy_from=wanted):
            pass


def downgrade() -> None:
    # Back to the round-1 arrangement: the tables stay (with their rows), owned again by
    # the gateway's own version table.
    version = op.create_table(VERSION_TABLE, sa.Column("version", sa.Integer(), primary_key=True))
    op.bulk_insert(version, [{"version": ROUND_ONE_VERSION}])
