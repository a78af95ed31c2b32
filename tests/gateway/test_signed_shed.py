"""Signed mode under a load spike: the gateway's refusals before it reads a request (its
load shed: 429 capacity_busy, Anthropic's 529 overloaded_error; its admission: 429
too_many_in_flight, per key and per address) name no lane, and took nothing. The signing
proxy and transport take them as a voucher that did not take (`Signer.refused_unread`):
the lane's figure stays, nothing weighs in the stop rule, the answer goes to the client as
the gateway sent it (its Retry-After: the SDKs retry it themselves). Before (s2break's
OPEN), each weighed a hold, and three in a row on a lane stopped signing for good
(until `promptex proxy --resume`): a load spike stopped every signed buyer.

Why a dishonest gateway gains nothing by saying "capacity_busy" while charging: the next
voucher of the lane is built on the same known total, so however many such answers, the
lane's highest ceiling stays within one hold of that total, and the lane's next figure
shows the total grown: signing stops (`test_attack__charged_under_a_shed_label__…`)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from promptex.buyerside.answers import RateBook
from promptex.buyerside.proxy import create_proxy
from promptex.buyerside.signer import Session, Signer, unread
from promptex.buyerside.transport import PromptexSigningTransport
from promptex.buyerside.voucherlog import VoucherLog
from promptex.gateway import errors

from .conftest import Fake, Harness
from .test_signed_proxy import _session, _signer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "offchain"))
from buyerside_fakes import ASSET, IDENTITY, MODEL, RATES, SESSION_KEY, FakeSignedGateway, make_signer  # noqa: E402

HELLO = [{"role": "user", "content": "hello"}]
ASKS = {
    "chat": ("/v1/chat/completions", {"model": "fake-gpt", "max_tokens": 10, "messages": HELLO}),
    "messages": ("/v1/messages", {"model": "fake-gpt", "max_tokens": 10, "messages": HELLO}),
    "responses stream": (
        "/v1/responses",
        {"model": "fake-gpt", "max_output_tokens": 16, "input": "hello", "store": False, "stream": True},
    ),
}
SHED = {"chat": (429, "capacity_busy"), "messages": (529, "overloaded_error"),
        "responses stream": (429, "capacity_busy")}  # fmt: skip


def _transported(gw: Harness, signer: Signer, api_key: str, ask: str, times: int) -> list[httpx.Response]:
    path, body = ASKS[ask]
    transport = PromptexSigningTransport(signer)
    with httpx.Client(base_url=gw.url, transport=transport, headers={"authorization": f"Bearer {api_key}"}) as client:
        answers = [client.post(path, json=body) for _ in range(times)]
        for answer in answers:
            answer.read()
    return answers


def _proxied(gw: Harness, signer: Signer, api_key: str, ask: str, times: int) -> list[httpx.Response]:
    path, body = ASKS[ask]

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {api_key}"}) as upstream:
            app = create_proxy(signer, upstream, refresh_seconds=None)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as local:
                answers = [await local.post(path, json=body) for _ in range(times)]
                status = (await local.get("/promptex/status")).json()
                assert (status["shed_answers"], status["stopped"]) == (signer.shed, None)
                return answers

    return asyncio.run(main())


def _code(answer: httpx.Response) -> str | None:
    error = answer.json()["error"]
    return error.get("code") or error.get("type")


def _served(signer: Signer, gw: Harness, account: int) -> None:
    """Signing goes on: every lane exact, equal to the gateway's ledger, every unit checked."""
    assert signer.stopped is None
    for lane in signer.book.lanes:
        assert lane.exact and lane.errors == 0 and lane.pending == 0
        assert lane.charged == gw.ledger.lane(account, "USDC", 1, lane.index).charged == lane.verified
    assert sum(lane.charged for lane in signer.book.lanes) > 0


