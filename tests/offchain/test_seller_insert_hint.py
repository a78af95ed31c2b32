"""The attestor's search for open_lot's insertion hint (`SellerChain.insert_hint`), against
a fake escrow that pages `insert_hint` as CreditEscrow does: back from the tail, at most
`max_steps` lots expiring later a call, a start no longer in the draw order refused. The
contract side (what the hint does on chain) is tests/contracts/test_escrow_walk_attacks.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from web3.exceptions import ContractLogicError

from promptex.protocol.escrow import MAX_HINT_STEPS
from promptex.sellers.chain import SellerChain

TOKEN = "0x" + "11" * 20


class FakeEscrow:
    """A token's draw order as (lot id, expiry) pairs, sorted, at each block (the list's
    index: the last is the head), and the node (`eth.block_number`). After `open_after`
    calls the lot `opened` opens: a new block. After `unlink_after` calls the lot
    `unlinked` leaves it, and the node answers every block from that state (it forgot the
    block the search pinned)."""

    def __init__(
        self,
        order: list[tuple[int, int]],
        *,
        has_hint: bool = True,
        unlink_after: int | None = None,
        unlinked: int = 0,
        open_after: int | None = None,
        opened: tuple[int, int] = (0, 0),
    ) -> None:
        self.blocks = [order]
        self.abi = [{"type": "function", "name": "insert_hint"}] if has_hint else []
        self.calls: list[tuple[int, int, int]] = []  # (start, max_steps, block)
        self.unlink_after, self.unlinked = unlink_after, unlinked
        self.open_after, self.opened = open_after, opened
        self.functions = self
        self.eth = self

    @property
    def order(self) -> list[tuple[int, int]]:
        return self.blocks[-1]

    @property
    def block_number(self) -> int:
        return len(self.blocks) - 1

    def insert_hint(self, token: str, expiry: int, start: int, max_steps: int) -> Any:
        assert 0 < max_steps <= MAX_HINT_STEPS and token.lower() == TOKEN
        return SimpleNamespace(
            call=lambda block_identifier="latest": self._page(expiry, start, max_steps, block_identifier)
        )

    def _page(self, expiry: int, start: int, max_steps: int, block: int | str) -> tuple[int, int]:
        if self.open_after is not None and len(self.calls) >= self.open_after:
            # By (expiry, id): after every lot expiring no later, as the escrow links it.
            self.blocks.append(sorted([*self.order, self.opened], key=lambda lot: (lot[1], lot[0])))
            self.open_after = None
        if self.unlink_after is not None and len(self.calls) >= self.unlink_after:
            self.blocks = [[lot for lot in order if lot[0] != self.unlinked] for order in self.blocks]
            self.unlink_after = None
        number = self.block_number if block == "latest" else int(block)
        self.calls.append((start, max_steps, number))
        order = self.blocks[number]
        ids = [lot for lot, _ in order]
        if start and start not in ids:
            raise ContractLogicError("execution reverted: escrow: start not in the draw order")
        i = ids.index(start) if start else len(ids) - 1
        for _ in range(max_steps):
            if i < 0 or order[i][1] <= expiry:
                return (ids[i] if i >= 0 else 0, 0)
            i -= 1
        if i < 0 or order[i][1] <= expiry:
            return (ids[i] if i >= 0 else 0, 0)
        return (0, ids[i])


def _chain(escrow: FakeEscrow) -> SellerChain:
    chain = SellerChain.__new__(SellerChain)  # no node: the fake escrow is its node too
    chain.__dict__["escrow"] = escrow
    chain.w3 = escrow  # type: ignore[assignment]
    return chain


def test_insert_hint__new_lot_expiring_last__no_hint_the_escrow_finds_the_tail_cheaper() -> None:
    escrow = FakeEscrow([(i, 1_000 + i) for i in range(1, 5_001)])
    assert _chain(escrow).insert_hint(TOKEN, 10**9) == 0
    assert _chain(escrow).insert_hint(TOKEN, 1_000 + 5_000) == 0  # ties the tail: goes after it, last
    assert escrow.calls[:2] == [(0, MAX_HINT_STEPS, 0), (0, 1, 0)]  # the page, then the tail
    assert _chain(escrow).insert_hint(TOKEN, 1_000 + 4_999) == 4_999  # just before the tail: its hint


def test_insert_hint__5000_lots_expiring_later__paged_to_the_lot_before_them() -> None:
    escrow = FakeEscrow([(i, 1_000 + i) for i in range(1, 5_001)])
    assert _chain(escrow).insert_hint(TOKEN, 1_000 + 42) == 42
    assert len(escrow.calls) == 5 and escrow.calls[1][0] != 0  # four full pages, found on the fifth
    assert _chain(FakeEscrow(escrow.order)).insert_hint(TOKEN, 10) == 0  # goes first: no hint


def test_insert_hint__lot_opened_between_two_pages__same_answer_every_page_at_one_block() -> None:
    """The search pins the block it started at: a lot opened at the new lot's expiry
    after the first page (it would be the hint at "latest") changes nothing."""
    order = [(i, 1_000 + i) for i in range(1, 3_001)]
    escrow = FakeEscrow(order, open_after=1, opened=(3_001, 1_000 + 7))
    assert _chain(escrow).insert_hint(TOKEN, 1_000 + 7) == 7
    assert escrow.block_number == 1  # it did open, during the search
    assert len(escrow.calls) == 3 and {block for *_, block in escrow.calls} == {0}
    assert _chain(escrow).insert_hint(TOKEN, 1_000 + 7) == 3_001  # searched again: the head's order


def test_insert_hint__start_gone_from_a_node_that_forgot_the_block__searches_again_from_the_tail() -> None:
    order = [(i, 1_000 + i) for i in range(1, 3_001)]
    page_2 = 3_000 - MAX_HINT_STEPS  # where the first page stops
    escrow = FakeEscrow(order, unlink_after=1, unlinked=page_2)
    assert _chain(escrow).insert_hint(TOKEN, 1_000 + 7) == 7
    assert [start for start, *_ in escrow.calls[:3]] == [0, page_2, 0]  # refused, then again


def test_insert_hint__escrow_without_it__no_hint_and_the_eight_argument_call() -> None:
    escrow = FakeEscrow([(1, 5)], has_hint=False)
    assert _chain(escrow).insert_hint(TOKEN, 10) == 0 and escrow.calls == []
    att = {"seller": TOKEN, "kind": 1, "face_value": 10, "expiry": 10, "bond": 1, "terms_hash": "0x" + "22" * 32,
           "rate_bps": 0}  # fmt: skip
    assert len(SellerChain.open_lot_call(att, TOKEN).args) == 8
    assert SellerChain.open_lot_call(att, TOKEN, 7).args[8:] == (7,)
