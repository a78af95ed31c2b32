"""Seller capacity: verified keys, sealed secrets, master-key rotation, attestations; a
lot is routed only while the ledger says the chain has it open, before its route_until."""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest
from sqlalchemy import select

from promptex.gateway.routing import LotRegistry
from promptex.gateway.schema import lots
from promptex.metering import load_catalog
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, STATUS_OPEN
from promptex.protocol.units import USD_MICRO as USDC
from promptex.sealing.envelope import EnvelopeError, add_master_key, load_master_keys
from promptex.sellers import Capacity, CapacityRefused, SellerStore, attestation, check_terms
from promptex.sellers.chain import ChainLot
from promptex.sellers.manage import _remaining
from promptex.sellers.terms import probe_model, verify_key

from .conftest import CATALOG, CHAIN_LOTS, SELLER_KEY, Fake, Harness

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


def record(gw: Harness, fake: Fake, **changes: object) -> int:
    """Check, verify and record a lot as the sellers' path does before opening it."""
    cap = capacity(fake, **changes)
    check_terms(cap, int(time.time()))
    verify_key(cap, probe_model(load_catalog(CATALOG), cap.provider))
    return SellerStore(gw.ledger.engine).record_lot(gw.keys, cap, route_until=cap.expires_at, now=int(time.time()))


def test_record_lot__valid_key__verified_sealed_and_attested(gw: Harness, fake: Fake) -> None:
    lot_id = record(gw, fake)
    assert fake.config.requests == 1  # one minimal verification call
    with gw.ledger.engine.connect() as conn:
        stored = conn.execute(select(lots).where(lots.c.id == lot_id)).one()._mapping
    assert SELLER_KEY.encode() not in b"".join(v for v in stored.values() if isinstance(v, bytes))
    assert gw.keys.open(gw.store.lots()[0].sealed) == SELLER_KEY.encode()
    att = attestation(capacity(fake))
    assert att["kind"] == KIND_LISTED and att["rate_bps"] == 6000
    assert att["token"] == "GPT" and att["face_value"] == 50_000_000


