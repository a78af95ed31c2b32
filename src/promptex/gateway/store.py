"""The gateway's store, beside the ledger in the same database: API keys (hashed), seller
lots with their sealed upstream secrets (tables in `gateway.schema`, made by the
migrations). A lot's capacity is the ledger's (`lot_capacity`), opened with the lot;
`remaining_usd_micro` is what was recorded at creation and is no longer drawn down.
Usage records live in the ledger (written with each settlement); version 1's
`gateway_usage` table, if present, is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, insert, select, update

from promptex.gateway.schema import api_keys, lots
from promptex.ledger.amounts import Amount, add, ge, sub
from promptex.ledger.holds.capacity import open_lot, set_chain_lot_id
from promptex.sealing.envelope import MasterKeys, Sealed


@dataclass(frozen=True)
class ApiKey:
    id: int
    account: int
    payer: int | None
    default_asset: str | None
    budget_asset: str | None
    budget_remaining: int | None
    prefix: str

    @property
    def paying_account(self) -> int:
        """The account whose funds its requests spend: its org (`payer`), else its own."""
        return self.payer if self.payer is not None else self.account


@dataclass(frozen=True)
class Lot:
    id: int
    provider: str
    kind: str
    api: str
    base_url: str
    seller: str
    face_value_usd_micro: int
    remaining_usd_micro: int
    rate_bps: int
    expires_at: int
    created_at: int
    sealed: Sealed
    chain_lot_id: int | None = None


def _api_key(m: Any) -> ApiKey:
    return ApiKey(
        m["id"],
        m["account_id"],
        m["payer_id"],
        m["default_asset"],
        m["budget_asset"],
        m["budget_remaining"],
        m["prefix"],
    )


_KEY_BY_HASH = select(api_keys).where(api_keys.c.key_hash == bindparam("p_hash"), api_keys.c.revoked.is_(False))
_AMOUNT = bindparam("p_amount", type_=Amount())
_TAKE_BUDGET = (
    update(api_keys)
    .where(api_keys.c.id == bindparam("p_id"), ge(api_keys.c.budget_remaining, _AMOUNT))
    .values(budget_remaining=sub(api_keys.c.budget_remaining, _AMOUNT))
)
_RETURN_BUDGET = (
    update(api_keys)
    .where(api_keys.c.id == bindparam("p_id"))
    .values(budget_remaining=add(api_keys.c.budget_remaining, _AMOUNT))
)


class GatewayStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine  # its tables come from the migrations (Ledger.open runs them)

    def _write(self, stmt: Any, params: dict[str, Any]) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(stmt, params).rowcount)

    # ─── API keys ────────────────────────────────────────────────────────────

    def add_api_key(
        self,
        key_hash: str,
        prefix: str,
        account: int,
        now: int,
        *,
        payer: int | None = None,
        default_asset: str | None = None,
        budget: tuple[str, int] | None = None,
    ) -> ApiKey:
        budget_asset, budget_remaining = budget if budget else (None, None)
        values: dict[str, object] = {
            "key_hash": key_hash,
            "prefix": prefix,
            "account_id": account,
            "payer_id": payer,
            "default_asset": default_asset,
            "budget_asset": budget_asset,
            "budget_remaining": budget_remaining,
            "revoked": False,
            "created_at": now,
        }
        with self.engine.begin() as conn:
            key_id: int = conn.execute(insert(api_keys).values(values).returning(api_keys.c.id)).scalar_one()
        return ApiKey(int(key_id), account, payer, default_asset, budget_asset, budget_remaining, prefix)

    def api_key(self, key_hash: str) -> ApiKey | None:
        with self.engine.connect() as conn:
            row = conn.execute(_KEY_BY_HASH, {"p_hash": key_hash}).first()
        return None if row is None else _api_key(row._mapping)

    def key_by_id(self, key_id: int) -> ApiKey | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else _api_key(row._mapping)

    def take_key_budget(self, key_id: int, amount: int) -> bool:
        """Take `amount` off the key's budget if it covers it (one conditional UPDATE)."""
        return self._write(_TAKE_BUDGET, {"p_id": key_id, "p_amount": amount}) == 1

    def return_key_budget(self, key_id: int, amount: int) -> None:
        if amount:
            self._write(_RETURN_BUDGET, {"p_id": key_id, "p_amount": amount})

    def revoke_key(self, key_id: int) -> None:
        self._write(update(api_keys).where(api_keys.c.id == bindparam("p_id")).values(revoked=True), {"p_id": key_id})

    # ─── Lots ────────────────────────────────────────────────────────────────

    def add_lot(self, values: dict[str, Any], sealed: Sealed) -> int:
        """Record a lot and, in the same transaction, its capacity in the ledger (its face
        value: what the chain will say at open)."""
        row = {
            **values,
            "secret_ciphertext": sealed.ciphertext,
            "secret_nonce": sealed.nonce,
            "wrapped_key": sealed.wrapped_key,
            "wrap_nonce": sealed.wrap_nonce,
            "key_id": sealed.key_id,
        }
        with self.engine.begin() as conn:
            lot_id = int(conn.execute(insert(lots).values(row).returning(lots.c.id)).scalar_one())
            open_lot(
                conn, lot_id, int(values["face_value_usd_micro"]), now=int(values["created_at"]),
                chain_lot_id=values.get("chain_lot_id"),
            )  # fmt: skip
            return lot_id

    def lots(self) -> list[Lot]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(lots).order_by(lots.c.id)).all()
        return [_lot(row._mapping) for row in rows]

    def set_attestation(
        self, lot_id: int, attestation: str, tx: str | None = None, *, chain_lot_id: int | None = None
    ) -> None:
        """Record the lot's attestation and, once it is opened on chain, the transaction and
        the CreditEscrow lot id (what usage records name, so the coordinator can settle them)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(lots)
                .where(lots.c.id == bindparam("p_id"))
                .values(attestation=attestation, chain_lot_tx=tx, chain_lot_id=chain_lot_id),
                {"p_id": lot_id},
            )
            set_chain_lot_id(conn, lot_id, chain_lot_id)

    def set_chain_lot_id(self, lot_id: int, chain_lot_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(lots).where(lots.c.id == bindparam("p_id")).values(chain_lot_id=chain_lot_id), {"p_id": lot_id}
            )
            set_chain_lot_id(conn, lot_id, chain_lot_id)

    def rewrap_secrets(self, keys: MasterKeys) -> int:
        """Re-wrap every lot's data key with the current master key; returns how many changed."""
        changed = 0
        with self.engine.begin() as conn:
            for lot in [_lot(row._mapping) for row in conn.execute(select(lots)).all()]:
                fresh = keys.rewrap(lot.sealed)
                if fresh is lot.sealed:
                    continue
                conn.execute(
                    update(lots)
                    .where(lots.c.id == lot.id)
                    .values(wrapped_key=fresh.wrapped_key, wrap_nonce=fresh.wrap_nonce, key_id=fresh.key_id)
                )
                changed += 1
        return changed


def _lot(m: Any) -> Lot:
    sealed = Sealed(
        bytes(m["secret_ciphertext"]),
        bytes(m["secret_nonce"]),
        bytes(m["wrapped_key"]),
        bytes(m["wrap_nonce"]),
        m["key_id"],
    )
    return Lot(
        m["id"],
        m["provider"],
        m["kind"],
        m["api"],
        m["base_url"],
        m["seller"],
        m["face_value_usd_micro"],
        m["remaining_usd_micro"],
        m["rate_bps"],
        m["expires_at"],
        m["created_at"],
        sealed,
        m["chain_lot_id"],
    )
