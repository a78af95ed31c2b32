"""The one Alembic environment of the database every store shares: `env.py` and
`versions/` here build every package's tables (ledger, indexer, coordinator, agent,
gateway, sellers), and this module's `metadata` is all of them, as the schema modules declare
them (what `alembic revision --autogenerate` and the schema test compare against).

Above the services in the layering, since it imports each one's schema. Running the
migrations needs none of that: `promptex.ledger.db.upgrade` (which `Ledger.open` calls)
runs the scripts in this directory, and they import only SQLAlchemy, Alembic and the
ledger's `Amount` type.
"""

from __future__ import annotations

from promptex.agent import schema as agent_schema
from promptex.coordinator import schema as coordinator_schema
from promptex.gateway import schema as gateway_schema
from promptex.indexer import schema as indexer_schema
from promptex.ledger import schema as ledger_schema
from promptex.ledger.metadata import metadata
from promptex.sellers import schema as sellers_schema

SCHEMAS = (ledger_schema, indexer_schema, coordinator_schema, agent_schema, gateway_schema, sellers_schema)

__all__ = ["SCHEMAS", "metadata"]
