"""A redemption as a crash-safe state machine, persisted in `agent_redemptions`:

    planned    intent stored (user, account, token, USD, maximum input)
    selling    the `redeem` tx signed, its raw bytes and hash stored   (before broadcast)
    escrowed   redeem mined: the escrow's redemption id, tokens sold, deadline stored
    purchased  the billing API's answer to add_credits(key = the escrow redemption) stored
    receipted  the receipt checked: its fields, and signed by the escrow's billing signer
    releasing  the `release` tx signed and stored                       (before broadcast)
    released   release mined (or the chain shows it released)
  terminal failures, none of which loses anything:
    failed     redeem refused or reverted: tokens untouched
    rejected   a receipt the escrow would refuse (forged, wrong fields): the user refunds
    abandoned  billing never answered before the purchase margin: the user refunds
    refunded   the chain shows the user refunded

Restart rules. A stored tx still "sent" is looked up by hash; not mined and its nonce
free → the SAME bytes are broadcast again; its nonce taken by another tx → it never ran
(redeem: back to planned; release: back to receipted). Nothing new is signed while a tx
is unresolved. A mined tx a reorg orphaned is "sent" again with the step it decided
(released → releasing; escrowed, or failed and re-included, → selling), and re-sent the
same way; a failed redemption's redeem off the chain is never sent again (the user was
told nothing was sold): its nonce goes to a no-op (another key's is waited for, until the
swap deadline it was signed with, stored with it, has passed: then those bytes can only
revert: they are sent again to fill that key's nonce, the redemption staying failed). A
redeem orphaned after the purchase keeps its step; where the escrow then refuses or
lacks the receipt's redemption, the re-sent redeem is read (`_sale_moved`): reverted or
dropped → failed (nothing sold, the credits bought named), another escrow id → rejected
under that id (the user's USDC is there, refundable after its deadline).
add_credits is idempotent by key (the escrow redemption and the redeem tx that escrowed
it, stored with the escrowed step), so calling it again after a crash or a timeout
returns the first receipt and buys nothing. The key stays the one first asked under for
the redemption's life: a reorg that moves a sale escrowed (a purchase asked, its answer
lost) to another escrow id asks under it again, for the new id: bought once, or, refused
its key conflict (the billing API bought under it for the old id: the adapter maps its
provider's answer, `billing.BillingError.key_conflict`), rejected at once for the user to refund.
So a redemption sells once, buys once, releases once.
A receipt names the sale as well as the escrow id (`sale_id`: the agent's key and the
`sale_ref` it passed to `redeem`, fresh for each redeem signed: `new_sale_ref`), so the
escrow never releases with it another sale a reorg put under the same id, whatever bytes
a node still holds, even a sale a reorg gave the same nonce of the same key (the nonce
was the ref before rbreak4 s14: a receipt is public once its release is sent).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from eth_account import Account

from promptex.agent.billing import BillingAccount, BillingAdapter, BillingError, BillingReceipt
from promptex.agent.chain import AgentChain
from promptex.agent.store import (
    ABANDONED,
    ESCROWED,
    FAILED,
    PLANNED,
    PURCHASED,
    RECEIPTED,
    REFUNDED,
    REJECTED,
    RELEASED,
    RELEASING,
    REVERTED,
    SELLING,
    SUCCEEDED,
    AgentStore,
    Redemption,
    StaleTransition,
)
from promptex.chain import txlog
from promptex.chain.sender import Call
from promptex.chain.txlog import DROPPED, NOOP, SENT, StoredTx
from promptex.protocol.redemption import (
    STATUS_OPEN,
    STATUS_REFUNDED,
    STATUS_RELEASED,
    new_sale_ref,
    provider_id,
    receipt_digest,
    sale_id,
    sale_ref,
)
from promptex.protocol.units import money, usd_text, utc_text
from promptex.sealing.envelope import MasterKeys

log = logging.getLogger("promptex.agent")

CRASH_ENV = "PROMPTEX_AGENT_CRASH_AT"  # test hook: SIGKILL this process at the named step
CRASH_STEPS = (
    "planned", "redeem_signed", "redeem_broadcast", "escrowed", "billing_answered", "purchased", "receipted",
    "release_signed", "release_broadcast", "released",
)  # fmt: skip
OPEN_STEPS = (PLANNED, SELLING, ESCROWED, PURCHASED, RECEIPTED, RELEASING)
REORG_WINDOW = 128  # blocks: receipts this recent are checked still canonical each pass


def _refund_command(r: Redemption) -> str:
    rid = r.chain_redemption_id
    return f"`promptex wallet refund --redemption {rid}` (RedemptionEscrow.refund({rid}) from your wallet)"


def crash_point(step: str) -> None:
    """Die here, as kill -9 would, when the test hook names this step."""
    txlog.crash_point(CRASH_ENV, step)


def idempotency_key(chain_id: int, escrow: str, redemption_id: int, redeem_tx: str | None = None) -> str:
    """The billing purchase's key: the escrow redemption, unique across chains and escrows,
    and the redeem transaction that escrowed it (None: a redemption escrowed before keys
    named it, which may have bought under the id alone). The id alone is not one sale: a
    reorg can give it to another redemption, whose purchase would get this one's receipt
    back; the same redeem re-mined under the same id keeps its key (bought once), and a
    redemption keeps the key its sale first escrowed under (see the module's docstring)."""
    key = f"promptex:{chain_id}:{escrow.lower()}:{redemption_id}"
    return key if redeem_tx is None else f"{key}:{redeem_tx.lower()}"


class NonceTakenPending(txlog.TxPending):
    """A redeem's nonce went to a transaction the agent's log does not hold, not yet a
    reorg window deep: the redeem may still sell, so its redemption waits (selling)."""


class RedemptionMachine:
    def __init__(
        self,
        store: AgentStore,
        chain: AgentChain,
        billing: BillingAdapter,
        keys: MasterKeys,
        *,
        clock: Callable[[], int],
        tx_timeout: float = 60.0,
        swap_deadline: int = 300,
        retry_seconds: int = 5,
        retry_max_seconds: int = 300,
        purchase_margin: int = 600,
        reorg_window: int = REORG_WINDOW,
    ) -> None:
        self.store, self.chain, self.billing, self.keys = store, chain, billing, keys
        self.clock = clock
        self.tx_timeout = tx_timeout
        self.swap_deadline = swap_deadline
        self.retry_seconds, self.retry_max_seconds = retry_seconds, retry_max_seconds
        self.purchase_margin = purchase_margin
        self.reorg_window = reorg_window  # blocks back within which a mined transaction is checked still canonical
        # The head at which this process last re-checked its receipts (None: not yet): the
        # next re-check reaches back a window below it, so a reorg between passes is seen.
        self._checked_head: int | None = None

    # ─── Transactions (the coordinator's rules, for the agent's key) ─────────

    def resolve_tx(self, tx: StoredTx) -> str:
        """The final status of a stored transaction, rebroadcasting it if it is not mined
        (a redeem whose nonce went elsewhere: not dropped before `_hold_dropped_redeem` says)."""
        if tx.purpose != "redeem":
            return txlog.resolve_tx(tx, self.chain, self.store.close_tx, self.clock, self.tx_timeout)
        try:
            return txlog.resolve_tx(
                tx, self.chain, self.store.close_tx, self.clock, self.tx_timeout, self._hold_dropped_redeem
            )
        except NonceTakenPending:
            raise
        except txlog.TxPending:
            # Its nonce was free (the bytes sent again, not mined yet): what took it before was
            # orphaned. Should another transaction outside the log take it now (a second cancel),
            # its window counts from then, not from the first one's head (`_hold_dropped_redeem`).
            self.store.nonce_free_again(tx)
            raise

    def _hold_dropped_redeem(self, tx: StoredTx) -> None:
        """A redeem whose nonce went to a transaction the log does not hold (no row of its
        key at its nonce: a wallet's cancel, or a node serving the nonce before the receipt)
        (none with a receipt: a sibling the node refused counts for nothing) is not taken for
        dropped, and its redemption not sold again, until the head at which
        that was first seen (stored, `AgentStore.nonce_taken_since`; forgotten once the nonce
        is seen free again, `resolve_tx`) is `reorg_window`
        blocks deep: before, a reorg may orphan what took the nonce and the redeem land, or
        the lagging node serve its receipt, and a second sale would sell twice for one
        purchase. Raises NonceTakenPending meanwhile (the redemption stays selling). The
        coordinator's rule is unchanged (its `_dropped_landed` reattaches a late settle)."""
        for other in self.store.others_at_nonce(tx):  # one the log holds took it (its receipt seen): dropped
            if other.status in (SUCCEEDED, REVERTED) or self.chain.receipt(other.tx_hash) is not None:
                return
        head = self.chain.head()
        since, seen = self.store.nonce_taken_since(tx, head, self.chain.block_hash(head))
        if seen is not None and self.chain.block_hash(since) != seen:
            # A reorg replaced the block at which the nonce was seen taken, and it is taken on
            # the new branch too (never seen free: no pass between): what took it may be another
            # transaction, later (a cancel swapped for a later one). Counted from now: late, never early.
            since = self.store.nonce_taken_again(tx, since, head, self.chain.block_hash(head))
        if head >= since + self.reorg_window:
            return  # what took it is final: dropped
        until = since + self.reorg_window
        message = (
            f"redeem tx {tx.tx_hash} (nonce {tx.nonce}), whose nonce a transaction the agent did not sign took "
            f"(seen at block {since}): should a reorg undo that, or a lagging node serve the redeem's receipt, it "
            f"sold after all, so it is not taken for dropped (nor the tokens sold again) before block {until}, "
            f"{until - head} blocks from now"
        )
        log.warning("%s", message)
        raise NonceTakenPending(message)

    def recheck_orphaned_txs(self) -> None:
        """A receipt counts only while the canonical chain holds it as stored (the
        coordinator's rule, `Coordinator._recheck_orphaned_txs`, one piece of code:
        `txlog.orphaned_txs`): each transaction mined within `reorg_window` blocks below the
        head this process last checked at (after a restart: below the newest block its log
        holds), or past the key's canonical nonce, whose receipt the chain no longer holds at
        its block with its outcome, is resolved again with the step it decided
        (`AgentStore.reopen_tx`); `resolve_open_txs` then re-sends them in nonce order."""
        head, orphaned = txlog.orphaned_txs(self.store, self.chain, self.reorg_window, self._checked_head)
        resold = {tx.id for tx, _ in orphaned if tx.purpose == "redeem"}
        for tx, receipt in orphaned:
            if receipt is None and self._failed_sale(tx) is not None:
                self._replace(tx)  # the user was told nothing was sold, and may have redeemed again
                continue
            if receipt is None and tx.purpose == "release" and self._sale_orphaned(tx, resold):
                self._void_release(tx, "orphaned too")
                continue
            what = self.store.reopen_tx(tx, self.clock())
            log.warning("%s tx %s (nonce %d) is no longer on chain as stored (a reorg): %s resolved again",
                        tx.purpose, tx.tx_hash, tx.nonce, what)  # fmt: skip
        # A release still open (pending, or lost by the node) when the reorg orphaned its
        # sale names the old id alike: re-sent after the re-sent redeem, it would release
        # whatever sale holds that id now (cbreak3 s13). Unless the new branch mined it.
        for tx in self.store.open_txs(self.chain.sender):
            if tx.purpose != "release" or not self._sale_orphaned(tx, resold):
                continue
            if self.chain.receipt(tx.tx_hash) is None:
                self._void_release(tx, "not mined yet")
        self._checked_head = head

    def _void_release(self, tx: StoredTx, state: str) -> None:
        """The release `tx`, whose sale a reorg orphaned, is never sent again: its nonce gets
        a no-op (once, whoever comes first) and its redemption is receipted again without it
        (`AgentStore.release_voided`), so the next pass reads the sale's escrow id anew
        before it signs a release, or rejects naming the id that holds the user's USDC."""
        noop = self.chain.sign_noop(tx.nonce, tx.tx_hash)
        self.store.replace_tx(tx, noop, self.chain.sender, self.clock())
        self.store.release_voided(tx, self.clock())
        log.warning("release tx %s (nonce %d, %s): the sale it releases was orphaned; its bytes are not sent "
                    "again (the escrow id they name may hold another sale on the new branch): its nonce is "
                    "filled with the no-op %s and the release signed anew once the sale's id is read again",
                    tx.tx_hash, tx.nonce, state, noop.tx_hash)  # fmt: skip

    def _sale_orphaned(self, release: StoredTx, resold: set[int]) -> bool:
        """Whether the redeem of the redemption `release` releases is among those a reorg
        orphaned (`resold`). Then the release's bytes must not be sent again: they name the
        escrow id, and a receipt binds the id, not the sale: on the new branch another sale
        of the same user and account (through another agent key, not behind this key's
        nonces) may hold the id, and the bytes would pay it out while this sale sits open
        under another id that no row names (abreak2 s12). Or its redeem is open again: only
        a reorg reopens a redeem that escrowed (a release is signed after it), and a pass
        killed after it reopened the redeem, before it came to the release, leaves it so
        for the next pass to find the release alone orphaned (cbreak3 s13)."""
        r = self.store.redemption_of_release(release.id)
        if r is None or r.redeem_tx_id is None:
            return False
        return r.redeem_tx_id in resold or self.store.tx(r.redeem_tx_id).status == SENT

    def recheck_dropped_redeems(self) -> None:
        """A redeem closed dropped (its nonce seen taken, no receipt within the grace) is
        taken never to have run, and its redemption is sold again. It may have run after
        all while its nonce is not final: the node served the nonce before the receipt for
        longer than the grace, or what took the nonce (a transaction outside the log, a
        wallet's cancel) was orphaned by a reorg within the window and the bytes landed.
        Then the user sold twice for one purchase, and the first sale's USDC sits in the
        escrow under an id no redemption names (nor `promptex reconcile`). Each pass such
        a redeem is read by receipt; landed with an escrow redemption the agent does not
        know, the user is told (once) what was sold and how to refund it, and it is logged.
        A failed redemption's own redeem (its sale undone by a reorg after the purchase, the
        re-sent bytes then found dropped) that landed is read again instead: the sale went
        through after all, its purchase is reused (same key), and it is released."""
        head = self.chain.head() if self._checked_head is None else self._checked_head
        final = self.store.final_nonce(head - self.reorg_window, self.chain.sender)
        for tx in self.store.dropped_txs("redeem", final, self.chain.sender):
            receipt = self.chain.receipt(tx.tx_hash)
            if receipt is None or not receipt.ok:
                continue
            linked = self.store.redemption_of_redeem(tx.id)
            if linked is not None:  # a failed redemption's (its sale undone, or replaced by a no-op)
                if linked.status == FAILED:  # it sold after all: read again, as `_check_replaced` does
                    what = self.store.reopen_tx(tx, self.clock())
                    log.warning("redeem tx %s (nonce %d), closed dropped, ran after all: %s resolved again",
                                tx.tx_hash, tx.nonce, what)  # fmt: skip
                continue
            event = self.chain.redeemed(tx.tx_hash)
            key = f"stray:{tx.tx_hash}"
            if event is None or self.store.sale_known(event.redemption_id) or self.store.notified(key):
                continue
            state = self.chain.redemption(event.redemption_id)
            rid = event.redemption_id
            log.error("redeem tx %s (nonce %d), closed dropped, ran after all: escrow redemption %d holds %s of %s's "
                      "sale, which no redemption names (its need was sold again); the user is told to refund it",
                      tx.tx_hash, tx.nonce, rid, usd_text(event.usdc), state.user)  # fmt: skip
            self.store.notify(
                state.user, key, "stray_sale", "A sale the agent took for dropped went through: refund available",
                f"Escrow redemption {rid} sold tokens of yours for {usd_text(event.usdc)} of USDC, besides the "
                f"sale that bought your credits (the agent took this one for dropped and sold again). The USDC "
                f"is held for you: after {utc_text(event.deadline)} (its deadline) refund it: "
                f"`promptex wallet refund --redemption {rid}` (RedemptionEscrow.refund({rid}) from your wallet).",
                self.clock(),
            )  # fmt: skip

    def resolve_open_txs(self) -> None:
        for tx in self.store.open_txs(self.chain.sender):
            if self.resolve_tx(tx) == DROPPED and tx.purpose == NOOP:
                self._check_replaced(tx)

    def _failed_sale(self, tx: StoredTx) -> Redemption | None:
        """The failed redemption whose redeem `tx` is (None: another transaction)."""
        r = self.store.redemption_of_redeem(tx.id) if tx.purpose == "redeem" else None
        return r if r is not None and r.status == FAILED else None

    def _replace(self, tx: StoredTx) -> None:
        """A failed redemption's redeem the chain no longer holds (a reorg orphaned its
        revert) is never sent again, as the coordinator never re-sends a failed batch's
        settle: the user was told nothing was sold and may have redeemed again (a rule
        fires again), so its bytes, landing now, would sell twice for one need. Its nonce
        goes to a no-op, stored before it is sent (`resolve_open_txs` sends it in its
        nonce's turn); the redemption stays failed. Should a node include the old bytes
        first, the no-op is found dropped and the sale is read again (`_check_replaced`)."""
        noop = self.chain.sign_noop(tx.nonce, tx.tx_hash)
        stored = self.store.tx(self.store.replace_tx(tx, noop, self.chain.sender, self.clock()))
        log.warning("redeem tx %s (nonce %d) of a failed redemption is no longer on chain (a reorg): never sent "
                    "again, its nonce is filled with the no-op %s", tx.tx_hash, tx.nonce, stored.tx_hash)  # fmt: skip

    def _check_replaced(self, noop: StoredTx) -> None:
        """The no-op lost its nonce: if to the failed redemption's redeem it replaced (a node
        re-included the old bytes), the sale happened after all: read again from its receipt."""
        for old in self.store.dropped_at(noop.nonce, self.chain.sender):
            if self._failed_sale(old) is not None and self.chain.receipt(old.tx_hash) is not None:
                what = self.store.reopen_tx(old, self.clock())
                log.warning("redeem tx %s landed before its no-op: %s resolved again", old.tx_hash, what)

    def wait_for_other_keys(self) -> None:
        """Raises `txlog.OtherKeyPending` while the log holds another key's transactions not
        yet final (the coordinator's rule, `txlog.wait_for_other_keys`): after the agent's
        key is rotated, nothing is sent until the old key's last one is a window deep.
        First, every time, another key's mined transactions are re-checked by receipt
        (`txlog.others_orphaned_txs`, as the coordinator does): the old key's agent may be
        stopped, and a reorg within its window must be seen before the window ends. One
        no longer on chain as stored is reopened as this key's own are and its bytes sent
        again at once (this key's pass re-sends only its own nonces); the wait then holds
        until the chain serves its receipt. Except a failed redemption's redeem, whose
        bytes could still sell (never sent again, `_replace`): this key waits for that
        key's agent to fill its nonce, but only until the redeem's swap deadline, after
        which they can only fail (`_past_swap_deadline`): then its bytes are sent again and
        its redemption stays failed."""
        off: list[str] = []
        for tx, receipt in txlog.others_orphaned_txs(self.store, self.chain, self.reorg_window, self._checked_head):
            if receipt is None and tx.purpose == "release" and self._sale_orphaned(tx, set()):
                self._void_others_release(tx)  # its redeem, earlier in nonce order, was reopened
                continue
            failed = self._failed_sale(tx) if receipt is None else None
            if failed is not None and not self._past_swap_deadline(failed):  # only its key may fill its nonce
                until = "" if failed.swap_deadline is None else f"; it can sell until {utc_text(failed.swap_deadline)}"
                off.append(f"redeem tx {tx.tx_hash} of key {tx.sender} (nonce {tx.nonce}{until})")
                continue
            if failed is not None:  # past its swap deadline: it can only fail again, its redemption stays failed
                self.store.resend_tx(tx)
                log.warning("redeem tx %s (nonce %d) of key %s, of failed redemption %d, is no longer on chain (a "
                            "reorg) and past its swap deadline: sent again to fill that key's nonce (it reverts)",
                            tx.tx_hash, tx.nonce, tx.sender, failed.id)  # fmt: skip
                txlog.send_others(self.chain, tx)
                continue
            what = self.store.reopen_tx(tx, self.clock())
            log.warning("%s tx %s (nonce %d) of key %s is no longer on chain as stored (a reorg): %s resolved again",
                        tx.purpose, tx.tx_hash, tx.nonce, tx.sender, what)  # fmt: skip
            txlog.send_others(self.chain, tx)
        if off:
            message = (
                "failed redemptions' redeems no longer on chain (a reorg), not sent again while they can sell: "
                f"{', '.join(off)}; "
                "only their key can fill their nonces before their swap deadlines: run that key's agent once "
                "(`promptex agent run --once`)"
            )
            log.warning("%s", message)
            raise txlog.OtherKeyPending(message)
        for tx in self.store.others_open(self.chain.sender) or []:  # one still unmined when its sale was orphaned
            if tx.purpose == "release" and self._sale_orphaned(tx, set()) and self.chain.receipt(tx.tx_hash) is None:
                self._void_others_release(tx)
        txlog.wait_for_other_keys(self.store, self.chain, self.reorg_window, "agent", self.clock)

    def _void_others_release(self, tx: StoredTx) -> None:
        """Another key's release whose sale a reorg orphaned (`_sale_orphaned`): never sent
        again, as this key's own (`_void_release`), but this key cannot fill that key's
        nonce with a no-op: it is closed dropped and its redemption receipted again, in one
        database transaction, so this key signs a release anew once the sale's id is read
        again (or rejects naming it). Sent again, its bytes released whatever sale holds the
        old id on the new branch (cbreak3 s13: the same user's sale through another key).
        Its bytes may still sit in a node's pool: the escrow binds a receipt to the id
        (abreak2's item 2, the contract's gap)."""
        self.store.release_voided(tx, self.clock(), close=True)
        log.warning("release tx %s (nonce %d) of key %s: the sale it releases was orphaned; its bytes are not "
                    "sent again (the escrow id they name may hold another sale on the new branch): closed as "
                    "dropped, the release signed anew by this key once the sale's id is read again",
                    tx.tx_hash, tx.nonce, tx.sender)  # fmt: skip

    def _past_swap_deadline(self, r: Redemption) -> bool:
        """The redemption's redeem was signed with a swap deadline the chain has passed: its
        bytes, mined now, revert ("deadline passed") and sell nothing. So another key's
        failed redeem a reorg took off the chain is, past it, as any other transaction of
        that key: sent again (it fills its key's nonce, which that key's later transactions
        wait on, and fails again), not waited for until its key's agent fills the nonce,
        which a lost key never does. Unknown (signed before the deadline was stored):
        False."""
        return r.swap_deadline is not None and self.chain.now() > r.swap_deadline

    def _send(self, r: Redemption, purpose: str, call: Call, nonce: int | None = None, **values: object) -> str:
        try:
            signed = self.chain.sign(call, self.chain.pending_nonce() if nonce is None else nonce)
        except Exception as exc:
            # Another process (the same command run twice at once, or `promptex agent run`)
            # stored and sent this step's transaction after `r` was read: signing estimates
            # gas against the pending block, where that transaction already spent the step
            # ("redemption: not open"). Its row has moved: that is the answer, not an error.
            if self.store.get(r.id).status != r.status:
                raise StaleTransition(f"redemption {r.id}: {purpose} sent by another process meanwhile") from exc
            raise
        tx_id = self.store.submit(r.id, purpose, signed, self.chain.sender, self.clock(), **values)
        log.info("redemption %d: %s sent as %s", r.id, purpose, signed.tx_hash)
        tx = self.store.tx(tx_id)
        return txlog.broadcast_stored(tx, self.chain, self.store.close_tx, self.clock, self.tx_timeout, crash_point)

    # ─── Steps ───────────────────────────────────────────────────────────────

    def advance(self, r: Redemption) -> Redemption:
        """Move one redemption as far as it can go now; returns where it stopped."""
        while r.status in OPEN_STEPS:
            step = getattr(self, f"_{r.status}")
            after: Redemption | None = step(r)
            if after is None:  # waiting (billing retry later)
                return self.store.get(r.id)
            r = after
        return r

    def _planned(self, r: Redemption) -> Redemption:
        account = self.store.account(r.account_id)
        token = self.chain.token_address(r.token)
        # The escrow buys the credits of the token's own provider: never sell a token
        # into a redemption for another provider's account than the one planned.
        if self.chain.token_provider(token) != provider_id(account.provider):
            return self._fail(r, PLANNED, f"{r.token} does not redeem into {account.provider} credits")
        deadline = self.chain.now() + self.swap_deadline
        # The sale's ref is fresh for each redeem signed (receipts name this key and it), not
        # the nonce: a reorg can give the nonce of a sale already bought and released to this
        # redeem, and that sale's receipt (public in its release) would release this one.
        nonce = self.chain.pending_nonce()
        ref = new_sale_ref()
        call = Call("redemption", "redeem", (r.user, token, r.usd_micro, r.max_tokens_in, deadline, ref))
        reason = self.chain.simulate(call)
        if reason is not None:
            return self._fail(r, PLANNED, f"the escrow refuses the redemption: {reason}")
        self._send(r, "redeem", call, nonce, swap_deadline=deadline)
        return self.store.get(r.id)

    def _selling(self, r: Redemption) -> Redemption:
        assert r.redeem_tx_id is not None
        tx = self.store.tx(r.redeem_tx_id)
        status = self.resolve_tx(tx)
        if status == SUCCEEDED:
            event = self.chain.redeemed(tx.tx_hash)
            if event is None:
                raise RuntimeError(f"redeem tx {tx.tx_hash} succeeded without a Redeemed event")
            # The key first asked under, if a reorg undid the sale it was made for: a purchase
            # under it may have bought (its answer lost), and a new key would buy again.
            key = r.billing_key or self._key(event.redemption_id, tx.tx_hash)
            after = self.store.move(
                r.id, (SELLING,), ESCROWED, self.clock(), chain_redemption_id=event.redemption_id,
                tokens_in=event.tokens_in, deadline=event.deadline, billing_key=key,
            )  # fmt: skip
            log.info("redemption %d escrowed as %d: %d %s sold", r.id, event.redemption_id, event.tokens_in, r.token)
            crash_point("escrowed")
            return after
        if status == REVERTED:
            return self._fail(r, SELLING, f"redeem tx {tx.tx_hash} reverted; no tokens were sold")
        return self.store.move(
            r.id, (SELLING,), PLANNED, self.clock(), redeem_tx_id=None, swap_deadline=None
        )  # dropped

    def _escrowed(self, r: Redemption) -> Redemption | None:
        assert r.chain_redemption_id is not None and r.deadline is not None
        closed = self._closed_on_chain(r)
        if closed is not None:
            return closed
        if self.chain.now() >= r.deadline - self.purchase_margin:
            return self.store.move(
                r.id, (ESCROWED,), ABANDONED, self.clock(), read=r,
                error=f"no purchase before the refund deadline ({r.error or 'billing unavailable'})",
                notify=self._notice(r, "abandoned", "Redemption not completed: refund available",
                                    f"The agent could not buy credits for redemption {r.chain_redemption_id}. "
                                    f"After {utc_text(r.deadline)} (its deadline) you can refund its USDC: "
                                    f"{_refund_command(r)}."),
            )  # fmt: skip
        if self.clock() < r.next_attempt_at:
            return None
        account = self._billing_account(r.account_id)
        key = r.billing_key or idempotency_key(self.chain.chain_id, self.chain.escrow_address, r.chain_redemption_id)
        try:
            receipt = self.billing.add_credits(
                account, r.usd_micro, key, redemption_id=r.chain_redemption_id, sale=self._sale(r)
            )
        except BillingError as exc:
            if exc.key_conflict and r.billing_key is not None:  # the adapter's reading of its provider's answer
                # The key bought another purchase: for the sale's old id (a reorg moved it), or,
                # the key made for this id, for an id a reorg had moved the sale to and back.
                asked = self._moved_key(r, r.billing_key)
                bought = (
                    f"under the key first asked for escrow redemption {asked} ({exc}): it bought them for {asked}, "
                    "before a chain reorganisation moved the sale"
                    if asked is not None else
                    f"under its key ({exc}): it bought them under it for another escrow redemption, to which a "
                    "chain reorganisation had moved the sale before moving it back"
                )  # fmt: skip
                return self._reject(
                    r, ESCROWED, f"the billing API refuses to buy credits for escrow redemption "
                    f"{r.chain_redemption_id} {bought}, and they are not bought again", read=r,
                )  # fmt: skip
            delay = min(self.retry_max_seconds, self.retry_seconds * 2 ** min(r.billing_attempts, 16))
            self.store.record_attempt(r.id, str(exc), self.clock() + delay, self.clock(), r.chain_redemption_id)
            log.warning("redemption %d: billing failed (%s); retrying in %d s", r.id, exc, delay)
            return None
        crash_point("billing_answered")
        problem = self._receipt_problem(r, account, receipt)
        if problem is not None:
            return self._reject(r, ESCROWED, problem, read=r)
        # Compare-and-set on the escrow id: another process may have re-escrowed the sale as
        # another id (a reorg) while this one asked for `r`'s (StaleTransition: not stored).
        after = self.store.move(
            r.id, (ESCROWED,), PURCHASED, self.clock(), read=r, billing_ref="0x" + receipt.billing_ref.hex(),
            receipt_usd_micro=receipt.usd_micro, receipt_signature="0x" + receipt.signature.hex(), error=None,
        )  # fmt: skip
        crash_point("purchased")
        return after

    def _key(self, chain_redemption_id: int, redeem_tx: str) -> str:
        return idempotency_key(self.chain.chain_id, self.chain.escrow_address, chain_redemption_id, redeem_tx)

    def _moved_key(self, r: Redemption, key: str) -> int | None:
        """The escrow redemption `key` was made for, where that is not this sale (a reorg
        moved the sale to another id, or its redeem was signed again): None if it is."""
        assert r.redeem_tx_id is not None and r.chain_redemption_id is not None
        if key == self._key(r.chain_redemption_id, self.store.tx(r.redeem_tx_id).tx_hash):
            return None
        return int(key.split(":")[3])

    def _purchased(self, r: Redemption) -> Redemption:
        assert r.receipt_signature is not None
        account = self.store.account(r.account_id)
        digest = self._digest(r, account.account_ref)
        try:
            recovered = Account._recover_hash(digest, signature=r.receipt_signature)
        except Exception:  # malformed signature bytes
            recovered = "0x" + "0" * 40
        if int(recovered, 16) == 0 or not self.chain.is_billing_signer(provider_id(account.provider), recovered):
            return self._reject(r, PURCHASED, "the receipt is not signed by the escrow's billing signer", read=r)
        after = self.store.move(r.id, (PURCHASED,), RECEIPTED, self.clock(), read=r)
        crash_point("receipted")
        return after

    def _receipted(self, r: Redemption) -> Redemption:
        closed = self._closed_on_chain(r)
        if closed is not None:
            return closed
        call = self._release_call(r)
        reason = self.chain.simulate(call)
        if reason is not None:
            return self._sale_moved(r) or self._reject(r, RECEIPTED, f"the escrow refuses the receipt: {reason}")
        self._send(r, "release", call)
        return self.store.get(r.id)

    def _releasing(self, r: Redemption) -> Redemption:
        assert r.release_tx_id is not None
        tx = self.store.tx(r.release_tx_id)
        status = self.resolve_tx(tx)
        if status == SUCCEEDED:
            released = self._sale_released(r)
            if released is r:
                # Still the id its receipt names, unless a reorg moved the sale and a node
                # re-included the old release bytes after another sale took that id (the
                # escrow binds a receipt to the id): the row names where our USDC is.
                moved = self._sale_moved(r)
                if moved is not None:
                    return moved
            return self._released(released, RELEASING)
        closed = self._closed_on_chain(r)
        if closed is not None:
            return closed
        if status == REVERTED:
            return self._sale_moved(r) or self._reject(r, RELEASING, f"release tx {tx.tx_hash} reverted")
        return self.store.move(r.id, (RELEASING,), RECEIPTED, self.clock(), release_tx_id=None)  # dropped

    # ─── Helpers ─────────────────────────────────────────────────────────────

    def _billing_account(self, account_id: int) -> BillingAccount:
        a = self.store.account(account_id)
        credential = self.keys.open(a.sealed).decode()
        return BillingAccount(a.provider, a.account_id, a.account_salt, a.account_ref, credential, a.billing_url)

    def _receipt_problem(self, r: Redemption, account: BillingAccount, receipt: BillingReceipt) -> str | None:
        if receipt.redemption_id != r.chain_redemption_id:
            return f"the receipt names redemption {receipt.redemption_id}, not {r.chain_redemption_id}"
        if receipt.sale != self._sale(r):
            return f"the receipt names sale 0x{receipt.sale.hex()}, not this one (0x{self._sale(r).hex()})"
        if receipt.provider != provider_id(account.provider) or receipt.account_ref != account.account_ref:
            return "the receipt names another provider or account"
        if receipt.usd_micro < r.usd_micro:
            return f"the receipt is for {usd_text(receipt.usd_micro)}, below the {usd_text(r.usd_micro)} due"
        if len(receipt.signature) != 65:
            return "the receipt's signature is not 65 bytes"
        return None

    def _sale(self, r: Redemption) -> bytes:
        """The sale receipts for `r` name (`sale_id`): its redeem's key and the `sale_ref` its
        signed bytes pass (one signed before `new_sale_ref` passed its nonce: read alike)."""
        assert r.redeem_tx_id is not None
        tx = self.store.tx(r.redeem_tx_id)
        ref = self.chain.redeem_sale_ref(tx.raw)
        return sale_id(tx.sender or self.chain.sender, sale_ref(tx.nonce) if ref is None else ref)

    def _digest(self, r: Redemption, account_ref: bytes) -> bytes:
        assert r.chain_redemption_id is not None and r.receipt_usd_micro is not None and r.billing_ref is not None
        return receipt_digest(
            chain_id=self.chain.chain_id, escrow=self.chain.escrow_address, redemption_id=r.chain_redemption_id,
            sale=self._sale(r), provider=provider_id(r.provider), account_ref=account_ref,
            usd_micro=r.receipt_usd_micro, billing_ref=r.billing_ref,
        )  # fmt: skip

    def _release_call(self, r: Redemption) -> Call:
        account = self.store.account(r.account_id)
        return Call(
            "redemption",
            "release",
            (
                r.chain_redemption_id, self._sale(r), provider_id(account.provider), account.account_ref,
                r.receipt_usd_micro, r.billing_ref, r.receipt_signature,
            ),
        )  # fmt: skip

    def _closed_on_chain(self, r: Redemption) -> Redemption | None:
        """Released or refunded on chain (by anyone): record it. After the purchase, first
        whether the sale is still this id's (`_sale_moved`): a record of the same user under
        the id may be another sale's."""
        assert r.chain_redemption_id is not None
        # The sale first, whoever the record under its id is: a reorg may have moved it to
        # another id while a sale of the same user took this one (abreak2 s12).
        moved = self._sale_moved(r)
        if moved is not None:
            return moved
        state = self.chain.redemption(r.chain_redemption_id)
        status = state.status
        if status == STATUS_RELEASED:
            return self._released(r, r.status)
        if status == STATUS_REFUNDED:
            return self.store.move(r.id, (r.status,), REFUNDED, self.clock(), error="the user refunded it")
        if status != STATUS_OPEN:
            raise RuntimeError(f"escrow redemption {r.chain_redemption_id} does not exist")
        return None

    def _sale_moved(self, r: Redemption) -> Redemption | None:
        """Credits bought for escrow redemption N, and then the redeem that escrowed N
        orphaned by a reorg and re-sent with its step kept (`AgentStore.reopen_tx`). On
        the new branch it may revert or lose its nonce (nothing sold: failed, the credits
        bought named; nothing to refund) or escrow another id (another redeem came first:
        the receipt names N, so the escrow never releases it; rejected under the id that
        holds the user's USDC, which the user refunds after its deadline). None: the sale
        is still N's, or nothing was bought yet (a sale orphaned before the purchase is
        read again from the selling step). Called where the escrow refuses or lacks N."""
        if r.redeem_tx_id is None or r.billing_ref is None or r.chain_redemption_id is None:
            return None
        tx = self.store.tx(r.redeem_tx_id)
        status = self.resolve_tx(tx)  # re-sent and still pending: TxPending, the next pass sees it
        usd = usd_text(r.usd_micro)
        if status == SUCCEEDED:
            event = self.chain.redeemed(tx.tx_hash)
            if event is None or event.redemption_id == r.chain_redemption_id:
                return None
            moved = dataclasses.replace(
                r, chain_redemption_id=event.redemption_id, tokens_in=event.tokens_in, deadline=event.deadline
            )
            return self._reject(
                moved, r.status, f"a chain reorganisation moved the sale to escrow redemption {event.redemption_id} "
                f"after {usd} of credits were bought for redemption {r.chain_redemption_id}, which the receipt names",
                chain_redemption_id=event.redemption_id, tokens_in=event.tokens_in, deadline=event.deadline,
            )  # fmt: skip
        log.error("redemption %d: its sale was undone by a reorg after the purchase (redeem tx %s %s)",
                  r.id, tx.tx_hash, status)  # fmt: skip
        return self._fail(
            r, r.status, f"a chain reorganisation undid the sale (escrow redemption {r.chain_redemption_id}) after "
            f"{usd} of credits were bought: its redeem tx {tx.tx_hash} {status} on the new chain",
            chain_redemption_id=None, tokens_in=None, deadline=None,
        )  # fmt: skip

    def _sale_released(self, r: Redemption) -> Redemption:
        """`r` as its succeeded release left it: the escrow redemption its redeem holds now,
        where that is not the one the row names but the chain shows it released and the
        user's. A reorg moved the sale to id 2 (its release reverted: rejected naming 2), a
        second moved it back to id 1, the id its receipt names, and the re-sent release
        released 1: the row and the user's notice name 1, not 2 (abreak s11 item 2)."""
        tx = None if r.redeem_tx_id is None else self.store.tx(r.redeem_tx_id)
        event = None if tx is None or tx.status != SUCCEEDED else self.chain.redeemed(tx.tx_hash)
        if event is None or event.redemption_id == r.chain_redemption_id:
            return r
        state = self.chain.redemption(event.redemption_id)
        if state.status != STATUS_RELEASED or state.user.lower() != r.user.lower():
            return r
        log.warning("redemption %d: its release released escrow redemption %d, where its sale is now (the row "
                    "named %s before a reorg moved the sale back)", r.id, event.redemption_id,
                    r.chain_redemption_id)  # fmt: skip
        return dataclasses.replace(
            r, chain_redemption_id=event.redemption_id, tokens_in=event.tokens_in, deadline=event.deadline
        )

    def _released(self, r: Redemption, from_: str) -> Redemption:
        usd, sold = f"${r.usd_micro / 1_000_000:,.2f}", money(r.tokens_in or 0, r.token)
        # Told it was rejected (a reorg moved the sale, `_sale_moved`), then released after a
        # second reorg: told again, that there is nothing to refund (a notice per rejection).
        rejected = self.store.notices(f"redemption:{r.id}:rejected")
        void = " You were told it was rejected: that is void, there is nothing to refund." if rejected else ""
        after = self.store.move(
            r.id, (from_,), RELEASED, self.clock(), error=None, chain_redemption_id=r.chain_redemption_id,
            tokens_in=r.tokens_in, deadline=r.deadline,
            notify=self._notice(r, "receipt", f"{usd} of {r.provider} credits added",
                                f"Redemption {r.chain_redemption_id}: sold {sold} for {usd} "
                                f"of credits on your {r.provider} account (billing receipt "
                                f"0x{(r.billing_ref or b'').hex()}).{void}", per=rejected or None),
        )  # fmt: skip
        log.info("redemption %d released (escrow %s)", r.id, r.chain_redemption_id)
        crash_point("released")
        return after

    def _notice(
        self, r: Redemption, kind: str, subject: str, body: str, *, per: int | None = None
    ) -> tuple[str, str, str, str]:
        """A notification written once per redemption and kind (and `per`: once per escrow id)."""
        return (f"redemption:{r.id}:{kind}" + ("" if per is None else f":{per}"), kind, subject, body)

    def _fail(self, r: Redemption, from_: str, reason: str, **values: Any) -> Redemption:
        log.warning("redemption %d failed: %s", r.id, reason)
        return self.store.move(
            r.id, (from_,), FAILED, self.clock(), error=reason, **values,
            notify=self._notice(r, "failed", "Redemption failed: nothing was sold", reason),
        )  # fmt: skip

    def _reject(
        self, r: Redemption, from_: str, reason: str, *, read: Redemption | None = None, **values: object
    ) -> Redemption:
        log.error("redemption %d: receipt rejected: %s", r.id, reason)
        return self.store.move(
            r.id, (from_,), REJECTED, self.clock(), read=read, error=reason, **values,
            notify=self._notice(r, "rejected", "Redemption receipt rejected: refund available",
                                f"{reason}. After {utc_text(r.deadline or 0)} (its deadline) you can refund "
                                f"redemption {r.chain_redemption_id} from the escrow: {_refund_command(r)}.",
                                per=r.chain_redemption_id),  # a reorg may move a rejected sale (`reopen_tx`)
        )  # fmt: skip
