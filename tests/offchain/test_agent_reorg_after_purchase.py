"""A redeem a reorg orphans after its credits were bought keeps its step
(`AgentStore.reopen_tx`) and is re-sent in nonce order before its release. On the new
branch it may escrow the same id (released again, bought once), revert (the user revoked
first: nothing sold, the credits bought) or escrow another id (another redeem came first:
the receipt names the old one). Each ends named, with no second purchase, never a pass
that raises for good."""

from __future__ import annotations

import copy

import pytest
from agent_fakes import PAYEE, TOKENS, USER, Crash, crashing_at

from human_units import assert_human
from promptex.agent.store import FAILED, PURCHASED, REJECTED, RELEASED
from promptex.protocol.redemption import STATUS_OPEN, STATUS_RELEASED
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USD

CLD = TOKENS["CLD"]
OTHER = "0x" + "22" * 20


@pytest.fixture
def world(agent_world):
    return agent_world


def _released_then_reorged(world, monkeypatch=None):
    """Redemption 1 sold (escrow id 1), bought and released (or, given `monkeypatch`,
    stopped by a crash just after the purchase); then a reorg back to before its sale:
    the chain holds neither its redeem nor its release."""
    chain = world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    if monkeypatch is None:
        r = world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
        assert (r.status, r.chain_redemption_id) == (RELEASED, 1)
    else:
        with crashing_at(monkeypatch, "purchased"), pytest.raises(Crash):
            world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
        r = world.agent().store.get(1)
        assert (r.status, r.chain_redemption_id) == (PURCHASED, 1)
    assert len(world.billing.purchases) == 1
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2]
    return r


def _moved_to_2_and_back_to_1(world, monkeypatch=None):  # noqa: ANN001, ANN202
    """`_released_then_reorged` (given `monkeypatch`: stopped just after the purchase), with
    another user's redeem taking escrow id 1 first on the new branch: ours escrows id 2 and
    is rejected naming it; then a second reorg drops the other redeem and two passes run.
    Returns the last agent and the redemption as it ends."""
    chain = world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    _released_then_reorged(world, monkeypatch)
    chain.s.redeems += 1  # another user's redeem, earlier on the new branch, took id 1
    chain.s.records[1] = {
        "user": OTHER, "payee": PAYEE, "usdc": 5 * USD, "deadline": chain.time + 3_600, "status": STATUS_OPEN,
        "hash": b"\x22" * 32,
    }  # fmt: skip
    world.agent().run_once(check_rules=False)
    assert (world.agent().store.get(1).status, world.agent().store.get(1).chain_redemption_id) == (REJECTED, 2)
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2] + 3  # the other redeem gone
    agent = world.agent()
    agent.run_once(check_rules=False)
    agent.run_once(check_rules=False)
    return agent, agent.store.get(1)


AT = pytest.mark.parametrize("at", ["released", "purchased"])


def test_reorg__redeem_orphaned_after_the_purchase__re_sent_same_id_released_again_bought_once(world):
    r = _released_then_reorged(world)
    agent = world.agent()
    agent.run_once(check_rules=False)
    after = agent.store.get(r.id)
    assert (after.status, after.chain_redemption_id) == (RELEASED, 1)
    s = world.chain.s
    assert s.redeems == 1 and s.releases == 1 and s.usdc[PAYEE] == 20 * USD
    assert len(world.billing.purchases) == 1


@AT
def test_reorg__redeem_orphaned_after_the_purchase_reverts_on_the_new_branch__failed_named_not_stalled(
    world, monkeypatch, at
):
    """The user's revoke lands before the re-sent redeem: it reverts, nothing is sold and
    escrow id 1 does not exist. The agent raised "escrow redemption 1 does not exist" on
    every pass (no other redemption advanced, no notification went out); now the
    redemption fails naming what happened, and the next pass runs."""
    r = _released_then_reorged(world, monkeypatch if at == "purchased" else None)
    world.chain.s.grants[USER] = ("0x" + "0" * 40, 0, 0, 2)  # revoked first on the new branch
    agent = world.agent()
    agent.run_once(check_rules=False)
    after = agent.store.get(r.id)
    assert after.status == FAILED and after.chain_redemption_id is None
    assert "reorg" in (after.error or "") and "$20.00 of credits were bought" in (after.error or "")
    assert world.chain.s.redeems == 0 and world.chain.s.tokens[(USER, CLD)] == 100_000 * TOKEN
    assert len(world.billing.purchases) == 1  # not bought again
    note = [n for n in agent.store.notifications() if n.kind == "failed"]
    assert len(note) == 1 and "nothing was sold" in note[0].subject
    assert_human(note[0].subject + note[0].body, "the reorg notice")
    assert agent.run_once(check_rules=False).advanced == {}  # the next pass runs


