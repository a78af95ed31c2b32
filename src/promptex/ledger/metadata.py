"""The one SQLAlchemy `MetaData` every store's tables are declared on, and the column
sizes they share.

Each package owns its tables in its own `schema` module (`ledger.schema`,
`indexer.schema`, `coordinator.schema`, `agent.schema`, `gateway.schema`); they all live
in one database, so they share one naming convention and one Alembic history
(`promptex/migrations/`, whose migrations build exactly these tables: a test compares
them). The ledger sits below the services, so the shared registry lives here.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, MetaData

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# A 64-bit id on PostgreSQL; SQLite's INTEGER PRIMARY KEY is already 64-bit (the rowid).
BigId = BigInteger().with_variant(Integer(), "sqlite")

ASSET = 16  # symbol length
ADDRESS = 42  # 0x + 40 hex, EIP-55 checksummed
REF = 200  # request ids, chain event ids, journal refs
REASON = 500  # an error or a reason kept with a record (longer text is cut)
HASH = 66  # 0x + 64 hex: block and transaction hashes
