"""The redemption state machine against the fake escrow and the fake billing API (real
HTTP): the happy path, a crash at every step, lost and dropped transactions, billing
failures and timeouts retried without buying twice, forged and replayed receipts."""

from __future__ import annotations

import copy
import dataclasses
import time

import httpx
import pytest
from agent_fakes import AGENT, PAYEE, TOKENS, USER, Crash, crashing_at
from agent_world import ACCOUNT, ANTHROPIC, CREDENTIAL, billing_config

from human_units import assert_human
from promptex.agent.billing import BillingReceipt
from promptex.agent.machine import CRASH_STEPS, REORG_WINDOW
from promptex.agent.schema import agent_accounts
from promptex.agent.store import ABANDONED, ESCROWED, FAILED, REFUNDED, REJECTED, RELEASED, SELLING
from promptex.chain.txlog import TxPending
from promptex.protocol.redemption import STATUS_RELEASED, sale_id
from promptex.protocol.units import USD_MICRO as USD

CLD = TOKENS["CLD"]


@pytest.fixture
def world(agent_world):
    return agent_world


def _assert_once(world, usd=20 * USD):
    s = world.chain.s
    assert s.redeems == 1 and s.releases == 1
    assert world.billing.balances[ACCOUNT] == 5 * USD + usd  # credits bought once
    assert len(world.billing.purchases) == 1
    assert s.usdc[PAYEE] == usd and s.usdc.get("0x000000000000000000000000000000000000E5C0") == 0


def test_redeem__happy_path__sold_bought_released_once_and_user_notified(world):
    before = world.chain.s.tokens[(USER, CLD)]
    r = world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    assert r.status == RELEASED and r.chain_redemption_id == 1
    _assert_once(world)
    assert world.chain.s.tokens[(USER, CLD)] == before - r.tokens_in
    notes = world.agent().store.notifications()
    assert [n.kind for n in notes] == ["receipt"] and "$20.00" in notes[0].subject
    assert " CLD for $20.00 of credits" in notes[0].body
    assert_human(notes[0].subject + notes[0].body, "the receipt email")


def test_link_account__credential__sealed_at_rest_and_opens(world):
    with world.ledger.engine.connect() as conn:
        row = conn.execute(agent_accounts.select()).one()
    assert CREDENTIAL.encode() not in bytes(row.secret_ciphertext)
    assert world.keys.open(world.account.sealed).decode() == CREDENTIAL


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_crash__at_every_step__restart_sells_once_buys_once_releases_once(world, monkeypatch, step):
    with crashing_at(monkeypatch, step), pytest.raises(Crash):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    agent = world.agent()
    agent.run_once(check_rules=False)
    assert [r.status for r in agent.store.redemptions()] == [RELEASED]
    _assert_once(world)


def test_redeem_tx__lost_and_its_nonce_taken__signed_again_sold_once(world):
    world.chain.lose = True
    agent = world.agent()
    with pytest.raises(TxPending):
        agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    assert agent.store.redemptions()[0].status == SELLING
    world.chain.lose = False
    world.chain.burn_nonce()  # another transaction of the agent's key took that nonce
    assert world.agent().run_once(check_rules=False).advanced == {}  # not dropped before that is final
    world.chain.mine_blocks(world.agent().machine.reorg_window)
    assert list(world.agent().run_once(check_rules=False).advanced.values()) == [RELEASED]
    _assert_once(world)


def test_redeem_tx__reverts_on_chain__failed_tokens_untouched_user_told(world):
    world.chain.hold = True
    agent = world.agent()
    with pytest.raises(TxPending):
        agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    world.chain.s.grants[USER] = ("0x" + "0" * 40, 0, 0, 2)  # the user revokes before it is mined
    world.chain.mine()
    world.chain.hold = False
    world.agent().run_once(check_rules=False)
    r = agent.store.get(1)
    assert r.status == FAILED and "reverted" in (r.error or "")
    assert world.chain.s.redeems == 0 and world.chain.s.tokens[(USER, CLD)] == 100_000 * 10**18
    assert [n.kind for n in agent.store.notifications()] == ["failed"]


