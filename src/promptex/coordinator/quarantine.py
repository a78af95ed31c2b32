"""How a quarantined usage record ends: settled in a later epoch once its cause is fixed,
or refunded to its payer when the chain can never settle it. Pure decisions over what
the caller read (the record, its lot's state in the ledger and on chain, the payer's
wallet); the coordinator applies them.

    the cause can never go away          refund at once, with the cause as the reason
        (an asset not deployed, a lot that never opened or ended, a lot of the wrong kind)
    its lot opened since                 requeue with the escrow lot id
    quarantined for `retry` seconds      requeue (a wallet bound, capacity opened, a cap renewed:
                                         planning quarantines it again if not)
    settled more than `refund` ago       refund, with the last reason it was held back for
"""

from __future__ import annotations

from dataclasses import dataclass

from promptex.coordinator.chain import LotInfo
from promptex.ledger.lots import FAILED, LotState
from promptex.ledger.usage import StoredUsage
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, SETTLEMENT_GRACE, STATUS_OPEN

REQUEUE, REFUND, WAIT = "requeue", "refund", "wait"
_STATUS = {2: "closed", 3: "expired", 4: "slashed"}


@dataclass(frozen=True)
class Verdict:
    action: str  # requeue | refund | wait
    reason: str | None = None  # refund: what the payer is told
    chain_lot_id: int | None = None  # requeue: the escrow lot its gateway lot opened as


def never_settles(
    record: StoredUsage,
    *,
    asset_known: bool,
    spend_only: bool,
    state: LotState | None,
    lot: LotInfo | None,
    asset_address: str | None,
    now: int,
) -> str | None:
    """Why the chain can never settle the record, or None while it still might."""
    if not asset_known:
        return f"{record.asset} is not an asset of this deployment"
    if record.chain_lot_id is None:
        if record.gateway_lot_id is None or state is None:
            return "the lot that served it was never opened on chain"
        if state.state == FAILED:
            return f"the lot that served it never opened on chain ({state.reason})"
        return None  # still opening: it may yet
    wanted = "tokenized" if spend_only else "listed"
    if record.lot_kind is not None and record.lot_kind != wanted:
        return f"{record.asset} usage is paid to {wanted} lots, lot {record.chain_lot_id} is {record.lot_kind}"
    if lot is None:
        return None
    if spend_only:
        if lot.kind != KIND_TOKENIZED or asset_address is None or lot.token.lower() != asset_address.lower():
            return f"lot {record.chain_lot_id} is not a tokenized lot of {record.asset}"
        return None
    if lot.kind != KIND_LISTED:
        return f"lot {record.chain_lot_id} is not a listed lot"
    if lot.status != STATUS_OPEN:
        return f"lot {record.chain_lot_id} is {_STATUS.get(lot.status, 'not open')}: the escrow credits it no more"
    if now > lot.expiry + SETTLEMENT_GRACE:
        return f"lot {record.chain_lot_id} expired past its settlement grace"
    if lot.capacity - lot.consumed < record.list_usd_micro:
        return f"lot {record.chain_lot_id} has no capacity left for it on chain"
    return None


def decide(
    record: StoredUsage,
    *,
    cause: str | None,
    state: LotState | None,
    now: int,
    retry: int,
    refund: int,
) -> Verdict:
    """What to do with a quarantined record now (`cause`: `never_settles`'s answer)."""
    if cause is not None:
        return Verdict(REFUND, cause)
    if now - record.settled_at >= refund:
        return Verdict(REFUND, f"it could not be settled within {refund} s: {record.quarantine_reason}")
    if record.chain_lot_id is None:
        if state is not None and state.chain_lot_id is not None:
            return Verdict(REQUEUE, chain_lot_id=state.chain_lot_id)
        return Verdict(WAIT)
    quarantined_at = record.quarantined_at if record.quarantined_at is not None else record.settled_at
    return Verdict(REQUEUE) if now - quarantined_at >= retry else Verdict(WAIT)
