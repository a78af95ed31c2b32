"""What an operator and a seller see: Prometheus metrics and health on the operator's own
address, JSON logs carrying the request id, and lot health — a circuit breaker that skips
a failing lot (then probes it), its counts shown to the seller, a refused key reported."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from polling import until
from promptex.cli import main
from promptex.config import Settings
from promptex.config import settings as cached_settings
from promptex.gateway.health import Failure, LotHealth, failure, reports
from promptex.gateway.logs import JsonFormatter, RequestIdFilter, bind, unbind
from promptex.sellers.attestor import Thresholds, open_reports, review
from promptex.serving import free_port

from .conftest import Fake, Harness, _harness
from .test_signed_shapes import Canned, canned  # noqa: F401 (the fixture)

HELLO = {"model": "fake-flat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
# OpenAI: one request above the key's tokens per minute (a lot serving every smaller one)
TOO_LARGE = {
    "message": "Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested "
    "36278. The input or output tokens must be reduced in order to run successfully. Visit "
    "https://platform.openai.com/account/rate-limits to learn more.",
    "type": "tokens",
    "param": None,
    "code": "rate_limit_exceeded",
}


@pytest.fixture
def observed(settings: Settings, tmp_path: Path) -> Iterator[Harness]:
    update = {
        "gateway_metrics_port": free_port(),
        "gateway_access_log": True,
        "gateway_lot_breaker_failures": 2,
        "gateway_lot_breaker_cooldown_seconds": 3_600,  # no probe during the test
    }
    yield from _harness(settings.model_copy(update=update), f"sqlite:///{tmp_path}/ledger.sqlite3")


def operator(gw: Harness, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{gw.settings.gateway_metrics_port}{path}", timeout=10)


def post(gw: Harness, key: str, body: dict) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        found, _, value = line.rpartition(" ")
        if found == name:
            return float(value)
    raise AssertionError(f"{name} not in the metrics")


def test_metrics__by_model_and_status_on_the_operator_address__no_key_or_account(
    observed: Harness, fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    gw = observed
    gw.add_lot(fake)
    account, key = gw.buyer()
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="promptex.gateway.access"):
        served = post(gw, key, HELLO)
        unknown = post(gw, key, {**HELLO, "model": "no-such-model-" + key[-6:]})
        too_big = post(gw, key, {**HELLO, "max_tokens": 10**6})
        odd = post(gw, key, {**HELLO, "model": ["not", "a", "name"]})  # not a label, not a 500
        streamed = post(gw, key, {**HELLO, "stream": True})
        # A request is logged and counted once its response is sent, which a client may see
        # finish (a stream's last event) a moment before.
        deadline = time.monotonic() + 60
        while len([r for r in caplog.records if r.name == "promptex.gateway.access"]) < 5:
            assert time.monotonic() < deadline, "never logged"
            time.sleep(0.01)
    assert (served.status_code, unknown.status_code, too_big.status_code, odd.status_code) == (200, 404, 400, 400)
    phases = dict(part.strip().split(";dur=") for part in served.headers["server-timing"].split(","))
    assert set(phases) == {"upstream", "gateway", "hold", "settle"}
    # The ledger's waits are the gateway's: inside its part, never beyond it.
    assert float(phases["hold"]) + float(phases["settle"]) <= float(phases["gateway"])

    metrics = operator(gw, "/metrics").text
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    assert sample(metrics, 'promptex_gateway_requests_total{model="fake-flat",status="200"}') == 2
    assert sample(metrics, 'promptex_gateway_requests_total{model="fake-flat",status="400"}') == 1
    assert sample(metrics, 'promptex_gateway_requests_total{model="other",status="404"}') == 1  # not its name
    assert sample(metrics, 'promptex_gateway_requests_total{model="other",status="400"}') == 1
    assert sample(metrics, "promptex_gateway_added_latency_seconds_count") == 2  # the stream's up to its first byte
    assert sample(metrics, "promptex_gateway_holds_open") == 0
    assert sample(metrics, "promptex_gateway_shed_total") == 0
    assert sample(metrics, "promptex_gateway_ledger_wait_seconds_count") > 0
    assert key not in metrics and key[-6:] not in metrics and f'"{account}"' not in metrics
    labels = {part.split("=")[0] for line in metrics.splitlines() if "{" in line and not line.startswith("#")
              for part in line[line.index("{") + 1 : line.index("}")].split(",") if part}  # fmt: skip
    assert labels <= {"model", "status", "lot", "le"}

    assert httpx.get(gw.url + "/v1/metrics").status_code == 404  # never on the public address
    assert operator(gw, "/healthz").status_code == 200 and httpx.get(gw.url + "/healthz").status_code == 200
    assert operator(gw, "/readyz").text == "ready\n" and httpx.get(gw.url + "/readyz").status_code == 200
    calm = gw.gateway.s
    gw.gateway.s = calm.model_copy(update={"gateway_shed_wait_ms": 0, "gateway_shed_min_inflight": 0})
    deadline = time.monotonic() + 60  # any lag now sheds: not ready until the settings return
    while (answer := operator(gw, "/readyz")).status_code != 503:
        assert time.monotonic() < deadline
    assert answer.text == "shedding load\n"
    gw.gateway.s = calm

    ids = [answer.headers["x-request-id"] for answer in (served, unknown, too_big, odd, streamed)]
    access = [r for r in caplog.records if r.name == "promptex.gateway.access"]
    assert [r.request_id for r in access] == ids  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(access[0]))
    assert (line["request_id"], line["status"], line["model"], line["endpoint"]) == (ids[0], 200, "fake-flat", "chat")


def test_json_log__any_record_while_a_request_is_served__carries_its_id() -> None:
    record = logging.LogRecord("promptex.gateway", logging.ERROR, __file__, 1, "upstream %s", ("broke",), None)
    token = bind("req_abc")
    try:
        RequestIdFilter().filter(record)
    finally:
        unbind(token)
    assert json.loads(JsonFormatter().format(record)) == {
        "ts": round(record.created, 6), "level": "error", "logger": "promptex.gateway", "message": "upstream broke",
        "request_id": "req_abc",
    }  # fmt: skip


def test_breaker__failing_lot_skipped_after_two_failures__seller_sees_errors_and_refused_key(
    observed: Harness, fake: Fake, second_fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = observed
    failing = gw.add_lot(fake, rate_bps=5000)  # cheaper: tried first
    refused = gw.add_lot(second_fake, rate_bps=5500, secret="sk-fake-revoked")  # the provider refuses its key
    good = gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer()
    fake.config.fail_status = 500
    for _ in range(2):
        assert post(gw, key, HELLO).status_code == 200  # failed over to the good lot
    assert fake.config.requests == 2 and gw.gateway.health.is_open(failing) and gw.gateway.health.is_open(refused)
    assert post(gw, key, HELLO).status_code == 200
    assert fake.config.requests == 2  # skipped: its circuit is open
    metrics = operator(gw, "/metrics").text
    assert sample(metrics, f'promptex_gateway_lot_open{{lot="{failing}"}}') == 1
    assert sample(metrics, f'promptex_gateway_upstream_errors_total{{lot="{failing}",status="500"}}') == 2

    gw.gateway.health.flush(gw.ledger.engine)
    seen = {r.lot_id: r for r in reports(gw.ledger.engine)}
    assert (seen[failing].requests, seen[failing].errors, seen[failing].last_error) == (2, 2, "500")
    assert seen[refused].key_refused_at is not None and seen[failing].key_refused_at is None
    assert (seen[good].requests, seen[good].errors) == (3, 0) and seen[good].mean_latency_ms is not None
    assert seen[failing].circuit_open_until is not None

    monkeypatch.setenv("PROMPTEX_LEDGER_URL", str(gw.ledger.engine.url))
    monkeypatch.setenv("PROMPTEX_GATEWAY_MASTER_KEY_FILE", str(gw.settings.gateway_master_key_file))
    cached_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["seller", "health"])
    finally:
        cached_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert f"lot {failing} (openai): 2 calls, 100.0% errors; last error 500 at" in result.output
    assert "(circuit open)" in result.output
    assert "refused this lot's API key" in result.output
    assert f"lot {good} (openai): 3 calls, 0.0% errors" in result.output

    # The attestor's review: the failing lot and the refused key are reported, the good lot
    # not; nothing is slashed, a person resolves each report.
    now = int(time.time())
    found = review(gw.ledger.engine, now, Thresholds(min_requests=2))
    assert {r.lot_id: r.reasons for r in found} == {
        failing: "2 of 2 upstream calls failed; its circuit is open (the gateway skips it)",
        refused: "2 of 2 upstream calls failed; the provider refused the lot's API key (revoked upstream?); "
        "its circuit is open (the gateway skips it)",
    }
    again = review(gw.ledger.engine, now + 1, Thresholds(min_requests=2))  # nothing new but the open circuits
    assert [(r.id, r.reasons, r.requests) for r in again] == [
        (r.id, "its circuit is open (the gateway skips it)", 2) for r in found
    ]
    cached_settings.cache_clear()
    try:
        listed = CliRunner().invoke(main, ["attestor", "reports"])
        report = next(r.id for r in found if r.lot_id == failing)
        resolved = CliRunner().invoke(main, ["attestor", "resolve", str(report), "dismissed", "--note", "outage"])
        twice = CliRunner().invoke(main, ["attestor", "resolve", str(report), "slashed", "--note", "0xabc"])
    finally:
        cached_settings.cache_clear()
    assert listed.exit_code == 0 and listed.output.count("report ") == 2 and f"lot {failing} " in listed.output
    assert resolved.exit_code == 0 and "dismissed" in resolved.output and "outage" in resolved.output
    assert twice.exit_code == 1 and "is dismissed already" in twice.output
    assert [r.lot_id for r in open_reports(gw.ledger.engine)] == [refused]


def _failures_in_a_row(gw: Harness, lot: int) -> int:
    return gw.gateway.health._lots[lot].failures


def test_breaker__a_buyer_s_refused_request_or_a_client_that_left__neither_closes_nor_counts(
    observed: Harness, fake: Fake
) -> None:
    """A lot one failure from its circuit opening (two in a row, `observed`): a request the lot
    refuses 4xx (plain or stream: the buyer's doing, or a trick of the lot's) and a stream whose
    client left before any content came say nothing of whether the lot serves. Before (sbreak
    s17), each closed its circuit — its failures in a row back to 0 — so a seller could keep a
    failing lot's circuit shut with requests of its own that it refused (free) or left, and a
    half-open probe answered so closed it."""
    gw = observed
    lot = gw.add_lot(fake)
    account, key = gw.buyer()
    gw.gateway.health.failed(lot, "500", 500)
    fake.config.fail_status = 400
    assert post(gw, key, HELLO).status_code == 400
    assert post(gw, key, {**HELLO, "stream": True}).status_code == 400
    fake.config.fail_status, fake.config.chunk_delay_ms = None, 5_000  # the head, then nothing for 5 s
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**HELLO, "stream": True}, headers=headers) as s:
        request_id = s.headers["x-request-id"]
        next(s.iter_raw())  # its first event; then the client leaves
    until(lambda: (hold := gw.ledger.hold(request_id)) is not None and hold.status != "active", "the stream ended")
    assert _failures_in_a_row(gw, lot) == 1
    assert not gw.gateway.health.is_open(lot)
    gw.gateway.health.failed(lot, "500", 500)
    assert gw.gateway.health.is_open(lot)


def test_breaker__a_lot_whose_streams_break_off_after_a_chunk__counted_failing_and_charged(
    observed: Harness, fake: Fake
) -> None:
    """A stream the upstream broke off after its first chunk is charged what came (as before)
    and is a failure of its lot: two in a row open its circuit. Before (sbreak s17), any content
    made it a success: a lot whose every stream died after a chunk showed no errors and was
    never skipped."""
    gw = observed
    lot = gw.add_lot(fake)
    _, key = gw.buyer()
    fake.config.die_after_chunks = 1
    for _ in range(2):
        answer = post(gw, key, {**HELLO, "stream": True})
        assert answer.status_code == 200
        record = gw.ledger.usage_record(answer.headers["x-request-id"])  # charged before its last event
        assert record is not None and record.cost > 0
    assert gw.gateway.health.is_open(lot)
    assert _counted(gw, lot) == (2, 2, "broken")


def test_breaker__a_lot_answering_with_no_usage__counted_once_a_request_and_skipped(
    observed: Harness,
    canned: tuple[Canned, Fake],  # noqa: F811
) -> None:
    """An answer with no usage is a failure of its lot (failed over, "unmetered"), and only
    that: its request counted once. Before (sbreak s17), its head closed the circuit first —
    a lot answering every request 200 with no usage sat at one failure in a row for good,
    never skipped, each request counted twice."""
    gw = observed
    answers, upstream = canned
    lot = gw.add_lot(upstream)
    _, key = gw.buyer()
    answers.answer = {"id": "c", "object": "chat.completion", "created": 0, "model": "fake-flat",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                   "finish_reason": "stop"}]}  # fmt: skip
    for _ in range(2):
        assert post(gw, key, HELLO).status_code == 502
    assert gw.gateway.health.is_open(lot)
    assert _counted(gw, lot) == (2, 2, "unmetered")


def test_breaker__a_lot_whose_key_lacks_the_model__failed_over_and_skipped_for_that_model_only(
    observed: Harness, fake: Fake, second_fake: Fake
) -> None:
    """A seller's key without the model (OpenAI: 404 model_not_found) is the lot's failure for
    that model: failed over, counted, and after two in a row (`observed`) the (lot, model) is
    skipped — the lot still serves its provider's other models. Before (sbreak s17 B4), every
    buyer of the model routed there got 404 upstream_refused, and the lot was never skipped."""
    gw = observed
    lacking = gw.add_lot(fake, rate_bps=5000)  # cheaper: tried first
    gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer()
    fake.config.serves = ("fake-gpt",)
    for body in (HELLO, {**HELLO, "stream": True}):
        answer = post(gw, key, body)
        assert answer.status_code == 200, answer.text
    assert (fake.config.requests, second_fake.config.requests) == (2, 2)
    assert post(gw, key, HELLO).status_code == 200
    assert (fake.config.requests, second_fake.config.requests) == (2, 3)  # skipped for fake-flat
    assert post(gw, key, {**HELLO, "model": "fake-gpt"}).status_code == 200
    assert (fake.config.requests, second_fake.config.requests) == (3, 3)  # its other models served there
    assert not gw.gateway.health.is_open(lacking)
    assert _counted(gw, lacking) == (3, 2, "model_not_found: fake-flat")


def test_breaker__a_buyer_s_request_refused_404_or_flagged_403__neither_counted_nor_failed_over(
    observed: Harness, fake: Fake, second_fake: Fake
) -> None:
    """A 404 that is not about the model (a file the request names) and a 403 OpenRouter's
    moderation flagged are the request's: the buyer gets them, no other lot is tried, the lot's
    failures in a row stay. Before, a flagged 403 was the lot's failure (and failed over): a
    buyer with flagged input tripped an OpenRouter-backed lot's circuit for nothing."""
    gw = observed
    lot = gw.add_lot(fake, rate_bps=5000)
    gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer()
    fake.config.fail_status = 404
    fake.config.fail_error = {"message": "No such File object: file-abc", "type": "invalid_request_error",
                              "param": "file_id", "code": None}  # fmt: skip
    assert post(gw, key, HELLO).status_code == 404
    fake.config.fail_status = 403
    flagged = {
        "reasons": ["harassment"],
        "flagged_input": "...",
        "provider_name": "OpenAI",
        "model_slug": "openai/gpt-4o",
    }
    message = 'gpt-4o requires moderation on OpenRouter. Your input was flagged for "harassment".'
    fake.config.fail_error = {"code": 403, "message": message, "metadata": flagged}
    for body in (HELLO, {**HELLO, "stream": True}):
        assert post(gw, key, body).status_code == 400
    assert second_fake.config.requests == 0
    assert _failures_in_a_row(gw, lot) == 0 and not gw.gateway.health.is_open(lot)


