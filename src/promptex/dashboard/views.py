"""Read-only views over the ledger for the dashboard: a key's account and balances, its
usage records, settlement epochs with their transactions, and a record's Merkle proof."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from promptex.config import settings
from promptex.coordinator.schema import coordinator_txs, settlement_batches
from promptex.coordinator.store import CoordinatorStore, failed_batches_naming
from promptex.gateway.store import ApiKey
from promptex.ledger import Ledger
from promptex.ledger import usage as _usage
from promptex.ledger.usage import StoredUsage
from promptex.metering import ASSETS, CREDIT_SYMBOL
from promptex.metering import asset as asset_of
from promptex.proofs import ProofError, build_proof
from promptex.protocol.units import whole_units

USAGE_LIMIT = 200  # rows the Usage page's table shows (newest first)
TOTALS_LIMIT = 100_000  # records its totals and CSV read at most (as `promptex buyer usage`)


class NotFound(LookupError):
    """No such record for this key (or not this key's to see)."""


class NoProof(ValueError):
    """The record exists but cannot be proved (yet): not settled, or quarantined."""


def account_view(ledger: Ledger, key: ApiKey) -> dict[str, Any]:
    """The key's account: its wallets and, per asset, what the ledger holds for it."""
    account = key.paying_account
    balances = {}
    for symbol in ASSETS:
        if symbol == CREDIT_SYMBOL:
            continue
        b = ledger.balance(account, symbol)
        balances[symbol] = {
            "posted": str(b.posted),
            "held": str(b.held),
            "locked": str(b.locked),
            "spendable": str(max(0, b.posted - b.held - b.locked)),
            "cap_remaining": str(b.cap_remaining),
        }
    return {
        "account": key.account,
        "payer": account,
        "key_prefix": key.prefix,
        "default_asset": key.default_asset,
        "wallets": ledger.wallets(account),
        "balances": balances,
        # What the account owes (a debit its balance could not cover): it is not served in
        # that asset until a deposit repays it.
        "debts": [
            {
                "id": debt.id,
                "asset": debt.asset,
                "amount": str(debt.amount),
                "outstanding": str(debt.outstanding),
                "reason": debt.reason,
                "source": debt.source,
                "created_at": debt.created_at,
            }
            for debt in ledger.debts(account, open_only=True)
        ],
    }


def _batch_states(conn: Connection, batch_ids: set[int]) -> dict[int, tuple[str, str | None]]:
    """Each batch's status and its settle transaction's hash."""
    if not batch_ids:
        return {}
    joined = settlement_batches.outerjoin(coordinator_txs, settlement_batches.c.tx_id == coordinator_txs.c.id)
    rows = conn.execute(
        select(settlement_batches.c.id, settlement_batches.c.status, coordinator_txs.c.tx_hash)
        .select_from(joined)
        .where(settlement_batches.c.id.in_(sorted(batch_ids)))
    ).all()
    return {int(row.id): (row.status, row.tx_hash) for row in rows}


def _usage_rows(conn: Connection, records: list[StoredUsage]) -> list[dict[str, Any]]:
    batches = _batch_states(conn, {r.batch_id for r in records if r.batch_id is not None})
    failures = failed_batches_naming(conn, records)  # what waiting records wait for
    depth = settings().coordinator_reorg_window_blocks
    rows = []
    for r in records:
        batch_status, tx_hash = batches.get(r.batch_id, (None, None)) if r.batch_id is not None else (None, None)
        failed = failures.get(r.request_id)
        waits_for = None if failed is None else (failed.id, failed.epoch)
        rows.append(
            {
                "request_id": r.request_id,
                "model": r.model,
                "asset": r.asset,
                "input_tokens": int(r.input_tokens),
                "output_tokens": int(r.output_tokens),
                # parts of the two counts above (as `metering.TokenUsage` nests them)
                "cache_read_tokens": int(r.cache_read_tokens),
                "cache_write_tokens": int(r.cache_write_tokens),
                "cache_write_1h_tokens": int(r.cache_write_1h_tokens),
                "reasoning_tokens": int(r.reasoning_tokens),
                "cost": str(r.cost),
                "settled_at": int(r.settled_at),
                "status": r.status,
                "lot_id": r.chain_lot_id,
                "epoch": r.epoch,
                "batch_status": batch_status,
                "tx_hash": tx_hash,
                # where its charge stands, in words: settled, in a batch, waiting, held
                # back (and why), or refunded (and why): the Usage page shows it as is
                "settlement": _usage.settlement_note(r, batch_status, failed=waits_for, depth=depth),
                "refund_reason": r.refund_reason,
                # capped (under the signed spend cap) or signed (issue 23: covered by the
                # session key's ceiling voucher for that lane)
                "mode": r.mode,
                "voucher": None
                if r.voucher_session is None
                else {"session": r.voucher_session, "lane": r.voucher_lane, "ceiling": str(r.voucher_ceiling)},
            }
        )
    return rows


def usage_view(engine: Engine, key: ApiKey, limit: int = USAGE_LIMIT) -> list[dict[str, Any]]:
    """The key's account's usage records (spent by it, or paid by it as an org), newest first."""
    with engine.connect() as conn:
        return _usage_rows(conn, _usage.records_of(conn, key.account, limit))


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def usage_totals_view(engine: Engine, key: ApiKey, limit: int = TOTALS_LIMIT) -> dict[str, Any]:
    """What the key's account spent, per model and per day (UTC), per asset: the Usage page's
    totals, over every record (up to `limit`), not only the newest rows the table shows.
    Amounts are exact smallest units as strings; the page formats them."""
    with engine.connect() as conn:
        records = _usage.records_of(conn, key.account, limit)
    per_model: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    per_day: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.status == "refunded":  # nothing was charged for it
            continue
        model = per_model[(r.model, r.asset)]
        model[0] += 1
        model[1] += int(r.input_tokens) + int(r.output_tokens)
        model[2] += int(r.cost)
        day = per_day[(f"{_utc(int(r.settled_at)):%Y-%m-%d}", r.asset)]
        day[0] += 1
        day[1] += int(r.cost)
    return {
        "records": len(records),
        "complete": len(records) < limit,
        "per_model": [
            {"model": model, "asset": asset, "requests": n, "tokens": tokens, "cost": str(cost)}
            for (model, asset), (n, tokens, cost) in sorted(per_model.items())
        ],
        "per_day": [
            {"day": day, "asset": asset, "requests": n, "cost": str(cost)}
            for (day, asset), (n, cost) in sorted(per_day.items(), reverse=True)
        ],
    }


CSV_COLUMNS = (
    "time_utc", "request_id", "account", "model", "input_tokens", "output_tokens", "asset", "cost", "cost_units",
    "status", "settlement", "mode", "voucher_session", "voucher_lane", "voucher_ceiling_units",
)  # fmt: skip


def _blank(value: int | None) -> str:
    return "" if value is None else str(value)


def usage_csv(engine: Engine, key: ApiKey, limit: int = TOTALS_LIMIT) -> str:
    """Every usage record of the key's account, oldest first, as CSV: the columns of
    `promptex buyer usage --csv` (cost in whole units and exact smallest units), where the
    charge stands, and its mode with the covering voucher (signed mode)."""
    with engine.connect() as conn:
        records = _usage.records_of(conn, key.account, limit)
        rows = _usage_rows(conn, records)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r, row in zip(reversed(records), reversed(rows), strict=True):
        writer.writerow(
            [
                f"{_utc(int(r.settled_at)):%Y-%m-%d %H:%M:%S}", r.request_id, r.account, r.model, r.input_tokens,
                r.output_tokens, r.asset, whole_units(int(r.cost), asset_of(r.asset).decimals), r.cost, r.status,
                row["settlement"], r.mode, _blank(r.voucher_session), _blank(r.voucher_lane), _blank(r.voucher_ceiling),
            ]
        )  # fmt: skip
    return out.getvalue()


def usage_record_view(engine: Engine, key: ApiKey, request_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        record = _usage.record_of(conn, key.account, request_id)
        if record is None:
            raise NotFound(f"no usage record {request_id!r} for this key")
        return _usage_rows(conn, [record])[0]


def proof_view(engine: Engine, key: ApiKey, request_id: str) -> dict[str, Any]:
    """`promptex usage proof` for one of the key's own records."""
    record = usage_record_view(engine, key, request_id)
    if record["batch_status"] != "confirmed":
        raise NoProof(f"usage {request_id} is not settled on chain: {record['settlement']}")
    try:
        return build_proof(CoordinatorStore(engine), request_id)
    except ProofError as exc:
        raise NoProof(str(exc)) from None


def epochs_view(engine: Engine, limit: int = USAGE_LIMIT) -> list[dict[str, Any]]:
    """Settlement batches, newest first: asset, epoch, status, records, root and transaction."""
    joined = settlement_batches.outerjoin(coordinator_txs, settlement_batches.c.tx_id == coordinator_txs.c.id)
    stmt = (
        select(settlement_batches, coordinator_txs.c.tx_hash.label("tx_hash"))
        .select_from(joined)
        .order_by(settlement_batches.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        {
            "id": int(r.id),
            "asset": r.asset,
            "epoch": int(r.epoch),
            "status": r.status,
            "records": int(r.records),
            "total": str(r.total),
            "usage_root": r.usage_root,
            "tx_hash": r.tx_hash,
            "created_at": int(r.created_at),
            "error": r.error,
        }
        for r in rows
    ]
