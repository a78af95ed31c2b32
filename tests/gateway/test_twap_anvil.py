"""The TWAP source against a real Oracle: the worker's market anvil (`ape run deploy`, `ape run
seed_market`: pools at the reference prices, one observation each), then time moves past the window."""

from __future__ import annotations

from pathlib import Path

import pytest

from anvil_node import rpc
from promptex.chain.oracle import OracleTwapSource
from promptex.gateway.twap import TwapCache
from promptex.protocol.providers import REFERENCE_PRICES
from promptex.protocol.units import PRICE_SCALE

pytestmark = pytest.mark.slow
WINDOW = 60


def test_oracle_twap_source__seeded_market__reads_reference_prices(seeded_anvil: tuple[str, Path]) -> None:
    url, deployments = seeded_anvil
    source = OracleTwapSource.from_deployment(url, "local", WINDOW, root=deployments)
    assert source.read() == {}  # one observation, younger than the window: no TWAP yet
    rpc(url, "evm_increaseTime", WINDOW + 1)
    rpc(url, "evm_mine")

    cache = TwapCache(source, refresh_seconds=30, max_age_seconds=60)
    cache.refresh()

    for symbol, reference in REFERENCE_PRICES.items():
        twap = cache.fresh(symbol)
        assert twap is not None, symbol
        # an untouched pool averages to its opening price (the Oracle rounds down)
        assert abs(twap.price - reference * PRICE_SCALE // 10**18) <= twap.price // 10**6, symbol
