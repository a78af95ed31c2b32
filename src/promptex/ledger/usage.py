"""Usage records: what a settled request used and which lot served it, written in the
same transaction as the settlement so a crash can never keep one without the other.

The coordinator later assigns each record to one settlement batch (or quarantines it
with a reason) through the functions below, in its own transactions; nothing here deletes
a record. A quarantined record ends one of two ways: back to pending once its cause is
fixed (`requeue`: it settles in a later epoch), or refunded to its payer in the ledger
when the chain can never settle it (`refund`: the vault never debited it), with the
reason kept for the payer to read. `settlement_note` says which, in words. Should the
chain debit a refunded record after all (a reorg, then the network re-includes the
settle of the batch it failed out of), the refund is taken back (`take_back_refund`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select, update

from promptex.ledger.accounts import system_account_ids
from promptex.ledger.amounts import add
from promptex.ledger.journal import insert_ignore, post_entry
from promptex.ledger.metadata import REASON
from promptex.ledger.models import Hold, HoldStatus
from promptex.ledger.schema import (
    balances,
    budgets,
    chain_spend_caps,
    holds,
    journal_entries,
    session_keys,
    usage_records,
)

PENDING, BATCHED, QUARANTINED, REFUNDED = "pending", "batched", "quarantined", "refunded"
CAPPED, SIGNED = "capped", "signed"  # a record's mode (issue 23)
REFUND, UNREFUND = "refund", "unrefund"  # journal entry kinds: a refund, and a refund taken back
TOKEN_DETAILS = ("cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens")


@dataclass(frozen=True)
class UsageRecord:
    """What the gateway metered for one request (the ledger adds who paid and how much)."""

    model: str
    input_tokens: int  # all input, cached included
    output_tokens: int  # all output, reasoning included
    list_usd_micro: int  # the serving lot's draw-down at list price
    gateway_lot_id: int | None = None
    chain_lot_id: int | None = None  # None: the serving lot was never opened on chain
    lot_kind: str | None = None  # tokenized | listed
    fee_bps: int | None = None  # USDC: the protocol fee included in the price
    # Parts of the counts above, as `metering.TokenUsage` nests them.
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    # Signed mode (issue 23): the ceiling voucher that covers it; capped: none.
    mode: str = CAPPED
    voucher_session: int | None = None
    voucher_lane: int | None = None
    voucher_ceiling: int | None = None


@dataclass(frozen=True)
class StoredUsage:
    """A usage record as stored, with its settlement state."""

    request_id: str
    account: int
    payer: int
    asset: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: int
    gateway_lot_id: int | None
    chain_lot_id: int | None
    lot_kind: str | None
    list_usd_micro: int
    fee_bps: int | None
    seller_share: int | None
    fee: int | None
    settled_at: int
    status: str
    address: str | None
    batch_id: int | None
    epoch: int | None
    quarantine_reason: str | None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    refund_reason: str | None = None  # refunded: why the chain could never settle it
    quarantined_at: int | None = None  # when it was last set aside
    mode: str = "capped"  # capped | signed (issue 23)
    voucher_session: int | None = None  # signed: the covering voucher's session, lane, ceiling
    voucher_lane: int | None = None
    voucher_ceiling: int | None = None


def stored_usage(row: Any) -> StoredUsage:
    m = row._mapping
    return StoredUsage(
        m["request_id"],
        m["account_id"],
        m["payer_id"],
        m["asset"],
        m["model"],
        m["input_tokens"],
        m["output_tokens"],
        m["cost"],
        m["gateway_lot_id"],
        m["chain_lot_id"],
        m["lot_kind"],
        m["list_usd_micro"],
        m["fee_bps"],
        m["seller_share"],
        m["fee"],
        m["settled_at"],
        m["status"],
        m["address"],
        m["batch_id"],
        m["epoch"],
        m["quarantine_reason"],
        **{name: m[name] for name in TOKEN_DETAILS},
        refund_reason=m["refund_reason"],
        quarantined_at=m["quarantined_at"],
        mode=m["mode"],
        voucher_session=m["voucher_session"],
        voucher_lane=m["voucher_lane"],
        voucher_ceiling=m["voucher_ceiling"],
    )


def check_record(record: UsageRecord) -> None:
    """A record's numbers: none negative, and each part within its whole."""
    details = [getattr(record, name) for name in TOKEN_DETAILS]
    if min(record.input_tokens, record.output_tokens, record.list_usd_micro, *details) < 0:
        raise ValueError("token counts and list value cannot be negative")
    if record.mode not in (CAPPED, SIGNED):
        raise ValueError(f"a usage record's mode is {CAPPED!r} or {SIGNED!r}, not {record.mode!r}")
    if (record.mode == SIGNED) != (record.voucher_session is not None):
        raise ValueError("a signed-mode record names its voucher, and only a signed-mode record does")
    if (
        record.cache_read_tokens + record.cache_write_tokens > record.input_tokens
        or record.cache_write_1h_tokens > record.cache_write_tokens
        or record.reasoning_tokens > record.output_tokens
    ):
        raise ValueError("cached tokens are part of the input tokens, reasoning tokens of the output tokens")


