"""The CreditsVault's wire formats: packed settlement words and EIP-712 messages.

One place for what the contract expects, shared by the coordinator, tests and
benchmarks. See `contracts/CreditsVault.vy` for the layouts' reasons.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from promptex.protocol import eip712
from promptex.protocol.eip712 import EIP712_DOMAIN_TYPE
from promptex.protocol.units import MAX_UINT256

POLICY_WITHDRAWABLE = 1
POLICY_SPEND_ONLY = 2

UNLIMITED = MAX_UINT256  # a SpendCap's per_epoch or total with no limit
MAX_ENTRIES = 1_024  # CreditsVault.MAX_ENTRIES: debits per settlement
MAX_LOTS = 128  # CreditsVault.MAX_LOTS: credits or lot draws per settlement
MAX_LANES = 64  # CreditsVault.MAX_LANES: lanes per session (signed mode)
MAX_SIGNED_ENTRIES = 512  # CreditsVault.MAX_SIGNED_ENTRIES: entries per settle_signed batch
MAX_SESSION_ID = 2**24 - 1  # CreditsVault.MAX_SESSION_ID: session ids (= SessionKey nonces)
MAX_CAP_TOTAL = 2**96 - 1  # CreditsVault.MAX_CAP_TOTAL: a larger total (or session maximum) is cut to it
MAX_CAP_EXPIRY = 2**32 - 1  # CreditsVault.MAX_CAP_EXPIRY: a later expiry is cut to it

DEBIT_AMOUNT_BITS = 96
LOT_AMOUNT_BITS = 160
MANTISSA_BITS = 17
MAX_EXPONENT = 2**7 - 1

DOMAIN_NAME = "PROMPTEX CreditsVault"
DOMAIN_VERSION = "1"

SPEND_CAP_TYPE = [
    {"name": "account", "type": "address"},
    {"name": "asset", "type": "address"},
    {"name": "per_epoch", "type": "uint256"},
    {"name": "total", "type": "uint256"},
    {"name": "expiry", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
]
RELEASE_TYPE = [
    {"name": "account", "type": "address"},
    {"name": "asset", "type": "address"},
    {"name": "amount", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
    {"name": "expiry", "type": "uint256"},
]
# An instant exit the buyer asks for (issue 21): the wallet signs this to the coordinator's
# door, which answers with a Release if the amount is free of unsettled usage. The vault
# never sees it; it shares the vault's domain so a request names its chain and vault, and
# its own type name, so it is never a Release (which the coordinator signs).
EXIT_REQUEST_TYPE = [
    {"name": "account", "type": "address"},
    {"name": "asset", "type": "address"},
    {"name": "amount", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
    {"name": "expiry", "type": "uint256"},
]
# Signed mode (issue 23). A wallet authorizes a session key once; the session key then
# signs one cumulative ceiling per lane and request. `session` in a Voucher is the
# SessionKey's nonce, so a voucher of an earlier session never counts in a later one.
SESSION_KEY_TYPE = [
    {"name": "account", "type": "address"},
    {"name": "asset", "type": "address"},
    {"name": "key", "type": "address"},
    {"name": "lanes", "type": "uint256"},
    {"name": "maximum", "type": "uint256"},
    {"name": "expiry", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
]
VOUCHER_TYPE = [
    {"name": "account", "type": "address"},
    {"name": "asset", "type": "address"},
    {"name": "session", "type": "uint256"},
    {"name": "lane", "type": "uint256"},
    {"name": "ceiling", "type": "uint256"},
]


# ─── Settlement words ────────────────────────────────────────────────────────


def pack_debit(account: str, amount: int) -> int:
    """One debit word: account << 96 | amount (amount < 2**96)."""
    if not 0 <= amount < 2**DEBIT_AMOUNT_BITS:
        raise ValueError(f"debit amount {amount} does not fit in {DEBIT_AMOUNT_BITS} bits")
    return int(account, 16) << DEBIT_AMOUNT_BITS | amount


def pack_debits(debits: dict[str, int] | Iterable[tuple[str, int]]) -> list[int]:
    """Debit words sorted by account, as `settle` requires (accounts must be distinct)."""
    items = list(debits.items()) if isinstance(debits, dict) else list(debits)
    words = sorted(pack_debit(account, amount) for account, amount in items)
    keys = [word >> DEBIT_AMOUNT_BITS for word in words]
    if len(set(keys)) != len(keys):
        raise ValueError("an account appears twice in one settlement")
    return words


def pack_lot_amount(lot_id: int, amount: int) -> int:
    """One credit or lot-draw word: lot_id << 160 | amount (amount < 2**160)."""
    if not 0 <= amount < 2**LOT_AMOUNT_BITS:
        raise ValueError(f"lot amount {amount} does not fit in {LOT_AMOUNT_BITS} bits")
    if not 0 <= lot_id < 2**96:
        raise ValueError(f"lot id {lot_id} does not fit in 96 bits")
    return lot_id << LOT_AMOUNT_BITS | amount


def unpack_debit(word: int) -> tuple[str, int]:
    return to_checksum_address(f"0x{word >> DEBIT_AMOUNT_BITS:040x}"), word & (2**DEBIT_AMOUNT_BITS - 1)


# ─── Signed-mode entries ─────────────────────────────────────────────────────
# A `settle_signed` entry is four words (128 bytes of calldata):
#   head    = account << 96 | lane << 80     (sorted by head >> 80: account, then lane)
#   amounts = ceiling << 128 | amount
#   r, vs   = the voucher's EIP-2098 compact signature (vs = s | yParity << 255)

ENTRY_KEY_SHIFT = 80
CEILING_SHIFT = 128
SIGNED_AMOUNT_BITS = 128
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

SignedEntryWords = tuple[int, int, int, int]


@dataclass(frozen=True)
class SignedDebit:
    """One lane's debit in a `settle_signed` batch, covered by the voucher (session,
    lane, ceiling) whose 65-byte signature it carries."""

    account: str
    lane: int
    ceiling: int
    amount: int
    signature: bytes


def compact_signature(signature: bytes) -> tuple[int, int]:
    """A 65-byte r‖s‖v signature as EIP-2098 (r, vs). High-s signatures are refused:
    the vault rejects them (eth_account and eth_keys only produce low-s ones)."""
    if len(signature) != 65:
        raise ValueError(f"a signature is 65 bytes, not {len(signature)}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v < 27:
        v += 27
    if v not in (27, 28):
        raise ValueError(f"bad signature v {signature[64]}")
    if s > SECP256K1_N // 2:
        raise ValueError("high-s signature: the vault accepts only low-s (EIP-2)")
    return r, s | (v - 27) << 255


def expand_signature(r: int, vs: int) -> bytes:
    """The 65-byte r‖s‖v signature of an EIP-2098 (r, vs) pair."""
    s = vs & (2**255 - 1)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + (vs >> 255)])


def pack_signed_entry(debit: SignedDebit) -> SignedEntryWords:
    """One `settle_signed` entry (a `SignedEntry` tuple)."""
    if not 0 <= debit.lane < MAX_LANES:
        raise ValueError(f"lane {debit.lane} is not in 0 .. {MAX_LANES - 1}")
    if not 0 <= debit.amount < 2**SIGNED_AMOUNT_BITS or not 0 <= debit.ceiling < 2**CEILING_SHIFT:
        raise ValueError("ceiling and amount must fit in 128 bits")
    r, vs = compact_signature(debit.signature)
    head = int(debit.account, 16) << DEBIT_AMOUNT_BITS | debit.lane << ENTRY_KEY_SHIFT
    return head, debit.ceiling << CEILING_SHIFT | debit.amount, r, vs


def pack_signed_entries(debits: Iterable[SignedDebit]) -> list[SignedEntryWords]:
    """Entries sorted by (account, lane) as `settle_signed` requires; a lane may appear
    once per batch, and a batch holds at most MAX_SIGNED_ENTRIES."""
    entries = sorted(pack_signed_entry(debit) for debit in debits)
    keys = [entry[0] >> ENTRY_KEY_SHIFT for entry in entries]
    if len(set(keys)) != len(keys):
        raise ValueError("a lane appears twice in one batch")
    if len(entries) > MAX_SIGNED_ENTRIES:
        raise ValueError(f"{len(entries)} entries: a batch holds at most {MAX_SIGNED_ENTRIES}")
    return entries


def unpack_signed_entry(entry: SignedEntryWords) -> SignedDebit:
    head, amounts, r, vs = entry
    return SignedDebit(
        account=to_checksum_address(f"0x{head >> DEBIT_AMOUNT_BITS:040x}"),
        lane=(head >> ENTRY_KEY_SHIFT) & 0xFFFF,
        ceiling=amounts >> CEILING_SHIFT,
        amount=amounts & (2**SIGNED_AMOUNT_BITS - 1),
        signature=expand_signature(r, vs),
    )


# ─── Spend caps ──────────────────────────────────────────────────────────────


def quantize_per_epoch(value: int) -> int:
    """The per-epoch maximum the vault enforces for a signed value (rounded down)."""
    if value < 1 << MANTISSA_BITS:
        return value
    exponent = value.bit_length() - MANTISSA_BITS
    if exponent > MAX_EXPONENT:
        return ((1 << MANTISSA_BITS) - 1) << MAX_EXPONENT
    return (value >> exponent) << exponent


def per_epoch_at_least(value: int) -> int:
    """The smallest per-epoch maximum the vault can store that is ≥ `value`: what to sign
    so that the limit enforced (rounded down to m × 2**e, m < 2**17) is never below the
    one a user asked for (a cap of 50 USDC would otherwise be enforced as 49.999872)."""
    if value < 1 << MANTISSA_BITS:
        return value
    exponent = value.bit_length() - MANTISSA_BITS
    mantissa = -(-value // (1 << exponent))  # rounded up
    if mantissa == 1 << MANTISSA_BITS:  # carried into the next exponent
        mantissa, exponent = 1 << (MANTISSA_BITS - 1), exponent + 1
    if exponent > MAX_EXPONENT:
        return UNLIMITED
    return mantissa << exponent


# ─── EIP-712 ─────────────────────────────────────────────────────────────────
# Digests are built here from the type strings (what the contract hashes); a
# test checks them against eth_account's generic typed-data encoder, which is
# ~5x slower and would dominate the state-machine tests.

SPEND_CAP_TYPEHASH = keccak(
    text="SpendCap(address account,address asset,uint256 per_epoch,uint256 total,uint256 expiry,uint256 nonce)"
)
RELEASE_TYPEHASH = keccak(text="Release(address account,address asset,uint256 amount,uint256 nonce,uint256 expiry)")
EXIT_REQUEST_TYPEHASH = keccak(
    text="ExitRequest(address account,address asset,uint256 amount,uint256 nonce,uint256 expiry)"
)
SESSION_KEY_TYPEHASH = keccak(
    text="SessionKey(address account,address asset,address key,uint256 lanes,uint256 maximum,uint256 expiry,"
    "uint256 nonce)"
)
VOUCHER_TYPEHASH = keccak(text="Voucher(address account,address asset,uint256 session,uint256 lane,uint256 ceiling)")


def domain_separator(chain_id: int, vault: str) -> bytes:
    return eip712.domain_separator(DOMAIN_NAME, DOMAIN_VERSION, chain_id, vault)


def _digest(chain_id: int, vault: str, struct_hash: bytes) -> bytes:
    return eip712.typed_digest(domain_separator(chain_id, vault), struct_hash)


def spend_cap_digest(
    *, chain_id: int, vault: str, account: str, asset: str, per_epoch: int, total: int, expiry: int, nonce: int
) -> bytes:
    """The EIP-712 digest a buyer signs to authorize spending."""
    struct_hash = keccak(
        encode(
            ["bytes32", "address", "address", "uint256", "uint256", "uint256", "uint256"],
            [SPEND_CAP_TYPEHASH, account, asset, per_epoch, total, expiry, nonce],
        )
    )
    return _digest(chain_id, vault, struct_hash)


def release_digest(
    *, chain_id: int, vault: str, account: str, asset: str, amount: int, nonce: int, expiry: int
) -> bytes:
    """The EIP-712 digest a coordinator signs to release funds at once."""
    struct_hash = keccak(
        encode(
            ["bytes32", "address", "address", "uint256", "uint256", "uint256"],
            [RELEASE_TYPEHASH, account, asset, amount, nonce, expiry],
        )
    )
    return _digest(chain_id, vault, struct_hash)


def exit_request_digest(
    *, chain_id: int, vault: str, account: str, asset: str, amount: int, nonce: int, expiry: int
) -> bytes:
    """The EIP-712 digest a wallet signs to ask the coordinator's door for an instant exit
    (`nonce` is the door's per-wallet request nonce, not the vault's release nonce)."""
    struct_hash = keccak(
        encode(
            ["bytes32", "address", "address", "uint256", "uint256", "uint256"],
            [EXIT_REQUEST_TYPEHASH, account, asset, amount, nonce, expiry],
        )
    )
    return _digest(chain_id, vault, struct_hash)


def session_key_digest(
    *,
    chain_id: int,
    vault: str,
    account: str,
    asset: str,
    key: str,
    lanes: int,
    maximum: int,
    expiry: int,
    nonce: int,
) -> bytes:
    """The EIP-712 digest a wallet signs to authorize a session key (signed mode)."""
    struct_hash = keccak(
        encode(
            ["bytes32", "address", "address", "address", "uint256", "uint256", "uint256", "uint256"],
            [SESSION_KEY_TYPEHASH, account, asset, key, lanes, maximum, expiry, nonce],
        )
    )
    return _digest(chain_id, vault, struct_hash)


def voucher_digest(
    *, chain_id: int, vault: str, account: str, asset: str, session: int, lane: int, ceiling: int
) -> bytes:
    """The EIP-712 digest a session key signs: lane `lane` of `account` in session
    `session` may be charged at most `ceiling` of `asset` in total."""
    struct_hash = keccak(
        encode(
            ["bytes32", "address", "address", "uint256", "uint256", "uint256"],
            [VOUCHER_TYPEHASH, account, asset, session, lane, ceiling],
        )
    )
    return _digest(chain_id, vault, struct_hash)


def typed_data(primary: str, *, chain_id: int, vault: str, message: dict[str, Any]) -> dict[str, Any]:
    """The same messages as EIP-712 JSON (what a wallet's eth_signTypedData_v4 shows)."""
    fields = {
        "SpendCap": SPEND_CAP_TYPE,
        "Release": RELEASE_TYPE,
        "ExitRequest": EXIT_REQUEST_TYPE,
        "SessionKey": SESSION_KEY_TYPE,
        "Voucher": VOUCHER_TYPE,
    }[primary]
    return {
        "types": {"EIP712Domain": EIP712_DOMAIN_TYPE, primary: fields},
        "primaryType": primary,
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": to_checksum_address(vault),
        },
        "message": message,
    }


