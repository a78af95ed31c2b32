"""The attestor's search for open_lot's insertion hint (`SellerChain.insert_hint`), against
a fake escrow that pages `insert_hint` as CreditEscrow does: back from the tail, at most
`max_steps` lots expiring later a call, a start no longer in the draw order refused. The
contract side (what the hint does on chain) is tests/contracts/test_escrow_walk_attacks.py."""

from __future__ import annotations

from typing import Any

from web3.exceptions import ContractLogicError

from promptex.protocol.escrow import MAX_HINT_STEPS
from promptex.sellers.chain import SellerChain

TOKEN = "0x" + "11" * 20


class _Call:
    def __init__(self, result: Any) -> None:
        self.result = result

    def call(self) -> Any:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class FakeEscrow:
    """A token's draw order as (lot id, expiry) pairs, sorted; after `unlink_after` calls
    the lot `unlinked` leaves it (closed between two pages)."""

    def __init__(
        self, order: list[tuple[int, int]], *, has_hint: bool = True, unlink_after: int | None = None, unlinked: int = 0
    ) -> None:
        self.order = order
        self.abi = [{"type": "function", "name": "insert_hint"}] if has_hint else []
        self.calls: list[tuple[int, int]] = []
        self.unlink_after, self.unlinked = unlink_after, unlinked
        self.functions = self

    def insert_hint(self, token: str, expiry: int, start: int, max_steps: int) -> _Call:
        assert 0 < max_steps <= MAX_HINT_STEPS and token.lower() == TOKEN
        self.calls.append((start, max_steps))
        if self.unlink_after is not None and len(self.calls) > self.unlink_after:
            self.order = [lot for lot in self.order if lot[0] != self.unlinked]
            self.unlink_after = None
        ids = [lot for lot, _ in self.order]
        if start and start not in ids:
            return _Call(ContractLogicError("execution reverted: escrow: start not in the draw order"))
        i = ids.index(start) if start else len(ids) - 1
        for _ in range(max_steps):
            if i < 0 or self.order[i][1] <= expiry:
                return _Call((ids[i] if i >= 0 else 0, 0))
            i -= 1
        if i < 0 or self.order[i][1] <= expiry:
            return _Call((ids[i] if i >= 0 else 0, 0))
        return _Call((0, ids[i]))


def _chain(escrow: FakeEscrow) -> SellerChain:
    chain = SellerChain.__new__(SellerChain)  # no node: `escrow` is the only thing it reads
    chain.__dict__["escrow"] = escrow
    return chain


def test_insert_hint__new_lot_expiring_last__one_call_returns_the_tail() -> None:
    escrow = FakeEscrow([(i, 1_000 + i) for i in range(1, 5_001)])
    assert _chain(escrow).insert_hint(TOKEN, 10**9) == 5_000
    assert escrow.calls == [(0, MAX_HINT_STEPS)]


def test_insert_hint__5000_lots_expiring_later__paged_to_the_lot_before_them() -> None:
    escrow = FakeEscrow([(i, 1_000 + i) for i in range(1, 5_001)])
    assert _chain(escrow).insert_hint(TOKEN, 1_000 + 42) == 42
    assert len(escrow.calls) == 5 and escrow.calls[1][0] != 0  # four full pages, found on the fifth
    assert _chain(FakeEscrow(escrow.order)).insert_hint(TOKEN, 10) == 0  # goes first: no hint


def test_insert_hint__start_closed_between_pages__searches_again_from_the_tail() -> None:
    order = [(i, 1_000 + i) for i in range(1, 3_001)]
    page_2 = 3_000 - MAX_HINT_STEPS  # where the first page stops
    escrow = FakeEscrow(order, unlink_after=1, unlinked=page_2)
    assert _chain(escrow).insert_hint(TOKEN, 1_000 + 7) == 7
    assert [start for start, _ in escrow.calls[:3]] == [0, page_2, 0]  # refused, then again


def test_insert_hint__escrow_without_it__no_hint_and_the_eight_argument_call() -> None:
    escrow = FakeEscrow([(1, 5)], has_hint=False)
    assert _chain(escrow).insert_hint(TOKEN, 10) == 0 and escrow.calls == []
    att = {"seller": TOKEN, "kind": 1, "face_value": 10, "expiry": 10, "bond": 1, "terms_hash": "0x" + "22" * 32,
           "rate_bps": 0}  # fmt: skip
    assert len(SellerChain.open_lot_call(att, TOKEN).args) == 8
    assert SellerChain.open_lot_call(att, TOKEN, 7).args[8:] == (7,)
