"""A dead gateway process's holds on PostgreSQL (`ledger.processes`): each process holds a
lock named by its registered id, every hold names it, and another process's sweeper that
can take that lock ends the holds at once (status "orphaned") — the buyer's funds, the
lot's capacity and a signed lane back long before the holds' 300 s lifetime. A process that
merely lost its lock connection (a database restart, a cut) lives on: its late answers on
holds ended so are refused — nothing charged, the lane's total unchanged — and it
registers again before its next reserve."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from polling import until
from promptex.config import Settings
from promptex.fakes import FakeUpstreamConfig
from promptex.gateway import create_app, limits
from promptex.gateway.service import end_dead_workers
from promptex.gateway.store import GatewayStore
from promptex.gateway.vouchers import VOUCHER_HEADER
from promptex.ledger import Ledger, LotClaim, Reservation, Sweeper, processes
from promptex.ledger.db import create_ledger_engine
from promptex.ledger.holds.postgres import PostgresHolds
from promptex.ledger.local_postgres import LocalPostgres
from promptex.ledger.processes import LOCK_SPACE
from promptex.ledger.schema import holds, journal_entries, ledger_processes, usage_records
from promptex.protocol.units import USD_MICRO as USDC
from promptex.sealing.envelope import load_master_keys
from promptex.serving import ServerThread, free_port

from .conftest import SELLER_KEY, Fake, Harness, _harness, _start_fake
from .test_holds_processes import DEEP, FLAT_OUT, HELLO, _env, _holds_by_status, _market, _signed_buyer, gateway
from .test_limits import HOLD, counters, fund, key_of

_databases = itertools.count()
BODY = {"model": "fake-flat", "messages": HELLO, "max_tokens": FLAT_OUT}


@pytest.fixture
def gated() -> Iterator[Fake]:
    """A fake upstream whose answers wait until the test opens its gate."""
    yield from _start_fake(FakeUpstreamConfig(api_keys=frozenset({SELLER_KEY}), gate=threading.Event()))


@pytest.fixture
def pg_url(postgres: LocalPostgres) -> Iterator[str]:
    name = f"dead_{os.getpid()}_{next(_databases)}"
    yield postgres.create_database(name, template="ledger_template")
    postgres.drop_database(name)


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    """The test's own books on its database (another process's than a gateway it starts),
    closed after the test."""
    book = Ledger.open(pg_url, migrate=False)
    yield book
    book.close()


def _lock_backend_terminated(ledger: Ledger, process: int) -> None:
    """The database ends `process`'s lock session, as a restart or a cut connection would."""
    with ledger.engine.begin() as conn:
        done = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid, 30000) FROM pg_locks"  # waits until it has ended
                " WHERE locktype = 'advisory' AND classid = :space AND objid = :p"
            ),
            {"space": LOCK_SPACE, "p": process},
        ).scalars()
        assert list(done) == [True]


def _post(
    base: str, key: str, out: dict[str, httpx.Response], name: str, headers: dict[str, str] | None = None
) -> None:
    with contextlib.suppress(httpx.HTTPError):  # a killed gateway drops it
        out[name] = httpx.post(
            base + "/v1/chat/completions", json=BODY, timeout=120,
            headers={"authorization": f"Bearer {key}", **(headers or {})},
        )  # fmt: skip


