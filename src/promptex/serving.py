"""An ASGI app served by uvicorn in a background thread: how the demo (and tests) run the
gateway and the fake upstreams inside one process."""

from __future__ import annotations

import array
import asyncio
import fcntl
import socket
import struct
import termios
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The servers clients keep connections to (the gateway, the signing proxy) close an idle
# kept-alive connection only well after the clients' own pools have dropped it. httpx —
# under the openai and anthropic SDKs — drops an idle connection after 5 s, and uvicorn's
# default closes it after 5 s too: when both expire at once, a request sent on the
# connection just as the server closes it fails with a connection error and no answer.
# Longer here, the client always closes first. (Session 13's CI: one ReadError in the
# exactly-K test's 1,000 requests. A lab of that test measured the gateway's idle gap per
# connection at up to 2-4 s on a 2-core machine, near uvicorn's 5 s; with the keep-alive
# cut to 1 s it got such ReadErrors: half of them closes with the next request already
# unread, no longer made (`gateway.guard`), the rest requests sent just after the close.)
KEEP_ALIVE_SECONDS = 30


class KeepAliveProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, but a kept-alive connection is closed at its keep-alive
    deadline only with nothing unread in its socket: uvloop runs the timers due before it
    reads again, so under load (a loop long over its reads) a request that came in time
    could be closed unread — and the unread bytes made the close a reset, the client's
    ReadError with no answer. The gateway's protocol (`gateway.guard`) and the signing
    proxy's are this one."""

    def timeout_keep_alive_handler(self) -> None:
        if _unread(self.transport):  # a request came in time: read next (it cancels this fired timer)
            return
        super().timeout_keep_alive_handler()


def _unread(transport: asyncio.Transport) -> bool:
    """Whether bytes wait unread in the connection's socket (False where that cannot be read)."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(termios, "FIONREAD"):
        return False
    waiting = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting)
    except (OSError, ValueError):
        return False
    return waiting[0] > 0


def listening_sockets(host: str, port: int, copies: int) -> list[socket.socket]:
    """One listening TCP socket and `copies - 1` duplicates of it, for uvicorn's `sockets=`.

    Why: libuv (under uvloop) accepts one connection per listening descriptor per loop
    iteration. When an iteration takes 15 ms at load, that caps new connections near
    60 a second, and clients that open more wait in the kernel's accept queue for
    seconds, before the gateway can even answer them 429. Each duplicate descriptor is
    polled on its own, so the loop accepts up to `copies` connections an iteration from
    the one queue (an extra wake-up finds the queue empty and costs one failed accept)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    return [sock, *(sock.dup() for _ in range(max(1, copies) - 1))]


def accept_backlog(sock: socket.socket) -> int:
    """Connections waiting in a listening socket's accept queue (Linux: TCP_INFO's
    `tcpi_unacked` holds it for a listening socket); 0 where that cannot be read."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except (AttributeError, OSError):
        return 0
    return int(struct.unpack_from("<I", info, 24)[0]) if len(info) >= 28 else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """`with ServerThread(app) as server:` serves `app` (on 127.0.0.1 by default) until the block ends."""

    def __init__(
        self,
        app: Any,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        sockets: list[socket.socket] | None = None,
        **options: Any,
    ) -> None:
        # Sockets bound beforehand (`listening_sockets`): a port already taken is the caller's
        # OSError at once, not a uvicorn thread exiting on its own.
        self.host = host
        self.port = int(sockets[0].getsockname()[1]) if sockets else port or free_port()
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: self.server.run(sockets=sockets), daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
