"""How a gas scenario reads gas from a receipt, and puts a transaction in a new block."""

from __future__ import annotations

from typing import Any


def whole_gas(receipt: Any) -> int:
    """Whole-transaction gasUsed: what the tables print."""
    return int(receipt.gas_used)


def address_neutral_gas(receipt: Any) -> int:
    """gasUsed as if every calldata byte were non-zero (+12 per zero byte). Calldata carries
    addresses and signatures that differ between runs (a test chain's deployer nonce depends
    on which tests ran before); this is what tests pin, so that only contract changes move it."""
    data = bytes(receipt.transaction.data)
    return int(receipt.gas_used) + 12 * data.count(0)


def new_block(chain: Any) -> None:
    """Make the next transaction land in a later block (and a later second)."""
    chain.pending_timestamp = max(chain.pending_timestamp, chain.blocks.head.timestamp) + 1
