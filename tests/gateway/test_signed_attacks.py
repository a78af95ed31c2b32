"""Attacks of a dishonest gateway operator on a buyer's signing proxy (signed mode, issue
23), in-process through the httpx signing transport and the fake signed gateway: the
promise is that the buyer signs at most one hold per lane beyond the true cost of what
was served. Each test drives a lane with a gateway that lies in one way and asserts the
highest ceiling it ever received stays within true cost + one hold (or signing stops,
saying why, before it gets further).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "offchain"))
from buyerside_fakes import IDENTITY, MODEL, FakeSignedGateway, UnreadableGateway, make_signer  # noqa: E402

from promptex import metering  # noqa: E402
from promptex.buyerside.answers import ENDPOINTS  # noqa: E402
from promptex.buyerside.recovery import ChainSession, recover  # noqa: E402
from promptex.buyerside.signer import CLOSE_SLACK_TOKENS, Refused, StreamWatch  # noqa: E402
from promptex.buyerside.transport import PromptexSigningTransport  # noqa: E402
from promptex.buyerside.wire import (  # noqa: E402
    COST_UNITS_HEADER,
    LANE_CHARGED_HEADER,
    LANE_HEADER,
    VOUCHER_HEADER,
    lane_reports,
    parse_voucher,
)

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello hello hello"}], "max_tokens": 4}
TRIES = 12
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"


def _client(gateway: FakeSignedGateway, signer: object) -> openai.OpenAI:
    transport = PromptexSigningTransport(signer, inner=gateway.transport())  # type: ignore[arg-type]
    return openai.OpenAI(
        base_url="http://gateway.test/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )


def _ask(client: openai.OpenAI) -> bool:
    """One request; whether it was served."""
    try:
        client.chat.completions.create(**BODY)  # type: ignore[call-overload]
    except (openai.APIStatusError, openai.APIConnectionError):
        return False
    return True


class RefusingGateway(FakeSignedGateway):
    """Serves honestly until `refusing`, then refuses every voucher with `code`, naming as
    the lane's total either the truth or (`claim_refused`) the refused voucher's own
    ceiling, and returning that voucher as the lane's stored one."""

    refusing: bool = False
    code: str = "lane_busy"
    claim_refused: bool = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.refusing or VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        voucher = parse_voucher(request.headers[VOUCHER_HEADER])
        lane = self.book[voucher.lane]
        self.received.append(voucher)
        charged = voucher.ceiling if self.claim_refused else lane.charged
        stored = voucher if self.claim_refused else lane.voucher
        error: dict[str, Any] = {
            "message": self.code,
            "type": "conflict_error",
            "code": self.code,
            "lane_charged_units": str(charged),
            "voucher": None if stored is None else stored.header(),
        }
        return httpx.Response(409, json={"error": error})


def _hold(signer: Any) -> int:
    return int(signer.hold_for(ENDPOINTS["/v1/chat/completions"], BODY)[0])


@pytest.mark.parametrize(
    ("code", "claim_refused"),
    [
        ("lane_busy", False),  # "409 forever": an honest-looking total, the lane never free
        ("lane_busy", True),  # ... claiming the refused voucher's ceiling as charged
        ("ceiling_below_charged", True),  # a refusal claiming the refused voucher was charged in full
    ],
)
def test_attack__gateway_refuses_forever__ceilings_within_one_hold_of_true_cost(
    tmp_path: Path, code: str, claim_refused: bool
) -> None:
    gateway = RefusingGateway(lanes=1)
    gateway.code, gateway.claim_refused = code, claim_refused
    signer = make_signer(tmp_path / "v.log", lanes=1, lane_busy_rest_seconds=0.01)  # its one lane, tried again at once
    client = _client(gateway, signer)
    assert _ask(client) and _ask(client)
    gateway.refusing = True
    refused = [_ask(client) for _ in range(TRIES)]
    assert not any(refused)
    true_cost = sum(gateway.true_costs)
    highest = max(v.ceiling for v in gateway.received)
    # One hold beyond the true cost at most, whatever the gateway says after refusing.
    assert highest <= true_cost + _hold(signer), (highest, true_cost, _hold(signer), signer.stopped)
    assert signer.book.exposure() <= true_cost + _hold(signer)


class AlternatingGateway(FakeSignedGateway):
    """Serves a request honestly, then refuses the next voucher with 409
    ceiling_below_charged, claiming the lane was charged the whole ceiling of the voucher
    it ACCEPTED last (returned as the stored one: it verifies), and so on."""

    turn: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        self.turn += 1
        if self.turn % 2:
            return super().handle(request)
        self.received.append(parse_voucher(request.headers[VOUCHER_HEADER]))
        lane = self.book[0]
        assert lane.voucher is not None
        lane.charged = lane.voucher.ceiling  # the lie, kept in its books too
        error = {"message": "below", "type": "conflict_error", "code": "ceiling_below_charged",
                 "lane_charged_units": str(lane.charged), "voucher": lane.voucher.header()}  # fmt: skip
        return httpx.Response(409, json={"error": error})


def test_attack__refusal_claims_the_last_accepted_ceiling__at_most_once(tmp_path: Path) -> None:
    """Served, then refused claiming the served request used its whole hold: the lane was
    known exactly, so the claim is a lie and signing stops (else, alternating, the gateway
    would take the full hold of every request)."""
    gateway = AlternatingGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    for _ in range(TRIES):
        _ask(client)
    assert signer.stopped is not None
    highest = max(v.ceiling for v in gateway.received)
    assert highest <= sum(gateway.true_costs) + _hold(signer), (highest, sum(gateway.true_costs))