@AT
def test_reorg__redeem_orphaned_after_the_purchase_escrows_another_id__rejected_naming_that_id(world, monkeypatch, at):
    """Another user's redeem comes first on the new branch and takes escrow id 1; ours is
    escrowed as id 2. The receipt names id 1, so the escrow refuses the release. The agent
    rejected it naming id 1 (another user's: the user told to refund it could not, and the
    USDC under id 2 was in nobody's books); now it records id 2 and names it."""
    r = _released_then_reorged(world, monkeypatch if at == "purchased" else None)
    chain = world.chain
    chain.s.redeems += 1  # another user's redeem, earlier on the new branch, took id 1
    chain.s.records[1] = {
        "user": OTHER, "payee": PAYEE, "usdc": 5 * USD, "deadline": chain.time + 3_600, "status": STATUS_OPEN,
        "hash": b"\x22" * 32,
    }  # fmt: skip
    agent = world.agent()
    agent.run_once(check_rules=False)
    after = agent.store.get(r.id)
    assert (after.status, after.chain_redemption_id) == (REJECTED, 2)
    assert after.deadline == chain.s.records[2]["deadline"] and chain.s.records[2]["user"] == USER
    assert len(world.billing.purchases) == 1 and chain.s.releases == 0
    note = [n for n in agent.store.notifications() if n.kind == "rejected"]
    assert len(note) == 1 and "refund redemption 2 " in note[0].body
    assert "(its deadline)" in note[0].body and str(after.deadline) not in note[0].body  # a date, not unix time
    assert "`promptex wallet refund --redemption 2`" in note[0].body
    assert_human(note[0].subject + note[0].body, "the reorg notice")


def test_reorg__another_users_redemption_takes_our_escrow_id__it_buys_its_own_credits_not_our_receipt(
    world, monkeypatch
):
    """s9-agent item 3: the billing purchase's idempotency key was (chain, escrow, escrow
    redemption id). A reorg undid redemption 1's sale (escrow id 1, bought, released) and
    another user's redemption, sold first on the new branch, took id 1: its purchase
    under the same key got redemption 1's receipt back (the first user's account), was
    rejected, and its user left to refund. The key now names the redeem transaction too
    (stored with the step that escrowed it), so it buys its own credits and is released."""
    from agent_world import ANTHROPIC  # noqa: PLC0415

    _released_then_reorged(world)
    user2, account2, credential2 = "0x" + "33" * 20, "acct_user_2", "sk-billing-user-2"
    world.billing.credentials[account2] = credential2
    chain = world.chain
    chain.user_setup(user2, "CLD", 100_000 * TOKEN, limit=20_000 * TOKEN, slippage=200)
    linked = world.agent().link_account(user2, "anthropic", account2, credential2)
    chain.s.linked[(linked.user, ANTHROPIC)] = linked.account_ref
    agent = world.agent()
    # The reorg landed just after this run re-checked its receipts: redemption 2 is signed at
    # redemption 1's nonce, before anything re-sends redemption 1's redeem.
    monkeypatch.setattr(agent.machine, "recheck_orphaned_txs", lambda: None)
    r2 = agent.redeem(linked.user, "CLD", 20 * USD, "anthropic")  # signed at redemption 1's nonce
    assert (r2.id, r2.chain_redemption_id, r2.status, r2.error) == (2, 1, RELEASED, None)
    assert world.billing.balances[account2] == 20 * USD and len(world.billing.purchases) == 2


