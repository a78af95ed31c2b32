"""Requests in flight per API key and per client address, counted before any slot is taken.

The gateway's own limits (`gateway_max_inflight`, the shedding of `overload`) protect the
process; they do not say whose requests fill it. Before this, 520 slow connections of one
key with no balance took every slot while they trickled their bodies in, and every
funded buyer got 429. Now a request enters here first, from the moment its headers are
read (before its body, before authentication's database read), and is refused with 429
when its key (the presented one, valid or not) or its client address already has its
share in flight; the process-wide slot is taken only once the whole body has arrived.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Entry:
    key: str
    address: str


class Admission:
    def __init__(self, per_key: int, per_address: int) -> None:
        self.per_key = per_key
        self.per_address = per_address
        self.keys: dict[str, int] = {}
        self.addresses: dict[str, int] = {}
        self.refused = 0  # requests refused here, for the metrics

    def enter(self, key: str, address: str) -> Entry | None:
        """Count one request of `key` (a digest of the presented key, "" for none) from
        `address`; None (counting nothing) when either already has its share."""
        keys, addresses = self.keys.get(key, 0), self.addresses.get(address, 0)
        if (key and keys >= self.per_key) or addresses >= self.per_address:
            self.refused += 1
            return None
        if key:
            self.keys[key] = keys + 1
        self.addresses[address] = addresses + 1
        return Entry(key, address)

    def leave(self, entry: Entry) -> None:
        if entry.key:
            _decrement(self.keys, entry.key)
        _decrement(self.addresses, entry.address)


def _decrement(counts: dict[str, int], name: str) -> None:
    left = counts.get(name, 0) - 1
    if left > 0:
        counts[name] = left
    else:
        counts.pop(name, None)
