"""Decoding logs into named events by topic0, from the deployment's ABIs.

Events whose fields are all one-word static types (uint, int, address, bool, bytesN) —
every PROMPTEX event — are decoded by slicing words, with the same bounds checks as
eth-abi; anything else goes through eth-abi. A log that does not fit its ABI raises
LogDecodeError: the batch is not committed and the indexer stops, rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import lru_cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.abi import collapse_if_tuple
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

_WORD = re.compile(r"^(uint|int)(\d*)$|^address$|^bool$|^bytes([1-9]|[12]\d|3[0-2])$")


class LogDecodeError(ValueError):
    """A log from a followed contract that does not match that contract's ABI."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    indexed: bool
    word: Callable[[bytes], Any] | None = dataclass_field(default=None, compare=False, repr=False)  # one-word types


@dataclass(frozen=True)
class EventSpec:
    source: str  # which kind of contract: "CreditsVault", "Pool", ...
    name: str
    topic0: str  # 0x + 64 lowercase hex
    fields: tuple[Field, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(f.type for f in self.fields)})"


@dataclass(frozen=True)
class Event:
    """One decoded log, with where it is on the chain."""

    source: str
    name: str
    contract: str  # checksummed
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    args: dict[str, Any]

    @property
    def key(self) -> tuple[str, int]:
        return (self.tx_hash, self.log_index)


def event_specs(source: str, abi: Iterable[Mapping[str, Any]]) -> list[EventSpec]:
    """The non-anonymous events of an ABI."""
    specs = []
    for item in abi:
        if item.get("type") != "event" or item.get("anonymous"):
            continue
        fields = tuple(
            Field(str(i.get("name", "")), kind, bool(i.get("indexed")), _word_decoder(kind))
            for i in item["inputs"]
            for kind in [collapse_if_tuple(dict(i))]
        )
        signature = f"{item['name']}({','.join(f.type for f in fields)})"
        specs.append(EventSpec(source, str(item["name"]), "0x" + keccak(text=signature).hex(), fields))
    return specs


@lru_cache(maxsize=1 << 16)
def checksum(address_hex: str) -> str:
    return str(to_checksum_address(address_hex))


def _address(word: bytes) -> str:
    if any(word[:12]):
        raise LogDecodeError("address with dirty high bytes")
    return checksum("0x" + word[12:].hex())


def _bool(word: bytes) -> bool:
    value = int.from_bytes(word, "big")
    if value > 1:
        raise LogDecodeError(f"bool out of range: {value}")
    return bool(value)


def _word_decoder(kind: str) -> Callable[[bytes], Any] | None:
    """How to read one 32-byte word as `kind`, strictly (as eth-abi would); None when
    `kind` is not a one-word static type."""
    match = _WORD.match(kind)
    if match is None:
        return None
    if kind == "address":
        return _address
    if kind == "bool":
        return _bool
    if match.group(3):  # bytesN
        size = int(match.group(3))

        def fixed_bytes(word: bytes) -> str:
            if any(word[size:]):
                raise LogDecodeError(f"{kind} with dirty low bytes")
            return "0x" + word[:size].hex()

        return fixed_bytes
    bits = int(match.group(2) or 256)
    if match.group(1) == "uint":

        def unsigned(word: bytes) -> int:
            value = int.from_bytes(word, "big")
            if value >> bits:
                raise LogDecodeError(f"{kind} out of range: {value}")
            return value

        return unsigned
    low, high = -(1 << (bits - 1)), 1 << (bits - 1)

    def signed(word: bytes) -> int:
        value = int.from_bytes(word, "big", signed=True)
        if not low <= value < high:
            raise LogDecodeError(f"{kind} out of range: {value}")
        return value

    return signed


