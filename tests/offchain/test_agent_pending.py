"""A redemption whose transaction is still pending when `promptex redeem` gives up
waiting: the message names the redemption and what to run next, and the same command
run again (or twice at once) finishes that one instead of starting a second sale."""

from __future__ import annotations

import os
import threading

import pytest
from agent_fakes import PAYEE, USER, Crash, crashing_at
from click.testing import CliRunner

from human_units import assert_human
from polling import until
from promptex.agent.machine import CRASH_STEPS
from promptex.agent.service import RedemptionPending
from promptex.agent.store import RELEASED, SELLING, AgentStore, LinkedAccount, StaleTransition, StillOpen
from promptex.chain.sender import SignedTx
from promptex.cli import agent as cli_agent
from promptex.ledger.db import create_ledger_engine
from promptex.protocol.units import USD_MICRO as USD


@pytest.fixture
def world(agent_world):
    return agent_world


def _assert_sold_once(world, usd=20 * USD):
    s = world.chain.s
    assert s.redeems == 1 and s.releases == 1 and len(world.billing.purchases) == 1
    assert s.usdc[PAYEE] == usd


def test_redeem__tx_pending_then_run_again__the_same_redemption_finishes_one_sale(world):
    world.chain.hold = True  # mined only at `mine()`: the agent's wait times out
    with pytest.raises(RedemptionPending) as first:
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    assert (first.value.redemption.id, first.value.redemption.status) == (1, SELLING)
    with pytest.raises(RedemptionPending) as again:  # still not mined: the same one, nothing signed anew
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    assert again.value.redemption.id == 1 and len(world.chain.mempool) == 1
    world.chain.mine()
    world.chain.hold = False
    r = world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    assert (r.id, r.status) == (1, RELEASED)
    assert [x.id for x in world.agent().store.redemptions()] == [1]
    _assert_sold_once(world)


