"""An in-memory RedemptionEscrow (+ one constant-product pool per token, its Oracle pool,
and a fixed TWAP; each token tied to one provider)
with the agent's `AgentChain` methods, built on the coordinator's fake chain (nonces,
a mempool that can hold or lose broadcasts, receipts); and the fake billing API served
over real HTTP in a thread."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from coordinator_fakes import FakeChain, Revert, State, _decode
from eth_account import Account
from eth_utils.crypto import keccak
from starlette.applications import Starlette

from promptex.agent import machine, service
from promptex.agent.chain import ChainRedemption, Grant, Redeemed
from promptex.agent.fake_billing import FakeBillingConfig, create_fake_billing
from promptex.chain.sender import Call
from promptex.protocol import dex
from promptex.protocol.redemption import (
    STATUS_OPEN,
    STATUS_REFUNDED,
    STATUS_RELEASED,
    honest_limit,
    provider_id,
    receipt_digest,
    sale_hash,
    sale_id,
    slippage_limit,
)
from promptex.protocol.units import ZERO_ADDRESS as ZERO
from promptex.serving import ServerThread

AGENT = "0x00000000000000000000000000000000000A6E47"
PAYEE = "0x000000000000000000000000000000000000BEEF"
USER = "0x1111111111111111111111111111111111111111"
ESCROW = "0x000000000000000000000000000000000000E5C0"
USDC = "0x00000000000000000000000000000000000005DC"
TOKENS = {"CLD": "0x0000000000000000000000000000000000000C1D", "GPT": "0x0000000000000000000000000000000000000987"}
PROVIDERS = {TOKENS["CLD"]: provider_id("anthropic"), TOKENS["GPT"]: provider_id("openai")}
CHAIN_ID = 31337
BILLING_KEY = "0x" + "42" * 32
BILLING_SIGNER = Account.from_key(BILLING_KEY).address
REFUND_DELAY = 3_600


@dataclass
class EscrowState(State):
    tokens: dict[tuple[str, str], int] = field(default_factory=dict)
    allowances: dict[tuple[str, str], int] = field(default_factory=dict)
    usdc: dict[str, int] = field(default_factory=dict)
    grants: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    limits: dict[tuple[str, str], int] = field(default_factory=dict)
    spent: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    linked: dict[tuple[str, bytes], bytes] = field(default_factory=dict)
    signers: dict[bytes, str] = field(default_factory=dict)
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    by_nonce: dict[int, Redeemed] = field(default_factory=dict)
    pools: dict[str, tuple[int, int]] = field(default_factory=dict)  # token → (token reserve, usdc reserve)
    twaps: dict[str, int] = field(default_factory=dict)
    redeems: int = 0
    releases: int = 0


def amount_in(reserve_in: int, reserve_out: int, amount_out: int) -> int | None:
    """The Router's exact-output quote; None where it reverts (not that much in the pool)."""
    if amount_out >= reserve_out:
        return None
    return dex.amount_in(amount_out, reserve_in, reserve_out)


