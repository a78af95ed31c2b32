"""The gateway's tables (migration 0005): API keys (stored hashed) and seller lots with
their sealed upstream secrets. On the one MetaData of `ledger.metadata`, in the ledger's
database; only Alembic creates them (a round-1 database, whose tables `create_all` made,
is adopted by migration 0005).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Integer, LargeBinary, String, Table, Text

from promptex.ledger.amounts import Amount, non_negative
from promptex.ledger.metadata import metadata

api_keys = Table(
    "gateway_api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),  # the first characters, to tell keys apart
    Column("account_id", Integer, nullable=False),  # who spends (a ledger account)
    Column("payer_id", Integer, nullable=True),  # an org the key's account spends from
    Column("default_asset", String(16), nullable=True),
    Column("budget_asset", String(16), nullable=True),
    Column("budget_remaining", Amount, nullable=True),  # per-key budget, None: no limit
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
)

lots = Table(
    "gateway_lots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("provider", String(32), nullable=False),
    Column("kind", String(16), nullable=False),  # tokenized | listed
    Column("api", String(16), nullable=False),  # openai | anthropic
    Column("base_url", Text, nullable=False),
    Column("seller", String(64), nullable=False),
    Column("face_value_usd_micro", BigInteger, nullable=False),
    Column("remaining_usd_micro", BigInteger, nullable=False),
    Column("rate_bps", Integer, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("resale_permitted", Boolean, nullable=False),
    Column("secret_ciphertext", LargeBinary, nullable=False),
    Column("secret_nonce", LargeBinary, nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("wrap_nonce", LargeBinary, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("attestation", Text, nullable=True),  # the open_lot arguments, JSON
    Column("chain_lot_tx", String(80), nullable=True),
    Column("chain_lot_id", BigInteger, nullable=True),  # the CreditEscrow lot, once opened
)

# ─── Limits (migration 0010): see gateway.limits ─────────────────────────────

limits = Table(
    "gateway_limits",
    metadata,
    Column("subject", String(80), primary_key=True),  # key:ID, member:ORG:ACCOUNT, org:ORG
    Column("requests_per_minute", BigInteger, nullable=True),  # None: no such limit
    Column("tokens_per_minute", BigInteger, nullable=True),
    Column("concurrent", BigInteger, nullable=True),
    Column("cost", Amount, nullable=True),  # in cost_asset's smallest units per cost window
    Column("cost_asset", String(16), nullable=True),
    Column("cost_window_seconds", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

limit_counters = Table(
    "gateway_limit_counters",
    metadata,
    Column("subject", String(80), primary_key=True),
    Column("kind", String(16), primary_key=True),  # requests | tokens | concurrent | cost
    Column("window_start", BigInteger, primary_key=True),  # 0: concurrent (no window)
    Column("ends_at", BigInteger, nullable=False),
    Column("used", Amount, nullable=False),
    non_negative("used"),
)

limit_takes = Table(
    "gateway_limit_takes",
    metadata,
    Column("request_id", String(200), primary_key=True),
    Column("subject", String(80), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("window_start", BigInteger, nullable=False),
    Column("amount", Amount, nullable=False),
)

# ─── Lot health (migration 0011): see gateway.health ─────────────────────────

lot_health = Table(
    "gateway_lot_health",
    metadata,
    Column("lot_id", Integer, primary_key=True, autoincrement=False),
    Column("requests", BigInteger, nullable=False),  # upstream calls, every process's
    Column("errors", BigInteger, nullable=False),
    Column("answered", BigInteger, nullable=False),
    Column("latency_ms_total", BigInteger, nullable=False),  # over the answered calls
    Column("last_error", String(64), nullable=True),
    Column("last_error_at", BigInteger, nullable=True),
    Column("key_refused_at", BigInteger, nullable=True),  # the upstream last refused the seller's key (401/403)
    Column("circuit_open_until", BigInteger, nullable=True),  # unix seconds, while the lot is skipped
    Column("updated_at", BigInteger, nullable=False),
)