def test_breaker__a_model_the_endpoint_does_not_serve__the_request_s_404__no_lot_tripped(
    observed: Harness, fake: Fake, second_fake: Fake
) -> None:
    """OpenAI answers 404 about `model` for a model the endpoint does not serve ("This is a chat
    model and not supported in the v1/completions endpoint"): the request's — the buyer gets
    it, no other lot is tried, nothing counts. Before (s3break s18), a 404 about `model` was
    the (lot, model)'s failure: a buyer sending gpt-4o to /v1/completions (free: a 4xx is not
    charged), its max rate leaving only the cheaper lots, opened their (lot, gpt-4o) circuits
    for every gpt-4o buyer, traffic sent to the pricier lots."""
    gw = observed
    cheaper = gw.add_lot(fake, rate_bps=5000)
    gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer()
    fake.config.fail_status = 404
    fake.config.fail_error = {"message": "This is a chat model and not supported in the v1/completions endpoint. "
                              "Did you mean to use v1/chat/completions?", "type": "invalid_request_error",
                              "param": "model", "code": None}  # fmt: skip
    for body in (HELLO, {**HELLO, "stream": True}, HELLO):  # `observed`: 2 failures open a circuit
        assert post(gw, key, body).status_code == 404
    assert second_fake.config.requests == 0
    fake.config.fail_status = None
    assert post(gw, key, HELLO).status_code == 200 and second_fake.config.requests == 0  # not skipped
    assert gw.gateway.health.may_try(cheaper, HELLO["model"]) and _failures_in_a_row(gw, cheaper) == 0


