"""The escrow as sellers see it, through the chain door's sender: reads (bond minimum,
allowance, the vault's epoch, a lot), the attestor's `open_lot`, and the seller's own
transactions (approve the bond, `request_close`, `finalize_close`) when the seller's key
is given. Signing and sending go through `Web3Sender`; storing before broadcast is the
caller's (`sellers.store`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from promptex.chain.deployments import Deployment
from promptex.chain.node import DEFAULT_TIMEOUT, connect, deployed_contract
from promptex.chain.sender import Call, Receipt, SignedTx, TxSigner, Web3Sender
from promptex.protocol.escrow import KIND_TOKENIZED, MAX_HINT_STEPS
from promptex.protocol.units import TWAP_WINDOW

ESCROW, USDC = "escrow", "usdc"
# The escrow's lot statuses (CreditEscrow.STATUS_*).
STATUS_NAMES = {1: "open", 2: "closed", 3: "expired", 4: "slashed"}
# `insert_hint` pages: CreditEscrow.MAX_HINT_STEPS lots a call (~4.5 M gas of eth_call), and
# at most this many calls (a million lots) before the open goes without a hint.
HINT_PAGE = MAX_HINT_STEPS
MAX_HINT_PAGES = 1024


@dataclass(frozen=True)
class ChainLot:
    """An escrow lot as the chain has it now."""

    lot_id: int
    seller: str
    token: str
    kind: int
    status: int
    expiry: int
    face_value: int
    capacity: int
    seller_minted: int
    consumed: int
    bond: int
    bond_released: int
    close_at: int  # 0: no close requested

    @property
    def state(self) -> str:
        """open | closing | closed | expired | slashed, as `ledger.lots` names them."""
        name = STATUS_NAMES.get(self.status, f"status {self.status}")
        return "closing" if name == "open" and self.close_at else name


@dataclass(frozen=True)
class OpenedOnChain:
    lot_id: int  # the escrow's
    capacity: int  # tokenized: tokens minted (seller + fee); listed: = face value
    seller_amount: int  # tokens the seller received
    fee: int  # tokens the treasury received


class SellerChain:
    """A deployment's escrow for onboarding and managing lots. `attestor_key` opens lots;
    `seller_key` (optional) signs the seller's own transactions: a raw key, or a `TxSigner`
    (an ape account, `promptex seller … --account ALIAS`)."""

    def __init__(
        self,
        rpc_url: str,
        deployment: Deployment,
        *,
        attestor_key: str | None,
        seller_key: str | TxSigner | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.w3 = connect(rpc_url, timeout=timeout)
        self.deployment = deployment
        self._rpc_url, self._timeout = rpc_url, timeout
        self._attestor_key, self._seller_key = attestor_key, seller_key

    # Read when first needed: the checks that need no chain (terms, the key) come first.
    @cached_property
    def escrow(self) -> Any:
        return deployed_contract(self.w3, self.deployment, "CreditEscrow")

    @cached_property
    def usdc(self) -> Any:
        return deployed_contract(self.w3, self.deployment, "USDC")

    @cached_property
    def vault(self) -> Any:
        return deployed_contract(self.w3, self.deployment, "CreditsVault")

    @cached_property
    def attestor(self) -> Web3Sender | None:
        """Opens lots (None: no attestor key was given)."""
        return self._sender(self._attestor_key)

    @cached_property
    def seller(self) -> Web3Sender | None:
        """Signs the seller's own transactions (None: no seller key was given)."""
        return self._sender(self._seller_key)

    def _sender(self, key: str | TxSigner | None) -> Web3Sender | None:
        if key is None:
            return None
        sender = Web3Sender(self._rpc_url, self.deployment, key, timeout=self._timeout)
        sender.contract("CreditEscrow", calls=ESCROW)
        sender.contract("USDC", calls=USDC)
        return sender

    # ─── Reads ───────────────────────────────────────────────────────────────

    def now(self) -> int:
        """The next block's time: what open_lot's expiry check will see."""
        return int(self.w3.eth.get_block("pending")["timestamp"])

    def escrow_address(self) -> str:
        return str(self.escrow.address)

    def is_attestor(self, address: str) -> bool:
        return bool(self.escrow.functions.is_attestor(Web3.to_checksum_address(address)).call())

    def min_bond(self, face_value: int) -> int:
        """A listed lot's least bond."""
        return int(self.escrow.functions.min_bond(face_value).call())

    def tokenized_bond(self, token: str, face_value: int) -> int:
        """A tokenized lot's only bond: its token's fixed share of face value."""
        return int(self.escrow.functions.tokenized_bond(Web3.to_checksum_address(token), face_value).call())

    def usdc_balance(self, address: str) -> int:
        return int(self.usdc.functions.balanceOf(Web3.to_checksum_address(address)).call())

    def allowance(self, owner: str) -> int:
        return int(self.usdc.functions.allowance(Web3.to_checksum_address(owner), self.escrow.address).call())

    def epoch_length(self) -> int:
        """The vault's settlement window, in seconds."""
        return int(self.vault.functions.epoch_length().call())

    def token_address(self, symbol: str) -> str:
        return self.deployment.address(f"token:{symbol}")

    def quote_mint(self, symbol: str, face_value: int) -> tuple[int, int, int]:
        """(tokens minted, the seller's, the fee) for a tokenized lot of `face_value`."""
        capacity, seller, fee = self.escrow.functions.quote_mint(self.token_address(symbol), face_value).call()
        return int(capacity), int(seller), int(fee)

    def twap(self, token: str) -> int | None:
        """The Oracle's half-hour TWAP of a provider token (`Oracle.consult`), None while it has none."""
        try:
            oracle = deployed_contract(self.w3, self.deployment, "Oracle")
            price = int(oracle.functions.consult(Web3.to_checksum_address(token), TWAP_WINDOW).call())
        except (ContractLogicError, KeyError):  # not tracked yet, the window not covered; no Oracle recorded
            return None
        return price or None

    def lot_count(self) -> int:
        return int(self.escrow.functions.lot_count().call())

    def lot(self, lot_id: int) -> ChainLot:
        # By field name, from the ABI: the escrow's `Lot` struct may grow fields.
        abi = next(f for f in self.escrow.abi if f.get("type") == "function" and f.get("name") == "lots")
        names = [c["name"] for c in abi["outputs"][0]["components"]]
        f = dict(zip(names, self.escrow.functions.lots(lot_id).call(), strict=True))
        return ChainLot(
            lot_id,
            str(f["seller"]),
            str(f["token"]),
            int(f["kind"]),
            int(f["status"]),
            int(f["expiry"]),
            int(f["face_value"]),
            int(f["capacity"]),
            int(f["seller_minted"]),
            int(f["consumed"]),
            int(f["bond"]),
            int(f["bond_released"]),
            int(f.get("close_at", 0)),
        )

    def insert_hint(self, token: str, expiry: int) -> int:
        """open_lot's hint for a tokenized lot of `token` expiring at `expiry`: the last lot
        in the token's draw order expiring no later (0: none, an escrow without hints, or
        the new lot expires last). Paged back from the tail, HINT_PAGE lots an eth_call, so
        any length of draw order is searched. Without the hint, 257 lots expiring later and
        257 no later refuse the open; a hint made stale by lots opened or ended before the
        open is mined still works or falls back on chain.

        A new lot usually expires last, and then no hint is sent: the escrow's walk from the
        tail finds its place in one step, and the tail as hint costs 7,444 gas more (cold
        reads of the hint's token, kind and links; anvil, 376,481 against 383,925). Only
        over 256 lots opened between this read and the open, expiring later, could refuse
        it then; the attestor opens every lot.

        Every page reads one block (the head when the search starts): at "latest", a lot
        opened or ended between two pages would make them pages of two draw orders."""
        if not any(f.get("type") == "function" and f.get("name") == "insert_hint" for f in self.escrow.abi):
            return 0
        address = Web3.to_checksum_address(token)
        block = self.w3.eth.block_number
        hint, start = 0, 0
        for _ in range(MAX_HINT_PAGES):
            from_tail = start == 0
            try:
                page = self.escrow.functions.insert_hint(address, expiry, start, HINT_PAGE)
                hint, start = page.call(block_identifier=block)
            except ContractLogicError:
                # `start` left the draw order: only a node that answered from another block
                # than the pinned one (one that forgot it, behind a load balancer) says so.
                # Again from the tail, at the head now.
                block, start = self.w3.eth.block_number, 0
                continue
            if start == 0:
                if hint and from_tail and int(hint) == self._tail(address, block):
                    return 0  # expires last: cheaper without (see above)
                return int(hint)
        return 0  # the walks without a hint: right for any draw order they can pass

    def _tail(self, address: str, block: int) -> int:
        """The last lot of the token's draw order at `block`: every lot expires no later
        than the largest expiry, so `insert_hint` stops at the tail, in one step."""
        tail, _ = self.escrow.functions.insert_hint(address, 2**64 - 1, 0, 1).call(block_identifier=block)
        return int(tail)

    def closes_in_two_steps(self) -> bool:
        """Whether this deployment's escrow has `request_close`/`finalize_close` (older
        deployments close in one step, `close_lot`, which `seller close` does not send)."""
        return any(f.get("type") == "function" and f.get("name") == "request_close" for f in self.escrow.abi)

    def token_share_to_return(self, lot: ChainLot) -> int:
        """What `finalize_close` takes back from a tokenized lot's seller: its share of the
        unconsumed capacity, rounded up (as the escrow computes it)."""
        if lot.kind != KIND_TOKENIZED or lot.capacity == 0:
            return 0
        remaining = lot.capacity - lot.consumed
        return -(-lot.seller_minted * remaining // lot.capacity)

    def opened(self, tx_hash: str) -> OpenedOnChain:
        """The lot a mined open_lot opened, from its LotOpened event."""
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        # The receipt also holds the bond's and the mint's Transfer logs: not this event.
        events = self.escrow.events.LotOpened().process_receipt(receipt, errors=DISCARD)
        if len(events) != 1:
            raise RuntimeError(f"open_lot {tx_hash} emitted {len(events)} LotOpened events")
        args: Any = events[0]["args"]
        return OpenedOnChain(int(args["lot_id"]), int(args["capacity"]), int(args["seller_amount"]), int(args["fee"]))

    # ─── Calls ───────────────────────────────────────────────────────────────

    @staticmethod
    def open_lot_call(attestation: dict[str, Any], token: str, hint: int = 0) -> Call:
        """The attestor's open_lot; `hint` (tokenized lots, from `insert_hint`) is sent only
        when non-zero, so an escrow without hints takes the same call."""
        args: tuple[Any, ...] = (
            Web3.to_checksum_address(attestation["seller"]),
            Web3.to_checksum_address(token),
            attestation["kind"],
            attestation["face_value"],
            attestation["expiry"],
            attestation["bond"],
            bytes.fromhex(str(attestation["terms_hash"]).removeprefix("0x")),
            attestation["rate_bps"],
        )
        return Call(ESCROW, "open_lot", (*args, hint) if hint else args)

    def approve_call(self, amount: int) -> Call:
        return Call(USDC, "approve", (self.escrow.address, amount))

    @staticmethod
    def request_close_call(lot_id: int) -> Call:
        return Call(ESCROW, "request_close", (lot_id,))

    @staticmethod
    def finalize_close_call(lot_id: int) -> Call:
        return Call(ESCROW, "finalize_close", (lot_id,))

    def token_approve_call(self, symbol: str, amount: int) -> tuple[Web3Sender, Call]:
        """The seller's approval of its token share for finalize_close (the token's own contract)."""
        sender = self.must_seller()
        sender.contract(f"token:{symbol}", calls=f"token:{symbol}")
        return sender, Call(f"token:{symbol}", "approve", (self.escrow.address, amount))

    def must_attestor(self) -> Web3Sender:
        if self.attestor is None:
            raise PermissionError("no attestor key")
        return self.attestor

    def must_seller(self) -> Web3Sender:
        if self.seller is None:
            raise PermissionError("no seller key")
        return self.seller


__all__ = ["ChainLot", "OpenedOnChain", "Receipt", "SellerChain", "SignedTx"]
