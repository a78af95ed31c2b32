"""What `promptex reconcile` reads from the chain, all at one block (the last one the
indexer applied, so that the books and the chain are compared at the same point): vault
balances, pending exits and claimables, escrow lots, RedemptionEscrow redemptions.

`Web3ChainView` reads a deployment over JSON-RPC; tests may pass any object with the
same methods.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from web3 import HTTPProvider, Web3

from promptex.chain.deployments import Deployment
from promptex.protocol.units import TOKEN_DECIMALS, USDC_DECIMALS, USDC_SYMBOL


@dataclass(frozen=True)
class LotState:
    seller: str
    token: str
    kind: int
    status: int
    rate_bps: int
    capacity: int
    consumed: int


@dataclass(frozen=True)
class RedemptionState:
    status: int  # protocol.redemption STATUS_*
    usdc: int


class ChainView(Protocol):
    block: int

    def assets(self) -> dict[str, int]: ...  # symbol → decimals, of every vault asset
    def asset_address(self, symbol: str) -> str: ...
    def balance_of(self, address: str, symbol: str) -> int: ...
    def pending_exit(self, address: str, symbol: str) -> int: ...
    def claimable(self, address: str, symbol: str) -> int: ...
    def lot_count(self) -> int: ...
    def lot(self, lot_id: int) -> LotState: ...
    def redemption(self, redemption_id: int) -> RedemptionState | None: ...


class Web3ChainView:
    """Views of a deployment at `block`, over JSON-RPC."""

    def __init__(self, rpc_url: str, deployment: Deployment, block: int, *, timeout: float = 30.0) -> None:
        self.w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        self.deployment = deployment
        self.block = block
        self._contracts: dict[str, Any] = {}

    def _contract(self, name: str) -> Any:
        found = self._contracts.get(name)
        if found is None:
            record = self.deployment.contracts[name]
            abi = json.loads(Path(record.abi).read_text())
            contract = self.w3.eth.contract(address=Web3.to_checksum_address(record.address), abi=abi)
            found = self._contracts[name] = contract
        return found

    def _view(self, name: str, function: str, *args: Any) -> Any:
        return getattr(self._contract(name).functions, function)(*args).call(block_identifier=self.block)

    def assets(self) -> dict[str, int]:
        found = {USDC_SYMBOL: USDC_DECIMALS}
        found.update({symbol: TOKEN_DECIMALS for symbol in self.deployment.token_symbols()})
        return found

    def asset_address(self, symbol: str) -> str:
        return self.deployment.address(USDC_SYMBOL if symbol == USDC_SYMBOL else f"token:{symbol}")

    def balance_of(self, address: str, symbol: str) -> int:
        return int(self._view("CreditsVault", "balance_of", address, self.asset_address(symbol)))

    def pending_exit(self, address: str, symbol: str) -> int:
        amount, _unlock_at = self._view("CreditsVault", "pending_exits", address, self.asset_address(symbol))[:2]
        return int(amount)

    def claimable(self, address: str, symbol: str) -> int:
        return int(self._view("CreditsVault", "claimable", address, self.asset_address(symbol)))

    def lot(self, lot_id: int) -> LotState:
        # CreditEscrow.Lot: seller, token, kind, status, rate_bps, expiry, face_value, capacity,
        # seller_minted, consumed, … (new fields are appended).
        f = self._view("CreditEscrow", "lots", lot_id)
        return LotState(str(f[0]), str(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[7]), int(f[9]))

    def lot_count(self) -> int:
        return int(self._view("CreditEscrow", "lot_count"))

    def redemption(self, redemption_id: int) -> RedemptionState | None:
        if "RedemptionEscrow" not in self.deployment.contracts:
            return None
        # RedemptionEscrow.Redemption: user, payee, sale_hash, usdc, deadline, status.
        fields = self._view("RedemptionEscrow", "redemptions", redemption_id)
        return RedemptionState(int(fields[5]), int(fields[3]))