@pytest.mark.parametrize(
    ("ask", "through"), [("chat", "transport"), ("messages", "proxy"), ("responses stream", "transport")]
)
def test_shed_20_in_a_row__passed_through_with_retry_after__then_served__signing_goes_on(
    gw: Harness, fake: Fake, tmp_path: Path, ask: str, through: str
) -> None:
    gw.add_lot(fake)
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    send = _transported if through == "transport" else _proxied
    gw.gateway.inflight += 10**6  # the gateway sheds every request (`GatewayApp._serve`)
    try:
        shed = send(gw, signer, api_key, ask, 20)
    finally:
        gw.gateway.inflight -= 10**6
    assert {(answer.status_code, _code(answer), answer.headers["retry-after"]) for answer in shed} == {
        (*SHED[ask], "1")
    }  # as the gateway sent it
    assert signer.stopped is None  # before: "3 answers on lane 0 came without the lane's total"
    assert signer.shed == 20
    assert fake.config.requests == 0
    served = send(gw, signer, api_key, ask, 2)
    assert [answer.status_code for answer in served] == [200, 200], served[0].text
    _served(signer, gw, account)


@pytest.mark.parametrize("refusal", ["in flight, chat", "in flight, messages", "connections"])
def test_too_many_in_flight_or_connections__20_in_a_row__then_served__signing_goes_on(
    gw: Harness, fake: Fake, tmp_path: Path, refusal: str
) -> None:
    """The admission's refusal (`GatewayApp._serve`, before the body is read; on Anthropic's
    Messages API a 429 rate_limit_error without a code), and the connection guard's
    plain-text 429 (`gateway.guard`, before the request is read at all)."""
    gw.add_lot(fake)
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    ask = "messages" if refusal.endswith("messages") else "chat"
    admission, guard = gw.gateway.admission, gw.app.guard
    limits = admission.per_key, guard.per_address
    if refusal == "connections":
        guard.per_address = 0  # this address has its share of connections open
    else:
        admission.per_key = 0  # this key has its share in flight
    try:
        refused = _transported(gw, signer, api_key, ask, 20)
    finally:
        admission.per_key, guard.per_address = limits
    if refusal == "connections":
        assert {(answer.status_code, answer.text) for answer in refused} == {(429, errors.TOO_MANY_CONNECTIONS)}
    else:
        expected = "too_many_in_flight" if ask == "chat" else "rate_limit_error"
        assert {(answer.status_code, _code(answer), answer.headers["retry-after"]) for answer in refused} == {
            (429, expected, "1")
        }
    assert signer.stopped is None and signer.shed == 20
    assert [answer.status_code for answer in _transported(gw, signer, api_key, ask, 2)] == [200, 200]
    _served(signer, gw, account)


# ─── A dishonest gateway, and restarts (the fake signed gateway: `buyerside_fakes`) ───


def _fake_ask(client: httpx.Client, gateway: FakeSignedGateway, max_tokens: int) -> int:
    """One chat request; the true cost of what it served the buyer (0: an error)."""
    before = sum(gateway.true_costs)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello hello"}], "max_tokens": max_tokens}
    answer = client.post("/v1/chat/completions", json=body)
    return sum(gateway.true_costs) - before if answer.status_code == 200 else 0


class ShedLabelGateway(FakeSignedGateway):
    """While `labelling`: charges every voucher it can (the cost, or with `claim_ceiling` its
    whole ceiling) and answers each request "429 capacity_busy" without the lane's figures,
    its refusals too (a voucher not above its stored one, a hold too small): nothing it says
    shows what it booked until it answers again."""

    labelling: bool = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        answer = super().handle(request)
        if self.labelling and request.method == "POST" and answer.status_code != 200:
            error = {"message": "The gateway is at capacity; retry shortly.", "type": "rate_limit_error",
                     "param": None, "code": "capacity_busy"}  # fmt: skip
            # It marks it too (`errors.UNREAD_HEADER`): the one-hold argument does not rest on the mark.
            return httpx.Response(429, json={"error": error}, headers={"retry-after": "1", **errors.UNREAD_MARK})
        return answer