@pytest.mark.parametrize(
    "fault",
    [{"fail_status": 503, "fail_times": 2}, {"fail_after_apply": 1}, {"delay_seconds": 0.6, "delay_times": 1}],
    ids=["5xx-twice", "answer-lost-after-purchase", "timeout"],
)
def test_billing__fails_or_times_out__retried_later_credits_bought_once(world, fault):
    for name, value in fault.items():
        setattr(world.billing, name, value)
    agent = world.agent(timeout=0.3)
    r = agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    assert r.status == ESCROWED and r.billing_attempts == 1 and r.error
    for _ in range(3):
        world.chain.time += 60  # past the backoff
        world.agent(timeout=0.3).run_once(check_rules=False)
    assert agent.store.get(r.id).status == RELEASED
    _assert_once(world)


def test_billing__retry_not_due__not_called_again(world):
    world.billing.fail_status, world.billing.fail_times = 500, 1
    agent = world.agent()
    agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    calls = world.billing.requests
    agent.run_once(check_rules=False)  # the clock did not move: backoff not over
    assert world.billing.requests == calls and agent.store.get(1).status == ESCROWED


def test_fake_billing__request_still_running_from_earlier_config__cannot_touch_the_new_one(agent_billing):
    # The agent tests share one fake billing server: a request a client timed out on
    # must not consume the failure injected for the next test (a flake seen in CI).
    url, app = agent_billing
    old = app.state.config = billing_config()
    old.delay_seconds, old.delay_times = 0.5, 1
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"{url}/v1/accounts/{ACCOUNT}/balance", headers={"authorization": f"Bearer {CREDENTIAL}"},
                  timeout=0.1)  # fmt: skip
    new = app.state.config = billing_config()
    new.fail_status, new.fail_times = 500, 1
    time.sleep(0.8)  # the old request wakes up and finishes
    assert (old.requests, new.requests, new.fail_times) == (1, 0, 1)


def test_receipt__forged_signature__rejected_never_released_user_refunds_after_deadline(world):
    world.billing.forge = True
    agent = world.agent()
    r = agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    assert r.status == REJECTED and "billing signer" in (r.error or "")
    assert world.chain.s.releases == 0
    assert [n.kind for n in agent.store.notifications()] == ["rejected"]
    world.chain.time = r.deadline + 1
    world.chain.refund(r.chain_redemption_id)
    assert world.chain.redemption(r.chain_redemption_id).status == 3


class ReplayBilling:
    """A billing API that answers every purchase with one old receipt."""

    def __init__(self, receipt):
        self.receipt = receipt

    def balance(self, account):
        return 0

    def add_credits(self, account, usd_micro, idempotency_key, *, redemption_id, sale):
        return self.receipt


def test_receipt__replayed_from_another_redemption__rejected(world):
    first = world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    assert first.status == RELEASED
    old = BillingReceipt(
        first.chain_redemption_id, world.agent().machine._sale(first), ANTHROPIC, world.account.account_ref,
        first.receipt_usd_micro, first.billing_ref, first.receipt_signature,
    )  # fmt: skip
    agent = world.agent()
    agent.machine.billing = ReplayBilling(old)
    second = agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    assert second.status == REJECTED and "names redemption 1, not 2" in (second.error or "")
    assert world.chain.s.releases == 1


def test_receipt__below_amount_due__rejected(world):
    agent = world.agent()
    real = agent.machine.billing

    class Short:
        def balance(self, account):
            return 0

        def add_credits(self, account, usd_micro, key, *, redemption_id, sale):
            return dataclasses.replace(
                real.add_credits(account, usd_micro, key, redemption_id=redemption_id, sale=sale), usd_micro=1
            )

    agent.machine.billing = Short()
    r = agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    assert r.status == REJECTED and "below" in (r.error or "") and world.chain.s.releases == 0


