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
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
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

HASH = 66  # 0x + 64 hex: block and transaction hashes

# Where the indexer stands (one row): the last block whose events, ledger effects and this
# row were committed together. `rewinds` counts reorgs undone; it is part of every ledger
# event id, so a fact replayed after a rewind gets a fresh id (see indexer.effects).
indexer_cursor = Table(
    "indexer_cursor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("chain_id", BigInteger, nullable=False),
    Column("start_block", BigInteger, nullable=False),
    Column("block_number", BigInteger, nullable=False),  # start_block − 1 before the first batch
    Column("block_hash", String(HASH), nullable=True),
    Column("rewinds", Integer, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Hashes of the indexed blocks (the most recent ones; older rows are pruned): a reorg is
# found, and its fork point located, by comparing them with the chain's.
indexer_blocks = Table(
    "indexer_blocks",
    metadata,
    Column("number", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(HASH), nullable=False),
    Column("parent_hash", String(HASH), nullable=False),
)

# Every followed event, once per (tx hash, log index); `args` is JSON (ints as numbers,
# bytes as 0x-hex, addresses checksummed). `fact_id` is the ledger event id its effects
# were applied under (None: an event without ledger effects).
chain_events = Table(
    "chain_events",
    metadata,
    Column("tx_hash", String(HASH), primary_key=True),
    Column("log_index", Integer, primary_key=True, autoincrement=False),
    Column("block_number", BigInteger, nullable=False, index=True),
    Column("block_hash", String(HASH), nullable=False),
    Column("contract", String(ADDRESS), nullable=False),
    Column("source", String(32), nullable=False),  # CreditsVault, CreditEscrow, Factory, Pool, ...
    Column("name", String(64), nullable=False),
    Column("args", Text, nullable=False),
    Column("fact_id", String(REF), nullable=True),
    Index(None, "name", "block_number"),
)

# Spend caps the chain registered or revoked, as the ledger applied them: `previous` lets
# a reorg undo one (see chain_facts.register_spend_cap).
chain_spend_caps = Table(
    "chain_spend_caps",
    metadata,
    Column("event_id", String(REF), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("asset", String(ASSET), nullable=False),
    Column("previous", Amount, nullable=False),
    Column("remaining", Amount, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# ─── Coordinator (migration 0003) ────────────────────────────────────────────
# What each settled request used, written in the transaction that settles its hold: the
# coordinator batches these into on-chain settlements and their Merkle trees.
usage_records = Table(
    "usage_records",
    metadata,
    Column("request_id", String(REF), ForeignKey("holds.request_id"), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),  # who spent
    Column("payer_id", Integer, ForeignKey("accounts.id"), nullable=False),  # whose balance paid
    Column("asset", String(ASSET), nullable=False),
    Column("model", String(128), nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost", Amount, nullable=False),  # what the hold charged, in the asset's smallest unit
    Column("gateway_lot_id", Integer, nullable=True),
    Column("chain_lot_id", BigInteger, nullable=True),  # None: the lot was never opened on chain
    Column("lot_kind", String(16), nullable=True),  # tokenized | listed
    Column("list_usd_micro", Amount, nullable=False),  # the serving lot's draw-down at list price
    Column("fee_bps", Integer, nullable=True),  # USDC: the protocol fee the price included
    Column("seller_share", Amount, nullable=True),  # USDC: the listed lot's seller's part (at planning)
    Column("fee", Amount, nullable=True),  # USDC: the protocol's part (at planning)
    Column("settled_at", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # pending | batched | quarantined
    Column("address", String(ADDRESS), nullable=True),  # the wallet debited (at planning)
    Column("batch_id", Integer, ForeignKey("settlement_batches.id"), nullable=True, index=True),
    Column("epoch", BigInteger, nullable=True),
    Column("quarantine_reason", String(500), nullable=True),
    Column("quarantined_at", BigInteger, nullable=True),
    Index(None, "status", "asset"),
)


# Every transaction the coordinator signs, stored before it is broadcast: after a crash
# the same signed bytes are looked up or sent again, never signed anew.
def _signed_txs(name: str) -> Table:
    """A log of signed transactions, one per signer service (each checks its own nonces)."""
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("purpose", String(32), nullable=False),  # e.g. settle | consume | spend_cap | redeem | release
        Column("sender", String(ADDRESS), nullable=False),
        Column("nonce", BigInteger, nullable=False),
        Column("tx_hash", String(66), nullable=False, unique=True),
        Column("raw_tx", Text, nullable=False),
        Column("status", String(16), nullable=False),  # sent | succeeded | reverted | dropped
        Column("block_number", BigInteger, nullable=True),
        Column("created_at", BigInteger, nullable=False),
        Column("closed_at", BigInteger, nullable=True),
        Index(None, "status", "nonce"),
    )


coordinator_txs = _signed_txs("coordinator_txs")

# One settlement per (asset, epoch): planned → submitted → confirmed (or failed, its
# records back to pending, when its transaction can no longer land).
settlement_batches = Table(
    "settlement_batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("asset", String(ASSET), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("usage_root", String(66), nullable=False),
    Column("payload", Text, nullable=False),  # JSON: debits, credits, lot_draws, fee, consumes
    Column("total", Amount, nullable=False),
    Column("records", Integer, nullable=False),
    Column("tx_id", Integer, ForeignKey("coordinator_txs.id"), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger, nullable=True),
    Column("error", String(500), nullable=True),
    Index(None, "asset", "status"),
)

# The escrow draw-down of each listed lot a confirmed USDC batch paid (one per lot per epoch).
lot_consumptions = Table(
    "lot_consumptions",
    metadata,
    Column("batch_id", Integer, ForeignKey("settlement_batches.id"), primary_key=True),
    Column("chain_lot_id", BigInteger, primary_key=True),
    Column("amount", Amount, nullable=False),  # USD micro-units of list price
    Column("status", String(16), nullable=False),  # pending | submitted | done | failed
    Column("tx_id", Integer, ForeignKey("coordinator_txs.id"), nullable=True),
    Column("error", String(500), nullable=True),
)

# User-signed EIP-712 spend caps waiting for the coordinator to register them on chain.
spend_cap_submissions = Table(
    "spend_cap_submissions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(ADDRESS), nullable=False),
    Column("asset", String(ASSET), nullable=False),
    Column("per_epoch", Amount, nullable=False),
    Column("total", Amount, nullable=False),
    Column("expiry", BigInteger, nullable=False),
    Column("nonce", BigInteger, nullable=False),
    Column("signature", String(132), nullable=False),
    Column("status", String(16), nullable=False),  # pending | submitted | registered | rejected
    Column("tx_id", Integer, ForeignKey("coordinator_txs.id"), nullable=True),
    Column("error", String(500), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("address", "asset", "nonce"),
)

# Instant-exit releases the coordinator signed; each locks its amount in the ledger until
# the vault's release nonce shows it used, or it expires.
releases = Table(
    "releases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("address", String(ADDRESS), nullable=False),
    Column("asset", String(ASSET), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("nonce", BigInteger, nullable=False),
    Column("expiry", BigInteger, nullable=False),
    Column("signature", String(132), nullable=False),
    Column("status", String(16), nullable=False),  # active | used | expired
    Column("created_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger, nullable=True),
    Index(None, "address", "status"),
)

# Leader lease: one coordinator posts at a time (a row, so SQLite and PostgreSQL alike).
coordinator_lease = Table(
    "coordinator_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(REF), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

# ─── Agent (migration 0004) ───────────────────────────────────────────────────
# The redemption agent's state: users' contacts, linked provider accounts (billing
# credentials sealed like sellers' secrets), auto-topup rules, redemptions as a state
# machine, the transactions the agent signed, and the notification outbox.

agent_users = Table(
    "agent_users",
    metadata,
    Column("address", String(ADDRESS), primary_key=True),
    Column("email", String(REF), nullable=True),
    Column("created_at", BigInteger, nullable=False),
)

# One linked account per (user, provider); the credential is envelope-encrypted.
agent_accounts = Table(
    "agent_accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_address", String(ADDRESS), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("account_id", String(REF), nullable=False),  # the provider's own account id
    Column("account_salt", String(66), nullable=False),  # 0x hex; account_ref = keccak(salt ‖ id)
    Column("account_ref", String(66), nullable=False),  # 0x hex bytes32, as linked on chain
    Column("billing_url", Text, nullable=False),
    Column("secret_ciphertext", LargeBinary, nullable=False),
    Column("secret_nonce", LargeBinary, nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("wrap_nonce", LargeBinary, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("balance_usd_micro", Amount, nullable=True),
    Column("balance_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("user_address", "provider"),
)

# "provider below X → add Y, selling at most Z token units".
agent_rules = Table(
    "agent_rules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_address", String(ADDRESS), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("token", String(ASSET), nullable=False),
    Column("below_usd_micro", Amount, nullable=False),
    Column("add_usd_micro", Amount, nullable=False),
    Column("max_tokens_in", Amount, nullable=False),
    Column("enabled", Integer, nullable=False),
    Column("last_checked_at", BigInteger, nullable=True),
    Column("last_outcome", String(500), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "enabled"),
)

# Raw transactions the agent signed, stored before broadcast (as coordinator_txs).
agent_txs = _signed_txs("agent_txs")

# One redemption: planned → selling → escrowed → purchased → receipted → releasing →
# released (or failed / rejected / abandoned / refunded); see promptex.agent.machine.
agent_redemptions = Table(
    "agent_redemptions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_address", String(ADDRESS), nullable=False),
    Column("account_id", Integer, ForeignKey("agent_accounts.id"), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("token", String(ASSET), nullable=False),
    Column("usd_micro", Amount, nullable=False),
    Column("max_tokens_in", Amount, nullable=False),
    Column("rule_id", Integer, ForeignKey("agent_rules.id"), nullable=True),
    Column("status", String(16), nullable=False),
    Column("redeem_tx_id", Integer, ForeignKey("agent_txs.id"), nullable=True),
    Column("release_tx_id", Integer, ForeignKey("agent_txs.id"), nullable=True),
    Column("chain_redemption_id", BigInteger, nullable=True),
    Column("tokens_in", Amount, nullable=True),
    Column("deadline", BigInteger, nullable=True),
    Column("billing_attempts", Integer, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("billing_ref", String(66), nullable=True),
    Column("receipt_usd_micro", Amount, nullable=True),
    Column("receipt_signature", String(132), nullable=True),
    Column("error", String(500), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index(None, "status"),
    Index(None, "user_address", "provider"),
)

# Notifications to users, written in the same transaction as what they report; a
# dedupe key keeps a retried step from writing one twice.
agent_outbox = Table(
    "agent_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(REF), nullable=False, unique=True),
    Column("user_address", String(ADDRESS), nullable=False),
    Column("kind", String(32), nullable=False),  # receipt | rule_skipped | abandoned | failed
    Column("subject", String(REF), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending | sent | unsent
    Column("attempts", Integer, nullable=False),
    Column("error", String(500), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("sent_at", BigInteger, nullable=True),
    Index(None, "status"),
)
