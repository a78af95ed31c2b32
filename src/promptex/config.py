"""All PROMPTEX settings in one model. Every setting has a default that runs the
local demo; each can be changed with an environment variable PROMPTEX_<NAME>."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTEX_")

    # Where deployments/<network>.json and the ABIs are written and read.
    deployments_dir: Path = Path("deployments")


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings()
