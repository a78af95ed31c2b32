"""The gateway's lot attestation, submitted by the attestor, opens a lot in CreditEscrow on anvil."""

import json
import time
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from promptex.chain.attest import LotRefused, open_lot
from promptex.chain.deployments import load_deployment
from promptex.gateway.sellers import Capacity, attestation
from promptex.protocol.escrow import KIND_LISTED

ANVIL_MNEMONIC = " ".join(["test"] * 11 + ["junk"])  # anvil's public development mnemonic


def anvil_account(index: int):
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


def contract(w3, deployment, name):
    record = deployment.contracts[name]
    return w3.eth.contract(address=record.address, abi=json.loads(Path(record.abi).read_text()))


def send(w3, account, call):
    tx = call.build_transaction({"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)})
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    )
    assert receipt["status"] == 1


def test_open_lot__attestation_from_add_capacity__lot_opened_for_the_seller(ape_run, anvil_url, tmp_path):
    assert ape_run("deploy").returncode == 0
    deployment = load_deployment("local", tmp_path / "deployments")
    w3 = Web3(Web3.HTTPProvider(anvil_url))
    attestor, seller = anvil_account(0), anvil_account(1)  # the deploy script makes the deployer the attestor
    escrow = contract(w3, deployment, "CreditEscrow")
    face_value = 100_000_000  # $100
    bond = -(-face_value * escrow.functions.min_bond_bps().call() // 10_000)
    usdc = contract(w3, deployment, "USDC")
    send(w3, seller, usdc.functions.mint(seller.address, bond))
    send(w3, seller, usdc.functions.approve(escrow.address, bond))
    capacity = Capacity(
        provider="openai", api="openai", base_url="http://127.0.0.1:1/v1", api_key="sk-fake-e2e",
        face_value_usd_micro=face_value, kind="listed", rate_bps=6000, expires_at=int(time.time()) + 30 * 86_400,
        seller=seller.address, resale_permitted=True, bond_usdc=bond,
    )  # fmt: skip

    tx, lot_id = open_lot(anvil_url, deployment, attestor.key.hex(), attestation(capacity))

    assert tx.startswith("0x")
    assert lot_id == 1 == escrow.functions.lot_count().call()
    lot = escrow.functions.lots(1).call()
    assert seller.address in lot and KIND_LISTED in lot and face_value in lot


def test_open_lot__bond_not_approved_or_not_an_attestor__refused_and_nothing_sent(ape_run, anvil_url, tmp_path):
    extra = anvil_account(7)
    assert ape_run("deploy", "--extra-attestor", extra.address).returncode == 0
    deployment = load_deployment("local", tmp_path / "deployments")
    w3 = Web3(Web3.HTTPProvider(anvil_url))
    seller, stranger = anvil_account(1), anvil_account(2)
    escrow = contract(w3, deployment, "CreditEscrow")
    assert escrow.functions.is_attestor(extra.address).call()
    assert not escrow.functions.is_attestor(seller.address).call()
    capacity = Capacity(
        provider="openai", api="openai", base_url="http://127.0.0.1:1/v1", api_key="sk-fake-e2e",
        face_value_usd_micro=100_000_000, kind="listed", rate_bps=6000, expires_at=int(time.time()) + 30 * 86_400,
        seller=seller.address, resale_permitted=True, bond_usdc=escrow.functions.min_bond(100_000_000).call(),
    )  # fmt: skip
    nonces = {a.address: w3.eth.get_transaction_count(a.address) for a in (extra, stranger)}

    with pytest.raises(LotRefused, match="insufficient allowance|bond transfer failed"):
        open_lot(anvil_url, deployment, extra.key.hex(), attestation(capacity))  # the seller approved no bond
    with pytest.raises(LotRefused, match="caller is not an attestor"):
        open_lot(anvil_url, deployment, stranger.key.hex(), attestation(capacity))

    assert escrow.functions.lot_count().call() == 0
    assert {a.address: w3.eth.get_transaction_count(a.address) for a in (extra, stranger)} == nonces
