"""The redemption agent's tables (migration 0004), on the one MetaData of
`ledger.metadata`, in the ledger's database: users' contacts, linked provider accounts
(billing credentials sealed like sellers' secrets), auto-topup rules, redemptions as a
state machine, the transactions the agent signed, and the notification outbox.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from promptex.chain.txlog import signed_txs
from promptex.ledger.amounts import Amount
from promptex.ledger.metadata import ADDRESS, ASSET, REASON, REF, metadata

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
    Column("last_outcome", String(REASON), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "enabled"),
)

# Raw transactions the agent signed, stored before broadcast (as coordinator_txs); a redeem
# whose nonce went to a transaction the log does not hold keeps the head at which that was
# first seen (0022), and that block's hash (0023: a reorg that replaces it counts again):
# it is not taken for dropped until then + the reorg window.
agent_txs = signed_txs(
    "agent_txs", Column("nonce_taken_head", BigInteger, nullable=True), Column("nonce_taken_hash", String(66))
)

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
    Column("error", String(REASON), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # `promptex redeem --request-id`: a retry finds its redemption, ended or not (0020).
    Column("request_id", String(REF), nullable=True),
    # The swap deadline the redeem was signed with: past it those bytes only revert (0020).
    Column("swap_deadline", BigInteger, nullable=True),
    # The billing purchase's idempotency key, set with the escrowed step (0021; None before).
    Column("billing_key", String(REF), nullable=True),
    Index(None, "status"),
    Index(None, "user_address", "provider"),
    Index(None, "user_address", "request_id", unique=True),
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
    Column("error", String(REASON), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("sent_at", BigInteger, nullable=True),
    Index(None, "status"),
)
