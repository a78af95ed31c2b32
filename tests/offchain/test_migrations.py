"""The one Alembic history of the shared database, on SQLite and PostgreSQL: a fresh
database gets exactly every package's tables, and a round-1 database (the ledger's
migrations plus the gateway's tables made by its old `create_all`) migrates forward with
every row intact.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from ledger_helpers import bind_new_wallet, event_id
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
)

from promptex.gateway.store import GatewayStore
from promptex.ledger import AccountInDebt, AccountKind, Ledger, schema
from promptex.ledger import wallets as _wallets
from promptex.ledger.amounts import Amount
from promptex.ledger.db import VERSION_TABLE, create_ledger_engine, current_revision, upgrade
from promptex.ledger.local_postgres import LocalPostgres
from promptex.migrations import metadata
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USDC

HEAD = "0027"
NEVER_OPENED = "recorded before lots were tracked, and never opened on chain"
ROUND_ONE_HEAD = "0004"  # the ledger's last revision before the gateway's tables joined
_databases = itertools.count()


def _schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), metadata))


def test_migrations__fresh_database__build_every_table(ledger):
    assert current_revision(ledger.engine) == HEAD  # the head: every migration ran
    assert _schema_diff(ledger.engine) == []  # no table, column, index or constraint differs or is missing
    tables = set(inspect(ledger.engine).get_table_names()) - {VERSION_TABLE}
    assert tables == set(metadata.tables)
    assert {"accounts", "chain_events", "settlement_batches", "agent_redemptions", "gateway_lots"} <= tables


# ─── A round-1 database ──────────────────────────────────────────────────────
# The gateway's tables exactly as round 1's `GatewayStore` made them: its own MetaData,
# no naming convention, `create_all`, and a `gateway_schema_version` row (version 1 had no
# `chain_lot_id`).


def _round_one_gateway(version: int) -> MetaData:
    old = MetaData()
    Table(
        "gateway_api_keys",
        old,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("key_hash", String(64), nullable=False, unique=True),
        Column("prefix", String(16), nullable=False),
        Column("account_id", Integer, nullable=False),
        Column("payer_id", Integer, nullable=True),
        Column("default_asset", String(16), nullable=True),
        Column("budget_asset", String(16), nullable=True),
        Column("budget_remaining", Amount, nullable=True),
        Column("revoked", Boolean, nullable=False, default=False),
        Column("created_at", BigInteger, nullable=False),
    )
    lot_columns = [
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("provider", String(32), nullable=False),
        Column("kind", String(16), nullable=False),
        Column("api", String(16), nullable=False),
        Column("base_url", Text, nullable=False),
        Column("seller", String(64), nullable=False),
        Column("face_value_usd_micro", BigInteger, nullable=False),
        Column("remaining_usd_micro", BigInteger, nullable=False),
        Column("rate_bps", Integer, nullable=False),
        Column("expires_at", BigInteger, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("resale_permitted", Boolean, nullable=False),
        Column("secret_ciphertext", LargeBinary, nullable=False),
        Column("secret_nonce", LargeBinary, nullable=False),
        Column("wrapped_key", LargeBinary, nullable=False),
        Column("wrap_nonce", LargeBinary, nullable=False),
        Column("key_id", String(64), nullable=False),
        Column("attestation", Text, nullable=True),
        Column("chain_lot_tx", String(80), nullable=True),
    ]
    if version >= 2:
        lot_columns.append(Column("chain_lot_id", BigInteger, nullable=True))
    Table("gateway_lots", old, *lot_columns)
    Table("gateway_schema_version", old, Column("version", Integer, primary_key=True))
    return old


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # noqa: ANN001
    """An empty database of each kind (no migrations run)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/round1.sqlite3"
        return
    server: LocalPostgres = request.getfixturevalue("postgres")
    name = f"round_one_{next(_databases)}"
    yield server.create_database(name)
    server.drop_database(name)


BUYER_ADDRESS = "0x" + "B0" * 20
NOW = 1_800_000_000
# Three wallets of one account as the code before 7475d91 could bind them: two in one
# second (the lower address read as first), a third a second later with the lowest address.
PAIR = ("0x" + "02" * 20, NOW), ("0x" + "03" * 20, NOW), ("0x" + "01" * 20, NOW + 1)


def _posting(conn: Connection, ref: str, kind: str, lines: list[tuple[int, str, int]]) -> None:
    entry = conn.execute(
        insert(schema.journal_entries).values(ref=ref, kind=kind, created_at=NOW).returning(schema.journal_entries.c.id)
    ).scalar_one()
    conn.execute(
        insert(schema.journal_lines),
        [{"entry_id": entry, "account_id": a, "asset": s, "amount": amount} for a, s, amount in lines],
    )


