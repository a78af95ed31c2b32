"""The agent's persisted state, in the ledger's database (migration 0004): users'
contacts, linked accounts, rules, signed transactions, redemptions and the outbox.

Each method is one database transaction, and every redemption transition is a
conditional UPDATE on the status it leaves, so a stale or restarted process can never
apply a step twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError

from promptex.agent.schema import agent_accounts, agent_outbox, agent_redemptions, agent_rules, agent_txs, agent_users
from promptex.chain.sender import SignedTx
from promptex.chain.txlog import DROPPED, REVERTED, SENT, SUCCEEDED, SignedTxStore, StoredTx
from promptex.ledger.journal import insert_ignore
from promptex.ledger.metadata import REASON
from promptex.sealing.envelope import Sealed

# Redemption statuses (see promptex.agent.machine for the transitions).
PLANNED, SELLING, ESCROWED, PURCHASED, RECEIPTED, RELEASING, RELEASED = (
    "planned", "selling", "escrowed", "purchased", "receipted", "releasing", "released",
)  # fmt: skip
FAILED, REJECTED, ABANDONED, REFUNDED = "failed", "rejected", "abandoned", "refunded"
OPEN_STATUSES = (PLANNED, SELLING, ESCROWED, PURCHASED, RECEIPTED, RELEASING)
# Outbox statuses.
PENDING, SENT_MAIL, UNSENT = "pending", "sent", "unsent"

__all__ = ["DROPPED", "REVERTED", "SENT", "SUCCEEDED", "AgentStore", "LinkedAccount", "Redemption", "Rule"]


@dataclass(frozen=True)
class LinkedAccount:
    id: int
    user: str
    provider: str
    account_id: str
    account_salt: bytes
    account_ref: bytes
    billing_url: str
    sealed: Sealed
    balance_usd_micro: int | None


@dataclass(frozen=True)
class Rule:
    id: int
    user: str
    provider: str
    token: str
    below_usd_micro: int
    add_usd_micro: int
    max_tokens_in: int
    enabled: bool
    last_outcome: str | None


@dataclass(frozen=True)
class Redemption:
    id: int
    user: str
    account_id: int
    provider: str
    token: str
    usd_micro: int
    max_tokens_in: int
    rule_id: int | None
    status: str
    redeem_tx_id: int | None
    release_tx_id: int | None
    chain_redemption_id: int | None
    tokens_in: int | None
    deadline: int | None
    billing_attempts: int
    next_attempt_at: int
    billing_ref: bytes | None
    receipt_usd_micro: int | None
    receipt_signature: bytes | None
    error: str | None
    created_at: int
    updated_at: int
    request_id: str | None = None  # `promptex redeem --request-id`
    swap_deadline: int | None = None  # the redeem's, as signed (None: not signed yet, or before 0020)
    billing_key: str | None = None  # the purchase's idempotency key (None: not escrowed, or before 0021)


@dataclass(frozen=True)
class Notification:
    id: int
    user: str
    kind: str
    subject: str
    body: str
    status: str
    attempts: int
    error: str | None = None  # why the last delivery failed


def _b(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value.removeprefix("0x"))


def _h(value: bytes) -> str:
    return "0x" + value.hex()


def _account(row: Any) -> LinkedAccount:
    m = row._mapping
    sealed = Sealed(
        bytes(m["secret_ciphertext"]), bytes(m["secret_nonce"]), bytes(m["wrapped_key"]), bytes(m["wrap_nonce"]),
        m["key_id"],
    )  # fmt: skip
    balance = m["balance_usd_micro"]
    return LinkedAccount(
        m["id"], m["user_address"], m["provider"], m["account_id"], _b(m["account_salt"]) or b"",
        _b(m["account_ref"]) or b"", m["billing_url"], sealed, None if balance is None else int(balance),
    )  # fmt: skip


def _rule(row: Any) -> Rule:
    m = row._mapping
    return Rule(
        m["id"], m["user_address"], m["provider"], m["token"], int(m["below_usd_micro"]), int(m["add_usd_micro"]),
        int(m["max_tokens_in"]), bool(m["enabled"]), m["last_outcome"],
    )  # fmt: skip


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _redemption(row: Any) -> Redemption:
    m = row._mapping
    return Redemption(
        m["id"], m["user_address"], m["account_id"], m["provider"], m["token"], int(m["usd_micro"]),
        int(m["max_tokens_in"]), m["rule_id"], m["status"], m["redeem_tx_id"], m["release_tx_id"],
        m["chain_redemption_id"], _int(m["tokens_in"]), m["deadline"], m["billing_attempts"], m["next_attempt_at"],
        _b(m["billing_ref"]), _int(m["receipt_usd_micro"]), _b(m["receipt_signature"]), m["error"],
        m["created_at"], m["updated_at"], m["request_id"], m["swap_deadline"], m["billing_key"],
    )  # fmt: skip


class StaleTransition(RuntimeError):
    """The redemption was no longer in the status a step expected (another pass moved it)."""


class RequestIdTaken(ValueError):
    """The user's request id names a redemption with other terms (another need)."""

    def __init__(self, redemption: Redemption) -> None:
        self.redemption = redemption
        super().__init__(f"request id {redemption.request_id!r} is redemption {redemption.id}, with other terms")