def _counted(gw: Harness, lot: int) -> tuple[int, int, str | None]:
    """What the seller is shown of `lot` once the gateway's counts are flushed: (requests,
    errors, last error)."""
    gw.gateway.health.flush(gw.ledger.engine)
    (seen,) = reports(gw.ledger.engine, [lot])
    return seen.requests, seen.errors, seen.last_error


def _circuit_opened(gw: Harness, lot: int) -> list[float]:
    """`lot`'s circuit opened (two failures: `observed`'s threshold) on a clock the test moves
    (`now[0]`, seconds)."""
    health, now = gw.gateway.health, [0.0]
    health._clock = lambda: now[0]
    for _ in range(2):
        health.failed(lot, "500", 500)
    return now


def test_breaker__a_pricier_lot_past_its_cool_down__its_probe_is_the_request_that_reaches_it(
    observed: Harness, fake: Fake, second_fake: Fake
) -> None:
    """The probe of a lot past its cool-down is claimed by the request that calls it. Before
    (health s18), listing a request's lots claimed it: a request the cheaper lot served took
    the pricier lot's probe without calling it, so when the cheaper lot then failed the
    pricier one was skipped (its probe "in flight") and the buyer got 502."""
    gw = observed
    gw.add_lot(fake, rate_bps=5000)
    pricier = gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer()
    health, now = gw.gateway.health, _circuit_opened(gw, pricier)
    assert health.is_open(pricier)
    now[0] = 3_600.0  # past its cool-down (`observed`)
    assert post(gw, key, HELLO).status_code == 200 and second_fake.config.requests == 0
    fake.config.fail_status = 500
    assert post(gw, key, HELLO).status_code == 200  # failed over to the pricier lot: its probe
    assert second_fake.config.requests == 1 and not health.is_open(pricier)


