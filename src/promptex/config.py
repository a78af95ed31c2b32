"""All PROMPTEX settings in one model. Every setting has a default that runs the
local demo; each can be changed with an environment variable PROMPTEX_<NAME>."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTEX_")

    # Where deployments/<network>.json and the ABIs are written and read.
    deployments_dir: Path = Path("deployments")

    # ─── Ledger ──────────────────────────────────────────────────────────────
    # SQLite file (zero configuration, one gateway process) or postgresql://user@host/db
    # for many gateway processes.
    ledger_url: str = "sqlite:///promptex-ledger.sqlite3"
    # Connections per process (PostgreSQL; as many again may overflow).
    ledger_pool_size: int = 10
    # How long a SQLite writer waits for the write lock before giving up.
    ledger_busy_timeout_ms: int = 30_000
    # SQLite: FULL makes every commit survive power loss; NORMAL only a process crash (faster).
    ledger_sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # The EIP-712 domain's chainId in wallet-binding messages, and how long one may be signed.
    wallet_binding_chain_id: int = 31337
    wallet_binding_ttl_seconds: int = 600

    # ─── Metering ────────────────────────────────────────────────────────────
    # A model catalog file replacing the one shipped in promptex/metering/catalog.toml.
    model_catalog: Path | None = None
    # Protocol fee on USDC-paid requests, in basis points on top of the listed lot's price.
    protocol_fee_bps: int = 500


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings()
