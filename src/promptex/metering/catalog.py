"""The model catalog: model id → provider and list price per 1,000 tokens.

A model may also list the prices of its prompt cache: tokens read from it
(`cache_read_usd_micro_per_1k`), written to it (`cache_write_usd_micro_per_1k`: Anthropic's
five-minute writes) and written with a one-hour lifetime (`cache_write_1h_usd_micro_per_1k`).
A rate not listed is the input rate: cached tokens are then charged as any input token.

The default catalog is `catalog.toml` beside this module; a file of the same
shape given by path (setting `model_catalog`) replaces it whole.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_CATALOG = "catalog.toml"


class CatalogError(ValueError):
    """A catalog file that cannot be read or is malformed."""


class UnknownModel(LookupError):
    """A model id that the catalog does not list."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


CACHE_RATES = ("cache_read_usd_micro_per_1k", "cache_write_usd_micro_per_1k", "cache_write_1h_usd_micro_per_1k")


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


@dataclass(frozen=True)
class Catalog:
    models: Mapping[str, ModelPrice]
    source: str

    def price(self, model: str) -> ModelPrice:
        try:
            return self.models[model]
        except KeyError:
            raise UnknownModel(f"unknown model {model!r} (not in the catalog {self.source})") from None

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

    unknown = set(fields) - {"provider", "input_usd_micro_per_1k", "output_usd_micro_per_1k", *CACHE_RATES}
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    cache = {key: rate(key) for key in CACHE_RATES if key in fields}
    return ModelPrice(model, provider, rate("input_usd_micro_per_1k"), rate("output_usd_micro_per_1k"), **cache)
