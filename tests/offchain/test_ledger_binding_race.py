"""A wallet's binding and a deposit to it, at once on PostgreSQL (READ COMMITTED): the
deposit must reach the bound account whichever commits first (`wallets._lock_address`).
Two wallets of one account bound at once: the first committed stays the one debited
(`wallets._bound_after`). One wallet bound to two accounts at once: the second is refused
in words (`WalletAlreadyBound`). One unbound wallet asking for two challenges at once: one
account (`wallets.challenge_wallet`)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from eth_account import Account
from ledger_helpers import event_id
from sqlalchemy import text

from polling import until
from promptex.ledger import Ledger, WalletAlreadyBound
from promptex.ledger import wallets as _wallets
from promptex.ledger.binding import BindingMessage, sign
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


def test_two_wallets_of_one_account_bound_at_once_in_the_same_second__the_first_committed_stays_debited(
    two: tuple[Ledger, Ledger],
) -> None:
    """pgbind s14, the brief's "many binds of one account at once": two gateway processes
    bind two wallets of one account in the same second; the second (the lower address)
    waits for the first's lock on the account, reads its wallet and is bound after it.
    Without the lock (before 7475d91) both read no wallet and took `now`: the lower address
    became `first_bound`, the wallet settlements debit; with the lock gone now, the unique
    (account_id, bound_at) index refuses the second bind instead."""
    binder, other = two
    account = binder.create_account().id
    first, second = (Account.from_key(n.to_bytes(32, "big")) for n in (75, 130))  # 0xFF…, 0x00…
    messages = [binder.issue_binding_challenge(account, wallet.address) for wallet in (first, second)]
    _second_binds_while_the_first_is_uncommitted(
        binder,
        sign(messages[0], first.key),
        messages[0],
        lambda: other.bind_wallet(messages[1], sign(messages[1], second.key)),
    )
    with binder.engine.connect() as conn:
        assert _wallets.bindings(conn)[account] == [first.address, second.address]
        assert _wallets.first_bound(conn, account) == first.address


def test_one_wallet_bound_to_two_accounts_at_once__the_second_refused_in_words_not_a_constraint_error(
    two: tuple[Ledger, Ledger],
) -> None:
    """wbreak s15, the brief's "a wallet bound to two accounts in a race": two processes bind
    one wallet, each to another account, with both challenges signed. The second waits for
    the first's lock on the address and reads its binding: WalletAlreadyBound, one line.
    Without that lock (READ COMMITTED) it read the wallet as unbound, waited on the first's
    row in the primary key and failed with a unique-violation IntegrityError (a 500)."""
    binder, other = two
    wallet = Account.create()
    first, second = binder.create_account().id, binder.create_account().id
    messages = [binder.issue_binding_challenge(account, wallet.address) for account in (first, second)]
    outcome: list[BaseException | int] = []

    def bind_second() -> None:
        try:
            outcome.append(other.bind_wallet(messages[1], sign(messages[1], wallet.key)))
        except BaseException as exc:  # noqa: BLE001 (recorded: the test asserts which)
            outcome.append(exc)

    _second_binds_while_the_first_is_uncommitted(binder, sign(messages[0], wallet.key), messages[0], bind_second)
    (refused,) = outcome
    assert isinstance(refused, WalletAlreadyBound), repr(refused)
    assert "bound to another account" in str(refused) and "\n" not in str(refused)
    assert binder.account_of(wallet.address) == first and binder.wallets(second) == []


def test_one_unbound_wallet_asks_for_two_challenges_at_once__one_account(two: tuple[Ledger, Ledger]) -> None:
    """wbreak s15 (the dashboard's POST /api/keys/challenge from two processes): the second
    asks while the first has created the wallet's account, not committed. It waits for the
    address's lock and then reads the first's account. Without the lock (READ COMMITTED) it
    read no account and created another: two accounts for one wallet, one left empty."""
    first, other = two
    wallet = Account.create().address
    asked: list[BindingMessage] = []
    second = threading.Thread(target=lambda: asked.append(other.challenge_wallet(wallet)))

    def admit_new() -> None:  # inside the first's transaction: its account not created yet
        if not second.is_alive() and not asked:
            second.start()
            until(lambda: asked or _waiting(first), "the second challenge issued or waiting", 30)

    asked.append(first.challenge_wallet(wallet, admit_new=admit_new))
    second.join(30)
    assert not second.is_alive() and len(asked) == 2
    assert asked[0].account == asked[1].account
    with first.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts WHERE kind = 'user'")).scalar_one() == 1


def _second_binds_while_the_first_is_uncommitted(
    binder: Ledger, signature: bytes, message: BindingMessage, bind_second: Callable[[], object]
) -> None:
    """`bind_second` runs in a thread while `binder` holds the first binding (`message`,
    `signature`) in a transaction not yet committed; returns once it has ended."""
    bound = threading.Thread(target=bind_second)
    with binder.engine.begin() as conn:
        _wallets.bind(conn, message, signature, now=binder.clock(), chain_id=binder.chain_id, system=binder._system)
        bound.start()
        until(lambda: not bound.is_alive() or _waiting(binder), "the second binding done or waiting", 30)
    bound.join(30)
    assert not bound.is_alive()
