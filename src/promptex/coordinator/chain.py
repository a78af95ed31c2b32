"""What the coordinator needs from the chain, behind one small interface: views of the
vault and escrow, eth_call simulation, and signing/broadcasting raw transactions.

`Web3Chain` talks JSON-RPC to a deployment; tests drive the coordinator through a fake
with the same methods. Amounts are ints in the asset's smallest unit.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eth_account import Account
from eth_typing import HexStr
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from promptex.chain.deployments import Deployment
from promptex.protocol.units import USDC_SYMBOL
from promptex.protocol.vault import POLICY_SPEND_ONLY, sign_release

GAS_MARGIN = 1.25  # over the estimate: state may move a little between estimate and inclusion


@dataclass(frozen=True)
class Call:
    """One contract call: `contract` is "vault" or "escrow"."""

    contract: str
    function: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class SignedTx:
    tx_hash: str  # 0x-prefixed
    raw: str  # 0x-prefixed signed transaction bytes
    nonce: int


@dataclass(frozen=True)
class Receipt:
    ok: bool
    block_number: int


@dataclass(frozen=True)
class LotInfo:
    seller: str
    token: str
    kind: int
    status: int


class Chain(Protocol):
    sender: str  # the coordinator's address

    def assets(self) -> list[str]: ...
    def is_spend_only(self, asset: str) -> bool: ...
    def now(self) -> int: ...
    def next_settlement_at(self, asset: str) -> int: ...
    def last_epoch(self, asset: str) -> int: ...
    def usage_root(self, asset: str, epoch: int) -> bytes: ...
    def balance_of(self, address: str, asset: str) -> int: ...
    def debitable(self, address: str, asset: str) -> int: ...
    def asset_address(self, asset: str) -> str: ...
    def lot(self, lot_id: int) -> LotInfo: ...
    def release_nonce(self, address: str) -> int: ...
    def simulate(self, call: Call) -> str | None: ...
    def sign(self, call: Call, nonce: int) -> SignedTx: ...
    def nonce(self) -> int: ...
    def pending_nonce(self) -> int: ...
    def broadcast(self, raw: str) -> None: ...
    def receipt(self, tx_hash: str) -> Receipt | None: ...
    def wait(self, tx_hash: str, timeout: float) -> Receipt | None: ...
    def sign_release(self, address: str, asset: str, amount: int, nonce: int, expiry: int) -> bytes: ...


_REASON = re.compile(r"(?:execution reverted:?\s*)?(.*)", re.S)


def revert_reason(exc: BaseException) -> str:
    """The contract's revert string ("vault: …"), or the error's first line."""
    message = getattr(exc, "message", None) or str(exc)
    match = _REASON.match(str(message).strip())
    text = (match.group(1) if match else str(message)).strip().splitlines()
    return text[0] if text and text[0] else "reverted without a reason"


class Web3Chain:
    """The deployment's vault and escrow over JSON-RPC, signing with the coordinator's key."""

    def __init__(self, rpc_url: str, deployment: Deployment, private_key: str, *, timeout: float = 30.0) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        self.deployment = deployment
        self._account = Account.from_key(private_key)
        self._key = private_key
        self.sender = str(self._account.address)
        self.chain_id = deployment.chain_id
        self.vault = self._contract("CreditsVault")
        self.escrow = self._contract("CreditEscrow")
        self._addresses = {USDC_SYMBOL: deployment.address("USDC")}
        for symbol in deployment.token_symbols():
            self._addresses[symbol] = deployment.address(f"token:{symbol}")
        self._policy: dict[str, int] = {}

    def _contract(self, name: str) -> Any:
        record = self.deployment.contracts[name]
        abi = json.loads(Path(record.abi).read_text())
        return self.w3.eth.contract(address=Web3.to_checksum_address(record.address), abi=abi)

    # ─── Views ───────────────────────────────────────────────────────────────

    def assets(self) -> list[str]:
        return list(self._addresses)

    def asset_address(self, asset: str) -> str:
        try:
            return self._addresses[asset]
        except KeyError:
            raise KeyError(f"asset {asset!r} is not in the {self.deployment.network} deployment") from None

    def is_spend_only(self, asset: str) -> bool:
        if asset not in self._policy:
            self._policy[asset] = int(self.vault.functions.asset_policy(self.asset_address(asset)).call())
        return self._policy[asset] == POLICY_SPEND_ONLY

    def now(self) -> int:
        # The pending block's time: what the next transaction will see. The latest block's
        # stands still on a quiet chain that mines only on transactions (anvil), where a
        # settlement would then never come due.
        return int(self.w3.eth.get_block("pending")["timestamp"])

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
        lot = self.escrow.functions.lots(lot_id).call()
        return LotInfo(seller=lot[0], token=lot[1], kind=int(lot[2]), status=int(lot[3]))

    def release_nonce(self, address: str) -> int:
        return int(self.vault.functions.release_nonce(address).call())

    # ─── Transactions ────────────────────────────────────────────────────────

    def _function(self, call: Call) -> Any:
        contract = {"vault": self.vault, "escrow": self.escrow}[call.contract]
        return getattr(contract.functions, call.function)(*call.args)

    def simulate(self, call: Call) -> str | None:
        try:
            self._function(call).call({"from": self.sender}, block_identifier="pending")
        except ContractLogicError as exc:
            return revert_reason(exc)
        return None

    def sign(self, call: Call, nonce: int) -> SignedTx:
        fn = self._function(call)
        gas = int(fn.estimate_gas({"from": self.sender}, block_identifier="pending") * GAS_MARGIN)
        tx = fn.build_transaction({"from": self.sender, "nonce": nonce, "chainId": self.chain_id, "gas": gas})
        signed = self._account.sign_transaction(tx)
        return SignedTx(_hex(signed.hash), _hex(signed.raw_transaction), nonce)

    def nonce(self) -> int:
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(self.sender), "latest"))

    def pending_nonce(self) -> int:
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(self.sender), "pending"))

    def broadcast(self, raw: str) -> None:
        try:
            self.w3.eth.send_raw_transaction(HexStr(raw))
        except (ValueError, Web3RPCError) as exc:  # the node has it already, or it was mined: both fine here
            text = str(exc).lower()
            if not any(known in text for known in ("already known", "nonce too low", "already imported")):
                raise

    def receipt(self, tx_hash: str) -> Receipt | None:
        try:
            r = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        return Receipt(ok=r["status"] == 1, block_number=int(r["blockNumber"]))

    def wait(self, tx_hash: str, timeout: float) -> Receipt | None:
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.receipt(tx_hash)
            if receipt is not None or time.monotonic() >= deadline:
                return receipt
            time.sleep(0.1)

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


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()