def _retried(taken: Redemption, account: LinkedAccount, token: str, usd_micro: int, max_tokens_in: int) -> Redemption:
    """The redemption a request id already names, asked for again: itself with the same
    terms, else RequestIdTaken."""
    if (taken.provider, taken.token, taken.usd_micro, taken.max_tokens_in) != (
        account.provider, token, usd_micro, max_tokens_in,
    ):  # fmt: skip
        raise RequestIdTaken(taken)
    return taken


class StillOpen(ValueError):
    """The user already has a redemption open for that provider (one at a time)."""

    def __init__(self, redemption: Redemption) -> None:
        self.redemption = redemption
        super().__init__(f"redemption {redemption.id} for {redemption.provider} is still open ({redemption.status})")


class AgentStore(SignedTxStore):
    txs_table = agent_txs

    # ─── Users and linked accounts ───────────────────────────────────────────

    def set_email(self, user: str, email: str | None, now: int) -> None:
        with self._tx() as conn:
            if insert_ignore(conn, agent_users, {"address": user, "email": email, "created_at": now}) is None:
                conn.execute(update(agent_users).where(agent_users.c.address == user).values(email=email))

    def email(self, user: str) -> str | None:
        with self._tx() as conn:
            return conn.execute(select(agent_users.c.email).where(agent_users.c.address == user)).scalar()

    def link_account(
        self, user: str, provider: str, account_id: str, salt: bytes, ref: bytes, billing_url: str, sealed: Sealed,
        now: int,
    ) -> int:  # fmt: skip
        """Link (or re-link) the user's account at a provider; one per (user, provider)."""
        values = {
            "user_address": user, "provider": provider, "account_id": account_id, "account_salt": _h(salt),
            "account_ref": _h(ref), "billing_url": billing_url, "secret_ciphertext": sealed.ciphertext,
            "secret_nonce": sealed.nonce, "wrapped_key": sealed.wrapped_key, "wrap_nonce": sealed.wrap_nonce,
            "key_id": sealed.key_id, "created_at": now,
        }  # fmt: skip
        a = agent_accounts.c
        with self._tx() as conn:
            existing = conn.execute(select(a.id).where(a.user_address == user, a.provider == provider)).scalar()
            if existing is None:
                return int(conn.execute(insert(agent_accounts).values(**values).returning(a.id)).scalar_one())
            conn.execute(
                update(agent_accounts).where(a.id == existing).values(**values, balance_usd_micro=None, balance_at=None)
            )
            return int(existing)

    def account(self, account_id: int) -> LinkedAccount:
        with self._tx() as conn:
            return _account(conn.execute(select(agent_accounts).where(agent_accounts.c.id == account_id)).one())

    def linked_accounts(self, user: str) -> list[LinkedAccount]:
        """The user's linked accounts, oldest first."""
        stmt = select(agent_accounts.c.id).where(agent_accounts.c.user_address == user).order_by(agent_accounts.c.id)
        with self._tx() as conn:
            found = [int(row[0]) for row in conn.execute(stmt).all()]
        return [self.account(i) for i in found]

    def account_for(self, user: str, provider: str) -> LinkedAccount | None:
        a = agent_accounts.c
        with self._tx() as conn:
            row = conn.execute(select(agent_accounts).where(a.user_address == user, a.provider == provider)).first()
        return None if row is None else _account(row)

    def set_balance(self, account_id: int, usd_micro: int, now: int) -> None:
        with self._tx() as conn:
            conn.execute(
                update(agent_accounts)
                .where(agent_accounts.c.id == account_id)
                .values(balance_usd_micro=usd_micro, balance_at=now)
            )

    # ─── Rules ───────────────────────────────────────────────────────────────

    def add_rule(
        self, user: str, provider: str, token: str, below: int, add: int, max_tokens_in: int, now: int
    ) -> Rule:
        if min(below, add, max_tokens_in) <= 0:
            raise ValueError("a rule's threshold, amount and maximum input must be positive")
        with self._tx() as conn:
            rule_id: int = conn.execute(
                insert(agent_rules)
                .values(
                    user_address=user,
                    provider=provider,
                    token=token,
                    below_usd_micro=below,
                    add_usd_micro=add,
                    max_tokens_in=max_tokens_in,
                    enabled=1,
                    created_at=now,
                )  # fmt: skip
                .returning(agent_rules.c.id)
            ).scalar_one()
            return _rule(conn.execute(select(agent_rules).where(agent_rules.c.id == rule_id)).one())

    def rules(self, enabled_only: bool = True) -> list[Rule]:
        stmt = select(agent_rules).order_by(agent_rules.c.id)
        if enabled_only:
            stmt = stmt.where(agent_rules.c.enabled == 1)
        with self._tx() as conn:
            return [_rule(r) for r in conn.execute(stmt).all()]

    def set_rule_enabled(self, rule_id: int, user: str, enabled: bool) -> Rule | None:
        """Switch one of `user`'s rules on or off; None if `user` has no such rule. A rule that
        is off is not checked; redemptions it already started run to their end."""
        with self._tx() as conn:
            mine = (agent_rules.c.id == rule_id) & (agent_rules.c.user_address == user)
            if conn.execute(update(agent_rules).where(mine).values(enabled=int(enabled))).rowcount != 1:
                return None
            return _rule(conn.execute(select(agent_rules).where(agent_rules.c.id == rule_id)).one())

    def rule_checked(self, rule_id: int, outcome: str, now: int) -> None:
        with self._tx() as conn:
            conn.execute(
                update(agent_rules)
                .where(agent_rules.c.id == rule_id)
                .values(last_checked_at=now, last_outcome=outcome[:REASON])
            )

    # ─── Redemptions ─────────────────────────────────────────────────────────

    def create(
        self, account: LinkedAccount, token: str, usd_micro: int, max_tokens_in: int, rule_id: int | None, now: int,
        *, request_id: str | None = None,
    ) -> Redemption:  # fmt: skip
        """A planned redemption; refused (StillOpen) while the user has one open for that
        provider. The linked account's row is locked first, so two creates at once (two
        `promptex redeem` runs, a rule's pass) queue on PostgreSQL too (SQLite's writers
        queue on BEGIN IMMEDIATE) and the second sees the first's row. A `request_id` is
        the user's one (`by_request`): one already taken returns that redemption, whatever
        its status (a retry), or RequestIdTaken if its terms differ; so is one another run
        took meanwhile for another provider (another account's row locked: the insert meets
        the unique index)."""
        try:
            return self._create(account, token, usd_micro, max_tokens_in, rule_id, now, request_id)
        except IntegrityError:
            taken = None if request_id is None else self.by_request(account.user, request_id)
            if taken is None:
                raise
            return _retried(taken, account, token, usd_micro, max_tokens_in)

    def _create(
        self, account: LinkedAccount, token: str, usd_micro: int, max_tokens_in: int, rule_id: int | None, now: int,
        request_id: str | None,
    ) -> Redemption:  # fmt: skip
        r = agent_redemptions.c
        with self._tx() as conn:
            conn.execute(select(agent_accounts.c.id).where(agent_accounts.c.id == account.id).with_for_update())
            if request_id is not None:
                found = conn.execute(
                    select(agent_redemptions).where(r.user_address == account.user, r.request_id == request_id)
                ).first()
                if found is not None:
                    return _retried(_redemption(found), account, token, usd_micro, max_tokens_in)
            busy = conn.execute(
                select(agent_redemptions).where(
                    r.user_address == account.user, r.provider == account.provider, r.status.in_(OPEN_STATUSES)
                )
            ).first()
            if busy is not None:
                raise StillOpen(_redemption(busy))
            new_id: int = conn.execute(
                insert(agent_redemptions)
                .values(
                    user_address=account.user,
                    account_id=account.id,
                    provider=account.provider,
                    token=token,
                    usd_micro=usd_micro,
                    max_tokens_in=max_tokens_in,
                    rule_id=rule_id,
                    request_id=request_id,
                    status=PLANNED,
                    billing_attempts=0,
                    next_attempt_at=0,
                    created_at=now,
                    updated_at=now,
                )  # fmt: skip
                .returning(r.id)
            ).scalar_one()
            return _redemption(conn.execute(select(agent_redemptions).where(r.id == new_id)).one())

    def by_request(self, user: str, request_id: str) -> Redemption | None:
        """The user's redemption started with `request_id`, whatever its status."""
        r = agent_redemptions.c
        with self._tx() as conn:
            row = conn.execute(
                select(agent_redemptions).where(r.user_address == user, r.request_id == request_id)
            ).first()
        return None if row is None else _redemption(row)

    def get(self, redemption_id: int) -> Redemption:
        with self._tx() as conn:
            row = conn.execute(select(agent_redemptions).where(agent_redemptions.c.id == redemption_id)).one()
        return _redemption(row)

    def redemptions(self, statuses: Sequence[str] | None = None, user: str | None = None) -> list[Redemption]:
        stmt = select(agent_redemptions).order_by(agent_redemptions.c.id)
        if statuses is not None:
            stmt = stmt.where(agent_redemptions.c.status.in_(tuple(statuses)))
        if user is not None:
            stmt = stmt.where(agent_redemptions.c.user_address == user)
        with self._tx() as conn:
            return [_redemption(r) for r in conn.execute(stmt).all()]

    def _move(
        self, conn: Connection, redemption_id: int, from_: Sequence[str], now: int, read: Redemption | None = None,
        **values: Any,
    ) -> None:  # fmt: skip
        r = agent_redemptions.c
        where = [r.id == redemption_id, r.status.in_(tuple(from_))]
        if read is not None:  # compare-and-set: still the escrow redemption the caller read
            rid = read.chain_redemption_id
            where.append(r.chain_redemption_id.is_(None) if rid is None else r.chain_redemption_id == rid)
        moved = conn.execute(update(agent_redemptions).where(*where).values(updated_at=now, **values)).rowcount
        if moved != 1:
            at = "" if read is None else f" at escrow redemption {read.chain_redemption_id}"
            raise StaleTransition(f"redemption {redemption_id} is no longer {'/'.join(from_)}{at}")

    def move(
        self, redemption_id: int, from_: Sequence[str], to: str, now: int, *, read: Redemption | None = None,
        **values: Any,
    ) -> Redemption:  # fmt: skip
        """One transition, optionally writing a notification in the same transaction
        (`notify=(dedupe_key, kind, subject, body)`). With `read` (the row as the caller
        read it), only while the row still names the same escrow redemption: a process that
        read it escrowed as id 1 and asked the billing API for id 1 must not store that
        receipt on a row another process re-escrowed as id 2 after a reorg (StaleTransition)."""
        notify = values.pop("notify", None)
        if "error" in values and values["error"] is not None:
            values["error"] = str(values["error"])[:REASON]
        with self._tx() as conn:
            self._move(conn, redemption_id, from_, now, read, status=to, **values)
            if notify is not None:
                user: str = conn.execute(
                    select(agent_redemptions.c.user_address).where(agent_redemptions.c.id == redemption_id)
                ).scalar_one()
                self._notify(conn, user, *notify, now=now)
        return self.get(redemption_id)

    def submit(self, redemption_id: int, purpose: str, signed: SignedTx, sender: str, now: int, **values: Any) -> int:
        """Store the signed transaction and move the redemption on (with `values`: the
        redeem's swap deadline): before broadcast. The move comes first: a second process
        advancing the same redemption (two `promptex redeem` runs at once sign the same call
        with the same nonce: the same bytes) gets StaleTransition, not the log's
        duplicate-hash error."""
        from_, to, column = (
            (PLANNED, SELLING, "redeem_tx_id") if purpose == "redeem" else (RECEIPTED, RELEASING, "release_tx_id")
        )
        with self._tx() as conn:
            self._move(conn, redemption_id, (from_,), now, status=to, **values)
            tx_id = self._store_tx(conn, purpose, signed, sender, now)
            conn.execute(
                update(agent_redemptions).where(agent_redemptions.c.id == redemption_id).values({column: tx_id})
            )
        return tx_id

    def redemption_of_redeem(self, tx_id: int) -> Redemption | None:
        """The redemption whose redeem transaction is `tx_id`, if any."""
        with self._tx() as conn:
            row = conn.execute(select(agent_redemptions).where(agent_redemptions.c.redeem_tx_id == tx_id)).first()
        return None if row is None else _redemption(row)

    def redemption_of_release(self, tx_id: int) -> Redemption | None:
        """The redemption whose release transaction is `tx_id`, if any."""
        with self._tx() as conn:
            row = conn.execute(select(agent_redemptions).where(agent_redemptions.c.release_tx_id == tx_id)).first()
        return None if row is None else _redemption(row)

    def release_voided(self, tx: StoredTx, now: int, *, close: bool = False) -> None:
        """The release `tx` (orphaned with its sale, replaced by a no-op) will never land:
        its redemption, released or rejected on it, is receipted again without it, so the
        next pass reads the sale's escrow id anew before signing a release (or rejects).
        `close`: `tx` (another key's, whose nonce this key cannot fill) is closed dropped in
        the same database transaction."""
        r = agent_redemptions.c
        with self._tx() as conn:
            if close:
                t = self.txs_table
                conn.execute(
                    update(t)
                    .where(t.c.id == tx.id, t.c.status != DROPPED)
                    .values(status=DROPPED, block_number=None, block_hash=None, closed_at=now)
                )
            conn.execute(
                update(agent_redemptions)
                .where(r.release_tx_id == tx.id, r.status.in_((RELEASED, REJECTED, RELEASING)))
                .values(status=RECEIPTED, release_tx_id=None, error=None, updated_at=now)
            )

    def nonce_taken_since(self, tx: StoredTx, head: int, head_hash: str | None) -> tuple[int, str | None]:
        """The head at which `tx`'s nonce was first seen taken by a transaction this log
        does not hold, and that block's hash (None: stored before 0023, or not known):
        `head` and `head_hash`, stored, the first time asked."""
        t = agent_txs.c
        with self._tx() as conn:
            first = update(agent_txs).where(t.id == tx.id, t.nonce_taken_head.is_(None))
            conn.execute(first.values(nonce_taken_head=head, nonce_taken_hash=head_hash))
            row = conn.execute(select(t.nonce_taken_head, t.nonce_taken_hash).where(t.id == tx.id)).one()
            return int(row[0]), row[1]

    def nonce_taken_again(self, tx: StoredTx, seen: int, head: int, head_hash: str | None) -> int:
        """The block at which `tx`'s nonce was seen taken (`seen`) is no longer the chain's (a
        reorg replaced it, the nonce taken all the same: maybe by another transaction, later):
        it counts from `head` now; returns the head stored (another process's, if it moved it first)."""
        t = agent_txs.c
        with self._tx() as conn:
            again = update(agent_txs).where(t.id == tx.id, t.nonce_taken_head == seen)
            conn.execute(again.values(nonce_taken_head=head, nonce_taken_hash=head_hash))
            return int(conn.execute(select(t.nonce_taken_head).where(t.id == tx.id)).scalar_one())

    def nonce_free_again(self, tx: StoredTx) -> None:
        """`tx`'s nonce was seen free again (what took it orphaned by a reorg): the head at
        which it was first seen taken is forgotten, so a later taking counts from its own."""
        t = agent_txs.c
        with self._tx() as conn:
            conn.execute(
                update(agent_txs)
                .where(t.id == tx.id, t.nonce_taken_head.is_not(None))
                .values(nonce_taken_head=None, nonce_taken_hash=None)
            )

    def reopen_tx(self, tx: StoredTx, now: int) -> str:
        """A transaction whose receipt a reorg orphaned, unresolved again (the next pass
        re-sends its bytes in nonce order) with the step it decided: a release that
        released (or was rejected on its revert) is releasing again, so the escrow's USDC
        is released on the new branch too, for the credits already bought; a redeem that
        escrowed (nothing bought yet), failed on its revert, or was rejected before any release
        was sent (the billing API's 409 or `_sale_moved` after an earlier reorg moved the
        sale, or a receipt refused) is selling again, its escrow redemption id read anew from
        its next receipt (its purchase key kept: a purchase asked under it may have bought,
        its answer lost; asked again it returns that receipt, or 409 for another id): a
        rejection names the id the user refunds, and a second reorg may move the sale back to
        the id the key bought for (released) or to a third. A redeem orphaned after the purchase
        keeps its step: re-sent before the release (a later nonce), it escrows the same id
        unless another redemption took it meanwhile (the release is refused: rejected under
        the id it escrowed) or it reverts on the new branch (failed, the credits bought:
        `RedemptionMachine._sale_moved`). Returns what it reopened, for the log."""
        r = agent_redemptions.c
        with self._tx() as conn:
            self._reopen_tx(conn, tx.id)
            if tx.purpose == "release":
                moved = conn.execute(
                    update(agent_redemptions)
                    .where(r.release_tx_id == tx.id, r.status.in_((RELEASED, REJECTED)))
                    .values(status=RELEASING, error=None, updated_at=now)
                ).rowcount
                return "its redemption's release" if moved else "it"
            moved = conn.execute(
                update(agent_redemptions)
                .where(
                    r.redeem_tx_id == tx.id,
                    or_(r.status.in_((ESCROWED, FAILED)), and_(r.status == REJECTED, r.release_tx_id.is_(None))),
                )
                .values(
                    status=SELLING,
                    chain_redemption_id=None,
                    tokens_in=None,
                    deadline=None,
                    error=None,
                    updated_at=now,
                )  # fmt: skip
            ).rowcount
            return "its redemption's sale" if moved else "it"

    def resend_tx(self, tx: StoredTx) -> None:
        """A transaction a reorg orphaned, unresolved again (sent again) with no redemption's
        step changed: a failed redemption's redeem past its swap deadline, which can only
        revert again."""
        with self._tx() as conn:
            self._reopen_tx(conn, tx.id)

    def record_attempt(
        self, redemption_id: int, error: str, next_at: int, now: int, escrow_id: int | None = None
    ) -> None:
        """A failed purchase, retried at `next_at`; only while the row is escrowed (as
        `escrow_id`, given: the escrow redemption the purchase was asked for)."""
        r = agent_redemptions.c
        same = r.chain_redemption_id == escrow_id if escrow_id is not None else true()
        with self._tx() as conn:
            conn.execute(
                update(agent_redemptions)
                .where(r.id == redemption_id, r.status == ESCROWED, same)
                .values(
                    billing_attempts=r.billing_attempts + 1,
                    next_attempt_at=next_at,
                    error=error[:REASON],
                    updated_at=now,
                )  # fmt: skip
            )

    # ─── Outbox ──────────────────────────────────────────────────────────────

    def _notify(self, conn: Connection, user: str, key: str, kind: str, subject: str, body: str, *, now: int) -> None:
        insert_ignore(
            conn,
            agent_outbox,
            {
                "dedupe_key": key[:200], "user_address": user, "kind": kind, "subject": subject[:200], "body": body,
                "status": PENDING, "attempts": 0, "created_at": now,
            },
        )  # fmt: skip

    def notify(self, user: str, key: str, kind: str, subject: str, body: str, now: int) -> None:
        with self._tx() as conn:
            self._notify(conn, user, key, kind, subject, body, now=now)

    def notified(self, key: str) -> bool:
        """Whether a notification with this dedupe key was written."""
        with self._tx() as conn:
            found = conn.execute(select(agent_outbox.c.id).where(agent_outbox.c.dedupe_key == key[:200])).first()
        return found is not None

    def notices(self, prefix: str) -> int:
        """How many notifications were written whose dedupe key starts with `prefix`."""
        o = agent_outbox.c
        with self._tx() as conn:
            mine = o.dedupe_key.startswith(prefix, autoescape=True)
            return int(conn.execute(select(func.count()).select_from(agent_outbox).where(mine)).scalar_one())

    def sale_known(self, chain_redemption_id: int) -> bool:
        """Whether one of the agent's redemptions is (or was) escrow redemption `chain_redemption_id`."""
        r = agent_redemptions.c
        with self._tx() as conn:
            return conn.execute(select(r.id).where(r.chain_redemption_id == chain_redemption_id)).first() is not None

    def notifications(self, statuses: Sequence[str] | None = None) -> list[Notification]:
        o = agent_outbox.c
        stmt = select(agent_outbox).order_by(o.id)
        if statuses is not None:
            stmt = stmt.where(o.status.in_(tuple(statuses)))
        with self._tx() as conn:
            return [
                Notification(r.id, r.user_address, r.kind, r.subject, r.body, r.status, r.attempts, r.error)
                for r in conn.execute(stmt).all()
            ]

    def mark_notification(self, notification_id: int, status: str, error: str | None, now: int) -> None:
        o = agent_outbox.c
        with self._tx() as conn:
            conn.execute(
                update(agent_outbox)
                .where(o.id == notification_id)
                .values(
                    status=status,
                    attempts=o.attempts + 1,
                    error=None if error is None else error[:REASON],
                    sent_at=now if status == SENT_MAIL else None,
                )  # fmt: skip
            )