@pytest.mark.parametrize("claim_ceiling", [False, True])  # books the cost, or the voucher's whole ceiling
@pytest.mark.parametrize("holds", ["equal", "growing", "after a drop"])
def test_attack__charged_under_a_shed_label_n_times_then_a_figure__at_most_one_hold_lost__signing_stops(
    tmp_path: Path, claim_ceiling: bool, holds: str
) -> None:
    """A gateway answering "429 capacity_busy" while charging, 20 times in a row, then
    answering: each shed voucher is built on the lane's known total, so the highest ceiling
    it received exceeds what it served by at most one hold (the largest), whatever it booked;
    and the lane's next figure shows the total grown: signing stops. "after a drop": a charged
    drop first (weighed as an answer without figures: its hold), then the same, within that
    hold and one more; the lane's total then known only as a bound, the growth is taken for
    the drop's and weighs, unit for unit, in the stop rule (`Signer._told`)."""
    gateway = ShedLabelGateway(lanes=1, claim_ceiling=claim_ceiling)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    transport = PromptexSigningTransport(signer, inner=gateway.transport())
    with httpx.Client(transport=transport, base_url="http://gateway.test") as client:
        received = _fake_ask(client, gateway, 4)
        weighed = 0
        if holds == "after a drop":
            gateway.drop_after_charge = True
            with pytest.raises(httpx.ReadError):
                _fake_ask(client, gateway, 4)
            gateway.drop_after_charge, weighed = False, 1
        gateway.labelling, gateway.error_status, gateway.charge_errors = True, 429, True
        booked = gateway.book[0].charged
        for turn in range(20):
            _fake_ask(client, gateway, 4 + turn if holds == "growing" else 4)
        assert signer.shed == 20 and signer.stopped is None  # it cannot know yet
        # It booked under the label (but a drop that booked its whole ceiling left nothing to book).
        assert gateway.book[0].charged > booked or (claim_ceiling and weighed)
        gateway.labelling, gateway.error_status = False, 0
        received += _fake_ask(client, gateway, 4)  # a figure (an answer, or a refusal naming the lane)
    lane = signer.book.lanes[0]
    hold, lost = lane.largest_hold, gateway.book[0].charged - received
    assert max(v.ceiling for v in gateway.received) <= received + (1 + weighed) * hold
    assert lost <= (1 + weighed) * hold and signer.book.exposure() <= received + (1 + weighed) * hold
    if weighed:  # from a bound: the growth goes to the drop's count, every unit of it weighing
        assert signer.stopped is not None or signer.weight(lane) >= lost, (signer.weight(lane), lost)
    else:  # from an exactly known total: any growth stops signing
        assert signer.stopped is not None, lane


def test_shed__restarted__not_taken_for_a_request_in_flight(tmp_path: Path) -> None:
    """A shed answer's outcome is in the voucher log: a restart recovers the lane exact,
    nothing weighed (`recovery`: a voucher without an outcome would be in flight)."""
    from promptex.buyerside.recovery import ChainSession, recover
    from promptex.buyerside.wire import lane_reports

    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    transport = PromptexSigningTransport(signer, inner=gateway.transport())
    with httpx.Client(transport=transport, base_url="http://gateway.test") as client:
        served = _fake_ask(client, gateway, 4)
        gateway.error_status, gateway.error_code = 429, "capacity_busy"  # honest: nothing charged
        for _ in range(3):
            _fake_ask(client, gateway, 4)
    assert signer.stopped is None and signer.shed == 3
    signer.log.close()
    again = make_signer(tmp_path / "v.log", lanes=1)
    chain = ChainSession(again.session.identity.key, 1, 1, 10**12, 0, (0,))
    recovered = recover(again.session.identity, chain, lane_reports(gateway.lanes_report()), again.log)
    lane = recovered.book.lanes[0]
    assert not any("in flight" in note for note in recovered.notes), recovered.notes
    assert lane.exact and lane.charged == served > 0 and lane.pending == 0 and lane.errors == 0


MARK = {errors.UNREAD_HEADER: "1"}


@pytest.mark.parametrize(
    ("status", "headers", "body", "content", "expected"),
    [
        (429, MARK, {"error": {"code": "capacity_busy"}}, b"", True),
        (429, MARK, {"error": {"code": "too_many_in_flight"}}, b"", True),
        (529, MARK, {"type": "error", "error": {"type": "overloaded_error"}}, b"", True),
        (429, MARK, {"type": "error", "error": {"type": "rate_limit_error"}}, b"", True),  # Messages' in flight
        (429, MARK, None, errors.TOO_MANY_CONNECTIONS.encode() + b"\n", True),  # the connection guard's
        # The same codes without the mark: a refusal after a hold (`_all_failed`), its lane unnamed.
        (429, {}, {"error": {"code": "capacity_busy"}}, b"", False),
        (529, {}, {"type": "error", "error": {"type": "overloaded_error"}}, b"", False),
        (429, {errors.UNREAD_HEADER: "0"}, {"error": {"code": "capacity_busy"}}, b"", False),
        (503, MARK, {"error": {"code": "capacity_busy"}}, b"", False),
        (429, MARK, {"error": {"code": "rate_limit_exceeded"}}, b"", False),  # a limit on the key: names the lane
        (429, MARK, {"error": {"code": None, "type": "rate_limit_error"}}, b"", False),  # not the gateway's shape
        (529, MARK, {"error": {"type": "overloaded_error"}}, b"", False),
        (429, MARK, None, b"Too Many Requests", False),  # something between
        (429, MARK, {"error": {"code": ["capacity_busy"]}}, b"", False),  # before: TypeError (unhashable), a stop
        (429, MARK, {"type": "error", "error": {"type": {}}}, b"", False),
    ],
)
def test_unread__the_gateway_s_marked_refusals_before_reading__and_no_others(
    status: int, headers: dict[str, str], body: Any, content: bytes, expected: bool
) -> None:
    assert unread(status, httpx.Headers(headers), body, content) is expected


