"""Signed mode's EIP-712 messages (issue 23): our fast digests equal eth_account's
generic typed-data encoding, so a wallet's eth_signTypedData_v4 and our signers agree."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from promptex.protocol.vault import recover_voucher_signer, sign_session_key, sign_voucher, typed_data

WALLET = Account.from_key("0x" + "11" * 32)
SESSION = Account.from_key("0x" + "22" * 32)
DOMAIN = {"chain_id": 31_337, "vault": "0x" + "ab" * 20}
ASSET = "0x" + "cd" * 20


@pytest.mark.parametrize("primary", ["SessionKey", "Voucher"])
def test_signed_mode_digest__matches_eth_account_typed_data(primary):
    if primary == "SessionKey":
        fields = {
            "account": WALLET.address,
            "asset": ASSET,
            "key": SESSION.address,
            "lanes": 4,
            "maximum": 5 * 10**6,
            "expiry": 1_900_000_000,
            "nonce": 3,
        }
        signer, ours = WALLET, sign_session_key(WALLET.key, **DOMAIN, **fields)
    else:
        fields = {"account": WALLET.address, "asset": ASSET, "session": 3, "lane": 2, "ceiling": 1_234_567}
        signer, ours = SESSION, sign_voucher(SESSION.key, **DOMAIN, **fields)
    reference = encode_typed_data(full_message=typed_data(primary, **DOMAIN, message=fields))
    assert Account.sign_message(reference, signer.key).signature == ours


def test_voucher__changing_any_field__changes_the_signature():
    base = {"account": WALLET.address, "asset": ASSET, "session": 3, "lane": 2, "ceiling": 1_000}
    signed = sign_voucher(SESSION.key, **DOMAIN, **base)
    variants = [
        {**base, "lane": 3},
        {**base, "session": 4},
        {**base, "ceiling": 1_001},
        {**base, "asset": "0x" + "ce" * 20},
        {**base, "account": SESSION.address},
    ]
    for fields in variants:
        assert sign_voucher(SESSION.key, **DOMAIN, **fields) != signed
    assert sign_voucher(SESSION.key, chain_id=1, vault=DOMAIN["vault"], **base) != signed
    assert sign_voucher(SESSION.key, chain_id=31_337, vault="0x" + "ac" * 20, **base) != signed


def test_recover_voucher_signer__the_session_key__none_for_a_malleated_or_broken_signature():
    fields = {"account": WALLET.address, "asset": ASSET, "session": 3, "lane": 2, "ceiling": 1_000}
    signature = sign_voucher(SESSION.key, **DOMAIN, **fields)
    assert recover_voucher_signer(signature, **DOMAIN, **fields) == SESSION.address
    assert recover_voucher_signer(signature, **DOMAIN, **{**fields, "ceiling": 1_001}) != SESSION.address
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(signature[32:64], "big")
    high_s = signature[:32] + (n - s).to_bytes(32, "big") + bytes([55 - signature[64]])  # the same, malleated
    assert recover_voucher_signer(high_s, **DOMAIN, **fields) is None
    assert recover_voucher_signer(b"\x00" * 65, **DOMAIN, **fields) is None
    assert recover_voucher_signer(signature[:64], **DOMAIN, **fields) is None
