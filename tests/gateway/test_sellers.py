"""Seller capacity: verified keys, sealed secrets, master-key rotation, attestations."""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from promptex.gateway.routing import LotRegistry
from promptex.gateway.schema import lots
from promptex.gateway.sellers import Capacity, CapacityRefused, add_capacity
from promptex.metering import load_catalog
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED
from promptex.sealing.envelope import EnvelopeError, add_master_key, load_master_keys

from .conftest import CATALOG, SELLER_KEY, Fake, Harness

SELLER = "0x" + "11" * 20


def capacity(fake: Fake, **changes: object) -> Capacity:
    fields: dict[str, object] = {
        "provider": "openai",
        "api": "openai",
        "base_url": fake.url,
        "api_key": SELLER_KEY,
        "face_value_usd_micro": 50_000_000,
        "kind": "listed",
        "rate_bps": 6000,
        "expires_at": int(time.time()) + 30 * 86_400,
        "seller": SELLER,
        "resale_permitted": True,
    }
    fields.update(changes)
    return Capacity(**fields)  # type: ignore[arg-type]


def test_add_capacity__valid_key__verified_sealed_and_attested(gw: Harness, fake: Fake) -> None:
    lot_id, attestation = add_capacity(gw.store, gw.keys, load_catalog(CATALOG), capacity(fake), int(time.time()))
    assert fake.config.requests == 1  # one minimal verification call
    with gw.ledger.engine.connect() as conn:
        stored = conn.execute(select(lots).where(lots.c.id == lot_id)).one()._mapping
    assert SELLER_KEY.encode() not in b"".join(v for v in stored.values() if isinstance(v, bytes))
    assert gw.keys.open(gw.store.lots()[0].sealed) == SELLER_KEY.encode()
    assert attestation["kind"] == KIND_LISTED and attestation["rate_bps"] == 6000
    assert attestation["token"] == "GPT" and attestation["face_value"] == 50_000_000


def test_add_capacity__tokenized__attested_without_rate(gw: Harness, fake: Fake) -> None:
    _, attestation = add_capacity(
        gw.store, gw.keys, load_catalog(CATALOG), capacity(fake, kind="tokenized"), int(time.time())
    )
    assert (attestation["kind"], attestation["rate_bps"]) == (KIND_TOKENIZED, 0)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"api_key": "sk-fake-wrong"}, "refused the API key"),
        ({"resale_permitted": False}, "permits resale"),
        ({"rate_bps": 0}, "rate"),
        ({"expires_at": 1}, "at least 7 days"),
        ({"expires_at": int(time.time()) + 6 * 86_400}, "at least 7 days"),
        ({"face_value_usd_micro": 0}, "positive"),
    ],
)
def test_add_capacity__bad_key_or_terms__refused_and_nothing_stored(
    gw: Harness, fake: Fake, changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(CapacityRefused, match=reason) as refused:
        add_capacity(gw.store, gw.keys, load_catalog(CATALOG), capacity(fake, **changes), int(time.time()))
    assert "sk-fake" not in str(refused.value)
    assert gw.store.lots() == []


def test_rotate_master_key__rewrapped__old_key_no_longer_needed(gw: Harness, fake: Fake, tmp_path: Path) -> None:
    add_capacity(gw.store, gw.keys, load_catalog(CATALOG), capacity(fake), int(time.time()), verify=False)
    path = gw.settings.gateway_master_key_file
    old_id = gw.keys.current
    new_id = add_master_key(path)
    rotated = load_master_keys(None, path)
    assert rotated.current == new_id and gw.store.rewrap_secrets(rotated) == 1
    only_new = load_master_keys(None, path).keys[new_id]
    path.write_text(f"{new_id}:{base64.b64encode(only_new).decode()}\n")
    registry = LotRegistry(gw.store, load_master_keys(None, path), lambda: int(time.time()), gw.ledger.lot_capacities)
    registry.refresh()
    assert [lot.secret for lot in registry.candidates("openai", "listed")] == [SELLER_KEY]
    assert old_id not in load_master_keys(None, path).keys


def test_open_sealed_secret__wrong_master_key__refused(gw: Harness, fake: Fake, tmp_path: Path) -> None:
    add_capacity(gw.store, gw.keys, load_catalog(CATALOG), capacity(fake), int(time.time()), verify=False)
    other = load_master_keys(base64.b64encode(secrets.token_bytes(32)).decode(), tmp_path / "none.key", create=False)
    with pytest.raises(EnvelopeError):
        other.open(gw.store.lots()[0].sealed)


def test_lot__repr__never_shows_the_secret(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    lots_seen = gw.gateway.registry.candidates("openai", "listed")
    assert SELLER_KEY not in repr(lots_seen) and SELLER_KEY not in repr(capacity(fake))
