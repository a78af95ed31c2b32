"""Each answer checked before the next voucher is signed: its price × tokens exactly, its
token counts within the bounds its request and its own text give.

No tokenizer ships offline (tiktoken downloads its vocabularies), so a token count is
checked against bounds the gateway's own request parser computes (`gateway.requests`):

- input tokens ≥ the prompt's words + 3 per chat message (no BPE token spans a space), and
  ≤ the prompt's UTF-8 bytes + 4 per message + 3 (no token is shorter than a byte);
- visible output tokens (output minus reported reasoning) ≤ the UTF-8 bytes of the
  answer's text (its strings, not its JSON syntax) plus a frame once per answer, and its
  request's predicted output (`metering.produced`: the gateway charges within the same rule),
  a stream's from its events as they pass (`signer.StreamWatch`), and output tokens ≤ the
  request's own max_tokens when it named one.

That is the stated tolerance: within these bounds a dishonest count goes unseen, so the
buyer can lose at most the hold of each lane plus the difference between the bounds
and the true counts. Reasoning tokens cannot be seen at all: only the hold bounds them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from promptex import metering
from promptex.gateway.adapters import CHAT, COMPLETIONS, EMBEDDINGS, anthropic_usage_of, cache_marks, openai_usage
from promptex.gateway.errors import GatewayError
from promptex.gateway.messages import asks_reasoning, may_reason, validate_messages
from promptex.gateway.requests import prompt_floor, validate
from promptex.gateway.responses import RESPONSES, validate_responses
from promptex.metering import TokenUsage
from promptex.metering.assets import token_by_symbol
from promptex.metering.produced import MESSAGES, unshown_output, visible_limit, visible_output
from promptex.protocol.units import BPS, money_exact

ENDPOINTS = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/messages": MESSAGES,
    "/v1/responses": RESPONSES,
}
log = logging.getLogger("promptex.buyerside")
PER_MILLION = 1_000  # /v1/models prices are per million tokens; rates are per 1,000


class AnswerRefused(Exception):
    """An answer outside what its request allows: signing stops, with this reason."""


@dataclass(frozen=True)
class Bounds:
    """What a request's body allows an honest answer to report."""

    model: str
    input_floor: int
    input_bound: int
    output_limit: int | None  # the request's own max_tokens, if it named one
    # Whether the request marks any of its prompt for the prompt cache (`cache_control`), and
    # for an hour (`"ttl": "1h"`): a provider writes to its cache only what a request marks,
    # so an answer reporting cache writes (priced above input: 1.25×, an hour's 2×) for a
    # request that marked none is refused (`check_counts`).
    cache_writes: bool = False
    cache_1h: bool = False
    # Upper bounds of the prompt's tokens up to its last mark and last hour's mark (None: the
    # whole prompt): no provider writes more than the prefix a mark ends (`adapters.cache_marks`).
    cache_prefix: int | None = None
    cache_prefix_1h: int | None = None
    # The UTF-8 bytes of a chat request's predicted output (OpenAI's Predicted Outputs,
    # `prediction.content`): its tokens the answer did not use are billed among the output
    # tokens (`rejected_prediction_tokens`) and never relayed, so the visible output may
    # exceed the answer's bytes by at most them. Left out, an honest predicted edit whose
    # answer rewrote most of the prediction stopped signing. And its longest stop sequence's
    # bytes (`produced.stop_bytes`: generated, billed, not relayed) and a Messages request's
    # thinking budget (`produced.thinking_budget`: Claude 4 shows a summary of its thinking,
    # billed whole). Together: `produced.unshown_output`.
    unshown_output: int = 0
    # False: the model never reasons (the local catalog's `reasoning = false`, `RateBook.reasons`):
    # reasoning tokens reported for it are visible output, bounded by the answer's bytes, as
    # the gateway charges them (`Gateway.bounded`). Before, a gateway claiming 994 of 1,000
    # output tokens as reasoning for "Sunny." on gpt-4o passed (6 visible).
    reasoning: bool = True


