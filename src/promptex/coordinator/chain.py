"""What the coordinator needs from the chain, behind one small interface: views of the
vault and escrow, eth_call simulation, and signing/broadcasting raw transactions.

`Web3Chain` is the chain door's sender (`promptex.chain.sender`) with the vault and
escrow views added; tests drive the coordinator through a fake with the same methods.
Amounts are ints in the asset's smallest unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from promptex.chain.deployments import Deployment
from promptex.chain.node import DEFAULT_TIMEOUT
from promptex.chain.sender import Call, Receipt, SignedTx, Web3Sender
from promptex.protocol.vault import POLICY_SPEND_ONLY, sign_release


@dataclass(frozen=True)
class LotInfo:
    seller: str
    token: str
    kind: int
    status: int
    rate_bps: int = 0  # listed lots: the seller's share of list price
    expiry: int = 0
    capacity: int = 0
    consumed: int = 0


class Chain(Protocol):
    sender: str  # the coordinator's address

    def assets(self) -> list[str]: ...
    def is_spend_only(self, asset: str) -> bool: ...
    def now(self) -> int: ...
    def head(self) -> int: ...
    def next_settlement_at(self, asset: str) -> int: ...
    def last_epoch(self, asset: str) -> int: ...
    def usage_root(self, asset: str, epoch: int) -> bytes: ...
    def balance_of(self, address: str, asset: str) -> int: ...
    def debitable(self, address: str, asset: str) -> int: ...
    def asset_address(self, asset: str) -> str: ...
    def lot(self, lot_id: int) -> LotInfo: ...
    def drawable(self, asset: str) -> int: ...
    def prunable(self, asset: str) -> bool: ...
    def settlement_grace(self) -> int: ...
    def release_nonce(self, address: str) -> int: ...
    def lane_settled(self, address: str, asset: str, lane: int) -> int: ...
    def signed_session(self, address: str, asset: str) -> int: ...
    def simulate(self, call: Call) -> str | None: ...
    def sign(self, call: Call, nonce: int) -> SignedTx: ...
    def sign_noop(self, nonce: int, replacing: str | None = None) -> SignedTx: ...
    def nonce(self) -> int: ...
    def nonce_of(self, address: str) -> int: ...
    def pending_nonce(self) -> int: ...
    def broadcast(self, raw: str) -> None: ...
    def receipt(self, tx_hash: str) -> Receipt | None: ...
    def wait(self, tx_hash: str, timeout: float) -> Receipt | None: ...
    def sign_release(self, address: str, asset: str, amount: int, nonce: int, expiry: int) -> bytes: ...


class Web3Chain(Web3Sender):
    """The deployment's vault (calls) and escrow (views) over JSON-RPC, signing with the coordinator's key."""

    def __init__(
        self, rpc_url: str, deployment: Deployment, private_key: str, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(rpc_url, deployment, private_key, timeout=timeout)
        self._key = private_key  # signs releases too (`sign_release`), not only transactions
        self.vault = self.contract("CreditsVault", calls="vault")
        # No escrow role: it reads lots, and calls only what anyone may (`expire`).
        self.escrow = self.contract("CreditEscrow", calls="escrow")
        self._policy: dict[str, int] = {}
        self._grace: int | None = None

    # ─── Views ───────────────────────────────────────────────────────────────

    def assets(self) -> list[str]:
        return self.deployment.asset_symbols()

    def asset_address(self, asset: str) -> str:
        return self.deployment.asset_address(asset)

    def is_spend_only(self, asset: str) -> bool:
        if asset not in self._policy:
            self._policy[asset] = int(self.vault.functions.asset_policy(self.asset_address(asset)).call())
        return self._policy[asset] == POLICY_SPEND_ONLY

    def next_settlement_at(self, asset: str) -> int:
        return int(self.vault.functions.next_settlement_at(self.asset_address(asset)).call())

    def last_epoch(self, asset: str) -> int:
        return int(self.vault.functions.last_epoch(self.asset_address(asset)).call())

    def usage_root(self, asset: str, epoch: int) -> bytes:
        return bytes(self.vault.functions.usage_roots(self.asset_address(asset), epoch).call())

    def balance_of(self, address: str, asset: str) -> int:
        return int(self.vault.functions.balance_of(address, self.asset_address(asset)).call())

    def debitable(self, address: str, asset: str) -> int:
        return int(self.vault.functions.debitable(address, self.asset_address(asset)).call())

    def lot(self, lot_id: int) -> LotInfo:
        # By field name, from the ABI: the escrow's `Lot` struct may grow fields.
        fields = dict(zip(self._lot_fields(), self.escrow.functions.lots(lot_id).call(), strict=True))
        return LotInfo(
            seller=fields["seller"],
            token=fields["token"],
            kind=int(fields["kind"]),
            status=int(fields["status"]),
            rate_bps=int(fields["rate_bps"]),
            expiry=int(fields["expiry"]),
            capacity=int(fields["capacity"]),
            consumed=int(fields["consumed"]),
        )

    def _lot_fields(self) -> list[str]:
        abi = next(f for f in self.escrow.abi if f.get("type") == "function" and f.get("name") == "lots")
        return [c["name"] for c in abi["outputs"][0]["components"]]

    def drawable(self, asset: str) -> int:
        """What the escrow would let one settlement of a provider token draw (and burn)."""
        return int(self.escrow.functions.drawable(self.asset_address(asset)).call())

    def prunable(self, asset: str) -> bool:
        """Whether a lot past its expiry leads the token's draw order (`CreditEscrow.prune`
        would unlink it and those behind it that expired too)."""
        head = self.escrow.functions.draw_order(self.asset_address(asset), 1).call()
        return bool(head) and self.now() > self.lot(int(head[0])).expiry

    def release_nonce(self, address: str) -> int:
        return int(self.vault.functions.release_nonce(address).call())

    def lane_settled(self, address: str, asset: str, lane: int) -> int:
        """What `settle_signed` has debited from the lane in the account's current session."""
        return int(self.vault.functions.lane_settled(address, self.asset_address(asset), lane).call())

    def signed_session(self, address: str, asset: str) -> int:
        """The id of the account's last registered session (`lane_settled` reads its lanes; 0: none)."""
        return int(self.vault.functions.session_key(address, self.asset_address(asset)).call()[1])

    def settlement_grace(self) -> int:
        """Seconds after a lot's expiry during which settlements still draw it (a constant)."""
        if self._grace is None:
            self._grace = int(self.escrow.functions.SETTLEMENT_GRACE().call())
        return self._grace

    # ─── Releases ───────────────────────────────────────────────────────────

    def sign_release(self, address: str, asset: str, amount: int, nonce: int, expiry: int) -> bytes:
        return sign_release(
            self._key,
            chain_id=self.chain_id,
            vault=self.vault.address,
            account=address,
            asset=self.asset_address(asset),
            amount=amount,
            nonce=nonce,
            expiry=expiry,
        )
