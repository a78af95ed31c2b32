"""Sending one key's transactions to a node: simulate a call, sign it (gas estimated
with a margin), broadcast the signed bytes, read or wait for the receipt.

Services store each signed transaction before they broadcast it (`promptex.chain.txlog`),
so a crash never signs anew. Calls name their contract by a short name ("vault",
"escrow", "redemption"): a subclass registers the deployment's contracts it sends to
and adds its own domain reads.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from eth_account import Account
from eth_typing import HexStr
from web3 import Web3
from web3.exceptions import BlockNotFound, ContractLogicError, TransactionNotFound, Web3RPCError

from promptex.chain.deployments import Deployment
from promptex.chain.node import DEFAULT_TIMEOUT, connect, deployed_contract

GAS_MARGIN = 1.25  # over the estimate: state may move a little between estimate and inclusion


@dataclass(frozen=True)
class Call:
    """One contract call: `contract` is a short name the sender registered ("vault", ...)."""

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
    # The block's hash (0x hex; None where a chain gives none): the same number is not the
    # same block, and a competing block at that height can give the same outcome other
    # effects (the escrow's redemption id, when another redeem came first).
    block_hash: str | None = None


_REASON = re.compile(r"(?:execution reverted:?\s*)?(.*)", re.S)


def revert_reason(exc: BaseException) -> str:
    """The contract's revert string ("vault: …"), or the error's first line."""
    message = getattr(exc, "message", None) or str(exc)
    match = _REASON.match(str(message).strip())
    text = (match.group(1) if match else str(message)).strip().splitlines()
    return text[0] if text and text[0] else "reverted without a reason"


class TxSigner(Protocol):
    """Signs a transaction dict (web3's `build_transaction` fields) as one address."""

    address: str

    def sign(self, tx: dict[str, Any]) -> tuple[str, str]:
        """(its hash, its raw bytes), each 0x-prefixed hex."""
        ...


class KeySigner:
    """A raw private key's signatures (the services' keys, PROMPTEX_SELLER_PRIVATE_KEY)."""

    def __init__(self, private_key: str) -> None:
        self._account = Account.from_key(private_key)
        self.address = str(self._account.address)

    def sign(self, tx: dict[str, Any]) -> tuple[str, str]:
        signed = self._account.sign_transaction(tx)
        return _hex(signed.hash), _hex(signed.raw_transaction)


class Web3Sender:
    """A deployment's contracts over JSON-RPC, signing with one private key (or `TxSigner`:
    an ape account's, `chain.accounts.ApeTxSigner`)."""

    def __init__(
        self, rpc_url: str, deployment: Deployment, signer: str | TxSigner, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.w3 = connect(rpc_url, timeout=timeout)
        self.deployment = deployment
        self._signer = KeySigner(signer) if isinstance(signer, str) else signer
        self.sender = self._signer.address
        self.chain_id = deployment.chain_id
        self._callable: dict[str, Any] = {}  # Call.contract → web3 contract

    def contract(self, name: str, *, calls: str | None = None) -> Any:
        """The deployment's contract `name`; `calls` registers it as a Call target."""
        contract = deployed_contract(self.w3, self.deployment, name)
        if calls is not None:
            self._callable[calls] = contract
        return contract

    def _function(self, call: Call) -> Any:
        return getattr(self._callable[call.contract].functions, call.function)(*call.args)

    def now(self) -> int:
        # The pending block's time: what the next transaction will see. The latest block's
        # stands still on a quiet chain that mines only on transactions (anvil), where a
        # settlement would then never come due.
        return int(self.w3.eth.get_block("pending")["timestamp"])

    def simulate(self, call: Call) -> str | None:
        """None if the call would succeed in the pending block, else the revert reason."""
        try:
            self._function(call).call({"from": self.sender}, block_identifier="pending")
        except ContractLogicError as exc:
            return revert_reason(exc)
        return None

    def sign(self, call: Call, nonce: int) -> SignedTx:
        fn = self._function(call)
        gas = int(fn.estimate_gas({"from": self.sender}, block_identifier="pending") * GAS_MARGIN)
        tx = fn.build_transaction({"from": self.sender, "nonce": nonce, "chainId": self.chain_id, "gas": gas})
        return SignedTx(*self._signer.sign(dict(tx)), nonce)

    def sign_noop(self, nonce: int, replacing: str | None = None) -> SignedTx:
        """A 0-value transfer to ourselves at `nonce`: it fills a nonce whose signed
        transaction must never land (see `Coordinator._recheck_orphaned_txs`). Priced at
        least twice what `replacing` offered if the node still has it (a pool replaces a
        pending transaction only for a higher fee), and at least today's suggestion."""
        priority = int(self.w3.eth.max_priority_fee)
        base = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0))
        max_fee = 2 * base + priority
        if replacing is not None:
            try:
                old = self.w3.eth.get_transaction(replacing)  # type: ignore[arg-type]
            except TransactionNotFound:
                old = None
            if old is not None:
                priority = max(priority, 2 * int(old.get("maxPriorityFeePerGas", old.get("gasPrice", 0))))
                max_fee = max(max_fee, 2 * int(old.get("maxFeePerGas", old.get("gasPrice", 0))))
        tx = {
            "from": self.sender, "to": self.sender, "value": 0, "gas": 21_000, "nonce": nonce,
            "chainId": self.chain_id, "maxFeePerGas": max(max_fee, priority), "maxPriorityFeePerGas": priority,
        }  # fmt: skip
        return SignedTx(*self._signer.sign(tx), nonce)

    def nonce(self) -> int:
        return self.nonce_of(self.sender)

    def nonce_of(self, address: str) -> int:
        """Any account's canonical nonce: how many of its transactions the chain holds."""
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(address), "latest"))

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
        """The transaction's receipt, if the canonical chain holds it: a receipt counts only
        while its block is the chain's block at that height (a node may still serve one from
        a branch a reorg orphaned)."""
        try:
            r = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        number = int(r["blockNumber"])
        try:
            canonical = self.w3.eth.get_block(number)["hash"]
        except BlockNotFound:
            return None
        if bytes(canonical) != bytes(r["blockHash"]):
            return None
        return Receipt(ok=r["status"] == 1, block_number=number, block_hash="0x" + bytes(canonical).hex())

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def wait(self, tx_hash: str, timeout: float) -> Receipt | None:
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.receipt(tx_hash)
            if receipt is not None or time.monotonic() >= deadline:
                return receipt
            time.sleep(0.1)


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()
