"""One pricing rule: `promptex usage cost` quotes exactly what the gateway charges, for every
payment kind, at the same TWAP reading, from the same catalog and usage numbers."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from click.testing import CliRunner

from promptex.cli import main
from promptex.config import settings as cached_settings
from promptex.metering import asset
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import CATALOG, Fake, FakeTwaps, Harness

# Oracle.consult for GPT (USDC units per 10**18 GPT units, 18-decimal fixed point): $0.333333123456789,
# not a whole number of USDC units per GPT, so the conversion's exactness shows.
GPT_READING = 333_333_123_456_789 * 10**9
LOT_RATE_BPS = 6_000


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize(
    "pay, lot_kind, funds",
    [
        ("CLD", "tokenized", TOKEN),  # the model's own provider token: a tokenized lot
        ("USDC", "listed", 10 * USDC),  # USDC: a listed lot's rate plus the protocol fee
        ("GPT", "listed", TOKEN),  # another provider's token: off by default, on here with an Oracle
    ],
)
def test_usage_cost__every_payment_kind__quote_equals_the_gateways_charge(
    gw_twap: Harness,
    fake: Fake,
    twaps: FakeTwaps,
    monkeypatch: pytest.MonkeyPatch,
    pay: str,
    lot_kind: str,
    funds: int,
    cached: bool,
) -> None:
    gw = gw_twap
    twaps.prices = {"GPT": GPT_READING}
    gw.gateway.twaps.refresh()  # type: ignore[union-attr]
    lot = gw.add_lot(fake, provider="anthropic", api="anthropic", kind=lot_kind, rate_bps=LOT_RATE_BPS)
    account, key = gw.buyer(asset=pay, amount=funds)
    text: dict[str, object] = {"type": "text", "text": "price me exactly"}
    if cached:  # Anthropic's prompt cache: reads and writes (some for an hour) at their catalog rates
        fake.config.cache_read_tokens, fake.config.cache_write_tokens, fake.config.cache_write_1h_tokens = 2, 2, 1
        text["cache_control"] = {"type": "ephemeral", "ttl": "1h"}  # an hour's writes only where so marked

    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "fake-claude", "messages": [{"role": "user", "content": [text]}], "max_tokens": 7},
        headers={"authorization": f"Bearer {key}", "x-promptex-asset": pay},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-promptex-lot"] == str(lot)
    record = gw.ledger.usage_record(response.headers["x-request-id"])
    assert record is not None and record.asset == pay
    charged = record.cost
    assert charged > 0 and gw.ledger.balance(account, pay).posted == funds - charged

    monkeypatch.setenv("PROMPTEX_MODEL_CATALOG", str(CATALOG))
    monkeypatch.setenv("PROMPTEX_PROTOCOL_FEE_BPS", str(gw.settings.protocol_fee_bps))
    cached_settings.cache_clear()
    try:
        quote = CliRunner().invoke(
            main,
            [
                "usage", "cost", "--model", "fake-claude", "--input-tokens", str(record.input_tokens),
                "--output-tokens", str(record.output_tokens), "--asset", pay, "--lot-rate-bps", str(LOT_RATE_BPS),
                "--cache-read-tokens", str(record.cache_read_tokens), "--cache-write-tokens",
                str(record.cache_write_tokens), "--cache-write-1h-tokens", str(record.cache_write_1h_tokens),
                "--twap", f"GPT={Decimal(GPT_READING).scaleb(-24):f}",  # whole USDC per whole GPT, exactly
                "--twap", "CLD=0.5",  # another token's TWAP plays no part in any payment kind
            ],
        )  # fmt: skip
    finally:
        cached_settings.cache_clear()
    assert quote.exit_code == 0, quote.output
    quoted = Decimal(quote.output.strip().splitlines()[-1]).scaleb(asset(pay).decimals)
    assert quoted == charged
    assert (record.cache_read_tokens, record.cache_write_tokens) == ((2, 2) if cached else (0, 0))