def test_lane_busy_after_a_lost_answer__lane_stays_bounded_then_exact_again(tmp_path: Path) -> None:
    """The fix's other side: a request really in flight (its answer lost) keeps the lane
    bounded by its ceiling through a lane_busy refusal, and the next answer makes it exact."""
    gateway = FakeSignedGateway(lanes=1, drop_after_charge=True)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    assert not _ask(client)
    lane = signer.book.lanes[0]
    bound = gateway.received[0].ceiling
    assert not lane.exact and lane.charged == bound
    gateway.drop_after_charge = False
    gateway.book[0].in_flight = True
    assert not _ask(client)
    assert not lane.exact and lane.charged == bound >= gateway.book[0].charged and signer.stopped is None
    gateway.book[0].in_flight = False
    assert _ask(client)
    assert lane.exact and lane.charged == gateway.book[0].charged == sum(gateway.true_costs)
    assert signer.stopped is None


def test_attack__gateway_overstates_the_lane_in_an_answer__signing_stops(tmp_path: Path) -> None:
    """An answer whose lane total exceeds the previous total plus its own cost (the
    gateway padding the lane between requests): signing stops before another voucher."""
    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    assert _ask(client)
    gateway.book[0].charged += 1  # padded between requests, not on any answer's cost
    _ask(client)
    assert signer.stopped is not None and "charged" in signer.stopped
    sent = len(gateway.received)
    assert not _ask(client)
    assert len(gateway.received) == sent
    assert max(v.ceiling for v in gateway.received) <= sum(gateway.true_costs) + 1 + _hold(signer)


def test_attack__gateway_overcharges_within_the_hold__signing_stops(tmp_path: Path) -> None:
    """Price × tokens is checked exactly: one unit over the rate stops signing at once."""
    gateway = FakeSignedGateway(lanes=2, overcharge=1)
    signer = make_signer(tmp_path / "v.log", lanes=2)
    client = _client(gateway, signer)
    _ask(client)
    assert signer.stopped is not None
    sent = len(gateway.received)
    assert not _ask(client) and len(gateway.received) == sent


def test_attack__lanes_endpoint_inflated_on_restart__within_one_hold(tmp_path: Path) -> None:
    """Every answer arrived; the proxy restarts cleanly (same voucher log) and
    /v1/promptex/lanes reports the lane charged up to its stored voucher's ceiling (the
    last hold "used in full", in the gateway's books too). The log's last told total wins,
    so the inflated books show at the next answer and signing stops: never a ceiling beyond
    true cost + one hold (before: one more hold per restart)."""
    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    assert _ask(client) and _ask(client)
    signer.log.close()
    lane = gateway.book[0]
    assert lane.voucher is not None
    lane.charged = lane.voucher.ceiling  # the lie
    resumed = make_signer(tmp_path / "v.log", lanes=1)
    chain = ChainSession(IDENTITY.key, 1, 1, 10**12, 0, (0,))
    recovered = recover(IDENTITY, chain, lane_reports(gateway.lanes_report()), resumed.log)
    resumed.book = recovered.book
    assert resumed.book.lanes[0].exact and resumed.book.lanes[0].charged == sum(gateway.true_costs)
    assert any("its last answer" in note for note in recovered.notes)
    client = _client(gateway, resumed)
    for _ in range(3):
        _ask(client)
    assert resumed.stopped is not None
    highest = max(v.ceiling for v in gateway.received)
    assert highest <= sum(gateway.true_costs) + _hold(resumed), (highest, sum(gateway.true_costs))


def _asks(client: openai.OpenAI, gateway: FakeSignedGateway, pattern: str) -> int:
    """Requests answered as `pattern` says ("e": an error without the lane's figures, "a":
    an answer); the cost of the answers the buyer received."""
    received = 0
    for turn in pattern:
        gateway.error_status = 500 if turn == "e" else 0
        before = sum(gateway.true_costs)
        if _ask(client):
            received += sum(gateway.true_costs) - before
    return received


@pytest.mark.parametrize("lanes", [1, 2])
def test_attack__gateway_answers_errors_forever__signing_stops_within_n_holds_per_lane(
    tmp_path: Path, lanes: int
) -> None:
    """500 without the lane's figures, after charging, forever: each such answer may have
    cost its whole hold, so after `stop_after_errors` (3) of them on a lane signing stops,
    saying why, instead of walking the lane up one hold per request."""
    gateway = FakeSignedGateway(lanes=lanes, charge_errors=True)
    signer = make_signer(tmp_path / "v.log", lanes=lanes)
    client = _client(gateway, signer)
    received = _asks(client, gateway, "aa" + "e" * TRIES)
    assert signer.stopped is not None and "3 answers on lane" in signer.stopped, signer.stopped
    sent = len(gateway.received)
    assert signer.book.exposure() <= received + lanes * 3 * _hold(signer)
    assert not _ask(client) and len(gateway.received) == sent  # nothing more signed


def test_attack__charged_errors_between_answers__not_forgiven__signing_stops(tmp_path: Path) -> None:
    """Two charged errors, then an honest answer, and again: the answer's lane total shows
    the errors were charged, so they keep counting ("N−1 errors, one answer" forever would
    otherwise walk the lane two holds per answer), as many as what they took makes in
    holds: here both together took less than one hold, so they count as one."""
    gateway = FakeSignedGateway(lanes=1, charge_errors=True)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    received = _asks(client, gateway, "a" + "eea" * 4)
    assert 2 * gateway.true_costs[0] <= _hold(signer)  # two charged errors within one hold
    assert signer.stopped is not None and "3 answers on lane 0" in signer.stopped, signer.stopped
    assert len(gateway.received) == 1 + 5  # a, e, e, a (one counted), e, e: stopped at the third
    assert signer.book.exposure() <= received + 3 * _hold(signer)


