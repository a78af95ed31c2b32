"""Money for people (`protocol.units.money`) and the spend cap's per-epoch rounding."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptex.protocol.units import PRICE_SCALE, balance_text, display_decimals, money, usd_text, usd_value
from promptex.protocol.vault import MANTISSA_BITS, MAX_EXPONENT, UNLIMITED, per_epoch_at_least, quantize_per_epoch

CLD_TWAP = 4_218 * 10**18  # Oracle.consult for CLD at $0.004218
TEN_DIGITS = re.compile(r"\d{10,}")


@pytest.mark.parametrize(
    ("amount", "symbol", "twap", "shown"),
    [
        (50_000_000, "USDC", None, "50.00 USDC"),
        (123, "USDC", None, "0.000123 USDC"),  # a small cost keeps its digits
        (0, "USDC", None, "0.00 USDC"),
        (-1_500_000, "USDC", None, "-1.50 USDC"),
        (1_234_567_890_123, "USDC", None, "1,234,567.89 USDC"),
        (14_587_482_219_061_166_430_000, "CLD", CLD_TWAP, "14,587.48 CLD ($61.53)"),
        (14_587_482_219_061_166_430, "cld", None, "14.59 CLD"),  # no price known: no dollars
        (5 * 10**17, "GPT", 3_695_000 * 10**18, "0.500 GPT ($1.85)"),  # GPT shows 3 decimals
        (999_999, "USDC", None, "1.00 USDC"),
        (2**256 - 1, "USDC", None, f"{(2**256 - 1) // 10**6:,}.64 USDC"),  # exact past Decimal's 28 digits
    ],
)
def test_money__amounts__whole_units_at_sensible_precision(amount, symbol, twap, shown):
    assert money(amount, symbol, twap=twap) == shown


def test_money__unlimited_sentinel__shown_as_the_word():
    cap_total = 2**96 - 1  # what the vault stores for an unlimited total
    assert money(cap_total, "USDC", unlimited=cap_total) == "unlimited"
    assert money(50_000_000, "USDC", unlimited=cap_total) == "50.00 USDC"


def test_money__rounding__down_and_up_never_read_the_same():
    # A refusal's "has 20.00, needs 20.00" would say nothing: what one has is shown rounded
    # down, what one needs rounded up.
    assert money(20_000_000, "USDC", rounding="down") == "20.00 USDC"
    assert money(20_000_001, "USDC", rounding="up") == "20.01 USDC"
    assert money(-1_500_001, "USDC", rounding="down") == "-1.51 USDC"
    assert money(1, "CLD", rounding="up") == "0.00000001 CLD"


def test_balance_text__rounded_down_dollars_too__never_more_than_there_is():
    # 10.00 USDC less a request's 0.000007 read "10.00 USDC" (nearest): a person read more than there was.
    assert balance_text(9_999_993, "USDC") == "9.99 USDC"
    assert balance_text(999_999, "USDC") == "0.9999 USDC"  # below one unit: its significant digits, down
    assert balance_text(10**21 - 1, "CLD", twap=CLD_TWAP) == "999.99 CLD ($4.21)"  # worth $4.217999…
    assert money(10**21 - 1, "CLD", twap=CLD_TWAP) == "1,000.00 CLD ($4.22)"
    cap_total = 2**96 - 1
    assert balance_text(cap_total, "USDC", unlimited=cap_total) == "unlimited"


def test_display_decimals__a_step_is_worth_at_most_a_cent():
    assert [display_decimals(s) for s in ("USDC", "CLD", "GPT", "GEM", "LLM")] == [2, 2, 3, 3, 2]


def test_usd__values_and_text():
    assert usd_value(10**21, "CLD", CLD_TWAP) == 4_218_000
    assert usd_value(10**21, "CLD", None) is None
    assert usd_value(7, "USDC", None) == 7
    assert usd_text(4_218_000) == "$4.22" and usd_text(-3_500_000) == "-$3.50" and usd_text(1_234) == "$0.001234"
    assert usd_text(99_999_500, exact=True) == "$99.9995" and usd_text(-500, exact=True) == "-$0.0005"
    assert usd_text(1_234_567_890_001, exact=True) == "$1,234,567.890001" and usd_text(5 * 10**6, exact=True) == "$5.00"


@given(st.integers(min_value=-(2**200), max_value=2**200), st.sampled_from(["USDC", "CLD", "GPT", "LLM"]))
def test_money__any_amount__no_ten_digit_integer(amount, symbol):
    # The scan: a person never reads a ≥ 10-digit run beside an asset symbol.
    assert not TEN_DIGITS.search(money(amount, symbol, twap=CLD_TWAP))


@given(st.integers(min_value=1, max_value=2**200))
def test_per_epoch_at_least__smallest_representable_not_below_the_request(value):
    signed = per_epoch_at_least(value)
    if signed == UNLIMITED:
        assert value > quantize_per_epoch(value) and value.bit_length() - MANTISSA_BITS >= MAX_EXPONENT
        return
    assert quantize_per_epoch(signed) == signed >= value  # stored as signed, never below the request
    below = signed - 1
    assert quantize_per_epoch(below) < value  # nothing smaller would be enforced as ≥ value


def test_per_epoch_at_least__fifty_usdc__enforced_at_least_fifty():
    assert quantize_per_epoch(50_000_000) < 50_000_000  # the round-1 bug: 49.999872
    assert quantize_per_epoch(per_epoch_at_least(50_000_000)) >= 50_000_000


def test_usd_value__price_scale():
    assert usd_value(PRICE_SCALE, "GPT", 1) == 1


def test_token_value_text__a_provider_token_with_its_dollars__or_no_price_yet():
    """A tokenized lot's tokens in `seller lots` / `status` read in tokens alone, beside
    listed lots in dollars (newuser18): now with the TWAP's dollars, or said to have none."""
    from promptex.protocol.units import token_value_text

    assert token_value_text(14_587_482_219_061_166_430_000, "CLD", CLD_TWAP) == "14,587.48 CLD ($61.53)"
    assert token_value_text(14_587_482_219_061_166_430_000, "CLD", None) == "14,587.48 CLD (no price yet)"
    assert token_value_text(1_500_000, "USDC", None) == "1.50 USDC"


def test_seller_lots_remaining__a_tokenized_lot__tokens_with_their_dollars_at_the_twap():
    from types import SimpleNamespace

    from promptex.sellers.chain import ChainLot
    from promptex.sellers.manage import _remaining

    token = "0x" + "cc" * 20
    lot = ChainLot(1, "0x" + "5e" * 20, token, 1, 1, 0, 100 * 10**6, 20_000 * 10**18, 0, 5_000 * 10**18, 0, 0, 0)
    asked: list[str] = []

    def chain(price: int | None) -> object:
        return SimpleNamespace(
            deployment=SimpleNamespace(contracts={"token:CLD": SimpleNamespace(address=token.upper())}),
            twap=lambda t: asked.append(t) or price,
        )

    assert _remaining(chain(CLD_TWAP), lot, 0) == "15,000.00 CLD ($63.27)"  # type: ignore[arg-type]
    assert _remaining(chain(None), lot, 0) == "15,000.00 CLD (no price yet)"  # type: ignore[arg-type]
    assert asked == [token, token]
