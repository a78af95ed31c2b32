"""The off-chain ledger: double-entry balances per account and asset, holds for
requests, wallet binding, org budgets and promotional credit, on SQLite or PostgreSQL.

    ledger = Ledger.open("sqlite:///ledger.sqlite3")   # or postgresql://…
    hold = ledger.reserve(account, "CLD", amount, request_id, ttl=120)
    ledger.settle(request_id, metered_cost)             # or ledger.release(request_id)
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
    InsufficientFunds,
    InvalidSignature,
    LedgerError,
    LedgerInconsistent,
    NonceReplayed,
    NotAMember,
    SpendCapExceeded,
    UnknownAccount,
    UnknownNonce,
    WalletAlreadyBound,
    WrongChain,
)
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
    "Hold",
    "HoldConflict",
    "HoldNotFound",
    "HoldStatus",
    "InsufficientFunds",
    "InvalidSignature",
    "Ledger",
    "LedgerError",
    "LedgerInconsistent",
    "NonceReplayed",
    "NotAMember",
    "SpendCapExceeded",
    "StoredUsage",
    "Sweeper",
    "UnknownAccount",
    "UnknownNonce",
    "UsageRecord",
    "WalletAlreadyBound",
    "WrongChain",
]
