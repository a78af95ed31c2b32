"""A CreditsVault world for the signed-mode tests (titanoboa): USDC and a provider token
listed, an escrow with a listed lot that settlements credit, funded buyers with wallet
keys, and helpers that sign SessionKeys and Vouchers and post `settle_signed` batches.

Built once per module (tests run inside titanoboa's per-test anchors, so each starts
from this state); the state machine reuses it too.
"""

from dataclasses import dataclass

import boa
from boa_partial import LazyPartial
from eth_abi import decode
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from promptex.protocol.vault import (
    SignedDebit,
    pack_lot_amount,
    pack_signed_entries,
    sign_session_key,
    sign_voucher,
)

TOKEN = LazyPartial("contracts/ComputeToken.vy")
USDC = LazyPartial("contracts/test/MockUSDC.vy")
ESCROW = LazyPartial("contracts/CreditEscrow.vy")
VAULT = LazyPartial("contracts/CreditsVault.vy")
SIGNED = LazyPartial("contracts/CreditsVaultSigned.vy")

EPOCH = 60
MAX_PAUSE = 2 * EPOCH
RATE_BPS = 6_000
USD = 10**6
ROOT = keccak(text="signed usage records")
N_BUYERS = 4


@dataclass
class Buyer:
    address: str
    key: bytes  # the wallet's private key (signs SessionKeys)


