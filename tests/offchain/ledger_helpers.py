"""Small helpers the ledger tests share: bind a fresh wallet, fund an account."""

from __future__ import annotations

import itertools

from eth_account import Account

from promptex.ledger import Ledger
from promptex.ledger import wallets as _wallets
from promptex.ledger.binding import sign

_events = itertools.count()


def event_id() -> str:
    """A fresh chain event id, "<tx hash>:<log index>"."""
    return f"0x{next(_events):064x}:0"


def bind_new_wallet(ledger: Ledger, account: int, key: bytes | None = None) -> str:
    """Bind a fresh wallet (or the one of private `key`) to `account`; returns its address."""
    wallet = Account.create() if key is None else Account.from_key(key)
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    return str(wallet.address)


def debited_wallet(ledger: Ledger, account: int) -> str:
    """The account's first bound wallet, the one settlements debit and whose deposits are the
    account's (a later wallet's are its own: `wallets.account_for_address`); bound if none."""
    with ledger.engine.connect() as conn:
        first = _wallets.first_bound(conn, account)
    return bind_new_wallet(ledger, account) if first is None else first


def fund(ledger: Ledger, account: int, asset: str, amount: int, *, cap: int | None = None) -> str:
    """Deposit `amount` from the account's debited wallet (bound if it has none) and sign a
    cap (default: the amount)."""
    address = debited_wallet(ledger, account)
    ledger.credit_deposit(event_id(), address, asset, amount)
    ledger.set_spend_cap(account, asset, amount if cap is None else cap)
    return address
