"""A small HTTP/1.1 client for upstream calls: keep-alive connections per origin, an
asyncio Protocol per connection and httptools (llhttp, the parser uvicorn uses) for
the responses.

Why not httpx: a profile of the gateway at load showed httpx/httpcore (anyio streams,
h11, pool bookkeeping) as the largest single cost per request. This client does the one
thing the gateway needs — POST a body, read a status, headers and a body or a stream —
with a fraction of the work. TLS works (real providers are https); HTTP/2 and proxies do
not. Timeouts: connecting, then between any two reads, or the one a call names (the
gateway's: the whole of a non-streaming call; a stream's first content, set on its response
once its head came within the client's own; `Gateway.upstream_wait`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from functools import lru_cache
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import httptools

_MAX_BUFFER = 1 << 20  # pause reading a stream the consumer is not keeping up with
# The most of an answer held in memory: a plain answer whole (an embeddings batch of 2,048
# 3,072-dimension vectors is ~130 MB of JSON), a stream's line (a Responses stream's last
# event carries the whole answer: ~150 KB at 32k tokens). Beyond, the upstream failed
# (`UpstreamError`: the lot's error). Before (xbreak s18) nothing bounded them: a seller's
# endpoint sending bytes without a line break grew the gateway's memory until its deadline.
MAX_ANSWER_BYTES = 256 << 20
MAX_LINE_BYTES = 16 << 20


class UpstreamError(Exception):
    """The upstream could not be reached or broke off."""


class UpstreamTimeout(UpstreamError):
    """Connecting or reading took longer than the timeout."""


@lru_cache(maxsize=1024)
def _origin(url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
    """((scheme, host, port), Host header, request target) of an upstream URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    default = port == (443 if parts.scheme == "https" else 80)
    host = parts.hostname if default else f"{parts.hostname}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, parts.hostname, port), host.encode("ascii"), target.encode()


