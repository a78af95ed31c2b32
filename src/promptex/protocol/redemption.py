"""RedemptionEscrow's wire formats: provider and account ids, the EIP-712 `Receipt` a
provider billing API signs, and the two price bounds on a sale (the honest price at
TWAP-consistent reserves, and the grant's slippage).

One place for what the contract expects, shared by the agent, its fake billing
API, tests and benchmarks. See `contracts/RedemptionEscrow.vy` for the reasons;
`promptex.chain.redemption` deploys it.
"""

from __future__ import annotations

import secrets
from math import isqrt
from typing import Any

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from promptex.protocol import eip712
from promptex.protocol.dex import amount_in
from promptex.protocol.eip712 import EIP712_DOMAIN_TYPE
from promptex.protocol.units import BPS, DAY, PRICE_SCALE

# Mirrors of the contract's constants (tests check that they match).
DOMAIN_NAME = "PROMPTEX RedemptionEscrow"
DOMAIN_VERSION = "1"
MAX_SLIPPAGE_BPS = 5_000
MAX_GRANT_TOKENS = 8
MIN_REFUND_DELAY = 3_600
MAX_REFUND_DELAY = 3 * DAY  # shorter than the Timelock's MIN_DELAY (4 days)
IMPACT_TOLERANCE_BPS = 50  # 0.5 % above the honest input at TWAP-consistent reserves

STATUS_NONE = 0
STATUS_OPEN = 1
STATUS_RELEASED = 2
STATUS_REFUNDED = 3

# TWAP window of the slippage check (at least the Oracle's period: 60 s on a demo
# chain, 900 s on a live one) and the delay before a user may refund.
LOCAL_TWAP_WINDOW = 600
LIVE_TWAP_WINDOW = 1_800
LOCAL_REFUND_DELAY = 3_600
LIVE_REFUND_DELAY = 3 * DAY

RECEIPT_TYPE = [
    {"name": "redemption_id", "type": "uint256"},
    {"name": "sale", "type": "bytes32"},
    {"name": "provider", "type": "bytes32"},
    {"name": "account_ref", "type": "bytes32"},
    {"name": "usd_micro", "type": "uint256"},
    {"name": "billing_ref", "type": "bytes32"},
]
RECEIPT_TYPEHASH = keccak(
    text=(
        "Receipt(uint256 redemption_id,bytes32 sale,bytes32 provider,bytes32 account_ref,uint256 usd_micro,"
        "bytes32 billing_ref)"
    )
)


# ─── Identifiers ─────────────────────────────────────────────────────────────


def provider_id(name: str) -> bytes:
    """A provider's on-chain id: its lower-case name, UTF-8, left-aligned in 32 bytes
    ("Anthropic" → b"anthropic" + 23 zero bytes)."""
    raw = name.strip().lower().encode()
    if not raw or len(raw) > 32:
        raise ValueError(f"a provider name must be 1 to 32 bytes, not {name!r}")
    return raw.ljust(32, b"\0")


def account_ref(provider_account_id: str, salt: bytes = b"") -> bytes:
    """A linked account's on-chain reference: keccak256(salt ‖ the provider's account
    id), so the chain does not show the id. The user links it, the agent buys credits
    on the account it stands for, and the billing API signs the same 32 bytes."""
    if not provider_account_id:
        raise ValueError("empty provider account id")
    return keccak(salt + provider_account_id.encode())


def sale_ref(nonce: int) -> bytes:
    """A nonce as a `sale_ref`, 32 bytes big-endian: what the agent passed to `redeem` before
    `new_sale_ref` (its redeem transaction's nonce), and a small ref for benches and tests.
    Not unique across branches: after a reorg the key's nonce can hold another redeem."""
    if not 0 <= nonce < 2**64:
        raise ValueError(f"a nonce is 0 .. 2**64 - 1, not {nonce}")
    return nonce.to_bytes(32, "big")


def new_sale_ref() -> bytes:
    """A fresh `sale_ref` for one signed redeem: 128 random bits in the low half (the high
    half zero: cheaper calldata). Unique on every branch, unlike the redeem's nonce: a
    reorg can orphan a sold, bought and released sale and give its nonce to another
    redeem of the same key, user and account, which that sale's receipt (public once
    its release was sent) then released (rbreak4 s14). The same bytes re-sent keep it."""
    return bytes(16) + secrets.token_bytes(16)


REDEEM_SELECTOR = keccak(text="redeem(address,address,uint256,uint256,uint256,bytes32)")[:4]


