"""Attacks on how the gateway's ledger writes share transactions (grouped commits): one
failing operation among many in flight must not fail, or half-apply, the others.

Here one payer's balance is emptied by the chain (an instant withdrawal) while its
requests and other buyers' are all in flight at once: its settles cannot take the balance
below zero (the fast path's CHECK refuses, the general path lends the rest as a debt),
and every other buyer's settle, arriving with them (on SQLite, committed in the same
groups: 60 of the 64 writes in 4-5 groups in a run), is applied whole.
"""

from __future__ import annotations

import threading
import time

import httpx
from eth_account import Account
from sqlalchemy import func, select

from promptex.ledger.binding import sign
from promptex.ledger.schema import holds
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import Fake, Harness, event_id

BODY = {"model": "fake-flat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
EACH = 8  # requests in flight per buyer


def _active(gw: Harness) -> int:
    with gw.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(holds.c.status == "active")).scalar_one())


def test_group__one_payer_emptied_by_the_chain_mid_flight__its_charges_become_debt__the_others_settle_whole(
    gw: Harness, fake: Fake
) -> None:
    """On SQLite, where writes are grouped (PostgreSQL's fast path is one statement a write)."""
    gw.add_lot(fake)
    funds = 10 * USDC
    buyers = [gw.buyer(amount=funds) for _ in range(3)]
    victim = gw.ledger.create_account().id
    wallet = Account.create()
    message = gw.ledger.issue_binding_challenge(victim, wallet.address)
    gw.ledger.bind_wallet(message, sign(message, wallet.key))
    gw.ledger.credit_deposit(event_id(), wallet.address, "USDC", funds)
    gw.ledger.set_spend_cap(victim, "USDC", funds)
    victim_key, _ = gw.api_key(victim)
    statuses: list[int] = []
    lock = threading.Lock()

    def send(key: str) -> None:
        answer = httpx.post(
            gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=BODY, timeout=60
        )
        with lock:
            statuses.append(answer.status_code)

    gate = threading.Event()
    fake.config.gate = gate
    keys = [key for _, key in buyers] + [victim_key]
    senders = [threading.Thread(target=send, args=(key,)) for key in keys for _ in range(EACH)]
    try:
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 60
        while _active(gw) < len(senders):
            assert time.monotonic() < deadline, ("the requests never all held", statuses)
            time.sleep(0.02)
        # The victim's whole balance leaves the vault while its requests are in flight.
        gw.ledger.complete_exit(event_id(), wallet.address, "USDC", funds)
    finally:
        gate.set()
        fake.config.gate = None
    for sender in senders:
        sender.join()
    assert statuses == [200] * len(senders)  # every answer was served, so every one is charged
    with gw.ledger.engine.connect() as conn:
        rows = conn.execute(select(holds.c.account_id, holds.c.status, holds.c.charged)).all()
    per_account: dict[int, int] = {}
    for account, status, charged in rows:
        assert status == "settled"
        per_account[account] = per_account.get(account, 0) + int(charged)
    for account, _ in buyers:  # the others: settled whole, beside the victim's failing fast path
        balance = gw.ledger.balance(account, "USDC")
        assert (balance.posted, balance.held) == (funds - per_account[account], 0)
    balance = gw.ledger.balance(victim, "USDC")
    assert (balance.posted, balance.held) == (0, 0)  # never below zero: the charges are its debt
    assert sum(debt.outstanding for debt in gw.ledger.debts(victim, open_only=True)) == per_account[victim] > 0
    assert gw.gateway.threads.grouped > 0  # the attack met grouped commits (f066eec)
    gw.ledger.check()