def record_values(record: UsageRecord) -> dict[str, Any]:
    """A usage row's values that come from the record, not from the settled hold."""
    check_record(record)
    return {
        "model": record.model,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cache_read_tokens": record.cache_read_tokens,
        "cache_write_tokens": record.cache_write_tokens,
        "cache_write_1h_tokens": record.cache_write_1h_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "gateway_lot_id": record.gateway_lot_id,
        "chain_lot_id": record.chain_lot_id,
        "lot_kind": record.lot_kind,
        "list_usd_micro": record.list_usd_micro,
        "fee_bps": record.fee_bps,
        "status": PENDING,
        "mode": record.mode,
        "voucher_session": record.voucher_session,
        "voucher_lane": record.voucher_lane,
        "voucher_ceiling": record.voucher_ceiling,
    }


def usage_row(hold: Hold, record: UsageRecord, now: int) -> dict[str, Any]:
    """The usage_records row of a settled hold."""
    return {
        "request_id": hold.request_id,
        "account_id": hold.account,
        "payer_id": hold.payer,
        "asset": hold.asset,
        "cost": hold.charged or 0,
        "settled_at": now,
        **record_values(record),
    }


def record_usage(conn: Connection, hold: Hold, record: UsageRecord, *, now: int) -> None:
    """Insert the record of a settled hold; a second call for the same request changes nothing."""
    insert_ignore(conn, usage_records, usage_row(hold, record, now))


def get_usage(conn: Connection, request_id: str) -> StoredUsage | None:
    row = conn.execute(select(usage_records).where(usage_records.c.request_id == request_id)).first()
    return None if row is None else stored_usage(row)


def next_epoch(conn: Connection, asset: str) -> int:
    """The epoch a record of `asset` settled now is expected to settle in: the one after
    the newest epoch holding any of the asset's records (1 when none has been batched).
    Expected, not promised: a batch the chain refuses puts its records back to pending,
    and they settle in a later epoch; the record's `epoch` says where each one went."""
    latest = conn.execute(select(func.max(usage_records.c.epoch)).where(usage_records.c.asset == asset)).scalar()
    return int(latest or 0) + 1


def next_signed_epoch(conn: Connection, asset: str) -> int:
    """The epoch a signed-mode record of `asset` settled now is expected to settle in: the
    next `settle_signed` batch. Signed batches are numbered in the same sequence as capped
    ones, any number per window, planned by each coordinator pass AFTER the pass's capped
    batch: so the next epoch, or the one after when capped records of the asset wait for
    theirs. Expected, not promised (a capped batch not yet due this window, more lanes than
    fit one batch, or a refused batch moves it); the record's `epoch` says where it went."""
    waiting = conn.execute(
        select(usage_records.c.request_id)
        .where(usage_records.c.status == PENDING, usage_records.c.asset == asset, usage_records.c.mode == CAPPED)
        .limit(1)
    ).first()
    return next_epoch(conn, asset) + (1 if waiting is not None else 0)


# ─── The coordinator's side: batching and quarantine ─────────────────────────


