"""Seller onboarding from the browser: the same path as `promptex seller add-capacity`,
with the lot opened on chain before anything is stored.

The seller's upstream key travels once, over the dashboard's own origin, to this server:
it is verified with one minimal upstream call, sealed with the gateway's master key and
never echoed. Order matters so that a refusal leaves nothing behind: terms and key are
checked, then open_lot is simulated and sent by the dashboard's attestor (a revert, e.g.
no bond approved, sends nothing), and only then is the sealed key recorded as the
gateway lot that serves it. The caller's API key must belong to the account the seller's
wallet is bound to (see `app.py`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from promptex import metering
from promptex.chain.attest import open_lot
from promptex.chain.deployments import Deployment
from promptex.gateway.routing import KINDS
from promptex.gateway.sellers import APIS, Capacity, prepare_capacity, record_capacity
from promptex.gateway.store import GatewayStore
from promptex.sealing.envelope import MasterKeys

log = logging.getLogger("promptex.dashboard.sellers")


class BadCapacity(ValueError):
    """A request the seller can fix: the message says how."""


class LotNotRecorded(RuntimeError):
    """The lot was opened on chain but its sealed key could not be stored (it cannot serve)."""


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
    """Opens lots for sellers with the dashboard's attestor key (None: it cannot)."""

    store: GatewayStore
    keys: Callable[[], MasterKeys | None]  # the gateway's master keys, read when needed
    catalog: metering.Catalog
    rpc_url: str
    attestor_key: str | None

    def __post_init__(self) -> None:
        # One attestor key, one nonce sequence: open lots one at a time.
        self._lock = threading.Lock()

    def add(self, deployment: Deployment, capacity: Capacity, now: int) -> dict[str, Any]:
        if self.attestor_key is None:
            raise PermissionError(
                "this dashboard has no attestor key (PROMPTEX_ATTESTOR_PRIVATE_KEY), so it cannot open lots: "
                "use `promptex seller add-capacity`"
            )
        keys = self.keys()
        if keys is None:
            raise PermissionError("this dashboard has no master key to seal API keys with (the gateway's)")
        att = prepare_capacity(self.catalog, capacity, now)
        with self._lock:
            try:
                opened = open_lot(self.rpc_url, deployment, self.attestor_key, att)
            except requests.RequestException:
                raise ConnectionError("the chain's node does not answer; no lot was opened") from None
        try:
            lot = record_capacity(self.store, keys, capacity, now)
            self.store.set_attestation(lot, json.dumps(att), opened.tx, chain_lot_id=opened.lot_id)
        except Exception as exc:
            log.error("lot %d opened in %s but its sealed key was not stored: %r", opened.lot_id, opened.tx, exc)
            raise LotNotRecorded(
                f"lot {opened.lot_id} was opened on chain but its key could not be stored, so it cannot serve: "
                "close it with CreditEscrow.request_close, then finalize_close"
            ) from None
        return {"lot": lot, "chain_lot_id": opened.lot_id, "tx": opened.tx, "attestation": att}