def test_redeem__sale_mined_but_unseen_and_it_fills_the_daily_limit__run_again_is_not_refused(world):
    """The pending sale itself counts against the day's limit once mined: quoting the
    same redemption again would refuse it ("daily limit") though it only needs finishing."""
    world.chain.s.limits[(USER, world.chain.token_address("CLD"))] = 5_000 * 10**18  # one $20 sale fits, two do not
    world.chain.hold = True
    with pytest.raises(RedemptionPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    world.chain.mine()
    world.chain.hold = False
    assert world.agent().redeem(USER, "CLD", 20 * USD, "anthropic").status == RELEASED
    _assert_sold_once(world)


def test_redeem__other_terms_while_one_is_open__refused_naming_the_open_one(world):
    world.chain.hold = True
    with pytest.raises(RedemptionPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    with pytest.raises(StillOpen) as refused:
        world.agent().redeem(USER, "CLD", 30 * USD, "anthropic")
    assert refused.value.redemption.id == 1 and len(world.chain.mempool) == 1


def _cli(world, monkeypatch, usd: str, *extra: str) -> tuple[int, str]:
    monkeypatch.setattr(cli_agent, "make_agent", world.agent)
    args = ["--user", USER, "--token", "CLD", "--usd", usd, "--to", "anthropic", *extra]
    result = CliRunner().invoke(cli_agent.redeem, args)
    assert_human(result.output, "promptex redeem")
    return result.exit_code, result.output


def test_cli_redeem__pending__names_the_redemption_and_the_next_command_then_the_rerun_finishes_it(world, monkeypatch):
    world.chain.hold = True
    code, out = _cli(world, monkeypatch, "20")
    assert code == 1 and out.count("\n") == 1
    assert "redemption 1 ($20.00 of anthropic credits for CLD) is selling, waiting for redeem tx 0x" in out
    assert "to finish it run this same command again with --resume 1 (it sells once" in out
    code, out = _cli(world, monkeypatch, "25")
    assert code == 1 and out.count("\n") == 1
    assert "redemption refused: redemption 1 ($20.00 of anthropic credits for CLD) is still open (selling)" in out
    world.chain.mine()
    world.chain.hold = False
    code, out = _cli(world, monkeypatch, "20")
    assert (code, out) == (0, "redemption 1: released\n")
    _assert_sold_once(world)


def test_cli_redeem__after_a_key_rotation__says_it_waits_for_the_old_keys_transactions(world, monkeypatch):
    code, out = _cli(world, monkeypatch, "20")
    assert code == 0
    world.chain.sender, world.chain.s.nonce = "0x000000000000000000000000000000000000bEEF", 0  # a new key
    code, out = _cli(world, monkeypatch, "10")
    assert code == 1 and out.count("\n") == 1
    assert "redemption 2 ($10.00 of anthropic credits for CLD) is planned, waiting: the log holds 2 transactions" in out
    assert "let that key's agent finish them; to finish it run this same command again with --resume 2" in out


def test_store_create__two_at_once_on_postgresql__the_second_sees_the_first(postgres, world):
    """Two `promptex redeem` runs at once on PostgreSQL (READ COMMITTED): each checked for
    an open redemption before the other's insert committed, and both inserted: two sales
    for one need. The first create is held just before its insert until the second has
    either finished (the race) or waits on a lock (the fix: the account row is locked)."""
    from sqlalchemy import event, text

    db = f"agent_two_creates_{os.getpid()}"
    url = postgres.create_database(db, template="ledger_template")
    engine = create_ledger_engine(url)
    watcher = create_ledger_engine(url)
    try:
        store = AgentStore(engine)
        a = world.account
        linked = store.link_account(
            a.user, a.provider, a.account_id, a.account_salt, a.account_ref, a.billing_url, a.sealed, 0
        )  # fmt: skip
        account = LinkedAccount(
            linked, a.user, a.provider, a.account_id, a.account_salt, a.account_ref, a.billing_url, a.sealed, None
        )  # fmt: skip
        first_at_insert, second_done = threading.Event(), threading.Event()
        held: set[int] = set()

        def hold_first_insert(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
            if statement.lstrip().upper().startswith("INSERT INTO AGENT_REDEMPTIONS") and not held:
                held.add(1)
                first_at_insert.set()
                while not second_done.is_set():  # until the second finished, or waits on a lock
                    with watcher.connect() as w:
                        waiting = w.execute(
                            text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                        ).scalar()
                    if waiting:
                        break
                    second_done.wait(0.05)

        event.listen(engine, "before_cursor_execute", hold_first_insert)
        results: dict[str, object] = {}

        def create(name: str) -> None:
            try:
                results[name] = store.create(account, "CLD", 20 * USD, 10**24, None, 1)
            except StillOpen as exc:
                results[name] = exc
            finally:
                if name == "second":
                    second_done.set()

        first = threading.Thread(target=create, args=("first",))
        first.start()
        assert first_at_insert.wait(30)
        second = threading.Thread(target=create, args=("second",))
        second.start()
        first.join(60)
        second.join(60)
        assert not first.is_alive() and not second.is_alive()
        assert len(store.redemptions()) == 1
        assert isinstance(results["second"], StillOpen) and results["second"].redemption.id == results["first"].id
    finally:
        engine.dispose()
        watcher.dispose()
        postgres.drop_database(db)


def test_redeem__run_again_while_the_agent_moves_it__returns_where_it_is_without_a_traceback(world):
    """`promptex redeem` run again while `promptex agent run` advances the same redemption:
    the agent's pass buys first, the command's own step then finds the status moved (its
    conditional update refused) and reports where the redemption is."""
    world.chain.hold = True
    with pytest.raises(RedemptionPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    world.chain.mine()
    world.chain.hold = False
    rerun = world.agent()
    real = rerun.machine.billing

    class AgentPassFirst:
        def balance(self, account):
            return real.balance(account)

        def add_credits(self, account, usd_micro, key, *, redemption_id, sale):
            world.agent().run_once(check_rules=False)  # the agent's pass, meanwhile: bought and released
            return real.add_credits(account, usd_micro, key, redemption_id=redemption_id, sale=sale)

    rerun.machine.billing = AgentPassFirst()
    r = rerun.redeem(USER, "CLD", 20 * USD, "anthropic")
    assert (r.id, r.status) == (1, RELEASED)
    _assert_sold_once(world)


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_redeem__killed_at_every_step_then_the_same_command_again__sold_bought_released_once(world, monkeypatch, step):
    """kill -9 of `promptex redeem --request-id` at each step, then the same command again
    (not the agent's pass): it resumes the one redemption and ends it once. Killed at
    "released" (ended, its outcome never printed) the request id finds it: nothing sold again."""
    with crashing_at(monkeypatch, step), pytest.raises(Crash):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic", request_id="topup-7")
    r = world.agent().redeem(USER, "CLD", 20 * USD, "anthropic", request_id="topup-7")
    assert (r.id, r.status) == (1, RELEASED) and [x.id for x in world.agent().store.redemptions()] == [1]
    _assert_sold_once(world)


def test_redeem_request_id__ended__a_retry_sells_nothing_a_new_id_sells_again_other_terms_refused(world, monkeypatch):
    """Without a request id a run after the redemption ended is a new need (as before); with
    one, the retry prints the ended one, a new id is a new need, and the id is the user's
    own (another user's same id is theirs)."""
    agent = world.agent()
    assert agent.redeem(USER, "CLD", 20 * USD, "anthropic", request_id="a").status == RELEASED
    code, out = _cli(world, monkeypatch, "20", "--request-id", "a")
    assert (code, out) == (0, "redemption 1: released\n")
    _assert_sold_once(world)
    code, out = _cli(world, monkeypatch, "25", "--request-id", "a")
    assert code == 1 and "redemption refused: request id 'a' is redemption 1 ($20.00 of anthropic" in out
    assert "a new need takes a new request id" in out and len(agent.store.redemptions()) == 1
    assert agent.redeem(USER, "CLD", 20 * USD, "anthropic", request_id="b").id == 2  # a new need
    assert agent.redeem(USER, "CLD", 20 * USD, "anthropic").id == 3  # no id: as before, a new sale
    assert world.chain.s.redeems == 3 and len(world.billing.purchases) == 3


def test_cli_redeem_request_id__pending__the_same_command_again_finishes_it_and_again_prints_it(world, monkeypatch):
    """With a request id the pending line says to run the same command again (the id finds
    the one redemption, open or ended), not --resume; each rerun sells nothing more."""
    world.chain.hold = True
    code, out = _cli(world, monkeypatch, "20", "--request-id", "r-1")
    assert code == 1 and "is selling, waiting for redeem tx 0x" in out
    assert "to finish it run this same command again (it sells once" in out and "--resume" not in out
    world.chain.mine()
    world.chain.hold = False
    for _ in range(2):
        assert _cli(world, monkeypatch, "20", "--request-id", "r-1") == (0, "redemption 1: released\n")
    _assert_sold_once(world)


def test_redeem_request_id__another_open_redemption__refused_not_taken_over(world):
    """An open redemption started without the id (or by a rule) is another need: the run
    with a request id is refused (one at a time), it does not advance that one as its own."""
    world.chain.hold = True
    with pytest.raises(RedemptionPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    with pytest.raises(StillOpen) as refused:
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic", request_id="c")
    assert refused.value.redemption.id == 1 and world.agent().store.by_request(USER, "c") is None


def test_store_create__the_same_request_id_twice__the_first_redemption_not_a_second(world):
    """Two runs with one request id at once: the second create (queued on the account's row)
    finds the first's redemption by its id, not a unique-index error, even once it ended."""
    store = world.agent().store
    account = store.account_for(USER, "anthropic")
    first = store.create(account, "CLD", 7 * USD, 10**24, None, 0, request_id="x")
    store.move(first.id, ("planned",), "failed", 1, error="refused")
    assert store.create(account, "CLD", 7 * USD, 10**24, None, 2, request_id="x").id == first.id
    assert [r.id for r in store.redemptions()] == [first.id]


def test_rule__the_command_creates_one_between_the_rules_check_and_its_create__skipped_not_a_failed_pass(world):
    """`promptex redeem` creates the user's redemption while the agent's rule check is
    between its "one in flight?" read and its create: the rule's create is refused
    (StillOpen), which aborted the whole pass (nothing advanced, the outbox not sent);
    now the rule is skipped as "in flight" and the pass goes on."""
    world.agent().add_rule(USER, "anthropic", "CLD", 20 * USD, 20 * USD, 10_000 * 10**18)
    agent = world.agent()
    real = agent.billing

    class CommandMeanwhile:
        def balance(self, account):  # read between the rule's in-flight check and its create
            store = world.agent().store
            store.create(store.account_for(USER, "anthropic"), "CLD", 7 * USD, 10**24, None, 0)
            return real.balance(account)

    agent.billing = CommandMeanwhile()
    report = agent.run_once(check_rules=True)
    assert report.fired == [] and "in flight" in next(iter(report.skipped.values()))
    assert report.advanced == {1: RELEASED} and world.chain.s.redeems == 1


def test_store_submit__the_same_step_by_two_processes__the_second_is_stale_not_a_duplicate_hash_error(world):
    """Two `promptex redeem` runs at once, both at the planned step, sign the same call
    with the same nonce: the same bytes. The second's store must see the redemption moved
    (StaleTransition: it reports where the redemption is), not fail on the log's unique
    hash with a traceback (seen on anvil: test_agent_anvil's two commands at once, 1 in 9)."""
    store = world.agent().store
    r = store.create(store.account_for(USER, "anthropic"), "CLD", 7 * USD, 10**24, None, 0)
    signed, sender = SignedTx("0x" + "ab" * 32, "0x02aa", 5), "0x" + "11" * 20
    store.submit(r.id, "redeem", signed, sender, 1)
    with pytest.raises(StaleTransition):
        store.submit(r.id, "redeem", signed, sender, 2)
    assert store.get(r.id).status == SELLING and [t.tx_hash for t in store.open_txs()] == [signed.tx_hash]


def test_cli_redeem__rejected__says_which_escrow_redemption_holds_the_usdc_and_how_to_refund_it(world, monkeypatch):
    """rbreak (session 11): a run that ended rejected (or abandoned) printed its status and
    reason alone: which escrow redemption holds the user's USDC, until when, and the refund
    command went only to the outbox, which nobody reads where SMTP is not set (the local
    market's default): the sale was sold, never released, and the command did not say where
    the money is. Now it says so (a date, dollars, the command)."""
    world.billing.forge = True
    code, out = _cli(world, monkeypatch, "20")
    r = world.agent().store.get(1)
    assert code == 1 and r.status == "rejected" and out.startswith("redemption 1: rejected (")
    assert f"escrow redemption {r.chain_redemption_id} holds $20.00 of USDC for {USER}" in out
    assert f"`promptex wallet refund --redemption {r.chain_redemption_id}`" in out
    assert str(r.deadline) not in out and "(its deadline)" in out


def test_cli_redeem__its_purchase_to_be_retried__not_finished_exit_1_then_the_rerun_finishes_it(world, monkeypatch):
    """rbreak (session 11): a run whose purchase failed (the billing API down) printed
    "redemption 1: escrowed (…)" and exited 0, as a finished one: a script took the user's
    tokens sold and no credits bought for done. Now it says the redemption is not finished
    and what finishes it, exit 1; the same command again finishes it."""
    world.billing.fail_status, world.billing.fail_times = 503, 1
    code, out = _cli(world, monkeypatch, "20")
    assert code == 1 and out.count("\n") == 1
    named = "redemption 1 ($20.00 of anthropic credits for CLD)"
    assert f"{named} is escrowed, not finished (billing API answered 503" in out
    assert "run this same command again with --resume 1" in out
    world.chain.time += 5  # the purchase's retry is due
    assert _cli(world, monkeypatch, "20", "--resume", "1") == (0, "redemption 1: released\n")
    _assert_sold_once(world)


def test_store_create__one_request_id_for_two_providers_at_once_on_postgresql__refused_by_name(postgres, world):
    """rbreak (session 11): two `promptex redeem` runs at once with one request id for two
    providers lock two linked accounts' rows, so neither waits for the other; the later
    insert met the (user, request id) unique index: a duplicate-key database error, not
    RequestIdTaken naming the redemption that holds the id. The first create is held just
    before its insert until the second has committed."""
    from sqlalchemy import event

    from promptex.agent.store import RequestIdTaken

    db = f"agent_request_id_race_{os.getpid()}"
    url = postgres.create_database(db, template="ledger_template")
    engine = create_ledger_engine(url)
    try:
        store = AgentStore(engine)
        a = world.account
        accounts = {}
        for provider in ("anthropic", "openai"):
            linked = store.link_account(
                a.user, provider, a.account_id, a.account_salt, a.account_ref, a.billing_url, a.sealed, 0
            )  # fmt: skip
            accounts[provider] = LinkedAccount(
                linked, a.user, provider, a.account_id, a.account_salt, a.account_ref, a.billing_url, a.sealed, None
            )  # fmt: skip
        second_done = threading.Event()
        held: set[int] = set()

        def hold_first_insert(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
            if statement.lstrip().upper().startswith("INSERT INTO AGENT_REDEMPTIONS") and not held:
                held.add(1)
                assert second_done.wait(30)

        event.listen(engine, "before_cursor_execute", hold_first_insert)
        results: dict[str, object] = {}

        def create(name: str, provider: str, token: str) -> None:
            try:
                results[name] = store.create(accounts[provider], token, 20 * USD, 10**24, None, 1, request_id="r1")
            except Exception as exc:  # noqa: BLE001 (what the run would have shown)
                results[name] = exc
            finally:
                if name == "second":
                    second_done.set()

        first = threading.Thread(target=create, args=("first", "anthropic", "CLD"))
        first.start()
        until(lambda: held, "the first create held at its insert")
        create("second", "openai", "GPT")
        first.join(60)
        assert not first.is_alive()
        (only,) = store.redemptions()
        assert results["second"] == only and only.provider == "openai"
        assert isinstance(results["first"], RequestIdTaken) and results["first"].redemption == only
    finally:
        engine.dispose()
        postgres.drop_database(db)


def test_redeem__release_sent_by_another_run_while_this_one_signs__where_it_is_not_an_error(world, monkeypatch):
    """CI (session 14, anvil): two `promptex redeem` runs at once both read the redemption
    receipted; one stored and sent the release while the other signed its own, whose gas
    estimate (against the pending block) reverted "redemption: not open". The second run
    failed naming the first's release as one "the node did not take". It now answers where
    the redemption is, as when the store refuses its move (StaleTransition)."""
    with crashing_at(monkeypatch, "receipted"), pytest.raises(Crash):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    real_sign, raced = world.chain.sign, {}

    def sign_after_the_other_run(call, nonce):
        if call.function == "release" and not raced:
            raced["first"] = None  # the other run (below) signs with the real one
            raced["first"] = world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
        return real_sign(call, nonce)

    monkeypatch.setattr(world.chain, "sign", sign_after_the_other_run)
    r = world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    assert raced["first"].status == RELEASED and (r.id, r.status) == (1, RELEASED)
    _assert_sold_once(world)