def pending_assets(conn: Connection) -> list[str]:
    """Assets with capped-mode records not yet in a batch (signed-mode records settle by
    lane, through `settle_signed`, not in the capped batches)."""
    stmt = select(usage_records.c.asset).where(usage_records.c.status == PENDING, usage_records.c.mode == CAPPED)
    return list(conn.execute(stmt.distinct()).scalars())


def pending_records(conn: Connection, asset: str, limit: int, mode: str = CAPPED) -> list[StoredUsage]:
    """The asset's records of `mode` not yet in a batch, oldest settlement first (capped:
    for `settle`; signed: for `settle_signed`)."""
    rows = conn.execute(
        select(usage_records)
        .where(usage_records.c.status == PENDING, usage_records.c.asset == asset, usage_records.c.mode == mode)
        .order_by(usage_records.c.settled_at, usage_records.c.request_id)
        .limit(limit)
    ).all()
    return [stored_usage(row) for row in rows]


def quarantine(conn: Connection, reasons: Mapping[str, str], now: int) -> int:
    """Set pending records aside with their reason (they stay visible; nothing is deleted);
    a reason must fit the column (500 characters). Returns how many were pending."""
    changed = 0
    for request_id, reason in reasons.items():
        changed += conn.execute(
            update(usage_records)
            .where(usage_records.c.request_id == request_id, usage_records.c.status == PENDING)
            .values(status=QUARANTINED, quarantine_reason=reason, quarantined_at=now)
        ).rowcount
    return changed


def quarantined(conn: Connection, asset: str | None = None) -> list[StoredUsage]:
    stmt = select(usage_records).where(usage_records.c.status == QUARANTINED)
    if asset is not None:
        stmt = stmt.where(usage_records.c.asset == asset)
    return [stored_usage(r) for r in conn.execute(stmt.order_by(usage_records.c.request_id)).all()]


def requeue(conn: Connection, request_id: str, *, chain_lot_id: int | None = None) -> bool:
    """A quarantined record whose cause is fixed goes back to pending, to settle in a
    later epoch (with the escrow lot its gateway lot was since opened as, if given);
    False if it was not quarantined."""
    values: dict[str, Any] = {"status": PENDING}
    if chain_lot_id is not None:
        values["chain_lot_id"] = chain_lot_id
    changed = conn.execute(
        update(usage_records)
        .where(usage_records.c.request_id == request_id, usage_records.c.status == QUARANTINED)
        .values(**values)
    ).rowcount
    return bool(changed == 1)


def refund(conn: Connection, request_id: str, reason: str, *, now: int, was: str = QUARANTINED) -> bool:
    """A quarantined record the chain can never settle: its charge goes back to the payer
    (the reverse of the settlement's entry: the vault never debited it, so the ledger
    again equals the vault), with the spend cap and any member budget it used, and the
    reason is kept for the payer. False if it was not quarantined (refunded already).
    `was` PENDING: a record no batch holds yet, whose request's answer was lost
    (`holds.unanswered`): the coordinator's plan of a batch naming it then fails whole."""
    record = get_usage(conn, request_id)
    if record is None or record.status != was:
        return False
    changed = conn.execute(
        update(usage_records)
        .where(usage_records.c.request_id == request_id, usage_records.c.status == was)
        .values(status=REFUNDED, refund_reason=reason[:REASON], refunded_at=now)
    ).rowcount
    if changed != 1:
        return False
    amount = int(record.cost)
    if amount:
        system = system_account_ids(conn)
        post_entry(
            conn,
            ref=_ref(REFUND, request_id, _taken_back(conn, request_id) + 1),
            kind=REFUND,
            lines=[(system["usage"], record.asset, -amount), (record.payer, record.asset, amount)],
            now=now,
            system_accounts=frozenset(system.values()),
        )
        if not _cap_set_since(conn, record):
            conn.execute(
                update(balances)
                .where(balances.c.account_id == record.payer, balances.c.asset == record.asset)
                .values(cap_remaining=add(balances.c.cap_remaining, amount))
            )
        else:
            _back_to_the_cap_before(conn, record, amount)
        if record.payer != record.account:
            conn.execute(
                update(budgets)
                .where(
                    and_(
                        budgets.c.org_id == record.payer,
                        budgets.c.member_id == record.account,
                        budgets.c.asset == record.asset,
                    )
                )
                .values(remaining=add(budgets.c.remaining, amount))
            )
    return True


