"""The next `settle_signed` batch (issue 23): per lane, the pending records its highest
voucher covers beyond what the chain settled; each lane once; bounded lanes and lots per
batch, the rest for the next batch; records of an old session held back."""

from __future__ import annotations

from promptex.coordinator.plan import Entry
from promptex.coordinator.signed_plan import LaneVoucher, Signed, next_batch

A, B = "0x" + "aa" * 20, "0x" + "0b" * 20
SIG = b"\x11" * 65


def _signed(n: int, address: str, lane: int, cost: int, lot: int = 1, session: int = 1) -> Signed:
    entry = Entry(f"r{n}", 1, address, "m", 1, 1, cost, lot, cost, cost, 0)
    return Signed(entry, session, lane)


def _voucher(address: str, lane: int, ceiling: int, settled: int = 0, session: int = 1) -> LaneVoucher:
    return LaneVoucher(address, session, lane, ceiling, SIG, settled)


def test_next_batch__lanes_summed_within_their_vouchers__sorted_by_account_then_lane():
    records = [
        _signed(1, A, 1, 10),
        _signed(2, B, 0, 5),
        _signed(3, A, 1, 20),
        _signed(4, A, 0, 7),
        _signed(5, A, 1, 50),
    ]
    vouchers = {(A, 0): _voucher(A, 0, 7), (A, 1): _voucher(A, 1, 100, settled=60), (B, 0): _voucher(B, 0, 5)}
    batch, held = next_batch(records, vouchers)
    assert batch is not None
    assert [(d.address, d.lane, d.amount, d.ceiling) for d in batch.debits] == [
        (B, 0, 5, 5), (A, 0, 7, 7), (A, 1, 30, 100),
    ]  # fmt: skip
    assert held.keys() == {"r5"}  # 60 settled + 30 + 50 > 100: the chain would refuse it
    assert sorted(e.request_id for e in batch.entries) == ["r1", "r2", "r3", "r4"]


def test_next_batch__bounded_lanes_and_lots__rest_for_the_next_batch_and_old_sessions_held():
    records = [_signed(n, A, n, 1, lot=n % 3) for n in range(6)] + [_signed(9, B, 0, 1, session=1)]
    vouchers = {(A, n): _voucher(A, n, 10) for n in range(6)} | {(B, 0): _voucher(B, 0, 10, session=2)}
    batch, held = next_batch(records, vouchers, max_entries=4, max_lots=2)
    assert batch is not None
    assert [d.lane for d in batch.debits] == [0, 1, 3, 4]  # lanes 2 and 5 would bring a third lot
    assert "no longer" in held["r9"]
    later, _ = next_batch([r for r in records if r.entry.request_id in ("r2", "r5")], vouchers)
    assert later is not None and [d.lane for d in later.debits] == [2, 5]
    assert next_batch([], vouchers) == (None, {})