def test_receipt__naming_another_sale_under_the_same_id__rejected_never_released(world):
    """A receipt for escrow id 1 that names another sale (a reorg's: another key's, or this
    key's at another nonce) would be refused by the escrow; the agent rejects it before
    sending anything, and asked the billing API for this sale's (its key and redeem's sale_ref)."""
    agent = world.agent()
    real = agent.machine.billing
    asked = []

    class OtherSale:
        def balance(self, account):
            return 0

        def add_credits(self, account, usd_micro, key, *, redemption_id, sale):
            asked.append(sale)
            receipt = real.add_credits(account, usd_micro, key, redemption_id=redemption_id, sale=sale)
            return dataclasses.replace(receipt, sale=b"\x05" * 32)

    agent.machine.billing = OtherSale()
    r = agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    assert asked == [sale_id(AGENT, world.chain.redeem_sale_ref(agent.store.tx(r.redeem_tx_id).raw))]
    assert r.status == REJECTED and "names sale 0x0505" in (r.error or "") and world.chain.s.releases == 0


def test_billing__down_until_the_purchase_margin__abandoned_user_refunds(world):
    world.billing.fail_status, world.billing.fail_times = 503, 10**6
    agent = world.agent()
    r = agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    world.chain.time = r.deadline - 600  # inside the margin: never buy what may be refunded
    agent.run_once(check_rules=False)
    r = agent.store.get(r.id)
    assert r.status == ABANDONED and world.billing.balances[ACCOUNT] == 5 * USD
    notes = [n for n in agent.store.notifications() if n.kind == "abandoned"]
    assert len(notes) == 1 and str(r.deadline) not in notes[0].body  # the deadline as a date, not unix time
    assert "UTC (its deadline)" in notes[0].body and "`promptex wallet refund --redemption 1`" in notes[0].body


def test_refunded_on_chain__while_escrowed__recorded_as_refunded(world):
    world.billing.fail_status, world.billing.fail_times = 503, 1
    agent = world.agent()
    r = agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    world.chain.time = r.deadline + 1
    world.chain.refund(r.chain_redemption_id)
    agent.run_once(check_rules=False)
    assert agent.store.get(r.id).status == REFUNDED and len(world.billing.purchases) == 0


def test_redeem__not_linked_on_chain__refused_before_anything_is_signed(world):
    world.chain.s.linked.clear()
    with pytest.raises(Exception, match="not the one the user linked"):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    assert world.chain.sent == [] and world.agent().store.redemptions() == []


def _redeem_reverted_then_reorged_to_success(world, *, later: int) -> tuple[int, int]:
    """The redeem reverts in block B (the user revoked first) and the agent records it
    failed; then a reorg back to before B: the new branch holds no revoke and re-includes
    the redeem `later` blocks after B (0: a competing block at the same height), where it
    succeeds: the user's tokens are escrowed. Returns (redemption id, B)."""
    chain = world.chain
    chain.hold = True
    agent = world.agent()
    with pytest.raises(TxPending):
        agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    fork = copy.deepcopy(chain.s), dict(chain.receipts)
    chain.s.grants[USER] = ("0x" + "0" * 40, 0, 0, 2)  # revoked before it is mined
    chain.mine()
    chain.hold = False
    agent.run_once(check_rules=False)
    r = agent.store.get(1)
    tx = agent.store.tx(r.redeem_tx_id)
    assert r.status == FAILED and tx.block is not None
    chain.s, chain.receipts = copy.deepcopy(fork[0]), dict(fork[1])  # the reorg
    chain.block = tx.block - 1 + later
    chain.broadcast(tx.raw)  # the network re-includes the orphaned block's transaction
    receipt = chain.receipt(tx.tx_hash)
    assert receipt is not None and (receipt.ok, receipt.block_number) == (True, tx.block + later)
    return r.id, tx.block


def test_reorg__same_height_block_flips_the_redeem_from_reverted_to_escrowed__the_agent_sees_it(world):
    """A receipt at the stored block number is not the stored receipt: the competing block
    at that height holds the redeem succeeded. Trusting the number, the agent kept it failed
    while the escrow held the user's tokens (no credits bought, refundable only after the
    deadline); comparing the outcome too, it resolves the sale again and completes it."""
    rid, _ = _redeem_reverted_then_reorged_to_success(world, later=0)
    agent = world.agent()
    agent.run_once(check_rules=False)
    assert agent.store.get(rid).status == RELEASED
    _assert_once(world)


