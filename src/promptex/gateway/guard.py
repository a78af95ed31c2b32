"""The gateway's HTTP connections, guarded before any request reaches the app.

uvicorn reads a request's headers with no deadline: a client that opens a connection and
sends nothing, half a request line, or an HTTP/0.9 line keeps it open forever, and
nothing stops one address from opening thousands. `guarded_protocol` is uvicorn's
httptools protocol with two guards:

- a header timeout: each request's headers (from the connection's first byte, or the
  next request's first byte on a kept-alive connection) must be complete within
  `header_timeout` seconds, else the gateway answers 408 and closes the connection;
- at most `per_address` open connections per client address (the socket's peer); more
  are answered 429 at once and not counted. A trusted proxy's own connections are not
  counted: its clients are told apart by X-Forwarded-For, in `admission`.

Every answer after which the gateway closes the connection is followed by a half-close
(`_linger`): the refused connection's 429, the header timeout's 408, and whatever the app
answers with `connection: close` (the body timeout's 408, the 429 of a key or address
with its share in flight, sent before the body is read). The client reads the answer
and the end of it, and whatever it still sends is read and dropped until it closes, for
at most `REFUSED_LINGER` seconds. Why not closed at once: a client still sending (its
request after a refusal at connect, the rest of its headers or body) then writes to a
closed socket and gets a reset — at once, if the gateway closed with bytes of it unread —
and an asyncio client (httpx's AsyncClient, under the SDKs' async clients) drops the
answer it had already received: it saw a ReadError with no answer, and retried as if
the gateway had failed.

A kept-alive connection is closed at its keep-alive deadline only with nothing unread in
its socket: uvloop runs the timers due before it reads again, so under load (a loop long
over its reads) a request that came in time could be closed unread — and the unread bytes
made the close a reset, the client's ReadError with no answer (once in the exactly-K
test's 1,000 requests, session 13's CI; a lab with a 1 s keep-alive: 3 in 1,000). That is
`serving.KeepAliveProtocol`, which this protocol extends and the signing proxy serves with.

The body has its own deadline, in the app (`Gateway.read`), where a 408 can be answered
in the API's error shape; a request whose whole body came with its headers (nearly all)
is marked in its scope (`BODY_RECEIVED`), and the app then sets no timer for it.

Why timers only for what is still missing: a timer set and cancelled costs the loop
microseconds on every request, and almost every request's headers (and body) arrive in
the one read that begins it. So the header deadline is armed at the end of a read that
leaves a request's headers incomplete — the same moment as at its first byte, give or
take the parsing of that one read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from promptex.config import Settings
from promptex.gateway import errors
from promptex.serving import KEEP_ALIVE_SECONDS, KeepAliveProtocol

_CLOSE = b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"


def _status(line: bytes, text: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 " + line + b"\r\n" + _CLOSE + extra
    return head + b"content-length: " + str(len(text)).encode() + b"\r\n\r\n" + text


BODY_RECEIVED = "promptex.body_received"  # in a request's scope: its whole body is in memory
HEADER_TIMEOUT = _status(b"408 Request Timeout", b"The request's headers did not arrive in time.")
TOO_MANY_CONNECTIONS = _status(
    b"429 Too Many Requests", errors.TOO_MANY_CONNECTIONS.encode(), errors.UNREAD_HEADER.encode() + b": 1\r\n"
)
REFUSED_LINGER = 1.0  # seconds a closing connection waits, half-closed, for its client to close


class ConnectionGuard:
    """Open connections per client address, shared by every connection of one server."""

    def __init__(self, per_address: int, header_timeout: float, trusted: Iterable[str] = ()) -> None:
        self.per_address = per_address
        self.header_timeout = header_timeout
        self.trusted = frozenset(trusted)
        self.open: dict[str, int] = {}
        self.refused = 0  # connections refused, for the metrics
        self.timed_out = 0  # requests whose headers came too late

    def enter(self, address: str) -> bool:
        if address in self.trusted:
            return True
        count = self.open.get(address, 0)
        if count >= self.per_address:
            self.refused += 1
            return False
        self.open[address] = count + 1
        return True

    def leave(self, address: str) -> None:
        if address in self.trusted:
            return
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)


def guarded_protocol(guard: ConnectionGuard) -> type[KeepAliveProtocol]:
    """uvicorn's httptools protocol with `guard`'s limits (see the module's docstring)."""

    class GuardedProtocol(KeepAliveProtocol):
        _address: str | None = None
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._answers = _Answers(transport, self._linger)
            address = self.client[0] if self.client else ""
            if not guard.enter(address):
                transport.write(TOO_MANY_CONNECTIONS)
                self._linger()
                return
            self._address = address
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._address is not None:
                guard.leave(self._address)
                self._address = None
            super().connection_lost(exc)

        _reading_headers = False
        _lingering = False

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return  # sent after the answer that closes the connection: read and dropped, never parsed
            super().data_received(data)
            if self._reading_headers:  # a request begun in this read whose headers are still to come
                self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading_headers = True

        def on_headers_complete(self) -> None:
            self._reading_headers = False
            self._disarm()
            super().on_headers_complete()
            if self.cycle is not None:  # None: a first request asking an upgrade (not served)
                self.cycle.transport = self._answers  # type: ignore[assignment]

        def on_response_complete(self) -> None:
            if self._lingering:  # closing: no kept-alive timer, no pipelined request started
                self.server_state.total_requests += 1
                return
            super().on_response_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.scope[BODY_RECEIVED] = True  # type: ignore[literal-required]

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(guard.header_timeout, self._too_late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_late(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served: its headers did arrive
            guard.timed_out += 1
            self.transport.write(HEADER_TIMEOUT)
            self._linger()

        def _linger(self) -> None:
            """Close after the answer written: half-closed, the client reads the answer and
            the end; what it still sends is dropped; closed when it closes, or after
            `REFUSED_LINGER` seconds (see the module's docstring)."""
            transport = self.transport
            if self._lingering or transport.is_closing():
                return
            self._lingering = True
            self._disarm()
            if not transport.can_write_eof():
                transport.close()
                return
            transport.write_eof()  # after what was written; the client's end closes ours (`eof_received`)
            self.flow.resume_reading()  # paused with a body unread: read (and drop) it too
            self._deadline = self.loop.call_later(REFUSED_LINGER, transport.close)

    return GuardedProtocol


class _Answers:
    """The transport a request's answer is written to (uvicorn's `RequestResponseCycle`
    writes, and closes it after an answer that says `connection: close`, or one cut
    short): the connection's own, but for `close`, which is `_linger`."""

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.close = close
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def uvicorn_options(settings: Settings, guard: ConnectionGuard) -> dict[str, Any]:
    """The uvicorn.Config options that guard the gateway's connections with `guard` (and
    say whose X-Forwarded-For is believed: only the configured trusted proxies')."""
    trusted = list(settings.gateway_trusted_proxies)
    return {
        "http": guarded_protocol(guard),
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or [],
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,  # longer than clients' pools keep one (promptex.serving)
    }
