"""The TWAP source against a real Oracle: anvil, `ape run deploy`, `ape run seed_market`
(pools at the reference prices, one observation each), then time moves past the window."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from anvil_node import ape_env, ape_run, running_anvil
from promptex.chain.oracle import OracleTwapSource
from promptex.gateway.twap import TwapCache
from promptex.protocol.providers import REFERENCE_PRICES
from promptex.protocol.units import PRICE_SCALE

pytestmark = pytest.mark.slow
WINDOW = 60


def rpc(url: str, method: str, *params: object) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["result"]


def test_oracle_twap_source__seeded_market__reads_reference_prices(tmp_path: Path) -> None:
    deployments = tmp_path / "deployments"
    with running_anvil() as url:
        env = ape_env(url, deployments)
        for script in ("deploy", "seed_market"):
            done = ape_run(env, script)
            assert done.returncode == 0, done.stderr[-2000:]
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
