"""1,000 concurrent requests against a balance that covers exactly K: exactly K served,
the rest refused with 402, zero overspend — on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import openai

from promptex import metering
from promptex.metering import load_catalog

from .conftest import CATALOG, Fake, Harness

REQUESTS = 1_000
K = 37
MAX_TOKENS = 16  # the fake's default output: the hold is the exact cost (fake-flat prices output only)


def test_chat__1000_concurrent_requests_balance_covers_k__exactly_k_served_no_overspend(
    gw_any: Harness, fake: Fake
) -> None:
    gw = gw_any
    gw.add_lot(fake)
    rates = metering.usdc_rates(load_catalog(CATALOG).price("fake-flat"), 6000, gw.settings.protocol_fee_bps)
    cost = metering.message_cost(rates, 0, MAX_TOKENS)
    account, key = gw.buyer(amount=K * cost)

    async def run() -> Counter[int]:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=120)
        gate = asyncio.Semaphore(64)

        async def one() -> int:
            async with gate:
                try:
                    await client.chat.completions.create(
                        model="fake-flat", messages=[{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS
                    )
                    return 200
                except openai.APIStatusError as exc:
                    return exc.status_code

        return Counter(await asyncio.gather(*(one() for _ in range(REQUESTS))))

    outcomes = asyncio.run(run())
    assert outcomes == Counter({200: K, 402: REQUESTS - K})
    assert fake.config.requests == K
    balance = gw.ledger.balance(account, "USDC")
    assert (balance.posted, balance.held) == (0, 0)
    assert gw.ledger.system_balance("usage", "USDC") == K * cost
    gw.ledger.check()
