"""Signed mode's fast path on SQLite (`holds.lanes_sqlite`) against the general path: the
same random run of signed holds — vouchers taken, refused for every reason the lane has,
settled within or beyond their hold, with or without a record, released — on two ledgers,
one on each path, gives the same answers and the same rows in every table a hold writes."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from promptex.ledger import Ledger, Reservation, UsageRecord
from promptex.ledger.binding import sign
from promptex.ledger.holds import ExtraTake
from promptex.ledger.holds.book import GeneralHolds
from promptex.ledger.lanes import NAME, Voucher
from promptex.ledger.schema import balances, holds, journal_entries, journal_lines, usage_records, voucher_lanes
from promptex.ledger.usage import SIGNED

ASSET = "USDC"
NOW = 1_800_000_000
LANES = 2
TABLES = (holds, balances, voucher_lanes, usage_records, journal_entries, journal_lines)
_examples = itertools.count()

# reserve: (lane, hold, twist); settle: (which active hold, cost as a share of its hold in
# %, whether its record names the voucher); release: (which active hold,)
TWISTS = ("ok", "ok", "ok", "stale", "below", "mismatch", "huge", "session", "lane")
OPS = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, LANES - 1), st.integers(1, 3_000), st.sampled_from(TWISTS)),
    st.tuples(st.just("settle"), st.integers(0, 3), st.sampled_from([0, 1, 50, 100, 150]), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 3)),
)


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, Ledger]]:
    """Two SQLite ledgers on a fixed clock: the first on the fast path, the second forced
    onto the general one."""
    folder: Path = tmp_path_factory.mktemp("lanes-fast")
    fast, slow = (
        Ledger.open(f"sqlite:///{folder}/{name}.sqlite3", sqlite_synchronous="NORMAL", clock=lambda: NOW)
        for name in ("fast", "general")
    )
    slow.holds.reserve_in = functools.partial(GeneralHolds.reserve_in, slow.holds)  # type: ignore[method-assign]
    slow.holds.settle_in = functools.partial(GeneralHolds.settle_in, slow.holds)  # type: ignore[method-assign]
    yield fast, slow
    for ledger in (fast, slow):
        ledger.check()
        ledger.close()


def _account(ledger: Ledger, wallet: Any, example: int) -> int:
    account = ledger.create_account().id
    message = ledger.issue_binding_challenge(account, wallet.address)
    ledger.bind_wallet(message, sign(message, wallet.key))
    ledger.credit_deposit(f"deposit-{example}", wallet.address, ASSET, 10_000)
    ledger.register_session(
        f"session-{example}", address=wallet.address, asset=ASSET, asset_address="0x" + "cd" * 20, chain_id=31337,
        vault="0x" + "ab" * 20, key="0x" + "ef" * 20, session=1, lanes=LANES, maximum=10**9, expiry=NOW + 86_400,
        signed_from=2,
    )  # fmt: skip
    return account


def _run(ledger: Ledger, account: int, ops: list[tuple[Any, ...]], example: int) -> list[object]:
    out: list[object] = []
    active: list[tuple[str, int, int]] = []  # request id, lane, ceiling
    for n, op in enumerate(ops):
        try:
            out.append(_step(ledger, account, op, f"e{example}-{n}", active))
        except Exception as exc:  # the refusal's kind is what both paths must agree on
            out.append(type(exc).__name__)
    return out


def _step(ledger: Ledger, account: int, op: tuple[Any, ...], request_id: str, active: list[Any]) -> object:
    if op[0] == "reserve":
        _, number, held, twist = op
        lane = ledger.lane(account, ASSET, 1, number)
        highest = lane.voucher.ceiling if lane.voucher is not None else 0
        ceiling = max(lane.charged + held, highest + 1)
        amount = ceiling - lane.charged
        session, number = (2, number) if twist == "session" else (1, LANES if twist == "lane" else number)
        if twist == "stale":
            ceiling, amount = highest, max(1, highest - lane.charged)
        elif twist == "below":
            ceiling, amount = max(0, lane.charged - 1), 1
        elif twist == "mismatch":
            amount += 1
        elif twist == "huge":  # all the spendable funds: beyond the balance if another lane has room left
            balance = ledger.balance(account, ASSET)
            amount = max(1, balance.posted - balance.held - balance.locked)
            ceiling = max(lane.charged + amount, highest + 1)
        ledger.vouchers.plan(request_id, Voucher(session, number, ceiling, "0x" + "11" * 65))
        try:
            hold = ledger.holds.reserve(
                Reservation(request_id, account, ASSET, amount, 60, extras=(ExtraTake(NAME, ceiling),))
            )
        finally:
            ledger.vouchers.plan(request_id, None)
        active.append((request_id, number, ceiling))
        return (hold.amount, hold.status.value)
    if not active:
        return None
    request, number, ceiling = active.pop(op[1] % len(active))
    if op[0] == "release":
        return ledger.holds.release(request).status.value
    hold = ledger.holds.get(request)
    assert hold is not None
    cost = hold.amount * op[2] // 100
    named = (1, number, ceiling) if op[3] else (None, None, None)
    record = UsageRecord("m", 1, 1, cost, mode=SIGNED, voucher_session=named[0], voucher_lane=named[1],
                         voucher_ceiling=named[2])  # fmt: skip
    settled = ledger.holds.settle(request, cost, record=record)
    return (settled.charged, settled.status.value)


def _state(ledger: Ledger) -> list[list[tuple[Any, ...]]]:
    with ledger.engine.connect() as conn:
        return [sorted(tuple(row) for row in conn.execute(select(table)).all()) for table in TABLES]


@given(ops=st.lists(OPS, min_size=1, max_size=14))
@example(
    ops=[("reserve", 0, 9, "ok"), ("settle", 0, 100, True), ("reserve", 1, 3_000, "ok"), ("settle", 0, 1, True),
         ("reserve", 0, 1, "huge")]
)  # fmt: skip
@settings(max_examples=15)
def test_signed_holds__fast_and_general_paths__same_answers_and_rows(
    ledgers: tuple[Ledger, Ledger], ops: list[tuple[Any, ...]]
) -> None:
    fast, slow = ledgers
    example = next(_examples)
    wallet = Account.create()
    accounts = [_account(ledger, wallet, example) for ledger in ledgers]
    assert accounts[0] == accounts[1]
    answers = [_run(ledger, account, ops, example) for ledger, account in zip(ledgers, accounts, strict=True)]
    assert answers[0] == answers[1]
    assert _state(fast) == _state(slow)