def sign_spend_cap(private_key: Any, **fields: Any) -> bytes:
    """A buyer's 65-byte signature of a SpendCap (fields as in `spend_cap_digest`)."""
    return eip712.sign_digest(private_key, spend_cap_digest(**fields))


def sign_release(private_key: Any, **fields: Any) -> bytes:
    """A coordinator's 65-byte signature of a Release (fields as in `release_digest`)."""
    return eip712.sign_digest(private_key, release_digest(**fields))


def sign_exit_request(private_key: Any, **fields: Any) -> bytes:
    """A wallet's 65-byte signature of an ExitRequest (fields as in `exit_request_digest`)."""
    return eip712.sign_digest(private_key, exit_request_digest(**fields))


def recover_exit_request_signer(
    signature: bytes, *, chain_id: int, vault: str, account: str, asset: str, amount: int, nonce: int, expiry: int
) -> str | None:
    """The checksummed address that signed this ExitRequest, or None for a signature that
    recovers no key (a wrong field recovers some other address: compare with `account`)."""
    digest = exit_request_digest(
        chain_id=chain_id, vault=vault, account=account, asset=asset, amount=amount, nonce=nonce, expiry=expiry
    )
    return eip712.recover_digest(digest, signature)


def sign_session_key(private_key: Any, **fields: Any) -> bytes:
    """A wallet's 65-byte signature of a SessionKey (fields as in `session_key_digest`)."""
    return eip712.sign_digest(private_key, session_key_digest(**fields))


def sign_voucher(private_key: Any, **fields: Any) -> bytes:
    """A session key's 65-byte signature of a Voucher (fields as in `voucher_digest`)."""
    return eip712.sign_digest(private_key, voucher_digest(**fields))


def recover_voucher_signer(
    signature: bytes, *, chain_id: int, vault: str, account: str, asset: str, session: int, lane: int, ceiling: int
) -> str | None:
    """The checksummed address that signed this Voucher (65 bytes r ‖ s ‖ v, v 27/28 or
    0/1), or None for a signature that recovers no key. A wrong field recovers some other
    address, never an error: compare the result with the session key."""
    digest = voucher_digest(
        chain_id=chain_id, vault=vault, account=account, asset=asset, session=session, lane=lane, ceiling=ceiling
    )
    return eip712.recover_digest(digest, signature)
