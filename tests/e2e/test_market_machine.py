"""The whole market as a model-based test (issue 20, "How to prove it"): a hypothesis state
machine drives the real stack on anvil — the contracts as `promptex up` deploys them, and
the indexer, the coordinator and the gateway as `promptex …` OS processes in front of the
fake upstream — through random user and operator actions: deposits, wallets bound or
never bound, concurrent requests against small lots and balances, answers longer than
asked, upstreams dying mid-stream, lots that fail to open, SIGKILL of a service by PID
(with requests in flight for the gateway) and its restart, epochs settled by the
coordinator. A plain-Python model says what each wallet deposited and what each request
should cost.

At every quiescent point (`settle`: the epoch closed, the coordinator and the indexer
caught up, waited for with bounded polls) and at the end:
- `promptex reconcile` (in process) finds nothing unexplained;
- per account and asset, the ledger == the vault == the model's deposits − charges;
- every complete answer was charged exactly what the meter says for it;
- no lot consumed beyond its capacity, on chain or in the ledger;
- no active hold older than its lifetime (plus the sweeper's period);
- Σ seller claimables == Σ listed credit on the metered usage each lot settled.

Profiles (tests/conftest.py's, read here): CI runs a few short sequences on one deployed
market reset by anvil snapshots between examples; HYPOTHESIS_PROFILE=deep runs 200, and
HYPOTHESIS_PROFILE=deep_part 10 of them per `--hypothesis-seed` (scripts/deep_parts.sh).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test
from market_stack import (
    CATALOG,
    HOLD_TTL_SECONDS,
    SERVICES,
    SWEEP_SECONDS,
    Chain,
    Fake,
    Services,
    deployed_market,
)
from sqlalchemy import select

from polling import until
from promptex.coordinator.service import REORG_WINDOW
from promptex.coordinator.store import CoordinatorStore
from promptex.fakes.upstream import chat_input_tokens
from promptex.gateway.keys import hash_key, new_api_key
from promptex.gateway.store import GatewayStore
from promptex.ledger import Ledger
from promptex.ledger.binding import sign
from promptex.ledger.schema import holds, usage_records
from promptex.metering import load_catalog, message_cost, provider_token_rates, usdc_rates
from promptex.protocol.escrow import MIN_TOKENIZED_FACE, listed_credit
from promptex.reconcile import reconcile, summary
from promptex.reconcile.chain import Web3ChainView
from promptex.reconcile.run import indexed_block

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
# A part of a deep run (scripts/deep_parts.sh) draws the same sequences as the deep profile.
DEEP = PROFILE in ("deep", "deep_part")
MODEL = "fake-gpt"
RATE_BPS = 6_000
FEE_BPS = 500  # the protocol fee (settings' default)
MAX_UINT = 2**256 - 1
PROMPT = [{"role": "user", "content": "hi"}]
_names = itertools.count(1)
# Issue 20 part 1: a lot whose open reverted used to be routed, its usage quarantined for
# good (found here too). Fixed by 43ac709 (a lot is routable only while the chain says it
# is open); True would note such records instead of failing on them.
UNOPENED_LOTS_ROUTABLE = False
NEVER_OPENED = "which has no on-chain lot id"
# Found by this machine: the coordinator marked a settlement confirmed on its receipt and
# never looked again, so a reorg that orphaned the settle transaction left its records
# "batched" in a batch the chain did not have. Fixed (coordinator: `_recheck_confirmed`);
# False would skip the settlement a reorg rule asks for on its doomed branch.
SETTLES_SURVIVE_REORGS = True
# Found by this machine (deep runs on dd8e9e8, 1d5c605, 57c2728): a reorg orphaning more
# than one of the coordinator's transactions left it waiting for good behind a nonce only
# an orphaned one held. Fixed (coordinator: `_recheck_orphaned_txs`); the coordinator now
# runs freely on doomed branches, settling there as often as it likes.
STATS: Counter[str] = Counter()  # what the runs did, printed at the end (pytest -s)

PRICE = load_catalog(CATALOG).price(MODEL)


def exact_cost(output_tokens: int, asset: str = "USDC") -> int:
    """What a complete answer of `output_tokens` to PROMPT costs, as metered: in µUSDC on a
    listed lot, or in GPT's smallest units (the model's own provider token) on a tokenized one."""
    rates = usdc_rates(PRICE, RATE_BPS, FEE_BPS) if asset == "USDC" else provider_token_rates(PRICE)
    return message_cost(rates, chat_input_tokens(PROMPT), output_tokens)


@dataclass
class Buyer:
    wallet: LocalAccount
    account: int | None = None  # None: never bound
    key: str | None = None
    deposited: int = 0  # net: deposits − what exits took out
    asset: str = "USDC"  # what it deposits and pays in: USDC (listed lots) or GPT (tokenized)
    exited: bool = False  # an exit may have raced its usage (a settlement may fall short, a debt)
    orphaned: bool = False  # a reorg took away a deposit it had spent (a debt, explained)


@dataclass
class Sent:
    """One request as the buyer saw it, and what the model expects it to cost."""

    buyer: Buyer
    status: int | None  # None: no answer (the gateway was killed, the stream broke)
    request_id: str | None
    exact: int | None  # the exact cost of a complete healthy answer; None: bounded only


@dataclass
class Model:
    buyers: list[Buyer] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    lots: dict[int, int] = field(default_factory=dict)  # chain lot id → capacity (USD micro at list)
    sellers: dict[int, LocalAccount] = field(default_factory=dict)  # chain lot id → its seller's wallet
    closing: set[int] = field(default_factory=set)  # lots whose close was requested
    token_lots: dict[int, int] = field(default_factory=dict)  # tokenized GPT lot id → face value (µUSD)
    refused_opens: int = 0
    may_quarantine: bool = False  # an answer longer than asked may overdraw a lot (quarantined, explained)


class MarketMachine(RuleBasedStateMachine):
    chain: Chain
    fake: Fake
    base: Path

    def __init__(self) -> None:
        super().__init__()
        STATS["examples"] += 1
        self.snapshot = self.chain.snapshot()
        workdir = self.base / f"example-{next(_names)}"
        workdir.mkdir()
        self.fake.behave()
        self.services = Services(self.chain, workdir, self.fake)
        self.ledger = Ledger.open(self.services.ledger_url, sqlite_synchronous="NORMAL")
        self.store = GatewayStore(self.ledger.engine)
        self.model = Model()
        self.dirty = False  # something happened since the last quiescent check
        self.usdc = self.chain.asset("USDC")
        self.vault = self.chain.contract("CreditsVault")
        self.escrow = self.chain.contract("CreditEscrow")
        # The indexer first: it records the chain this ledger follows, which the others check.
        self.services.start("indexer")
        until(lambda: self.ledger.chain_identity() is not None, "the indexer adopted the chain", 120)
        self.services.start("coordinator")
        self.services.start("gateway")
        self.services.wait_ready()

    buyers = Bundle("buyers")

    # ─── Setup and operator actions ──────────────────────────────────────────

    @initialize(face=st.integers(150, 400))
    def first_lot(self, face: int) -> None:
        STATS["rule first_lot"] += 1
        self.add_lot(face, bond_approved=True)

    @initialize(target=buyers, amount=st.integers(100, 600))
    def first_buyer(self, amount: int) -> Buyer:
        return self.new_buyer(amount, bind=True, cap=10**12)

    @initialize(
        target=buyers, face=st.integers(MIN_TOKENIZED_FACE, MIN_TOKENIZED_FACE + 900), share=st.integers(20, 100)
    )
    def token_market(self, face: int, share: int) -> Buyer:
        """A tokenized GPT lot of `face` µUSD (at least the escrow's $10: its tokens minted
        to the seller, less the mint fee) and a buyer who bought `share` % of 900 µUSD worth
        of them, deposited them and pays in GPT (a small balance keeps the buyer's side
        under pressure; the lot itself outlasts a sequence)."""
        self.token_seller = seller = self.chain.wallet()
        gpt_token = self.chain.asset("GPT").address
        bond = self.escrow.functions.tokenized_bond(gpt_token, face).call()  # GPT's share: the only bond it takes
        self.chain.send(seller, self.usdc.functions.mint(seller.address, bond))
        self.chain.send(seller, self.usdc.functions.approve(self.escrow.address, bond))  # exactly this lot's
        before = self.escrow.functions.lot_count().call()
        code, output = self.services.cli(
            "seller", "add-capacity", "--provider", "openai", "--base-url", self.fake.url, "--api-key", "sk-fake",
            "--face-value", f"{face / 1e6:.6f}", "--kind", "tokenized", "--expires", "30d",
            "--seller-address", seller.address, "--bond", f"{bond / 1e6:.6f}", "--declare-resale-permitted",
        )  # fmt: skip
        assert code == 0, output
        lot = self.escrow.functions.lot_count().call()
        assert lot == before + 1
        self.model.token_lots[lot] = face
        buyer = Buyer(self.chain.wallet(), asset="GPT")
        minted = self.chain.asset("GPT").functions.balanceOf(seller.address).call()
        self.deposit(buyer, minted * 900 * share // (100 * face))
        gpt = self.chain.asset("GPT").address
        self.chain.send(
            buyer.wallet, self.vault.functions.set_spend_cap(gpt, MAX_UINT, 10**30, self.chain.now() + 30 * 86_400)
        )
        self.bind(buyer)
        self.model.buyers.append(buyer)
        STATS["token buyers"] += 1
        return buyer

    @rule(face=st.integers(100, 400), bond_approved=st.booleans())
    def add_lot(self, face: int, bond_approved: bool) -> None:
        """`promptex seller add-capacity` for a listed lot of `face` µUSD; without an
        approved bond the escrow refuses the open."""
        STATS["rule add_lot"] += 1
        seller = self.chain.wallet()
        bond = -(-face * self.escrow.functions.min_bond_bps().call() // 10_000)
        if bond_approved:
            self.chain.send(seller, self.usdc.functions.mint(seller.address, bond))
            self.chain.send(seller, self.usdc.functions.approve(self.escrow.address, bond))  # exactly this lot's
        before = self.escrow.functions.lot_count().call()
        code, output = self.services.cli(
            "seller", "add-capacity", "--provider", "openai", "--base-url", self.fake.url, "--api-key", "sk-fake",
            "--face-value", f"{face / 1e6:.6f}", "--kind", "listed", "--rate", str(RATE_BPS / 10_000),
            "--expires", "30d", "--seller-address", seller.address, "--bond", f"{bond / 1e6:.6f}",
            "--declare-resale-permitted",
        )  # fmt: skip
        after = self.escrow.functions.lot_count().call()
        if bond_approved:
            assert code == 0, output
            assert after == before + 1
            self.model.lots[after] = face
            self.model.sellers[after] = seller
        else:
            assert code != 0 and after == before, output
            self.model.refused_opens += 1
            STATS["opens refused"] += 1

    @rule(target=buyers, amount=st.integers(0, 600), bind=st.booleans(), cap=st.sampled_from([50, 10_000, 10**12]))
    def new_buyer(self, amount: int, bind: bool, cap: int) -> Buyer:
        """A wallet deposits `amount` µUSDC under a spend cap it sets itself (in total; no
        limit per epoch) and, if `bind`, proves it to a ledger account with an API key."""
        STATS["rule new_buyer"] += 1
        buyer = Buyer(self.chain.wallet())
        self.deposit(buyer, amount)
        self.chain.send(
            buyer.wallet,
            self.vault.functions.set_spend_cap(self.usdc.address, MAX_UINT, cap, self.chain.now() + 30 * 86_400),
        )
        if bind:
            self.bind(buyer)
        self.model.buyers.append(buyer)
        return buyer

    def deposit(self, buyer: Buyer, amount: int) -> int:
        """Deposit up to `amount` for `buyer`; returns what was deposited."""
        if not amount:
            return 0
        token = self.chain.asset(buyer.asset)
        if buyer.asset == "USDC":
            self.chain.send(buyer.wallet, self.usdc.functions.mint(buyer.wallet.address, amount))
        else:  # provider tokens exist only as minted for a lot: bought from its seller
            amount = min(amount, token.functions.balanceOf(self.token_seller.address).call())
            self.chain.send(self.token_seller, token.functions.transfer(buyer.wallet.address, amount))
        if not amount:
            return 0
        self.chain.send(buyer.wallet, token.functions.approve(self.vault.address, amount))
        self.chain.send(buyer.wallet, self.vault.functions.deposit(token.address, amount))
        buyer.deposited += amount
        return amount

    def bind(self, buyer: Buyer) -> None:
        account = self.ledger.create_account().id
        message = self.ledger.issue_binding_challenge(account, buyer.wallet.address)
        self.ledger.bind_wallet(message, sign(message, buyer.wallet.key))
        key = new_api_key()
        asset = None if buyer.asset == "USDC" else buyer.asset
        self.store.add_api_key(hash_key(key), key[:10], account, self.chain.now(), default_asset=asset)
        buyer.account, buyer.key = account, key

    @rule(buyer=buyers, amount=st.integers(1, 400))
    def deposit_more(self, buyer: Buyer, amount: int) -> None:
        STATS["rule deposit_more"] += 1
        self.deposit(buyer, amount)

    @rule(buyer=buyers)
    def bind_later(self, buyer: Buyer) -> None:
        STATS["rule bind_later"] += 1
        if buyer.account is None:
            self.bind(buyer)

    # ─── Traffic ─────────────────────────────────────────────────────────────

    def _request(self, buyer: Buyer, max_tokens: int, stream: bool, exact: int | None, out: list[Sent]) -> None:
        assert buyer.key is not None
        body = {"model": MODEL, "messages": PROMPT, "max_tokens": max_tokens, "stream": stream}
        headers = {"authorization": f"Bearer {buyer.key}"}
        status, request_id = None, None
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream(
                    "POST", self.services.gateway_url + "/v1/chat/completions", json=body, headers=headers
                ) as answer,
            ):
                status, request_id = answer.status_code, answer.headers.get("x-request-id")
                text = answer.read().decode(errors="replace")
                if stream and status == 200 and "[DONE]" not in text:
                    status = None  # the stream broke off: not a complete answer
        except httpx.HTTPError:
            pass
        out.append(Sent(buyer, status, request_id, exact if status == 200 else None))
        STATS[f"answer {status}"] += 1

    def traffic(self, picks: list[tuple[Buyer, int, bool]], exact: bool) -> list[Sent]:
        out: list[Sent] = []
        threads = [
            threading.Thread(
                target=self._request, args=(b, m, s, exact_cost(min(m, 16), b.asset) if exact else None, out)
            )
            for b, m, s in picks
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.model.sent.extend(out)
        self.dirty = True
        return out

    @precondition(lambda self: any(b.key for b in self.model.buyers))
    @rule(
        data=st.data(),
        n=st.integers(1, 8),
        fault=st.sampled_from(["none", "none", "none", "dies", "longer"]),
    )
    def requests(self, data: st.DataObject, n: int, fault: str) -> None:
        """`n` concurrent requests from bound buyers, against small lots and balances; the
        upstream healthy, dying mid-stream, or answering longer than asked."""
        STATS["rule requests"] += 1
        bound = [b for b in self.model.buyers if b.key]
        picks = [
            (data.draw(st.sampled_from(bound)), data.draw(st.integers(1, 16)), data.draw(st.booleans()))
            for _ in range(n)
        ]
        if fault == "dies":
            self.fake.behave(die_after=data.draw(st.integers(0, 3)))
            STATS["upstream died mid-stream"] += 1
            picks = [(b, max(m, 8), True) for b, m, _ in picks]
        elif fault == "longer":
            self.fake.behave(longer=data.draw(st.integers(17, 40)))
            self.model.may_quarantine = True
            STATS["answers longer than asked"] += 1
        try:
            self.traffic(picks, exact=fault == "none")
        finally:
            self.fake.behave()

    # Traffic is most of what a market does: two more doors into the same rule, so that
    # hypothesis's rule choice (and its swarm testing, which switches rules off per example)
    # leaves short CI sequences with requests in them.
    @precondition(lambda self: any(b.key for b in self.model.buyers))
    @rule(data=st.data(), n=st.integers(1, 8))
    def healthy_requests(self, data: st.DataObject, n: int) -> None:
        self.requests(data, n, "none")

    @precondition(lambda self: any(b.key for b in self.model.buyers))
    @rule(data=st.data(), n=st.integers(2, 8))
    def concurrent_requests(self, data: st.DataObject, n: int) -> None:
        self.requests(data, n, data.draw(st.sampled_from(["none", "dies", "longer"])))

    # ─── Failures ────────────────────────────────────────────────────────────

    @rule(name=st.sampled_from(SERVICES), in_flight=st.booleans())
    def kill_and_restart(self, name: str, in_flight: bool) -> None:
        """SIGKILL a service by PID — the gateway possibly with requests in flight — and start it again."""
        STATS["rule kill_and_restart"] += 1
        if name == "gateway" and in_flight:
            # The answers never come before the kill: their holds stay active until swept.
            self.racing(lambda: self.services.kill(name), latency_ms=30_000)
        else:
            self.services.kill(name)
        self.services.restart(name)
        self.dirty = True
        STATS[f"SIGKILL {name}{' in flight' if in_flight and name == 'gateway' else ''}"] += 1

    def racing(self, action: Callable[[], object], *, latency_ms: float, n: int = 4) -> None:
        """Run `action` while `n` requests from bound buyers are in flight (each reached the
        upstream, which answers after `latency_ms`)."""
        bound = [b for b in self.model.buyers if b.key]
        if not bound:
            action()
            return
        self.fake.config.latency_ms = latency_ms
        before = self.fake.config.requests
        out: list[Sent] = []
        threads = [
            threading.Thread(target=self._request, args=(bound[i % len(bound)], 8, False, None, out)) for i in range(n)
        ]
        for thread in threads:
            thread.start()
        try:
            until(lambda: self.fake.config.requests > before or all(not t.is_alive() for t in threads),
                  "a request reached the upstream", 30)  # fmt: skip
            action()
        finally:
            self.fake.config.latency_ms = 0
        for thread in threads:
            thread.join()
        self.model.sent.extend(out)
        self.dirty = True

    # ─── Lots closing mid-traffic ────────────────────────────────────────────

    @precondition(lambda self: bool(self.model.lots))
    @rule(data=st.data(), racing=st.booleans())
    def close_lot(self, data: st.DataObject, racing: bool) -> None:
        """`promptex seller close LOT` with the seller's key: request_close stops routing at
        once (maybe while requests are in flight); run again once the close delay is over
        (anvil time moves on, the coordinator settling each window), it finalizes the close
        and the seller takes the bond back. What the lot served settles in full."""
        STATS["rule close_lot"] += 1
        lot = data.draw(st.sampled_from(sorted(self.model.lots)))
        key = {"PROMPTEX_SELLER_PRIVATE_KEY": self.model.sellers[lot].key.hex()}
        if lot in self.model.closing:  # the close delay passes window by window, the coordinator settling each
            for _ in range(2):
                self.chain.advance(self.vault.functions.epoch_length().call() + 1)
                self.quiesce()
        outcome: list[tuple[int, str]] = []
        close = lambda: outcome.append(self.services.cli("seller", "close", str(lot), env=key))  # noqa: E731
        if racing:
            self.racing(close, latency_ms=300)
        else:
            close()
        code, output = outcome[0]
        STATS[f"seller close: {'ok' if code == 0 else 'refused'}"] += 1
        if code == 0:
            self.model.closing.add(lot)
        self.dirty = True

    # ─── Exits, racing usage ─────────────────────────────────────────────────

    def _withdrawn(self, buyer: Buyer, send: Callable[[], bool]) -> bool:
        """Send an exit; what reached the wallet leaves the model's net deposit."""
        before = self.usdc.functions.balanceOf(buyer.wallet.address).call()
        ok = send()
        buyer.deposited -= self.usdc.functions.balanceOf(buyer.wallet.address).call() - before
        return ok

    @rule(buyer=buyers, percent=st.integers(1, 100), racing=st.booleans())
    def request_exit(self, buyer: Buyer, percent: int, racing: bool) -> None:
        """A trustless exit of part of the vault balance, possibly while the buyer's requests are in flight."""
        STATS["rule request_exit"] += 1
        if buyer.asset != "USDC":
            return
        w, usdc = buyer.wallet.address, self.usdc.address
        balance = self.vault.functions.balance_of(w, usdc).call()
        if not balance or self.vault.functions.pending_exits(w, usdc).call()[0]:
            return
        amount = max(1, balance * percent // 100)
        send = lambda: self.chain.send(buyer.wallet, self.vault.functions.request_exit(usdc, amount))  # noqa: E731
        if racing and buyer.key:
            self.racing(send, latency_ms=300)
        else:
            send()
        buyer.exited = True
        self.dirty = True

    @rule(buyer=buyers, complete=st.booleans())
    def finish_exit(self, buyer: Buyer, complete: bool) -> None:
        """Cancel a pending exit, or complete it once thawed (anvil time moves on)."""
        STATS["rule finish_exit"] += 1
        if buyer.asset != "USDC":
            return
        w, usdc = buyer.wallet.address, self.usdc.address
        pending, unlock_at = self.vault.functions.pending_exits(w, usdc).call()[:2]
        if not pending:
            return
        if not complete:
            self.chain.send(buyer.wallet, self.vault.functions.cancel_exit(usdc))
            return
        if self.chain.now() < unlock_at:
            self.chain.advance(unlock_at - self.chain.now() + 1)
        complete_exit = self.vault.functions.complete_exit(usdc, 0, False)
        self._withdrawn(buyer, lambda: self.chain.send(buyer.wallet, complete_exit))
        STATS["exits completed"] += 1
        self.dirty = True

    @rule(buyer=buyers, percent=st.integers(1, 100), racing=st.booleans())
    def instant_exit(self, buyer: Buyer, percent: int, racing: bool) -> None:
        """`promptex coordinator release` co-signs an instant exit only of funds free of
        unsettled usage; the wallet sends it, possibly while its requests are in flight."""
        STATS["rule instant_exit"] += 1
        if buyer.account is None or buyer.asset != "USDC":
            return
        w, usdc = buyer.wallet.address, self.usdc.address
        amount = max(1, self.vault.functions.balance_of(w, usdc).call() * percent // 100)
        code, output = self.services.cli("coordinator", "release", "--address", w, "--asset", "USDC",
                                         "--amount", str(amount))  # fmt: skip
        if code != 0:
            assert "release refused" in output, output
            STATS["instant exits refused"] += 1
            return
        release = json.loads(output)
        call = self.vault.functions.exit_instant(
            usdc, int(release["amount"]), 0, release["nonce"], release["expiry"],
            bytes.fromhex(release["signature"].removeprefix("0x")),
        )  # fmt: skip
        send = lambda: self._withdrawn(buyer, lambda: self.chain.send(buyer.wallet, call))  # noqa: E731
        if racing and buyer.key:
            self.racing(send, latency_ms=300)
        else:
            send()
        buyer.exited = True
        STATS["instant exits"] += 1
        self.dirty = True

    # ─── Reorgs ──────────────────────────────────────────────────────────────

    @rule(
        buyer=buyers,
        amount=st.integers(1, 300),
        spend=st.booleans(),
        # Two windows on a doomed branch only in the deep profile (CI's time): the deep run
        # on 0e0b844 found a GPT balance the chain debited beyond the books after one: a
        # settle that reverted on the doomed branch was re-sent and landed after its records
        # were planned again. Fixed (coordinator: `_replace`; test_coordinator_anvil.py).
        settles=st.integers(0, 2 if DEEP else 1),
        other=st.integers(0, 300),
    )
    def shallow_reorg(self, buyer: Buyer, amount: int, spend: bool, settles: int, other: int) -> None:
        """A deposit the indexer applied (and the buyer maybe spent) is orphaned: anvil
        reverts to before it and mines another branch (a deposit of `other`, or nothing),
        at least as long. Whatever the coordinator sent meanwhile (any number of
        settlements) is orphaned with it; `settles` epochs close on the doomed branch, and
        the coordinator settles each there."""
        STATS["rule shallow_reorg"] += 1
        fork = self.chain.snapshot()
        start = self.chain.head()
        orphaned = self.deposit(buyer, amount)
        head = self.chain.head()
        until(lambda: (indexed_block(self.ledger) or 0) >= head, f"the indexer reached block {head}", 60)
        if spend and buyer.key:
            self.traffic([(buyer, 8, False)] * 3, exact=False)
            buyer.orphaned = True  # the spent deposit is gone: a debt, explained by reconcile
        for window in range(settles if SETTLES_SURVIVE_REORGS else 0):
            if window and spend and buyer.key:  # usage for the next settlement on the doomed branch
                self.traffic([(buyer, 8, False)], exact=False)
            self.chain.advance(self.vault.functions.epoch_length().call() + 1)
            self.quiesce(doomed=True)
            STATS["settlements orphaned (asked)"] += 1
        if settles > 1:
            STATS["reorgs orphaning two settlement windows"] += 1
        head = self.chain.head()
        self.chain.revert(fork)
        buyer.deposited -= orphaned
        self.deposit(buyer, other)
        while self.chain.head() <= head:
            self.chain.rpc("evm_mine")
        STATS[f"reorg depth {head - start}"] += 1
        self.dirty = True

    # ─── Quiescent points ────────────────────────────────────────────────────

    @precondition(lambda self: self.dirty)
    @rule()
    def settle(self) -> None:
        """Close the epoch (anvil time moves past it), let the coordinator settle and the
        indexer follow, then check every invariant."""
        STATS["rule settle"] += 1
        epoch = self.vault.functions.epoch_length().call()
        self.chain.advance(epoch + 1)
        self.quiesce()
        self.check()
        self.dirty = False
        STATS["quiescent checks"] += 1

    def quiesce(self, doomed: bool = False) -> None:
        """Wait until the coordinator settled every pending record (and the indexer caught
        up). A record of a failed batch is settled under a later epoch only once the failure
        is `REORG_WINDOW` blocks deep (the coordinator logs that it waits): here that many
        blocks are mined and the next epoch closed for it; on a `doomed` branch (a reorg is
        coming) it is left pending, since mining the window there would make that reorg
        deeper than the coordinator looks."""
        coordinator = CoordinatorStore(self.ledger.engine)

        def settled() -> bool:
            self.services.check_alive()
            with self.ledger.engine.connect() as conn:
                query = select(usage_records.c.request_id).where(usage_records.c.status == "pending")
                pending = set(conn.execute(query).scalars())
            if coordinator.open_txs():
                return False
            if any(coordinator.open_batch(asset) is not None for asset in ("USDC", "GPT")):
                return False
            if pending:
                failed = {m for b in coordinator.batches(status="failed") for m in b.payload.members}
                if not pending <= failed:
                    return False
                log = self.services.log_tail("coordinator", 10**7)
                if not all(f"usage {r} waits" in log for r in pending):
                    return False  # not held: the coordinator has yet to plan it again (at its epoch, at once)
                if not doomed:
                    STATS["windows mined for a failed batch's records"] += 1
                    self.chain.rpc("anvil_mine", hex(REORG_WINDOW))
                    self.chain.advance(self.vault.functions.epoch_length().call() + 1)
                    return False
            # Caught up with any reorg too: every batch it calls confirmed is on chain.
            return all(
                self.vault.functions.usage_roots(self.chain.asset(b.asset).address, b.epoch).call() == b.usage_root
                for b in coordinator.batches(status="confirmed")
            )

        until(settled, "the coordinator settled every pending record", 90)
        head = self.chain.head()
        until(lambda: (indexed_block(self.ledger) or 0) >= head, f"the indexer reached block {head}", 60)

    def check(self) -> None:
        block = indexed_block(self.ledger)
        assert block is not None
        report = reconcile(self.ledger, Web3ChainView(self.chain.url, self.chain.deployment, block))
        assert report.ok, (summary(report), [r.to_json() for r in report.unexplained])
        self.ledger.check()

        with self.ledger.engine.connect() as conn:
            rows = conn.execute(select(holds.c.request_id, holds.c.status, holds.c.charged, holds.c.cost,
                                       holds.c.amount, holds.c.account_id, holds.c.expires_at)).all()  # fmt: skip
            records = conn.execute(
                select(usage_records.c.request_id, usage_records.c.status, usage_records.c.chain_lot_id,
                       usage_records.c.list_usd_micro, usage_records.c.quarantine_reason,
                       usage_records.c.refund_reason)
            ).all()  # fmt: skip
        by_id = {r.request_id: r for r in rows}
        quarantined = [r for r in records if r.status == "quarantined"]
        STATS["quarantined: never-opened lot (known, lots)"] = max(
            STATS["quarantined: never-opened lot (known, lots)"],
            sum(NEVER_OPENED in (r.quarantine_reason or "") for r in quarantined),
        )

        # Every complete healthy answer was charged exactly its metered cost.
        for sent in self.model.sent:
            if sent.exact is not None and sent.request_id is not None:
                hold = by_id[sent.request_id]
                assert (hold.status, int(hold.charged)) == ("settled", sent.exact), sent

        # No hold outlives its lifetime (plus the sweeper's period and a slack for a busy machine).
        wall = int(time.time())
        stale = [r.request_id for r in rows if r.status == "active" and r.expires_at + SWEEP_SECONDS + 10 < wall]
        assert not stale, f"active holds past their lifetime ({HOLD_TTL_SECONDS} s): {stale}"

        # Per account: the ledger == the vault == net deposits − charges + what settlements
        # could not take (a shortfall, only after an exit raced the usage). Quarantined
        # usage and debts only where the model allows them; reconcile explains those.
        # A record the chain can never settle is refunded to its payer in the ledger (issue 20
        # part 4): here, an answer metered after its hold expired on a lot another request
        # had filled meanwhile (a loaded machine can be that slow). It costs the buyer nothing.
        refunded = {r.request_id for r in records if r.status == "refunded"}
        for r in records:
            if r.status == "refunded":
                reasons = f"{r.quarantine_reason} / {r.refund_reason}"
                assert "after its hold expired" in reasons or self.model.may_quarantine, r
                STATS["refunded: metered after its hold expired"] += 1
        charged: defaultdict[int, int] = defaultdict(int)
        for r in rows:
            if r.status == "settled" and r.request_id not in refunded:
                charged[r.account_id] += int(r.charged)
        shortfalls: defaultdict[tuple[str, str], int] = defaultdict(int)
        for log in self.vault.events.ShortfallRecorded().get_logs(from_block=0):
            shortfalls[(log["args"]["account"], log["args"]["asset"])] += int(log["args"]["amount"])
        debtors = {debt.account for debt in self.ledger.open_debts()}
        unsettled = {by_id[r.request_id].account_id for r in quarantined}
        for buyer in self.model.buyers:
            address = buyer.wallet.address
            token = self.chain.asset(buyer.asset).address
            on_chain = self.vault.functions.balance_of(address, token).call()
            short = shortfalls[(address, token)]
            if buyer.account is None:
                assert on_chain == buyer.deposited
                continue
            if not (buyer.exited or buyer.orphaned):
                assert not short, (buyer, short)
            if not (buyer.orphaned or buyer.exited):  # an exit that took charged funds leaves a debt
                assert buyer.account not in debtors, (buyer, self.ledger.open_debts())
                if not self.model.may_quarantine:
                    unexpected = [
                        r
                        for r in quarantined
                        if by_id[r.request_id].account_id == buyer.account
                        and not (UNOPENED_LOTS_ROUTABLE and NEVER_OPENED in r.quarantine_reason)
                    ]
                    assert not unexpected, (buyer, unexpected)
            if buyer.account in unsettled or buyer.account in debtors:
                continue
            posted = self.ledger.balance(buyer.account, buyer.asset).posted
            expected = buyer.deposited - charged[buyer.account] + short
            assert posted == on_chain == expected, (buyer.account, posted, on_chain, expected)

        # Lots: never consumed beyond capacity, on chain or in the ledger; each seller
        # credited exactly its listed share of the usage it settled.
        # A lot draws the list value its settled records served, lowered only where a record
        # was charged less than its cost (an answer longer than its hold could cover): the
        # seller is never credited more than the buyers paid (coordinator.plan.aggregate).
        settled_list: defaultdict[int, int] = defaultdict(int)
        short: set[int] = set()
        for r in records:
            if r.status == "batched" and r.chain_lot_id is not None:
                settled_list[int(r.chain_lot_id)] += int(r.list_usd_micro)
                hold = by_id[r.request_id]
                # (A gateway charges at most the hold: one charged its whole hold may have cost more.)
                paid = int(hold.charged or 0)
                if hold.cost is not None and (paid < int(hold.cost) or paid == int(hold.amount)):
                    short.add(int(r.chain_lot_id))
        claimable: defaultdict[str, int] = defaultdict(int)
        owed: defaultdict[str, int] = defaultdict(int)
        for lot_id in range(1, self.escrow.functions.lot_count().call() + 1):
            lot = self.escrow.functions.lots(lot_id).call()
            seller, rate, capacity, consumed = lot[0], lot[4], lot[7], lot[9]
            assert consumed <= capacity, (lot_id, consumed, capacity)
            if lot_id in self.model.lots:
                if lot_id in short:
                    assert consumed <= settled_list[lot_id], (lot_id, consumed, settled_list[lot_id])
                else:
                    assert consumed == settled_list[lot_id], (lot_id, consumed, settled_list[lot_id])
                owed[seller] += listed_credit(0, consumed, rate)
                claimable[seller] = self.vault.functions.claimable(seller, self.usdc.address).call()
        assert claimable == owed
        faces = {**self.model.lots, **self.model.token_lots}
        for lot_id, capacity in self.ledger.lot_capacities().items():
            if capacity.chain_lot_id is not None and not self.model.may_quarantine:
                assert capacity.used <= faces[capacity.chain_lot_id], (lot_id, capacity)

        # Per token: Σ burned by settlements == Σ its tokenized lots' draws == Σ what its
        # payers were charged and the chain debited; the supply is what the lots have left.
        gpt = self.chain.asset("GPT")
        drawn = sum(self.escrow.functions.lots(lot).call()[9] for lot in self.model.token_lots)
        left = sum(
            self.escrow.functions.lots(lot).call()[7] - self.escrow.functions.lots(lot).call()[9]
            for lot in self.model.token_lots
        )
        token_payers = {b.account for b in self.model.buyers if b.asset == "GPT"}
        settled_gpt = sum(
            int(by_id[r.request_id].charged)
            for r in records
            if r.status == "batched" and by_id[r.request_id].account_id in token_payers
        )
        token_short = sum(v for (_, asset), v in shortfalls.items() if asset == gpt.address)
        assert drawn == settled_gpt - token_short, (drawn, settled_gpt, token_short)
        assert gpt.functions.totalSupply().call() == left, (gpt.functions.totalSupply().call(), left)

    def teardown(self) -> None:
        try:
            if sys.exc_info()[1] is None:  # a last quiescent check, unless a step already failed
                self.settle()
        finally:
            log = self.services.log_tail("coordinator", 10**7)
            STATS["settles reverted"] += log.count("settle reverted; its")
            STATS["failed settles orphaned, nonce given to a no-op"] += log.count("is filled with the no-op")
            self.services.stop_all()
            self.ledger.close()
            self.chain.revert(self.snapshot)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("market")
    with deployed_market(base) as chain, Fake() as fake:
        yield chain, fake, base


def test_market__random_actions_failures_and_restarts__books_never_diverge(market) -> None:
    chain, fake, base = market
    MarketMachine.chain, MarketMachine.fake, MarketMachine.base = chain, fake, base
    profile = settings(
        # deep: 200 sequences; a part of them: 10; CI: 3.
        max_examples=int(os.environ.get("PROMPTEX_MARKET_EXAMPLES", {"deep": 200, "deep_part": 10}.get(PROFILE, 3))),
        stateful_step_count=int(os.environ.get("PROMPTEX_MARKET_STEPS", 12 if DEEP else 8)),
        deadline=None,
        # Shrinking replays whole markets: minutes per step. On by request (a failure's seed replays it).
        phases=list(Phase) if os.environ.get("PROMPTEX_MARKET_SHRINK") else [Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    run_state_machine_as_test(MarketMachine, settings=profile)
    print("market machine:", dict(sorted(STATS.items())))


def test_market__settlement_orphaned_by_a_reorg__settled_again_books_reconcile(market) -> None:
    """Sequences the machine found, run by hand: two epochs settled on a branch that a
    reorg then orphans (one orphaned settlement was the first bug; a second one left the
    coordinator stuck or a balance unexplained); the coordinator settles those records
    again on the new branch and the books reconcile (ledger == vault per account, lots and
    sellers exact)."""
    MarketMachine.chain, MarketMachine.fake, MarketMachine.base = market
    machine = MarketMachine()
    try:
        machine.first_lot(face=400)
        buyer = machine.first_buyer(amount=500)
        machine.traffic([(buyer, 8, False), (buyer, 16, True)], exact=True)
        machine.shallow_reorg(buyer, amount=50, spend=True, settles=2, other=20)
        machine.traffic([(buyer, 4, False)], exact=True)
        machine.settle()
        with machine.ledger.engine.connect() as conn:
            statuses = conn.execute(select(usage_records.c.status)).scalars().all()
        assert statuses and set(statuses) == {"batched"}
        assert STATS["settlements orphaned (asked)"] >= 2
        log = machine.services.log_tail("coordinator", 10**6)
        assert log.count("is no longer on chain (a reorg)") >= 2, log[-3000:]  # both settlements were orphaned
        epochs = [b.epoch for b in CoordinatorStore(machine.ledger.engine).batches("USDC", "confirmed")]
        assert len(epochs) == len(set(epochs))  # each epoch confirmed once (quiesce: each on chain with its root)
    finally:
        machine.teardown()
