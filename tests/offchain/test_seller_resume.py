"""`Onboarding.resume` finishes a lot left `opening` from its stored open_lot, also one an
earlier attestor key signed (rbreak, session 9, item 6): it skipped those (`open_tx_of(lot,
attestor.sender)`), so after an attestor rotation a lot whose open_lot was stored but never
sent (a crash between store and broadcast) stayed `opening` for good, serving nothing, its
seller's bond approved. Anyone may send another key's stored bytes (as the coordinator and
the agent do, `txlog.send_others`), read its receipt, or read that account's nonce."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from promptex import metering
from promptex.chain.sender import Receipt, SignedTx
from promptex.ledger import Ledger
from promptex.sealing.envelope import MasterKeys
from promptex.sellers.chain import OpenedOnChain
from promptex.sellers.onboard import Onboarding
from promptex.sellers.store import SellerStore
from promptex.sellers.terms import Capacity

OLD, NEW = "0x" + "0a" * 20, "0x" + "0b" * 20  # the attestor keys before and after the rotation
EXPIRY = 2_000_000_000


@dataclass
class Node:
    """What the chain holds: receipts by hash; a broadcast is mined at once (a refusal,
    `refuse`, is a node's answer such as the old account's lack of gas)."""

    receipts: dict[str, Receipt] = field(default_factory=dict)
    refuse: bool = False
    sent: list[str] = field(default_factory=list)
    nonces: dict[str, int] = field(default_factory=dict)  # each account's canonical nonce


@dataclass
class Door:
    """An attestor's sender (`Web3Sender`'s part that resolving needs)."""

    node: Node
    sender: str

    def receipt(self, tx_hash: str) -> Receipt | None:
        return self.node.receipts.get(tx_hash)

    def broadcast(self, raw: str) -> None:
        if self.node.refuse:
            raise ValueError("insufficient funds for gas * price + value")
        self.node.sent.append(raw)
        self.node.receipts["0x" + raw.removeprefix("raw-")] = Receipt(True, 9, "0x" + "99" * 32)

    def wait(self, tx_hash: str, timeout: float) -> Receipt | None:
        return self.receipt(tx_hash)

    def nonce(self) -> int:
        return self.nonce_of(self.sender)

    def nonce_of(self, address: str) -> int:
        return self.node.nonces.get(address, 0)


@dataclass
class Chain:
    attestor: Door | None
    seller: Door | None = None

    def opened(self, tx_hash: str) -> OpenedOnChain:
        return OpenedOnChain(lot_id=42, capacity=250, seller_amount=0, fee=0)


def _opening(ledger: Ledger, keys: MasterKeys) -> tuple[SellerStore, int, str]:
    """A lot whose open_lot the OLD attestor key signed and stored, never sent (a crash)."""
    store = SellerStore(ledger.engine)
    capacity = Capacity(
        "openai", "openai", "http://127.0.0.1:1/v1", "sk-up", 250 * 10**6, "listed", 6_000, EXPIRY,
        "0x" + "5e" * 20, True, 250 * 10**6,
    )  # fmt: skip
    lot = store.record_lot(keys, capacity, route_until=EXPIRY - 900, now=1)
    store.store_open(lot, SignedTx("0x" + "ab" * 32, "raw-" + "ab" * 32, 3), OLD, 2)
    return store, lot, "0x" + "ab" * 32


def _onboarding(store: SellerStore, keys: MasterKeys, chain: Chain) -> Onboarding:
    return Onboarding(store, chain, keys, metering.load_catalog(), 60, tx_timeout=0, clock=lambda: 10)  # type: ignore[arg-type]


def test_resume__open_lot_of_a_rotated_attestor_key_never_sent__its_bytes_sent_the_lot_opens(
    sqlite_ledger: Ledger,
) -> None:
    keys = MasterKeys({"k1": os.urandom(32)}, "k1")
    store, lot, tx_hash = _opening(sqlite_ledger, keys)
    node = Node()
    assert _onboarding(store, keys, Chain(Door(node, NEW))).resume() == 1
    state = sqlite_ledger.lot_state(lot)
    assert state is not None and (state.state, state.chain_lot_id) == ("open", 42)
    assert node.sent == ["raw-" + "ab" * 32]  # the OLD key's stored bytes, as signed
    assert store.open_txs() == [] and store.tx(1).status == "succeeded"


def test_resume__a_rotated_keys_open_lot_the_node_refuses__still_opening_then_mined_by_its_receipt(
    sqlite_ledger: Ledger,
) -> None:
    """The node refuses the bytes (the old account drained: no gas): logged, the lot stays
    `opening` (only that key's nonce could prove it dropped), no error; once the chain holds
    its receipt (that key's service sent it), the next resume opens the lot. Without an
    attestor key, the seller's key reads it as well."""
    keys = MasterKeys({"k1": os.urandom(32)}, "k1")
    store, lot, tx_hash = _opening(sqlite_ledger, keys)
    node = Node(refuse=True)
    assert _onboarding(store, keys, Chain(Door(node, NEW))).resume() == 0
    state = sqlite_ledger.lot_state(lot)
    assert state is not None and state.state == "opening"
    node.receipts[tx_hash] = Receipt(False, 12, "0x" + "12" * 32)  # mined, reverted
    assert _onboarding(store, keys, Chain(None, seller=Door(node, "0x" + "5e" * 20))).resume() == 1
    state = sqlite_ledger.lot_state(lot)
    assert state is not None and state.state == "failed" and tx_hash in (state.reason or "")


def test_resume__a_rotated_keys_open_lot_whose_nonce_that_key_used_elsewhere__failed_dropped_not_sent(
    sqlite_ledger: Ledger,
) -> None:
    """The old key's nonce 3 went to another of its transactions (a wallet's cancel): the
    stored open_lot can never be mined; that account's nonce proves it, so the lot fails
    (serving nothing, saying why) instead of staying `opening` for good, its bytes not sent."""
    keys = MasterKeys({"k1": os.urandom(32)}, "k1")
    store, lot, tx_hash = _opening(sqlite_ledger, keys)
    node = Node(nonces={OLD: 4})
    assert _onboarding(store, keys, Chain(Door(node, NEW))).resume() == 1
    state = sqlite_ledger.lot_state(lot)
    assert state is not None and state.state == "failed" and f"open_lot dropped in {tx_hash}" == state.reason
    assert node.sent == [] and store.tx(1).status == "dropped"
