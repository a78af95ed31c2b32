"""The gateway's upstream client keeps connections alive: answers read whole give their
connection back for the next call (a TCP and TLS handshake per call against a real
provider otherwise), and an answer that says `connection: close` does not."""

from __future__ import annotations

import asyncio

from promptex.gateway.upstream import UpstreamClient

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