def _round_one_ledger(conn: Connection, *, overdrawn: bool) -> dict[str, int]:
    """A ledger as round 1's code left it, written row by row (today's `Ledger` needs
    today's tables): a buyer who deposited 10 CLD, was charged 1 for a settled request,
    holds 1 for an open one and is exiting with 1; an org with a member on a budget.
    `overdrawn` adds what round 1 could do and the issue found: a buyer whose 852 USDC
    deposit a reorg removed after it was spent (balance −852) and whose cap went −5."""
    vault, usage = (
        conn.execute(select(schema.accounts.c.id).where(schema.accounts.c.name == name)).scalar_one()
        for name in ("vault", "usage")
    )

    def account(kind: str = "user", name: str | None = None) -> int:
        created = insert(schema.accounts).values(kind=kind, name=name, created_at=NOW)
        return int(conn.execute(created.returning(schema.accounts.c.id)).scalar_one())

    buyer, org, member, pair = account(), account("org", "acme"), account(), account()
    conn.execute(insert(schema.wallets).values(address=BUYER_ADDRESS, account_id=buyer, bound_at=NOW, nonce="0x01"))
    conn.execute(
        insert(schema.wallets),
        [{"address": a, "account_id": pair, "bound_at": at, "nonce": f"0x1{i}"} for i, (a, at) in enumerate(PAIR)],
    )
    conn.execute(
        insert(schema.deposits).values(
            event_id="0xd1:0", address=BUYER_ADDRESS, asset="CLD", amount=10 * TOKEN, account_id=buyer, created_at=NOW
        )
    )
    _posting(conn, "deposit:0xd1:0", "deposit", [(vault, "CLD", -10 * TOKEN), (buyer, "CLD", 10 * TOKEN)])
    hold = {"account_id": buyer, "payer_id": buyer, "asset": "CLD", "created_at": NOW, "expires_at": NOW + 60}
    conn.execute(
        insert(schema.holds),
        [
            {**hold, "request_id": "req-settled", "amount": 2 * TOKEN, "status": "settled", "closed_at": NOW,
             "cost": TOKEN, "charged": TOKEN},
            {**hold, "request_id": "req-open", "amount": TOKEN, "status": "active", "closed_at": None, "cost": None,
             "charged": None},
        ],
    )  # fmt: skip
    _posting(conn, "settle:req-settled", "settle", [(buyer, "CLD", -TOKEN), (usage, "CLD", TOKEN)])
    sqlite = conn.dialect.name == "sqlite"  # the reflected table has no Amount type: text on SQLite
    conn.execute(  # as round 1 wrote it: no token details (migration 0006)
        insert(Table("usage_records", MetaData(), autoload_with=conn)).values(
            request_id="req-settled", account_id=buyer, payer_id=buyer, asset="CLD", model="claude-test",
            input_tokens=1_000, output_tokens=200, cost=str(TOKEN) if sqlite else TOKEN, gateway_lot_id=1,
            chain_lot_id=7, lot_kind="tokenized", list_usd_micro="3000" if sqlite else 3_000, settled_at=NOW,
            status="pending",
        )
    )  # fmt: skip
    conn.execute(
        insert(schema.exits).values(
            event_id="0xe1:0", address=BUYER_ADDRESS, asset="CLD", amount=TOKEN, account_id=buyer, status="locked",
            created_at=NOW,
        )
    )  # fmt: skip
    balance = {"account_id": buyer, "asset": "CLD", "posted": 9 * TOKEN, "held": TOKEN, "locked": TOKEN}
    conn.execute(insert(schema.balances).values(**balance, cap_remaining=9 * TOKEN))
    conn.execute(insert(schema.members).values(org_id=org, member_id=member, created_at=NOW))
    conn.execute(insert(schema.budgets).values(org_id=org, member_id=member, asset="CLD", remaining=TOKEN, held=0))
    ids = {"buyer": buyer, "org": org, "member": member, "pair": pair}
    if overdrawn:
        spent = ids["spent"] = account()
        _posting(conn, "deposit:0xd2:0", "deposit", [(vault, "USDC", -852 * USDC), (spent, "USDC", 852 * USDC)])
        _posting(conn, "settle:req-spent", "settle", [(spent, "USDC", -852 * USDC), (usage, "USDC", 852 * USDC)])
        _posting(conn, "unwind:deposit:0xd2:0", "unwind", [(vault, "USDC", 852 * USDC), (spent, "USDC", -852 * USDC)])
        conn.execute(
            insert(schema.balances).values(
                account_id=spent, asset="USDC", posted=-852 * USDC, held=0, locked=0, cap_remaining=-5
            )
        )
    return ids


