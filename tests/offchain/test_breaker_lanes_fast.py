"""Breaker attacks on signed mode's fast hold path on SQLite (`holds.lanes_sqlite`, 2683b47),
by someone other than its author: it must refuse exactly what `VoucherLanes` (the general
path) refuses and write the same rows. Each attack runs one script of ledger operations on
two ledgers sharing a clock — one on the fast path, one forced onto the general path —
and compares every answer (or refusal's kind) and then every row of every ledger table.

Attacks: a session revoked or expired between hold and settle; a replayed voucher (the
same request again, another request with the same voucher while it is in flight, after its
settle, after its release); a voucher of another session, a lane ≥ the session's lanes or
below 0; a ceiling below the lane's total; a hold settled above its amount; a release
(and a settle at another cost) after the settle; a balance emptied by the chain while the
hold was out (the fast settle's CHECK fails and the general path retries); a fast-path
statement that fails midway (the transaction must leave nothing); and group commits (the
gateway's ledger thread: pinned connection, a savepoint a write) in which one signed write
raises — the others stand, the failing one leaves nothing.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import inspect, select

from promptex.ledger import Ledger, Reservation, UsageRecord
from promptex.ledger.binding import sign
from promptex.ledger.holds import ExtraTake, lanes_sqlite
from promptex.ledger.holds import sqlite as sqlite_holds
from promptex.ledger.holds.book import GeneralHolds
from promptex.ledger.lanes import NAME, Voucher
from promptex.ledger.metadata import metadata
from promptex.ledger.usage import SIGNED

ASSET = "USDC"
START = 1_800_000_000
FUNDS = 10_000
LANES = 2
SIG = "0x" + "11" * 65
RANDOM = ("binding_challenges", "wallets")
_scripts = itertools.count()

Op = tuple[Any, ...]


class Clock:
    """One clock for both ledgers: an attack moves time for both at once."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> int:
        return self.now


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, Ledger, Clock]]:
    folder: Path = tmp_path_factory.mktemp("breaker-lanes")
    clock = Clock()
    fast, slow = (
        Ledger.open(f"sqlite:///{folder}/{name}.sqlite3", sqlite_synchronous="NORMAL", clock=clock)
        for name in ("fast", "general")
    )
    slow.holds.reserve_in = functools.partial(GeneralHolds.reserve_in, slow.holds)  # type: ignore[method-assign]
    slow.holds.settle_in = functools.partial(GeneralHolds.settle_in, slow.holds)  # type: ignore[method-assign]
    yield fast, slow, clock
    for ledger in (fast, slow):
        ledger.check()
        ledger.close()


def _tables(ledger: Ledger) -> list[str]:
    present = set(inspect(ledger.engine).get_table_names())
    # a wallet's binding carries a random nonce: the two tables that cannot match
    return sorted(name for name in metadata.tables if name in present and name not in RANDOM)


def _columns(name: str) -> list[Any]:
    # the migrations create the system accounts at wall-clock time (the two files may be a
    # second apart); every other time in the ledger is the shared clock's
    return [column for column in metadata.tables[name].c if (name, column.name) != ("accounts", "created_at")]


