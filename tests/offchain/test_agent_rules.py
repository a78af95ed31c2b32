"""Auto-topup rules: fire when the linked balance is low and the market can deliver within
the rule's maximum and the grant; otherwise do not fire and tell the user (once a day
per reason). And the outbox's delivery to a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

from email import message_from_bytes

import pytest
from agent_fakes import TOKENS, USER
from agent_world import ACCOUNT
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from anvil_node import free_port
from human_units import assert_human
from promptex.agent.outbox import SmtpConfig, deliver
from promptex.agent.store import PENDING, RELEASED, SENT_MAIL, UNSENT
from promptex.protocol.units import TOKEN_UNIT as TOKEN
from promptex.protocol.units import USD_MICRO as USD


@pytest.fixture
def world(agent_world):
    return agent_world


def _rule(world, *, below=20, add=20, max_tokens=10_000):
    return world.agent().add_rule(USER, "anthropic", "CLD", below * USD, add * USD, max_tokens * TOKEN)


def test_rule__balance_below__fires_and_the_pass_completes_the_redemption(world):
    rule = _rule(world)
    agent = world.agent()
    report = agent.run_once(check_rules=True)
    assert report.fired == [rule.id] and list(report.advanced.values()) == [RELEASED]
    assert world.billing.balances[ACCOUNT] == 25 * USD
    assert agent.store.redemptions()[0].rule_id == rule.id
    assert agent.store.account_for(USER, "anthropic").balance_usd_micro == 5 * USD


def test_rule__balance_not_below__does_not_fire(world):
    _rule(world, below=5)  # the balance is exactly $5: not below
    report = world.agent().run_once(check_rules=True)
    assert report.fired == [] and "not below" in next(iter(report.skipped.values()))
    assert world.chain.s.redeems == 0


@pytest.mark.parametrize(
    ("setup", "code", "message"),
    [
        (lambda w: None, "above_max", "above the maximum"),  # $20 needs ~4,770 CLD > 4,000
        (lambda w: w.chain.s.limits.__setitem__((USER, TOKENS["CLD"]), 1_000 * TOKEN), "daily_limit", "daily limit"),
        (lambda w: w.chain.s.twaps.__setitem__(TOKENS["CLD"], 5_000 * 10**18), "price", "off its TWAP"),
        (
            lambda w: w.chain.s.grants.__setitem__(USER, (w.chain.grant(USER).payee, 2**40, 20, 1)),
            "slippage",
            "slippage",
        ),
        (lambda w: w.chain.s.grants.__setitem__(USER, (w.chain.grant(USER).payee, 1, 100, 1)), "expired", "expired"),
    ],
    ids=["beyond-max-tokens", "beyond-daily-limit", "spot-off-the-twap", "beyond-slippage", "grant-expired"],
)
def test_rule__market_or_grant_cannot_deliver__not_fired_user_notified_once(world, setup, code, message):
    max_tokens = 4_000 if code == "above_max" else 10_000
    _rule(world, max_tokens=max_tokens)
    setup(world)
    agent = world.agent()
    for _ in range(2):  # checked twice the same day: one notification
        report = agent.run_once(check_rules=True)
        assert report.fired == [] and message in next(iter(report.skipped.values()))
    notes = agent.store.notifications()
    assert [n.kind for n in notes] == ["rule_skipped"] and message in notes[0].body
    assert_human(notes[0].body, "the rule's email")
    assert world.chain.sent == [] and world.billing.purchases == {}


def test_rule__grant_expired__the_email_gives_the_expiry_as_a_date(world):
    _rule(world)
    payee = world.chain.grant(USER).payee
    world.chain.s.grants[USER] = (payee, world.chain.time - 3_600, 100, 1)  # expired an hour ago
    agent = world.agent()
    agent.run_once(check_rules=True)
    (note,) = agent.store.notifications()
    assert "the user's grant expired at 2027-01-15 07:00:00 UTC" in note.body, note.body
    assert str(world.chain.time - 3_600) not in note.body


def test_rule__redemption_in_flight__does_not_fire_again(world):
    _rule(world)
    world.billing.fail_after_apply = 1  # the purchase's answer is lost: it stays escrowed until the retry
    agent = world.agent()
    agent.run_once(check_rules=True)
    report = agent.run_once(check_rules=True)
    assert report.fired == [] and "in flight" in next(iter(report.skipped.values()))
    assert world.chain.s.redeems == 1


def test_rule__bad_values__refused(world):
    with pytest.raises(ValueError):
        _rule(world, add=0)


class Inbox:
    """An aiosmtpd handler that keeps what it receives."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def _login(server, session, envelope, mechanism, auth_data):
    ok = (auth_data.login, auth_data.password) == (b"agent", b"s3cret")
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), authenticator=_login, auth_required=True,
        auth_require_tls=False,
    )  # fmt: skip
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def test_outbox__unconfigured_waits_refused_retried_sent_once_no_email_unsent(world, smtp_server):
    controller, inbox = smtp_server
    store = world.agent().store
    store.notify(USER, "k1", "receipt", "Credits added", "body", 1)
    store.notify(USER, "k1", "receipt", "Credits added", "body", 1)  # the same key: once
    store.notify("0x2222222222222222222222222222222222222222", "k2", "receipt", "x", "y", 1)  # no email
    assert deliver(store, None, 2) == 0 and {n.status for n in store.notifications()} == {PENDING}
    down = SmtpConfig("127.0.0.1", free_port(), starttls=False, timeout=2)
    assert deliver(store, down, 3) == 0
    first = store.notifications()[0]
    assert first.status == PENDING and first.attempts == 1 and "ConnectionRefusedError" in (first.error or "")
    up = SmtpConfig(controller.hostname, controller.port, "agent", "s3cret", starttls=False, timeout=5)
    assert deliver(store, up, 4) == 1
    first, second = store.notifications()
    assert (first.status, second.status) == (SENT_MAIL, UNSENT)
    assert [m["To"] for m in inbox.messages] == ["user@example.com"]
    assert deliver(store, up, 5) == 0  # nothing sent twice