def test_reorg__while_the_agent_was_down__rechecked_after_restart_past_the_window(world):
    """The agent is down when a reorg one block deep (well within the window) moves its
    reverted redeem to the next block, succeeded; it restarts a window and more later, its
    stored receipt below `head - reorg_window` (and below the canonical nonce). A re-check
    bounded by the head now never reads it again; it re-checks back a window below the
    newest block its log holds, and completes the sale."""
    rid, _ = _redeem_reverted_then_reorged_to_success(world, later=1)
    world.chain.mine_blocks(REORG_WINDOW + 2)
    agent = world.agent()  # restarted
    agent.run_once(check_rules=False)
    assert agent.store.get(rid).status == RELEASED
    _assert_once(world)


def test_reorg__same_height_block_same_outcome_another_redemption_id__the_sale_is_read_again(world):
    """The redeem escrowed (id 1) in block B, billing not yet answered; a reorg's competing
    block at the same height holds another user's redeem first and ours succeeded after it:
    same number, same outcome, but the escrow holds our tokens under id 2. Trusting number
    and outcome, the agent bought credits for id 1 and its release was refused (rejected;
    the user refunds the tokens after the deadline and keeps the credits). Comparing the
    block hash, it reads the sale again and releases id 2."""
    chain = world.chain
    world.billing.fail_status, world.billing.fail_times = 503, 1
    chain.hold = True
    agent = world.agent()
    with pytest.raises(TxPending):
        agent.redeem(USER, "CLD", 20 * USD, "anthropic")
    fork = copy.deepcopy(chain.s), dict(chain.receipts)
    chain.mine()
    chain.hold = False
    agent.run_once(check_rules=False)
    r = agent.store.get(1)
    tx = agent.store.tx(r.redeem_tx_id)
    assert (r.status, r.chain_redemption_id) == (ESCROWED, 1) and tx.block is not None
    old, ours = chain.receipt(tx.tx_hash), chain.s.records[1]
    chain.s, chain.receipts = copy.deepcopy(fork[0]), dict(fork[1])  # the reorg
    chain.s.redeems += 1  # another user's redeem, earlier in the competing block, took id 1
    chain.s.records[1] = dict(ours, user="0x" + "22" * 20, hash=b"\x22" * 32)
    chain.block = tx.block - 1
    chain.broadcast(tx.raw)
    new = chain.receipt(tx.tx_hash)
    assert old is not None and new is not None and (new.ok, new.block_number) == (old.ok, old.block_number)

    chain.time += 10  # billing's retry due
    agent = world.agent()
    agent.run_once(check_rules=False)

    r = agent.store.get(1)
    assert (r.status, r.chain_redemption_id) == (RELEASED, 2)
    assert chain.s.records[2]["status"] == STATUS_RELEASED and chain.s.releases == 1
    assert len(world.billing.purchases) == 1 and world.billing.balances[ACCOUNT] == 25 * USD


def test_rotated_key__old_keys_fresh_txs__the_new_key_sends_nothing_until_they_are_a_window_deep(world):
    """The agent's log is read as the coordinator's (`txlog`): after its key is rotated,
    nothing is sent while the old key's transactions are less than `reorg_window` deep
    (the new key's nonces say nothing of them); then the redemption goes on."""
    chain = world.chain
    assert world.agent().redeem(USER, "CLD", 20 * USD, "anthropic").status == RELEASED
    newest = world.agent().store.newest_block()
    chain.sender, chain.s.nonce = "0x000000000000000000000000000000000000bEEF", 0  # restarted with a new key
    agent, sent = world.agent(), len(chain.sent)
    final = newest + REORG_WINDOW
    with pytest.raises(TxPending, match=f"final at {final}\\): waiting; let that key's agent finish them"):
        agent.redeem(USER, "CLD", 10 * USD, "anthropic")
    assert agent.run_once(check_rules=False).waiting is not None and len(chain.sent) == sent
    chain.mine_blocks(final - chain.head())
    assert agent.run_once(check_rules=False).waiting is None
    assert agent.store.get(2).status == RELEASED and len(chain.sent) > sent
