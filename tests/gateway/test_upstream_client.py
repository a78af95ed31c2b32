"""The gateway's upstream client keeps connections alive: answers read whole give their
connection back for the next call (a TCP and TLS handshake per call against a real
provider otherwise), and an answer that says `connection: close` does not."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from promptex.gateway import upstream
from promptex.gateway.upstream import UpstreamClient, UpstreamError

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
CLOSING = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"


def test_upstream_client__answers_read_whole__one_connection_reused__until_one_says_close() -> None:
    async def run() -> list[int]:
        connections: list[int] = []
        answers = iter([OK, OK, CLOSING, OK])

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            number = len(connections)
            connections.append(number)
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                answer = next(answers)
                writer.write(answer)
                await writer.drain()
                if answer is CLOSING:
                    writer.close()
                    return

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        used: list[int] = []
        async with UpstreamClient(connect_timeout=5, timeout=5) as client:
            for _ in range(4):
                answer = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", {}, b"{}")
                assert (answer.status_code, await answer.read()) == (200, b"{}")
                used.append(len(connections))
        server.close()
        return used

    # the first three answers on connection 1; the one after `connection: close` on a new one
    assert asyncio.run(run()) == [1, 1, 1, 2]


def test_upstream_client__an_answer_larger_than_the_read_buffer__read_whole() -> None:
    """A plain answer of more than the 1 MiB the connection buffers before it pauses reading
    (an embeddings batch: ~60 KB of JSON per 3,072-dimension vector) is read whole. Before
    (xbreak s18) `read` waited for the answer's end without taking what had come, so reading
    paused at 1 MiB for good: every such answer was a timeout of its lot after the whole
    upstream wait (up to the request's deadline), failed over to the next, and a 504."""
    body = b"[" + b"0.0123456789," * 200_000 + b"0]"  # 2.6 MB

    async def run() -> bytes:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with UpstreamClient(connect_timeout=5, timeout=1) as client:
            answer = await client.post(f"http://127.0.0.1:{port}/v1/embeddings", {}, b"{}")
            read = await answer.read()
        server.close()
        return read

    assert asyncio.run(run()) == body


def test_upstream_client__an_answer_or_a_line_beyond_the_bounds__the_upstream_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the gateway holds of an answer is bounded: a plain answer longer than
    MAX_ANSWER_BYTES, a stream's line longer than MAX_LINE_BYTES are the upstream's failure
    (the lot's error), raised as they pass the bound. Before (xbreak s18) a seller's endpoint
    sending bytes without a line break (or an endless body) grew the gateway's memory until
    the request's deadline. (Bounds lowered here: 3 MiB, 64 KiB.)"""
    monkeypatch.setattr(upstream, "MAX_ANSWER_BYTES", 3 << 20)
    monkeypatch.setattr(upstream, "MAX_LINE_BYTES", 64 << 10)
    endless = b"x" * (1 << 16)

    async def run() -> list[str]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            framing = b"transfer-encoding: chunked\r\n" if b"stream" in head else b"content-length: 999999999\r\n"
            writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n")
            if b"stream" in head:
                writer.write(b"6\r\ndata: \r\n")  # a line begun, never ended
            with contextlib.suppress(ConnectionError):
                for _ in range(200):  # 13 MB at most
                    writer.write(b"10000\r\n" + endless + b"\r\n" if b"stream" in head else endless)
                    await writer.drain()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        failed: list[str] = []
        async with UpstreamClient(connect_timeout=5, timeout=5) as client:
            plain = await client.post(f"http://127.0.0.1:{port}/v1/embeddings", {}, b"{}")
            with pytest.raises(UpstreamError, match="longer than 3145728 bytes") as exc:
                await plain.read()
            failed.append(str(exc.value))
            stream = await client.post(f"http://127.0.0.1:{port}/v1/stream", {"x-stream": "stream"}, b"{}")
            with pytest.raises(UpstreamError, match="a line longer than 65536 bytes") as exc:
                async for _line in stream.lines():
                    pass
            stream.close()
            failed.append(str(exc.value))
        server.close()
        return failed

    assert len(asyncio.run(run())) == 2
