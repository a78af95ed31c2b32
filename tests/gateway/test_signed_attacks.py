"""Attacks of a dishonest gateway operator on a buyer's signing proxy (signed mode, issue
23), in-process through the httpx signing transport and the fake signed gateway: the
promise is that the buyer signs at most one hold per lane beyond the true cost of what
was served. Each test drives a lane with a gateway that lies in one way and asserts the
highest ceiling it ever received stays within true cost + one hold (or signing stops,
saying why, before it gets further).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "offchain"))
from buyerside_fakes import IDENTITY, MODEL, FakeSignedGateway, make_signer  # noqa: E402

from promptex.buyerside.answers import ENDPOINTS  # noqa: E402
from promptex.buyerside.recovery import ChainSession, recover  # noqa: E402
from promptex.buyerside.transport import PromptexSigningTransport  # noqa: E402
from promptex.buyerside.wire import VOUCHER_HEADER, lane_reports, parse_voucher  # noqa: E402

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello hello hello"}], "max_tokens": 4}
TRIES = 12


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
    signer = make_signer(tmp_path / "v.log", lanes=1)
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
    errors = len(gateway.received) - 2
    assert errors <= lanes * 2 + 1  # the third on any lane stops it
    assert signer.book.exposure() <= received + lanes * 3 * _hold(signer)
    assert not _ask(client) and len(gateway.received) == errors + 2  # nothing more signed


def test_attack__charged_errors_between_answers__not_forgiven__signing_stops(tmp_path: Path) -> None:
    """Two charged errors, then an honest answer, and again: the answer's lane total shows
    the errors were charged, so it does not restart the count ("N−1 errors, one answer"
    forever would otherwise walk the lane two holds per answer)."""
    gateway = FakeSignedGateway(lanes=1, charge_errors=True)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    client = _client(gateway, signer)
    received = _asks(client, gateway, "a" + "eea" * 4)
    assert signer.stopped is not None and "3 answers on lane 0" in signer.stopped, signer.stopped
    assert len(gateway.received) == 1 + 4  # a, e, e, a, e: stopped at the third charged error
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
