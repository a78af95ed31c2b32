"""Seller onboarding from the browser: the one tokenize/list path of `promptex.sellers`
(the same as `promptex seller add-capacity`).

The seller's upstream key travels once, over the dashboard's own origin, to this server:
it is verified with one minimal upstream call, sealed with the gateway's master key and
never echoed. Whatever would be refused (terms, key, a bond not approved, open_lot's
simulation) is said before anything is stored or sent; the lot is routed only once the
chain has opened it. The caller's API key must belong to the account the seller's
wallet is bound to (see `app.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import requests

from promptex import metering
from promptex.chain.deployments import Deployment
from promptex.gateway.routing import KINDS
from promptex.sealing.envelope import MasterKeys
from promptex.sellers import APIS, Capacity, SellerChain, SellerStore, attestation
from promptex.sellers import Onboarding as Onboarding_


class BadCapacity(ValueError):
    """A request the seller can fix: the message says how."""


def _integer(body: dict[str, Any], name: str, what: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadCapacity(f"give {what} ({name}, an integer)")
    try:
        number = int(value)
    except ValueError:
        raise BadCapacity(f"{name} must be an integer, not {value!r}") from None
    if number < 0:  # every amount and time in the form (a negative bond was a 500)
        raise BadCapacity(f"{name} cannot be negative")
    return number


def _text(body: dict[str, Any], name: str, what: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadCapacity(f"give {what} ({name})")
    return value.strip()


def allowed_base_url(base_url: str, allowed: Sequence[str]) -> str:
    """`base_url` if it is one of the dashboard's provider URLs (see
    `dashboard_seller_base_urls`: the server calls it), else BadCapacity."""
    if base_url.rstrip("/") not in {url.rstrip("/") for url in allowed}:
        listed = ", ".join(allowed) or "none are configured"
        raise BadCapacity(
            f"this dashboard onboards capacity only from these provider URLs: {listed} "
            "(the operator can add others with `promptex seller add-capacity`)"
        )
    return base_url


def capacity_from(body: dict[str, Any], seller: str, allowed_base_urls: Sequence[str]) -> Capacity:
    """The browser's form as a Capacity; amounts arrive in their smallest units."""
    provider = _text(body, "provider", "the provider").lower()
    api = body.get("api") or ("anthropic" if provider == "anthropic" else "openai")
    if api not in APIS:
        raise BadCapacity(f"api is one of {', '.join(APIS)}")
    kind = _text(body, "kind", "the kind")
    if kind not in KINDS:
        raise BadCapacity(f"kind is one of {', '.join(KINDS)}")
    return Capacity(
        provider=provider,
        api=api,
        base_url=allowed_base_url(_text(body, "base_url", "the provider's base URL"), allowed_base_urls),
        api_key=_text(body, "api_key", "the API key to sell capacity from"),
        face_value_usd_micro=_integer(body, "face_value_usd_micro", "the face value in micro-USD"),
        kind=kind,
        rate_bps=_integer(body, "rate_bps", "the rate in basis points of list") if kind == "listed" else 0,
        expires_at=_integer(body, "expires_at", "the expiry in unix seconds"),
        seller=seller,
        resale_permitted=body.get("declare_resale_permitted") is True,
        bond_usdc=_integer(body, "bond", "the USDC bond in micro-USDC"),
    )


@dataclass
class Onboarding:
    """Opens lots for sellers on the one tokenize/list path (`promptex.sellers`), with the
    dashboard's attestor key (None: it cannot). The seller approves the bond from its own
    wallet in the browser; a bond not approved is refused in one line before anything is
    stored or sent."""

    store: SellerStore
    keys: Callable[[], MasterKeys | None]  # the gateway's master keys, read when needed
    catalog: metering.Catalog
    rpc_url: str
    attestor_key: str | None
    posting_margin: int = 300
    tx_timeout: float = 120.0

    def __post_init__(self) -> None:
        # One attestor key, one nonce sequence: open lots one at a time.
        self._lock = threading.Lock()

    def add(self, deployment: Deployment, capacity: Capacity) -> dict[str, Any]:
        if self.attestor_key is None:
            raise PermissionError(
                "this dashboard has no attestor key (PROMPTEX_ATTESTOR_PRIVATE_KEY), so it cannot open lots: "
                "use `promptex seller add-capacity`"
            )
        keys = self.keys()
        if keys is None:
            raise PermissionError("this dashboard has no master key to seal API keys with (the gateway's)")
        try:
            chain = SellerChain(self.rpc_url, deployment, attestor_key=self.attestor_key)
            onboarding = Onboarding_(
                self.store,
                chain,
                keys,
                self.catalog,
                posting_margin=self.posting_margin,
                tx_timeout=self.tx_timeout,
                approve_hint="with this page's Approve bond button (from the seller's wallet)",
            )
            with self._lock:
                opened = onboarding.add(capacity)
        except requests.RequestException:
            raise ConnectionError("the chain's node does not answer; no lot was opened") from None
        return {
            **opened.as_json(),
            "attestation": attestation(replace(capacity, bond_usdc=opened.bond_usdc)),
            "summary": opened.summary(),
        }
