"""The ledger owns its tables: outside `promptex.ledger`, no module of the project
(src, scripts, bench) imports the ledger's table objects or writes its tables in raw SQL;
every read and write goes through the ledger's functions. And each package's tables are
declared in its own `schema` module, all on the one shared MetaData.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Table

from promptex.ledger import schema as ledger_schema
from promptex.migrations import SCHEMAS, metadata

ROOT = Path(__file__).resolve().parents[2]
LEDGER = ROOT / "src" / "promptex" / "ledger"
LEDGER_TABLES = sorted(name for name, value in vars(ledger_schema).items() if isinstance(value, Table))


MIGRATIONS = ROOT / "src" / "promptex" / "migrations"  # loads every package's schema to compare; writes none


def _outside_ledger() -> list[Path]:
    files = [p for d in ("src", "scripts", "bench") for p in (ROOT / d).rglob("*.py")]
    return [p for p in files if not {LEDGER, MIGRATIONS} & set(p.parents) and ".litellm" not in p.parts]


def _imports_ledger_tables(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "promptex.ledger.schema":
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "promptex.ledger":
            found += [alias.name for alias in node.names if alias.name == "schema"]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("promptex.ledger.schema")]
    return found


def test_ledger_tables__outside_ledger__never_imported():
    offenders = {}
    for path in _outside_ledger():
        names = _imports_ledger_tables(ast.parse(path.read_text(), str(path)))
        if names:
            offenders[str(path.relative_to(ROOT))] = names
    assert offenders == {}, "read or write the ledger's tables through promptex.ledger's functions"


def test_ledger_tables__outside_ledger__never_written_in_sql():
    table_names = "|".join(getattr(ledger_schema, name).name for name in LEDGER_TABLES)
    write = re.compile(rf"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?({table_names})\b", re.IGNORECASE)
    offenders = [str(p.relative_to(ROOT)) for p in _outside_ledger() if write.search(p.read_text())]
    assert offenders == []


def test_ledger_tables__guard__sees_an_import():
    # The guard itself: an import of the ledger's tables is found in every spelling.
    for source in (
        "from promptex.ledger.schema import balances",
        "from promptex.ledger import schema",
        "import promptex.ledger.schema as s",
    ):
        assert _imports_ledger_tables(ast.parse(source)) != []
    assert _imports_ledger_tables(ast.parse("from promptex.ledger.metadata import ASSET, metadata")) == []


def test_schemas__each_package__declares_its_own_tables_on_one_metadata():
    owners: dict[str, str] = {}
    for module in SCHEMAS:
        for name, value in vars(module).items():
            if isinstance(value, Table) and value.metadata is metadata:
                assert owners.setdefault(value.name, module.__name__) == module.__name__, name
    assert set(owners) == set(metadata.tables)  # every table has one home, and no table is elsewhere
    assert {t for t, m in owners.items() if m == "promptex.ledger.schema"} == {
        "accounts", "balances", "members", "budgets", "grants", "holds", "journal_entries", "journal_lines",
        "wallets", "binding_challenges", "deposits", "exits", "chain_spend_caps", "usage_records", "releases",
        "debts", "chain_identity", "lot_capacity", "capacity_leases", "lot_states", "session_keys", "voucher_lanes",
        "ledger_processes",
    }  # fmt: skip
    assert owners["seller_txs"] == "promptex.sellers.schema"
    assert owners["gateway_lots"] == "promptex.gateway.schema"
    assert owners["indexer_cursor"] == "promptex.indexer.schema"
    assert owners["agent_txs"] == "promptex.agent.schema"


def test_ledger_open__migrates_everything__imports_no_service(tmp_path):
    # Ledger.open brings every store's tables to the head, yet the ledger stays below the
    # services: running the migration scripts loads none of their packages.
    code = (
        "import sys\n"
        "from promptex.ledger import Ledger\n"
        f"Ledger.open('sqlite:///{tmp_path}/ledger.sqlite3').close()\n"
        "services = ('agent', 'cli', 'coordinator', 'dashboard', 'gateway', 'indexer', 'migrations', 'sellers')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2][-1] in services and m.startswith('promptex.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