def _cap_set_since(conn: Connection, record: StoredUsage) -> bool:
    """Whether the chain set the payer's cap in the record's asset anew since it was charged
    (a spend cap registered or revoked, a session registered, in the same second or later;
    or the record's voucher session is no longer the current one): the cap it took is then
    not the one in force, which never counted it, so a refund must not add it to that one.
    Before (gbreak5 item 1, pgrepair item 3; wallets s15), a charge given back after the
    buyer lowered its cap left the ledger's cap above the chain's."""
    mine = (chain_spend_caps.c.account_id == record.payer, chain_spend_caps.c.asset == record.asset)
    if conn.execute(
        select(chain_spend_caps.c.event_id).where(*mine, chain_spend_caps.c.created_at >= record.settled_at).limit(1)
    ).first():
        return True
    current = conn.execute(
        select(func.max(session_keys.c.session)).where(
            session_keys.c.account_id == record.payer, session_keys.c.asset == record.asset
        )
    ).scalar()
    if record.voucher_session is not None:
        return current is not None and int(current) != record.voucher_session
    return current is not None and bool(
        conn.execute(
            select(session_keys.c.session)
            .where(
                session_keys.c.account_id == record.payer,
                session_keys.c.asset == record.asset,
                session_keys.c.created_at >= record.settled_at,
            )
            .limit(1)
        ).first()
    )


def _back_to_the_cap_before(conn: Connection, record: StoredUsage, amount: int) -> None:
    """The charge goes back to the cap it took, which is no longer in force: into the
    `previous` of the first registration after it (what a reorg orphaning that registration
    restores), so that the cap before comes back as the chain has it, never having counted
    the charge. Before, the unwind restored it less the charge given back."""
    cap = conn.execute(
        select(chain_spend_caps.c.event_id, chain_spend_caps.c.created_at)
        .where(
            chain_spend_caps.c.account_id == record.payer,
            chain_spend_caps.c.asset == record.asset,
            chain_spend_caps.c.created_at >= record.settled_at,
        )
        .order_by(chain_spend_caps.c.created_at, chain_spend_caps.c.event_id)
        .limit(1)
    ).first()
    since = (
        session_keys.c.session > record.voucher_session
        if record.voucher_session is not None
        else session_keys.c.created_at >= record.settled_at
    )
    session = conn.execute(
        select(session_keys.c.event_id, session_keys.c.created_at)
        .where(session_keys.c.account_id == record.payer, session_keys.c.asset == record.asset, since)
        .order_by(session_keys.c.created_at, session_keys.c.session)
        .limit(1)
    ).first()
    if cap is not None and (session is None or cap.created_at <= session.created_at):
        conn.execute(
            update(chain_spend_caps)
            .where(chain_spend_caps.c.event_id == cap.event_id)
            .values(previous=add(chain_spend_caps.c.previous, amount))
        )
    elif session is not None:
        conn.execute(
            update(session_keys)
            .where(session_keys.c.event_id == session.event_id)
            .values(previous_cap=add(session_keys.c.previous_cap, amount))
        )


def _ref(kind: str, request_id: str, nth: int) -> str:
    """The journal ref of a record's `nth` refund (or refund taken back): a record refunded
    again after its refund was taken back (a later reorg orphaned that settlement too) gets
    a new entry, never the first one's ref, which would book nothing."""
    return f"{kind}:{request_id}" if nth == 1 else f"{kind}:{request_id}#{nth}"


def _taken_back(conn: Connection, request_id: str) -> int:
    """How many times the record's refund was taken back (each is one journal entry)."""
    nth = 0  # almost always none or one: a record refunded again is a reorg after a reorg
    entry = select(journal_entries.c.id)
    while conn.execute(entry.where(journal_entries.c.ref == _ref(UNREFUND, request_id, nth + 1))).first():
        nth += 1
    return nth


