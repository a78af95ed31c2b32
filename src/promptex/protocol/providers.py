"""The provider tokens PROMPTEX deploys, with their initial USD face values."""

from dataclasses import dataclass


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

# USDC units (USD micro-units) per whole token at which a local market's pools open:
# the issue's reference prices, which are also the tokens' initial face values.
REFERENCE_PRICES = {token.symbol: token.face_value_usd_micro for token in PROVIDER_TOKENS}
