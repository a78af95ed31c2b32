"""Shedding load: the detector's decisions, and the accept queue it reads."""

from __future__ import annotations

import socket

import pytest

from promptex.gateway.overload import OverloadDetector, ShedLimits
from promptex.serving import accept_backlog, listening_sockets

LIMITS = ShedLimits(wait=0.020, accept_backlog=8, min_inflight=32, window=10)


def observe(detector: OverloadDetector, *, lag: float = 0.0, backlog: int = 0, wait: float = 0.0, inflight: int = 64):
    return detector.observe(loop_lag=lag, accept_backlog=backlog, ledger_wait=wait, inflight=inflight)


def test_detector__queue_stands_a_whole_window__sheds() -> None:
    detector = OverloadDetector(LIMITS)
    decisions = [observe(detector, backlog=50) for _ in range(LIMITS.window)]
    assert decisions[-1] is True
    late = OverloadDetector(LIMITS)
    assert [observe(late, lag=0.030) for _ in range(LIMITS.window)][-1] is True


def test_detector__burst_that_drains_within_the_window__sheds_nothing() -> None:
    detector = OverloadDetector(LIMITS)
    observe(detector)  # one sample of an empty queue in the window
    decisions = [observe(detector, backlog=500, lag=0.5) for _ in range(LIMITS.window - 1)]
    assert not any(decisions)
    # the next sample pushes the empty one out: the queue stood for the whole window
    assert observe(detector, backlog=500, lag=0.5) is True
    # and one drained sample ends the shedding at once
    assert observe(detector, backlog=0, lag=0.0) is False


def test_detector__ledger_threads_wait_all_window__sheds() -> None:
    detector = OverloadDetector(LIMITS)
    decisions = [observe(detector, wait=0.021) for _ in range(LIMITS.window)]
    assert decisions == [False] * (LIMITS.window - 1) + [True]  # a whole window first
    assert observe(detector, wait=0.019) is False


def test_detector__few_requests_in_flight__never_sheds() -> None:
    detector = OverloadDetector(LIMITS)
    assert not any(observe(detector, backlog=500, lag=1.0, wait=1.0, inflight=31) for _ in range(3 * LIMITS.window))
    assert observe(detector, backlog=500, lag=1.0, wait=1.0, inflight=32) is True


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="the accept queue is read through Linux's TCP_INFO")
def test_listening_sockets__copies_share_one_accept_queue_that_accept_backlog_reads() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 4)
    try:
        assert len(sockets) == 4
        assert len({s.fileno() for s in sockets}) == 4
        port = sockets[0].getsockname()[1]
        assert {s.getsockname()[1] for s in sockets} == {port}
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        assert accept_backlog(sockets[0]) == 5
        accepted = [sockets[3].accept()[0], sockets[1].accept()[0]]  # any copy takes from the one queue
        assert accept_backlog(sockets[0]) == accept_backlog(sockets[2]) == 3
        for conn in accepted + clients:
            conn.close()
    finally:
        for s in sockets:
            s.close()


def test_listening_sockets__port_in_use__raises() -> None:
    taken = listening_sockets("127.0.0.1", 0, 1)
    try:
        with pytest.raises(OSError):
            listening_sockets("127.0.0.1", taken[0].getsockname()[1], 4)
    finally:
        taken[0].close()


def test_accept_backlog__not_a_listening_tcp_socket__zero() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert accept_backlog(udp) == 0