def test_errors_that_cost_nothing__forgiven_by_the_next_answer__never_stops(tmp_path: Path) -> None:
    """An honest gateway's errors (a rate limit, an upstream failure: nothing charged) as
    often as two in three requests: each answer shows the lane unchanged by them, the count
    restarts, signing goes on and the lane is exact after each answer."""
    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    _asks(client, gateway, "eea" * 4)
    lane = signer.book.lanes[0]
    assert signer.stopped is None and lane.errors == 0
    assert lane.exact and lane.charged == gateway.book[0].charged == sum(gateway.true_costs)


@pytest.mark.parametrize("lanes", [1, 2])
def test_attack__gateway_charges_then_drops_every_connection__signing_stops_within_n_holds_per_lane(
    tmp_path: Path, lanes: int
) -> None:
    """Charge each request in full, then drop its connection, forever: nothing can be
    checked, so each drop counts like an answer without the lane's figures and the third
    on a lane stops signing, saying why. The buyer received nothing; what the gateway can
    settle (its lanes' totals, within the highest vouchers) is at most N holds per lane."""
    gateway = FakeSignedGateway(lanes=lanes, drop_after_charge=True)
    signer = make_signer(tmp_path / "v.log", lanes=lanes)
    client = _client(gateway, signer)
    assert not any(_ask(client) for _ in range(TRIES))
    assert signer.stopped is not None and "3 answers on lane" in signer.stopped, signer.stopped
    assert "dropped" in signer.stopped, signer.stopped
    sent = len(gateway.received)
    bound = lanes * signer.stop_after_errors * _hold(signer)
    settleable = sum(lane.charged for lane in gateway.book.values())
    assert 0 < settleable <= signer.book.exposure() <= bound, (settleable, signer.book.exposure(), bound)
    assert not _ask(client) and len(gateway.received) == sent  # nothing more signed


def test_gateway_killed_honestly__dropped_answers_shown_free__never_stops(tmp_path: Path) -> None:
    """A gateway killed mid-request, again and again: its hold is swept with nothing
    charged, and the lane's next answer (from an exactly known total) shows the drop free,
    so it is forgiven. One killed after charging (its answer lost) counts for good, but
    does not keep the count from restarting after the free drops that follow."""
    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    gateway.drop_after_charge = True
    assert not _ask(client)
    gateway.drop_after_charge = False
    for _ in range(6):
        gateway.drop_before_charge = True
        assert not _ask(client)
        gateway.drop_before_charge = False
        assert _ask(client)
    lane = signer.book.lanes[0]
    assert signer.stopped is None and lane.errors == 1 and lane.pending == 0
    assert lane.exact and lane.charged == gateway.book[0].charged


def test_transport__no_connection__the_voucher_counts_for_nothing(tmp_path: Path) -> None:
    """A gateway that cannot be reached never saw the voucher: the lane keeps its exact
    figure, nothing counts towards the stop, and the next answer checks exactly."""
    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    assert _ask(_client(gateway, signer))

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = openai.OpenAI(
        base_url="http://gateway.test/v1", api_key="sk-test", max_retries=0,
        http_client=httpx.Client(transport=PromptexSigningTransport(signer, inner=httpx.MockTransport(refuse))),
    )  # fmt: skip
    lane = signer.book.lanes[0]
    accepted = lane.live
    for _ in range(TRIES):
        assert not _ask(down)
    assert signer.stopped is None and lane.errors == 0 and lane.exact and lane.live == accepted
    assert _ask(_client(gateway, signer)) and lane.charged == sum(gateway.true_costs)


def test_dropped_after_an_inexact_total__not_forgiven(tmp_path: Path) -> None:
    """A drop measured from a bound (the lane's total unknown since a lost answer) is not
    forgiven by a later total within that bound: the bound's slack may be the drop's charge."""
    import orjson

    signer = make_signer(tmp_path / "v.log", lanes=1)
    body = dict(BODY)
    path = "/v1/chat/completions"
    signer.lost(signer.begin(path, body))  # e.g. a stream its client closed: the lane is a bound now
    lane = signer.book.lanes[0]
    assert not lane.exact
    signer.dropped(signer.begin(path, body))
    assert lane.errors == 1 and lane.pending == 1 and not lane.errors_from_exact
    answered = signer.begin(path, body)
    usage = {"prompt_tokens": 6, "completion_tokens": 1, "total_tokens": 7}
    content = orjson.dumps({"choices": [{"message": {"content": "alpha"}}], "usage": usage})
    cost = _hold(signer) // 100  # any total below the bound the drop was measured from
    headers = {COST_UNITS_HEADER: str(cost), LANE_CHARGED_HEADER: str(2 * cost)}
    signer.finish(answered, 200, headers, content)
    assert lane.errors == 1 and lane.pending == 0  # counted for good


def _close_after(client: httpx.Client, body: dict[str, Any], events: int) -> int | None:
    """A streamed request whose client reads `events` chunks and closes it; the allowance
    the signer gives it (its input bound, the relayed bytes as output tokens plus the slack,
    at most its hold), None when it ran to its end or was not a stream."""
    watch = StreamWatch()
    with client.stream("POST", "http://gateway.test/v1/chat/completions", json=body) as answer:
        if answer.status_code != 200:
            answer.read()
            return None
        chunks = answer.iter_bytes()
        for _ in range(events):
            chunk = next(chunks, None)
            if chunk is None:
                return None
            watch.feed(chunk)
        if watch.cost is not None:  # its last event came: an answer
            return None
    signer = client._transport.signer  # type: ignore[attr-defined]
    hold, bound, rates = signer.hold_for(ENDPOINTS["/v1/chat/completions"], body)
    output = min(body.get("max_tokens") or signer.default_output_tokens, watch.produced() + CLOSE_SLACK_TOKENS)
    return min(int(hold), metering.upper_bound(rates, bound.input_bound, output))


