"""Bearer API keys: random, shown once, stored as a SHA-256 hash.

A key is 32 random bytes (URL-safe base64) after the "px-" prefix, so a fast hash is
enough: there is nothing to brute-force that a salt would protect.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "px-"


def new_api_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The key in an `Authorization: Bearer …` header, or None."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    key = authorization[7:].strip()
    return key or None