def take_back_refund(
    conn: Connection,
    request_id: str,
    *,
    batch_id: int,
    epoch: int,
    address: str,
    seller_share: int | None,
    fee: int | None,
    now: int,
) -> bool:
    """The chain debited a refunded record after all: the failed batch it was let go from
    landed (a reorg, then the network re-included its settle), so the vault took from the
    payer the charge the ledger had given back. The refund is reversed ("unrefund" entry:
    the payer debited, settled usage credited again) with the spend cap and any member
    budget it had restored (limits, not money: they stop at zero), and the record is that
    batch's again with the split the chain paid its seller (`seller_share`, `fee`). A
    balance short of the charge (the refund was spent meanwhile) is never taken below
    zero: the rest is a debt with its reason, repaid by the payer's next credits (see
    `ledger.debts`). False if the record was not refunded (taken back already)."""
    record = get_usage(conn, request_id)
    if record is None or record.status != REFUNDED:
        return False
    placed = assign_to_batch(
        conn, request_id, batch_id=batch_id, epoch=epoch, address=address, seller_share=seller_share, fee=fee,
        refunded=True,
    )  # fmt: skip
    if not placed:
        return False
    amount = int(record.cost)
    if not amount:
        return True
    if record.payer != record.account:  # the budget first: every transaction locks budgets before balances
        budget = and_(
            budgets.c.org_id == record.payer, budgets.c.member_id == record.account, budgets.c.asset == record.asset
        )
        remaining = conn.execute(select(budgets.c.remaining).where(budget).with_for_update()).scalar()
        if remaining is not None:
            conn.execute(update(budgets).where(budget).values(remaining=max(0, int(remaining) - amount)))
    where = and_(balances.c.account_id == record.payer, balances.c.asset == record.asset)
    cap = conn.execute(select(balances.c.cap_remaining).where(where).with_for_update()).scalar()
    if cap is not None:
        conn.execute(update(balances).where(where).values(cap_remaining=max(0, int(cap) - amount)))
    system = system_account_ids(conn)
    post_entry(
        conn,
        ref=_ref(UNREFUND, request_id, _taken_back(conn, request_id) + 1),
        kind=UNREFUND,
        lines=[(record.payer, record.asset, -amount), (system["usage"], record.asset, amount)],
        now=now,
        system_accounts=frozenset(system.values()),
        reason=(
            f"request {request_id} was refunded, then debited on chain in epoch {epoch} after all "
            f"(a reorg re-included its settlement): the refund of {amount} {record.asset} is taken back"
        ),
    )
    return True


def refunds_taken_back(conn: Connection) -> list[str]:
    """The request ids whose refund was taken back (`take_back_refund`), oldest first."""
    refs: Sequence[str] = (
        conn.execute(
            select(journal_entries.c.ref).where(journal_entries.c.kind == UNREFUND).order_by(journal_entries.c.id)
        )
        .scalars()
        .all()
    )
    found: list[str] = []
    for ref in refs:
        request_id = ref.removeprefix(f"{UNREFUND}:")
        base, mark, nth = request_id.rpartition("#")
        request_id = base if mark and nth.isdigit() else request_id
        if request_id not in found:
            found.append(request_id)
    return found


def settlement_note(
    record: StoredUsage, batch_status: str | None = None, *, failed: tuple[int, int] | None = None, depth: int = 0
) -> str:
    """Where a record's charge stands, in words for the payer (the dashboard's Usage page
    and the CLI say the same): `batch_status` is its batch's, if it is in one; `failed`,
    (batch id, epoch) of a failed batch a pending or quarantined record waits for until
    that failure is `depth` blocks deep (the coordinator's reorg window)."""
    note = _settlement_note(record, batch_status)
    if failed is not None and record.status in (PENDING, QUARANTINED):
        again = "settled again" if record.status == PENDING else "settled again, or refunded,"
        note += (
            f"; its batch {failed[0]} (epoch {failed[1]}) failed, so it is {again} under a later epoch only once "
            f"that failure is final: its settle's nonce taken {depth} blocks deep"
        )
    return note


