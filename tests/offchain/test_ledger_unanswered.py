"""A settle that committed while its answer was lost, the database then unreachable for its
retry (`holds.unanswered`): its request was answered 503 ("nothing is charged"), so the
book's next sweep gives the charge back — balance, cap, lot usage, a signed lane's total —
in one transaction, once; or keeps it where it must stay. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from ledger_helpers import event_id, fund
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from test_ledger_lanes import ASSET, KEY, TOKEN, VAULT, _hold, _record, _signed

from promptex.ledger import Ledger, LotClaim, Reservation, Sweeper, UsageRecord
from promptex.ledger.errors import LedgerUnavailable
from promptex.ledger.holds.book import GeneralHolds
from promptex.ledger.holds.postgres import PgOneStatement
from promptex.ledger.schema import journal_entries
from promptex.ledger.usage import quarantine
from promptex.protocol.units import USD_MICRO as USDC

LOT = 7
_SETTLE = GeneralHolds.settle


def _lost(monkeypatch: pytest.MonkeyPatch, *, committed: bool) -> None:
    """Every settle runs the general path, which commits (`committed`) or not, then raises
    as SQLAlchemy does when the database cannot be reached (PostgreSQL's book: no retry, a
    connection never made; LedgerUnavailable, the gateway's 503)."""

    def settle(self: GeneralHolds, request_id: str, cost: int, *, record: UsageRecord | None = None) -> Any:
        if committed:
            _SETTLE(self, request_id, cost, record=record)
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(PgOneStatement, "settle", lambda *args, **kwargs: None)  # the general path decides
    monkeypatch.setattr(GeneralHolds, "settle", settle)


def _entries(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(journal_entries)).scalar_one())


