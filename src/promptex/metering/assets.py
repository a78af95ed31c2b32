"""The assets a request can be paid in, by symbol, with their decimals.

Decimals come from `promptex.protocol.units`, the one place that states them:
provider tokens have 18 decimals, USDC has 6. `CREDIT` stands for any 18-decimal
credit token when a rate is priced without naming one.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptex.protocol.providers import PROVIDER_TOKENS, ProviderToken
from promptex.protocol.units import TOKEN_DECIMALS, USDC_DECIMALS, USDC_SYMBOL

CREDIT_SYMBOL = "CREDIT"


class UnknownAsset(ValueError):
    """An asset symbol that PROMPTEX does not know."""


@dataclass(frozen=True)
class Asset:
    symbol: str
    decimals: int

    @property
    def unit(self) -> int:
        """Smallest units per whole unit."""
        return int(10**self.decimals)


ASSETS: dict[str, Asset] = {
    USDC_SYMBOL: Asset(USDC_SYMBOL, USDC_DECIMALS),
    CREDIT_SYMBOL: Asset(CREDIT_SYMBOL, TOKEN_DECIMALS),
    **{token.symbol: Asset(token.symbol, TOKEN_DECIMALS) for token in PROVIDER_TOKENS},
}


def asset(symbol: str) -> Asset:
    """The asset with this symbol (case-insensitive)."""
    try:
        return ASSETS[symbol.upper()]
    except KeyError:
        known = ", ".join(sorted(ASSETS))
        raise UnknownAsset(f"unknown asset {symbol!r} (known: {known})") from None


def provider_token(provider: str) -> ProviderToken:
    """The provider token of a provider named as in the catalog, e.g. "anthropic" → CLD."""
    for token in PROVIDER_TOKENS:
        if token.provider.lower() == provider.lower():
            return token
    raise UnknownAsset(f"no provider token for provider {provider!r}")


def token_by_symbol(symbol: str) -> ProviderToken | None:
    """The provider token with this symbol, or None for USDC, CREDIT and unknown symbols."""
    for token in PROVIDER_TOKENS:
        if token.symbol == symbol.upper():
            return token
    return None
