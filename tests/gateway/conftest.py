"""Gateway fixtures: a real fake upstream and a real gateway, each a uvicorn server on a
free 127.0.0.1 port in a thread, over a real ledger (SQLite; PostgreSQL where a test
asks for `gw_any`). `ledger_url` and `postgres` come from the plugin fixtures/ledger.py."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from eth_account import Account

from promptex.config import Settings
from promptex.fakes import FakeUpstreamConfig, create_fake_upstream
from promptex.gateway import create_app
from promptex.gateway.keys import hash_key, new_api_key
from promptex.gateway.service import Gateway
from promptex.gateway.store import ApiKey, GatewayStore
from promptex.ledger import Ledger
from promptex.ledger.binding import sign
from promptex.protocol.units import USD_MICRO as USDC
from promptex.sealing.envelope import MasterKeys, load_master_keys
from promptex.sellers import Capacity, SellerStore
from promptex.serving import ServerThread

CATALOG = Path(__file__).with_name("catalog.toml")
SELLER_KEY = "sk-fake-" + "seller"  # an obviously fake upstream key
CHAIN_LOTS = 1_000  # a harness lot N "was opened" as escrow lot CHAIN_LOTS + N (no chain here)
_events = itertools.count()


@dataclass
class Fake:
    config: FakeUpstreamConfig
    url: str  # base URL, …/v1


def _start_fake(config: FakeUpstreamConfig) -> Iterator[Fake]:
    # Answers still waiting out their latency for a client that is gone (a gateway killed
    # with requests in flight) are cancelled 1 s into the shutdown instead of awaited:
    # uvicorn otherwise waits for them, up to the whole latency (30 s in the kill tests).
    with ServerThread(create_fake_upstream(config), timeout_graceful_shutdown=1) as server:
        yield Fake(config, server.url + "/v1")


@pytest.fixture
def fake() -> Iterator[Fake]:
    """A fake OpenAI/Anthropic upstream accepting SELLER_KEY."""
    yield from _start_fake(FakeUpstreamConfig(api_keys=frozenset({SELLER_KEY})))


@pytest.fixture
def second_fake() -> Iterator[Fake]:
    yield from _start_fake(FakeUpstreamConfig(api_keys=frozenset({SELLER_KEY})))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        model_catalog=CATALOG,
        gateway_master_key_file=tmp_path / "master.key",
        gateway_key_cache_seconds=0,
        gateway_lot_refresh_seconds=3600,  # tests refresh by hand
        gateway_default_asset="USDC",
        gateway_default_max_tokens=64,
        # A busy test machine must not shed load: neither its lag nor its accept queue (a
        # slow CI machine kept 64 connections waiting to be accepted for a whole window and
        # 48 of 1,000 requests were shed with 429 in the exactly-K test).
        gateway_shed_wait_ms=10_000,
        gateway_shed_accept_backlog=10_000,
        gateway_max_inflight_per_key=10_000,  # tests send bursts from one key and address
        gateway_max_inflight_per_address=10_000,  # (test_starvation sets its own)
        gateway_metrics_port=0,  # test_operability serves it on a free port
        gateway_twap_refresh_seconds=3600,  # tests refresh by hand
        gateway_twap_max_age_seconds=300,
        ledger_sqlite_synchronous="NORMAL",
    )


def event_id() -> str:
    return f"0x{next(_events):064x}:0"


@dataclass
class Harness:
    """A running gateway and the handles a test needs around it."""

    ledger: Ledger
    store: GatewayStore
    keys: MasterKeys
    settings: Settings
    url: str
    app: Any
    now: Callable[[], int] = field(default=lambda: int(time.time()))

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    def refresh(self) -> None:
        self.gateway.registry.refresh()

    def add_lot(
        self,
        fake: Fake,
        *,
        provider: str = "openai",
        api: str = "openai",
        kind: str = "listed",
        rate_bps: int = 6000,
        face_value: int = 1_000 * USDC,
        secret: str = SELLER_KEY,
        expires_in: int = 30 * 86_400,
        opened: bool = True,
    ) -> int:
        """A seller lot recorded on the sellers' path and, unless `opened` is False, marked
        open as the chain would (as escrow lot CHAIN_LOTS + its id), routed until its expiry."""
        capacity = Capacity(
            provider=provider,
            api=api,
            base_url=fake.url,
            api_key=secret,
            face_value_usd_micro=face_value,
            kind=kind,
            rate_bps=rate_bps,
            expires_at=self.now() + expires_in,
            seller=Account.create().address,
            resale_permitted=True,
        )
        sellers = SellerStore(self.ledger.engine)
        lot_id = sellers.record_lot(self.keys, capacity, route_until=capacity.expires_at, now=self.now())
        if opened:
            sellers.confirm_open(lot_id, CHAIN_LOTS + lot_id, self.now())
        self.refresh()
        return lot_id

    def buyer(self, asset: str = "USDC", amount: int = 10 * USDC, **key_options: Any) -> tuple[int, str]:
        """A funded buyer account (a bound wallet deposited `amount`, cap = amount) and its API key."""
        account = self.ledger.create_account().id
        if amount:
            wallet = Account.create()
            message = self.ledger.issue_binding_challenge(account, wallet.address)
            self.ledger.bind_wallet(message, sign(message, wallet.key))
            self.ledger.credit_deposit(event_id(), wallet.address, asset, amount)
            self.ledger.set_spend_cap(account, asset, amount)
        return account, self.api_key(account, **key_options)[0]

    def api_key(self, account: int, **options: Any) -> tuple[str, ApiKey]:
        key = new_api_key()
        return key, self.store.add_api_key(hash_key(key), key[:10], account, self.now(), **options)

    def client(self, key: str, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **options)

    def async_client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)

    def anthropic(self, key: str, **options: Any) -> anthropic.Anthropic:
        """The official Anthropic client, with only its base URL and key changed."""
        return anthropic.Anthropic(base_url=self.url, api_key=key, max_retries=0, **options)

    def async_anthropic(self, key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.url, api_key=key, max_retries=0)


class FakeTwaps:
    """A TWAP source: `prices` (symbol → Oracle.consult value) as set by the test; counts its reads."""

    def __init__(self, prices: dict[str, int] | None = None) -> None:
        self.prices = dict(prices or {})
        self.reads = 0

    def read(self) -> dict[str, int]:
        self.reads += 1
        return dict(self.prices)


def _harness(
    settings: Settings,
    url: str,
    twaps: FakeTwaps | None = None,
    clock: Callable[[], int] | None = None,
    wrap: Callable[[Any], Any] = lambda app: app,
) -> Iterator[Harness]:
    """`wrap`: the ASGI app the server runs around the gateway's (a test's view of the server)."""
    book = Ledger.open(url, sqlite_synchronous="NORMAL", clock=clock)
    store = GatewayStore(book.engine)
    keys = load_master_keys(None, settings.gateway_master_key_file)
    app = create_app(settings, ledger=book, twap_source=twaps)
    try:
        with ServerThread(wrap(app), **app.uvicorn_options()) as server:  # as `gateway serve` guards connections
            yield Harness(book, store, keys, settings, server.url, app)
        book.check()
    finally:
        book.close()


@pytest.fixture
def gw(settings: Settings, tmp_path: Path) -> Iterator[Harness]:
    """A gateway over a fresh SQLite ledger."""
    yield from _harness(settings, f"sqlite:///{tmp_path}/ledger.sqlite3")


@pytest.fixture
def twaps() -> FakeTwaps:
    return FakeTwaps()


@pytest.fixture
def gw_twap(settings: Settings, tmp_path: Path, twaps: FakeTwaps) -> Iterator[Harness]:
    """A gateway over a fresh SQLite ledger whose TWAPs come from the `twaps` fixture
    (read once at startup; a test calls `gateway.twaps.refresh()` after changing them)."""
    yield from _harness(settings, f"sqlite:///{tmp_path}/ledger.sqlite3", twaps)


@pytest.fixture
def gw_any(settings: Settings, ledger_url: str) -> Iterator[Harness]:
    """A gateway over a fresh ledger of each kind (SQLite and PostgreSQL)."""
    yield from _harness(settings, ledger_url)


def random_hex(n: int = 8) -> str:
    return secrets.token_hex(n)