def test_attestation__tokenized__without_rate(fake: Fake) -> None:
    att = attestation(capacity(fake, kind="tokenized"))
    assert (att["kind"], att["rate_bps"]) == (KIND_TOKENIZED, 0)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"api_key": "sk-fake-wrong"}, "refused the API key"),
        ({"resale_permitted": False}, "permits resale"),
        ({"rate_bps": 0}, "rate"),
        ({"expires_at": 1}, "at least 7 days"),
        ({"expires_at": int(time.time()) + 6 * 86_400}, "at least 7 days"),
        ({"face_value_usd_micro": 0}, "positive"),
        ({"kind": "tokenized", "face_value_usd_micro": 9_999_999}, r"tokenized lot's face value is at least \$10\.00"),
    ],
)
def test_record_lot__bad_key_or_terms__refused_and_nothing_stored(
    gw: Harness, fake: Fake, changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(CapacityRefused, match=reason) as refused:
        record(gw, fake, **changes)
    assert "sk-fake" not in str(refused.value)
    assert gw.store.lots() == []


def test_rotate_master_key__rewrapped__old_key_no_longer_needed(gw: Harness, fake: Fake, tmp_path: Path) -> None:
    gw.add_lot(fake)
    path = gw.settings.gateway_master_key_file
    old_id = gw.keys.current
    new_id = add_master_key(path)
    rotated = load_master_keys(None, path)
    assert rotated.current == new_id and gw.store.rewrap_secrets(rotated) == 1
    only_new = load_master_keys(None, path).keys[new_id]
    path.write_text(f"{new_id}:{base64.b64encode(only_new).decode()}\n")
    registry = LotRegistry(
        gw.store, load_master_keys(None, path), lambda: int(time.time()), gw.ledger.lot_capacities, gw.ledger.lot_states
    )
    registry.refresh()
    assert [lot.secret for lot in registry.candidates("openai", "listed")] == [SELLER_KEY]
    assert old_id not in load_master_keys(None, path).keys


def test_open_sealed_secret__wrong_master_key__refused(gw: Harness, fake: Fake, tmp_path: Path) -> None:
    gw.add_lot(fake)
    other = load_master_keys(base64.b64encode(secrets.token_bytes(32)).decode(), tmp_path / "none.key", create=False)
    with pytest.raises(EnvelopeError):
        other.open(gw.store.lots()[0].sealed)


def test_lot__repr__never_shows_the_secret(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    lots_seen = gw.gateway.registry.candidates("openai", "listed")
    assert SELLER_KEY not in repr(lots_seen) and SELLER_KEY not in repr(capacity(fake))


# ─── A lot is routed only while the chain says it is open ───────────────────


def routed(gw: Harness) -> list[int]:
    gw.refresh()
    return [lot.id for lot in gw.gateway.registry.candidates("openai", "listed")]


def test_routing__lot_recorded_not_opened__serves_nothing_moves_nothing(gw: Harness, fake: Fake) -> None:
    lot = gw.add_lot(fake, opened=False)
    account, key = gw.buyer()
    assert routed(gw) == []
    with pytest.raises(openai.APIStatusError) as refused:  # no lot of the model may serve
        gw.client(key).chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 503 and "No capacity" in refused.value.message
    assert fake.config.requests == 0
    assert gw.ledger.balance(account, "USDC").posted == 10 * USDC and gw.ledger.usage_record("x") is None
    state = gw.ledger.lot_state(lot)
    assert state is not None and state.state == "requested"


def test_routing__lot_failed_to_open__never_routed_and_says_why(gw: Harness, fake: Fake) -> None:
    lot = gw.add_lot(fake, opened=False)
    gw.ledger.fail_lot(lot, "open_lot reverted in 0xabc")
    assert routed(gw) == []
    state = gw.ledger.lot_state(lot)
    assert state is not None and state.why_not_routed(int(time.time())) == "open_lot reverted in 0xabc"


def test_routing__open_lot__routed_until_route_until_then_not(gw: Harness, fake: Fake) -> None:
    now = [int(time.time())]
    gw.now = lambda: now[0]
    gw.gateway.registry.clock = lambda: now[0]
    sellers = SellerStore(gw.ledger.engine)
    cap = capacity(fake, expires_at=now[0] + 10_000)
    lot = sellers.record_lot(gw.keys, cap, route_until=now[0] + 100, now=now[0])
    sellers.confirm_open(lot, CHAIN_LOTS + lot, now[0])
    assert routed(gw) == [lot]
    now[0] += 99
    assert routed(gw) == [lot]
    now[0] += 1  # expiry − one epoch − the posting margin: its usage must still settle
    assert routed(gw) == []


def test_routing__close_requested__not_routed_any_more(gw: Harness, fake: Fake) -> None:
    lot = gw.add_lot(fake)
    assert routed(gw) == [lot]
    gw.ledger.set_lot_chain_state(CHAIN_LOTS + lot, "closing", close_at=int(time.time()) + 1200)
    assert routed(gw) == []
    gw.ledger.set_lot_chain_state(CHAIN_LOTS + lot, "open")  # a reorg undid the close
    assert routed(gw) == [lot]
    for ended in ("closed", "expired", "slashed"):
        gw.ledger.set_lot_chain_state(CHAIN_LOTS + lot, ended)
        assert routed(gw) == []


# ─── `promptex seller lots`: what a lot has left, for a person ──────────────


def test_seller_lots_remaining__a_used_lot__never_reads_as_untouched_nor_as_more_than_is_left() -> None:
    token = "0x" + "22" * 20
    contracts = {"token:CLD": SimpleNamespace(address=token)}
    chain = SimpleNamespace(deployment=SimpleNamespace(contracts=contracts), twap=lambda token: None)  # no price yet

    def left(kind: int, capacity: int, consumed: int, unsettled_usd: int) -> str:
        lot = ChainLot(7, SELLER, token, kind, STATUS_OPEN, 0, 100 * USDC, capacity, 0, consumed, 0, 0, 0)
        return _remaining(chain, lot, unsettled_usd)  # type: ignore[arg-type]

    assert left(KIND_LISTED, 100 * USDC, 0, 0) == "$100.00"
    assert left(KIND_LISTED, 100 * USDC, 0, 500) == "$99.9995"  # $0.0005 served: read "$100.00" before
    assert left(KIND_LISTED, 100 * USDC, 2 * USDC, 1) == "$97.999999"  # drawn on chain and served since
    assert left(KIND_LISTED, 100 * USDC, 1 * USDC, 0) == "$99.00"  # whole cents: as before
    tokens = 100 * 10**18
    assert left(KIND_TOKENIZED, tokens, 0, 0) == "100.00 CLD (no price yet)"
    assert left(KIND_TOKENIZED, tokens, 0, 500) == "99.99 CLD (no price yet)"  # 99.9995 left, rounded down
