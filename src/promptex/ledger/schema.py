"""The ledger's tables (SQLAlchemy Core), on the one MetaData of `ledger.metadata`:
accounts, balances, org members and budgets, promotional grants, holds, the journal,
wallets and their binding challenges, deposits, exits, the spend caps the chain set,
usage records (written with each settlement), instant-exit releases (each locks a
balance), debts, the chain identity every store follows, and seller lots' capacity and
its leases. Only `promptex.ledger` reads or writes them; other packages call its API.

Amounts are `Amount` (exact ints of any size), times are unix seconds. No balance or
budget is ever negative: CHECK constraints say so on both databases (migration 0008),
and what would have gone below zero is a debt instead (see `ledger.debts`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from promptex.ledger.amounts import Amount, non_negative
from promptex.ledger.metadata import ADDRESS, ASSET, HASH, REASON, REF, BigId, metadata

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
    *(non_negative(column) for column in ("posted", "held", "locked", "cap_remaining")),
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
    non_negative("remaining"),
    non_negative("held"),
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
    # The lot capacity reserved with the hold (USD micro at list price), and the lease it
    # came from on PostgreSQL (none on SQLite: the lot's row itself); see `holds.capacity`.
    Column("lot_id", Integer, nullable=True),
    Column("lot_amount", BigInteger, nullable=True),
    Column("lease_id", Integer, nullable=True),
    Column("extras", String(REF), nullable=True),  # extra counters taken with it (`holds.extras`)
    # The registered gateway process that made it (PostgreSQL; none on SQLite): a sweeper
    # that can take that process's lock ends it early, as "orphaned" (migration 0019).
    Column("process_id", Integer, nullable=True),
    Index(None, "status", "expires_at"),
)

# Gateway processes on PostgreSQL (`ledger.processes`): each registers a row and holds a
# session advisory lock named by its id for as long as it lives; `holder` names its
# capacity leases. A row whose lock another session can take is a dead process's.
ledger_processes = Table(
    "ledger_processes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("holder", String(64), nullable=False),
    Column("host", String(64), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
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
    Column("bound_at", BigInteger, nullable=False),  # unique per account: its wallets' order (`first_bound`)
    Column("nonce", String(66), nullable=False),  # the challenge whose signature bound it
    Index(None, "account_id", "bound_at", unique=True),
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

# The ledger's own accounts, balances only in the journal: "vault" (minus what the vault
# holds for users) and "usage" (settled charges) made by the first migration, "debts"
# (minus what accounts owe, see `debts` below) by migration 0008.
SYSTEM_ACCOUNTS = ("vault", "usage", "debts")

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

# What each settled request used, written in the transaction that settles its hold: the
# coordinator batches these into on-chain settlements and their Merkle trees, through the
# functions of `ledger.usage`. `batch_id` refers to the coordinator's `settlement_batches`
# by name: the key resolves once `coordinator.schema` is loaded on the same MetaData.
usage_records = Table(
    "usage_records",
    metadata,
    Column("request_id", String(REF), ForeignKey("holds.request_id"), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),  # who spent
    Column("payer_id", Integer, ForeignKey("accounts.id"), nullable=False),  # whose balance paid
    Column("asset", String(ASSET), nullable=False),
    Column("model", String(128), nullable=False),
    Column("input_tokens", BigInteger, nullable=False),  # all input, cached included
    Column("output_tokens", BigInteger, nullable=False),  # all output, reasoning included
    # Of input_tokens: read from / written to the provider's prompt cache (writes: of
    # which with a one-hour lifetime); of output_tokens: reasoning (migration 0006).
    Column("cache_read_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_write_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_write_1h_tokens", BigInteger, nullable=False, server_default="0"),
    Column("reasoning_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cost", Amount, nullable=False),  # what the hold charged, in the asset's smallest unit
    Column("gateway_lot_id", Integer, nullable=True),
    Column("chain_lot_id", BigInteger, nullable=True),  # None: the lot was never opened on chain
    Column("lot_kind", String(16), nullable=True),  # tokenized | listed
    Column("list_usd_micro", Amount, nullable=False),  # the serving lot's draw-down at list price
    Column("fee_bps", Integer, nullable=True),  # USDC: the protocol fee the price included
    Column("seller_share", Amount, nullable=True),  # USDC: the listed lot's seller's part (at planning)
    Column("fee", Amount, nullable=True),  # USDC: the protocol's part (at planning)
    Column("settled_at", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # pending | batched | quarantined | refunded
    Column("address", String(ADDRESS), nullable=True),  # the wallet debited (at planning)
    Column("batch_id", Integer, ForeignKey("settlement_batches.id"), nullable=True, index=True),
    Column("epoch", BigInteger, nullable=True),
    Column("quarantine_reason", String(REASON), nullable=True),
    Column("quarantined_at", BigInteger, nullable=True),
    # A quarantined record the chain can never settle is refunded to its payer in the
    # ledger (the vault never debited it), with the reason shown to the payer (migration 0012).
    Column("refund_reason", String(REASON), nullable=True),
    Column("refunded_at", BigInteger, nullable=True),
    # Signed mode (issue 23, migration 0013): 'capped' (debited under the signed spend cap)
    # or 'signed' (covered by the ceiling voucher named here: session, lane, ceiling).
    Column("mode", String(8), nullable=False, server_default="capped"),
    Column("voucher_session", BigInteger, nullable=True),
    Column("voucher_lane", Integer, nullable=True),
    Column("voucher_ceiling", Amount, nullable=True),
    Index(None, "status", "asset"),
    Index(None, "asset", "epoch"),  # the newest epoch per asset (`usage.next_epoch`; migration 0007)
)

# Instant-exit releases the coordinator signed; each locks its amount in the ledger until
# the vault's release nonce shows it used, or it expires. The ledger's: a release and its
# lock on `balances.locked` are written together (`ledger.releases`), and the books check
# counts active releases in `locked`.
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

# What an account owes: the part of a debit its balance could not cover (a reorg removing
# a deposit already spent, an exit completing before the usage it raced settled, a charge
# landing after a chain fact emptied the balance). The debit is posted whole; the "debts"
# system account lends the account the missing part in a "debt" journal entry, so the
# balance stops at zero, and every later credit to the account in that asset repays it
# first ("repay" entries). While a debt is open the balance in its asset is zero, so
# nothing is reserved from it (see `ledger.debts`).
debts = Table(
    "debts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("asset", String(ASSET), nullable=False),
    Column("amount", Amount, nullable=False),  # owed when it opened
    Column("repaid", Amount, nullable=False),  # repaid since
    Column("source", String(REF), nullable=False),  # the journal ref whose debit overdrew
    Column("reason", String(REASON), nullable=False),
    Column("status", String(16), nullable=False),  # open | repaid
    Column("created_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger, nullable=True),
    UniqueConstraint("source", "account_id", "asset"),
    Index(None, "account_id", "asset", "status"),
    Index(None, "status"),
    non_negative("amount"),
    non_negative("repaid"),
)

# The chain every store in this database mirrors (one row): its id, its genesis block's
# hash (a new local chain has a new one, the same id and, deployed again, the same
# addresses) and the deployment's contracts. Every service checks it at start and refuses
# another chain or deployment (see `ledger.identity`).
chain_identity = Table(
    "chain_identity",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("chain_id", BigInteger, nullable=False),
    Column("genesis_hash", String(HASH), nullable=False),
    Column("network", String(64), nullable=False),
    Column("contracts", Text, nullable=False),  # JSON {name: address} of the deployment followed
    Column("recorded_at", BigInteger, nullable=False),
    Column("recorded_by", String(32), nullable=False),  # the service that recorded it
    CheckConstraint("id = 1", name="one_row"),
)

# A seller lot's capacity as the ledger counts it, in USD micro at list price (what the
# escrow is consumed in), keyed by the gateway's lot id: what the chain says remains and
# has consumed, the usage settled against it, and what is reserved — by active holds
# (SQLite) or by leases to gateway processes (PostgreSQL). A hold reserves capacity in
# the transaction that holds the buyer's funds; see `holds.capacity`:
#     reserved + (used − chain_consumed) ≤ chain_remaining
CAPACITY_COUNTS = ("chain_remaining", "chain_consumed", "used", "reserved")
lot_capacity = Table(
    "lot_capacity",
    metadata,
    Column("lot_id", Integer, primary_key=True, autoincrement=False),
    Column("chain_lot_id", BigInteger, nullable=True),
    Column("chain_remaining", BigInteger, nullable=False),
    Column("chain_consumed", BigInteger, nullable=False),
    Column("used", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    *(CheckConstraint(f"{name} >= 0", name=f"{name}_non_negative") for name in CAPACITY_COUNTS),
)

# A slice of a lot's capacity leased to one gateway process (PostgreSQL), so concurrent
# holds take from their process's lease row rather than all from the lot's row. The lot
# counts the whole slice as reserved; the lease counts what its holds reserve and what
# its settled usage used (folded into the lot's `used` when the slice is returned).
capacity_leases = Table(
    "capacity_leases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("lot_id", Integer, ForeignKey("lot_capacity.lot_id"), nullable=False),
    Column("holder", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("used", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    UniqueConstraint("lot_id", "holder"),
    CheckConstraint("reserved >= 0", name="reserved_non_negative"),
    CheckConstraint("used >= 0", name="used_non_negative"),
    CheckConstraint("reserved + used <= amount", name="within_amount"),
)

# Each seller lot's life, keyed by the gateway's lot id (see `ledger.lots`): requested →
# opening (its signed open_lot stored before broadcast) → open (the chain confirmed it) →
# closing → closed / expired / slashed (chain events), or failed (it never opened, and
# says why). Only an `open` lot before `route_until` (its expiry less one settlement
# epoch and a posting margin) is routed, so the usage it serves always settles.
lot_states = Table(
    "lot_states",
    metadata,
    Column("lot_id", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(REASON), nullable=True),  # why it serves nothing, or what ended it
    Column("expires_at", BigInteger, nullable=False),
    Column("route_until", BigInteger, nullable=False),
    Column("chain_lot_id", BigInteger, nullable=True, unique=True),  # the CreditEscrow lot, once opened
    Column("open_tx", String(HASH), nullable=True, unique=True),  # the signed open_lot's hash
    Column("close_at", BigInteger, nullable=True),  # closing: finalize_close from then on
    Column("updated_at", BigInteger, nullable=False),
    Index(None, "state"),
)

# Signed mode (issue 23): the session keys the chain registered (`ledger.sessions`), one
# current session per (account, asset) — the newest; `session` is the vault's session
# nonce. Vouchers are EIP-712 messages of the vault named here (chain id, address), for
# the asset's address. A revoked session ends at `ends_at` on chain; the gateway takes no
# voucher of it from the revocation on.
session_keys = Table(
    "session_keys",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("asset", String(ASSET), primary_key=True),
    Column("session", BigInteger, primary_key=True, autoincrement=False),
    Column("address", String(ADDRESS), nullable=False),  # the wallet that signed it
    Column("asset_address", String(ADDRESS), nullable=False),
    Column("chain_id", BigInteger, nullable=False),
    Column("vault", String(ADDRESS), nullable=False),
    Column("key", String(ADDRESS), nullable=False),  # the session key vouchers are signed by
    Column("lanes", Integer, nullable=False),
    Column("maximum", Amount, nullable=False),
    Column("expiry", BigInteger, nullable=False),
    Column("signed_from", BigInteger, nullable=False),  # the first window settled in signed mode
    Column("ends_at", BigInteger, nullable=True),  # revoked: when the chain ends it
    Column("revoked_at", BigInteger, nullable=True),
    Column("event_id", String(REF), nullable=False, unique=True),
    Column("revoke_event", String(REF), nullable=True, unique=True),
    Column("previous_cap", Amount, nullable=False),  # the cap it replaced (a reorg restores it)
    Column("created_at", BigInteger, nullable=False),
    # The SpendCapRegistered the chain accepted after it (the way back to capped mode): the
    # vault takes a cap only once the session's vouchers no longer settle (migration 0025).
    Column("capped_by", String(REF), nullable=True),
    # The last second the vault settles its vouchers (the close of its last window), when the
    # indexer read the vault's epoch clock (migration 0026; None: the gateway takes the expiry).
    Column("settles_until", BigInteger, nullable=True),
)

# Per lane of a session: what the ledger charged, what the chain settled, the highest
# voucher the gateway accepted (the most the lane can ever be debited), and the request
# in flight on it, if any, with its hold and voucher (`ledger.lanes`). One request at a
# time per lane: `inflight` is set in the hold's transaction and cleared when it ends.
voucher_lanes = Table(
    "voucher_lanes",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("asset", String(ASSET), primary_key=True),
    Column("session", BigInteger, primary_key=True, autoincrement=False),
    Column("lane", Integer, primary_key=True, autoincrement=False),
    Column("charged", Amount, nullable=False),
    Column("settled", Amount, nullable=False),
    Column("ceiling", Amount, nullable=False),
    Column("signature", String(132), nullable=True),
    Column("inflight", String(REF), nullable=True),
    Column("inflight_hold", Amount, nullable=True),
    Column("inflight_ceiling", Amount, nullable=True),
    Column("inflight_signature", String(132), nullable=True),
    Column("updated_at", BigInteger, nullable=False),
    *(non_negative(column) for column in ("charged", "settled", "ceiling")),
)