def test_billing_key__a_redemption_escrowed_before_keys_named_the_redeem__keeps_the_id_alone_bought_once(
    world, monkeypatch
):
    """A redemption escrowed before migration 0021 stored no key, and may have bought under
    the id alone (the old key): after the upgrade it is asked again under that key, not a
    new one that would buy a second time."""
    from sqlalchemy import update  # noqa: PLC0415

    from promptex.agent.machine import idempotency_key  # noqa: PLC0415
    from promptex.agent.schema import agent_redemptions  # noqa: PLC0415

    with crashing_at(monkeypatch, "billing_answered"), pytest.raises(Crash):  # bought, the answer not stored
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    agent = world.agent()
    r = agent.store.get(1)
    assert r.billing_key is not None and r.billing_key.endswith(agent.store.tx(r.redeem_tx_id or 0).tx_hash)
    legacy = idempotency_key(world.chain.chain_id, world.chain.escrow_address, 1)
    world.billing.purchases = {legacy: world.billing.purchases[r.billing_key]}  # as the old code bought it
    with world.ledger.engine.begin() as conn:
        conn.execute(update(agent_redemptions).where(agent_redemptions.c.id == 1).values(billing_key=None))
    assert agent.redeem(USER, "CLD", 20 * USD, "anthropic").status == RELEASED
    assert list(world.billing.purchases) == [legacy] and world.chain.s.usdc[PAYEE] == 20 * USD


def _escrowed_then_reorged_to_another_id(world, monkeypatch, *, bought: bool):
    """Redemption 1 sold (escrow id 1) and its purchase asked: bought with the answer lost
    (the agent killed as the answer came: `bought`), or refused before anything was
    bought. Then a reorg back to before the sale, where another user's redeem takes escrow
    id 1 first: the re-sent redeem escrows id 2."""
    chain = world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    if bought:
        with crashing_at(monkeypatch, "billing_answered"), pytest.raises(Crash):
            world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    else:
        world.billing.fail_status, world.billing.fail_times = 503, 1
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")  # escrowed, its purchase to be retried
    r = world.agent().store.get(1)
    assert (r.status, r.chain_redemption_id) == ("escrowed", 1)
    assert len(world.billing.purchases) == int(bought)
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2]
    chain.s.redeems += 1  # another user's redeem, earlier on the new branch, took id 1
    chain.s.records[1] = {
        "user": OTHER, "payee": PAYEE, "usdc": 5 * USD, "deadline": chain.time + 3_600, "status": STATUS_OPEN,
        "hash": b"\x22" * 32,
    }  # fmt: skip
    return r


def test_reorg__sale_orphaned_after_a_purchase_whose_answer_was_lost__escrows_another_id__never_bought_twice(
    world, monkeypatch
):
    """The purchase for escrow id 1 was made, its answer lost (the agent killed, or a
    timeout); a reorg then orphaned the sale (still escrowed: nothing recorded as bought)
    and the re-sent redeem escrowed id 2. The key was made anew for id 2, so the billing
    API bought a second time: $40 of credits for one $20 sale (two top-ups for one
    redemption). The key stays the one first asked under: the billing API refuses it for
    id 2 (it bought under it for id 1), and the redemption is rejected at once, naming
    both ids, the user told to refund id 2 (as when the purchase was recorded)."""
    _escrowed_then_reorged_to_another_id(world, monkeypatch, bought=True)
    agent = world.agent()
    agent.run_once(check_rules=False)
    after = agent.store.get(1)
    assert len(world.billing.purchases) == 1 and world.billing.balances["acct_user_1"] == 25 * USD
    assert (after.status, after.chain_redemption_id) == (REJECTED, 2)
    assert world.chain.s.records[2]["user"] == USER and world.chain.s.releases == 0
    note = [n for n in agent.store.notifications() if n.kind == "rejected"]
    assert len(note) == 1 and "`promptex wallet refund --redemption 2`" in note[0].body
    assert "escrow redemption 1" in note[0].body
    assert_human(note[0].subject + note[0].body, "the reorg notice")
    assert agent.run_once(check_rules=False).advanced == {}  # the next pass runs


def test_reorg__sale_orphaned_before_anything_was_bought__escrows_another_id__bought_once_released(world, monkeypatch):
    """The same reorg when the billing API had bought nothing (it failed): the purchase is
    made once, for id 2, under the key first asked under, and id 2 is released."""
    _escrowed_then_reorged_to_another_id(world, monkeypatch, bought=False)
    world.chain.time += 5  # the purchase's retry is due
    agent = world.agent()
    agent.run_once(check_rules=False)
    after = agent.store.get(1)
    assert (after.status, after.chain_redemption_id) == (RELEASED, 2)
    assert len(world.billing.purchases) == 1 and world.chain.s.releases == 1
    assert world.chain.s.usdc[PAYEE] == 20 * USD