class StallingGateway(FakeSignedGateway):
    """ubreak's Open A: books each stream's whole ceiling, sends one event and stalls until
    the client gives up and closes it; then refuses the next voucher 409
    ceiling_below_charged naming the booked total (with its stored voucher: it verifies)."""

    turn: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        self.turn += 1
        lane = self.book[0]
        if self.turn % 2 or lane.voucher is None:
            return super().handle(request)
        self.received.append(parse_voucher(request.headers[VOUCHER_HEADER]))
        error = {"message": "below", "type": "conflict_error", "code": "ceiling_below_charged",
                 "lane_charged_units": str(lane.charged), "voucher": lane.voucher.header()}  # fmt: skip
        return httpx.Response(409, json={"error": error})


def test_attack__streams_booked_in_full_then_stalled_until_the_client_closes__stopped_within_n_holds(
    tmp_path: Path,
) -> None:
    """A stream its client closes is an answer without figures with an allowance (what its
    relayed bytes allow). Before, it weighed nothing: a gateway that booked the whole
    ceiling, sent one event and stalled until the client closed, then refused the next
    voucher naming the booked total (adopted as exact), walked the lane a hold per two
    requests, never stopped. Now only what it booked above the allowance weighs, and the
    third such close stops signing."""
    gateway = StallingGateway(lanes=1, lazy_stream=True, close_books_ceiling=True)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    body = {**BODY, "max_tokens": 1024, "stream": True}
    hold = int(signer.hold_for(ENDPOINTS["/v1/chat/completions"], body)[0])
    n = signer.stop_after_errors
    allowed = 0
    for _ in range(2 * (n + 2)):  # a hold per two requests: past N holds, were it not stopped
        allowance = _close_after(client, body, 1)
        allowed += allowance or 0
        if signer.stopped is not None:
            break
    assert signer.stopped is not None and "a stream its client closed" in signer.stopped, signer.stopped
    assert 4 * allowed < n * hold  # the relayed bytes allow little: the bound below is about holds
    settleable = gateway.book[0].charged
    assert settleable <= max(v.ceiling for v in gateway.received) <= allowed + n * hold, (settleable, allowed, hold)


@given(
    pattern=st.lists(st.tuples(st.sampled_from("asc"), st.integers(1, 6)), min_size=1, max_size=16),
    sizes=st.lists(st.sampled_from([4, 64, 1024]), min_size=1),
)
@example(pattern=[("c", 1)] * 5 + [("a", 1)], sizes=[1024])  # five closes in a row
@example(pattern=[("c", 3), ("c", 3), ("a", 1)], sizes=[4])  # the closes' charges take the answer's hold
@settings(max_examples=40 if DEEP else 8)
def test_honest_gateway__streams_closed_by_their_client__never_stop(
    pattern: list[tuple[str, int]], sizes: list[int]
) -> None:
    """An honest gateway charges a stream its client closed its input and what it streamed
    (a chunk more than the buyer relayed: the one in flight): within the allowance, so
    however many streams are closed, in a row or between answers, signing never stops and
    the lane is exact again after each answer. (Weighing each close its hold less its
    allowance until a figure came, as first decided, stops the explicit example: the third
    close in a row of a 1,024-token request closed after its first word.)"""
    with tempfile.TemporaryDirectory() as folder:
        gateway = FakeSignedGateway(lanes=1, lazy_stream=True)
        signer = make_signer(Path(folder) / "v.log", lanes=1)
        client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
        lane = signer.book.lanes[0]
        for n, (turn, events) in enumerate(pattern):
            body = {**BODY, "max_tokens": sizes[n % len(sizes)], "stream": turn != "a"}
            if turn == "c":
                _close_after(client, body, events)
            else:
                answer = client.post("http://gateway.test/v1/chat/completions", json=body)
                if answer.status_code == 402 and answer.json()["error"]["code"] == "hold_too_small":
                    # Ceilings are built on the last exact total: what the closes charged
                    # came out of this one's hold, refused naming the lane's total (a resync).
                    assert lane.exact and lane.charged == gateway.book[0].charged
                    answer = client.post("http://gateway.test/v1/chat/completions", json=body)
                assert answer.status_code == 200
                assert lane.exact and lane.charged == gateway.book[0].charged, (lane, gateway.book[0])
            assert signer.stopped is None, signer.stopped


# What one request meets: "a" an answer; "D" charged its cost, then the connection
# dropped (an honest gateway killed after its settle committed); "d" dropped before
# charging (a killed gateway: its hold is swept); "E" charged, then a 500 without the
# lane's figures; "e" a 500 that charged nothing; "X" and "F": as "D" and "E" but the
# lane booked charged its voucher's whole ceiling (a dishonest gateway's most); "R" a 409
# naming the lane's total as the last answer told it (hiding what was booked since); "G"
# a 200 whose body does not decode as its content-encoding says, the whole ceiling booked;
# "c" a stream its client closed after its first event (an honest gateway charges what it
# streamed), "C" the same, the gateway booking the voucher's whole ceiling; "K" the proxy
# killed with the request in flight, the gateway booking its whole ceiling, then restarted.
BEHAVIOURS = "aDdEeXFRGcCK"


