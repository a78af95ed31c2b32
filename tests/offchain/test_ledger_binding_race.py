"""A wallet's binding and a deposit to it, at once on PostgreSQL (READ COMMITTED): the
deposit must reach the bound account whichever commits first (`wallets._lock_address`)."""

from __future__ import annotations

import threading

from eth_account import Account
from ledger_helpers import event_id
from sqlalchemy import text

from polling import until
from promptex.ledger import Ledger
from promptex.ledger import wallets as _wallets
from promptex.ledger.binding import sign
from promptex.ledger.wallets import ADDRESS_LOCKS
from promptex.protocol.units import USD_MICRO as USDC


def _waiting(ledger: Ledger) -> list[str]:
    """The kinds of lock some transaction waits for (the address's advisory lock now; on the
    code before it, the unclaimed account's row the binding had inserted)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT locktype, classid FROM pg_locks WHERE NOT granted")).all()
    return [f"{kind}{' (address)' if space == ADDRESS_LOCKS else ''}" for kind, space in rows]


def test_deposit_indexed_while_its_wallet_is_being_bound__credited_to_the_bound_account(
    two: tuple[Ledger, Ledger],
) -> None:
    """Found by the signed-mode kill run on PostgreSQL: the indexer credited a deposit while
    the buyer's binding was under way; the deposit read the wallet as unbound and went to
    the address's unclaimed account after the binding had moved what that held (nothing
    yet) — 100 USDC stranded there, the bound account at zero, every request a 402."""
    binder, indexer = two
    account = binder.create_account().id
    wallet = Account.create()
    message = binder.issue_binding_challenge(account, wallet.address)
    signature = sign(message, wallet.key)
    credited = threading.Thread(target=indexer.credit_deposit, args=(event_id(), wallet.address, "USDC", 5 * USDC))
    with binder.engine.begin() as conn:  # the binding, not committed yet
        _wallets.bind(conn, message, signature, now=binder.clock(), chain_id=binder.chain_id, system=binder._system)
        credited.start()
        until(lambda: not credited.is_alive() or _waiting(indexer), "the deposit done or waiting", 30)
    credited.join(30)
    assert not credited.is_alive()
    assert binder.balance(account, "USDC").posted == 5 * USDC