def redeem_sale_ref(calldata: bytes) -> bytes | None:
    """The `sale_ref` a `redeem` call passes (its last argument; every argument is static),
    read from the call's data; None for data that is not such a call."""
    if len(calldata) != 4 + 6 * 32 or calldata[:4] != REDEEM_SELECTOR:
        return None
    return bytes(calldata[-32:])


def sale_id(agent: str, ref: bytes) -> bytes:
    """A sale as receipts name it (`Redeemed.sale`): keccak256(abi_encode(agent, sale_ref)),
    where `agent` is the key that called `redeem`. Another sale under the same escrow id
    (a reorg) has another sale id, so a receipt for one never releases the other."""
    return keccak(encode(["address", "bytes32"], [to_checksum_address(agent), ref]))


def sale_hash(provider: bytes, account_ref: bytes, sale: bytes) -> bytes:
    """What a redemption stores for its provider, account and sale (`redemptions(id).sale_hash`)."""
    return keccak(encode(["bytes32", "bytes32", "bytes32"], [provider, account_ref, sale]))


# ─── Price bounds ────────────────────────────────────────────────────────────


def twap_reserves(k: int, twap_price: int) -> tuple[int, int]:
    """(token, USDC) reserves with the pool's product `k` at the TWAP's ratio, as the
    contract computes them: √k · 10**18 / √p and √k · √p / 10**18 (rounded down)."""
    if twap_price <= 0:
        raise ValueError("no oracle price")
    root_k, root_price = isqrt(k), isqrt(twap_price)
    return root_k * 10**18 // root_price, root_k * root_price // 10**18


def honest_limit(usdc_out: int, k: int, twap_price: int, fee: int) -> int:
    """Most token units `redeem` may sell for `usdc_out`: the pool's input at
    TWAP-consistent reserves (the TWAP amount, the fee and the trade's own impact)
    plus IMPACT_TOLERANCE_BPS, rounded down."""
    token_side, usdc_side = twap_reserves(k, twap_price)
    if usdc_out >= usdc_side:
        raise ValueError("the pool is too shallow for that much USDC")
    return amount_in(usdc_out, token_side, usdc_side, fee) * (BPS + IMPACT_TOLERANCE_BPS) // BPS


def slippage_limit(usdc_out: int, twap_price: int, max_slippage_bps: int) -> int:
    """Most token units a grant lets an agent sell for `usdc_out` USDC units, given
    the Oracle's `consult` price (the contract's formula, rounded down)."""
    if twap_price <= 0:
        raise ValueError("no oracle price")
    if not 0 <= max_slippage_bps <= MAX_SLIPPAGE_BPS:
        raise ValueError(f"slippage {max_slippage_bps} bps is out of range")
    return usdc_out * PRICE_SCALE * BPS // (twap_price * (BPS - max_slippage_bps))


# ─── EIP-712 receipts ────────────────────────────────────────────────────────


def domain_separator(chain_id: int, escrow: str) -> bytes:
    return eip712.domain_separator(DOMAIN_NAME, DOMAIN_VERSION, chain_id, escrow)


def receipt_digest(
    *,
    chain_id: int,
    escrow: str,
    redemption_id: int,
    sale: bytes,
    provider: bytes,
    account_ref: bytes,
    usd_micro: int,
    billing_ref: bytes,
) -> bytes:
    """The EIP-712 digest a provider's billing signer signs for credits bought for one sale
    (`sale_id`) under escrow redemption `redemption_id`."""
    struct_hash = keccak(
        encode(
            ["bytes32", "uint256", "bytes32", "bytes32", "bytes32", "uint256", "bytes32"],
            [RECEIPT_TYPEHASH, redemption_id, sale, provider, account_ref, usd_micro, billing_ref],
        )
    )
    return eip712.typed_digest(domain_separator(chain_id, escrow), struct_hash)


def receipt_typed_data(*, chain_id: int, escrow: str, message: dict[str, Any]) -> dict[str, Any]:
    """The same message as EIP-712 JSON (what eth_signTypedData_v4 shows)."""
    return {
        "types": {"EIP712Domain": EIP712_DOMAIN_TYPE, "Receipt": RECEIPT_TYPE},
        "primaryType": "Receipt",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": to_checksum_address(escrow),
        },
        "message": message,
    }


def sign_receipt(private_key: Any, **fields: Any) -> bytes:
    """A billing signer's 65-byte signature of a Receipt (fields as in `receipt_digest`)."""
    return eip712.sign_digest(private_key, receipt_digest(**fields))
