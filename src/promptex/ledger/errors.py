"""What the ledger refuses, as exceptions a caller can tell apart."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every refusal by the ledger."""


class UnknownAccount(LedgerError):
    pass


class SchemaNotCurrent(LedgerError):
    """The ledger's schema is not the one this code was written for (behind it: the services
    bring it up to date when they start; ahead of it: a newer promptex runs the market; or
    none yet), and the caller chose not to migrate it (`Ledger.open(current=True)`)."""


class LedgerUnavailable(LedgerError):
    """The ledger's database could not be reached (PostgreSQL: no connection within its
    connect timeout, or one lost): nothing was done; the caller may retry."""


class Refusal(LedgerError):
    """A hold refused for want of something; `available` is how much of it there was
    (what a smaller request could still have: the gateway names it), None if unknown;
    `payer` the account whose balance, cap or budget it is, as a refusal names it ("org
    'acme'", "account 5"), None if not the ledger's to say (a key's own budget)."""

    def __init__(self, message: str, *, available: int | None = None, payer: str | None = None) -> None:
        super().__init__(message)
        self.available = available
        self.payer = payer


class InsufficientFunds(Refusal):
    """The payer's spendable balance (posted − held − locked) is below the amount."""


class SpendCapExceeded(Refusal):
    """The payer's remaining signed spend cap, less what is held, is below the amount."""


class AccountInDebt(LedgerError):
    """The payer owes the asset (an open debt, see `ledger.debts`): it is not served in it
    until a deposit repays the debt. Not an InsufficientFunds: promotional credit must not
    pay for an account that owes."""


class BudgetExceeded(Refusal):
    """A member's budget at an org (or a promotional grant) does not cover the amount."""


class LotCapacityExceeded(Refusal):
    """No lot the request may use has the capacity its hold needs (`available`: the most
    any of them has left, in USD micro at list price)."""


class NotAMember(LedgerError):
    """An account tried to spend from an org or treasury it does not belong to."""


class HoldNotFound(LedgerError):
    pass


class HoldConflict(LedgerError):
    """A request id reused with other terms, or a hold that can no longer be settled."""


class HoldOrphaned(HoldConflict):
    """A hold a sweeper ended early because its gateway process's lock was free (the process
    died, or lost its lock connection): its answer is not charged (`HoldStatus.ORPHANED`)."""


class ChainEventConflict(LedgerError):
    """A chain event id seen again with different facts."""


class BindingError(LedgerError):
    """A wallet binding refused."""


class InvalidSignature(BindingError):
    pass


class ExpiredMessage(BindingError):
    pass


class UnknownNonce(BindingError):
    pass


class NonceReplayed(BindingError):
    pass


class WalletAlreadyBound(BindingError):
    pass


class WrongChain(LedgerError):
    """The database mirrors another chain or deployment than the one a service is pointed
    at; the message says, in one line, what differs and what to do."""


class LedgerInconsistent(LedgerError):
    """The books do not balance; `problems` says where."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the books: " + "; ".join(problems[:10]))
        self.problems = problems


class WriterBusy(Exception):
    """A write inside `Ledger.try_writes` found SQLite's write lock taken by another
    process: nothing of that write was done. Not a refusal: the caller runs it again where
    it may wait (the gateway: on its ledger thread)."""
