"""Small things a person reads on the command line: counts in their plural forms."""

from __future__ import annotations

from promptex.cli.seller import health_line
from promptex.gateway.health import LotReport

NOW = 1_800_000_000


def _report(requests: int, errors: int, circuit_open_until: int | None = None) -> LotReport:
    return LotReport(7, requests, errors, 120, None, None, None, circuit_open_until, NOW)


def test_seller_health__one_call__singular() -> None:
    """newuser18: `seller health` said "1 calls"."""
    assert health_line(7, "openai", _report(1, 0), NOW) == "lot 7 (openai): 1 call, 0.0% errors, mean latency 120 ms"
    assert health_line(7, "openai", _report(12_345, 1), NOW).startswith("lot 7 (openai): 12,345 calls, 0.0% errors")


def test_seller_health__a_circuit_open_until_a_time_past__not_said_open() -> None:
    """review2 s18 R6: the line compared `circuit_open_until` with the report's `updated_at`
    (the last flush), not the time now: after a quiet spell it said "skipped until" a time
    days past. Now as the attestor and the dashboard read it: open only while it is."""
    opened = _report(5, 5, circuit_open_until=NOW + 600)  # flushed as the circuit opened
    assert "(circuit open)" in health_line(7, "openai", opened, NOW + 599)
    assert "(circuit open)" not in health_line(7, "openai", opened, NOW + 600 + 86_400)
