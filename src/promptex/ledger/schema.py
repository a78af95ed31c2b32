"""The ledger's tables (SQLAlchemy Core). Migrations in `migrations/versions/` build
exactly this; a test compares the two.

Amounts are `Amount` (exact ints of any size), times are unix seconds.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from promptex.ledger.amounts import Amount

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# A 64-bit id on PostgreSQL; SQLite's INTEGER PRIMARY KEY is already 64-bit (the rowid).
BigId = BigInteger().with_variant(Integer(), "sqlite")

ASSET = 16  # symbol length
ADDRESS = 42  # 0x + 40 hex, EIP-55 checksummed
REF = 200  # request ids, chain event ids, journal refs

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(REF), nullable=True),  # unclaimed accounts: the address
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("kind", "name"),
)

# One row per (account, asset) for every account but the system ones.
balances = Table(
    "balances",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("asset", String(ASSET), primary_key=True),
    Column("posted", Amount, nullable=False),
    Column("held", Amount, nullable=False),
    Column("locked", Amount, nullable=False),
    Column("cap_remaining", Amount, nullable=False),
)

members = Table(
    "members",
    metadata,
    Column("org_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("member_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
)

# A member's optional budget at an org (or promotional credit at a treasury), per asset.
budgets = Table(
    "budgets",
    metadata,
    Column("org_id", Integer, primary_key=True),
    Column("member_id", Integer, primary_key=True),
    Column("asset", String(ASSET), primary_key=True),
    Column("remaining", Amount, nullable=False),
    Column("held", Amount, nullable=False),
    ForeignKeyConstraint(["org_id", "member_id"], ["members.org_id", "members.member_id"]),
)

grants = Table(
    "grants",
    metadata,
    Column("grant_id", String(REF), primary_key=True),
    Column("treasury_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("asset", String(ASSET), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

holds = Table(
    "holds",
    metadata,
    Column("request_id", String(REF), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("payer_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("asset", String(ASSET), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger, nullable=True),
    Column("cost", Amount, nullable=True),
    Column("charged", Amount, nullable=True),
    Index(None, "status", "expires_at"),
)

journal_entries = Table(
    "journal_entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("ref", String(REF), nullable=False, unique=True),  # idempotency key, e.g. "settle:<request id>"
    Column("kind", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

journal_lines = Table(
    "journal_lines",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("entry_id", BigId, ForeignKey("journal_entries.id"), nullable=False, index=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("asset", String(ASSET), nullable=False),
    Column("amount", Amount, nullable=False),  # signed: + increases the account's balance
    Index(None, "account_id", "asset"),
)

wallets = Table(
    "wallets",
    metadata,
    Column("address", String(ADDRESS), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("bound_at", BigInteger, nullable=False),
    Column("nonce", String(66), nullable=False),  # the challenge whose signature bound it
)

binding_challenges = Table(
    "binding_challenges",
    metadata,
    Column("nonce", String(66), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("wallet", String(ADDRESS), nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
)

deposits = Table(
    "deposits",
    metadata,
    Column("event_id", String(REF), primary_key=True),
    Column("address", String(ADDRESS), nullable=False, index=True),
    Column("asset", String(ASSET), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

exits = Table(
    "exits",
    metadata,
    Column("event_id", String(REF), primary_key=True),  # the chain event that requested it
    Column("address", String(ADDRESS), nullable=False),
    Column("asset", String(ASSET), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("closed_by", String(REF), nullable=True, unique=True),  # the chain event that ended it
    Column("created_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger, nullable=True),
    Index(None, "address", "asset", "status"),
)

SYSTEM_ACCOUNTS = ("vault", "usage")  # created by the first migration

# ─── Indexer (migration 0002) ────────────────────────────────────────────────

# ─── Coordinator (migration 0003) ────────────────────────────────────────────
