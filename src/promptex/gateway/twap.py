"""The Oracle's TWAPs, cached, for paying a model in another provider's token.

The gateway never calls the chain while serving a request: a background task reads
`Oracle.consult(token, window)` for every provider token every few seconds (web3, in a
thread) and requests use the last value read, if it is fresh enough. A request that
needs a price the cache does not have fresh is refused before any money moves.

`consult` answers USDC smallest units per 10**18 token units as an 18-decimal fixed-point
number (CLD at $0.004218: 4_218 * 10**18), so

    USDC units = token units × price / 10**36,   token units = USDC units × 10**36 / price.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import anyio
import anyio.to_thread

from promptex.config import Settings
from promptex.metering import asset
from promptex.protocol.units import PRICE_SCALE

log = logging.getLogger("promptex.gateway.twap")


class TwapSource(Protocol):
    def read(self) -> Mapping[str, int]:
        """Provider token symbol → `consult` value, for the tokens priced right now (blocking)."""
        ...


@dataclass(frozen=True)
class Twap:
    symbol: str
    price: int  # Oracle.consult: USDC units per 10**18 token units, 18-decimal fixed point
    read_at: float  # monotonic seconds

    @property
    def usdc_per_token(self) -> Fraction:
        """USDC smallest units per whole token: the TWAP as `metering.rates_for` takes it."""
        return Fraction(self.price * asset(self.symbol).unit, PRICE_SCALE)


class TwapCache:
    """The last TWAP read per token; `fresh` is None once it is older than `max_age`."""

    def __init__(
        self,
        source: TwapSource,
        *,
        refresh_seconds: float,
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.refresh_seconds = refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self._prices: dict[str, Twap] = {}

    def fresh(self, symbol: str) -> Twap | None:
        twap = self._prices.get(symbol.upper())
        if twap is None or self.clock() - twap.read_at > self.max_age_seconds:
            return None
        return twap

    def refresh(self) -> None:
        """Read every price once (blocking: call from a thread). A token the source does not
        price now keeps its last value, which goes stale by itself."""
        now = self.clock()
        for symbol, price in self.source.read().items():
            self._prices[symbol.upper()] = Twap(symbol.upper(), int(price), now)

    async def run(self) -> None:
        """Refresh forever, every `refresh_seconds`; a failed read is logged and retried."""
        while True:
            try:
                await anyio.to_thread.run_sync(self.refresh)
            except Exception as exc:  # the node is down or slow: prices go stale, requests get 503
                log.warning("reading the Oracle's TWAPs failed: %s", type(exc).__name__)
            await anyio.sleep(self.refresh_seconds)


def twap_cache_from_settings(settings: Settings, source: TwapSource | None = None) -> TwapCache | None:
    """The cache the gateway runs: over `source` if given, else over the deployed Oracle
    when `gateway_twap_rpc_url` is set; None: no payment across tokens."""
    if source is None:
        if not settings.gateway_twap_rpc_url:
            return None
        from promptex.chain.oracle import OracleTwapSource  # web3 only when the gateway reads a node

        source = OracleTwapSource.from_deployment(
            settings.gateway_twap_rpc_url,
            settings.gateway_twap_network,
            settings.gateway_twap_window_seconds,
            root=settings.deployments_dir,
        )
    return TwapCache(
        source,
        refresh_seconds=settings.gateway_twap_refresh_seconds,
        max_age_seconds=settings.gateway_twap_max_age_seconds,
    )