def _settlement_note(record: StoredUsage, batch_status: str | None) -> str:
    if record.status == REFUNDED:
        return f"refunded: {record.refund_reason}"
    if record.status == QUARANTINED:
        return (
            f"held back from settlement: {record.quarantine_reason}; "
            "it settles once that is fixed, or is refunded to you"
        )
    if record.status == BATCHED:
        if batch_status == "confirmed":
            return f"settled on chain in epoch {record.epoch}"
        return f"in the epoch {record.epoch} settlement, {batch_status or 'planned'}"
    return "waiting for the next settlement"


def batch_records(conn: Connection, batch_id: int) -> list[StoredUsage]:
    rows = conn.execute(
        select(usage_records).where(usage_records.c.batch_id == batch_id).order_by(usage_records.c.request_id)
    ).all()
    return [stored_usage(row) for row in rows]


def oldest_unconfirmed(
    conn: Connection, asset: str, mode: str, open_batches: Select[Any], limit: int
) -> list[StoredUsage]:
    """The asset's `limit` oldest records of `mode` (by settlement, as `pending_records`
    orders them) that are pending or in one of `open_batches` (ids of batches not landed):
    where the records of a batch that failed, then landed after all, now are."""
    c = usage_records.c
    held = or_(c.status == PENDING, and_(c.status == BATCHED, c.batch_id.in_(open_batches)))
    rows = conn.execute(
        select(usage_records)
        .where(c.asset == asset, c.mode == mode, held)
        .order_by(c.settled_at, c.request_id)
        .limit(limit)
    ).all()
    return [stored_usage(row) for row in rows]


def batch_member_ids(conn: Connection, batch_id: int) -> list[str]:
    """The request ids of the records in a batch now."""
    c = usage_records.c
    found: Sequence[Any] = (
        conn.execute(select(c.request_id).where(c.batch_id == batch_id).order_by(c.request_id)).scalars().all()
    )
    return [str(request_id) for request_id in found]


def records_named(conn: Connection, request_ids: Sequence[str]) -> list[StoredUsage]:
    """The records named, whatever their status, oldest settlement first (read in slices:
    a batch may name thousands)."""
    c = usage_records.c
    rows: list[Any] = []
    for start in range(0, len(request_ids), 500):
        chunk = list(request_ids[start : start + 500])
        rows += conn.execute(select(usage_records).where(c.request_id.in_(chunk))).all()
    rows.sort(key=lambda row: (row.settled_at, row.request_id))
    return [stored_usage(row) for row in rows]


def batches_holding(conn: Connection, request_ids: Sequence[str]) -> set[int]:
    """The batches the records are assigned to now."""
    c = usage_records.c
    found: Sequence[Any] = (
        conn.execute(select(c.batch_id).where(c.request_id.in_(list(request_ids)), c.batch_id.is_not(None)))
        .scalars()
        .all()
    )
    return {int(batch_id) for batch_id in found}


def assign_to_batch(
    conn: Connection,
    request_id: str,
    *,
    batch_id: int,
    epoch: int,
    address: str,
    seller_share: int | None,
    fee: int | None,
    quarantined: bool = False,
    refunded: bool = False,
) -> bool:
    """Put a pending record in the coordinator's batch, with the wallet it debits and the
    split it was planned with; False if it is no longer pending (`quarantined`: or set
    aside, taken out of quarantine: a batch that landed after all holds it). `refunded`:
    only a refunded record, its refund being taken back (`take_back_refund` moves the money)."""
    statuses = (REFUNDED,) if refunded else (PENDING, QUARANTINED) if quarantined else (PENDING,)
    values: dict[str, Any] = {"quarantine_reason": None, "quarantined_at": None} if quarantined or refunded else {}
    if refunded:
        values |= {"refund_reason": None, "refunded_at": None}
    assigned = conn.execute(
        update(usage_records)
        .where(usage_records.c.request_id == request_id, usage_records.c.status.in_(statuses))
        .values(
            status=BATCHED,
            batch_id=batch_id,
            epoch=epoch,
            address=address,
            seller_share=seller_share,
            fee=fee,
            **values,
        )  # fmt: skip
    ).rowcount
    return bool(assigned == 1)


def return_to_pending(conn: Connection, batch_id: int) -> None:
    """The batch can never land: its records go back to pending, unplanned."""
    conn.execute(
        update(usage_records)
        .where(usage_records.c.batch_id == batch_id)
        .values(status=PENDING, batch_id=None, epoch=None, address=None, seller_share=None, fee=None)
    )


