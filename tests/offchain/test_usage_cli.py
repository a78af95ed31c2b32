"""`promptex usage cost`: the cost on the last line; user errors in one line, exit 1."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from promptex.cli import main
from promptex.config import settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    """Settings are cached per process; each test reads the environment it sets."""
    monkeypatch.delenv("PROMPTEX_MODEL_CATALOG", raising=False)
    monkeypatch.delenv("PROMPTEX_PROTOCOL_FEE_BPS", raising=False)
    settings.cache_clear()
    yield
    settings.cache_clear()


def cost(*args: str):
    return CliRunner().invoke(main, ["usage", "cost", *args])


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def assert_one_line_error(result, text: str) -> None:
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0, result.output
    assert text in result.output
    assert "Traceback" not in result.output


def test_usage_cost__rate_3_per_1k_and_1500_tokens__prints_4_5():
    result = cost("--rate", "3", "--tokens", "1500")
    assert result.exit_code == 0, result.output
    assert last_line(result.output) == "4.5"


def test_usage_cost__rate_in_usdc_below_one_unit__rounded_up_to_one_micro():
    result = cost("--rate", "0.0001", "--tokens", "1", "--asset", "usdc")
    assert last_line(result.output) == "0.000001"


def test_usage_cost__model_in_its_provider_token__list_over_face_value():
    result = cost("--model", "claude-sonnet-4-5", "--input-tokens", "1000", "--output-tokens", "500")
    assert result.exit_code == 0, result.output
    assert "$0.0105 list" in result.output
    assert last_line(result.output) == "2.489331436699857753"


def test_usage_cost__model_in_usdc__lot_rate_plus_protocol_fee(monkeypatch):
    monkeypatch.setenv("PROMPTEX_PROTOCOL_FEE_BPS", "500")
    args = ("--model", "claude-sonnet-4-5", "--input-tokens", "1000", "--output-tokens", "500", "--asset", "USDC")
    assert last_line(cost(*args, "--lot-rate-bps", "6000").output) == "0.006615"
    assert last_line(cost(*args, "--lot-rate-bps", "6000", "--fee-bps", "0").output) == "0.0063"


def test_usage_cost__other_providers_token__listed_usdc_price_at_its_twap():
    result = cost(
        "--model", "claude-sonnet-4-5", "--input-tokens", "1000", "--output-tokens", "500",
        "--asset", "GPT", "--lot-rate-bps", "6000", "--fee-bps", "500", "--twap", "CLD=0.004", "--twap", "GPT=3.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "the USDC price at the lot's 60 % of list plus a 500 bps fee, converted at GPT's TWAP" in result.output
    assert last_line(result.output) == "0.00189"  # $0.006615 at $3.50 a GPT; CLD's TWAP plays no part


def test_usage_cost__catalog_override__used(tmp_path, monkeypatch):
    path = tmp_path / "catalog.toml"
    path.write_text(
        '[models."house"]\nprovider = "meta"\ninput_usd_micro_per_1k = 89100\noutput_usd_micro_per_1k = 0\n'
    )
    monkeypatch.setenv("PROMPTEX_MODEL_CATALOG", str(path))
    assert last_line(cost("--model", "house", "--input-tokens", "2000").output) == "2"  # $0.1782 at $0.0891 per LLM


@pytest.mark.parametrize(
    "args, text",
    [
        (("--model", "no-such-model", "--input-tokens", "1"), "unknown model 'no-such-model'"),
        (("--model", "gpt-4o", "--input-tokens", "-5"), "--input-tokens must be a non-negative number"),
        (("--model", "gpt-4o", "--output-tokens", "1.5"), "--output-tokens must be a whole number"),
        (("--rate", "3", "--tokens", "-1"), "--tokens must be a non-negative number"),
        (("--rate", "-3", "--tokens", "1"), "--rate must be a non-negative number"),
        (("--rate", "three", "--tokens", "1"), "--rate must be a number"),
        (("--rate", "3", "--tokens", "1", "--asset", "DOGE"), "unknown asset 'DOGE'"),
        (("--model", "gpt-4o", "--asset", "DOGE"), "unknown asset 'DOGE'"),
        (("--model", "gpt-4o", "--asset", "CLD"), "TWAP: need"),
        (("--model", "gpt-4o", "--asset", "USDC", "--lot-rate-bps", "0"), "rate must be 1..10000"),
        (("--model", "gpt-4o", "--rate", "3"), "either --model"),
        ((), "either --model"),
        (("--rate", "3"), "--rate needs --tokens"),
        (("--model", "gpt-4o", "--twap", "CLD"), "--twap takes SYMBOL=USDC_PER_TOKEN"),
    ],
)
def test_usage_cost__user_error__one_line_and_exit_1(args, text):
    assert_one_line_error(cost(*args), text)


def test_usage_cost__malformed_catalog__one_line_error(tmp_path, monkeypatch):
    path = tmp_path / "catalog.toml"
    path.write_text("[models")
    monkeypatch.setenv("PROMPTEX_MODEL_CATALOG", str(path))
    assert_one_line_error(cost("--model", "gpt-4o"), "not valid TOML")


def test_usage_cost__cache_reads_and_writes__each_at_its_catalog_rate():
    # Sonnet 4.5 in CLD: 100 plain × $3 + 600 read × $0.30 + 300 written × $3.75 + 500 out × $15 per million
    # = $0.009105 list, ÷ CLD's face value $0.004218.
    result = cost(
        "--model", "claude-sonnet-4-5", "--input-tokens", "1000", "--output-tokens", "500",
        "--cache-read-tokens", "600", "--cache-write-tokens", "300",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "$0.009105 list" in result.output
    assert last_line(result.output) == "2.15860597439544808"


def test_usage_cost__cached_tokens_beyond_the_input__one_line_error():
    result = cost("--model", "claude-sonnet-4-5", "--input-tokens", "10", "--cache-read-tokens", "11")
    assert_one_line_error(result, "cache reads and writes are part of the input tokens")