@given(pattern=st.text(alphabet=BEHAVIOURS, min_size=1, max_size=24), sizes=st.lists(st.sampled_from([1, 4, 24])))
@settings(max_examples=40 if DEEP else 12)
def test_any_gateway_behaviour__highest_ceiling_within_n_holds_of_what_was_received(
    pattern: str, sizes: list[int]
) -> None:
    """Whatever mix of answers, charged or free drops and errors a gateway serves, the most
    it can settle on a lane (its highest voucher: the chain refuses any debit beyond it) is
    at most the true cost of the answers the buyer received plus N of the largest holds
    signed (N = `stop_after_errors`; requests of several sizes, so drops of small requests
    after large ones, signed just above the large ones' ceilings, weigh what those allow;
    refusals hiding what drops booked; streams their client closed, counted received up to
    their allowance; proxy restarts with a request in flight booked in full), plus the
    tolerance of what they cost; an honest mix (free drops and errors, an answer at least
    after every N − 1 of them, closed streams anywhere) never stops signing."""
    with tempfile.TemporaryDirectory() as folder:
        gateway = FakeSignedGateway(lanes=1, lazy_stream=True)
        path = Path(folder) / "v.log"
        signer = make_signer(path, lanes=1)
        client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
        received, largest = 0, 0
        for n, turn in enumerate(pattern):
            body = {**BODY, "max_tokens": sizes[n % len(sizes)] if sizes else 4}
            hold = int(signer.hold_for(ENDPOINTS["/v1/chat/completions"], body)[0])
            gateway.drop_after_charge, gateway.drop_before_charge = turn in "DXK", turn == "d"
            gateway.error_status, gateway.charge_errors = (500 if turn in "EeF" else 0), turn in "EF"
            gateway.claim_ceiling, gateway.hide_total, gateway.garble = turn in "XFGK", turn == "R", turn == "G"
            gateway.close_books_ceiling = turn == "C"
            before, sent = sum(gateway.true_costs), len(gateway.received)
            try:
                if turn == "K":
                    try:
                        _killed_in_flight(signer, gateway, body)
                    except Refused:  # stopped: nothing signed
                        continue
                    signer = _restarted(path, gateway)
                    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
                    continue
                if turn in "cC":  # what the relayed bytes allow counts as received
                    allowance = _close_after(client, {**body, "stream": True}, 1)
                    received += sum(gateway.true_costs) - before if allowance is None else allowance
                    continue
                answer = client.post("http://gateway.test/v1/chat/completions", json=body)
            except (httpx.TransportError, httpx.DecodingError):
                continue
            finally:
                if len(gateway.received) > sent:  # signed (not refused for a stop)
                    largest = max(largest, hold)
            if answer.status_code == 200:
                received += sum(gateway.true_costs) - before
        highest = max((v.ceiling for v in gateway.received), default=0)
        tolerated = signer.tolerance_bp * received // 10_000  # of the answers' checked units (≤ received)
        assert highest <= received + signer.stop_after_errors * largest + tolerated, (highest, received, signer.stopped)
        assert gateway.book[0].charged <= highest
        runs = pattern.replace("c", "").split("a")  # an honest gateway's closed streams: never a stop
        if not set(pattern) & set("DEXFRGCK") and all(len(run) < signer.stop_after_errors for run in runs[:-1]):
            assert signer.stopped is None or len(runs[-1]) >= signer.stop_after_errors, signer.stopped


# One long word: held for its bytes, charged for one token — an answer costs under a quarter of its hold.
QUARTER = {"model": MODEL, "messages": [{"role": "user", "content": "w" * 40}], "max_tokens": 4}


def _crash_after_charge(client: httpx.Client, gateway: FakeSignedGateway) -> None:
    """An honest gateway killed after its settle committed, before the answer left."""
    gateway.drop_after_charge = True
    try:
        with pytest.raises(httpx.TransportError):
            client.post("http://gateway.test/v1/chat/completions", json=QUARTER)
    finally:
        gateway.drop_after_charge = False


def test_honest_crashes_after_charging__weigh_what_they_charged__not_a_hold_each(tmp_path: Path) -> None:
    """An honest gateway killed now and then after a settle commits and before its answer
    leaves: the next answer shows each drop charged (under a quarter of a hold), and it
    counts for good. Counted as events, the third such drop stopped signing for the
    session's life; weighed in units, three crashes weigh three quarters of a hold and
    signing goes on, until they and a drop not yet told about weigh more than N − 1 holds
    (the N-th hold: the next request's). What the gateway can settle stays within N holds."""
    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1, tolerance_bp=0)  # the units rule alone
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    hold = int(signer.hold_for(ENDPOINTS["/v1/chat/completions"], QUARTER)[0])
    assert client.post("http://gateway.test/v1/chat/completions", json=QUARTER).status_code == 200
    cost = gateway.true_costs[0]
    assert 4 * cost <= hold
    lane = signer.book.lanes[0]
    for crash in range(1, 4):
        _crash_after_charge(client, gateway)
        assert signer.stopped is None, signer.stopped  # the event count stopped at the third drop
        assert client.post("http://gateway.test/v1/chat/completions", json=QUARTER).status_code == 200
        assert (lane.errors, lane.pending) == (crash, 0)
    assert lane.lost == 3 * cost
    assert lane.exact and lane.charged == gateway.book[0].charged == sum(gateway.true_costs)
    # The rule still stops: once what the drops charged, plus a hold for one not yet told
    # about, is more than N − 1 holds.
    crashes = 3
    while signer.stopped is None:
        _crash_after_charge(client, gateway)
        crashes += 1
        if signer.stopped is None:
            assert client.post("http://gateway.test/v1/chat/completions", json=QUARTER).status_code == 200
    n = signer.stop_after_errors
    assert (crashes - 1) * cost + hold > (n - 1) * hold >= (crashes - 2) * cost + hold, (crashes, cost, hold)
    assert "came without the lane's total" in signer.stopped and "dropped" in signer.stopped, signer.stopped
    received = sum(gateway.true_costs) - crashes * cost
    assert max(v.ceiling for v in gateway.received) <= received + n * hold


