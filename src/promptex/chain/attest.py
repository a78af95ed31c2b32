"""Submit a lot attestation: CreditEscrow.open_lot(...) sent by the attestor.

The gateway only produces the attestation (the open_lot arguments); this seam sends
it when a deployment and an attestor key are configured. Serving never waits on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError

from promptex.chain.deployments import Deployment

# On the local network `promptex up` gives the dashboard its own attestor, anvil's public
# development account 7 (granted with `ape run deploy --extra-attestor`), so that opening a
# lot never races the deployer's or the coordinator's nonces.
LOCAL_ATTESTOR_KEY = "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356"  # account 7


class LotRefused(ValueError):
    """The escrow would revert open_lot (the reason is the contract's): nothing was sent."""


class OpenedLot(NamedTuple):
    tx: str  # 0x-prefixed transaction hash
    lot_id: int  # the CreditEscrow lot id (from its LotOpened event)


def open_lot(rpc_url: str, deployment: Deployment, attestor_key: str, attestation: dict[str, Any]) -> OpenedLot:
    """Send open_lot for `attestation` (token given by symbol), wait for it, and return the tx
    hash and the lot id the escrow assigned: what the gateway records
    (`GatewayStore.set_attestation(..., chain_lot_id=)`) so usage on the lot can be settled.
    The call is simulated first: a revert (no bond approved, an expiry in the past, a
    caller without the attestor role) raises LotRefused and sends nothing."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    record = deployment.contracts["CreditEscrow"]
    escrow = w3.eth.contract(
        address=Web3.to_checksum_address(record.address), abi=json.loads(Path(record.abi).read_text())
    )
    token = deployment.address(f"token:{attestation['token']}")
    attestor = Account.from_key(attestor_key)
    call = escrow.functions.open_lot(
        Web3.to_checksum_address(attestation["seller"]),
        Web3.to_checksum_address(token),
        attestation["kind"],
        attestation["face_value"],
        attestation["expiry"],
        attestation["bond"],
        bytes.fromhex(str(attestation["terms_hash"]).removeprefix("0x")),
        attestation["rate_bps"],
    )
    try:
        call.call({"from": attestor.address}, block_identifier="pending")
    except ContractLogicError as exc:
        raise LotRefused(str(exc.message or exc)) from None
    nonce = w3.eth.get_transaction_count(attestor.address, "pending")
    tx = call.build_transaction({"from": attestor.address, "nonce": nonce, "chainId": w3.eth.chain_id})
    signed = attestor.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    if receipt["status"] != 1:
        raise RuntimeError(f"open_lot reverted in {tx_hash.hex()}")
    opened = escrow.events.LotOpened().process_receipt(receipt)
    if len(opened) != 1:
        raise RuntimeError(f"open_lot in {tx_hash.hex()} emitted {len(opened)} LotOpened events")
    return OpenedLot("0x" + tx_hash.hex().removeprefix("0x"), int(opened[0]["args"]["lot_id"]))