def test_cli_rerun__sale_orphaned_while_escrowed__read_again_before_buying_not_bought_for_another_users_id(
    world, monkeypatch
):
    """rbreak (session 11): `promptex redeem` run again (the same command, its purchase
    failed the first time) after a reorg undid its sale, no `promptex agent run` pass in
    between: the run re-checked no receipt, took the stale escrow id 1 (another user's on
    the new branch) for its own, bought credits for it and was rejected naming id 1 (not
    the user's to refund), while its re-sent redeem escrowed the user's USDC as id 2, which
    no redemption named. The run now re-checks its receipts first, as a pass does: the sale
    is read again (id 2), bought once for it and released."""
    _escrowed_then_reorged_to_another_id(world, monkeypatch, bought=False)
    world.chain.time += 5  # the purchase's retry is due
    after = world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    assert (after.status, after.chain_redemption_id) == (RELEASED, 2)
    assert len(world.billing.purchases) == 1 and world.chain.s.releases == 1
    assert world.chain.s.usdc[PAYEE] == 20 * USD and world.chain.s.records[1]["user"] == OTHER


def _moved_sale_refused_once__retried_and_bought_once(world, monkeypatch, status: int, billing=None) -> None:  # noqa: ANN001
    """A reorg moved the sale to id 2 (nothing bought for id 1); the purchase's retry is
    refused once with `status` (the agent's billing adapter `billing`, if given): still
    escrowed, nothing bought. A minute later it is retried: bought once, for id 2."""
    _escrowed_then_reorged_to_another_id(world, monkeypatch, bought=False)
    world.chain.time += 5  # the purchase's retry is due
    world.billing.fail_status, world.billing.fail_times = status, 1
    agent = world.agent()
    if billing is not None:
        agent.machine.billing = billing
    agent.run_once(check_rules=False)
    assert agent.store.get(1).status == "escrowed" and world.billing.purchases == {}
    world.chain.time += 60
    agent.run_once(check_rules=False)
    after = agent.store.get(1)
    assert (after.status, after.chain_redemption_id) == (RELEASED, 2) and len(world.billing.purchases) == 1


def test_reorg__sale_moved_to_another_id__a_refusal_other_than_the_keys_conflict__retried_not_rejected(
    world, monkeypatch
):
    """Only the billing API's 409 (the key already bought another purchase) tells that it
    bought under the key for the old id; another refusal (401: a credential being
    rotated) under the moved key is retried as ever, and the purchase made once later."""
    _moved_sale_refused_once__retried_and_bought_once(world, monkeypatch, 401)


def test_reorg_twice__sale_moved_back_to_the_id_it_bought_for__released_not_left_under_an_id_no_row_names(
    world, monkeypatch
):
    """abreak: id 1 -> 2 -> 1. The purchase for escrow id 1 bought, its answer lost; a reorg
    moved the sale to id 2 and the billing API's 409 rejected it naming id 2. A second reorg
    then drops the other user's redeem: ours, re-sent, escrows id 1 again, the id its
    credits were bought for. The redemption stayed rejected naming id 2 (not the user's:
    the refund it names fails), and the user's USDC sat under id 1, which no row named."""
    chain = world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    _escrowed_then_reorged_to_another_id(world, monkeypatch, bought=True)
    agent = world.agent()
    agent.run_once(check_rules=False)
    assert (agent.store.get(1).status, agent.store.get(1).chain_redemption_id) == (REJECTED, 2)
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2]  # the other redeem gone
    chain.block += 3
    agent = world.agent()
    agent.run_once(check_rules=False)
    agent.run_once(check_rules=False)
    after = agent.store.get(1)
    assert chain.s.records[1]["user"] == USER and 2 not in chain.s.records
    assert after.chain_redemption_id == 1, (after.status, after.chain_redemption_id, after.error)
    assert (after.status, chain.s.releases, len(world.billing.purchases)) == (RELEASED, 1, 1)


