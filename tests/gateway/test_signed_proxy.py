"""The buyer's side against the real gateway (issue 23), in one process: an unchanged
openai SDK whose httpx transport signs (`PromptexSigningTransport`), many requests over
several lanes from threads, plain and streamed; every answer checked (price × tokens
exactly at the gateway's advertised rate), nothing refused, the buyer's lane book equal to
the gateway's ledger, every stored voucher on the buyer's disk; then a fresh signer
recovers the lanes from the gateway's report and goes on. The session is inserted in the
ledger as the indexer would record the vault's event (no chain here)."""

from __future__ import annotations

import itertools
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
from eth_account import Account

from promptex import metering
from promptex.buyerside.opening import log_path, open_signer
from promptex.buyerside.sessions import SessionGrant
from promptex.buyerside.signer import Signer
from promptex.buyerside.transport import PromptexSigningTransport
from promptex.metering import load_catalog
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CATALOG, Fake, Harness

VAULT = "0x" + "ab" * 20
USDC_TOKEN = "0x" + "cd" * 20
CHAIN_ID = 31_337
LANES = 3
_events = itertools.count(50_000)


def _session(
    gw: Harness,
    tmp_path: Path,
    *,
    asset: str = "USDC",
    token: str = USDC_TOKEN,
    deposit: int = 100 * USDC,
    maximum: int = 50 * USDC,
    lanes: int = LANES,
) -> tuple[SessionGrant, int, str]:
    """A buyer with `deposit` of `asset` and a session key over it (the ledger's, as indexed)."""
    account, api_key = gw.buyer(asset=asset, amount=deposit)
    wallet = gw.ledger.wallets(account)[0]
    key = Account.create()
    grant = SessionGrant(
        CHAIN_ID, VAULT, wallet, token, asset, key.address, "0x" + bytes(key.key).hex(),
        lanes, maximum, gw.now() + 86_400, 1, "",
    )  # fmt: skip
    gw.ledger.register_session(
        f"0x{next(_events):064x}:0", address=wallet, asset=asset, asset_address=token, chain_id=CHAIN_ID,
        vault=VAULT, key=key.address, session=1, lanes=lanes, maximum=grant.maximum, expiry=grant.expiry,
        signed_from=2,
    )  # fmt: skip
    return grant, account, api_key


def _signer(gw: Harness, grant: SessionGrant, api_key: str, folder: Path) -> Signer:
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {api_key}"}) as client:
        opened = open_signer(grant, client, folder, catalog=load_catalog(CATALOG))
    return opened.signer


def test_signing_transport__real_gateway__answers_checked_books_agree_and_recovery_goes_on(
    gw: Harness, fake: Fake, tmp_path: Path
) -> None:
    gw.add_lot(fake)
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    rates = signer.rates.get("fake-gpt", "USDC")
    assert rates is not None
    sdk = openai.OpenAI(
        base_url=gw.url + "/v1", api_key=api_key, max_retries=0,
        http_client=httpx.Client(transport=PromptexSigningTransport(signer)),
    )  # fmt: skip
    rng = random.Random(23)
    asks = [(" ".join(["word"] * rng.randint(1, 20)), rng.randint(1, 12), n % 5 == 0) for n in range(30)]

    def ask(prompt: str, limit: int, stream: bool) -> int:
        messages = [{"role": "user", "content": prompt}]
        if stream:
            chunks = list(sdk.chat.completions.create(model="fake-gpt", messages=messages, max_tokens=limit,
                                                      stream=True, stream_options={"include_usage": True}))  # fmt: skip
            usage = chunks[-1].usage
        else:
            usage = sdk.chat.completions.create(model="fake-gpt", messages=messages, max_tokens=limit).usage
        assert usage is not None
        return metering.usage_cost(rates, metering.TokenUsage(usage.prompt_tokens, usage.completion_tokens))

    with ThreadPoolExecutor(LANES + 1) as pool:
        costs = list(pool.map(lambda a: ask(*a), asks))
    assert signer.stopped is None
    book = signer.book
    ledger_lanes = [gw.ledger.lane(account, "USDC", 1, i) for i in range(LANES)]
    assert [lane.charged for lane in book.lanes] == [lane.charged for lane in ledger_lanes]
    assert sum(lane.charged for lane in ledger_lanes) == sum(costs)  # true cost, exactly
    rows = [json.loads(line) for line in log_path(tmp_path, grant).read_text().splitlines()]
    logged = {(r["lane"], int(r["ceiling"]), r["sig"]) for r in rows if r["t"] == "voucher"}
    for lane in ledger_lanes:
        assert lane.voucher is None or (lane.lane, lane.voucher.ceiling, lane.voucher.signature) in logged
        assert lane.voucher is None or lane.charged <= lane.voucher.ceiling

    # A crash: a new signer from the same log and the gateway's lane report (the process gone, its log with it).
    signer.close()
    again = _signer(gw, grant, api_key, tmp_path)
    assert [(lane.charged, lane.exact) for lane in again.book.lanes] == [(lane.charged, True) for lane in ledger_lanes]
    sdk = openai.OpenAI(
        base_url=gw.url + "/v1", api_key=api_key, max_retries=0,
        http_client=httpx.Client(transport=PromptexSigningTransport(again)),
    )  # fmt: skip
    more = [ask("again and again", 4, False) for _ in range(3)]
    assert again.stopped is None
    total = sum(gw.ledger.lane(account, "USDC", 1, i).charged for i in range(LANES))
    assert total == sum(costs) + sum(more)


def test_signing_transport__responses_api__checked_exactly(gw: Harness, fake: Fake, tmp_path: Path) -> None:
    gw.add_lot(fake)
    grant, account, api_key = _session(gw, tmp_path)
    signer = _signer(gw, grant, api_key, tmp_path)
    sdk = openai.OpenAI(
        base_url=gw.url + "/v1", api_key=api_key, max_retries=0,
        http_client=httpx.Client(transport=PromptexSigningTransport(signer)),
    )  # fmt: skip
    plain = sdk.responses.create(
        model="fake-gpt", instructions="be brief", input="hello there", max_output_tokens=5, store=False
    )
    assert plain.usage is not None and plain.usage.output_tokens == 5
    streamed = list(sdk.responses.create(model="fake-gpt", input="hello again", max_output_tokens=3, store=False,
                                         stream=True))  # fmt: skip
    assert streamed[-1].type in ("response.completed", "response.incomplete")  # incomplete: max_output_tokens met
    assert signer.stopped is None
    total = sum(gw.ledger.lane(account, "USDC", 1, i).charged for i in range(LANES))
    assert signer.book.charged_total() == total > 0 and all(lane.exact for lane in signer.book.lanes)