def _fill_round_one(engine: Engine, gateway_version: int, *, overdrawn: bool = False) -> dict[str, int]:
    """Rows in every package's tables, written the way round 1 wrote them."""
    with engine.begin() as conn:
        ids = _round_one_ledger(conn, overdrawn=overdrawn)
    buyer, org, member = ids["buyer"], ids["org"], ids["member"]

    old = _round_one_gateway(gateway_version)
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(insert(old.tables["gateway_schema_version"]).values(version=gateway_version))
        conn.execute(
            insert(old.tables["gateway_api_keys"]),
            [
                {
                    "key_hash": "a" * 64,
                    "prefix": "sk-px-aaaa",
                    "account_id": buyer,
                    "payer_id": None,
                    "budget_asset": None,
                    "budget_remaining": None,
                    "revoked": False,
                    "created_at": 1,
                },
                {
                    "key_hash": "b" * 64,
                    "prefix": "sk-px-bbbb",
                    "account_id": member,
                    "payer_id": org,
                    "budget_asset": "CLD",
                    "budget_remaining": 5 * TOKEN,
                    "revoked": True,
                    "created_at": 2,
                },
            ],
        )
        lot = {
            "provider": "anthropic",
            "kind": "listed",
            "api": "anthropic",
            "base_url": "https://api.anthropic.com",
            "seller": "0x" + "1" * 40,
            "face_value_usd_micro": 100_000_000,
            "remaining_usd_micro": 99_000_000,
            "rate_bps": 6_000,
            "expires_at": 2_000_000_000,
            "created_at": 3,
            "resale_permitted": True,
            "secret_ciphertext": b"\x00ciphertext\xff",
            "secret_nonce": b"n" * 12,
            "wrapped_key": b"w" * 48,
            "wrap_nonce": b"m" * 12,
            "key_id": "k1",
            "attestation": '{"lot": 7}',
            "chain_lot_tx": "0x" + "ab" * 32,
        }
        if gateway_version >= 2:
            lot["chain_lot_id"] = 7
        conn.execute(insert(old.tables["gateway_lots"]), [lot])
    return ids