def test_reorg_twice__rejected_sale_moved_to_a_third_id__rejected_again_naming_it_the_user_told(world, monkeypatch):
    """abreak: id 1 -> 2 -> 3. After the 409 rejected the sale naming id 2, a second reorg
    gives ids 1 and 2 to other users' redeems: ours escrows id 3. The row kept naming id 2
    (another user's: its refund fails) and id 3 was in no row; now it is rejected again
    naming id 3, and the user gets a second notice with id 3's refund command."""
    chain = world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    _escrowed_then_reorged_to_another_id(world, monkeypatch, bought=True)
    world.agent().run_once(check_rules=False)
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2] + 3
    chain.s.redeems += 2  # two other users' redeems, earlier on this branch, took ids 1 and 2
    for rid in (1, 2):
        chain.s.records[rid] = {
            "user": OTHER, "payee": PAYEE, "usdc": 5 * USD, "deadline": chain.time + 3_600, "status": STATUS_OPEN,
            "hash": bytes([rid]) * 32,
        }  # fmt: skip
    agent = world.agent()
    agent.run_once(check_rules=False)
    after = agent.store.get(1)
    assert chain.s.records[3]["user"] == USER
    assert (after.status, after.chain_redemption_id) == (REJECTED, 3)
    assert len(world.billing.purchases) == 1 and chain.s.releases == 0
    note = [n for n in agent.store.notifications() if n.kind == "rejected"]
    assert len(note) == 2 and "`promptex wallet refund --redemption 3`" in note[1].body


def test_reorg_twice__bought_sale_rejected_at_another_id_moved_back_to_the_receipts_id__released(world, monkeypatch):
    """abreak: id 1 -> 2 -> 1 after the purchase was recorded. Bought for id 1 (the agent
    stopped before the release); a reorg moved the sale to id 2 and it was rejected naming
    id 2 (the receipt names 1). A second reorg drops the other user's redeem: ours escrows
    id 1 again, the id the receipt names. The row stayed rejected naming id 2 (gone: the
    refund it names fails) and the user's USDC sat under id 1, which no row named; now the
    sale is read anew and id 1 released, bought once."""
    chain = world.chain
    agent, after = _moved_to_2_and_back_to_1(world, monkeypatch)
    assert chain.s.records[1]["user"] == USER and 2 not in chain.s.records
    assert (after.status, after.chain_redemption_id) == (RELEASED, 1)
    assert chain.s.releases == 1 and len(world.billing.purchases) == 1 and chain.s.usdc[PAYEE] == 20 * USD


def test_reorg_twice__released_sale_moved_away_and_back__the_row_and_notice_name_the_id_released(world):
    """abreak (s11) item 2: id 1 -> 2 -> 1 after the release. Bought and released at id 1; a
    reorg moved the sale to id 2 (another user's redeem took 1 first): the re-sent release
    reverted and the row was rejected naming 2. A second reorg drops the other user's redeem:
    ours escrows id 1 again and the re-sent release releases it (money right), but the row
    said released at escrow id 2 and the user's receipt notice "Redemption 2"."""
    chain = world.chain
    agent, after = _moved_to_2_and_back_to_1(world)
    assert chain.s.records[1]["user"] == USER and chain.s.records[1]["status"] == STATUS_RELEASED
    assert (after.status, after.chain_redemption_id) == (RELEASED, 1)
    assert after.deadline == chain.s.records[1]["deadline"]
    assert chain.s.releases == 1 and len(world.billing.purchases) == 1 and chain.s.usdc[PAYEE] == 20 * USD
    receipts = [n for n in agent.store.notifications() if n.kind == "receipt"]  # told again after the rejection
    assert len(receipts) == 2 and receipts[1].body.startswith("Redemption 1:"), receipts[-1].body
    assert "nothing to refund" in receipts[1].body
    assert_human(receipts[1].subject + receipts[1].body, "the receipt notice")


