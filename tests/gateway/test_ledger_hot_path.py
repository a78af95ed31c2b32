"""The ledger's hot path (raw statements on SQLite, one statement per operation on
PostgreSQL) against its general path: the same holds, balances, journal, usage rows and
lot capacity; a failing hot path falls back without a trace."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from promptex.ledger import Ledger, LotClaim, UsageRecord
from promptex.ledger.binding import sign
from promptex.ledger.holds import postgres as pg_holds
from promptex.ledger.holds.book import GeneralHolds
from promptex.ledger.holds.sqlite import SqliteHolds
from promptex.protocol.units import USD_MICRO as USDC

_ids = itertools.count()
LOT = 3
RECORD = UsageRecord("fake-gpt", 5, 16, 37, gateway_lot_id=LOT, chain_lot_id=9, lot_kind="listed", fee_bps=500)
CLAIM = LotClaim(LOT, 50)  # the request's bound at list price; its answer uses 37


@pytest.fixture
def book(ledger_url: str) -> Iterator[Ledger]:
    ledger = Ledger.open(ledger_url, sqlite_synchronous="NORMAL")
    with ledger.engine.begin() as conn:
        ledger.open_lot_capacity(conn, LOT, 100_000, chain_lot_id=9)
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
    used = ledger.lot_capacities()[LOT].used
    reserved = ledger.reserve(account, "USDC", 1_000, request_id, 900, lots=[CLAIM])
    held = ledger.lot_capacities()[LOT]
    hold = ledger.settle(request_id, 700, record=RECORD)
    usage = ledger.usage_record(request_id)
    assert usage is not None
    capacity = ledger.lot_capacities()[LOT]
    return (
        reserved.lot_id,
        reserved.lot_amount,
        held.headroom <= 100_000 - used - CLAIM.amount,
        capacity.used - used,
        hold.status,
        hold.cost,
        hold.charged,
        hold.amount,
        hold.lot_id,
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
    book.reserve(account, "USDC", 1_000, "req-warm", 900, lots=[CLAIM])  # PostgreSQL: leases a slice
    book.release("req-warm")
    fast = served(book, account, "req-fast")
    if book.engine.dialect.name == "postgresql":  # force the general path by breaking the one statement
        broken = pg_holds.Prepared("promptex_broken_on_purpose", "SELECT broken_on_purpose")
        monkeypatch.setattr(pg_holds, "_RESERVE_LEASED", broken)
        monkeypatch.setattr(pg_holds, "_SETTLE_WITH_USAGE", broken)
    else:  # SQLite: the general path itself
        monkeypatch.setattr(SqliteHolds, "reserve_in", GeneralHolds.reserve_in)
        monkeypatch.setattr(SqliteHolds, "settle_in", GeneralHolds.settle_in)
    general = served(book, account, "req-general")
    assert fast == general
    assert fast[:4] == (LOT, 50, True, 37)  # the capacity held with the funds, then used by the answer
    monkeypatch.undo()
    # again with the same request ids: nothing changes
    assert book.reserve(account, "USDC", 1_000, "req-fast", 900, lots=[CLAIM]).status.value == "settled"
    assert book.settle("req-fast", 700, record=RECORD).charged == 700
    balance = book.balance(account, "USDC")
    assert (balance.posted, balance.held) == (10 * USDC - 1_400, 0)
    assert book.system_balance("usage", "USDC") == 1_400
    assert book.lot_capacities()[LOT].used == 74


def test_hot_path__refused_or_overage__general_path_answers(book: Ledger) -> None:
    account = funded(book, amount=1_000)
    book.reserve(account, "USDC", 600, "req-a", 900)
    with pytest.raises(Exception, match="can spend 0.0004 USDC"):
        book.reserve(account, "USDC", 600, "req-b", 900)
    hold = book.settle("req-a", 900)  # above the hold, and the balance covers it
    assert (hold.cost, hold.charged) == (900, 900)
    assert book.balance(account, "USDC").posted == 100


def test_pg_one_statement_reserve__applied_whole_or_rolled_back_whole(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's reserve is one statement in autocommit: taking the funds without room
    in the process's lease (no lease yet, a lease used up) or a request id held already
    fails it on purpose and nothing of it stays; the general path then decides."""
    if not ledger_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's one-statement reserve")
    ledger = Ledger.open(ledger_url, capacity_slice=2 * CLAIM.amount)  # a lease holds two claims
    fast: list[bool] = []
    settled_fast: list[bool] = []
    one_statement, one_settle = pg_holds.PgOneStatement.reserve, pg_holds.PgOneStatement.settle

    def spied(self: pg_holds.PgOneStatement, *args: object) -> object:
        hold = one_statement(self, *args)  # type: ignore[arg-type]
        fast.append(hold is not None)
        return hold

    def spied_settle(self: pg_holds.PgOneStatement, *args: object, **kw: object) -> object:
        hold = one_settle(self, *args, **kw)  # type: ignore[arg-type]
        settled_fast.append(hold is not None)
        return hold

    monkeypatch.setattr(pg_holds.PgOneStatement, "reserve", spied)
    monkeypatch.setattr(pg_holds.PgOneStatement, "settle", spied_settle)
    try:
        with ledger.engine.begin() as conn:
            ledger.open_lot_capacity(conn, LOT, 100_000, chain_lot_id=9)
        account = funded(ledger)
        for i in range(4):
            assert ledger.reserve(account, "USDC", 1_000, f"req-{i}", 900, lots=[CLAIM]).lot_id == LOT
        assert ledger.reserve(account, "USDC", 1_000, "req-1", 900, lots=[CLAIM]).status.value == "active"
        # no lease yet, room, lease used up, room, and the held request id: rolled back whole each time
        assert fast == [False, True, False, True, False]
        assert ledger.balance(account, "USDC").held == 4 * 1_000  # not one taken twice
        assert ledger.lot_capacities()[LOT].reserved == 4 * CLAIM.amount
        # the settle's one statement (prepared on libpq) answers, the record written with it
        assert ledger.settle("req-1", 700, record=RECORD).charged == 700
        assert settled_fast == [True]
        usage = ledger.usage_record("req-1")
        assert usage is not None and (usage.cost, usage.list_usd_micro, usage.gateway_lot_id) == (700, 37, LOT)
        ledger.check()
    finally:
        ledger.close()