def test_breaker__a_probe_answered_with_the_request_s_4xx__the_next_request_probes(
    observed: Harness, fake: Fake, second_fake: Fake
) -> None:
    """A probe that neither served nor failed (the lot refused the request 4xx: the request's)
    is given back at once. Before (health s18), it stayed claimed for a whole cool-down: a buyer
    (a competing seller) sending a bad request as each cool-down ended kept a recovered cheaper
    lot skipped for good, for free (a 4xx is not charged)."""
    gw = observed
    cheap = gw.add_lot(fake, rate_bps=5000)
    gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer()
    health, now = gw.gateway.health, _circuit_opened(gw, cheap)
    now[0] = 3_600.0  # past its cool-down (`observed`)
    fake.config.fail_status = 400
    assert post(gw, key, HELLO).status_code == 400  # the probe: the request's fault
    fake.config.fail_status = None
    assert post(gw, key, HELLO).status_code == 200
    assert (fake.config.requests, second_fake.config.requests) == (2, 0)  # probed again: served, closed
    assert not health.is_open(cheap)


def test_health_flush__two_processes_one_skipping_the_lot__the_table_says_so_whichever_flushes_last(
    observed: Harness,
) -> None:
    """Each gateway process (`--workers`, several hosts) has its own breaker and adds its counts
    to the one table. Before (health s18), a process where the lot's circuit was closed wrote
    `circuit_open_until` back to none: the seller and the attestor saw the open circuit only
    when the process skipping the lot happened to flush last."""
    engine, now = observed.ledger.engine, [0.0]
    skipping = LotHealth(failures=2, cooldown=600, clock=lambda: now[0])
    serving = LotHealth(failures=2, cooldown=600, clock=lambda: now[0])
    for _ in range(2):
        skipping.failed(7, "500", 500)
    serving.succeeded(7, 0.05)
    skipping.flush(engine)
    serving.flush(engine)
    (seen,) = reports(engine, [7])
    assert seen.requests == 3 and seen.circuit_open_until is not None and seen.circuit_open_until > seen.updated_at


