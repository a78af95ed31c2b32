"""A seller's capacity before anything is stored: its terms, its upstream key (verified
with one minimal call) and the attestation that opens it on chain (the arguments of
CreditEscrow.open_lot). The secret is never logged, echoed or put in an error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import httpx

from promptex import metering
from promptex.gateway.adapters import adapter_for
from promptex.gateway.routing import KINDS, LISTED, TOKENIZED
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, MIN_LOT_VALIDITY, MIN_TOKENIZED_FACE
from promptex.protocol.units import BPS, usd_text

APIS = ("openai", "anthropic")
DECLARATION = "I declare that my agreement with {provider} permits the resale of this API capacity."


class CapacityRefused(ValueError):
    """Capacity that cannot be added, said in one line: bad terms, a key the provider does
    not accept, or what the chain would refuse (no bond approved, no attestor role).
    Nothing was stored and nothing sent."""


@dataclass(frozen=True)
class Capacity:
    provider: str  # as in the catalog: anthropic, openai, google, meta
    api: str  # openai | anthropic
    base_url: str
    api_key: str
    face_value_usd_micro: int
    kind: str  # tokenized | listed
    rate_bps: int  # listed: fraction of list price; tokenized: ignored
    expires_at: int
    seller: str  # the seller's address
    resale_permitted: bool
    bond_usdc: int = 0

    def __repr__(self) -> str:  # never the key
        return f"Capacity(provider={self.provider!r}, kind={self.kind!r}, base_url={self.base_url!r})"


def check_terms(capacity: Capacity, now: int) -> None:
    if not capacity.resale_permitted:
        raise CapacityRefused("declare that your agreement permits resale (--declare-resale-permitted)")
    if capacity.api not in APIS:
        raise CapacityRefused(f"--api is one of {', '.join(APIS)}")
    if capacity.kind not in KINDS:
        raise CapacityRefused(f"--kind is one of {', '.join(KINDS)}")
    if capacity.face_value_usd_micro <= 0:
        raise CapacityRefused("the face value must be positive")
    if capacity.kind == TOKENIZED and capacity.face_value_usd_micro < MIN_TOKENIZED_FACE:
        # The escrow refuses smaller tokenized lots: a crowd of them would hold up the draw.
        raise CapacityRefused(
            f"a tokenized lot's face value is at least {usd_text(MIN_TOKENIZED_FACE)} "
            f"(this one: {usd_text(capacity.face_value_usd_micro)}); list smaller capacity instead"
        )
    if capacity.kind == LISTED and not 0 < capacity.rate_bps <= BPS:
        raise CapacityRefused("a listed lot's rate is a fraction of list price in (0, 1]")
    if capacity.expires_at < now + MIN_LOT_VALIDITY:
        # The escrow refuses shorter lots: nearest-expiry-first routing needs time to draw them.
        raise CapacityRefused(f"a lot must be valid for at least {MIN_LOT_VALIDITY // 86_400} days")
    try:
        metering.provider_token(capacity.provider)
    except metering.UnknownAsset:
        raise CapacityRefused(f"no provider token for provider {capacity.provider!r}") from None


def probe_model(catalog: metering.Catalog, provider: str) -> str:
    """The cheapest chat model of the provider: what a key is verified with."""
    models = [p for p in catalog if p.provider.lower() == provider.lower() and p.output_usd_micro_per_1k > 0]
    if not models:
        raise CapacityRefused(f"the catalog lists no model of {provider!r}")
    return min(models, key=lambda p: (p.input_usd_micro_per_1k + p.output_usd_micro_per_1k, p.model)).model


def verify_key(capacity: Capacity, model: str, *, transport: httpx.BaseTransport | None = None) -> None:
    """One minimal upstream call (max_tokens 1) with the seller's key."""
    call = adapter_for(capacity.api).probe(capacity.base_url, capacity.api_key, model)
    try:
        with httpx.Client(timeout=30, transport=transport) as client:
            answer = client.post(call.url, content=call.content, headers=call.headers)
    except httpx.HTTPError as exc:
        raise CapacityRefused(f"cannot reach {capacity.base_url}: {type(exc).__name__}") from None
    if answer.status_code in (401, 403):
        raise CapacityRefused("the provider refused the API key")
    if answer.status_code >= 400:
        raise CapacityRefused(f"verifying the key failed: the provider answered {answer.status_code}")


def attestation(capacity: Capacity) -> dict[str, Any]:
    """The arguments of CreditEscrow.open_lot, with the provider token by symbol."""
    declaration = DECLARATION.format(provider=capacity.provider)
    return {
        "seller": capacity.seller,
        "token": metering.provider_token(capacity.provider).symbol,
        "kind": KIND_TOKENIZED if capacity.kind == TOKENIZED else KIND_LISTED,
        "face_value": capacity.face_value_usd_micro,
        "expiry": capacity.expires_at,
        "bond": capacity.bond_usdc,
        "terms_hash": "0x" + hashlib.sha3_256(declaration.encode()).hexdigest(),
        "rate_bps": capacity.rate_bps if capacity.kind == LISTED else 0,
    }