class FakeAgentChain(FakeChain):
    chain_id = CHAIN_ID
    escrow_address = ESCROW

    def __init__(self) -> None:
        super().__init__()
        self.s: EscrowState = EscrowState()
        self.sender = AGENT
        self.raws: dict[str, str] = {}
        self.forks: list[int] = []  # heights at which a reorg replaced the blocks from there up

    def block_hash(self, number: int) -> str | None:
        """A block's hash: the same until a reorg at or below its height (`forks`)."""
        if number > self.block:
            return None
        return "0x" + keccak(text=f"{number}:{sum(1 for h in self.forks if h <= number)}").hex()

    # ─── Setup ───────────────────────────────────────────────────────────────

    def market(self, symbol: str, token_reserve: int, usdc_reserve: int) -> None:
        token = TOKENS[symbol]
        self.s.pools[token] = (token_reserve, usdc_reserve)
        self.s.twaps[token] = usdc_reserve * 10**36 // token_reserve

    def user_setup(self, user: str, symbol: str, tokens: int, *, limit: int, slippage: int = 100) -> None:
        token = TOKENS[symbol]
        self.s.tokens[(user, token)] = tokens
        self.s.allowances[(user, token)] = 2**256 - 1
        version = self.s.grants.get(user, (ZERO, 0, 0, 0))[3] + 1
        self.s.grants[user] = (PAYEE, self.time + 30 * 86_400, slippage, version)
        self.s.limits[(user, token)] = limit

    # ─── Views ───────────────────────────────────────────────────────────────

    def token_address(self, symbol: str) -> str:
        return TOKENS[symbol]

    def usdc_address(self) -> str:
        return USDC

    def quote(self, token: str, usdc_out: int) -> tuple[int, int] | None:
        pool, twap = self.s.pools.get(token), self.s.twaps.get(token)
        tokens_in = None if pool is None else amount_in(pool[0], pool[1], usdc_out)
        if pool is None or twap is None or tokens_in is None:
            return None
        try:
            return tokens_in, honest_limit(usdc_out, pool[0] * pool[1], twap, dex.DEFAULT_FEE)
        except ValueError:
            return None

    def twap(self, token: str) -> int | None:
        return self.s.twaps.get(token)

    def token_provider(self, token: str) -> bytes:
        return PROVIDERS.get(token, bytes(32))

    def grant(self, user: str) -> Grant:
        return Grant(*self.s.grants.get(user, (ZERO, 0, 0, 0)))

    def daily_limit(self, user: str, token: str) -> int:
        return self.s.limits.get((user, token), 0) if self.grant(user).live else 0

    def spent_today(self, user: str, token: str) -> int:
        day, amount = self.s.spent.get((user, token), (-1, 0))
        return amount if day == self.time // 86_400 else 0

    def linked_account(self, user: str, provider: bytes) -> bytes:
        return self.s.linked.get((user, provider), bytes(32))

    def billing_signer_count(self, provider: bytes) -> int:
        return int(provider in self.s.signers)

    def is_billing_signer(self, provider: bytes, signer: str) -> bool:
        return self.s.signers.get(provider, ZERO).lower() == signer.lower() != ZERO

    def token_balance(self, user: str, token: str) -> int:
        return self.s.tokens.get((user, token), 0)

    def allowance(self, user: str, token: str) -> int:
        return self.s.allowances.get((user, token), 0)

    def redemption(self, redemption_id: int) -> ChainRedemption:
        r = self.s.records.get(redemption_id)
        if r is None:
            return ChainRedemption(ZERO, ZERO, 0, 0, 0)
        return ChainRedemption(r["user"], r["payee"], r["usdc"], r["deadline"], r["status"])

    def redeemed(self, tx_hash: str) -> Redeemed | None:
        return self.s.by_nonce.get(json.loads(self.raws[tx_hash])["n"])

    def redeem_sale_ref(self, raw: str) -> bytes | None:
        d = json.loads(raw)
        return _decode(d["a"][5]) if d.get("f") == "redeem" else None

    def broadcast(self, raw: str) -> None:
        self.raws["0x" + keccak(text=raw).hex()] = raw
        super().broadcast(raw)

    # ─── The escrow ──────────────────────────────────────────────────────────

    def _execute(self, s: EscrowState, call: Call) -> None:  # type: ignore[override]
        if call.contract != "redemption":  # the agent signs for the redemption escrow only
            raise Revert(f"{call.contract}: caller has no role")
        getattr(self, f"_{call.function}")(s, *call.args)

    def _redeem(self, s: EscrowState, user, token, usdc_out, max_in, deadline, ref) -> None:  # noqa: ANN001
        if self.time > deadline:
            raise Revert("redemption: deadline passed")
        payee, expiry, slippage, _version = s.grants.get(user, (ZERO, 0, 0, 0))
        if payee == ZERO:
            raise Revert("redemption: no grant")
        if self.time > expiry:
            raise Revert("redemption: grant expired")
        if (user, token) not in s.limits:
            raise Revert("redemption: token not granted")
        provider = PROVIDERS.get(token)
        if provider is None:
            raise Revert("redemption: token has no provider")
        account = s.linked.get((user, provider))
        if account is None:
            raise Revert("redemption: account not linked")
        if provider not in s.signers:
            raise Revert("redemption: unknown provider")
        quoted = self.quote(token, usdc_out)
        if quoted is None:
            raise Revert("redemption: pool too shallow")
        tokens_in, honest = quoted
        pool = s.pools[token]
        if tokens_in > max_in:
            raise Revert("redemption: input above maximum")
        if tokens_in > honest:
            raise Revert("redemption: price beyond twap tolerance")
        if tokens_in > slippage_limit(usdc_out, s.twaps[token], slippage):
            raise Revert("redemption: slippage beyond grant")
        day, spent = s.spent.get((user, token), (-1, 0))
        sold = (spent if day == self.time // 86_400 else 0) + tokens_in
        if sold > s.limits[(user, token)]:
            raise Revert("redemption: daily limit exceeded")
        if s.tokens.get((user, token), 0) < tokens_in or s.allowances.get((user, token), 0) < tokens_in:
            raise Revert("erc20: insufficient balance or allowance")
        s.spent[(user, token)] = (self.time // 86_400, sold)
        s.tokens[(user, token)] -= tokens_in
        s.pools[token] = (pool[0] + tokens_in, pool[1] - usdc_out)
        s.redeems += 1
        rid = s.redeems
        deadline_ = self.time + REFUND_DELAY
        s.records[rid] = {
            "user": user, "payee": payee, "usdc": usdc_out, "deadline": deadline_, "status": STATUS_OPEN,
            "hash": sale_hash(provider, account, sale_id(s.key, ref)),
        }  # fmt: skip
        s.usdc[ESCROW] = s.usdc.get(ESCROW, 0) + usdc_out
        s.by_nonce[s.nonce] = Redeemed(rid, tokens_in, usdc_out, deadline_)

    def _release(self, s: EscrowState, rid, sale, provider, ref, usd_micro, billing_ref, signature) -> None:  # noqa: ANN001
        r = s.records.get(rid)
        if r is None or r["status"] != STATUS_OPEN:
            raise Revert("redemption: not open")
        if sale_hash(provider, ref, sale) != r["hash"]:
            raise Revert("redemption: sale, provider or account mismatch")
        if usd_micro < r["usdc"]:
            raise Revert("redemption: receipt below amount due")
        digest = receipt_digest(
            chain_id=CHAIN_ID, escrow=ESCROW, redemption_id=rid, sale=sale, provider=provider, account_ref=ref,
            usd_micro=usd_micro, billing_ref=billing_ref,
        )  # fmt: skip
        try:
            recovered = Account._recover_hash(digest, signature=signature)
        except Exception:
            recovered = ZERO
        if not self.is_billing_signer(provider, recovered):
            raise Revert("redemption: receipt not signed by billing signer")
        r["status"] = STATUS_RELEASED
        s.usdc[ESCROW] -= r["usdc"]
        s.usdc[r["payee"]] = s.usdc.get(r["payee"], 0) + r["usdc"]
        s.releases += 1

    def refund(self, rid: int) -> None:
        r = self.s.records[rid]
        assert r["status"] == STATUS_OPEN and self.time > r["deadline"]
        r["status"] = STATUS_REFUNDED
        self.s.usdc[ESCROW] -= r["usdc"]


@contextlib.contextmanager
def serving_billing(config: FakeBillingConfig) -> Iterator[tuple[str, Starlette]]:
    """The fake billing API on a free loopback port, in a thread; yields its URL and app
    (swap `app.state.config` to reconfigure it)."""
    app = create_fake_billing(config)
    with ServerThread(app) as server:
        yield server.url, app


class Crash(BaseException):
    """The agent killed (kill -9) at one of its steps (`crash_point`)."""


@contextlib.contextmanager
def crashing_at(monkeypatch: Any, step: str) -> Iterator[None]:
    """Within: the agent dies (`Crash`) when it reaches `step`; after: it runs on."""

    def crash(at: str) -> None:
        if at == step:
            raise Crash(at)

    for module in (machine, service):
        monkeypatch.setattr(module, "crash_point", crash)
    try:
        yield
    finally:
        for module in (machine, service):
            monkeypatch.setattr(module, "crash_point", lambda at: None)