def test_breaker__a_stream_probing_a_lot__the_probe_is_its_until_it_ends(
    observed: Harness, fake: Fake, second_fake: Fake
) -> None:
    """A stream that probes a lot past its cool-down holds the probe until its end decides
    (served: closed): another request meanwhile goes to the next lot. (e79f19b gave a probe
    back when its attempt ended: for a stream handed over, that was at its head, so every
    request meanwhile tried the lot, and a lot breaking off after its head broke them all.)"""
    gw = observed
    cheap = gw.add_lot(fake, rate_bps=5000)
    gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer()
    health, now = gw.gateway.health, _circuit_opened(gw, cheap)
    now[0] = 3_600.0  # past its cool-down (`observed`)
    fake.config.chunk_delay_ms = 150
    body = {**HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as s:
        assert s.status_code == 200
        events = s.iter_raw()
        next(events)  # the probe's head and first event came
        assert post(gw, key, HELLO).status_code == 200
        assert (fake.config.requests, second_fake.config.requests) == (1, 1)  # the probe still the stream's
        assert b"[DONE]" in b"".join(events)
    until(lambda: not health.is_open(cheap), "the stream's end closed the circuit")


def test_breaker__a_stream_that_claimed_no_probe__its_client_leaving_gives_back_none(
    observed: Harness, fake: Fake
) -> None:
    """review1 F7: a stream that reached the lot with its circuit closed (no probe claimed)
    and whose client left gave back "its" probe — another request's, claimed meanwhile once the
    circuit opened and cooled down — so a second request probed the lot concurrently. Now a
    stream gives back only a probe it claimed (`Priced.probe`)."""
    gw = observed
    lot = gw.add_lot(fake)
    _, key = gw.buyer()
    health, now = gw.gateway.health, [0.0]
    health._clock = lambda: now[0]
    fake.config.chunk_delay_ms = 100
    body = {**HELLO, "max_tokens": 16, "stream": True}
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as s:
        assert s.status_code == 200
        next(s.iter_raw())  # handed over, the lot's circuit closed: no probe claimed
        for _ in range(2):
            health.failed(lot, "500", 500)
        now[0] = 3_600.0  # past its cool-down (`observed`)
        assert health.allows(lot)  # another request's probe, in flight
        assert not health.may_try(lot)
    until(lambda: not gw.gateway.holding, "the stream that lost its client was settled")
    assert not health.may_try(lot)  # before: True (the other request's probe given back)


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (404, {"message": "The model `gpt-9` does not exist or you do not have access to it.",
               "type": "invalid_request_error", "param": None, "code": "model_not_found"},
         Failure("model_not_found", model=True)),  # OpenAI
        (403, {"message": "Project `proj_x` does not have access to model `gpt-9`",
               "type": "invalid_request_error", "param": None, "code": "model_not_found"},
         Failure("model_not_found", model=True)),  # OpenAI, a project's key
        (404, {"type": "not_found_error", "message": "model: claude-9"}, Failure("model_not_found", model=True)),
        (404, {"message": "The model `x` does not exist.", "type": "NotFoundError", "param": "model", "code": 404},
         Failure("model_not_found", model=True)),  # vLLM
        (400, {"message": "/chat/completions: Invalid model name passed in model=gpt-9. Call `/v1/models` to view "
               "available models for your key.", "type": "None", "param": "None", "code": "400"},
         Failure("model_not_found", model=True)),  # a LiteLLM proxy
        (400, {"message": "400: {'error': 'Invalid model name passed in model=gpt-9'}", "type": "None", "param": "None",
               "code": 400}, Failure("model_not_found", model=True)),  # an older one
        (400, {"message": "'Invalid model name passed in model=' is not one of ['system', 'user'] - "
               "'messages.0.role'"}, None),  # a buyer's text repeated
        (400, {"type": "invalid_request_error", "message": "Your credit balance is too low to access the Anthropic "
               "API. Please go to Plans & Billing to upgrade or purchase credits."}, Failure("billing")),
        (402, {"code": 402, "message": "Insufficient credits"}, Failure("402")),  # OpenRouter
        (401, {"message": "Incorrect API key provided"}, Failure("401")),
        (403, {"type": "permission_error", "message": "Your API key does not have permission"}, Failure("403")),
        (429, {"message": "Rate limit reached"}, Failure("429")),
        (429, {"message": "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, "
               "Used 29937, Requested 385. Please try again in 644ms.", "type": "tokens",
               "code": "rate_limit_exceeded"},
         Failure("429")),  # OpenAI: the key's usage, the lot's
        # One request beyond the lot's own limits: failed over, not counted (a buyer sends it for free).
        (429, TOO_LARGE, Failure("429", request=True)),  # OpenAI
        (402, {"message": "This request requires more credits, or fewer max_tokens. You requested up to 32000 "
               "tokens, but can only afford 27342. To increase, visit https://openrouter.ai/settings/credits and "
               "upgrade to a paid account", "code": 402, "metadata": {"provider_name": None}},
         Failure("402", request=True)),  # OpenRouter
        (429, {"message": "'Request too large for ' is not one of ['system', 'user'] - 'messages.0.role'"},
         Failure("429")),  # not at the start
        (503, None, Failure("503")),
        # The request's: every lot would refuse it, and a buyer could send it on purpose.
        (400, {"message": "'x' is not one of ['system', 'user'] - 'messages.0.role'", "param": "messages"}, None),
        (400, {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"},
         None),
        (400, {"message": "'Your credit balance is too low' is not one of ['system', 'user'] - 'messages.0.role'"},
         None),  # a buyer's text repeated: not at the start
        (404, {"message": "No such File object: model_not_found", "param": "file_id"}, None),
        # OpenAI's answer to a model the endpoint does not serve (a buyer's gpt-4o on /v1/completions).
        (404, {"message": "This is a chat model and not supported in the v1/completions endpoint. Did you mean to "
               "use v1/chat/completions?", "type": "invalid_request_error", "param": "model", "code": None}, None),
        (404, {"message": "This is not a chat model and thus not supported in the v1/chat/completions endpoint. "
               "Did you mean to use v1/completions?", "type": "invalid_request_error", "param": "model",
               "code": None}, None),
        (404, {"message": "This model is only supported in v1/responses and not in v1/chat/completions.",
               "type": "invalid_request_error", "param": "model", "code": None}, None),
        (403, {"code": 403, "message": "flagged", "metadata": {"reasons": ["x"], "flagged_input": "..."}}, None),
        (413, {"type": "request_too_large", "message": "Request exceeds the maximum size"}, None),
        (422, {"message": "bad"}, None),
        (404, None, None),  # no JSON body
        (200, None, None),
    ],
)  # fmt: skip
def test_failure__whose_fault_an_upstream_answer_is(status: int, error: dict | None, expected: Failure | None) -> None:
    content = json.dumps({"error": error}).encode() if error is not None else b"<html>not found</html>"
    assert failure(status, content) == expected


