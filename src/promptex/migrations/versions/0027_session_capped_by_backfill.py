"""Sessions indexed before migration 0025 learn the spend cap the chain accepted after them
(`session_keys.capped_by`): 0025 left them none, so an account that had set a cap after its
session was served neither way — "no spend cap was set since" (`promptex buyer balance`), 402
spend_cap_required at the gateway — although the vault settles its plain requests capped.

The indexer keeps every event it applied (`chain_events`, with the ledger fact id it applied
it under) and the ledger every cap it applied (`chain_spend_caps`): a session's cap is the
first SpendCapRegistered the ledger applied for the same account and asset after the
session's SessionKeyRegistered and before the account's next one in the asset, in chain
order (block, log index) — as `ledger.sessions.capped_after` marks it when the cap arrives
(events arrive in chain order; a cap is the newest session's). Sessions or caps the indexer
did not record (a ledger fed otherwise) are left as they are. The ledger's remaining cap is
not touched: applying the cap set it then. The downgrade leaves the values (0025's column
is the one that goes).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

_sessions = sa.table(
    "session_keys", sa.column("account_id", sa.Integer()), sa.column("asset", sa.String()),
    sa.column("session", sa.BigInteger()), sa.column("event_id", sa.String()), sa.column("capped_by", sa.String()),
)  # fmt: skip
_caps = sa.table(
    "chain_spend_caps", sa.column("event_id", sa.String()), sa.column("account_id", sa.Integer()),
    sa.column("asset", sa.String()),
)  # fmt: skip
_events = sa.table(
    "chain_events", sa.column("block_number", sa.BigInteger()), sa.column("log_index", sa.Integer()),
    sa.column("name", sa.String()), sa.column("fact_id", sa.String()),
)  # fmt: skip

Position = tuple[int, int]  # (block, log index): chain order


def upgrade() -> None:
    conn = op.get_bind()
    where = (_events.c.block_number, _events.c.log_index)
    # Every session and registered cap the indexer applied, per (account, asset), in chain order.
    sessions: dict[tuple[int, str], list[tuple[Position, int, str | None]]] = defaultdict(list)
    for row in conn.execute(
        sa.select(_sessions.c.account_id, _sessions.c.asset, _sessions.c.session, _sessions.c.capped_by, *where)
        .join(_events, _events.c.fact_id == _sessions.c.event_id)
        .where(_events.c.name == "SessionKeyRegistered")
    ):
        at = (int(row.block_number), int(row.log_index))
        sessions[(int(row.account_id), str(row.asset))].append((at, int(row.session), row.capped_by))
    caps: dict[tuple[int, str], list[tuple[Position, str]]] = defaultdict(list)
    for row in conn.execute(
        sa.select(_caps.c.account_id, _caps.c.asset, _caps.c.event_id, *where)
        .join(_events, _events.c.fact_id == _caps.c.event_id)
        .where(_events.c.name == "SpendCapRegistered")
    ):
        caps[(int(row.account_id), str(row.asset))].append(((int(row.block_number), int(row.log_index)), row.event_id))
    for (account, asset), found in sessions.items():
        found.sort()
        registered = sorted(caps.get((account, asset), []))
        for i, (at, session, capped_by) in enumerate(found):
            if capped_by is not None:
                continue
            before = found[i + 1][0] if i + 1 < len(found) else None
            first = next((cap for when, cap in registered if when > at and (before is None or when < before)), None)
            if first is not None:
                conn.execute(
                    sa.update(_sessions)
                    .where(
                        _sessions.c.account_id == account,
                        _sessions.c.asset == asset,
                        _sessions.c.session == session,
                        _sessions.c.capped_by.is_(None),
                    )
                    .values(capped_by=first)
                )


def downgrade() -> None:
    pass