def test_lock_connection_cut_with_requests_in_flight__holds_orphaned__cut_and_refused_nothing_charged(
    settings: Settings, pg_url: str, gated: Fake
) -> None:
    mine = settings.model_copy(update={"gateway_sweep_seconds": 3_600})  # the test sweeps
    with contextlib.contextmanager(_harness)(mine, pg_url) as gw:
        other = Ledger.open(pg_url, migrate=False)  # another gateway process's books
        try:
            gw.add_lot(gated)
            account, key = gw.buyer()
            signer, signer_key, voucher = _signed_buyer(gw.ledger, USDC)
            answers: dict[str, httpx.Response] = {}
            senders = [
                threading.Thread(target=_post, args=(gw.url, key, answers, "plain")),
                threading.Thread(
                    target=_post, args=(gw.url, signer_key, answers, "signed", {VOUCHER_HEADER: voucher(0, FLAT_OUT)})
                ),
            ]
            for sender in senders:
                sender.start()
            until(lambda: gated.config.requests == 2, "both requests reached the upstream", 30)
            process = gw.ledger.holds.lock.id
            assert process is not None and _holds_by_status(gw.ledger) == {"active": 2}
            assert other.end_dead_processes() == 0  # its lock is held: nothing ends

            _lock_backend_terminated(other, process)
            assert other.end_dead_processes() == 2
            assert _holds_by_status(gw.ledger) == {"orphaned": 2}
            assert gw.ledger.balance(account, "USDC").held == 0
            assert gw.ledger.lane(signer, "USDC", 1, 0).inflight is None

            # pgdepth 4: this process's next pass cuts both upstream calls (plain requests as
            # streams): refused at once, not after the upstream's whole answer (before: they
            # waited for the upstream, whose answer was then refused all the same).
            assert gw.gateway.maintain_holds() == 0
            give_up = time.monotonic() + 30  # both within it: the gate opens by itself only after GATE_WAIT_SECONDS
            for sender in senders:
                sender.join(max(0.0, give_up - time.monotonic()))
            assert not any(sender.is_alive() for sender in senders), "a request was not cut: it waited for the gate"
            assert set(answers) == {"plain", "signed"}, "both answered before the upstream did"
            assert gated.config.gate is not None and not gw.gateway.plains
            gated.config.gate.set()
            for name in ("plain", "signed"):
                assert answers[name].status_code == 503, answers[name].text
                assert answers[name].json()["error"]["code"] == "hold_ended"
                assert "x-promptex-lane-charged-units" not in answers[name].headers
            # The signed refusal names its lane's total (unchanged: nothing charged) and its
            # voucher (accepted), so a buyer's side keeps the lane exact (pbreak's Open 3).
            error = answers["signed"].json()["error"]
            assert (error["lane"], error["lane_charged_units"], error["voucher"]["ceiling"]) == (0, "0", str(FLAT_OUT))
            assert "lane_charged_units" not in answers["plain"].json()["error"]
            for who in (account, signer):  # nothing charged
                balance = gw.ledger.balance(who, "USDC")
                assert (balance.posted, balance.held) == (10 * USDC if who == account else USDC, 0)
            lane = gw.ledger.lane(signer, "USDC", 1, 0)
            assert (lane.charged, lane.inflight) == (0, None)
            with gw.ledger.engine.connect() as conn:
                assert conn.execute(select(holds.c.request_id).where(holds.c.status == "settled")).first() is None

            # The process registered again: the lane's next request is served and charged from
            # the same total (0), not from a total that jumped.
            headers = {"authorization": f"Bearer {signer_key}", VOUCHER_HEADER: voucher(0, FLAT_OUT + 1)}
            answer = httpx.post(gw.url + "/v1/chat/completions", headers=headers, json=BODY, timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-promptex-lane-charged-units"] == answer.headers["x-promptex-cost-units"]
            again = gw.ledger.holds.lock.id
            assert again is not None and again != process
            assert other.end_dead_processes() == 0
            other.check()
        finally:
            other.close()


@pytest.fixture
def trickle() -> Iterator[Fake]:
    """A fake upstream streaming a word every 50 ms: an answer of 2,000 words takes 100 s."""
    yield from _start_fake(FakeUpstreamConfig(api_keys=frozenset({SELLER_KEY}), chunk_delay_ms=50, output_tokens=2_000))


def test_lock_connection_cut_under_a_stream__the_next_pass_cuts_the_stream__nothing_charged(
    settings: Settings, pg_url: str, trickle: Fake
) -> None:
    """A false-positive orphan of a STREAM (pbreak Open 2): another process's sweep ended
    its hold while it streamed, so its settle will be refused. The process's next
    `maintain_holds` pass cuts it there (no [DONE], no charge event) instead of serving
    the rest of it — minutes here — for nothing."""
    mine = settings.model_copy(update={"gateway_sweep_seconds": 3_600})  # the test sweeps
    with contextlib.contextmanager(_harness)(mine, pg_url) as gw:
        other = Ledger.open(pg_url, migrate=False)  # another gateway process's books
        try:
            gw.add_lot(trickle)
            account, key = gw.buyer()
            lines: list[str] = []
            ended = threading.Event()

            def read() -> None:
                body = {**BODY, "max_tokens": 2_000, "stream": True}
                with contextlib.suppress(httpx.HTTPError), httpx.stream(
                    "POST", gw.url + "/v1/chat/completions", json=body, timeout=120,
                    headers={"authorization": f"Bearer {key}"},
                ) as answer:  # fmt: skip
                    assert answer.status_code == 200
                    lines.extend(line for line in answer.iter_lines() if line)
                ended.set()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            gateway = gw.app.state.gateway
            until(lambda: gateway.streams, "the stream is read", 30)
            assert gateway.maintain_holds() == 0 and not ended.is_set()  # its hold is active: it streams on

            process = gw.ledger.holds.lock.id
            assert process is not None
            _lock_backend_terminated(other, process)
            assert other.end_dead_processes() == 1
            assert _holds_by_status(gw.ledger) == {"orphaned": 1}
            assert gateway.maintain_holds() == 0  # this pass learns it: the stream is cut
            until(ended.is_set, "the stream was cut", 30)
            reader.join()
            assert lines and "data: [DONE]" not in lines  # ended as a refused stream ends
            assert not any('"promptex":' in line for line in lines)  # no charge event
            assert sum(line.startswith("data: ") for line in lines) < 1_000  # far from its 2,000 words
            assert not gateway.streams
            balance = gw.ledger.balance(account, "USDC")
            assert (balance.posted, balance.held) == (10 * USDC, 0)  # nothing charged
            assert _holds_by_status(gw.ledger) == {"orphaned": 1}
            with gw.ledger.engine.connect() as conn:
                assert conn.execute(select(usage_records.c.request_id)).first() is None
            other.check()
        finally:
            other.close()


class _Proxy:
    """A TCP proxy to a PostgreSQL server that can go dark: connections made then are
    accepted and never answered (a database host dropping packets), those made before
    keep working; one the server ends is ended on the client's side too."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.dark = threading.Event()
        self.refusing = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._registering = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with self._registering:  # registered before a cut's list of connections, or refused after it
                self._sockets.append(client)
                if self.refusing.is_set():  # a server that is down: refused at once
                    with contextlib.suppress(OSError):
                        client.close()
                    continue
                if self.dark.is_set():
                    continue  # never answered
                upstream = socket.create_connection(self.target)
                self._sockets.append(upstream)
            for end in (client, upstream):  # a message at a time: no Nagle waits between them
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """How an accepted connection is piped: both ways as they come."""
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65_536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self, *, refuse: bool = False) -> None:
        """Dark (`refuse`: new connections refused at once, as by a server that is down), and
        every connection made before ended too (the database host gone)."""
        (self.refusing if refuse else self.dark).set()
        for end in self._others():
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def _others(self, *mine: socket.socket) -> list[socket.socket]:
        """Every connection's ends registered so far but `mine`."""
        with self._registering:  # one being accepted is in the list, or sees the flag set before
            return [end for end in self._sockets if end not in mine]

    def close(self) -> None:
        self.server.close()
        for end in self._sockets:
            end.close()


class _CommitDropper(_Proxy):
    """`_Proxy` that, `armed`, ends a client's connection right after it forwards the end of
    a settle — the COMMIT of a transaction that wrote a usage record (the general path), or
    (`at_sync` too) the Sync after the one-statement settle's Execute — and lets the server
    finish it: the settle is committed, its client never hears (a NAT dropping it then).
    `down_after`: the database is then unreachable — every other connection ended, new ones
    refused (until the test clears `refusing`) — so the settle's retry fails too."""

    armed = 0
    at_sync = False
    dropped = 0
    down_after = False

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        muted = threading.Event()  # set before the dropped message goes: its answer is never relayed
        threading.Thread(target=self._front, args=(client, upstream, muted), daemon=True).start()
        threading.Thread(target=self._back, args=(upstream, client, muted), daemon=True).start()

    @staticmethod
    def _back(upstream: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        """The server's answers to the client, but none once `muted` (checked per read: the
        drop mutes before it forwards, so the answer to what it dropped is read after)."""
        with contextlib.suppress(OSError):
            while (data := upstream.recv(65_536)) and not muted.is_set():
                client.sendall(data)
        for end in (upstream, client):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def _front(self, client: socket.socket, upstream: socket.socket, muted: threading.Event) -> None:
        def read(n: int) -> bytes:
            out = b""
            while len(out) < n:
                if not (got := client.recv(n - len(out))):
                    raise OSError("closed")
                out += got
            return out

        wrote = settling = False
        with contextlib.suppress(OSError):
            while True:  # untyped messages: SSL/GSS requests, then the startup message
                length = int.from_bytes(head := read(4), "big")
                upstream.sendall(head + (body := read(length - 4)))
                if int.from_bytes(body[:4], "big") not in (80877103, 80877104):
                    break
            while True:
                kind, head = read(1), read(4)
                body = read(int.from_bytes(head, "big") - 4)
                wrote = wrote or (kind in (b"P", b"Q") and b"usage_records" in body)
                settling = settling or (kind == b"B" and b"promptex_settle" in body)
                ends = kind == b"Q" and body[:6].upper() in (b"COMMIT", b"ROLLBA")
                committed = ends and body[:6].upper() == b"COMMIT" and wrote
                drop = (committed or (self.at_sync and kind == b"S" and settling)) and self.armed > 0
                wrote, settling = wrote and not ends, settling and kind != b"S"
                if drop:  # decided before it goes: the server's answer to it is never relayed
                    muted.set()
                    if self.down_after:  # refused before the client hears: its retry's new connection too
                        self.refusing.set()
                upstream.sendall(kind + head + body)
                if drop:
                    self.armed -= 1
                    self.dropped += 1
                    if self.down_after:  # the others' both ends first: the retry finds no pooled one alive
                        for end in self._others(client, upstream):  # (one accepted meanwhile: cut here)
                            with contextlib.suppress(OSError):
                                end.shutdown(socket.SHUT_RDWR)
                    client.shutdown(socket.SHUT_RDWR)  # the server finishes it; its client never hears
                    return


def test_settle_committed_its_connection_dropped_then__the_buyer_gets_its_answer_charged_once(
    settings: Settings, pg_url: str, fake: Fake
) -> None:
    """pgbreak3, b27ea00's end-to-end check: a TCP proxy between the gateway and PostgreSQL
    drops the connection right after it forwards a settle's COMMIT (the server commits).
    A signed request (the general path: its lane is an extra) is tried once more and finds
    itself settled: 200 with its cost, charged once (before b27ea00: 503 ledger_unavailable,
    charged). A plain request's one-statement settle, dropped after its Sync, falls to the
    general path, which finds it settled the same way."""
    proxy = _CommitDropper(make_url(pg_url).port or 0)
    url = make_url(pg_url).set(port=proxy.port)
    mine = settings.model_copy(update={"gateway_sweep_seconds": 3_600})  # the test sweeps
    try:
        with contextlib.contextmanager(_harness)(mine, url.render_as_string(hide_password=False)) as gw:
            gw.add_lot(fake)
            account, key = gw.buyer()
            signer, signer_key, voucher = _signed_buyer(gw.ledger, USDC)
            charged = {account: 0, signer: 0}
            for who, headers, at_sync in (
                (signer, {"authorization": f"Bearer {signer_key}", VOUCHER_HEADER: voucher(0, FLAT_OUT)}, False),
                (account, {"authorization": f"Bearer {key}"}, True),
            ):
                proxy.armed, proxy.at_sync, dropped = 1, at_sync, proxy.dropped
                answer = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                assert proxy.dropped == dropped + 1  # its settle's answer was lost
                assert answer.status_code == 200, answer.text
                cost = int(answer.headers["x-promptex-cost-units"])
                hold = gw.ledger.holds.get(answer.headers["x-request-id"])
                assert hold is not None and (hold.status.value, hold.charged) == ("settled", cost)
                charged[who] += cost
            assert gw.ledger.lane(signer, "USDC", 1, 0).charged == charged[signer]
            for who, funds in ((account, 10 * USDC), (signer, USDC)):
                balance = gw.ledger.balance(who, "USDC")
                assert (balance.posted, balance.held) == (funds - charged[who], 0)  # charged once
            with gw.ledger.engine.connect() as conn:
                assert conn.execute(select(func.count()).select_from(usage_records)).scalar() == 2

            # pgrepair: the same drops, the database then unreachable for the retry too: each is
            # answered 503 ledger_unavailable though its settle committed (charged: README's old
            # exception). The gateway's next sweep, the database back, gives the charge back —
            # balance, cap and lane exactly as before — once.
            other = Ledger.open(pg_url, migrate=False)  # straight to the server
            try:
                lane_total = charged[signer]
                for who, at_sync in ((account, True), (signer, False)):
                    headers = {"authorization": f"Bearer {key}"}
                    if who == signer:
                        voucher_header = voucher(0, lane_total + FLAT_OUT)  # above the lane's last ceiling
                        headers = {"authorization": f"Bearer {signer_key}", VOUCHER_HEADER: voucher_header}
                    before = other.balance(who, "USDC")
                    proxy.armed, proxy.at_sync, proxy.down_after, dropped = 1, at_sync, True, proxy.dropped
                    answer = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                    assert proxy.dropped == dropped + 1
                    assert answer.status_code == 503, answer.text
                    assert answer.json()["error"]["code"] == "ledger_unavailable"
                    request_id = answer.headers["x-request-id"]

                    def settled(request_id: str = request_id) -> bool:  # the server reads the COMMIT it was sent
                        hold = other.holds.get(request_id)
                        return hold is not None and hold.status.value == "settled" and bool(hold.charged)

                    until(settled, "the settle committed all the same: charged though answered 503", 30)
                    proxy.refusing.clear()  # the database answers again
                    proxy.down_after = False
                    gw.gateway.maintain_holds()  # what its sweeper loop runs: the charge given back
                    after = other.balance(who, "USDC")
                    assert (after.posted, after.held, after.cap_remaining) == (
                        before.posted, before.held, before.cap_remaining
                    )  # fmt: skip
                    record = other.usage_record(request_id)
                    assert record is not None and record.status == "refunded"
                    with other.engine.connect() as conn:
                        entries = conn.execute(select(func.count()).select_from(journal_entries)).scalar()
                    gw.gateway.maintain_holds()  # again: nothing more
                    with other.engine.connect() as conn:
                        assert conn.execute(select(func.count()).select_from(journal_entries)).scalar() == entries
                    again = other.balance(who, "USDC")
                    assert (again.posted, again.cap_remaining) == (before.posted, before.cap_remaining)
                # gbreak5: a stream, the same drop at its settle: its client has the whole answer
                # (200, no charge event; never told "nothing is charged"), so a committed charge
                # stays (before: the next sweep gave it back — a served answer free, its seller unpaid).
                before = other.balance(account, "USDC")
                proxy.armed, proxy.at_sync, proxy.down_after, dropped = 1, True, True, proxy.dropped
                streamed = httpx.post(
                    gw.url + "/v1/chat/completions", json={**BODY, "stream": True},
                    headers={"authorization": f"Bearer {key}"}, timeout=30,
                )  # fmt: skip
                assert proxy.dropped == dropped + 1 and streamed.status_code == 200, streamed.text
                assert streamed.text.count("data: ") >= 2  # its answer streamed (no charge event after it)
                request_id = streamed.headers["x-request-id"]

                def stream_settled() -> bool:
                    hold = other.holds.get(request_id)
                    return hold is not None and hold.status.value == "settled" and bool(hold.charged)

                until(stream_settled, "the stream's settle committed", 30)
                proxy.refusing.clear()
                proxy.down_after = False
                gw.gateway.maintain_holds()
                hold = other.holds.get(request_id)
                assert hold is not None and hold.charged
                after = other.balance(account, "USDC")
                assert (after.posted, after.cap_remaining) == (before.posted - hold.charged,
                                                               before.cap_remaining - hold.charged)  # fmt: skip
                record = other.usage_record(request_id)
                assert record is not None and record.status == "pending"  # the coordinator's to post
                assert gw.ledger.holds.unanswered == {} and gw.ledger.holds.kept == 0
                assert other.lane(signer, "USDC", 1, 0).charged == lane_total  # what the buyer's proxy believes
                # The buyer's proxy, told no total, signs on from the total it knew: served, and
                # the gateway's total is that one plus this answer's cost.
                next_voucher = voucher(0, lane_total + 2 * FLAT_OUT)
                headers = {"authorization": f"Bearer {signer_key}", VOUCHER_HEADER: next_voucher}
                served = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                assert served.status_code == 200, served.text
                cost = int(served.headers["x-promptex-cost-units"])
                assert int(served.headers["x-promptex-lane-charged-units"]) == lane_total + cost
                other.check()
            finally:
                other.close()
    finally:
        proxy.close()


def test_ledger_unreachable__reserve_or_settle_fails_within_the_connect_timeout__503_nothing_held_or_charged(
    settings: Settings, pg_url: str, gated: Fake
) -> None:
    """pgholds 4: a process whose lock connection was lost registers again at its next
    reserve; with the database host dropping packets that connect waited for the OS's
    connect timeout (psycopg's default: 130 s) while holding the lock's mutex. Now it fails
    within the URL's connect_timeout (here 2 s; `PROMPTEX_LEDGER_CONNECT_TIMEOUT_SECONDS`,
    5 by default): a clear 503, nothing held or charged; once the host answers again the
    next request registers again and is served.

    pgdepth 3 (and 1): the host goes away while a plain request is upstream. Its settle
    cannot reach the ledger: before, a 500 (the OperationalError unmapped) and its hold left
    active for its lifetime; now a 503 ledger_unavailable (retry: nothing charged), with no
    release waiting for another timeout, and the hold is the ledger's: its next sweep, the
    database back, releases it (funds whole, no usage record)."""
    proxy = _Proxy(make_url(pg_url).port or 0)
    url = make_url(pg_url).set(port=proxy.port).update_query_dict({"connect_timeout": "2"})
    mine = settings.model_copy(update={"gateway_sweep_seconds": 3_600})  # the test sweeps
    try:
        with contextlib.contextmanager(_harness)(mine, url.render_as_string(hide_password=False)) as gw:
            other = Ledger.open(pg_url, migrate=False)  # straight to the server
            try:
                gw.add_lot(gated)
                gate = gated.config.gate
                assert gate is not None
                gate.set()  # answers at once, until the settle part
                account, key = gw.buyer()
                headers = {"authorization": f"Bearer {key}"}
                served = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                assert served.status_code == 200, served.text
                spent = 10 * USDC - gw.ledger.balance(account, "USDC").posted
                lock = gw.ledger.holds.lock
                process = lock.id
                assert process is not None

                proxy.dark.set()  # the host drops new connections
                _lock_backend_terminated(other, process)
                until(lambda: processes._readable(lock._conn), "the process sees its lock connection gone", 30)
                # Well within the client's 30 s: without a connect timeout the reserve waits 130 s.
                refused = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "ledger_unavailable"
                assert lock.failures == 1 and lock.id is None
                balance = gw.ledger.balance(account, "USDC")
                assert (balance.posted, balance.held) == (10 * USDC - spent, 0)  # nothing held or charged
                assert _holds_by_status(other) == {"settled": 1}

                proxy.dark.clear()  # the host answers again: the next reserve registers again
                again = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                assert again.status_code == 200, again.text
                assert lock.id is not None and lock.id != process
                assert _holds_by_status(other) == {"settled": 2}
                spent = 10 * USDC - other.balance(account, "USDC").posted

                gate.clear()  # the next answer waits upstream while the host goes away
                answers: dict[str, httpx.Response] = {}
                sender = threading.Thread(target=_post, args=(gw.url, key, answers, "plain"))
                sender.start()
                until(lambda: gated.config.requests == 3, "the request reached the upstream", 30)
                proxy.cut()  # every ledger connection ends; new ones are never answered
                gate.set()
                sender.join(60)
                assert answers["plain"].status_code == 503, answers["plain"].text
                assert answers["plain"].json()["error"]["code"] == "ledger_unavailable"
                assert _holds_by_status(other) == {"settled": 2, "active": 1}  # left by the failed settle

                proxy.dark.clear()  # the host answers again
                gw.gateway.maintain_holds()  # what its sweeper loop runs: registers again, releases it
                assert _holds_by_status(other) == {"settled": 2, "released": 1}
                balance = other.balance(account, "USDC")
                assert (balance.posted, balance.held) == (10 * USDC - spent, 0)
                with other.engine.connect() as conn:
                    assert conn.execute(select(func.count()).select_from(usage_records)).scalar() == 2
                other.check()
            finally:
                other.close()
    finally:
        proxy.close()


def test_database_down__a_key_not_cached__503_ledger_unavailable_not_500__served_again_once_it_is_back(
    settings: Settings, pg_url: str, fake: Fake
) -> None:
    """pgbreak3: `pg_ctl stop -m immediate` under a real `gateway serve --workers 2` (300
    concurrent buyers): 376 of the requests answered 500 "Internal error" — the API key's
    lookup (uncached: `PROMPTEX_GATEWAY_KEY_CACHE_SECONDS`) raised the database's
    OperationalError before any hold. Now a 503 `ledger_unavailable` (retry), nothing held or
    charged, and the gateway serves again by itself once the database is back."""
    proxy = _Proxy(make_url(pg_url).port or 0)
    url = make_url(pg_url).set(port=proxy.port).update_query_dict({"connect_timeout": "2"})
    mine = settings.model_copy(update={"gateway_sweep_seconds": 3_600})  # key cache 0: each request looks it up
    try:
        with contextlib.contextmanager(_harness)(mine, url.render_as_string(hide_password=False)) as gw:
            other = Ledger.open(pg_url, migrate=False)  # straight to the server
            try:
                gw.add_lot(fake)
                account, key = gw.buyer()
                headers = {"authorization": f"Bearer {key}"}
                served = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                assert served.status_code == 200, served.text
                spent = int(served.headers["x-promptex-cost-units"])

                proxy.cut(refuse=True)  # the server is down: every connection ends, new ones refused
                down = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                assert down.status_code == 503, down.text
                assert down.json()["error"]["code"] == "ledger_unavailable"
                balance = other.balance(account, "USDC")
                assert (balance.posted, balance.held) == (10 * USDC - spent, 0)  # nothing held or charged

                proxy.refusing.clear()  # back: served again, nothing restarted
                again = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                assert again.status_code == 200, again.text
                spent += int(again.headers["x-promptex-cost-units"])
                balance = other.balance(account, "USDC")
                assert (balance.posted, balance.held) == (10 * USDC - spent, 0)
                assert _holds_by_status(other) == {"settled": 2}
                other.check()
            finally:
                other.close()
    finally:
        proxy.close()


def test_connect_timeout__default_setting_or_the_urls_own__in_every_connection_the_ledger_makes(pg_url: str) -> None:
    """The pool's connections and those the holds open themselves (the lock's, the ledger
    threads') are made from the engine's URL: the timeout is in it."""
    assert create_ledger_engine(pg_url).url.query["connect_timeout"] == "5"  # the default
    assert create_ledger_engine(pg_url + "?connect_timeout=3").url.query["connect_timeout"] == "3"  # the URL's own
    with Ledger.from_settings(Settings(ledger_url=pg_url, ledger_connect_timeout_seconds=7)) as ledger:
        assert ledger.engine.url.query["connect_timeout"] == "7"
        holds_ = ledger.holds
        assert isinstance(holds_, PostgresHolds)
        assert make_url(holds_.lock.url).query["connect_timeout"] == "7"
        assert make_url(holds_._one.url).query["connect_timeout"] == "7"


def test_end_dead_workers__a_reaped_workers_holds_ended_at_once_with_its_limits__nothing_charged(
    settings: Settings, pg_url: str, gated: Fake
) -> None:
    """pgholds 1: `gateway serve --workers`' parent, after reaping a worker, ends its holds
    itself (`end_dead_workers`, on a ledger it opens and closes), so a worker nothing
    replaces leaves none behind. Here this process's gateway stands for the worker: its
    lock closed as a death closes it, its request in flight holds funds, the lot and a
    concurrency limit; the parent's call ends it (orphaned), gives all of them back and
    forgets the worker's registration."""
    mine = settings.model_copy(update={"gateway_sweep_seconds": 3_600, "ledger_url": pg_url})  # no sweeps of its own
    with contextlib.contextmanager(_harness)(mine, pg_url) as gw:
        lot = gw.add_lot(gated)
        account, key = gw.buyer()
        subject = limits.key_subject(key_of(gw, key))
        limits.set_limits(gw.ledger.engine, subject, limits.Limits(concurrent=1), gw.now())
        answers: dict[str, httpx.Response] = {}
        sender = threading.Thread(target=_post, args=(gw.url, key, answers, "plain"))
        sender.start()
        until(lambda: gated.config.requests == 1, "the request reached the upstream", 30)
        assert _holds_by_status(gw.ledger) == {"active": 1} and gw.ledger.lot_capacities()[lot].reserved > 0
        assert end_dead_workers(mine, [os.getpid()], wait=0) == 0  # its lock is held: nothing ends

        gw.ledger.holds.lock.close()  # the worker dies: its lock session ends
        assert end_dead_workers(mine, [os.getpid()]) == 1
        assert _holds_by_status(gw.ledger) == {"orphaned": 1}
        assert gw.ledger.balance(account, "USDC").held == 0 and gw.ledger.lot_capacities()[lot].reserved == 0
        assert counters(gw)[(subject, "concurrent")] == 0  # the limit's slot given back
        with gw.ledger.engine.connect() as conn:
            assert not processes.registered(conn, socket.gethostname(), os.getpid())  # forgotten

        assert gated.config.gate is not None
        gated.config.gate.set()
        sender.join()
        assert answers["plain"].status_code == 503 and answers["plain"].json()["error"]["code"] == "hold_ended"
        assert gw.ledger.balance(account, "USDC").posted == 10 * USDC  # nothing charged


def test_gateway_killed_with_requests_in_flight__another_process_first_sweep_ends_its_holds(
    ledger: Ledger, pg_url: str, tmp_path: Path, gated: Fake
) -> None:
    """A `promptex gateway serve` SIGKILLed with 5 requests in flight (one signed); this
    test's ledger stands for another gateway process: its first sweep after the kill ends
    them all (the kernel closed the dead process's lock connection), long before their 300 s."""
    lot, account, key = _market(ledger, tmp_path, gated, face_value=1_000 * USDC, funds=10 * USDC)
    signer, signer_key, voucher = _signed_buyer(ledger, USDC)
    env = _env(tmp_path, pg_url, gateway_upstream_timeout_seconds=120)  # holds live 300 s, the default
    answers: dict[str, httpx.Response] = {}
    sweeper = Sweeper(ledger)
    with gateway(env) as (doomed, base):
        senders = [threading.Thread(target=_post, args=(base, key, answers, f"p{i}")) for i in range(4)]
        senders.append(
            threading.Thread(
                target=_post, args=(base, signer_key, answers, "signed", {VOUCHER_HEADER: voucher(0, FLAT_OUT)})
            )
        )
        for sender in senders:
            sender.start()
        until(lambda: gated.config.requests == 5, "5 requests reached the upstream", 60)
        assert _holds_by_status(ledger) == {"active": 5}
        assert sweeper.run_once() == 0  # a live process's holds stay
        with ledger.engine.connect() as conn:
            lifetimes = dict(conn.execute(select(holds.c.request_id, holds.c.expires_at)).all())
            assert len(set(conn.execute(select(holds.c.process_id)).scalars())) == 1  # all the gateway's
        assert ledger.balance(account, "USDC").held > 0 and ledger.lot_capacities()[lot].reserved > 0

        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    assert gated.config.gate is not None
    gated.config.gate.set()  # the upstream's answers go nowhere now
    for sender in senders:
        sender.join()
    assert not answers
    # The first sweep that finds the dead lock session gone (PostgreSQL ends it as soon as
    # it reads the closed socket) ends them all: funds, the lot's capacity, the lane back.
    swept: list[int] = []
    until(lambda: swept.append(sweeper.run_once()) or sum(swept), "a sweep found the dead process", 30)
    assert sum(swept) == 5 and _holds_by_status(ledger) == {"orphaned": 5}
    with ledger.engine.connect() as conn:
        ended = dict(conn.execute(select(holds.c.request_id, holds.c.closed_at)).all())
    assert ended.keys() == lifetimes.keys() and all(ended[r] < lifetimes[r] - 200 for r in ended)
    assert ledger.lot_capacities()[lot].reserved == 0  # its lease given back in the same pass
    balance = ledger.balance(account, "USDC")
    assert (balance.held, balance.spendable) == (0, 10 * USDC)
    lane = ledger.lane(signer, "USDC", 1, 0)
    assert (lane.inflight, lane.charged) == (None, 0)
    ledger.check()


@pytest.mark.skipif(not DEEP, reason="deep profile only (~10 s): CI runs the kill against one process above")
def test_workers__one_killed_with_requests_in_flight__the_worker_started_in_its_place_ends_its_holds(
    ledger: Ledger, pg_url: str, tmp_path: Path, gated: Fake
) -> None:
    """`--workers 2`, no sweeps but each worker's first (hourly): the parent starts a killed
    worker again at once, and the new worker's first sweep ends the dead one's holds; the
    live worker's holds stay."""
    with _two_workers_holding(ledger, tmp_path, pg_url, gated) as (_, account, proc, doomed, live_id):
        doomed_id, doomed_pid = doomed
        doomed_holds = _process_holds(ledger, doomed_id)
        assert doomed_holds and set(doomed_holds.values()) == {"active"}
        os.kill(doomed_pid, signal.SIGKILL)
        until(
            lambda: set(_process_holds(ledger, doomed_id).values()) == {"orphaned"},
            "the dead worker's holds ended by the one started in its place", 60,
        )  # fmt: skip
        assert set(_process_holds(ledger, live_id).values()) == {"active"}  # the live worker's stay
        with ledger.engine.connect() as conn:
            assert {pid for _, pid in conn.execute(select(ledger_processes.c.id, ledger_processes.c.pid))} - {
                doomed_pid
            }  # the new worker registered
        assert gated.config.gate is not None
        gated.config.gate.set()
        until(lambda: _holds_by_status(ledger).get("active", 0) == 0, "the live worker's requests settled", 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert ledger.balance(account, "USDC").held == 0
    ledger.check()


@pytest.mark.skipif(not DEEP, reason="deep profile only (~10 s): CI runs end_dead_workers on one process above")
def test_workers__one_killed_while_the_command_stops__the_parent_ends_its_holds_nothing_replaces_it(
    ledger: Ledger, pg_url: str, tmp_path: Path, gated: Fake
) -> None:
    """`--workers 2`, sweeps hourly, both workers with requests in flight: SIGTERM to the
    command, then a worker killed while it stops. Nothing starts in its place (the command
    is stopping) and the live worker does not sweep again: the parent's hook ends the dead
    worker's holds while the live one still finishes its requests."""
    with _two_workers_holding(ledger, tmp_path, pg_url, gated) as (lot, account, proc, doomed, live_id):
        doomed_id, doomed_pid = doomed
        assert set(_process_holds(ledger, doomed_id).values()) == {"active"}
        proc.send_signal(signal.SIGTERM)  # the command stops: the workers finish their requests
        os.kill(doomed_pid, signal.SIGKILL)
        until(
            lambda: set(_process_holds(ledger, doomed_id).values()) == {"orphaned"},
            "the parent ended the killed worker's holds", 30,
        )  # fmt: skip
        assert proc.poll() is None  # still stopping: the live worker's requests are in flight
        assert set(_process_holds(ledger, live_id).values()) == {"active"}
        assert gated.config.gate is not None
        gated.config.gate.set()
        assert proc.wait(timeout=60) == 0
    assert set(_process_holds(ledger, live_id).values()) == {"settled"}
    assert ledger.balance(account, "USDC").held == 0 and ledger.lot_capacities()[lot].reserved == 0
    ledger.check()


@contextlib.contextmanager
def _two_workers_holding(
    ledger: Ledger, tmp_path: Path, pg_url: str, gated: Fake
) -> Iterator[tuple[int, str, subprocess.Popen[bytes], tuple[int, int], int]]:
    """`promptex gateway serve --workers 2` on a free port, sweeps hourly, over a market of
    one lot whose upstream is `gated`, once both workers have requests in flight: the lot,
    the paying account, the command, the first worker's (registered id, pid) and the second's
    id. The command is killed on the way out if it still runs."""
    lot, account, key = _market(ledger, tmp_path, gated, face_value=1_000 * USDC, funds=10 * USDC)
    env = _env(tmp_path, pg_url, gateway_sweep_seconds=3_600, gateway_upstream_timeout_seconds=120)
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptex.cli", "gateway", "serve", "--port", str(free_port()), "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        first, (second_id, _) = _both_hold(ledger, proc, key)
        yield lot, account, proc, first, second_id
    finally:
        if proc.poll() is None:
            proc.kill()


def _both_hold(ledger: Ledger, proc: subprocess.Popen[bytes], key: str) -> list[tuple[int, int]]:
    """Once both workers listen, requests until both have some in flight; the workers'
    (registered id, pid)."""
    base = f"http://127.0.0.1:{proc.args[-3]}"  # type: ignore[index]

    def up() -> bool:
        assert proc.poll() is None
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(base + "/healthz", timeout=2).status_code == 200
        return False

    def two_workers_hold() -> bool:
        # A new connection per request (the kernel hands each to one worker), until both
        # workers have requests in flight.
        assert proc.poll() is None
        threading.Thread(target=_post, args=(base, key, {}, "x", {"connection": "close"})).start()
        with ledger.engine.connect() as conn:
            return len(set(conn.execute(select(holds.c.process_id)).scalars())) == 2

    until(up, "the workers listen", 90)
    until(two_workers_hold, "both workers hold requests in flight", 90, every=0.2)
    with ledger.engine.connect() as conn:
        rows = [(int(i), int(p)) for i, p in conn.execute(select(ledger_processes.c.id, ledger_processes.c.pid))]
    assert len(rows) == 2
    return rows


def _process_holds(ledger: Ledger, process: int) -> dict[str, str]:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(select(holds.c.request_id, holds.c.status).where(holds.c.process_id == process)).all())


def test_dead_process_filled_a_lot__the_sweep_that_ends_its_hold_routes_to_the_lot_at_once(
    settings: Settings, pg_url: str, fake: Fake
) -> None:
    """A dead process's hold took a lot's whole room: the gateway's sweep that ends it reads
    the lots again, so the lot serves now, not at the next refresh (hourly here)."""
    dead_book = Ledger.open(pg_url, migrate=False)
    book = Ledger.open(pg_url, migrate=False)
    try:
        keys = load_master_keys(None, settings.gateway_master_key_file)
        dead = Harness(dead_book, GatewayStore(dead_book.engine), keys, settings, "", None)
        dead.refresh = lambda: None  # type: ignore[method-assign]  # no gateway serves yet
        lot = dead.add_lot(fake, face_value=10 * USDC)
        headroom = dead_book.lot_capacities()[lot].headroom
        account = fund(dead_book, 10 * USDC)
        dead_book.holds.reserve(Reservation("in-flight", account, "USDC", HOLD, 300, lots=(LotClaim(lot, headroom),)))
        assert dead_book.lot_capacities()[lot].headroom == 0  # its request filled the lot
        dead_book.holds.lock.close()  # the process dies: its lock session ends
        mine = settings.model_copy(update={"gateway_sweep_seconds": 3_600, "gateway_lot_refresh_seconds": 3_600})
        app = create_app(mine, ledger=book)
        with ServerThread(app, **app.uvicorn_options()):
            registry = app.state.gateway.registry
            until(lambda: [live.id for live in registry.candidates("openai", "listed")] == [lot], "the lot routed", 30)
            assert _holds_by_status(book) == {"orphaned": 1}
        book.check()
    finally:
        book.close()
        dead_book.close()