def test_stale_process__its_purchase_answers_after_another_re_escrowed_the_sale__not_stored_on_the_new_id(
    world, monkeypatch
):
    """abreak (s11) item 4: `store.move` from escrowed checked the status only. A process read
    the redemption escrowed as id 1 and asked the billing API for id 1; meanwhile another
    (`promptex redeem`, or a pass) read a reorg and re-escrowed the sale as id 2. The first
    stored id 1's receipt on the id-2 row, which was then rejected as "not signed by the
    escrow's billing signer" (the digest named 2). The move is now a compare-and-set on the
    escrow id: refused, the row left escrowed as id 2 for the process that holds it."""
    from sqlalchemy import update  # noqa: PLC0415

    from promptex.agent.schema import agent_redemptions  # noqa: PLC0415

    world.billing.fail_status, world.billing.fail_times = 503, 1
    agent = world.agent()
    agent.redeem(USER, "CLD", 20 * USD, "anthropic")  # escrowed as id 1, its purchase to be retried
    world.chain.time += 5
    real = agent.machine.billing.add_credits

    def answered_after_a_re_escrow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        receipt = real(*args, **kwargs)  # bought for id 1
        with world.ledger.engine.begin() as conn:  # the other process's re-escrow, as id 2
            conn.execute(update(agent_redemptions).where(agent_redemptions.c.id == 1).values(chain_redemption_id=2))
        return receipt

    monkeypatch.setattr(agent.machine.billing, "add_credits", answered_after_a_re_escrow)
    agent.run_once(check_rules=False)
    after = agent.store.get(1)
    assert (after.status, after.chain_redemption_id, after.billing_ref) == ("escrowed", 2, None), after.error


def test_billing_adapter__a_provider_whose_409_means_in_flight__retried_not_taken_for_already_bought(
    world, monkeypatch
):
    """rbreak (s11) item 3: "409 = the key already bought another purchase" is the fake billing
    API's format, and the machine read any 409 so. Stripe's 409 means "a request with this
    key is in flight" (it may yet buy: `promptex redeem` and `promptex agent run` asking at
    once): the sale moved to id 2 and such a 409 rejected it for the user to refund while
    the other request bought. The adapter now maps its provider's answers
    (`HttpBilling.key_conflict`); this one's key conflict is a 400 idempotency_error, so
    its 409 is retried, and the purchase made once later for id 2."""
    from promptex.agent.billing import HttpBilling  # noqa: PLC0415

    class InFlight409Billing(HttpBilling):
        def key_conflict(self, response):  # noqa: ANN001, ANN202
            return response.status_code == 400 and b"idempotency_error" in response.content

    # in flight: a request with the key not yet done
    _moved_sale_refused_once__retried_and_bought_once(world, monkeypatch, 409, InFlight409Billing(timeout=2.0))


def test_reorg_twice__bought_for_the_moved_id_then_moved_back__the_keys_own_ids_conflict_rejects_at_once(
    world, monkeypatch
):
    """abreak (s11) item 1: id 1 -> 2 -> 1 with nothing bought for id 1 (its purchase failed);
    the key, made for id 1, then bought for id 2 (the answer lost); a second reorg moves the
    sale back to id 1. Asked for id 1 the billing API refuses the key (it bought for id 2),
    and as the key was made for this very id the refusal was retried until abandoned near
    the deadline: nothing bought twice, but the user told to refund only then. The key's
    conflict is now read as "already bought" whatever id the key was made for: rejected at
    once, naming id 1 for the refund."""
    chain = world.chain
    fork = copy.deepcopy(chain.s), dict(chain.receipts), chain.block
    _escrowed_then_reorged_to_another_id(world, monkeypatch, bought=False)
    chain.time += 5  # the purchase's retry is due: for id 2, bought, its answer lost
    with crashing_at(monkeypatch, "billing_answered"), pytest.raises(Crash):
        world.agent().run_once(check_rules=False)
    assert (world.agent().store.get(1).chain_redemption_id, len(world.billing.purchases)) == (2, 1)
    chain.s, chain.receipts, chain.block = copy.deepcopy(fork[0]), dict(fork[1]), fork[2] + 3  # the other redeem gone
    agent = world.agent()
    agent.run_once(check_rules=False)
    after = agent.store.get(1)
    assert chain.s.records[1]["user"] == USER
    assert (after.status, after.chain_redemption_id) == (REJECTED, 1), (after.status, after.error)
    assert len(world.billing.purchases) == 1 and chain.s.releases == 0
    note = [n for n in agent.store.notifications() if n.kind == "rejected"]
    assert len(note) == 1 and "`promptex wallet refund --redemption 1`" in note[0].body
    assert_human(note[0].subject + note[0].body, "the reorg notice")
