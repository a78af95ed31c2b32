"""Small helpers the ledger tests share: bind a fresh wallet, fund an account."""

from __future__ import annotations

import itertools

from eth_account import Account

from promptex.ledger import Ledger
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


def fund(ledger: Ledger, account: int, asset: str, amount: int, *, cap: int | None = None) -> str:
    """Deposit `amount` from a wallet bound to `account` and sign a cap (default: the amount)."""
    address = bind_new_wallet(ledger, account)
    ledger.credit_deposit(event_id(), address, asset, amount)
    ledger.set_spend_cap(account, asset, amount if cap is None else cap)
    return address