def test_outbox__real_smtp_server__wrong_login_waits_then_delivered_once(world, smtp_server):
    controller, inbox = smtp_server
    store = world.agent().store
    store.notify(USER, "k1", "receipt", "Credits added", "20 USD of anthropic credit", 1)
    config = SmtpConfig(controller.hostname, controller.port, "agent", "wrong", starttls=False, timeout=5)
    assert deliver(store, config, 2) == 0
    [n] = store.notifications()
    assert n.status == PENDING and n.attempts == 1 and "SMTPAuthenticationError" in (n.error or "")
    assert inbox.messages == []
    config = SmtpConfig(controller.hostname, controller.port, "agent", "s3cret", sender="agent@promptex.local",
                        starttls=False, timeout=5)  # fmt: skip
    assert deliver(store, config, 3) == 1
    assert deliver(store, config, 4) == 0  # sent once
    [mail] = inbox.messages
    assert (mail["From"], mail["To"], mail["Subject"]) == ("agent@promptex.local", "user@example.com", "Credits added")
    assert mail.get_payload().strip() == "20 USD of anthropic credit"
    assert store.notifications()[0].status == SENT_MAIL


def test_outbox__unconfigured__said_once_per_change_not_every_pass(world, caplog, monkeypatch):
    from promptex.agent import outbox

    monkeypatch.setattr(outbox._Reported, "waiting", None)  # as in a new agent process
    store = world.agent().store
    store.notify(USER, "q1", "receipt", "Credits added", "body", 1)
    with caplog.at_level("INFO", logger="promptex.agent.outbox"):
        for now in (2, 3, 4):
            deliver(store, None, now)
        store.notify(USER, "q2", "receipt", "Credits added", "body", 5)
        deliver(store, None, 6)
        deliver(store, None, 7)
    said = [r.getMessage() for r in caplog.records if "SMTP not configured" in r.getMessage()]
    assert len(said) == 2 and "1 notifications wait" in said[0] and "2 notifications wait" in said[1]
