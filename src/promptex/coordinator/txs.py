"""Signed transactions that were stored before they were broadcast (coordinator, agent):
after a crash each is found by its hash, re-sent byte for byte, or proven dropped — never
signed anew. Also the kill -9 test hook both services use."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Protocol

from promptex.coordinator.chain import Receipt
from promptex.coordinator.store import DROPPED, REVERTED, SENT, SUCCEEDED, StoredTx

log = logging.getLogger(__name__)

DROP_GRACE_SECONDS = 3.0
CloseTx = Callable[[int, str, "int | None", int], None]  # (tx id, status, block, now)


class TxChain(Protocol):
    """What resolving a stored transaction needs from a chain (the coordinator's and the agent's)."""

    def receipt(self, tx_hash: str) -> Receipt | None: ...
    def nonce(self) -> int: ...
    def broadcast(self, raw: str) -> None: ...
    def wait(self, tx_hash: str, timeout: float) -> Receipt | None: ...


class TxPending(Exception):
    """A signed transaction is neither mined nor provably dropped yet: wait for the next pass."""


def crash_point(env_var: str, step: str) -> None:
    """Die here, as kill -9 would, when the test hook `env_var` names this step."""
    if os.environ.get(env_var) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def resolve_tx(tx: StoredTx, chain: TxChain, close_tx: CloseTx, now: Callable[[], int], timeout: float) -> str:
    """The final status of a stored transaction, rebroadcasting it if it is not mined.
    Raises TxPending while it is neither mined nor dropped (its nonce went to another)."""
    if tx.status != SENT:
        return tx.status
    receipt = chain.receipt(tx.tx_hash)
    if receipt is None and chain.nonce() > tx.nonce:
        # Mined between the two reads, or a node that shows the sender's nonce moved a moment
        # before it serves the receipt: give the receipt a short grace before calling it dropped.
        receipt = chain.wait(tx.tx_hash, min(timeout, DROP_GRACE_SECONDS))
        if receipt is None:
            log.warning("%s tx %s: nonce %d went to another transaction", tx.purpose, tx.tx_hash, tx.nonce)
            close_tx(tx.id, DROPPED, None, now())
            return DROPPED
    if receipt is None:
        chain.broadcast(tx.raw)  # the same signed bytes: idempotent
        receipt = chain.wait(tx.tx_hash, timeout)
    if receipt is None:
        raise TxPending(f"{tx.purpose} tx {tx.tx_hash} (nonce {tx.nonce})")
    status = SUCCEEDED if receipt.ok else REVERTED
    close_tx(tx.id, status, receipt.block_number, now())
    return status
