"""Submit a lot attestation: CreditEscrow.open_lot(...) sent by the attestor.

The gateway only produces the attestation (the open_lot arguments); this seam sends
it when a deployment and an attestor key are configured. Serving never waits on it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from promptex.chain.deployments import Deployment
from promptex.chain.sender import Call, Web3Sender

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
    attestor = Web3Sender(rpc_url, deployment, attestor_key)
    escrow = attestor.contract("CreditEscrow", calls="escrow")
    token = deployment.address(f"token:{attestation['token']}")
    call = Call(
        "escrow",
        "open_lot",
        (
            attestor.w3.to_checksum_address(attestation["seller"]),
            attestor.w3.to_checksum_address(token),
            attestation["kind"],
            attestation["face_value"],
            attestation["expiry"],
            attestation["bond"],
            bytes.fromhex(str(attestation["terms_hash"]).removeprefix("0x")),
            attestation["rate_bps"],
        ),
    )
    reason = attestor.simulate(call)
    if reason is not None:
        raise LotRefused(reason)
    signed = attestor.sign(call, attestor.pending_nonce())
    attestor.broadcast(signed.raw)
    receipt = attestor.wait(signed.tx_hash, 120)
    if receipt is None:
        raise TimeoutError(f"open_lot {signed.tx_hash} was not mined within 120 s")
    if not receipt.ok:
        raise RuntimeError(f"open_lot reverted in {signed.tx_hash}")
    opened = escrow.events.LotOpened().process_receipt(attestor.w3.eth.get_transaction_receipt(signed.tx_hash))  # type: ignore[arg-type]
    if len(opened) != 1:
        raise RuntimeError(f"open_lot in {signed.tx_hash} emitted {len(opened)} LotOpened events")
    return OpenedLot(signed.tx_hash, int(opened[0]["args"]["lot_id"]))
