"""What every area's routes share: the ledger, the gateway's store, the chain reader, the
HTTP clients, and who a request's API key is and which wallet it may act for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request

from promptex.agent.billing import HttpBilling
from promptex.config import Settings
from promptex.dashboard.api import ApiError
from promptex.dashboard.market import Market
from promptex.dashboard.options import DashboardOptions
from promptex.dashboard.redemption import RedemptionReader
from promptex.dashboard.sellers import Onboarding
from promptex.gateway.keys import bearer, hash_key
from promptex.gateway.store import ApiKey, GatewayStore
from promptex.ledger import Ledger
from promptex.ledger.binding import checksum_address
from promptex.throttle import Throttle


@dataclass(frozen=True)
class Context:
    settings: Settings
    options: DashboardOptions
    ledger: Ledger
    store: GatewayStore
    market: Market
    client: httpx.AsyncClient  # to the node and the gateway
    billing: HttpBilling  # to providers' billing APIs
    new_accounts: Throttle
    redemptions: RedemptionReader
    onboarding: Onboarding
    clock: Callable[[], int]  # the wall's: when something was done
    chain_clock: Callable[[], int]  # the chain's (raises when its node does not answer): what the vault will see

    @staticmethod
    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        """Blocking work (SQL, web3) off the event loop."""
        return await asyncio.to_thread(fn, *args)

    def key_of(self, request: Request) -> ApiKey:
        key = bearer(request.headers.get("authorization"))
        if key is None:
            raise ApiError(401, "paste an API key, or get one by signing with your wallet")
        record = self.store.api_key(hash_key(key))
        if record is None:
            raise ApiError(401, "this API key is not valid (revoked or mistyped)")
        return record

    def wallet_of(self, key: ApiKey, asked: str | None) -> str:
        """The wallet the key acts for: one bound to its own account (`asked` picks among several)."""
        wallets = self.ledger.wallets(key.account)
        if not wallets:
            raise ApiError(403, "this key's account has no wallet bound: get a key by signing with your wallet")
        if asked is None:
            return wallets[0]
        try:
            wallet = checksum_address(asked)
        except ValueError:
            raise ApiError(400, f"{asked!r} is not a wallet address") from None
        if wallet not in wallets:
            raise ApiError(403, f"{wallet} is not bound to this key's account: you can only see and change your own")
        return wallet