def bounds(endpoint: str, body: dict[str, Any], allowances: metering.ImageAllowances | None = None) -> Bounds:
    """A request's token bounds (raises ValueError for a body the gateway would refuse): the
    gateway's own, a chat request's images held at the model's image allowance (what the
    gateway advertises, `RateBook.image_tokens`; None: the default)."""
    try:
        if endpoint == RESPONSES:  # OpenAI's Responses API: instructions and input items
            model, bound, limit = validate_responses(body)
            floor = prompt_floor(RESPONSES, body)  # the gateway's own floor (its chat messages)
        elif endpoint == MESSAGES:  # Anthropic: the gateway's own bound (system, tools, images)
            model, bound, limit = validate_messages(body)
            floor = prompt_floor(CHAT, body)
        else:
            model, bound, limit = validate(endpoint, body, allowances)
            floor = prompt_floor(endpoint, body)
    except GatewayError as exc:
        raise ValueError(exc.message) from None
    return Bounds(model, floor, bound, limit, *cache_marks(body), unshown_output=unshown_output(endpoint, body))


def usage_of(endpoint: str, answer: Any) -> TokenUsage | None:
    """The usage an answer reports (OpenAI's chat or Responses shape, or Anthropic's). A chat
    or completions answer served by an Anthropic lot carries its cache writes in OpenAI's
    usage (`prompt_tokens_details.cache_creation_tokens`, the gateway's `openai_usage_json`):
    read, so that their charge is checked, and bounded by the request's marks (`check_counts`)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if endpoint == MESSAGES:
        return anthropic_usage_of(usage)
    if endpoint == RESPONSES:
        return _responses_usage(usage)
    return openai_usage(usage)


def _responses_usage(usage: Any) -> TokenUsage | None:
    """A Responses `usage` as counted (None for counts that are not non-negative integers,
    parts beyond their whole, or details that are not objects: before, details of another
    type raised AttributeError out of the answer check)."""
    if not isinstance(usage, dict) or type(usage.get("input_tokens")) is not int:
        return None
    given, produced = usage.get("input_tokens_details"), usage.get("output_tokens_details")
    if not isinstance(given, dict | None) or not isinstance(produced, dict | None):
        return None
    cached = (given or {}).get("cached_tokens") or 0
    reasoning = (produced or {}).get("reasoning_tokens") or 0
    try:
        return TokenUsage(usage["input_tokens"], usage.get("output_tokens") or 0, cache_read_tokens=cached,
                          reasoning_tokens=reasoning)  # fmt: skip
    except ValueError:
        return None


def check_counts(bound: Bounds, usage: TokenUsage, produced_bytes: int | None) -> None:
    if not bound.input_floor <= usage.input_tokens <= bound.input_bound:
        raise AnswerRefused(
            f"{usage.input_tokens} input tokens reported for a prompt of {bound.input_floor}–{bound.input_bound}"
        )
    if bound.output_limit is not None and usage.output_tokens > bound.output_limit:
        raise AnswerRefused(f"{usage.output_tokens} output tokens reported, above max_tokens {bound.output_limit}")
    visible = visible_output(usage) if bound.reasoning else usage.output_tokens
    if produced_bytes is not None and visible > visible_limit(produced_bytes, bound.unshown_output):
        unshown = bound.unshown_output
        predicted = f" and {unshown} of its prediction, stop sequence or thinking" if unshown else ""
        raise AnswerRefused(f"{visible} output tokens reported for {produced_bytes} bytes of answer{predicted}")
    # Cache writes are priced above input (Anthropic: 1.25×, an hour's 2×) and a provider
    # writes only what the request marked: reported for a request that marked none (or none
    # for an hour), every answer's input could be charged up to twice, every time.
    if usage.cache_write_tokens and not bound.cache_writes:
        raise AnswerRefused(
            f"{usage.cache_write_tokens} cache write tokens reported for a request that marks no cache_control"
        )
    if usage.cache_write_1h_tokens and not bound.cache_1h:
        raise AnswerRefused(
            f"{usage.cache_write_1h_tokens} one-hour cache write tokens reported for a request that asks no 1h ttl"
        )
    for writes, prefix, what in (
        (usage.cache_write_tokens, bound.cache_prefix, "cache write tokens"),
        (usage.cache_write_1h_tokens, bound.cache_prefix_1h, "one-hour cache write tokens"),
    ):
        if prefix is not None and writes > prefix:
            raise AnswerRefused(f"{writes} {what} reported, beyond the {prefix} its request's marks can write")


def check_cost(rates: metering.Rates, usage: TokenUsage, cost_units: int) -> None:
    expected = metering.usage_cost(rates, usage)
    if cost_units != expected:
        raise AnswerRefused(
            f"charged {money_exact(cost_units, rates.asset)} for {usage.input_tokens} input + "
            f"{usage.output_tokens} output tokens; the rate gives {money_exact(expected, rates.asset)}"
        )


class RateBook:
    """The rates this side expects per (model, asset): the gateway's advertised ones
    (`/v1/models` pricing), exact (a price its 12 decimals per million tokens do not give, the
    gateway also gives as a fraction: `_exact`); and
    the image allowance per model a chat request's input is bounded by (`image_tokens`), as
    the gateway advertises it (else the local catalog's)."""

    def __init__(
        self,
        rates: dict[tuple[str, str], metering.Rates] | None = None,
        catalog: metering.Catalog | None = None,
        images: dict[str, metering.ImageTokens] | None = None,
        listed: frozenset[str] = frozenset(),
        at_bps: dict[tuple[str, str], int] | None = None,
        lots: dict[str, dict[int, int]] | None = None,
        providers: dict[str, str] | None = None,
    ) -> None:
        self.rates = dict(rates or {})
        self.catalog = catalog
        self.images = dict(images or {})  # advertised by the gateway (`/v1/models` "image_tokens")
        self.listed = listed  # the models the gateway listed (those it advertised none for: the default)
        # The listed lots' rate (basis points of list price) the advertised rates are at, per
        # (model, asset), and each model's listed lots → their rates (`/v1/models` "lots"):
        # a charge names its lot and rate (`charges.LOT_RATE`), checked at `at(…, rate)`.
        self.at_bps = dict(at_bps or {})
        self.lots = {model: dict(by_id) for model, by_id in (lots or {}).items()}
        self.providers = dict(providers or {})  # each model's provider (`/v1/models` "owned_by")

    def provider(self, model: str) -> str | None:
        """`model`'s provider: as /v1/models says it ("owned_by"), else the local catalog's."""
        said = self.providers.get(model)
        if said is not None:
            return said
        price = self.catalog.models.get(model) if self.catalog is not None else None
        return None if price is None else price.provider

    def own_token(self, model: str, asset: str) -> str | None:
        """`model`'s own provider token when `asset` is ANOTHER provider's (a Claude model paid
        in GPT: converted at a TWAP, not built in signed mode, `errors.SIGNED_CROSS_TOKEN`);
        else None (USDC, its own token, or a provider this side does not know)."""
        provider = self.provider(model)
        if provider is None or token_by_symbol(asset) is None:
            return None
        try:
            own = metering.provider_token(provider).symbol
        except metering.UnknownAsset:
            return None
        return own if own != asset.upper() else None

    def get(self, model: str, asset: str) -> metering.Rates | None:
        return self.rates.get((model, asset.upper()))

    def at(self, model: str, asset: str, rate_bps: int) -> metering.Rates | None:
        """What a listed lot at `rate_bps` charges `model` in `asset`: the advertised rates
        scaled from the rate they are at (every rate is list × the lot's rate × a factor of
        the asset: `metering.rates_for`); None when the gateway said no rate for them."""
        advertised, basis = self.get(model, asset), self.basis(model, asset)
        if advertised is None or basis is None:
            return None
        return advertised if rate_bps == basis else advertised.scaled(advertised.asset, Fraction(rate_bps, basis))

    def basis(self, model: str, asset: str) -> int | None:
        """The listed lots' rate the advertised rates of `model` in `asset` are at (None: the
        gateway said none — one price, a tokenized lot's or a gateway's without lots)."""
        return self.at_bps.get((model, asset.upper()))

    def highest(self, model: str) -> int | None:
        """The highest rate of the listed lots the gateway listed for `model` (None: none)."""
        rates = self.lots.get(model)
        return max(rates.values()) if rates else None

    def lot_rate(self, model: str, lot: int) -> int | None:
        """The rate /v1/models gave listed lot `lot` of `model` (None: a lot it did not list)."""
        return self.lots.get(model, {}).get(lot)

    def list_price(self, model: str, asset: str) -> metering.Rates | None:
        """What `model` costs in `asset` at list price by this book (the advertised rates when
        the gateway said no rate they are at)."""
        return self.at(model, asset, BPS) or self.get(model, asset)

    def adding(self, later: RateBook) -> RateBook:
        """This book with what `later` prices that it does not (a model or asset first listed
        since): from then on held to that price as to the opening one (`not_above`; review s17:
        a model first listed after the proxy opened could be raised 10× by the next read)."""
        rates = {**later.rates, **self.rates}
        at_bps = {key: bps for key, bps in later.at_bps.items() if key not in self.rates} | self.at_bps
        lots = {**later.lots, **self.lots}
        return RateBook(
            rates, self.catalog, self.images, self.listed, at_bps, lots, {**self.providers, **later.providers}
        )

    def not_above(self, opened: RateBook) -> RateBook:
        """This book (a later read of /v1/models) with every (model, asset) the `opened` book
        priced kept at most at the list price read then: a max rate is a fraction of list price,
        so a gateway raising a model's list price later (or no longer saying which rate its
        prices are at) would raise what every later request is held and charged at
        (review s17). Such an entry keeps the opened book's rates; a new model is taken. So
        does one whose rate the `opened` book knew and this one does not say: its list price
        is not known (prices at 95 % of list, the rate dropped, were read as a lower list
        price, and a max rate of 80 % held and checked at 95 %; session 18)."""
        rates, at_bps = dict(self.rates), dict(self.at_bps)
        for (model, asset), old in opened.rates.items():
            new = self.list_price(model, asset)
            unsaid = (model, asset) in opened.at_bps and (model, asset) not in self.at_bps
            if new is None or not (unsaid or _above(new, opened.list_price(model, asset) or old)):
                continue
            log.warning("/v1/models raised %s's list price in %s since the proxy opened, or no longer says it: the "
                        "opening one is kept", model, asset)  # fmt: skip
            rates[(model, asset)] = old
            at_bps.pop((model, asset), None)
            if (model, asset) in opened.at_bps:
                at_bps[(model, asset)] = opened.at_bps[(model, asset)]
        return RateBook(rates, self.catalog, self.images, self.listed, at_bps, self.lots, self.providers)

    def image_tokens(self, model: str, default: int) -> metering.ImageTokens:
        """What the gateway holds one chat image part to `model` for: its advertised allowance
        (the hold and the input bound must be the gateway's: a lower one here refused its
        honest answers, a higher one held more than it would charge), else the local
        catalog's for a model it did not list, else `default`."""
        if model in self.images:
            return self.images[model]
        if self.catalog is not None and model not in self.listed:
            return self.catalog.image_tokens(model, default)
        return metering.ImageTokens(default, default)

    def reasons(self, model: str, endpoint: str = "", body: dict[str, Any] | None = None) -> bool:
        """Whether `model` may reason for a request to `endpoint` of `body`: the local
        catalog's `reasoning` (a model it does not list, or none: it may), and an Anthropic
        model only when the request asks it to (`messages.asks_reasoning`), as the gateway
        charges (`Gateway.bounded`)."""
        price = self.catalog.models.get(model) if self.catalog is not None else None
        if price is None:
            return True
        return may_reason(price, body is None or asks_reasoning(endpoint, body))

    def image_disagreements(self, default: int) -> list[str]:
        """The models whose image allowance the gateway advertises other than the local
        catalog lists (the gateway's is used)."""
        if self.catalog is None:
            return []
        own = {p.model for p in self.catalog if p.image_tokens is not None or p.image_tokens_low is not None}
        return [
            f"the gateway holds a {model} image for {gateway.high} tokens ({gateway.low} at low detail), the local "
            f"catalog {local.high} ({local.low}): the gateway's are used"
            for model in sorted((own & self.listed) | set(self.images))
            if (gateway := self.image_tokens(model, default)) != (local := self.catalog.image_tokens(model, default))
        ]

    @classmethod
    def from_models(cls, body: Any, catalog: metering.Catalog | None = None) -> RateBook:
        """Rates from a /v1/models answer ({"data": [{"id", "pricing": {ASSET: {"input_per_million",
        "output_per_million"}}}]}, whole units per million tokens). With the model in the
        local `catalog`, its cache rates follow at the same factor over list price (the
        pricing rule scales every rate alike), so cached prompts are checked exactly too."""
        book: dict[tuple[str, str], metering.Rates] = {}
        images: dict[str, metering.ImageTokens] = {}
        ids: set[str] = set()
        at_bps: dict[tuple[str, str], int] = {}
        lots: dict[str, dict[int, int]] = {}
        providers: dict[str, str] = {}
        data = body.get("data") if isinstance(body, dict) else None
        for model in data if isinstance(data, list) else ():
            if not (isinstance(model, dict) and isinstance(model.get("id"), str)):
                continue  # not a model entry: nothing of it is read (review s17: one raised, the re-reads ended)
            ids.add(model["id"])
            if isinstance(model.get("owned_by"), str):
                providers[model["id"]] = model["owned_by"]
            advertised = _image_tokens(model.get("image_tokens"))
            if advertised is not None:
                images[model["id"]] = advertised
            listed_lots = model.get("lots")
            by_lot = {
                lot["id"]: lot["rate_bps"]
                for lot in (listed_lots if isinstance(listed_lots, list) else ())
                if isinstance(lot, dict) and _positive(lot.get("id")) and _positive(lot.get("rate_bps"), BPS)
            }
            if by_lot:
                lots[model["id"]] = by_lot
            pricing = model.get("pricing")
            for symbol, price in pricing.items() if isinstance(pricing, dict) else ():
                try:
                    unit = metering.asset(symbol).unit
                    per_1k = [_exact(price, side) * unit / PER_MILLION for side in ("input", "output")]
                except (KeyError, TypeError, ArithmeticError, ValueError, metering.UnknownAsset):  # not a price
                    continue
                rates = metering.Rates(symbol.upper(), per_1k[0], per_1k[1])
                if catalog is not None and model.get("id") in {p.model for p in catalog}:
                    listed = metering.list_rates(catalog.price(model["id"]))
                    if listed.input_per_1k:
                        factor = per_1k[0] / listed.input_per_1k
                        scaled = listed.scaled(symbol.upper(), factor)
                        if scaled.output_per_1k == per_1k[1]:
                            rates = scaled
                book[(model["id"], symbol.upper())] = rates
                if isinstance(price, dict) and _positive(price.get("rate_bps"), BPS):
                    at_bps[(model["id"], symbol.upper())] = price["rate_bps"]
        return cls(book, catalog, images, frozenset(ids), at_bps, lots, providers)


def _above(new: metering.Rates, old: metering.Rates) -> bool:
    """Whether any of `new`'s rates is above `old`'s (a cache rate of None is its input rate)."""
    pairs = [(new.input_per_1k, old.input_per_1k), (new.output_per_1k, old.output_per_1k)]
    for side in ("cache_read_per_1k", "cache_write_per_1k", "cache_write_1h_per_1k"):
        pairs.append((getattr(new, side) or new.input_per_1k, getattr(old, side) or old.input_per_1k))
    return any(a > b for a, b in pairs)


def _price(given: Any) -> Fraction:
    """A /v1/models price (whole units per million tokens, a decimal string) as a Fraction;
    ValueError for one that is no price: negative, not finite, or of more than 40 digits or an
    exponent beyond ±40 (review s17: "1e-99999999" took the proxy's event loop for minutes)."""
    value = Decimal(given)
    if not value.is_finite() or value < 0 or len(value.as_tuple().digits) > 40 or abs(value.adjusted()) > 40:
        raise ValueError(f"not a price: {str(given)[:40]!r}")
    return Fraction(value)


def _exact(price: Any, side: str) -> Fraction:
    """A /v1/models price per million tokens (`side`: "input" or "output"): the exact one the
    gateway gives as a fraction (`<side>_per_million_exact`, "500/739") when the printed one
    (`<side>_per_million`, rounded up at 12 decimals) is its rounding, else the printed one.
    So the exact price is never above the printed one, and a charge at it checks to the unit
    (before, session 18: a provider token's prices, list ÷ face value, never did)."""
    printed = _price(price[f"{side}_per_million"])
    given = price.get(f"{side}_per_million_exact")
    if not isinstance(given, str) or _FRACTION.fullmatch(given) is None:
        return printed
    numerator, denominator = (int(part) for part in given.split("/"))
    if not denominator:
        return printed
    exact = Fraction(numerator, denominator)
    rounded = -(-exact.numerator * 10**12 // exact.denominator)  # up at 12 decimals, as printed
    return exact if Fraction(rounded, 10**12) == printed else printed


_FRACTION = re.compile(r"[0-9]{1,60}/[0-9]{1,60}")  # at most 60 digits a side (as `_price`: no huge numbers)


def _positive(given: Any, most: int | None = None) -> bool:
    """Whether `given` is a positive integer (at most `most`)."""
    return type(given) is int and given > 0 and (most is None or given <= most)


def _image_tokens(given: Any) -> metering.ImageTokens | None:
    """An advertised image allowance ({"high", "low"}: positive integers, low <= high), else None."""
    if not isinstance(given, dict):
        return None
    high, low = given.get("high"), given.get("low")
    if type(high) is not int or type(low) is not int or not 0 < low <= high:
        return None
    return metering.ImageTokens(high, low)