def test_every_lot_rate_limited__after_the_hold__its_lane_unnamed__not_taken_for_unread__signing_goes_on(
    gw: Harness, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review1 F1: every lot answers 429, so the gateway answers 429 capacity_busy AFTER the
    hold (`service._all_failed`), and naming the lane fails (best effort: a ledger blip) —
    the voucher was stored at the hold. Before, the signer read the code as a refusal before
    reading (`unread`), gave `live` back, signed the next voucher at or below the stored one:
    409 voucher_used, signing stopped for good. Now such an answer carries no mark: weighed
    as an answer without figures (a hold), the next voucher above it, served."""
    gw.add_lot(fake)
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)

    async def blip(*args: Any) -> None:  # the lane's naming failed (`_name_voucher_lane`: best effort)
        return None

    monkeypatch.setattr(gw.gateway, "_name_voucher_lane", blip)
    fake.config.fail_status = 429
    try:
        (busy,) = _transported(gw, signer, api_key, "chat", 1)
    finally:
        fake.config.fail_status = None
    assert (busy.status_code, _code(busy), busy.headers.get(errors.UNREAD_HEADER)) == (429, "capacity_busy", None)
    assert signer.shed == 0 and signer.stopped is None
    served = _transported(gw, signer, api_key, "chat", 2)
    assert [answer.status_code for answer in served] == [200, 200], served[0].text
    assert signer.stopped is None


@pytest.mark.parametrize("settles", ["a shed voucher", "an answered voucher's slack", "what it told"])
def test_restart__the_chain_settled_above_the_last_told_total__signing_stops(tmp_path: Path, settles: str) -> None:
    """Every voucher of the lane answered, the last telling its total, the gateway settles
    more on chain with a voucher this key signed — one it labelled a shed while booking its
    whole ceiling, or the slack of an answered one above what it charged: a restart's
    recovery stops signing. Before (s3break s18), it took the chain's figure as the lane's
    floor, exact, and signed on: one hold more per restart, silently (8 restarts: 8 holds
    lost, never stopped). Settling what it told stops nothing."""
    from promptex.buyerside.recovery import ChainSession, recover
    from promptex.buyerside.wire import lane_reports

    gateway = ShedLabelGateway(lanes=1, claim_ceiling=True)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    transport = PromptexSigningTransport(signer, inner=gateway.transport())
    with httpx.Client(transport=transport, base_url="http://gateway.test") as client:
        received = _fake_ask(client, gateway, 4)
        if settles == "a shed voucher":
            gateway.labelling, gateway.error_status, gateway.charge_errors = True, 429, True
            _fake_ask(client, gateway, 400)  # a large hold, its whole ceiling booked under the label
    fake = gateway.book[0]
    assert fake.voucher is not None and signer.stopped is None
    settled = {"what it told": received}.get(settles, fake.voucher.ceiling)  # what its voucher lets it settle
    hold = signer.book.lanes[0].largest_hold
    signer.log.close()
    log = VoucherLog(tmp_path / "v.log", IDENTITY)
    chain = ChainSession(IDENTITY.key, 1, 1, 10**12, settled, (settled,))
    recovered = recover(IDENTITY, chain, lane_reports(gateway.lanes_report()), log)
    again = Signer(Session(IDENTITY, SESSION_KEY, 1, 1, 10**12, ASSET), recovered.book, log,
                   RateBook({(MODEL, ASSET): RATES}))  # fmt: skip
    if settles == "what it told":
        assert again.stopped is None and recovered.book.lanes[0].charged == received
        return
    assert settled > received and settled - received <= hold  # one hold, once
    assert again.stopped is not None and "above the" in again.stopped, recovered.notes
    assert any("signing stopped" in note for note in recovered.notes)
    sent = len(gateway.received)
    with httpx.Client(transport=PromptexSigningTransport(again, inner=gateway.transport()),
                      base_url="http://gateway.test") as client:  # fmt: skip
        assert _fake_ask(client, gateway, 4) == 0 and len(gateway.received) == sent  # refused here, nothing signed
    log.close()
    resumed = VoucherLog(tmp_path / "v.log", IDENTITY)  # stopped on disk; the lane at what was settled
    assert resumed.stopped is not None and resumed.charged(1, 0) == settled


@pytest.mark.parametrize("left", ["a request in flight", "a drop before the shed", "a drop, the shed, a resume"])
def test_restart__a_shed_voucher_the_gateway_kept__neither_the_floor_nor_the_bound__signing_stops(
    tmp_path: Path, left: str
) -> None:
    """A gateway labels a large request "429 capacity_busy" while booking its voucher's whole
    ceiling; the proxy restarts with the lane's outcome unknown (a request in flight, or a
    charged drop before the shed: the lane only bounded). Recovery bounds the lane by the
    ceilings the gateway may have accepted (the one in flight; the lane's `live` as the log
    last recorded it): its report of the booked total is not believed, and its next figure
    naming it stops signing — the loss stays within the shed's hold (and the drop's).
    Before (s3break s18), every ceiling signed bounded it: the report became the floor new
    ceilings were built on (or was adopted exact), the growth weighed as the in-flight
    request's or the drop's, and signing went on — a hold more per restart, up to the stop
    rule's N (3 restarts: 3 holds lost)."""
    from promptex.buyerside.recovery import ChainSession, recover
    from promptex.buyerside.wire import lane_reports

    gateway = ShedLabelGateway(lanes=1, claim_ceiling=True)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello hello"}], "max_tokens": 4}
    with httpx.Client(transport=PromptexSigningTransport(signer, inner=gateway.transport()),
                      base_url="http://gateway.test") as client:  # fmt: skip
        received = _fake_ask(client, gateway, 4)
        drop = 0
        if left != "a request in flight":
            gateway.drop_after_charge = True
            with pytest.raises(httpx.ReadError):
                _fake_ask(client, gateway, 4)
            gateway.drop_after_charge, drop = False, signer.book.lanes[0].largest_hold
        gateway.labelling, gateway.error_status, gateway.charge_errors = True, 429, True
        _fake_ask(client, gateway, 400)  # a large hold, its whole ceiling booked under the label
        gateway.labelling, gateway.error_status, gateway.charge_errors = False, 0, False
    if left == "a request in flight":
        signer.begin("/v1/chat/completions", body)  # logged; the process dies before its answer
    if left == "a drop, the shed, a resume":
        # a stop for another reason, resumed: it forgives the lane's count, not the bound of what
        # the gateway may have accepted (r2break s18: the resume dropped it with the count, and
        # the restart's bound was every ceiling signed again, the kept shed voucher's too)
        signer.stop("a reason of the user's", None)
        assert signer.resume() is not None
    assert signer.stopped is None and signer.shed == 1
    hold = signer.book.lanes[0].largest_hold
    signer.log.close()
    log = VoucherLog(tmp_path / "v.log", IDENTITY)
    chain = ChainSession(IDENTITY.key, 1, 1, 10**12, 0, (0,))
    recovered = recover(IDENTITY, chain, lane_reports(gateway.lanes_report()), log)
    assert any("not believed" in note for note in recovered.notes), recovered.notes
    lane = recovered.book.lanes[0]
    assert not lane.exact and lane.charged < gateway.book[0].charged and lane.floor < gateway.book[0].charged
    again = Signer(Session(IDENTITY, SESSION_KEY, 1, 1, 10**12, ASSET), recovered.book, log,
                   RateBook({(MODEL, ASSET): RATES}))  # fmt: skip
    with httpx.Client(transport=PromptexSigningTransport(again, inner=gateway.transport()),
                      base_url="http://gateway.test") as client:  # fmt: skip
        for _ in range(3):
            received += _fake_ask(client, gateway, 4)
    assert again.stopped is not None and "above the" in again.stopped
    assert gateway.book[0].charged - received <= hold + drop
