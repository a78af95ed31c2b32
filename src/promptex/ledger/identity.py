"""The chain every store in the database mirrors, recorded once, checked by every service.

The first service to start on an empty database records the chain id, genesis hash and
deployment it is pointed at (`promptex.chain.identity.observe`); every later start, of
any service, compares what it is pointed at with that record and refuses another chain
or deployment with one line saying what differs and what to do. A database that already
holds money but no record (made before records existed) is adopted only by the indexer,
which first checks that its last indexed block is on the chain it sees.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, select, update

from promptex.ledger.errors import WrongChain
from promptex.ledger.journal import insert_ignore
from promptex.ledger.schema import chain_identity, journal_entries
from promptex.protocol.identity import ChainIdentity, differences, merged

ROW = 1
FIX = (
    "point it at that chain and deployment, or give it a new ledger "
    "(`promptex up --fresh`, or another PROMPTEX_LEDGER_URL)"
)


def recorded(conn: Connection) -> ChainIdentity | None:
    row = conn.execute(select(chain_identity).where(chain_identity.c.id == ROW)).first()
    if row is None:
        return None
    return ChainIdentity(int(row.chain_id), row.genesis_hash, row.network, json.loads(row.contracts))


def _values(identity: ChainIdentity) -> dict[str, object]:
    return {
        "chain_id": identity.chain_id,
        "genesis_hash": identity.genesis_hash.lower(),
        "network": identity.network,
        "contracts": json.dumps(dict(sorted(identity.contracts.items()))),
    }


def follow(
    conn: Connection, observed: ChainIdentity, *, service: str, where: str, now: int, adopt: bool = False
) -> ChainIdentity:
    """Record `observed` on a database that follows no chain yet, or check it is the one
    recorded (WrongChain otherwise). `adopt`: the caller has proved that the money already
    in a database without a record came from this chain (the indexer does)."""
    current = recorded(conn)
    if current is None:
        holds_money = conn.execute(select(journal_entries.c.id).limit(1)).first() is not None
        if holds_money and not adopt:
            raise WrongChain(
                f"{where} holds balances but records no chain (made before chain records): start the "
                f"indexer first, which checks its last indexed block is on {observed.short()} and records it"
            )
        fresh = {**_values(observed), "id": ROW, "recorded_at": now, "recorded_by": service[:32]}
        if insert_ignore(conn, chain_identity, fresh) is not None:
            return observed
        current = recorded(conn)  # another service recorded it just now
        assert current is not None
    found = differences(current, observed)
    if found:
        raise WrongChain(f"{where} follows {current.short()}; {service} is pointed at {'; '.join(found)}: {FIX}")
    grown = merged(current, observed)
    if dict(grown.contracts) != dict(current.contracts):
        conn.execute(update(chain_identity).where(chain_identity.c.id == ROW).values(_values(grown)))
    return grown