def test_breaker__a_seller_serving_its_own_requests_between_buyers_failures__skipped_all_the_same(
    observed: Harness, fake: Fake, second_fake: Fake
) -> None:
    """A seller whose lot fails buyers' requests but serves its own (told apart by their
    prompt; its own account as a buyer) no longer keeps the circuit shut: two failures among
    the last four answers open it (`observed`: two in a row). Before (sbreak s17 B3), each own
    success reset the failures in a row — one own request per failure kept the lot routed."""
    gw = observed
    lot = gw.add_lot(fake, rate_bps=5000)  # cheaper: tried first
    gw.add_lot(second_fake, rate_bps=6000)
    _, buyer = gw.buyer()
    _, own = gw.buyer()
    for status, key in ((500, buyer), (None, own), (500, buyer)):
        fake.config.fail_status = status
        assert post(gw, key, HELLO).status_code == 200  # the buyer's failed over; its own served by the lot
    assert gw.gateway.health.is_open(lot)
    assert post(gw, buyer, HELLO).status_code == 200 and fake.config.requests == 3  # skipped


def test_breaker__a_request_beyond_a_lot_s_own_limits__failed_over_not_counted(
    observed: Harness, fake: Fake, second_fake: Fake
) -> None:
    """A request larger than the cheaper lot's key may take (OpenAI's 429 "Request too large
    for …": above its tier's tokens per minute) is served by the next lot, and the lot that
    serves every other request stays open to them. Before (e2break s18), each such 429 was the
    lot's failure: a buyer sending big requests (free: failed over or refused, never charged at
    the lot) opened a low-tier lot's circuit in `failures` of them, whatever it served between
    (`observed`: 2 among the last 4)."""
    gw = observed
    lot = gw.add_lot(fake, rate_bps=5000)  # cheaper: tried first
    gw.add_lot(second_fake, rate_bps=6000)
    _, key = gw.buyer()
    fake.config.fail_status, fake.config.fail_error = 429, TOO_LARGE
    for _ in range(3):
        assert post(gw, key, HELLO).status_code == 200  # failed over
    assert second_fake.config.requests == 3 and not gw.gateway.health.is_open(lot)
    fake.config.fail_status = None
    assert post(gw, key, HELLO).status_code == 200  # the cheaper lot still routed: it served this one
    assert (fake.config.requests, second_fake.config.requests) == (4, 3)


