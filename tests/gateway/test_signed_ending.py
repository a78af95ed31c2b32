"""Signed mode, a session's last stretch: the vault settles its vouchers until the close of
its last window (`settles_until`) and the coordinator is given `gateway_signed_settle_seconds`
before it, so no charge may land on a lane after close − settle (its last charge second).
A request whose whole deadline (+ the hold margin for its settle) would pass that second is
served under a deadline cut to fit — said in `x-promptex-deadline-seconds` — and refused
(403 session_ending, nothing held) only below `gateway_signed_min_deadline_seconds`; the
ledger refuses a lane charge landing after that second whatever its hold's state
(`ledger.lanes.ChargedTooLate`). The ledger's clock is the test's (frozen, moved by hand)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from polling import until
from promptex.config import Settings
from promptex.gateway.vouchers import VOUCHER_HEADER
from promptex.ledger import Reservation, UsageRecord
from promptex.ledger.holds import ExtraTake
from promptex.ledger.lanes import NAME, ChargedTooLate, Voucher
from promptex.ledger.models import HoldStatus
from promptex.ledger.usage import SIGNED

from .conftest import Fake, Harness, _harness
from .test_signed_mode import HELLO, Signer, error, new_session, signed_buyer

DEADLINE = "x-promptex-deadline-seconds"
LEAST = 1  # this module's least deadline: a cut request's cut-off within a test's time


@pytest.fixture
def clock() -> list[int]:
    return [int(time.time())]


@pytest.fixture
def gw(settings: Settings, tmp_path: Path, clock: list[int]) -> Iterator[Harness]:
    """A gateway over a fresh SQLite ledger whose clock is `clock[0]`."""
    mine = settings.model_copy(update={"gateway_signed_min_deadline_seconds": LEAST})
    for harness in _harness(mine, f"sqlite:///{tmp_path}/ledger.sqlite3", clock=lambda: clock[0]):
        harness.now = lambda: clock[0]
        yield harness


@pytest.fixture
def gw_any(settings: Settings, ledger_url: str, clock: list[int]) -> Iterator[Harness]:
    """`gw` over a fresh ledger of each kind (SQLite and PostgreSQL)."""
    mine = settings.model_copy(update={"gateway_signed_min_deadline_seconds": LEAST})
    for harness in _harness(mine, ledger_url, clock=lambda: clock[0]):
        harness.now = lambda: clock[0]
        yield harness


def last_charge(gw: Harness, settles_until: int) -> int:
    return settles_until - math.ceil(gw.settings.gateway_signed_settle_seconds)


def closing_in(gw: Harness, fits: int) -> int:
    """The `settles_until` that leaves a request arriving now `fits` seconds of deadline."""
    s = gw.settings
    return gw.now() + math.ceil(s.gateway_signed_settle_seconds) + math.ceil(s.gateway_hold_margin_seconds) + fits


def post(buyer: Signer, voucher: str, path: str, body: dict[str, object]) -> httpx.Response:
    headers = {"authorization": f"Bearer {buyer.key}", VOUCHER_HEADER: voucher}
    return httpx.post(buyer.gw.url + path, json=body, headers=headers, timeout=30)


def test_ending__requests_in_the_last_stretch__served_under_a_cut_deadline__said__plain_stream_messages_responses(
    gw: Harness, fake: Fake
) -> None:
    """Before, each was refused 403 session_ending: the last deadline + margin + settle of
    every session took no voucher (on 10 s windows its last ~13 minutes)."""
    gw.add_lot(fake)
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    s = gw.settings
    buyer = signed_buyer(gw, lanes=8)
    whole = buyer.post(buyer.voucher(0, 1_000))  # far from its close: the whole deadline, nothing said
    assert whole.status_code == 200 and DEADLINE not in whole.headers, whole.text

    fits = 300  # less than the gateway's 600 s deadline
    close = closing_in(gw, fits)
    new_session(buyer, lanes=8, settles_until=close)
    # The cut request's latest charge (arrival + its deadline + the margin) is before the last charge second.
    assert gw.now() + fits + s.gateway_hold_margin_seconds <= last_charge(gw, close)
    chat = {"model": "fake-gpt", "messages": HELLO, "max_tokens": 8}
    claude = {"model": "fake-claude", "messages": HELLO, "max_tokens": 8}
    asks = [
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True, "stream_options": {"include_usage": True}}),
        ("/v1/messages", claude),
        ("/v1/messages", {**claude, "stream": True}),
        ("/v1/responses", {"model": "fake-gpt", "input": "hello world", "max_output_tokens": 16}),
        ("/v1/responses", {"model": "fake-gpt", "input": "hello world", "max_output_tokens": 16, "stream": True}),
    ]
    for lane, (path, body) in enumerate(asks):
        answer = post(buyer, buyer.voucher(lane, 1_000), path, body)
        assert (answer.status_code, answer.headers.get(DEADLINE)) == (200, str(fits)), (path, body, answer.text)
        assert 0 < buyer.charged(lane) <= 1_000, (path, body)
        if body.get("stream"):
            assert b'"promptex"' in answer.content  # metered: its charge event came
    assert gw.ledger.balance(buyer.account, "USDC").held == 0


def test_ending__below_the_least_deadline__refused_nothing_held__at_it_served(
    gw: Harness, fake: Fake, clock: list[int]
) -> None:
    gw.add_lot(fake)
    buyer = signed_buyer(gw)
    close = closing_in(gw, LEAST)
    new_session(buyer, settles_until=close)
    served = buyer.post(buyer.voucher(0, 1_000))
    assert (served.status_code, served.headers.get(DEADLINE)) == (200, str(LEAST)), served.text
    charged = buyer.charged(0)
    clock[0] += 1  # a second later: less than the least deadline left
    refused = buyer.post(buyer.voucher(0, charged + 1_000))
    assert (refused.status_code, error(refused)["code"]) == (403, "session_ending"), refused.text
    body = error(refused)
    assert (body["lane_charged_units"], body["settles_until"]) == (str(charged), close)
    assert f"would have {LEAST - 1} s to be answered, less than the least deadline of {LEAST} s" in body["message"]
    assert gw.ledger.balance(buyer.account, "USDC").held == 0 and buyer.charged(0) == charged
    lane = gw.ledger.lane(buyer.account, "USDC", buyer.session, 0)
    assert lane.voucher is not None and lane.voucher.ceiling == 1_000 and lane.inflight is None  # nothing stored


def test_ending__cut_deadline_bounds_the_upstream_wait__a_late_upstream_answered_504_nothing_charged(
    gw: Harness, fake: Fake
) -> None:
    """The upstream wait (the upstream timeout + its output at the floor rate, up to the
    deadline) is the cut deadline's: the request ends at it, not at the gateway's 600 s."""
    gw.add_lot(fake)
    buyer = signed_buyer(gw)
    new_session(buyer, settles_until=closing_in(gw, LEAST))
    assert gw.gateway.upstream_wait(10_000, LEAST) == LEAST
    fake.config.gate = gate = threading.Event()  # the upstream does not answer
    began = time.monotonic()
    try:
        late = buyer.post(buyer.voucher(0, 1_000))
    finally:
        gate.set()
    assert LEAST <= time.monotonic() - began < LEAST + 1.5
    assert (late.status_code, error(late)["code"]) == (504, "request_deadline"), late.text
    assert f"within its deadline of {LEAST} seconds" in error(late)["message"]
    assert buyer.charged(0) == 0 and gw.ledger.balance(buyer.account, "USDC").held == 0
    assert gw.ledger.lane(buyer.account, "USDC", buyer.session, 0).inflight is None


def test_ending__answer_metered_after_the_last_charge_second__not_charged__lane_freed(
    gw: Harness, fake: Fake, clock: list[int]
) -> None:
    """A gateway that stalled past its request's (cut) deadline: its answer's settle, its
    hold still active, lands after the session's last charge second — refused by the ledger,
    the hold released, the lane free at once; answered 504 (plain) or uncharged (stream)."""
    gw.add_lot(fake)
    buyer = signed_buyer(gw)
    close = closing_in(gw, 100)
    new_session(buyer, settles_until=close)
    for lane, stream in enumerate((False, True)):
        body = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        answer = _answered_after(gw, fake, buyer, lane, body, lambda: clock.__setitem__(0, last_charge(gw, close) + 1))
        if stream:
            assert answer.status_code == 200 and b'"promptex"' not in answer.content  # no charge event
        else:
            assert (answer.status_code, error(answer)["code"]) == (504, "request_deadline"), answer.text
        lane_now = gw.ledger.lane(buyer.account, "USDC", buyer.session, lane)
        assert (lane_now.charged, lane_now.inflight) == (0, None)
        assert gw.ledger.balance(buyer.account, "USDC").held == 0
        clock[0] = close - 1_000  # back before it for the next


def _answered_after(
    gw: Harness, fake: Fake, buyer: Signer, lane: int, body: dict[str, object], meanwhile: Callable[[], object]
) -> httpx.Response:
    """`buyer`'s request on `lane`, `meanwhile` done while it is in flight upstream."""
    fake.config.gate = gate = threading.Event()
    answers: list[httpx.Response] = []
    asked = threading.Thread(target=lambda: answers.append(buyer.post(buyer.voucher(lane, 1_000), **body)))
    asked.start()
    try:
        until(  # held: in flight upstream (or refused: then answered, no more waiting)
            lambda: answers or gw.ledger.lane(buyer.account, "USDC", buyer.session, lane).inflight,
            "the request in flight upstream",
            every=0.01,
        )
        assert not answers, answers[0].text
        meanwhile()
    finally:
        gate.set()
        asked.join()
    return answers[0]


