"""The ledger's hot path (raw statements on SQLite, one statement per operation on
PostgreSQL) against its general path: the same holds, balances, journal and usage rows;
a failing hot path falls back without a trace."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from eth_account import Account

from promptex.ledger import Ledger, UsageRecord
from promptex.ledger import holds as ledger_holds
from promptex.ledger.binding import sign
from promptex.protocol.units import USD_MICRO as USDC

_ids = itertools.count()
RECORD = UsageRecord("fake-gpt", 5, 16, 37, gateway_lot_id=3, chain_lot_id=9, lot_kind="listed", fee_bps=500)


@pytest.fixture
def book(ledger_url: str) -> Iterator[Ledger]:
    ledger = Ledger.open(ledger_url, sqlite_synchronous="NORMAL")
    yield ledger
    ledger.check()
    ledger.close()


def funded(ledger: Ledger, amount: int = 10 * USDC) -> int:
    account = ledger.create_account().id
    wallet = Account.create()
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    ledger.credit_deposit(f"0x{next(_ids):064x}:7", wallet.address, "USDC", amount)
    ledger.set_spend_cap(account, "USDC", amount)
    return account


def served(ledger: Ledger, account: int, request_id: str) -> tuple[object, ...]:
    ledger.reserve(account, "USDC", 1_000, request_id, 900)
    hold = ledger.settle(request_id, 700, record=RECORD)
    usage = ledger.usage_record(request_id)
    assert usage is not None
    return (
        hold.status,
        hold.cost,
        hold.charged,
        hold.amount,
        usage.cost,
        usage.asset,
        usage.model,
        usage.input_tokens,
        usage.output_tokens,
        usage.list_usd_micro,
        usage.gateway_lot_id,
        usage.chain_lot_id,
        usage.lot_kind,
        usage.fee_bps,
        usage.status,
    )


def test_hot_path__same_rows_as_general_path__and_idempotent(book: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    account = funded(book)
    fast = served(book, account, "req-fast")
    if book._pg is not None:  # PostgreSQL: force the general path by breaking the one statement
        monkeypatch.setattr(ledger_holds, "PG_RESERVE", "SELECT broken_on_purpose")
        monkeypatch.setattr(ledger_holds, "PG_SETTLE_WITH_USAGE", "SELECT broken_on_purpose")
    else:  # SQLite: the general functions themselves
        monkeypatch.setattr(ledger_holds, "reserve_fast", ledger_holds.reserve)
        monkeypatch.setattr(ledger_holds, "settle_fast", ledger_holds._settle_general)
    general = served(book, account, "req-general")
    assert fast == general
    monkeypatch.undo()
    # again with the same request ids: nothing changes
    assert book.reserve(account, "USDC", 1_000, "req-fast", 900).status.value == "settled"
    assert book.settle("req-fast", 700, record=RECORD).charged == 700
    balance = book.balance(account, "USDC")
    assert (balance.posted, balance.held) == (10 * USDC - 1_400, 0)
    assert book.system_balance("usage", "USDC") == 1_400


def test_hot_path__refused_or_overage__general_path_answers(book: Ledger) -> None:
    account = funded(book, amount=1_000)
    book.reserve(account, "USDC", 600, "req-a", 900)
    with pytest.raises(Exception, match="can spend 400"):
        book.reserve(account, "USDC", 600, "req-b", 900)
    hold = book.settle("req-a", 900)  # above the hold, and the balance covers it
    assert (hold.cost, hold.charged) == (900, 900)
    assert book.balance(account, "USDC").posted == 100