def _long_session(signer: Any, crashes: int, between: int) -> tuple[FakeSignedGateway, int]:
    """`crashes` honest crashes after a settle, `between` answers before each; the crash at
    which signing stopped (0: never)."""
    gateway = FakeSignedGateway(lanes=1)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    for crash in range(1, crashes + 1):
        for _ in range(between):
            assert client.post("http://gateway.test/v1/chat/completions", json=QUARTER).status_code == 200
        _crash_after_charge(client, gateway)
        if signer.stopped is not None:
            return gateway, crash
    return gateway, 0


def test_honest_crashes_over_a_long_session__within_the_tolerance__never_stop(tmp_path: Path) -> None:
    """The stop rule's weight never decayed: an honest gateway killed after a settle now and
    then stopped a long session's lane once those small losses added up to N − 2 holds (here
    the sixth crash). With the tolerance (`tolerance_bp` of the lane's exactly checked units
    allowed beyond N − 1 holds), losses below that share of what the checked answers cost
    never stop it; losses above it still do; what can be settled stays within N holds plus
    the tolerance of what was received. (Shown with 20 %, to keep the session short; the
    proxy's default is 1 %: a crash charging a quarter hold per 100 such answers.)"""
    hold = int(make_signer(tmp_path / "h.log", lanes=1).hold_for(ENDPOINTS["/v1/chat/completions"], QUARTER)[0])
    strict = make_signer(tmp_path / "strict.log", lanes=1, tolerance_bp=0)
    assert _long_session(strict, 8, 1)[1] == 6  # the rule without a tolerance: stopped
    tolerant = make_signer(tmp_path / "tolerant.log", lanes=1, tolerance_bp=2_000)
    gateway, stopped_at = _long_session(tolerant, 8, 6)
    lane = tolerant.book.lanes[0]
    assert stopped_at == 0 and tolerant.stopped is None, tolerant.stopped
    assert (lane.lost, lane.pending) == (7 * gateway.true_costs[0], 1)  # the last crash not yet told about
    assert lane.verified == 8 * 6 * gateway.true_costs[0]
    lossy = make_signer(tmp_path / "lossy.log", lanes=1, tolerance_bp=2_000)
    gateway, stopped_at = _long_session(lossy, 30, 2)  # a loss per two answers: 50 %, above 20 %
    assert stopped_at > 0 and lossy.stopped is not None and "tolerated" in lossy.stopped
    received = sum(gateway.true_costs) - stopped_at * gateway.true_costs[0]
    n, tolerated = lossy.stop_after_errors, lossy.tolerated(lossy.book.lanes[0])
    assert max(v.ceiling for v in gateway.received) <= received + n * hold + tolerated


def test_voucher_log_of_the_event_count__read_by_the_units_rule__old_counts_a_hold_each(tmp_path: Path) -> None:
    """A session's voucher log written before the rule weighed units (vouchers without
    their holds, a lane's count without `lost`) is read on: what it counted for good weighs
    a largest hold each, so the next drop stops as the old count would have (2 + 1 = 3);
    a log of the units rule keeps its units across the restart."""
    import json

    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    hold = int(signer.hold_for(ENDPOINTS["/v1/chat/completions"], QUARTER)[0])
    for _ in range(2):
        _crash_after_charge(client, gateway)
        assert client.post("http://gateway.test/v1/chat/completions", json=QUARTER).status_code == 200
    lane = signer.book.lanes[0]
    assert (lane.errors, lane.lost) == (2, 2 * gateway.true_costs[0])
    signer.log.close()
    chain = ChainSession(IDENTITY.key, 1, 1, 10**12, 0, (0,))

    def restarted() -> Any:
        again = make_signer(tmp_path / "v.log", lanes=1)
        again.book = recover(IDENTITY, chain, lane_reports(gateway.lanes_report()), again.log).book
        return again

    units = restarted()  # the units rule's own log: the same weight after a restart
    assert (units.book.lanes[0].lost, units.book.lanes[0].largest_hold) == (lane.lost, hold)
    assert units.weight(units.book.lanes[0]) == lane.lost
    # The checked units go on too (the tolerance's base), but the last answer's own: its
    # total is logged before its check adds them.
    assert units.book.lanes[0].verified == lane.verified - gateway.true_costs[-1] > 0
    units.log.close()
    lines = [json.loads(line) for line in (tmp_path / "v.log").read_text().splitlines()]
    for record in lines:  # as the event count's code wrote it
        for key in ("hold",) if record["t"] == "voucher" else ("lost", "lost_holds", "verified"):
            record.pop(key, None)
    (tmp_path / "v.log").write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines))
    old = restarted()
    migrated = old.book.lanes[0]
    assert (migrated.errors, migrated.pending, migrated.lost, migrated.lost_holds) == (2, 0, 0, 2)
    assert migrated.largest_hold == hold and old.weight(migrated) == 2 * hold
    assert migrated.verified == 0  # an old log names no checked units: no tolerance yet
    assert old.stopped is None
    client = httpx.Client(transport=PromptexSigningTransport(old, inner=gateway.transport()))
    _crash_after_charge(client, gateway)
    assert old.stopped is not None and "3 answers on lane 0" in old.stopped, old.stopped


def _restarted(path: Path, gateway: FakeSignedGateway) -> Any:
    """A proxy started again on the same voucher log: the lane book recovered from it and
    the gateway's lane report."""
    signer = make_signer(path, lanes=1)
    chain = ChainSession(IDENTITY.key, 1, 1, 10**12, 0, (0,))
    signer.book = recover(IDENTITY, chain, lane_reports(gateway.lanes_report()), signer.log).book
    return signer


