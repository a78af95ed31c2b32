"""Envelope encryption of upstream secrets (AES-256-GCM, `cryptography`).

Each secret is sealed with its own random data key; the data key is wrapped by a
master key named by an id. Rotation adds a new master key and re-wraps the data keys
(the secrets themselves are not re-encrypted). Master keys come from the environment
(PROMPTEX_GATEWAY_MASTER_KEY, base64 of 32 bytes) or from a file of `id:base64` lines
(the last line is the current key); a missing file is created with one fresh key.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
SECRET_AAD = b"promptex:upstream-secret:v1"
WRAP_AAD = b"promptex:data-key:v1"
ENV_KEY_ID = "env"


class EnvelopeError(Exception):
    """A master key that is missing or malformed, or a sealed secret that does not open."""


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    nonce: bytes
    wrapped_key: bytes
    wrap_nonce: bytes
    key_id: str


@dataclass(frozen=True)
class MasterKeys:
    keys: dict[str, bytes]
    current: str

    def seal(self, plaintext: bytes) -> Sealed:
        data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, SECRET_AAD)
        wrapped, wrap_nonce = self._wrap(data_key, self.current)
        return Sealed(ciphertext, nonce, wrapped, wrap_nonce, self.current)

    def open(self, sealed: Sealed) -> bytes:
        data_key = self._unwrap(sealed)
        try:
            return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, SECRET_AAD)
        except Exception:
            raise EnvelopeError("a sealed secret does not open (tampered or wrong key)") from None

    def rewrap(self, sealed: Sealed) -> Sealed:
        """The same secret, its data key wrapped by the current master key."""
        if sealed.key_id == self.current:
            return sealed
        wrapped, wrap_nonce = self._wrap(self._unwrap(sealed), self.current)
        return Sealed(sealed.ciphertext, sealed.nonce, wrapped, wrap_nonce, self.current)

    def _wrap(self, data_key: bytes, key_id: str) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return AESGCM(self.keys[key_id]).encrypt(nonce, data_key, WRAP_AAD + key_id.encode()), nonce

    def _unwrap(self, sealed: Sealed) -> bytes:
        master = self.keys.get(sealed.key_id)
        if master is None:
            raise EnvelopeError(f"master key {sealed.key_id!r} is not configured")
        try:
            return AESGCM(master).decrypt(sealed.wrap_nonce, sealed.wrapped_key, WRAP_AAD + sealed.key_id.encode())
        except Exception:
            raise EnvelopeError(f"a data key does not unwrap with master key {sealed.key_id!r}") from None


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise EnvelopeError(f"{where}: a master key is base64 of {KEY_BYTES} bytes") from None
    if len(key) != KEY_BYTES:
        raise EnvelopeError(f"{where}: a master key is base64 of {KEY_BYTES} bytes")
    return key


def new_key_line(key_id: str | None = None) -> str:
    return f"{key_id or 'k' + secrets.token_hex(4)}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def load_master_keys(env_key: str | None, path: Path, *, create: bool = True) -> MasterKeys:
    """The master keys: from the file (if it exists or may be created) plus the
    environment's key, which is then the current one."""
    keys: dict[str, bytes] = {}
    current = ""
    if not path.exists() and env_key is None and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_key_line() + "\n")
    if path.exists():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            key_id, sep, text = line.partition(":")
            if not sep or not key_id:
                raise EnvelopeError(f"{path}:{n}: expected id:base64key")
            keys[key_id] = _decode(text, f"{path}:{n}")
            current = key_id
    if env_key is not None:
        keys[ENV_KEY_ID] = _decode(env_key, "PROMPTEX_GATEWAY_MASTER_KEY")
        current = ENV_KEY_ID
    if not current:
        raise EnvelopeError(f"no master key: set PROMPTEX_GATEWAY_MASTER_KEY or write {path}")
    return MasterKeys(keys, current)


def add_master_key(path: Path) -> str:
    """Append a fresh master key to the file (it becomes current); returns its id."""
    line = new_key_line()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(line + "\n")
    return line.partition(":")[0]
