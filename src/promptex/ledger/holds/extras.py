"""The extension point: more counters taken in the same transaction as a hold.

The gateway's limits (tokens or cost per key and window, …) must be reserved "in the
same ledger transaction as the hold": a request over a limit holds nothing, and a limit
is never exceeded by requests in flight. An `Extra` is such a counter. Register it with
the hold book (`holds.register(extra)`), then name it in a reservation:

    Reservation(..., extras=(ExtraTake("tokens-per-minute", 4_096),))

The book calls, always inside the hold's own transaction (SQLAlchemy Core on `conn`;
keep to the lock order of `holds.capacity` — take your rows after the ledger's):

    take(conn, hold, amount)        when the hold is made; raise a `Refusal` (e.g. your own
                                    subclass, with `available`) to refuse it: nothing of
                                    the hold, its funds or its capacity is kept
    settle(conn, hold, record, late) when it is settled (`record`: the metered usage, or
                                    None; `late`: the hold had expired and was given back)
    give_back(conn, hold)           when it is released or expires without an answer

An Extra keeps its own rows (keyed by request id, in its own table and migration); the
hold remembers only the names it took (`holds.extras`), so a sweeper in another process
gives back what a dead one took — every process registers the same extras. A hold with
extras goes through the general path (not the SQLite/PostgreSQL fast paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection

from promptex.ledger.models import Hold
from promptex.ledger.usage import UsageRecord

NAME_SEPARATOR = ","


@dataclass(frozen=True)
class ExtraTake:
    """`amount` of the registered extra counter `name`, taken with a hold."""

    name: str
    amount: int


class Extra(Protocol):
    name: str

    def take(self, conn: Connection, hold: Hold, amount: int) -> None: ...

    def settle(self, conn: Connection, hold: Hold, record: UsageRecord | None, late: bool) -> None: ...

    def give_back(self, conn: Connection, hold: Hold) -> None: ...


def names(value: str | None) -> list[str]:
    return [name for name in (value or "").split(NAME_SEPARATOR) if name]
