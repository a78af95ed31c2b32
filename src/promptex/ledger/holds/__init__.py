"""Holds: reserve before a request, settle to the metered cost, release on failure — the
buyer's funds and the serving lot's capacity together, as ledger facts.

    api        the one interface the gateway calls (`Holds`, `Reservation`)
    general    every case on SQLAlchemy Core (SQLite and PostgreSQL)
    capacity   lots' capacity: reserved with the hold, leased to processes on PostgreSQL
    extras     the extension point: more counters taken in the hold's transaction
    book       `GeneralHolds`, the interface on the general path
    sqlite     `SqliteHolds`: fast path on the driver (one gateway process per file)
    postgres   `PostgresHolds`: one statement per hot operation, capacity leases
"""

from promptex.ledger.holds.api import Holds, Reservation
from promptex.ledger.holds.capacity import LotClaim
from promptex.ledger.holds.extras import Extra, ExtraTake

__all__ = ["Extra", "ExtraTake", "Holds", "LotClaim", "Reservation"]