def test_raw_statements__bound_by_position__the_same_rows() -> None:
    """`sqlite_statements.run` binds by position: for a mapping, Python's sqlite3 asks SQLite
    each parameter's name with the GIL released around the call (the ledger thread then
    hands the GIL to the event loop and back once per parameter). The values land where
    their names say, literals and parameters used twice included; names a statement does
    not use are ignored."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, create_engine, insert, update

    from promptex.ledger.holds.sqlite_statements import cursor, run

    table = Table("t", MetaData(), Column("a", Integer, primary_key=True), Column("b", String), Column("c", Integer))
    engine = create_engine("sqlite://")
    table.metadata.create_all(engine)
    sent: list[tuple[str, object]] = []

    class Spy:
        def __init__(self, cur: object) -> None:
            self.cur = cur

        def execute(self, text: str, args: object) -> None:
            sent.append((text, args))
            self.cur.execute(text, args)  # type: ignore[attr-defined]

    add = insert(table)
    change = (
        update(table)
        .where(table.c.a == bindparam("p_a"), table.c.b != "gone")
        .values(b=bindparam("p_b"), c=table.c.c + bindparam("p_a"))
    )
    with engine.begin() as conn:
        spy = Spy(cursor(conn))
        run(spy, conn, add, {"a": 1, "b": "x", "c": 10, "unused": 0}, ("a", "b", "c"))
        run(spy, conn, add, {"a": 2, "b": "gone", "c": 20}, ("a", "b", "c"))
        run(spy, conn, change, {"p_a": 1, "p_b": "y", "p_unused": 5})
        run(spy, conn, change, {"p_a": 2, "p_b": "z"})
        rows = conn.execute(table.select().order_by(table.c.a)).all()
    assert [tuple(row) for row in rows] == [(1, "y", 11), (2, "gone", 20)]
    for text, args in sent:
        assert ":" not in text and "?" in text, text
        assert not isinstance(args, dict), args


def test_sqlite_hot_path__an_org_members_hold__budget_and_balance_as_the_general_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's fast path settles an org member's hold with SETTLE_BUDGET and SETTLE_BALANCE,
    bound by position since 9dd64cd: every amount distinct (budget 5,000, hold 1,000, cost 700)
    so a swapped pair — the budget's remaining less the hold instead of the charge, the org's
    balance less its hold's amount — shows. The fast and the general paths move the budget and
    the org's balance alike."""
    from promptex.ledger.models import AccountKind

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", sqlite_synchronous="NORMAL")
    try:
        org = ledger.create_account(AccountKind.ORG).id
        wallet = Account.create()
        message = ledger.issue_binding_challenge(org, wallet.address)
        ledger.bind_wallet(message, sign(message, wallet.key))
        ledger.credit_deposit(f"0x{next(_ids):064x}:7", wallet.address, "USDC", 10 * USDC)
        ledger.set_spend_cap(org, "USDC", 9 * USDC)

        def served(request_id: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
            member = ledger.create_account().id
            ledger.add_member(org, member)
            ledger.set_member_budget(org, member, "USDC", 5_000)
            before = ledger.balance(org, "USDC")
            ledger.reserve(member, "USDC", 1_000, request_id, 900, payer=org)
            budget = ledger.budget(org, member, "USDC")
            assert budget is not None
            held = (budget.remaining, budget.held)
            hold = ledger.settle(request_id, 700)
            assert (hold.cost, hold.charged, hold.amount) == (700, 700, 1_000)
            budget, after = ledger.budget(org, member, "USDC"), ledger.balance(org, "USDC")
            assert budget is not None
            moved = (after.posted - before.posted, after.held - before.held, after.cap_remaining - before.cap_remaining)
            return held, (budget.remaining, budget.held), moved

        fast = served("req-fast")
        monkeypatch.setattr(SqliteHolds, "reserve_in", GeneralHolds.reserve_in)
        monkeypatch.setattr(SqliteHolds, "settle_in", GeneralHolds.settle_in)
        general = served("req-general")
        assert fast == general == ((5_000, 1_000), (4_300, 0), (-700, 0, -700))
        ledger.check()
    finally:
        ledger.close()
