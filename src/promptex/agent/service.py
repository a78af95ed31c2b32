"""The agent's passes: resolve its in-flight transactions, check the auto-topup rules
when they are due, start manual redemptions, advance every open redemption, and
deliver notifications. One agent process per key (its nonces are sequential)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from promptex.agent.billing import BillingAccount, BillingAdapter, BillingError
from promptex.agent.chain import AgentChain
from promptex.agent.machine import RedemptionMachine, crash_point
from promptex.agent.outbox import SmtpConfig, deliver
from promptex.agent.quote import QuoteRefused, check_redemption
from promptex.agent.store import (
    OPEN_STATUSES,
    RELEASING,
    SELLING,
    AgentStore,
    LinkedAccount,
    Redemption,
    RequestIdTaken,
    Rule,
    StaleTransition,
    StillOpen,
)
from promptex.chain.txlog import TxPending
from promptex.ledger.binding import checksum_address
from promptex.protocol.redemption import account_ref, provider_id
from promptex.protocol.units import DAY, money
from promptex.sealing.envelope import MasterKeys

log = logging.getLogger("promptex.agent")


@dataclass
class PassReport:
    fired: list[int] = field(default_factory=list)  # rule ids
    skipped: dict[int, str] = field(default_factory=dict)  # rule id → why not
    advanced: dict[int, str] = field(default_factory=dict)  # redemption id → status after
    notified: int = 0
    waiting: str | None = None


def link_account(
    store: AgentStore, keys: MasterKeys, user: str, provider: str, account_id: str, credential: str,
    billing_url: str, now: int, *, salt: bytes | None = None,
) -> LinkedAccount:  # fmt: skip
    """Seal the credential and store the (user, provider) link under a fresh salted account
    reference: what `promptex agent link` and the dashboard both do."""
    user = checksum_address(user)
    provider_id(provider)  # a valid name, or ValueError
    if not account_id:
        raise ValueError("an account id is required")
    if not credential:
        raise ValueError("a billing credential is required")
    salt = secrets.token_bytes(16) if salt is None else salt
    sealed = keys.seal(credential.encode())
    linked = store.link_account(
        user, provider.strip().lower(), account_id, salt, account_ref(account_id, salt), billing_url, sealed, now
    )
    return store.account(linked)


class RedemptionPending(TxPending):
    """A redemption waits for a transaction to be mined (its own, or one before it)."""

    def __init__(self, redemption: Redemption, waiting: TxPending) -> None:
        self.redemption, self.waiting = redemption, waiting
        super().__init__(f"redemption {redemption.id} ({redemption.status}) waits for {waiting}")


def _wall_clock() -> int:
    return int(time.time())


class Agent:
    def __init__(
        self,
        engine: Engine,
        chain: AgentChain,
        billing: BillingAdapter,
        keys: MasterKeys,
        *,
        clock: Callable[[], int] | None = None,
        rules_interval: float = 60.0,
        smtp: SmtpConfig | None = None,
        billing_url: str = "http://127.0.0.1:9100",
        **machine_options: int | float,
    ) -> None:
        self.store = AgentStore(engine)
        self.chain, self.billing, self.keys = chain, billing, keys
        self.clock = clock or _wall_clock
        self.rules_interval = rules_interval
        self.smtp = smtp
        self.billing_url = billing_url
        self.machine = RedemptionMachine(self.store, chain, billing, keys, clock=self.clock, **machine_options)  # type: ignore[arg-type]
        self._rules_due = 0.0

    # ─── Users' setup ────────────────────────────────────────────────────────

    def link_account(
        self, user: str, provider: str, account_id: str, credential: str, *, salt: bytes | None = None,
        billing_url: str | None = None, email: str | None = None,
    ) -> LinkedAccount:  # fmt: skip
        """Store a linked account, its scoped billing credential sealed; the user links the
        printed account reference on chain (`RedemptionEscrow.link_account`)."""
        account = link_account(
            self.store, self.keys, user, provider, account_id, credential, billing_url or self.billing_url,
            self.clock(), salt=salt,
        )  # fmt: skip
        if email is not None:
            self.store.set_email(account.user, email, self.clock())
        return account

    def add_rule(self, user: str, provider: str, token: str, below: int, add: int, max_tokens_in: int) -> Rule:
        user = checksum_address(user)
        self.chain.token_address(token.upper())  # a known token, or KeyError
        return self.store.add_rule(
            user, provider.strip().lower(), token.upper(), below, add, max_tokens_in, self.clock()
        )

    # ─── Passes ──────────────────────────────────────────────────────────────

    def run_once(self, *, check_rules: bool | None = None) -> PassReport:
        report = PassReport()
        try:
            self._resolve_txs()
            due = time.monotonic() >= self._rules_due if check_rules is None else check_rules
            if due:
                self._rules_due = time.monotonic() + self.rules_interval
                self.check_rules(report)
            for r in self.store.redemptions(OPEN_STATUSES):
                try:
                    report.advanced[r.id] = self.machine.advance(r).status
                except StaleTransition:  # another process (`promptex redeem`) moved it meanwhile
                    report.advanced[r.id] = self.store.get(r.id).status
        except TxPending as exc:
            report.waiting = str(exc)
            log.info("waiting for %s", exc)
        report.notified = deliver(self.store, self.smtp, self.clock())
        return report

    def _resolve_txs(self) -> None:
        """What every pass, and `promptex redeem`, does before advancing a redemption: the
        old key's transactions waited for, receipts re-checked (a reorg), dropped redeems
        read again, open transactions resolved. Raises TxPending while one is pending."""
        self.machine.wait_for_other_keys()
        self.machine.recheck_orphaned_txs()
        self.machine.recheck_dropped_redeems()
        self.machine.resolve_open_txs()

    def check_rules(self, report: PassReport | None = None) -> PassReport:
        report = report or PassReport()
        for rule in self.store.rules():
            outcome = self._check_rule(rule)
            if outcome.startswith("fired"):
                report.fired.append(rule.id)
            else:
                report.skipped[rule.id] = outcome
            self.store.rule_checked(rule.id, outcome, self.clock())
        return report

    def _check_rule(self, rule: Rule) -> str:
        account = self.store.account_for(rule.user, rule.provider)
        if account is None:
            return f"no linked {rule.provider} account"
        if any(r.provider == rule.provider for r in self.store.redemptions(OPEN_STATUSES, user=rule.user)):
            return "a redemption is already in flight"
        try:
            balance = self.billing.balance(self._billing_account(account))
        except BillingError as exc:
            return f"balance unavailable: {exc}"
        self.store.set_balance(account.id, balance, self.clock())
        if balance >= rule.below_usd_micro:
            return f"balance ${balance / 10**6:,.2f} is not below ${rule.below_usd_micro / 10**6:,.2f}"
        try:
            self.quote(account, rule.token, rule.add_usd_micro, rule.max_tokens_in)
        except QuoteRefused as exc:
            day = self.clock() // DAY
            self.store.notify(
                rule.user, f"rule:{rule.id}:{exc.code}:{day}", "rule_skipped",
                f"Auto-topup of {rule.provider} did not run",
                f"Your rule '{rule.provider} below ${rule.below_usd_micro / 1e6:,.2f} → add "
                f"${rule.add_usd_micro / 1e6:,.2f}, selling at most {money(rule.max_tokens_in, rule.token)}' "
                f"did not fire: {exc}.", self.clock(),
            )  # fmt: skip
            return f"not fired: {exc}"
        try:
            r = self.store.create(account, rule.token, rule.add_usd_micro, rule.max_tokens_in, rule.id, self.clock())
        except StillOpen:  # `promptex redeem` created one since the check above
            return "a redemption is already in flight"
        log.info("rule %d fired: redemption %d (%s, %d USD micro)", rule.id, r.id, rule.provider, r.usd_micro)
        crash_point("planned")
        return f"fired: redemption {r.id}"

    # ─── Manual redemptions ──────────────────────────────────────────────────

    def quote(self, account: LinkedAccount, token: str, usd_micro: int, max_tokens_in: int) -> int:
        """Tokens the redemption would sell now; QuoteRefused says why it cannot go through."""
        q = check_redemption(
            self.chain, account.user, provider_id(account.provider), account.account_ref,
            self.chain.token_address(token), usd_micro, max_tokens_in, symbol=token,
        )  # fmt: skip
        return q.tokens_in

    def redeem(
        self, user: str, token: str, usd_micro: int, provider: str, max_tokens_in: int | None = None,
        *, resume: int | None = None, request_id: str | None = None,
    ) -> Redemption:  # fmt: skip
        """Start a redemption now (checked first) and advance it as far as it goes.

        Idempotent: while the user's redemption for that provider with the same token,
        amount and maximum input is open (an earlier run's, its transaction still pending),
        it is that one that is advanced, not a second sale (and not quoted again: its own
        sale may already count against the daily limit). One with other terms is refused
        (StillOpen). Raises RedemptionPending, naming the redemption, while its transaction
        (or another key's) is not mined yet.

        `resume`: only that redemption (the one RedemptionPending named), never a new sale.
        Once it has ended (`promptex agent run` may finish it meanwhile) it is returned as
        it ended: a retry without `resume` would find nothing open and sell again, and the
        command cannot tell such a retry from a second need.

        `request_id` (the user's own, unique per user) tells a retry from a new need before
        any redemption id was seen (a run killed before it printed one): the user's
        redemption started with it is returned as it ended (released, failed, …), nothing
        sold again, or advanced while open; with other terms it is refused (RequestIdTaken).
        An open redemption of that provider started without it, or with another, is another
        need (StillOpen)."""
        user, token, provider = checksum_address(user), token.upper(), provider.strip().lower()
        account = self.store.account_for(user, provider)
        if account is None:
            raise QuoteRefused("not_linked", f"{user} has no linked {provider} account")
        if max_tokens_in is None:  # the grant's slippage bound is the ceiling
            max_tokens_in = 2**256 - 1
        terms = (token, usd_micro, max_tokens_in)
        if resume is not None:
            r = self._resumed(resume, user, provider, terms)
            if request_id is not None and r.request_id != request_id:
                raise ValueError(f"redemption {resume} was not started with request id {request_id!r}")
        else:
            retried = None if request_id is None else self.store.by_request(user, request_id)
            r = retried or self._open_or_new(account, terms, request_id)
            if (r.provider, r.token, r.usd_micro, r.max_tokens_in) != (provider, *terms):
                raise RequestIdTaken(r) if request_id is not None and r.request_id == request_id else StillOpen(r)
            if request_id is not None and r.request_id != request_id:
                raise StillOpen(r)  # open, started by another request (or by a rule)
        if r.status not in OPEN_STATUSES:
            return r  # resumed, or retried by its request id, after it ended: nothing sold again
        return self._advance_one(r)

    def _open_or_new(self, account: LinkedAccount, terms: tuple[str, int, int], request_id: str | None) -> Redemption:
        """The user's open redemption for the account's provider, or a new one (quoted first)."""
        token, usd_micro, max_tokens_in = terms
        try:
            return next(
                o for o in self.store.redemptions(OPEN_STATUSES, user=account.user) if o.provider == account.provider
            )
        except StopIteration:
            self.quote(account, token, usd_micro, max_tokens_in)
        try:
            r = self.store.create(account, token, usd_micro, max_tokens_in, None, self.clock(), request_id=request_id)
        except StillOpen as exc:  # another run created it meanwhile
            r = exc.redemption
        crash_point("planned")
        return r

    def _resumed(self, redemption_id: int, user: str, provider: str, terms: tuple[str, int, int]) -> Redemption:
        """The user's redemption `redemption_id` for that provider with those terms, or ValueError."""
        found = [o for o in self.store.redemptions(user=user) if o.id == redemption_id and o.provider == provider]
        if not found:
            raise ValueError(f"{user} has no redemption {redemption_id} for {provider}")
        r = found[0]
        if (r.token, r.usd_micro, r.max_tokens_in) != terms:
            raise ValueError(f"redemption {redemption_id} has other terms (token, USD or maximum tokens)")
        return r

    def _advance_one(self, r: Redemption) -> Redemption:
        """Advance `r` as a pass would: its receipts re-checked first (a reorg may have undone
        a sale; a run that advanced on the stale receipt bought credits for an escrow id no
        longer the user's: `test_agent_reorg_after_purchase.py`)."""
        try:
            self._resolve_txs()
            r = self.store.get(r.id)
            return self.machine.advance(r)
        except TxPending as exc:
            raise RedemptionPending(self.store.get(r.id), exc) from exc
        except StaleTransition:  # another process (`promptex agent run`) moved it meanwhile
            return self.store.get(r.id)
        except Exception as exc:
            # Its transaction stored, then the node refused the broadcast (`promptex agent run`,
            # with the same key, signed another redemption's at the same nonce a moment before:
            # "replacement transaction underpriced"), or the node failed. The sale or release
            # is in flight all the same (the next pass resolves it: dropped, it is signed
            # again): said so, naming it, not a traceback the user reads as "nothing happened".
            now = self.store.get(r.id)
            tx_id = {SELLING: now.redeem_tx_id, RELEASING: now.release_tx_id}.get(now.status)
            if tx_id is None:
                raise
            tx = self.store.tx(tx_id)
            log.warning("redemption %d: %s tx %s did not go out (%s)", r.id, tx.purpose, tx.tx_hash, exc, exc_info=True)
            waiting = TxPending(f"{tx.purpose} tx {tx.tx_hash} (nonce {tx.nonce}), which the node did not take ({exc})")
            raise RedemptionPending(now, waiting) from exc

    def _billing_account(self, a: LinkedAccount) -> BillingAccount:
        credential = self.keys.open(a.sealed).decode()
        return BillingAccount(a.provider, a.account_id, a.account_salt, a.account_ref, credential, a.billing_url)


def serve(agent: Agent, poll_seconds: float, stop: threading.Event | None = None) -> None:
    """Run passes until SIGTERM/SIGINT (or `stop`)."""
    import signal

    stop = stop or threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after this pass", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    log.info("agent %s started (poll every %.1f s)", agent.chain.sender, poll_seconds)
    while not stop.is_set():
        try:
            report = agent.run_once()
            if report.fired or report.advanced:
                log.info("pass: rules fired %s, redemptions %s", report.fired, report.advanced)
        except Exception:  # an RPC or database hiccup: the state machine resumes next pass
            log.exception("agent pass failed")
        stop.wait(poll_seconds)
    log.info("agent stopped")