def _killed_in_flight(signer: Any, gateway: FakeSignedGateway, body: dict[str, Any] = BODY) -> None:
    """A request signed and sent, and the proxy killed before its answer came back."""
    ticket = signer.begin("/v1/chat/completions", body)
    request = httpx.Request(
        "POST", "http://gateway.test/v1/chat/completions", json=body,
        headers={VOUCHER_HEADER: ticket.voucher.header()},
    )  # fmt: skip
    with contextlib.suppress(httpx.TransportError):
        gateway.handle(request)
    signer.log.close()


def test_attack__proxy_killed_with_a_request_in_flight__booked_in_full__weighed_after_restart(tmp_path: Path) -> None:
    """ubreak's Open B: a request in flight when the proxy died left a voucher with no
    outcome in the log; the restart adopted the gateway's report (verified, not in flight)
    as exact, so a gateway that booked that voucher's whole ceiling kept it, weighing
    nothing: a hold per restart, never stopped. Now it is an answer without figures after
    the restart: the third such stops signing, within N holds."""
    gateway = FakeSignedGateway(lanes=1)
    path = tmp_path / "v.log"
    signer = make_signer(path, lanes=1)
    assert _ask(_client(gateway, signer))
    received = sum(gateway.true_costs)
    gateway.drop_after_charge = gateway.claim_ceiling = True  # books the whole ceiling, answers nothing
    n, hold = signer.stop_after_errors, _hold(signer)
    for _ in range(2 * n):
        try:
            _killed_in_flight(signer, gateway)
        except Refused:
            break
        signer = _restarted(path, gateway)
        assert not signer.book.lanes[0].exact
    assert signer.stopped is not None and "in flight" in signer.stopped, signer.stopped
    assert gateway.book[0].charged <= max(v.ceiling for v in gateway.received) <= received + n * hold


def test_proxy_killed_with_a_request_in_flight__honest_gateway__its_cost_weighs__lane_exact_again(
    tmp_path: Path,
) -> None:
    """An honest gateway charged a request whose answer the proxy never read (killed): after
    the restart the lane is bounded, the request pending; the next answer tells the lane's
    total, the request weighs what it charged, and the lane is exact again. A lane_busy
    refusal or a request that never left is an outcome too: no request in flight after them."""
    gateway = FakeSignedGateway(lanes=1)
    path = tmp_path / "v.log"
    signer = make_signer(path, lanes=1)
    assert _ask(_client(gateway, signer))
    _killed_in_flight(signer, gateway)
    signer = _restarted(path, gateway)
    lane = signer.book.lanes[0]
    assert (lane.pending, lane.exact) == (1, False)
    assert _ask(_client(gateway, signer)) and signer.stopped is None
    assert (lane.pending, lane.lost, lane.exact) == (0, gateway.true_costs[1], True)
    assert lane.charged == gateway.book[0].charged
    gateway.book[0].in_flight = True  # lane_busy
    assert not _ask(_client(gateway, signer))
    gateway.book[0].in_flight = False
    signer.log.close()
    signer = _restarted(path, gateway)
    assert signer.book.lanes[0].pending == 0 and signer.book.lanes[0].exact


class HidingGateway(FakeSignedGateway):
    """Books each voucher charged its whole ceiling and drops the connection; refuses the
    next 409 ceiling_below_charged naming as the lane's total the one its last answer told
    (hiding what it booked since), with its stored voucher (it verifies); and again. The
    buyer's lane is only bounded after a drop, so the refusal's total is adopted and the
    drop before it looks free."""

    told: int = 0
    hiding: bool = False
    turn: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.hiding or VOUCHER_HEADER not in request.headers:
            response = super().handle(request)
            self.told = self.book[0].charged
            return response
        voucher = parse_voucher(request.headers[VOUCHER_HEADER])
        self.received.append(voucher)
        lane = self.book[0]
        assert lane.voucher is not None
        self.turn += 1
        if self.turn % 2 and voucher.ceiling > lane.voucher.ceiling:  # a voucher it can settle: booked in full
            lane.charged, lane.voucher = voucher.ceiling, voucher
            raise httpx.ReadError("connection dropped after charging")
        error = {"message": "below", "type": "conflict_error", "code": "ceiling_below_charged",
                 "lane_charged_units": str(self.told), "voucher": lane.voucher.header()}  # fmt: skip
        return httpx.Response(409, json={"error": error})


def test_attack__charged_drops_hidden_by_refusals_naming_the_old_total__within_n_holds(tmp_path: Path) -> None:
    """Each drop is followed by a refusal naming the lane's last told total: the drop looks
    free, and the next voucher, a small request's, is signed just above the dropped one's
    ceiling (ceilings rise strictly), which the gateway books again. Counted as events, the
    count never passed 1 and the lane walked a unit per two requests, beyond N holds, for as
    long as the buyer sent; weighed, a drop not yet told about weighs what the accepted
    ceilings allow above the total it was measured from, and signing stops within N holds."""
    gateway = HidingGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    small = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    hold = int(signer.hold_for(ENDPOINTS["/v1/chat/completions"], small)[0])
    assert client.post("http://gateway.test/v1/chat/completions", json=small).status_code == 200
    received = sum(gateway.true_costs)
    gateway.hiding = True
    n = signer.stop_after_errors
    for _ in range(2 * (n + 1) * hold):  # a unit per two requests: past N holds, were it not stopped
        with contextlib.suppress(httpx.TransportError):  # its drops
            client.post("http://gateway.test/v1/chat/completions", json=small)
        if signer.stopped is not None:
            break
    settleable = gateway.book[0].charged  # within its highest voucher
    assert settleable <= max(v.ceiling for v in gateway.received) <= received + n * hold, (settleable, received, hold)
    assert signer.stopped is not None and "came without the lane's total" in signer.stopped


