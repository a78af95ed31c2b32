"""The off-chain ledger: double-entry balances per account and asset, holds for
requests, wallet binding, org budgets and promotional credit, on SQLite or PostgreSQL.

    ledger = Ledger.open("sqlite:///ledger.sqlite3")   # or postgresql://…
    hold = ledger.reserve(account, "CLD", amount, request_id, ttl=120)
    ledger.settle(request_id, metered_cost)             # or ledger.release(request_id)

The gateway holds through `ledger.holds` (`promptex.ledger.holds`): funds and the serving
lot's capacity in one transaction.
"""

from promptex.ledger.binding import BindingMessage
from promptex.ledger.core import Ledger
from promptex.ledger.debts import Debt
from promptex.ledger.errors import (
    AccountInDebt,
    BindingError,
    BudgetExceeded,
    ChainEventConflict,
    ExpiredMessage,
    HoldConflict,
    HoldNotFound,
    HoldOrphaned,
    InsufficientFunds,
    InvalidSignature,
    LedgerError,
    LedgerInconsistent,
    LedgerUnavailable,
    LotCapacityExceeded,
    NonceReplayed,
    NotAMember,
    Refusal,
    SchemaNotCurrent,
    SpendCapExceeded,
    UnknownAccount,
    UnknownNonce,
    WalletAlreadyBound,
    WrongChain,
)
from promptex.ledger.holds import Extra, ExtraTake, Holds, LotClaim, Reservation
from promptex.ledger.lots import LotState, LotStateError
from promptex.ledger.models import (
    Account,
    AccountKind,
    Balance,
    Budget,
    Deposit,
    ExitLock,
    ExitStatus,
    Hold,
    HoldStatus,
    LotCapacity,
)
from promptex.ledger.sweeper import Sweeper
from promptex.ledger.usage import StoredUsage, UsageRecord

__all__ = [
    "Account",
    "AccountInDebt",
    "AccountKind",
    "Balance",
    "BindingError",
    "BindingMessage",
    "Budget",
    "BudgetExceeded",
    "ChainEventConflict",
    "Debt",
    "Deposit",
    "ExitLock",
    "ExitStatus",
    "ExpiredMessage",
    "Extra",
    "ExtraTake",
    "Hold",
    "HoldConflict",
    "HoldNotFound",
    "HoldOrphaned",
    "HoldStatus",
    "Holds",
    "InsufficientFunds",
    "InvalidSignature",
    "Ledger",
    "LedgerError",
    "LedgerInconsistent",
    "LedgerUnavailable",
    "SchemaNotCurrent",
    "LotCapacity",
    "LotCapacityExceeded",
    "LotClaim",
    "LotState",
    "LotStateError",
    "NonceReplayed",
    "NotAMember",
    "Refusal",
    "Reservation",
    "SpendCapExceeded",
    "StoredUsage",
    "Sweeper",
    "UnknownAccount",
    "UnknownNonce",
    "UsageRecord",
    "WalletAlreadyBound",
    "WrongChain",
]
