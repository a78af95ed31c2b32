"""The provider tokens PROMPTEX deploys, with their initial USD face values."""

from dataclasses import dataclass

USDC_SYMBOL = "USDC"
USDC_DECIMALS = 6
TOKEN_DECIMALS = 18  # every provider token (and any other PROMPTEX credit token)
USD_MICRO = 10**USDC_DECIMALS  # USD micro-units per dollar; equal to USDC's smallest unit
TOKEN_UNIT = 10**TOKEN_DECIMALS


@dataclass(frozen=True)
class ProviderToken:
    symbol: str
    name: str
    provider: str
    face_value_usd_micro: int  # USD micro-units per whole token


PROVIDER_TOKENS: tuple[ProviderToken, ...] = (
    ProviderToken("CLD", "PROMPTEX Claude Credit", "Anthropic", 4_218),  # $0.004218
    ProviderToken("GPT", "PROMPTEX GPT Credit", "OpenAI", 3_695_000),  # $3.695
    ProviderToken("GEM", "PROMPTEX Gemini Credit", "Google", 1_243_000),  # $1.243
    ProviderToken("LLM", "PROMPTEX Llama Credit", "Meta", 89_100),  # $0.0891
)
