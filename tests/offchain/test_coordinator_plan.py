"""The settlement planner's arithmetic: listed lots' credits at their on-chain rate, the
rounding guard that keeps the fee from going negative, capacity caps, and old payloads."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from promptex.coordinator.chain import LotInfo
from promptex.coordinator.plan import Entry, Payload, aggregate, fit_capacity
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, STATUS_OPEN, listed_credit

CLD = "0x0000000000000000000000000000000000000C1D"


def entry(n: int, cost: int, lot: int, list_usd: int, payer: str = "0x" + "aa" * 20) -> Entry:
    return Entry(f"r{n}", 1, payer, "m", 1, 1, cost, lot, list_usd, cost, 0)


def listed(rate_bps: int, consumed: int = 0, capacity: int = 10**12) -> LotInfo:
    return LotInfo("0x" + "bb" * 20, CLD, KIND_LISTED, STATUS_OPEN, rate_bps, 2**40, capacity, consumed)


def test_listed_credit__split_into_steps__sums_to_the_rate_of_the_total_rounded_down() -> None:
    steps = [1, 1, 1, 2, 7]
    consumed, total = 0, 0
    for amount in steps:
        total += listed_credit(consumed, amount, 6_000)
        consumed += amount
    assert total == 12 * 6_000 // 10_000 == 7


def test_aggregate__usdc__credits_list_value_and_fee_is_the_rest() -> None:
    entries = [entry(1, 1_050, 5, 334), entry(2, 2_100, 5, 667), entry(3, 700, 6, 120)]
    lots = {5: listed(6_000, consumed=10), 6: listed(9_000)}
    p = aggregate(entries, spend_only=False, lots=lots)
    assert p.credits == {5: 1_001, 6: 120}
    credits = listed_credit(10, 1_001, 6_000) + listed_credit(0, 120, 9_000)
    assert p.fee == 3_850 - credits and p.burn == 0


def test_aggregate__tiny_requests_rounded_up__draw_lowered_so_the_fee_is_never_negative() -> None:
    # Each record's list value rounds up to 2 micro while it paid 1: at 90 % the lot's credit
    # for 10 records (18) would exceed the 10 they paid.
    entries = [entry(i, 1, 5, 2) for i in range(10)]
    p = aggregate(entries, spend_only=False, lots={5: listed(9_000, consumed=3)})
    assert listed_credit(3, p.credits[5], 9_000) <= 10 < listed_credit(3, p.credits[5] + 1, 9_000)
    assert p.fee >= 0


@given(
    costs=st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 10**6)), min_size=1, max_size=20),
    rate=st.integers(1, 10_000),
    consumed=st.integers(0, 10**9),
)
def test_aggregate__any_records__balances_as_the_vault_checks(
    costs: list[tuple[int, int]], rate: int, consumed: int
) -> None:
    entries = [entry(i, cost, 5, usd) for i, (cost, usd) in enumerate(costs)]
    p = aggregate(entries, spend_only=False, lots={5: listed(rate, consumed=consumed)})
    credit = listed_credit(consumed, p.credits.get(5, 0), rate)
    assert p.fee >= 0 and p.total == credit + p.fee
    assert p.credits.get(5, 0) <= sum(usd for _, usd in costs)


def test_aggregate__provider_token__burns_the_total() -> None:
    p = aggregate([entry(1, 7, 1, 0), entry(2, 5, 2, 0, payer="0x" + "cc" * 20)], spend_only=True, lots={})
    assert (p.burn, p.fee, p.credits, p.total) == (12, 0, {}, 12)


def test_fit_capacity__listed__oldest_first_until_the_lot_is_full() -> None:
    entries = [entry(1, 10, 5, 600), entry(2, 10, 5, 500), entry(3, 10, 5, 300)]
    fits, over = fit_capacity(
        entries, spend_only=False, lots={5: listed(6_000, consumed=100, capacity=1_000)}, drawable=0
    )
    assert [e.request_id for e in fits] == ["r1", "r3"] and set(over) == {"r2"}


def test_fit_capacity__token__within_its_drawable_total() -> None:
    lot = LotInfo("0x" + "bb" * 20, CLD, KIND_TOKENIZED, STATUS_OPEN)
    fits, over = fit_capacity([entry(1, 6, 1, 0), entry(2, 5, 1, 0)], spend_only=True, lots={1: lot}, drawable=10)
    assert [e.request_id for e in fits] == ["r1"] and "drawable capacity" in over["r2"]


def test_payload__round_trip_and_a_batch_stored_before_the_vault_drew_lots() -> None:
    p = Payload(debits={"0x" + "aa" * 20: 9}, credits={5: 7}, burn=0, fee=2)
    assert Payload.from_json(p.to_json()) == p
    old = {"debits": {"0xa": 9}, "credits": {"5": 4}, "draws": {}, "fee": 2, "consumes": {"5": 7}}
    assert Payload.from_json(json.dumps(old)) == Payload(debits={"0xa": 9}, credits={5: 7}, burn=0, fee=2)
    old_token = {"debits": {"0xa": 9}, "credits": {}, "draws": {"1": 4, "2": 5}, "fee": 0, "consumes": {}}
    assert Payload.from_json(json.dumps(old_token)).burn == 9