@pytest.mark.parametrize("mode", ["gzip", "gzip-stream", "digit", "shape"])
def test_attack__booked_in_full_then_answered_unreadably__within_n_holds(tmp_path: Path, mode: str) -> None:
    """An answer this side cannot read is the gateway's doing, and weighs like one without
    the lane's figures. Before, a body not decoding as its content-encoding said (httpx's
    DecodingError is no TransportError) and a stream event whose reading raised ("²" as a
    cost, `choices` an integer) were read as the client abandoning the request: the lane
    only bounded by the voucher, nothing weighed, and the refusal after it naming the
    booked total adopted. The lane walked a hold per two requests for as long as the buyer
    sent (60 requests of a 60-unit hold: 1,836 settleable for 36 received, never stopped)."""
    gateway = UnreadableGateway(lanes=1)
    gateway.mode = mode
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    body = {**BODY, "stream": mode != "gzip"}
    hold = int(signer.hold_for(ENDPOINTS["/v1/chat/completions"], body)[0])
    n = signer.stop_after_errors
    for _ in range(2 * (n + 2)):  # a hold per two requests: past N holds, were it not stopped
        with contextlib.suppress(httpx.HTTPError):
            client.post("http://gateway.test/v1/chat/completions", json=body).read()
        if signer.stopped is not None:
            break
    received = sum(gateway.true_costs)
    assert max(v.ceiling for v in gateway.received) <= received + n * hold, (gateway.received[-1], received, hold)
    assert signer.stopped is not None and "came without the lane's total" in signer.stopped, signer.stopped


class ShapelessGateway(FakeSignedGateway):
    """Books each voucher charged its whole ceiling and answers 200 with the lane's figures
    (consistent: the cost is all that was left of the hold) and a nominal usage, its
    `choices` not a list: reading the answer's produced bytes raised before its cost was
    checked, after its total was adopted."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        if VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        voucher = parse_voucher(request.headers[VOUCHER_HEADER])
        self.received.append(voucher)
        lane = self.book[voucher.lane]
        cost = voucher.ceiling - lane.charged
        lane.charged, lane.voucher = voucher.ceiling, voucher
        headers = {COST_UNITS_HEADER: str(cost), LANE_CHARGED_HEADER: str(lane.charged),
                   LANE_HEADER: str(voucher.lane), VOUCHER_HEADER: voucher.header()}  # fmt: skip
        answer = {"choices": True, "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
        return httpx.Response(200, json=answer, headers=headers)


def test_attack__an_answer_whose_reading_raises__not_adopted_unchecked__signing_stops(tmp_path: Path) -> None:
    """An answer of a shape no check foresaw stops signing. Before, the reading raised out
    of the signer after the lane's total was adopted and before the cost was checked (the
    client saw a TypeError): 20 requests, 20 whole holds charged, nothing served, never
    stopped."""
    gateway = ShapelessGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()))
    for _ in range(TRIES):
        with contextlib.suppress(Exception):
            client.post("http://gateway.test/v1/chat/completions", json=BODY)
    assert signer.stopped is not None and len(gateway.received) == 1, signer.stopped
    assert gateway.book[0].charged <= _hold(signer)


class HoldEndedGateway(FakeSignedGateway):
    """On `ending`, accepts the voucher, then ends its hold uncharged (a gateway process
    that lost its ledger session): 503 hold_ended naming the lane's unchanged total and the
    accepted voucher, as `errors.hold_ended` does (`claim` instead names this total)."""

    ending: bool = False
    claim: int | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.ending or VOUCHER_HEADER not in request.headers:
            return super().handle(request)
        voucher = parse_voucher(request.headers[VOUCHER_HEADER])
        self.received.append(voucher)
        lane = self.book[voucher.lane]
        lane.voucher = voucher  # accepted: the lane's highest; nothing charged
        total = lane.charged if self.claim is None else self.claim
        error = {"message": "hold ended", "type": "server_error", "code": "hold_ended", "lane": voucher.lane,
                 "lane_charged_units": str(total), "voucher": voucher.header()}  # fmt: skip
        return httpx.Response(503, json={"error": error})


def test_hold_ended_naming_the_lane_total__lane_stays_exact__voucher_kept_as_accepted(tmp_path: Path) -> None:
    """pbreak's Open 3: a 503 hold_ended named no lane total, so it weighed as an answer
    without figures (after a database restart a busy lane could stop for answers all free).
    It now names the lane's total and its voucher: the lane stays exact, nothing weighs, and
    the voucher counts as accepted (read as a voucher refusal, `live` went back below it and
    the next request was signed at the same ceiling: refused 409 voucher_used). A total
    above the one before it, every request answered, still stops signing."""
    gateway = HoldEndedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    assert _ask(client)
    lane = signer.book.lanes[0]
    for _ in range(2 * signer.stop_after_errors):
        gateway.ending = True
        assert not _ask(client)
        accepted = gateway.received[-1].ceiling
        assert (lane.exact, lane.charged, lane.errors, lane.pending) == (True, gateway.book[0].charged, 0, 0)
        assert lane.live == accepted and signer.stopped is None
        gateway.ending, sent = False, len(gateway.received)
        assert _ask(client) and len(gateway.received) == sent + 1  # served at once: no voucher_used
    gateway.ending, gateway.claim = True, gateway.book[0].charged + 1  # a charge it says it did not make
    assert not _ask(client)
    assert signer.stopped is not None and "every request signed on it was answered" in signer.stopped