def _rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (but Alembic's version table), in a stable order."""
    reflected = MetaData()
    reflected.reflect(engine)
    with engine.connect() as conn:
        return {
            name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
            for name, table in reflected.tables.items()
            if name != VERSION_TABLE
        }


@pytest.mark.parametrize("gateway_version", [2, 1])
def test_upgrade__round_one_database__keeps_every_row(empty_url, gateway_version):
    engine = create_ledger_engine(empty_url, sqlite_synchronous="NORMAL")
    try:
        upgrade(engine, ROUND_ONE_HEAD)
        ids = _fill_round_one(engine, gateway_version)
        before = _rows(engine)
        assert before["gateway_api_keys"] and before["gateway_lots"] and before["usage_records"]

        upgrade(engine)

        assert current_revision(engine) == HEAD
        assert _schema_diff(engine) == []  # the adopted tables are exactly what a fresh database gets
        after = _rows(engine)
        assert "gateway_schema_version" not in after
        del before["gateway_schema_version"]
        # 0009: holds gain their lot capacity columns (empty), each lot its capacity row
        # (round 1's remaining as the chain's), nothing reserved or used; no lease. 0019: no
        # hold names a gateway process, none is registered.
        assert [row[-5:] for row in after["holds"]] == [(None,) * 5] * 2
        after["holds"] = [row[:-5] for row in after["holds"]]
        assert after.pop("ledger_processes") == []
        assert [row[:-1] for row in after.pop("lot_capacity")] == [
            (1, 7 if gateway_version >= 2 else None, 99_000_000, 0, 0, 0)
        ]
        assert after.pop("capacity_leases") == []
        if gateway_version == 1:  # the column version 2 added: there, empty
            assert [row[-1] for row in after["gateway_lots"]] == [None]
            after["gateway_lots"] = [row[:-1] for row in after["gateway_lots"]]
        # 0012: each lot its state (with an escrow lot id: open, routed until expiry less the
        # longest epoch and the default margin; without: failed, saying why), no seller
        # transaction; records gain their refund columns, empty.
        opened = gateway_version >= 2
        assert [row[:-1] for row in after.pop("lot_states")] == [
            (1, "open" if opened else "failed", None if opened else NEVER_OPENED, 2_000_000_000,
             2_000_000_000 - 3_900, 7 if opened else None, None, None)
        ]  # fmt: skip
        assert after.pop("seller_txs") == []
        # 0013: no session keys or lanes; every record a capped-mode one, with no voucher.
        assert after.pop("session_keys") == [] and after.pop("voucher_lanes") == []
        assert after.pop("session_key_submissions") == []  # 0014: nothing to relay yet
        assert after.pop("door_nonces") == []  # 0015: no wallet has asked the door yet
        assert after.pop("attestor_lot_reviews") == [] and after.pop("attestor_reports") == []  # 0016: none yet
        assert [row[-4:] for row in after["usage_records"]] == [("capped", None, None, None)]
        after["usage_records"] = [row[:-4] for row in after["usage_records"]]
        assert [row[-2:] for row in after["usage_records"]] == [(None, None)]
        after["usage_records"] = [row[:-2] for row in after["usage_records"]]
        # Migration 0006's columns: a round-1 record counted no cached or reasoning tokens apart.
        assert [row[-4:] for row in after["usage_records"]] == [(0, 0, 0, 0)]
        after["usage_records"] = [row[:-4] for row in after["usage_records"]]
        for new in ("debts", "chain_identity", "indexer_reorgs"):  # 0008's tables: empty, nothing owed
            assert after.pop(new) == []
        for new in ("gateway_limits", "gateway_limit_counters", "gateway_limit_takes", "gateway_lot_health"):
            assert after.pop(new) == []
        # 0024: an account's wallets keep their order, (bound_at, address), each bound after
        # the one before: the second bound in the same second and the third a second later
        # move up one, and the one debited stays the lower address of the two tied.
        moved = {PAIR[1][0]: NOW + 1, PAIR[2][0]: NOW + 2}
        wallets_before = before.pop("wallets")
        assert after.pop("wallets") == sorted(
            ((address, account, moved.get(address, at), nonce) for address, account, at, nonce in wallets_before),
            key=repr,
        )
        with engine.connect() as conn:
            assert _wallets.bindings(conn)[ids["pair"]] == [address for address, _at in PAIR]
            assert _wallets.first_bound(conn, ids["pair"]) == PAIR[0][0]
        added = set(after["accounts"]) - set(before["accounts"])
        assert [(kind, name) for _id, kind, name, _at in added] == [("system", "debts")]  # 0008's lender
        after["accounts"] = [row for row in after["accounts"] if row not in added]
        assert after == before  # every balance, budget, hold and journal line unchanged

        # The stores read and extend the adopted tables as before.
        store = GatewayStore(engine)
        assert store.api_key("a" * 64) is not None and store.api_key("b" * 64) is None  # revoked
        assert store.key_by_id(2).budget_remaining == 5 * TOKEN  # type: ignore[union-attr]
        assert store.add_api_key("c" * 64, "sk-px-cccc", ids["buyer"], 4).id == 3
        assert [lot.remaining_usd_micro for lot in store.lots()] == [99_000_000]
        ledger = Ledger(engine)
        assert ledger.balance(ids["buyer"], "CLD").posted == 9 * TOKEN
        assert ledger.usage_record("req-settled").cost == TOKEN  # type: ignore[union-attr]
        assert ledger.problems() == []
        ledger.close()
    finally:
        engine.dispose()


def test_downgrade__gateway_revision__keeps_tables_and_rows(empty_url):
    engine = create_ledger_engine(empty_url, sqlite_synchronous="NORMAL")
    try:
        upgrade(engine)
        GatewayStore(engine).add_api_key("d" * 64, "sk-px-dddd", 1, 5)
        from alembic import command

        from promptex.ledger.db import alembic_config

        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), ROUND_ONE_HEAD)
        rows = _rows(engine)
        assert rows["gateway_schema_version"] == [(2,)]  # what round 1's gateway expects
        assert len(rows["gateway_api_keys"]) == 1
        upgrade(engine)  # and forward again: adopted, nothing lost
        assert _schema_diff(engine) == []
        assert GatewayStore(engine).api_key("d" * 64) is not None
    finally:
        engine.dispose()


