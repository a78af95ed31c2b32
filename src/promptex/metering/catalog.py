"""The model catalog: model id → provider and list price per 1,000 tokens.

A model may also list the prices of its prompt cache: tokens read from it
(`cache_read_usd_micro_per_1k`), written to it (`cache_write_usd_micro_per_1k`: Anthropic's
five-minute writes) and written with a one-hour lifetime (`cache_write_1h_usd_micro_per_1k`).
A rate not listed is the input rate: cached tokens are then charged as any input token.

A model may also list the most input tokens one image costs it (`image_tokens`, at any
detail) and at `"detail": "low"` (`image_tokens_low`): the tokens a request's image parts
are held and bounded for (`Catalog.image_tokens`), where a provider's per-model image
arithmetic exceeds the API's default allowance (gpt-4o-mini's image tokens are multiplied).

A model that never reasons lists `reasoning = false`: reasoning tokens an upstream reports
for it are visible output (bounded by the answer's text, `Gateway.bounded`), not tokens
no one sees.

The default catalog is `catalog.toml` beside this module; a file of the same
shape given by path (setting `model_catalog`) replaces it whole.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

DEFAULT_CATALOG = "catalog.toml"


class CatalogError(ValueError):
    """A catalog file that cannot be read or is malformed."""


class UnknownModel(LookupError):
    """A model id that the catalog does not list."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


CACHE_RATES = ("cache_read_usd_micro_per_1k", "cache_write_usd_micro_per_1k", "cache_write_1h_usd_micro_per_1k")
IMAGE_FIELDS = ("image_tokens", "image_tokens_low")
REASONING = "reasoning"


@dataclass(frozen=True)
class ImageTokens:
    """The most input tokens one image part may cost: at any detail (`high`) and at
    `"detail": "low"` (`low`, never more than `high`)."""

    high: int
    low: int

    def of(self, detail: Any) -> int:
        """An image part's allowance for the `detail` it names (only "low" is below `high`)."""
        return self.low if detail == "low" else self.high


class ImageAllowances(Protocol):
    """Where a request's image allowance per model is read: the catalog (`Catalog`), or the
    signing proxy's book of what the gateway advertises (`buyerside.answers.RateBook`)."""

    def image_tokens(self, model: str, default: int) -> ImageTokens: ...


@dataclass(frozen=True)
class ModelPrice:
    """A model's list price, in USD micro-units per 1,000 input and output tokens (and
    per 1,000 cached input tokens read or written, when the model lists them)."""

    model: str
    provider: str
    input_usd_micro_per_1k: int
    output_usd_micro_per_1k: int
    cache_read_usd_micro_per_1k: int | None = None
    cache_write_usd_micro_per_1k: int | None = None
    cache_write_1h_usd_micro_per_1k: int | None = None
    image_tokens: int | None = None  # the most input tokens one image costs (any detail)
    image_tokens_low: int | None = None  # ... at "detail": "low"
    reasoning: bool = True  # False: the model never reasons (its reported reasoning is visible output)


@dataclass(frozen=True)
class Catalog:
    models: Mapping[str, ModelPrice]
    source: str

    def price(self, model: str) -> ModelPrice:
        try:
            return self.models[model]
        except KeyError:
            raise UnknownModel(f"unknown model {model!r} (not in the catalog {self.source})") from None

    def image_tokens(self, model: str, default: int) -> ImageTokens:
        """What one image part of a request to `model` is held and bounded for: the model's
        listed allowance, else `default` (the API's own: an unknown model's too, refused
        later as unknown); at "detail": "low" its low allowance where listed."""
        price = self.models.get(model)
        high = price.image_tokens if price is not None and price.image_tokens is not None else default
        low = price.image_tokens_low if price is not None and price.image_tokens_low is not None else high
        return ImageTokens(high, min(low, high))

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)


def load_catalog(path: Path | None = None) -> Catalog:
    """The catalog at `path`, or the one shipped with PROMPTEX when `path` is None."""
    if path is None:
        text = resources.files("promptex.metering").joinpath(DEFAULT_CATALOG).read_text(encoding="utf-8")
        return parse_catalog(text, source=f"promptex.metering/{DEFAULT_CATALOG}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read the model catalog {path}: {exc.strerror or exc}") from None
    return parse_catalog(text, source=str(path))


def parse_catalog(text: str, source: str = "<string>") -> Catalog:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"model catalog {source} is not valid TOML: {exc}") from None
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise CatalogError(f'model catalog {source} has no [models."<id>"] tables')
    return Catalog({model: _entry(model, fields, source) for model, fields in models.items()}, source)


def _entry(model: str, fields: Any, source: str) -> ModelPrice:
    where = f"model catalog {source}, model {model!r}"
    if not isinstance(fields, dict):
        raise CatalogError(f"{where}: expected a table")
    provider = fields.get("provider")
    if not isinstance(provider, str) or not provider:
        raise CatalogError(f"{where}: provider must be a non-empty string")

    def rate(key: str) -> int:
        value = fields.get(key)
        if type(value) is not int or value < 0:
            raise CatalogError(f"{where}: {key} must be a non-negative integer (USD micro-units per 1,000 tokens)")
        return value

    def tokens(key: str) -> int:
        value = fields.get(key)
        if type(value) is not int or value <= 0:
            raise CatalogError(f"{where}: {key} must be a positive integer (input tokens per image)")
        return value

    known = {"provider", "input_usd_micro_per_1k", "output_usd_micro_per_1k", *CACHE_RATES, *IMAGE_FIELDS, REASONING}
    unknown = set(fields) - known
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    cache = {key: rate(key) for key in CACHE_RATES if key in fields}
    images = {key: tokens(key) for key in IMAGE_FIELDS if key in fields}
    high, low = images.get("image_tokens"), images.get("image_tokens_low")
    if high is not None and low is not None and low > high:
        raise CatalogError(f"{where}: image_tokens_low must not exceed image_tokens")
    reasoning = fields.get(REASONING, True)
    if not isinstance(reasoning, bool):
        raise CatalogError(f"{where}: {REASONING} must be true or false")
    return ModelPrice(
        model,
        provider,
        rate("input_usd_micro_per_1k"),
        rate("output_usd_micro_per_1k"),
        **cache,
        **images,
        reasoning=reasoning,
    )