def _head(host: bytes, target: bytes, headers: dict[str, str], length: int) -> bytes:
    lines = [b"POST ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\ncontent-length: ", str(length).encode()]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise UpstreamError("a header holds a line break")
        lines += (b"\r\n", name.encode(), b": ", value.encode())
    lines.append(b"\r\n\r\n")
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one response in flight."""

    def __init__(self, pool: list[_Connection], loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.max_idle = 0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.got_bytes = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.orphaned = False  # given back before its answer ended: pooled once it does

    # ── asyncio.Protocol ──
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
            self._fail(UpstreamError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed upstream response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self.parser.get_status_code() and not self._framed():
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
            return
        self._fail(UpstreamError("the upstream closed the connection"))

    # ── httptools callbacks ──
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.orphaned:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _MAX_BUFFER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        # Now, not later: once the message is complete the parser starts over for the next
        # one, and asked then it says the connection cannot be kept (every upstream call
        # opened a new connection: a TCP and TLS handshake each against a real provider).
        self.keep_alive = self.parser.should_keep_alive()
        if self.orphaned:
            self.loop.call_soon(self.done, self.max_idle)
        self._wake()

    # ── helpers ──
    def _framed(self) -> bool:
        names = {name for name, _ in self.headers}
        return b"content-length" in names or b"transfer-encoding" in names

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    async def wait(self, timeout: float) -> None:
        """Until the next event (headers, a chunk, the end, an error)."""
        if self.error is not None:
            raise self.error
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, self._expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeout("the upstream did not answer in time"))

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def release(self, max_idle: int, grace: float) -> None:
        """The caller is done with the response. A stream the caller stopped reading at its
        last event usually lacks only the final chunk's terminator: wait `grace` seconds
        for it (without blocking anyone) rather than lose the kept-alive connection."""
        if self.complete or self.closed or grace <= 0:
            self.done(max_idle)
            return
        self.orphaned = True
        self.max_idle = max_idle
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        self.loop.call_later(grace, self._give_up)

    def _give_up(self) -> None:
        if self.orphaned and not self.complete:
            self.abort()

    def done(self, max_idle: int) -> None:
        """The response was consumed: back to the pool if the connection may be reused."""
        if self.complete and not self.closed and self.keep_alive and len(self.pool) < max_idle:
            self._reset()
            self.idle_since = time.monotonic()
            self.pool.append(self)
        else:
            self.abort()


class UpstreamResponse:
    """Status and headers are in; read the body whole (`read`) or as it comes (`lines`)."""

    def __init__(self, conn: _Connection, timeout: float, max_idle: int) -> None:
        self._conn = conn
        self.timeout = timeout  # between two reads of `chunks`; the caller may change it as it reads
        self._max_idle = max_idle
        self._released = False
        self.status_code = conn.status
        self.headers = conn.headers
        self.content = b""

    async def read(self, timeout: float | None = None) -> bytes:
        """The whole body, within `timeout` (the response's timeout when None)."""
        conn = self._conn
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        taken: list[bytes] = []
        try:
            while not conn.complete:
                if conn.paused:  # its buffer full (`_MAX_BUFFER`): taken, so that reading goes on
                    taken.append(conn.take())  # (before, xbreak s18: never, and an answer over 1 MiB never ended)
                    if len(taken) * _MAX_BUFFER > MAX_ANSWER_BYTES:
                        raise UpstreamError(f"the upstream's answer is longer than {MAX_ANSWER_BYTES} bytes")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UpstreamTimeout("the upstream did not finish its answer in time")
                await conn.wait(left)
            self.content = b"".join((*taken, conn.take())) if taken else conn.take()
        finally:
            self.close()
        return self.content

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; the timeout applies between two of them."""
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.complete:
                return
            await conn.wait(self.timeout)

    async def lines(self) -> AsyncIterator[str]:
        """Body lines (without their line ending) as they arrive."""
        begun: list[bytes] = []  # the line begun and not ended yet, in parts (joined once)
        size = 0
        async for chunk in self.chunks():
            if b"\n" not in chunk:
                begun.append(chunk)
                size += len(chunk)
                if size > MAX_LINE_BYTES:
                    raise UpstreamError(f"the upstream sent a line longer than {MAX_LINE_BYTES} bytes")
                continue
            if begun:
                begun.append(chunk)
                chunk = b"".join(begun)
            *full, rest = chunk.split(b"\n")
            begun, size = ([rest], len(rest)) if rest else ([], 0)
            for line in full:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if begun:
            yield b"".join(begun).rstrip(b"\r").decode("utf-8", "replace")

    def close(self, grace: float = 0.0) -> None:
        """Give the connection back (a finished keep-alive answer) or drop it; see
        `_Connection.release` for `grace`."""
        if not self._released:
            self._released = True
            self._conn.release(self._max_idle, grace)


class UpstreamClient:
    def __init__(
        self, *, connect_timeout: float, timeout: float, max_idle_per_origin: int = 512, idle_expiry: float = 60.0
    ) -> None:
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_idle = max_idle_per_origin
        self.idle_expiry = idle_expiry
        self._pools: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for pool in self._pools.values():
            for conn in pool:
                conn.abort()
            pool.clear()

    def _idle(self, pool: list[_Connection]) -> _Connection | None:
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if not conn.closed and now - conn.idle_since < self.idle_expiry:
                return conn
            conn.abort()
        return None

    async def _connect(self, key: tuple[str, str, int], pool: list[_Connection]) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(pool, loop), host, port, ssl=context, server_hostname=host if context else None
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        return conn

    async def post(
        self, url: str, headers: dict[str, str], content: bytes, *, timeout: float | None = None
    ) -> UpstreamResponse:
        """Send the request and wait for the response's status and headers: within `timeout`
        (the client's when None), also the response's timeout between reads.

        A kept-alive connection the upstream closed before answering anything is retried
        once on a fresh one (the request never reached the upstream's application)."""
        key, host, target = _origin(url)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = []
        request = _head(host, target, headers, len(content)) + content
        wait = self.timeout if timeout is None else timeout
        for attempt in (0, 1):
            conn = self._idle(pool) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key, pool)
            ends = time.monotonic() + wait  # connecting has its own timeout
            try:
                assert conn.transport is not None
                conn.transport.write(request)
                while not conn.headers_done:
                    left = ends - time.monotonic()
                    if left <= 0:
                        raise UpstreamTimeout("the upstream did not answer in time")
                    await conn.wait(left)
            except UpstreamTimeout:
                conn.abort()
                raise
            except UpstreamError:
                conn.abort()
                if reused and not conn.got_bytes:
                    continue
                raise
            except BaseException:
                conn.abort()
                raise
            return UpstreamResponse(conn, wait, self.max_idle)
        raise AssertionError("unreachable")  # pragma: no cover