def state(ledger: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted (both ledgers number rows alike: same script)."""
    with ledger.engine.connect() as conn:
        return {
            name: sorted((tuple(row) for row in conn.execute(select(*_columns(name))).all()), key=repr)
            for name in _tables(ledger)
        }


class Script:
    """One attacker's account on one ledger, and the operations the attacks use."""

    def __init__(self, ledger: Ledger, clock: Clock, tag: str, *, expiry: int = 86_400) -> None:
        self.ledger, self.clock, self.tag = ledger, clock, tag
        wallet = Account.from_key(bytes.fromhex(f"{int(tag.split('-')[0]) + 1:064x}"))
        self.address = wallet.address
        self.account = ledger.create_account().id
        message = ledger.issue_binding_challenge(self.account, wallet.address)
        ledger.bind_wallet(message, sign(message, wallet.key))
        ledger.credit_deposit(f"{tag}-deposit", wallet.address, ASSET, FUNDS)
        ledger.register_session(
            f"{tag}-session", address=wallet.address, asset=ASSET, asset_address="0x" + "cd" * 20, chain_id=31337,
            vault="0x" + "ab" * 20, key="0x" + "ef" * 20, session=1, lanes=LANES, maximum=10**9,
            expiry=clock.now + expiry, signed_from=2,
        )  # fmt: skip

    def reserve(self, rid: str, lane: int, ceiling: int, amount: int, session: int = 1) -> object:
        request = f"{self.tag}-{rid}"
        self.ledger.vouchers.plan(request, Voucher(session, lane, ceiling, SIG))
        try:
            hold = self.ledger.holds.reserve(
                Reservation(request, self.account, ASSET, amount, 60, extras=(ExtraTake(NAME, ceiling),))
            )
        finally:
            self.ledger.vouchers.plan(request, None)
        return ("held", hold.amount, hold.status.value)

    def settle(self, rid: str, cost: int, lane: int | None, ceiling: int = 0, session: int = 1) -> object:
        record = None if lane is None else UsageRecord(
            "m", 1, 1, cost, mode=SIGNED, voucher_session=session, voucher_lane=lane, voucher_ceiling=ceiling
        )  # fmt: skip
        hold = self.ledger.holds.settle(f"{self.tag}-{rid}", cost, record=record)
        return ("settled", hold.charged, hold.status.value)

    def release(self, rid: str) -> object:
        return ("released", self.ledger.holds.release(f"{self.tag}-{rid}").status.value)

    def revoke(self) -> object:
        self.ledger.revoke_session(
            f"{self.tag}-revoke", address=self.address, asset=ASSET, session=1, ends_at=self.clock.now + 3_600
        )
        return "revoked"

    def exit(self, amount: int) -> object:
        """The chain completes an instant exit of `amount` (the balance drops under the holds)."""
        self.ledger.complete_exit(f"{self.tag}-exit", self.address, ASSET, amount)
        return "exited"

    def lock(self, amount: int) -> object:
        self.ledger.lock_for_exit(f"{self.tag}-lock", self.address, ASSET, amount)
        return "locked"

    def sweep(self) -> object:
        return ("swept", self.ledger.holds.sweep())

    def lane(self, number: int) -> object:
        lane = self.ledger.lane(self.account, ASSET, 1, number)
        return ("lane", lane.charged, None if lane.voucher is None else lane.voucher.ceiling, lane.inflight)

    def do(self, op: Op) -> object:
        if op[0] == "advance":
            return "advanced"  # the clock is shared: moved once, by `play`
        try:
            return getattr(self, op[0])(*op[1:])
        except Exception as exc:  # the refusal's kind is what both paths must agree on
            return type(exc).__name__


def play(
    pair: tuple[Ledger, Ledger, Clock], ops: list[Op], *, expiry: int = 86_400
) -> tuple[list[object], list[object]]:
    """`ops` on both ledgers, step by step (time moves for both between steps)."""
    fast, slow, clock = pair
    tag = f"{next(_scripts)}-s"
    scripts = [Script(ledger, clock, tag, expiry=expiry) for ledger in (fast, slow)]
    assert scripts[0].account == scripts[1].account
    answers: tuple[list[object], list[object]] = ([], [])
    for op in ops:
        for script, out in zip(scripts, answers, strict=True):
            out.append(script.do(op))
        if op[0] == "advance":
            clock.now += op[1]
    return answers


def same(pair: tuple[Ledger, Ledger, Clock], ops: list[Op], **kw: Any) -> list[object]:
    """Both paths gave the same answers and left the same rows; the fast path's answers."""
    fast, slow, _ = pair
    answers = play(pair, ops, **kw)
    assert answers[0] == answers[1]
    _same_rows(fast, slow)
    return answers[0]


def _same_rows(fast: Ledger, slow: Ledger) -> None:
    """Table by table, so a difference names its table and rows."""
    mine, theirs = state(fast), state(slow)
    assert mine.keys() == theirs.keys()
    for name in mine:
        extra = [row for row in mine[name] if row not in theirs[name]]
        missing = [row for row in theirs[name] if row not in mine[name]]
        assert (name, extra) == (name, missing)


# ─── Attacks on the refusals and the settle ─────────────────────────────────


def test_session_revoked_between_hold_and_settle__settled_alike__next_voucher_refused_alike(pair) -> None:
    out = same(pair, [("reserve", "a", 0, 100, 100), ("revoke",), ("settle", "a", 60, 0, 100),
                      ("reserve", "b", 1, 50, 50), ("reserve", "c", 0, 200, 140), ("lane", 0)])  # fmt: skip
    assert out[2] == ("settled", 60, "settled")  # the answer was served before the revocation: charged
    assert out[3] == out[4] == "SessionClosed"
    assert out[5] == ("lane", 60, 100, None)


def test_session_expired_between_hold_and_settle__settled_alike__then_closed(pair) -> None:
    out = same(pair, [("reserve", "a", 0, 100, 100), ("advance", 45), ("settle", "a", 100, 0, 100),
                      ("reserve", "b", 0, 150, 50), ("lane", 0)], expiry=30)  # fmt: skip
    assert out[2] == ("settled", 100, "settled")
    assert out[3] == "SessionClosed"


def test_replayed_voucher__same_request__in_flight__after_settle__after_release__refused_alike(pair) -> None:
    out = same(
        pair,
        [
            ("reserve", "a", 0, 100, 100),
            ("reserve", "a", 0, 100, 100),  # the same request again: its hold, nothing more taken
            ("reserve", "b", 0, 100, 100),  # another request, same voucher, the first in flight
            ("settle", "a", 40, 0, 100),
            ("reserve", "c", 0, 100, 60),  # the same voucher after its settle (hold = ceiling - charged)
            ("reserve", "d", 1, 70, 70),
            ("release", "d"),
            ("reserve", "e", 1, 70, 70),  # after its release
            ("reserve", "f", 1, 71, 71),  # the next ceiling: taken
            ("lane", 0),
            ("lane", 1),
        ],
    )
    assert out[1] == ("held", 100, "active")
    assert out[2] == "LaneBusy"
    assert out[4] == out[7] == "VoucherUsed"
    assert out[8] == ("held", 71, "active")
    assert out[9] == ("lane", 40, 100, None)


def test_voucher_of_another_session_or_lane__ceiling_below_total__refused_alike(pair) -> None:
    out = same(
        pair,
        [
            ("reserve", "a", 0, 100, 100),
            ("settle", "a", 80, 0, 100),
            ("reserve", "b", 0, 300, 220, 2),  # a session the account does not have
            ("reserve", "c", 0, 300, 220, 0),  # an older session number
            ("reserve", "d", LANES, 300, 300),  # lane = the session's lanes
            ("reserve", "e", 2**31, 300, 300),
            ("reserve", "f", -1, 300, 300),
            ("reserve", "g", 0, 79, 1),  # ceiling below what the lane was charged
            ("reserve", "h", 0, 300, 221),  # hold not ceiling - charged
            ("reserve", "i", 0, 10**30, 10**30 - 80),  # far above the balance
            ("reserve", "j", 0, 300, 220),
        ],
    )
    assert out[2:8] == ["SessionClosed"] * 5 + ["CeilingBelowCharged"]
    assert out[8] == "LaneBusy"
    assert out[9] == "InsufficientFunds"
    assert out[10] == ("held", 220, "active")


def test_ceilings_across_lanes_beyond_balance_less_pending_exit__refused_alike(pair) -> None:
    """Lane 1's unused ceiling counts against lane 0's next voucher; a pending exit too."""
    out = same(
        pair,
        [
            ("reserve", "a", 1, 4_000, 4_000),
            ("settle", "a", 0, 1, 4_000),  # charged nothing: lane 1 keeps a 4,000 ceiling
            ("lock", 3_000),
            ("reserve", "b", 0, 3_001, 3_001),  # 4,000 + 3,001 > 10,000 - 3,000
            ("reserve", "c", 0, 3_000, 3_000),  # exactly what is left
            ("lane", 0),
        ],
    )
    assert out[3] == "VoucherAboveBalance"
    assert out[4] == ("held", 3_000, "active")


def test_settle_above_the_hold__release_and_resettle_after_it__no_lane_beyond_its_voucher(pair) -> None:
    out = same(
        pair,
        [
            ("reserve", "a", 0, 100, 100),
            ("settle", "a", 150, 0, 100),  # a lying meter: more than the hold
            ("release", "a"),  # after the settle: nothing changes
            ("settle", "a", 150, 0, 100),  # the same settle again: the same answer
            ("settle", "a", 90, 0, 100),  # another cost: refused
            ("lane", 0),
            ("reserve", "b", 1, 100, 100),
            ("settle", "b", 30, None),  # no record (no voucher named): the lane freed, not charged
            ("lane", 1),
        ],
    )
    assert out[1] == ("settled", 150, "settled")  # the ledger charges it (funds cover it) ...
    assert out[5] == ("lane", 100, 100, None)  # ... but the lane never beyond its voucher
    assert out[2] == ("released", "settled")
    assert out[4] == "HoldConflict"
    assert out[8] == ("lane", 0, 100, None)


def test_settle_naming_a_lane_the_hold_did_not_take__same_refusal(pair) -> None:
    """The gateway names the lane in the record; one the session never had must be refused
    the same way on both paths (and leave the hold active for the sweeper)."""
    out = same(pair, [("reserve", "a", 0, 100, 100), ("settle", "a", 50, 1, 100, 7), ("lane", 0)])
    assert out[1] == "NoResultFound"  # the fast path raised LookupError (fixed: the general path's kind)
    assert out[2] == ("lane", 0, 100, out[2][3]) and out[2][3] is not None  # still in flight: swept later


def test_balance_emptied_by_the_chain_while_held__fast_settle_falls_back__same_debt_and_rows(pair) -> None:
    out = same(
        pair,
        [("reserve", "a", 0, 5_000, 5_000), ("exit", FUNDS), ("settle", "a", 4_000, 0, 5_000), ("lane", 0),
         ("reserve", "b", 1, 10, 10)],
    )  # fmt: skip
    assert out[2] == ("settled", 4_000, "settled")
    assert out[3] == ("lane", 4_000, 5_000, None)
    assert out[4] in ("AccountInDebt", "InsufficientFunds")


def test_hold_swept_then_lane_retaken__late_settle_never_frees_the_new_request(pair) -> None:
    out = same(
        pair,
        [
            ("reserve", "a", 0, 100, 100),
            ("advance", 61),
            ("sweep",),
            ("reserve", "b", 0, 200, 200),
            ("settle", "a", 70, 0, 100),  # the first answer, late: charged, lane total capped
            ("lane", 0),
            ("settle", "b", 200, 0, 200),
            ("lane", 0),
        ],
    )
    assert isinstance(out[5], tuple) and out[5][:3] == ("lane", 70, 200) and out[5][3].endswith("-b")
    assert out[7] == ("lane", 200, 200, None)  # never beyond the highest voucher


# ─── A fast-path statement that fails midway ─────────────────────────────────


def _failing(module: Any, name: str, target: Any) -> Callable[..., None]:
    real = getattr(module, name)

    def run(cur: Any, conn: Any, stmt: Any, params: dict[str, Any], keys: Any = None) -> None:
        if stmt is target:
            raise OSError("the disk failed midway")
        real(cur, conn, stmt, params, keys)

    return run


@pytest.mark.parametrize(
    ("module", "name", "target", "step"),
    [
        (lanes_sqlite, "run", lanes_sqlite._TAKE, "reserve"),  # after the hold row and the funds
        (sqlite_holds, "_run", sqlite_holds._INSERT_USAGE, "settle"),  # after the charge's journal
        (lanes_sqlite, "run", lanes_sqlite._CHARGE_AND_FREE, "settle"),  # the very last statement
    ],
    ids=["take-lane", "usage-row", "lane-charge"],
)
def test_fast_statement_fails_midway__transaction_leaves_nothing__retry_matches_general(
    pair, monkeypatch: pytest.MonkeyPatch, module: Any, name: str, target: Any, step: str
) -> None:
    fast, slow, clock = pair
    tag = f"{next(_scripts)}-m"
    scripts = [Script(ledger, clock, tag) for ledger in (fast, slow)]
    ops: dict[str, Op] = {"reserve": ("reserve", "a", 0, 110, 100), "settle": ("settle", "a", 60, 0, 110)}
    for script in scripts:  # a lane used once: the fast path takes it from now on
        assert script.do(("reserve", "w", 0, 10, 10)) == ("held", 10, "active")
        assert script.do(("settle", "w", 10, 0, 10)) == ("settled", 10, "settled")
    if step == "settle":
        assert [script.do(ops["reserve"]) for script in scripts] == [("held", 100, "active")] * 2
    before = state(fast)
    with monkeypatch.context() as patch:
        patch.setattr(module, name, _failing(module, name, target))
        assert scripts[0].do(ops[step]) == "OSError"
    assert state(fast) == before  # nothing of it stayed
    assert scripts[0].do(ops[step]) == scripts[1].do(ops[step])
    _same_rows(fast, slow)


# ─── Group commits with one signed write that raises ─────────────────────────


def test_group_commit__one_signed_write_raises__others_stand__it_leaves_nothing(
    pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on the gateway's ledger thread: a pinned connection, a group, a savepoint a write.
    In one group: holds on three accounts' lanes, a replayed voucher (refused by the fast
    path's fallback), a hold whose lane write fails midway, a settle whose fast CHECK fails
    (the balance emptied: the general path retries in the same group) and a plain settle."""
    fast, slow, clock = pair
    tags = [f"{next(_scripts)}-g" for _ in range(3)]
    out: list[list[object]] = []
    for ledger in (fast, slow):
        a, b, c = (Script(ledger, clock, tag) for tag in tags)
        a.do(("reserve", "x", 0, 300, 300))
        b.do(("reserve", "u", 1, 10, 10))  # lane 1 used once: the fast path takes it from now on
        b.do(("settle", "u", 10, 1, 10))
        c.do(("reserve", "x", 0, 900, 900))
        c.do(("exit", FUNDS))
        fail = ledger is fast
        answers: list[object] = []
        with ledger.pinned_connection(), ledger.group():
            answers.append(a.do(("settle", "x", 200, 0, 300)))
            answers.append(b.do(("reserve", "y", 0, 500, 500)))
            answers.append(a.do(("reserve", "z", 0, 300, 100)))  # a's voucher replayed
            if fail:
                with monkeypatch.context() as patch:
                    patch.setattr(lanes_sqlite, "run", _failing(lanes_sqlite, "run", lanes_sqlite._TAKE))
                    answers.append(b.do(("reserve", "w", 1, 410, 400)))
            else:
                answers.append("OSError")
            answers.append(c.do(("settle", "x", 700, 0, 900)))  # the fast CHECK fails: general retries
            answers.append(b.do(("reserve", "v", 1, 410, 400)))  # lane 1 after the failed write: free
            answers.append(b.do(("settle", "y", 500, 0, 500)))
        answers.append([debt.outstanding for debt in ledger.debts(c.account)])
        out.append(answers)
    assert out[0] == out[1]
    assert out[0][2] == "VoucherUsed" and out[0][3] == "OSError"
    assert out[0][4] == ("settled", 700, "settled") and out[0][5] == ("held", 400, "active")
    assert out[0][7] == [700]  # the emptied balance's charge is a debt, as on the general path
    _same_rows(fast, slow)
