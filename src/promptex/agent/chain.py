"""What the agent needs from the chain: the RedemptionEscrow's views (grant, limits,
linked accounts, each token's provider, billing signers, redemptions, the escrow's
own quote of a sale and its honest-price bound), the Oracle's TWAP, and
signing/broadcasting raw transactions.

`Web3AgentChain` is the chain door's sender (`promptex.chain.sender`: the same
signing, broadcast, receipt and revert handling as the coordinator's) with those
contracts' reads added; tests drive the agent through a fake with the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import rlp
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from hexbytes import HexBytes
from web3.exceptions import BlockNotFound, ContractLogicError
from web3.logs import DISCARD

from promptex.chain.deployments import Deployment
from promptex.chain.node import DEFAULT_TIMEOUT, deployed_contract
from promptex.chain.sender import Call, Receipt, SignedTx, Web3Sender
from promptex.protocol.redemption import redeem_sale_ref


@dataclass(frozen=True)
class Grant:
    payee: str
    expiry: int
    max_slippage_bps: int
    version: int

    @property
    def live(self) -> bool:
        return int(self.payee, 16) != 0


@dataclass(frozen=True)
class ChainRedemption:
    user: str
    payee: str
    usdc: int
    deadline: int
    status: int  # promptex.protocol.redemption.STATUS_*


@dataclass(frozen=True)
class Redeemed:
    redemption_id: int
    tokens_in: int
    usdc: int
    deadline: int


class AgentChain(Protocol):
    sender: str  # the agent's address
    chain_id: int
    escrow_address: str

    def now(self) -> int: ...
    def token_address(self, symbol: str) -> str: ...
    def usdc_address(self) -> str: ...
    def quote(self, token: str, usdc_out: int) -> tuple[int, int] | None: ...
    def twap(self, token: str) -> int | None: ...
    def token_provider(self, token: str) -> bytes: ...
    def grant(self, user: str) -> Grant: ...
    def daily_limit(self, user: str, token: str) -> int: ...
    def spent_today(self, user: str, token: str) -> int: ...
    def linked_account(self, user: str, provider: bytes) -> bytes: ...
    def billing_signer_count(self, provider: bytes) -> int: ...
    def is_billing_signer(self, provider: bytes, signer: str) -> bool: ...
    def token_balance(self, user: str, token: str) -> int: ...
    def allowance(self, user: str, token: str) -> int: ...
    def redemption(self, redemption_id: int) -> ChainRedemption: ...
    def redeemed(self, tx_hash: str) -> Redeemed | None: ...
    def redeem_sale_ref(self, raw: str) -> bytes | None: ...
    def simulate(self, call: Call) -> str | None: ...
    def sign(self, call: Call, nonce: int) -> SignedTx: ...
    def sign_noop(self, nonce: int, replacing: str | None = None) -> SignedTx: ...
    def nonce(self) -> int: ...
    def head(self) -> int: ...
    def block_hash(self, number: int) -> str | None: ...
    def pending_nonce(self) -> int: ...
    def broadcast(self, raw: str) -> None: ...
    def receipt(self, tx_hash: str) -> Receipt | None: ...
    def wait(self, tx_hash: str, timeout: float) -> Receipt | None: ...


class Web3AgentChain(Web3Sender):
    """The deployment's RedemptionEscrow, Oracle and tokens over JSON-RPC,
    signing with the agent's key."""

    def __init__(
        self, rpc_url: str, deployment: Deployment, private_key: str, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(rpc_url, deployment, private_key, timeout=timeout)
        self.redemption_escrow = self.contract("RedemptionEscrow", calls="redemption")
        self.oracle = self.contract("Oracle")
        self.escrow_address = str(self.redemption_escrow.address)
        self._twap_window = int(self.redemption_escrow.functions.twap_window().call())
        self._token_record = f"token:{deployment.token_symbols()[0]}"  # every token has this ABI
        self._erc20: dict[str, Any] = {}

    def _token(self, address: str) -> Any:
        if address not in self._erc20:
            self._erc20[address] = deployed_contract(self.w3, self.deployment, self._token_record, address)
        return self._erc20[address]

    def token_address(self, symbol: str) -> str:
        return self.deployment.asset_address(symbol)

    def usdc_address(self) -> str:
        return self.deployment.address("USDC")

    def quote(self, token: str, usdc_out: int) -> tuple[int, int] | None:
        try:
            tokens_in, limit = self.redemption_escrow.functions.quote(token, usdc_out).call()
        except ContractLogicError:
            return None  # no pool, no TWAP yet, or not enough liquidity for that output
        return int(tokens_in), int(limit)

    def token_provider(self, token: str) -> bytes:
        return bytes(self.redemption_escrow.functions.token_provider(token).call())

    def twap(self, token: str) -> int | None:
        try:
            return int(self.oracle.functions.consult(token, self._twap_window).call())
        except ContractLogicError:
            return None  # untracked, or the window is not yet covered

    def grant(self, user: str) -> Grant:
        payee, expiry, slippage, version = self.redemption_escrow.functions.grant(user, self.sender).call()
        return Grant(str(payee), int(expiry), int(slippage), int(version))

    def daily_limit(self, user: str, token: str) -> int:
        return int(self.redemption_escrow.functions.daily_limit(user, self.sender, token).call())

    def spent_today(self, user: str, token: str) -> int:
        return int(self.redemption_escrow.functions.spent_today(user, self.sender, token).call())

    def linked_account(self, user: str, provider: bytes) -> bytes:
        return bytes(self.redemption_escrow.functions.linked_account(user, provider).call())

    def billing_signer_count(self, provider: bytes) -> int:
        return int(self.redemption_escrow.functions.billing_signer_count(provider).call())

    def is_billing_signer(self, provider: bytes, signer: str) -> bool:
        return bool(self.redemption_escrow.functions.is_billing_signer(provider, signer).call())

    def token_balance(self, user: str, token: str) -> int:
        return int(self._token(token).functions.balanceOf(user).call())

    def allowance(self, user: str, token: str) -> int:
        return int(self._token(token).functions.allowance(user, self.escrow_address).call())

    def redemption(self, redemption_id: int) -> ChainRedemption:
        user, payee, _hash, usdc, deadline, status = self.redemption_escrow.functions.redemptions(redemption_id).call()
        return ChainRedemption(str(user), str(payee), int(usdc), int(deadline), int(status))

    def block_hash(self, number: int) -> str | None:
        """The canonical chain's block at `number`, its hash (None: no such block now)."""
        try:
            return "0x" + bytes(self.w3.eth.get_block(number)["hash"]).hex()
        except BlockNotFound:
            return None

    def redeemed(self, tx_hash: str) -> Redeemed | None:
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        for event in self.redemption_escrow.events.Redeemed().process_receipt(receipt, errors=DISCARD):
            a = event["args"]
            return Redeemed(int(a["redemption_id"]), int(a["tokens_in"]), int(a["usdc"]), int(a["deadline"]))
        return None

    def redeem_sale_ref(self, raw: str) -> bytes | None:
        """The `sale_ref` the signed transaction `raw` passes to `redeem` (None: not a redeem):
        what its sale is, as the escrow computes it, whatever the agent stored beside it."""
        return redeem_sale_ref(transaction_data(raw))


def transaction_data(raw: str) -> bytes:
    """The call data of a signed transaction: typed (EIP-2718) or legacy."""
    encoded = HexBytes(raw)
    if encoded and encoded[0] <= 0x7F:
        return bytes(HexBytes(TypedTransaction.from_bytes(encoded).as_dict()["data"]))
    return bytes(rlp.decode(bytes(encoded))[5])  # legacy: nonce, gasPrice, gas, to, value, data, v, r, s
