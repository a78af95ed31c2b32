"""Small things a person reads on the command line: counts in their plural forms."""

from __future__ import annotations

from promptex.cli.seller import health_line
from promptex.gateway.health import LotReport


def _report(requests: int, errors: int) -> LotReport:
    return LotReport(7, requests, errors, 120, None, None, None, None, 1_800_000_000)


def test_seller_health__one_call__singular() -> None:
    """newuser18: `seller health` said "1 calls"."""
    assert health_line(7, "openai", _report(1, 0)) == "lot 7 (openai): 1 call, 0.0% errors, mean latency 120 ms"
    assert health_line(7, "openai", _report(12_345, 1)).startswith("lot 7 (openai): 12,345 calls, 0.0% errors")