def test_ending__hold_swept_at_the_cut_deadline__late_answer_charged_until_the_last_charge_second_refused_after(
    gw_any: Harness, clock: list[int]
) -> None:
    """On the ledger (SQLite: its fast path for an active hold, the general path for a swept
    one; PostgreSQL: the general path): a charge lands until the session's last charge
    second, never after it."""
    gw = gw_any
    buyer = signed_buyer(gw, lanes=4)
    close = closing_in(gw, 100)
    new_session(buyer, lanes=4, settles_until=close)
    last = last_charge(gw, close)
    book = gw.ledger

    def hold(rid: str, lane: int, ttl: int) -> None:
        book.vouchers.plan(rid, Voucher(buyer.session, lane, 500, "0x" + "11" * 65))
        try:
            book.holds.reserve(Reservation(rid, buyer.account, "USDC", 500, ttl, extras=(ExtraTake(NAME, 500),)))
        finally:
            book.vouchers.plan(rid, None)

    def settle(rid: str, lane: int) -> int:
        record = UsageRecord("fake-gpt", 4, 8, 0, mode=SIGNED, voucher_session=buyer.session, voucher_lane=lane,
                             voucher_ceiling=500)  # fmt: skip
        charged = book.holds.settle(rid, 300, record=record).charged
        assert charged is not None
        return charged

    start = clock[0]
    for lane, ttl in enumerate((60, 60, 10, 10)):
        hold(f"r{lane}", lane, ttl)
    clock[0] = last  # active, at the last charge second: charged
    assert settle("r0", 0) == 300 == buyer.charged(0)
    clock[0] = last + 1  # active, a second after: refused, nothing charged, the hold stands
    with pytest.raises(ChargedTooLate):
        settle("r1", 1)
    assert buyer.charged(1) == 0 and book.lane(buyer.account, "USDC", buyer.session, 1).inflight == "r1"
    book.holds.release("r1")
    clock[0] = start + 11  # the two others swept (expired) at their deadline: a late answer may come
    book.holds.sweep()  # (or the gateway's own sweep, now)
    assert [getattr(book.holds.get(rid), "status", None) for rid in ("r2", "r3")] == [HoldStatus.EXPIRED] * 2
    clock[0] = last
    assert settle("r2", 2) == 300 == buyer.charged(2)  # late, by the last charge second: charged
    clock[0] = last + 1
    with pytest.raises(ChargedTooLate):
        settle("r3", 3)
    assert buyer.charged(3) == 0
    assert book.balance(buyer.account, "USDC").held == 0
    assert sum(buyer.charged(lane) for lane in range(4)) == 600
