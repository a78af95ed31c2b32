"""Signed mode across two real gateway processes on one PostgreSQL ledger (issue 23), as a
breaker would try it: a lane carries one request at a time whichever process admits it
(its in-flight mark is taken in the hold's transaction), and a voucher one process
accepted is refused when replayed to the other (ceilings rise strictly per lane)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import orjson
from sqlalchemy import func, select

from polling import until
from promptex.gateway.vouchers import VOUCHER_HEADER
from promptex.ledger import Ledger
from promptex.ledger.local_postgres import LocalPostgres
from promptex.ledger.schema import holds

from .conftest import Fake
from .test_holds_processes import HELLO, _env, _market, _signed_buyer, gateway

BODY = {"model": "fake-flat", "messages": HELLO, "max_tokens": 4}


def _code(answer: httpx.Response) -> tuple[int, str | None]:
    error = orjson.loads(answer.content).get("error") if answer.status_code != 200 else None
    return answer.status_code, None if error is None else error.get("code")


def test_two_processes_on_postgresql__one_request_per_lane__a_replayed_voucher_refused_by_the_other(
    postgres: LocalPostgres, tmp_path: Path, fake: Fake
) -> None:
    url = postgres.create_database(f"signed_{os.getpid()}_{time.monotonic_ns()}", template="ledger_template")
    ledger = Ledger.open(url)
    try:
        _market(ledger, tmp_path, fake, face_value=1_000_000, funds=1_000_000)
        account, key, voucher = _signed_buyer(ledger, 1_000_000)
        auth = {"authorization": f"Bearer {key}"}

        def post(base: str, header: str) -> httpx.Response:
            return httpx.post(base + "/v1/chat/completions", headers={**auth, VOUCHER_HEADER: header}, json=BODY)

        def active() -> int:
            with ledger.engine.connect() as conn:
                where = (holds.c.status == "active", holds.c.payer_id == account)
                return int(conn.execute(select(func.count()).select_from(holds).where(*where)).scalar_one())

        env = _env(tmp_path, url)
        with gateway(env) as (_, first), gateway(env) as (_, second):
            fake.config.gate = gate = threading.Event()
            answers: list[httpx.Response] = []
            held = threading.Thread(target=lambda: answers.append(post(first, voucher(0, 1_000))))
            held.start()
            try:
                until(lambda: ledger.lane(account, "USDC", 1, 0).inflight is not None, "the lane taken", 90)
                # The other process: the same voucher, a higher one, both refused while it is in flight.
                assert _code(post(second, voucher(0, 1_000))) == (409, "lane_busy")
                assert _code(post(second, voucher(0, 2_000))) == (409, "lane_busy")
                assert active() == 1
            finally:
                gate.set()
                held.join()
            assert answers[0].status_code == 200, answers[0].text
            charged = int(answers[0].headers["x-promptex-lane-charged-units"])
            # Replayed to the other process once served: refused, with the lane to resync.
            for base in (second, first):
                replay = post(base, voucher(0, 1_000))
                assert _code(replay) == (409, "voucher_used"), replay.text
                assert orjson.loads(replay.content)["error"]["lane_charged_units"] == str(charged)
            assert _code(post(second, voucher(0, 999))) == (409, "voucher_used")  # a lower one too
            fresh = post(second, voucher(0, charged + 1_001))
            assert fresh.status_code == 200, fresh.text
            total = charged + int(fresh.headers["x-promptex-cost-units"])
            assert fresh.headers["x-promptex-lane-charged-units"] == str(total)
        lane = ledger.lane(account, "USDC", 1, 0)
        assert (lane.charged, lane.inflight) == (total, None) and active() == 0
        assert fake.config.requests == 2  # nothing refused reached the upstream
        ledger.check()
    finally:
        ledger.close()
        postgres.drop_database(url.rsplit("/", 1)[1])
