"""The attestor's review of lot health: where the gateway's breaker counts reach the one who
can slash a lot's bond — and stop, because a slash is a person's decision.

Every gateway process adds its per-lot counts to `gateway_lot_health` (`gateway.health`).
`review` reads them and judges each lot on what happened since the previous review (the
counts it read then are kept in `attestor_lot_reviews`): an error rate at or above
`error_rate` over at least `min_requests` upstream calls, the provider refusing the lot's
key (401/403: revoked upstream?) since the previous review, or a circuit open now. A lot
so judged gets a report (`attestor_reports`): one open report per lot, which later reviews
that still find it failing refresh (adding their calls and errors). A report stays open
until a person resolves it — dismissed, or slashed with the transaction they sent — by
`promptex attestor resolve`. Nothing here signs, sends or moves money.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, insert, select, update

from promptex.gateway.health import LotReport, reports
from promptex.gateway.store import GatewayStore
from promptex.ledger.journal import insert_ignore
from promptex.ledger.lots import all_states
from promptex.sellers.schema import attestor_reports, attestor_reviews

OPEN, DISMISSED, SLASHED = "open", "dismissed", "slashed"
RESOLUTIONS = (DISMISSED, SLASHED)


class ReportRefused(ValueError):
    """A resolution that cannot be recorded; the message says why, in one line."""


@dataclass(frozen=True)
class Thresholds:
    error_rate: float = 0.5  # errors ÷ upstream calls since the previous review
    min_requests: int = 20  # fewer calls than this: too few to judge a rate on


@dataclass(frozen=True)
class Report:
    id: int
    lot_id: int
    chain_lot_id: int | None
    seller: str
    reasons: str
    requests: int
    errors: int
    key_refused_at: int | None
    opened_at: int
    updated_at: int
    status: str
    resolved_at: int | None
    note: str | None


def _report(row: object) -> Report:
    m = row._mapping  # type: ignore[attr-defined]
    return Report(**{name: m[name] for name in Report.__dataclass_fields__})


def judge(health: LotReport, requests: int, errors: int, since: int | None, now: int, t: Thresholds) -> list[str]:
    """Why a lot fails, from `requests` calls and `errors` since the previous review (at
    `since`; None: never reviewed); empty when it does not."""
    reasons = []
    if requests >= t.min_requests and errors >= t.error_rate * requests:
        reasons.append(f"{errors} of {requests} upstream calls failed")
    if health.key_refused_at is not None and (since is None or health.key_refused_at > since):
        reasons.append("the provider refused the lot's API key (revoked upstream?)")
    if health.circuit_open_until is not None and health.circuit_open_until > now:
        reasons.append("its circuit is open (the gateway skips it)")
    return reasons


def review(engine: Engine, now: int, thresholds: Thresholds | None = None) -> list[Report]:
    """Judge every lot's health since the previous review and record a report for each
    failing one (opened, or the open one refreshed). Returns the reports this review
    opened or refreshed. Safe to run from several places: each lot is one transaction."""
    thresholds = thresholds or Thresholds()
    lots = {lot.id: lot for lot in GatewayStore(engine).lots()}
    found = []
    for health in reports(engine, list(lots)):
        lot = lots[health.lot_id]
        with engine.begin() as conn:
            insert_ignore(
                conn, attestor_reviews,
                {"lot_id": lot.id, "requests": 0, "errors": 0, "reviewed_at": 0},
            )  # fmt: skip
            seen = conn.execute(
                select(attestor_reviews).where(attestor_reviews.c.lot_id == lot.id).with_for_update()
            ).one()
            requests, errors = health.requests - seen.requests, max(0, health.errors - seen.errors)
            if requests < 0:  # counts only grow: a table rebuilt from zero restarts the window
                requests, errors = health.requests, health.errors
            reasons = judge(health, requests, errors, seen.reviewed_at or None, now, thresholds)
            conn.execute(
                update(attestor_reviews)
                .where(attestor_reviews.c.lot_id == lot.id)
                .values(requests=health.requests, errors=health.errors, reviewed_at=now)
            )
            if reasons:
                found.append(_record(conn, lot.id, lot.seller, health, requests, errors, "; ".join(reasons), now))
    return found


def _record(
    conn: Connection, lot_id: int, seller: str, health: LotReport, requests: int, errors: int, reasons: str, now: int
) -> Report:
    r = attestor_reports.c
    state = all_states(conn).get(lot_id)
    chain_lot_id = None if state is None else state.chain_lot_id
    current = conn.execute(select(attestor_reports).where(r.lot_id == lot_id, r.status == OPEN)).first()
    if current is None:
        inserted = conn.execute(
            insert(attestor_reports).values(
                lot_id=lot_id, chain_lot_id=chain_lot_id, seller=seller, reasons=reasons[:400], requests=requests,
                errors=errors, key_refused_at=health.key_refused_at, opened_at=now, updated_at=now, status=OPEN,
            )
        ).inserted_primary_key  # fmt: skip
        assert inserted is not None
        report_id = inserted[0]
    else:
        report_id = current.id
        conn.execute(
            update(attestor_reports)
            .where(r.id == report_id)
            .values(
                chain_lot_id=chain_lot_id, reasons=reasons[:400], requests=r.requests + requests,
                errors=r.errors + errors, key_refused_at=health.key_refused_at, updated_at=now,
            )
        )  # fmt: skip
    return _report(conn.execute(select(attestor_reports).where(r.id == report_id)).one())


def open_reports(engine: Engine, *, every: bool = False) -> list[Report]:
    """The open reports (every report with `every`), oldest first."""
    query = select(attestor_reports).order_by(attestor_reports.c.id)
    if not every:
        query = query.where(attestor_reports.c.status == OPEN)
    with engine.connect() as conn:
        return [_report(row) for row in conn.execute(query)]


def resolve(engine: Engine, report_id: int, status: str, note: str, now: int) -> Report:
    """Record what a person did about an open report: `dismissed` (why, in `note`) or
    `slashed` (the slash's transaction, in `note`). Sends nothing."""
    if status not in RESOLUTIONS:
        raise ReportRefused(f"a report is resolved as {' or '.join(RESOLUTIONS)}, not {status!r}")
    if not note.strip():
        raise ReportRefused("say why in --note (for a slash: its transaction hash)")
    r = attestor_reports.c
    with engine.begin() as conn:
        done = conn.execute(
            update(attestor_reports)
            .where(r.id == report_id, r.status == OPEN)
            .values(status=status, resolved_at=now, note=note.strip()[:400])
        ).rowcount
        row = conn.execute(select(attestor_reports).where(r.id == report_id)).first()
    if row is None:
        raise ReportRefused(f"no report {report_id} (`promptex attestor reports --all`)")
    if not done:
        raise ReportRefused(f"report {report_id} is {row.status} already")
    return _report(row)


__all__ = [
    "DISMISSED",
    "OPEN",
    "SLASHED",
    "Report",
    "ReportRefused",
    "Thresholds",
    "judge",
    "open_reports",
    "resolve",
    "review",
]
