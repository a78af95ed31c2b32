"""Metering: the model catalog and the arithmetic of a message's cost. Pure: no I/O
beyond reading a catalog file, no database, no chain."""

from promptex.metering.assets import ASSETS, CREDIT_SYMBOL, Asset, UnknownAsset, asset, provider_token
from promptex.metering.catalog import Catalog, CatalogError, ModelPrice, UnknownModel, load_catalog, parse_catalog
from promptex.metering.pricing import (
    PricingError,
    Rates,
    exact_cost,
    exact_usage_cost,
    flat_rates,
    largest_output,
    list_rates,
    message_cost,
    provider_token_rates,
    rates_for,
    split_usdc_charge,
    upper_bound,
    usage_cost,
    usdc_rates,
    usdc_to_token_rates,
    within_bounds,
)
from promptex.metering.tokens import TokenUsage, anthropic_usage

__all__ = [
    "ASSETS",
    "CREDIT_SYMBOL",
    "Asset",
    "Catalog",
    "CatalogError",
    "ModelPrice",
    "PricingError",
    "Rates",
    "TokenUsage",
    "UnknownAsset",
    "UnknownModel",
    "anthropic_usage",
    "asset",
    "exact_cost",
    "exact_usage_cost",
    "flat_rates",
    "list_rates",
    "largest_output",
    "load_catalog",
    "message_cost",
    "parse_catalog",
    "provider_token",
    "provider_token_rates",
    "rates_for",
    "split_usdc_charge",
    "upper_bound",
    "usage_cost",
    "usdc_rates",
    "usdc_to_token_rates",
    "within_bounds",
]