class SignedWorld:
    def __init__(self) -> None:
        self.admin = boa.env.generate_address("signed admin")
        self.seller = boa.env.generate_address("signed seller")
        self.coordinator = boa.env.generate_address("signed coordinator")
        self.pauser = boa.env.generate_address("signed pauser")
        keys = [keccak(text=f"signed buyer {i}") for i in range(N_BUYERS)]
        self.buyers = [Buyer(Account.from_key(k).address, k) for k in keys]
        with boa.env.prank(self.admin):
            self.usdc = USDC.deploy()
            self.escrow = ESCROW.deploy(self.usdc.address, self.admin, EPOCH)
            self.vault = VAULT.deploy(self.usdc.address, self.escrow.address, EPOCH, MAX_PAUSE, SIGNED.deploy().address)
            self.cld = TOKEN.deploy("CLD credit", "CLD", "Anthropic", 4_218, self.escrow.address, self.vault.address)
            self.escrow.add_provider(self.cld.address, 1_000)
            self.escrow.grant_attestor(self.admin)
            self.escrow.set_vault(self.vault.address)
            self.vault.list_asset(self.cld.address, 2)
            self.vault.grant_coordinator(self.coordinator)
            self.vault.grant_pauser(self.pauser)
        self.usdc.mint(self.seller, 10**15)
        self.usdc.approve(self.escrow.address, 10**12, sender=self.seller)  # exactly the lot's bond
        expiry = boa.env.evm.patch.timestamp + 10 * 365 * 86_400
        with boa.env.prank(self.admin):
            self.lot = self.escrow.open_lot(
                self.seller, self.cld.address, 2, 10**13, expiry, 10**12, b"\x11" * 32, 10_000
            )
        for buyer in self.buyers:
            self.usdc.mint(buyer.address, 1_000 * USD)
            self.usdc.approve(self.vault.address, 2**256 - 1, sender=buyer.address)
            self.vault.deposit(self.usdc.address, 1_000 * USD, sender=buyer.address)
        self.chain_id = self.vault.eip712Domain()[3]
        self.genesis = self.vault.genesis()

    # ── time ─────────────────────────────────────────────────────────────────

    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def window(self) -> int:
        return (self.now() - self.genesis) // EPOCH

    def next_window(self, count: int = 1) -> None:
        """Moves to the start of the window `count` windows ahead."""
        target = self.genesis + (self.window() + count) * EPOCH
        boa.env.time_travel(seconds=target - self.now())

    # ── signing ──────────────────────────────────────────────────────────────

    def session_key_signature(self, buyer: Buyer, key: str, lanes: int, maximum: int, expiry: int, **over) -> bytes:
        asset = over.get("asset", self.usdc.address)
        return sign_session_key(
            buyer.key,
            chain_id=over.get("chain_id", self.chain_id),
            vault=over.get("vault", self.vault.address),
            account=buyer.address,
            asset=asset,
            key=key,
            lanes=lanes,
            maximum=maximum,
            expiry=expiry,
            nonce=over.get("nonce", self.vault.session_nonce(buyer.address, asset)),
        )

    def open_session(
        self, buyer: Buyer, lanes: int = 4, maximum: int = 100 * USD, lifetime: int = 86_400, asset=None, tag: str = ""
    ) -> bytes:
        """Registers a fresh session key for `buyer` (relayed by the coordinator); returns
        the key's private key."""
        asset = self.usdc.address if asset is None else asset
        nonce = self.vault.session_nonce(buyer.address, asset)
        session_key = keccak(text=f"session {buyer.address} {asset} {nonce}{tag}")
        key = Account.from_key(session_key).address
        expiry = self.now() + lifetime
        signature = self.session_key_signature(buyer, key, lanes, maximum, expiry, asset=asset)
        self.vault.register_session_key(
            buyer.address, asset, key, lanes, maximum, expiry, nonce, signature, sender=self.coordinator
        )
        return session_key

    def voucher(self, session_key: bytes, buyer: Buyer, lane: int, ceiling: int, **over) -> bytes:
        asset = over.get("asset", self.usdc.address)
        return sign_voucher(
            session_key,
            chain_id=over.get("chain_id", self.chain_id),
            vault=over.get("vault", self.vault.address),
            account=over.get("account", buyer.address),
            asset=asset,
            session=over.get("session", self.vault.session_key(buyer.address, asset)[1]),
            lane=over.get("voucher_lane", lane),
            ceiling=ceiling,
        )

    def debit(self, session_key: bytes, buyer: Buyer, lane: int, ceiling: int, amount: int, **over) -> SignedDebit:
        return SignedDebit(
            buyer.address, lane, ceiling, amount, self.voucher(session_key, buyer, lane, ceiling, **over)
        )

    # ── settlement ───────────────────────────────────────────────────────────

    def settle_signed(self, debits, *, fee: int = 0, asset=None, entries=None, epoch=None, sender=None, credit=True):
        """Posts one batch (USDC: the listed lot is credited everything but the fee)."""
        asset = self.usdc.address if asset is None else asset
        entries = pack_signed_entries(debits) if entries is None else entries
        total = sum(e[1] & (2**128 - 1) for e in entries)
        credits = [pack_lot_amount(self.lot, total - fee)] if credit and total - fee > 0 else []
        epoch = self.vault.last_epoch(asset) + 1 if epoch is None else epoch
        return self.vault.settle_signed(epoch, asset, entries, credits, 0, fee, ROOT, sender=sender or self.coordinator)

    def events(self, name: str) -> list[dict]:
        """The vault's `name` events in the last call, decoded from the raw logs (signed
        mode logs from the delegated module's code, which titanoboa's decoder skips)."""
        abi = next(e for e in self.vault.abi if e.get("type") == "event" and e["name"] == name)
        types = ",".join(i["type"] for i in abi["inputs"])
        topic0 = keccak(text=f"{name}({types})")
        found = []
        for _, address, topics, data in self.vault._computation.get_raw_log_entries():
            if address != self.vault.address.canonical_address or topics[0] != int.from_bytes(topic0, "big"):
                continue
            indexed = [i for i in abi["inputs"] if i["indexed"]]
            plain = [i for i in abi["inputs"] if not i["indexed"]]
            values = dict(zip([i["name"] for i in plain], decode([i["type"] for i in plain], data), strict=True))
            for i, topic in zip(indexed, topics[1:], strict=True):
                values[i["name"]] = decode([i["type"]], topic.to_bytes(32, "big"))[0]
            for i in abi["inputs"]:
                if i["type"] == "address":
                    values[i["name"]] = to_checksum_address(values[i["name"]])
            found.append(values)
        return found

    def held(self) -> int:
        return self.usdc.balanceOf(self.vault.address)

    def conserved(self) -> bool:
        """The vault holds exactly balances + claimables + reserve (USDC)."""
        balances = sum(self.vault.balance_of(b.address, self.usdc.address) for b in self.buyers)
        claimable = self.vault.claimable(self.seller, self.usdc.address)
        return self.held() == balances + claimable + self.vault.reserve(self.usdc.address)