def _plain(value: Any, kind: str) -> Any:
    """An eth-abi value as plain JSON: bytes as 0x-hex, addresses checksummed, tuples as lists."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (list, tuple)):
        inner = kind[: kind.rindex("[")] if kind.endswith("]") else None
        if inner is not None:
            return [_plain(v, inner) for v in value]
        parts = _tuple_parts(kind)
        return [_plain(v, k) for v, k in zip(value, parts, strict=True)]
    if kind == "address":
        return checksum(str(value).lower())
    return value


def _tuple_parts(kind: str) -> list[str]:
    parts, depth, start = [], 0, 1
    for i, char in enumerate(kind):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 1:
            parts.append(kind[start:i])
            start = i + 1
    parts.append(kind[start : len(kind) - 1])
    return [p for p in parts if p]


def _hex_bytes(text: Any) -> bytes:
    if not isinstance(text, str) or not text.startswith("0x"):
        raise LogDecodeError(f"not 0x-hex: {str(text)[:80]!r}")
    try:
        return bytes.fromhex(text[2:])
    except ValueError:
        raise LogDecodeError(f"not 0x-hex: {text[:80]!r}") from None


class Decoder:
    """Logs → Events for the contracts the indexer follows (source → ABI events)."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, EventSpec]] = {}

    def add_abi(self, source: str, abi: Iterable[Mapping[str, Any]]) -> None:
        self._specs[source] = {spec.topic0: spec for spec in event_specs(source, abi)}

    def spec(self, source: str, name: str) -> EventSpec:
        for spec in self._specs.get(source, {}).values():
            if spec.name == name:
                return spec
        raise KeyError(f"{source} has no event {name}")

    def decode(self, source: str, log: Mapping[str, Any]) -> Event | None:
        """The event a raw `eth_getLogs` entry holds; None when its topic0 is no event of
        `source`'s ABI (another contract's event relayed, or an anonymous one)."""
        try:
            topics = [str(t).lower() for t in log["topics"]]
            where = (int(log["blockNumber"], 16), str(log["blockHash"]).lower())
            tx_hash, log_index = str(log["transactionHash"]).lower(), int(log["logIndex"], 16)
            contract = checksum(str(log["address"]).lower())
            data = _hex_bytes(log["data"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LogDecodeError(f"malformed log {str(log)[:200]}: {exc!r}") from None
        spec = self._specs.get(source, {}).get(topics[0]) if topics else None
        if spec is None:
            return None
        try:
            args = self._args(spec, topics[1:], data)
        except LogDecodeError as exc:
            raise LogDecodeError(f"{spec.signature} at {tx_hash}:{log_index}: {exc}") from None
        return Event(source, spec.name, contract, where[0], where[1], tx_hash, log_index, args)

    @staticmethod
    def _args(spec: EventSpec, topics: Sequence[str], data: bytes) -> dict[str, Any]:
        indexed = [f for f in spec.fields if f.indexed]
        if len(topics) != len(indexed):
            raise LogDecodeError(f"{len(topics)} indexed topics, the ABI has {len(indexed)}")
        args: dict[str, Any] = {}
        for field, topic in zip(indexed, topics, strict=True):
            word = _hex_bytes(topic)
            if len(word) != 32:
                raise LogDecodeError(f"topic of {len(word)} bytes")
            # A dynamic indexed value is only its keccak hash in the topic.
            args[field.name] = field.word(word) if field.word is not None else topic
        plain = [f for f in spec.fields if not f.indexed]
        if all(f.word is not None for f in plain):
            if len(data) != 32 * len(plain):
                raise LogDecodeError(f"{len(data)} bytes of data, the ABI has {len(plain)} words")
            for i, field in enumerate(plain):
                assert field.word is not None
                args[field.name] = field.word(data[32 * i : 32 * i + 32])
        else:
            try:
                values = abi_decode([f.type for f in plain], data)
            except (DecodingError, ValueError, OverflowError) as exc:
                raise LogDecodeError(str(exc)) from None
            for field, value in zip(plain, values, strict=True):
                args[field.name] = _plain(value, field.type)
        return {f.name: args[f.name] for f in spec.fields}