def test_breaker__failures_among_the_recent_answers__a_lot_failing_most_opens_one_failing_some_does_not() -> None:
    health = LotHealth(failures=5, cooldown=10, clock=lambda: 0.0, wall=lambda: 1_000)
    for _ in range(5):  # 4 of every 10 failing: never 5 in its last 10
        for _ in range(4):
            health.failed(7, "timeout")
        for _ in range(6):
            health.succeeded(7, 0.05)
    assert not health.is_open(7)
    for outcome in "FFFFSF":  # 4 of every 5 failing: 5 in its last 6 (before: never 5 in a row)
        health.failed(8, "timeout") if outcome == "F" else health.succeeded(8, 0.05)
    assert health.is_open(8)


def test_breaker__half_open__one_probe_then_closed_on_success_or_open_again_on_failure() -> None:
    now = [0.0]
    health = LotHealth(failures=2, cooldown=10, clock=lambda: now[0], wall=lambda: 1_000)
    health.failed(7, "timeout")
    assert health.allows(7)  # one failure: still closed
    health.failed(7, "timeout")
    assert not health.allows(7) and health.order([7, 8]) == [8]
    assert health.order([7]) == [7]  # every candidate open: tried all the same
    now[0] = 10.0
    assert health.allows(7) and not health.allows(7)  # half-open: exactly one probe
    health.failed(7, "502", 502)
    assert not health.allows(7)  # the probe failed: open for another cool-down
    now[0] = 20.0
    assert health.allows(7)
    health.succeeded(7, 0.05)
    assert health.allows(7) and health.allows(7)  # closed
    health.failed(7, "timeout")
    assert not health.allows(7)  # on probation: 2 failures in its last 4 answers — open again
    now[0] = 30.0
    assert health.allows(7)
    for _ in range(4):
        health.succeeded(7, 0.05)
    health.failed(7, "timeout")
    assert health.allows(7)  # its failures pushed out of the window by successes: a failure alone opens nothing