def unsettled(conn: Connection, payer: int, asset: str, confirmed_batches: Select[Any]) -> int:
    """What the payer owes that the chain has not yet debited: its active holds, and its
    settled usage outside the batches `confirmed_batches` selects (the ids of the
    coordinator's batches confirmed on chain): pending, in flight, or quarantined (a
    refunded record is owed no more: its charge went back to the payer).

    Summed here, exactly: SQL's SUM over SQLite's text amounts overflows past 2**63 (about
    9.2 whole 18-decimal tokens) or turns them into floats."""
    held: Sequence[int] = (
        conn.execute(
            select(holds.c.amount).where(
                holds.c.payer_id == payer, holds.c.asset == asset, holds.c.status == HoldStatus.ACTIVE.value
            )
        )
        .scalars()
        .all()
    )
    owed: Sequence[int] = (
        conn.execute(
            select(usage_records.c.cost).where(
                usage_records.c.payer_id == payer,
                usage_records.c.asset == asset,
                usage_records.c.status != REFUNDED,
                or_(usage_records.c.batch_id.is_(None), usage_records.c.batch_id.not_in(confirmed_batches)),
            )
        )
        .scalars()
        .all()
    )
    return sum(held) + sum(owed)


def unsettled_by_lot(conn: Connection, confirmed_batches: Select[Any]) -> dict[int, int]:
    """Per gateway lot, the list value (USD micro) of the usage it served that the chain
    has not drawn from it yet as far as `confirmed_batches` says: pending, quarantined, or
    in a batch not among them (a refunded record will never be drawn). Summed here,
    exactly (see `unsettled`)."""
    stmt = select(usage_records.c.gateway_lot_id, usage_records.c.list_usd_micro).where(
        usage_records.c.gateway_lot_id.is_not(None),
        or_(
            usage_records.c.status.in_((PENDING, QUARANTINED)),
            and_(usage_records.c.status == BATCHED, usage_records.c.batch_id.not_in(confirmed_batches)),
        ),
    )
    owed: dict[int, int] = {}
    for row in conn.execute(stmt).all():
        lot_id: int = row.gateway_lot_id
        owed[lot_id] = owed.get(lot_id, 0) + int(row.list_usd_micro)
    return owed


def unsettled_records(conn: Connection, confirmed_batches: Select[Any]) -> list[StoredUsage]:
    """Every charge the chain has not debited as far as `confirmed_batches` (ids of the
    coordinator's batches confirmed on chain) says: pending, quarantined, or in a batch
    not among them. A refunded record is not owed: its charge went back to the payer."""
    stmt = select(usage_records).where(
        or_(
            usage_records.c.status.in_((PENDING, QUARANTINED)),
            and_(usage_records.c.status == BATCHED, usage_records.c.batch_id.not_in(confirmed_batches)),
        )
    )
    return [stored_usage(row) for row in conn.execute(stmt.order_by(usage_records.c.request_id)).all()]


# ─── Readers: an account's own records ──────────────────────────────────────


def _mine(account: int) -> Any:
    return or_(usage_records.c.account_id == account, usage_records.c.payer_id == account)


def records_of(conn: Connection, account: int, limit: int) -> list[StoredUsage]:
    """The records an account spent, or paid for as an org, newest first."""
    stmt = select(usage_records).where(_mine(account)).order_by(usage_records.c.settled_at.desc()).limit(limit)
    return [stored_usage(row) for row in conn.execute(stmt).all()]


def record_of(conn: Connection, account: int, request_id: str) -> StoredUsage | None:
    """One record, if the account spent it or paid for it."""
    row = conn.execute(select(usage_records).where(_mine(account), usage_records.c.request_id == request_id)).first()
    return None if row is None else stored_usage(row)


def paid_by(conn: Connection, payer: int) -> list[StoredUsage]:
    """Every record an account paid for (an org: its members' usage)."""
    return [stored_usage(row) for row in conn.execute(select(usage_records).where(usage_records.c.payer_id == payer))]