def test_upgrade__round_one_negative_balance__becomes_an_open_debt(empty_url):
    """Round 1's −852 USDC (a reorg removed a deposit already spent) is brought to zero by
    an explicit debt; the other balances are unchanged, the books balance, the account is
    refused until a deposit repays the debt, and the first deposit does."""
    engine = create_ledger_engine(empty_url, sqlite_synchronous="NORMAL")
    try:
        upgrade(engine, ROUND_ONE_HEAD)
        ids = _fill_round_one(engine, 2, overdrawn=True)

        upgrade(engine)

        ledger = Ledger(engine, clock=lambda: NOW)
        spent = ids["spent"]
        assert ledger.balance(spent, "USDC").posted == 0
        assert ledger.balance(spent, "USDC").cap_remaining == 0  # a limit below zero is none left
        (debt,) = ledger.debts(spent)
        assert (debt.asset, debt.outstanding, debt.status) == ("USDC", 852 * USDC, "open")
        assert "below zero before migration 0008" in debt.reason
        assert ledger.balance(ids["buyer"], "CLD").posted == 9 * TOKEN  # the healthy buyer: unchanged
        assert ledger.problems() == []

        ledger.set_spend_cap(spent, "USDC", 10**12)
        with pytest.raises(AccountInDebt, match="owes 852.00 USDC"):  # whole units (510063d)
            ledger.reserve(spent, "USDC", 1, "req-after", ttl=60)
        ledger.credit_deposit(event_id(), bind_new_wallet(ledger, spent), "USDC", 1_000 * USDC)
        assert ledger.balance(spent, "USDC").posted == 148 * USDC  # the debt was repaid first
        assert ledger.debts(spent, open_only=True) == []
        ledger.reserve(spent, "USDC", USDC, "req-repaid", ttl=60)  # served again
        assert ledger.problems() == []
        ledger.close()
    finally:
        engine.dispose()


def test_upgrade_0027__a_spend_cap_indexed_after_a_session_before_0025__ends_it(ledger):
    """0025 gave sessions indexed before it no `capped_by`: an account that had set a spend cap
    after its session was served neither way ("no spend cap was set since"). 0027 finds each
    session's first SpendCapRegistered after it (and before the account's next session) in the
    indexer's record, in chain order; what the indexer did not record stays as it was."""
    from sqlalchemy import text, update

    from promptex.indexer.schema import chain_events
    from promptex.ledger.sessions import CAPPED, NEITHER, mode

    def indexed(name: str, fact: str, block: int, index: int) -> str:
        with ledger.engine.begin() as conn:
            conn.execute(insert(chain_events).values(
                tx_hash="0x" + fact[2:66], log_index=index, block_number=block, block_hash="0x" + "00" * 32,
                contract="0x" + "ab" * 20, source="CreditsVault", name=name, args="{}", fact_id=fact,
            ))  # fmt: skip
        return fact

    def session(wallet: str, number: int, at: tuple[int, int] | None) -> None:
        fact = event_id()
        ledger.register_session(
            fact, address=wallet, asset="USDC", asset_address="0x" + "cd" * 20, chain_id=31337,
            vault="0x" + "ab" * 20, key="0x" + "ef" * 20, session=number, lanes=1, maximum=5 * USDC,
            expiry=NOW, signed_from=1,
        )  # fmt: skip
        if at is not None:
            indexed("SessionKeyRegistered", fact, *at)

    def cap(wallet: str, at: tuple[int, int], *, revoked: bool = False) -> str:
        fact = event_id()
        ledger.apply_chain_facts(lambda facts: facts.register_spend_cap(fact, wallet, "USDC", USDC, revoked=revoked))
        return indexed("SpendCapRevoked" if revoked else "SpendCapRegistered", fact, *at)

    ada, bob, cy = (ledger.create_account(AccountKind.USER, name).id for name in ("ada", "bob", "cy"))
    a, b, c = (bind_new_wallet(ledger, account) for account in (ada, bob, cy))
    session(a, 0, (10, 0))
    first = cap(a, (11, 0))  # ends session 0
    session(a, 1, (12, 0))
    cap(a, (13, 0), revoked=True)  # a revocation ends nothing
    second = cap(a, (14, 5))  # ends session 1
    cap(a, (14, 7))  # later still: session 1 was over already
    cap(b, (20, 1))  # before bob's session, in the same block
    session(b, 0, (20, 2))
    session(c, 0, None)  # not recorded by the indexer
    cap(c, (30, 0))
    with ledger.engine.begin() as conn:  # as a ledger indexed before 0025 has them
        conn.execute(update(schema.session_keys).values(capped_by=None))
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0026'"))

    upgrade(ledger.engine)

    keys = schema.session_keys.c
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(keys.account_id, keys.session, keys.capped_by)).all()
    found = {(row.account_id, row.session): row.capped_by for row in rows}
    assert found == {(ada, 0): first, (ada, 1): second, (bob, 0): None, (cy, 0): None}
    assert current_revision(ledger.engine) == HEAD
    assert mode(ledger.session(ada, "USDC"), NOW) == CAPPED and mode(ledger.session(bob, "USDC"), NOW) == NEITHER