def test_settle_committed_answer_lost__next_sweep_gives_the_charge_back_once__kept_where_it_must_stay(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ledger.engine.begin() as conn:
        ledger.open_lot_capacity(conn, LOT, 1_000 * USDC)
    buyer = ledger.create_account().id
    fund(ledger, buyer, ASSET, 10 * USDC)
    signer = _signed(ledger)
    book = ledger.holds
    ledger.holds.reserve(Reservation("plain", buyer, ASSET, USDC, 300, lots=[LotClaim(LOT, 2 * USDC)]))
    ledger.holds.reserve(Reservation("batched", buyer, ASSET, USDC, 300))
    ledger.holds.reserve(Reservation("not-committed", buyer, ASSET, USDC, 300))
    ledger.holds.reserve(Reservation("streamed", buyer, ASSET, USDC, 300))
    _hold(ledger, signer, "signed", 0, 2 * USDC)
    _hold(ledger, signer, "lane-moved-on", 1, 2 * USDC)
    before = {who: ledger.balance(who, ASSET) for who in (buyer, signer)}
    lot_usage = USDC // 2

    _lost(monkeypatch, committed=True)
    for request_id, cost, record in (
        ("plain", USDC // 4, UsageRecord("m", 10, 10, lot_usage, gateway_lot_id=LOT)),
        ("batched", USDC // 8, UsageRecord("m", 10, 10, 0)),
        ("signed", USDC // 2, _record(0, 2 * USDC)),
        ("lane-moved-on", USDC // 2, _record(1, 2 * USDC)),
    ):
        with pytest.raises((LedgerUnavailable, OperationalError)):  # the gateway's 503
            ledger.holds.settle(request_id, cost, record=record)
    # gbreak5: a stream's settle (`served`: its client has the whole answer, no 503 told it
    # "nothing is charged"): committed, it stays charged (before: given back, seller unpaid).
    with pytest.raises((LedgerUnavailable, OperationalError)):
        ledger.holds.settle("streamed", USDC // 16, record=UsageRecord("m", 10, 10, 0), served=True)
    assert "streamed" not in book.unanswered
    _lost(monkeypatch, committed=False)
    with pytest.raises((LedgerUnavailable, OperationalError)):
        ledger.holds.settle("not-committed", USDC // 4, record=UsageRecord("m", 10, 10, 0))
    monkeypatch.undo()
    assert [ledger.hold(r).status.value for r in ("plain", "signed", "not-committed")] == [  # type: ignore[union-attr]
        "settled", "settled", "active"
    ]  # fmt: skip
    assert ledger.balance(buyer, ASSET).posted == 10 * USDC - USDC // 4 - USDC // 8 - USDC // 16  # charged all the same
    assert ledger.lot_capacities()[LOT].used == lot_usage

    # Kept: a record the coordinator took (here set aside; batched alike), and a lane a
    # later request was accepted on (the proxy was told a total with the charge since).
    with ledger.engine.begin() as conn:
        quarantine(conn, {"batched": "the coordinator's"}, ledger.clock())
    _hold(ledger, signer, "next", 1, 3 * USDC, charged=USDC // 2)
    ledger.holds.settle("next", USDC // 4, record=_record(1, 3 * USDC))

    Sweeper(ledger).run_once()
    buyer_now, signer_now = ledger.balance(buyer, ASSET), ledger.balance(signer, ASSET)
    charged = USDC // 8 + USDC // 16  # the quarantined one's, kept; the streamed one's, kept
    assert (buyer_now.posted, buyer_now.cap_remaining) == (before[buyer].posted - charged,
                                                           before[buyer].cap_remaining - charged)  # fmt: skip
    kept = USDC // 2 + USDC // 4  # lane 1: the one answered 503 (the proxy was told since) and the next
    assert (signer_now.posted, signer_now.cap_remaining) == (before[signer].posted - kept,
                                                             before[signer].cap_remaining - kept)  # fmt: skip
    assert ledger.lot_capacities()[LOT].used == 0  # the plain one's lot usage back
    assert ledger.lane(signer, ASSET, 1, 0).charged == 0  # the proxy's figure: no charge
    assert ledger.lane(signer, ASSET, 1, 1).charged == kept
    named = ("plain", "signed", "batched", "lane-moved-on", "streamed")
    statuses = {r: ledger.usage_record(r).status for r in named}  # type: ignore[union-attr]
    assert statuses == {"plain": "refunded", "signed": "refunded", "batched": "quarantined", "lane-moved-on": "pending",
                        "streamed": "pending"}  # fmt: skip
    assert book.unanswered == {} and book.kept == 2  # "not-committed": not settled, forgotten
    if ledger.engine.dialect.name == "sqlite":  # (PostgreSQL's sweep released it as abandoned)
        ledger.release("not-committed")
    assert ledger.hold("not-committed").status.value == "released"  # type: ignore[union-attr]
    assert ledger.balance(buyer, ASSET).held == 0 and ledger.balance(signer, ASSET).held == 0

    entries, buyer_now, signer_now = _entries(ledger), ledger.balance(buyer, ASSET), ledger.balance(signer, ASSET)
    book.unanswered.update({"plain": USDC // 4, "signed": USDC // 2})  # looked at again: nothing more
    Sweeper(ledger).run_once()
    assert _entries(ledger) == entries and ledger.balance(buyer, ASSET) == buyer_now
    assert ledger.balance(signer, ASSET) == signer_now and book.kept == 2


def test_given_back_after_the_chain_set_another_cap__the_new_cap_is_left_as_the_chain_has_it(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gbreak5 item 1 / pgrepair item 3 (wallets s15): a settle answered 503 is given back at
    the next sweep with the cap it took. When the chain set another cap meanwhile — the
    buyer lowered it (signed mode: a new session with a lower maximum; capped: its cap
    revoked, or a new one) — the cap given back is not the one in force: the chain's new
    cap never counted the charge, so adding it left the ledger's cap ABOVE the chain's
    (the gateway serving what the vault refuses). The balance comes back; the new cap stays."""
    buyer = ledger.create_account().id
    wallet = fund(ledger, buyer, ASSET, 10 * USDC)
    signer = _signed(ledger)
    ledger.holds.reserve(Reservation("plain", buyer, ASSET, USDC, 300))
    _hold(ledger, signer, "signed", 0, 2 * USDC)
    _lost(monkeypatch, committed=True)
    for request_id, cost, record in (
        ("plain", USDC // 4, UsageRecord("m", 10, 10, 0)),
        ("signed", USDC // 2, _record(0, 2 * USDC)),
    ):
        with pytest.raises((LedgerUnavailable, OperationalError)):
            ledger.holds.settle(request_id, cost, record=record)
    monkeypatch.undo()

    cap_event, session_event = event_id(), event_id()
    ledger.apply_chain_facts(lambda facts: facts.register_spend_cap(cap_event, wallet, ASSET, 2 * USDC))
    ledger.register_session(
        session_event, address=ledger.debited_wallet(signer), asset=ASSET, asset_address=TOKEN, chain_id=31337,
        vault=VAULT, key=KEY, session=2, lanes=2, maximum=USDC, expiry=ledger.clock() + 86_400, signed_from=3,
    )  # fmt: skip
    Sweeper(ledger).run_once()

    assert [ledger.usage_record(r).status for r in ("plain", "signed")] == ["refunded", "refunded"]  # type: ignore[union-attr]
    assert (ledger.balance(buyer, ASSET).posted, ledger.balance(buyer, ASSET).cap_remaining) == (10 * USDC, 2 * USDC)
    assert (ledger.balance(signer, ASSET).posted, ledger.balance(signer, ASSET).cap_remaining) == (10 * USDC, USDC)
    # A reorg then orphans the new cap and session: the caps before come back as the chain has
    # them, which never counted the charges given back (the registrations' "previous" did).
    for event in (cap_event, session_event):
        ledger.apply_chain_facts(lambda facts, event=event: facts.unwind(event))
    assert ledger.balance(buyer, ASSET).cap_remaining == 10 * USDC
    assert ledger.balance(signer, ASSET).cap_remaining == 100 * USDC
