"""The local demo: `ape run demo --network ethereum:local:foundry` (what `make demo` runs).

The whole market on a fresh chain, each step checked, exiting non-zero if a number does
not reconcile:

seller A tokenizes $10,000 of (fake) Anthropic credit into CLD (0.05 % mint fee) and seeds
the CLD/USDC pool; seller B lists $5,000 of (fake) OpenAI capacity at 60 % of list; both
lots are verified against the provider and stored sealed by the gateway. Buyer 1 swaps
USDC for CLD and deposits it, buyer 2 deposits USDC; both bind their wallets and sign
spend caps that the coordinator registers gaslessly; the indexer credits the ledger. Both
call models through the gateway with the openai SDK (buyer 1 Claude, streamed and not, paid
in CLD; buyer 2 GPT, paid in USDC). The coordinator settles the epoch on-chain (CLD burned
and lot A drawn down; seller B credited USDC; lot B drawn down in the escrow) with the
Merkle root of the usage records, and one record is proved against that root. Seller B
claims; buyer 1 sells its unused CLD inside the vault and withdraws at once with
coordinator-signed releases; buyer 2 leaves through the trustless thaw. A Claude user
who holds CLD grants the redemption agent, links its Anthropic account and sets an
auto-topup rule; the rule fires: the agent sells CLD into RedemptionEscrow, buys credits
from the (fake) Anthropic billing API, and the escrow releases the USDC against the
billing signer's EIP-712 receipt. Finally one usage record is proved against the root.

The upstream providers and the billing API are fakes (deterministic text, real token
counts; a billing API that keeps balances and signs receipts with anvil's account 9).
"""

import tempfile
from pathlib import Path

import click
import openai
from ape import accounts, chain
from ape.cli import ConnectedProviderCommand
from rich.console import Console
from rich.table import Table

from promptex.agent.billing import HttpBilling
from promptex.agent.chain import Web3AgentChain
from promptex.agent.factory import LOCAL_AGENT_KEY, LOCAL_BILLING_SIGNER_KEY
from promptex.agent.fake_billing import FakeBillingConfig, create_fake_billing
from promptex.agent.service import Agent
from promptex.agent.store import RELEASED
from promptex.chain.deploy import contract_at, deploy_all
from promptex.chain.dex import create_pool_at_price
from promptex.chain.identity import identity_of
from promptex.cli.errors import readable_errors
from promptex.config import Settings
from promptex.coordinator.chain import Web3Chain
from promptex.coordinator.service import Coordinator
from promptex.coordinator.store import CoordinatorStore
from promptex.fakes import FakeUpstreamConfig, create_fake_upstream
from promptex.gateway import create_app
from promptex.gateway.buyers import signup
from promptex.gateway.store import GatewayStore
from promptex.indexer.followed import Followed
from promptex.indexer.rpc import RpcClient
from promptex.indexer.service import Indexer
from promptex.ledger import Ledger
from promptex.ledger.binding import sign
from promptex.metering import load_catalog, message_cost, provider_token_rates, usdc_rates
from promptex.proofs import build_proof
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.merkle import verify
from promptex.protocol.redemption import STATUS_RELEASED, provider_id
from promptex.protocol.units import DAY, TOKEN_UNIT, USD_MICRO
from promptex.protocol.vault import UNLIMITED, sign_spend_cap
from promptex.reconcile import Report, summary
from promptex.reconcile import reconcile as reconcile_books
from promptex.reconcile.chain import Web3ChainView
from promptex.reconcile.run import indexed_block
from promptex.sealing.envelope import load_master_keys
from promptex.sellers import Capacity, Onboarding, SellerChain, SellerStore
from promptex.serving import ServerThread

console = Console(width=110)
PROMPT = [{"role": "user", "content": "Summarise why idle API credits should be tradable."}]
BILLING_ACCOUNT = "acct_claude_user"  # the Claude user's account at the fake Anthropic billing API


def usd(micro: int) -> str:
    return f"${micro / USD_MICRO:,.6f}"


def tokens(amount: int) -> str:
    return f"{amount / TOKEN_UNIT:,.6f}"


def step(text: str) -> None:
    console.print(f"[bold cyan]▶[/] {text}")


def check(ok: bool, what: str) -> None:
    if not ok:
        raise click.ClickException(f"does not reconcile: {what}")
    console.print(f"  [green]✓[/] {what}")


@click.command(cls=ConnectedProviderCommand)
def cli(network):
    with readable_errors():
        run_demo(network.name)


class Market:
    """The off-chain half, in this process: ledger, gateway + fake upstream (threads),
    indexer and coordinator (stepped by the demo so each effect can be checked)."""

    def __init__(self, deployment, coordinator_key: str, work: Path):
        self.settings = Settings(
            ledger_url=f"sqlite:///{work / 'ledger.sqlite3'}",
            gateway_master_key_file=work / "master.key",
            welcome_credit_amount=0,
            gateway_default_max_tokens=512,
        )
        self.ledger = Ledger.from_settings(self.settings)
        self.store = GatewayStore(self.ledger.engine)
        self.keys = load_master_keys(None, self.settings.gateway_master_key_file)
        self.catalog = load_catalog(self.settings.model_catalog)
        rpc_url = self.rpc_url = chain.provider.http_uri
        self.deployment = deployment
        rpc = RpcClient(rpc_url)
        # The ledger records the chain it mirrors; any service pointed at another refuses.
        self.ledger.follow_chain(identity_of(deployment, rpc.chain_id(), rpc.headers([0])[0].hash), "the demo")
        self.indexer = Indexer(self.ledger, rpc, Followed.from_deployment(deployment))
        self.coordinator = Coordinator(self.ledger.engine, Web3Chain(rpc_url, deployment, coordinator_key))
        self.upstream = ServerThread(create_fake_upstream(FakeUpstreamConfig(output_tokens=400)))
        self.gateway: ServerThread | None = None
        self.billing_config = FakeBillingConfig(
            signer_key=LOCAL_BILLING_SIGNER_KEY, chain_id=chain.chain_id,
            escrow=deployment.address("RedemptionEscrow"), balances={BILLING_ACCOUNT: 5 * USD_MICRO},
        )  # fmt: skip
        self.billing = ServerThread(create_fake_billing(self.billing_config)).__enter__()
        self.agent = Agent(
            self.ledger.engine, Web3AgentChain(rpc_url, deployment, LOCAL_AGENT_KEY), HttpBilling(timeout=10),
            self.keys, billing_url=self.billing.url, tx_timeout=30,
        )  # fmt: skip

    def serve(self) -> None:
        """Start the gateway once the lots exist (it loads them as it starts)."""
        self.gateway = ServerThread(create_app(self.settings, ledger=self.ledger)).__enter__()

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.__exit__(None, None, None)
        self.upstream.__exit__(None, None, None)
        self.billing.__exit__(None, None, None)
        self.ledger.close()

    def index(self) -> None:
        self.indexer.catch_up()

    def settle(self):
        report = self.coordinator.run_once()
        self.index()
        return report

    def reconcile(self) -> Report:
        """`promptex reconcile`: every book against the chain at the indexed block."""
        self.index()
        return reconcile_books(self.ledger, Web3ChainView(self.rpc_url, self.deployment, indexed_block(self.ledger)))


def run_demo(network_name: str) -> None:
    admin, seller_a, seller_b, treasury, buyer_1, buyer_2, coordinator, claude_user = accounts.test_accounts[0:8]
    billing_signer = accounts.test_accounts[9].address  # the fake billing API's key (anvil account 9)

    step("Deploy MockUSDC, CreditEscrow, CreditsVault, the CLD/GPT/GEM/LLM tokens and the DEX")
    deployment = deploy_all(
        admin,
        network_name,
        treasury=treasury.address,
        coordinator=coordinator.address,
        billing_signers={"anthropic": billing_signer},
        force=True,
        log=lambda _: None,
    )
    for name, contract in deployment.contracts.items():
        console.print(f"  {name:<14} {contract.address}")

    work = Path(tempfile.mkdtemp(prefix="promptex-demo-"))
    market = Market(deployment, coordinator.private_key, work)
    market.upstream.__enter__()
    console.print(f"  ledger and gateway state in {work}; fake upstream at {market.upstream.url}")
    try:
        request_id = run_market(deployment, market, admin, seller_a, seller_b, treasury, buyer_1, buyer_2)
        redeem_with_agent(deployment, market, claude_user)
        prove_usage(deployment, market, request_id)
        step("promptex reconcile: every balance, exit, claimable, lot and redemption against the chain")
        report = market.reconcile()
        check(report.ok, f"promptex reconcile at the end: {summary(report)}")
    finally:
        market.close()
    console.print("[bold green]demo complete: every number reconciles[/]")


def open_capacity(market: Market, deployment, admin, seller, provider: str, kind: str, face: int, rate_bps: int):
    """A seller's capacity on the one tokenize/list path: terms and bond checked, the key
    verified by a minimal call and sealed, the bond approved with the seller's key, the lot
    opened in the escrow by the attestor (the deployer), routed once the chain has it."""
    seller_chain = SellerChain(
        chain.provider.http_uri, deployment, attestor_key=admin.private_key, seller_key=seller.private_key
    )
    contract_at(deployment, "USDC").mint(seller, seller_chain.min_bond(face), sender=seller)
    capacity = Capacity(
        provider=provider,
        api="anthropic" if provider == "anthropic" else "openai",
        base_url=market.upstream.url + "/v1",
        api_key=f"sk-demo-{seller.address[2:10].lower()}",  # the fake accepts any key
        face_value_usd_micro=face,
        kind=kind,
        rate_bps=rate_bps,
        expires_at=chain.pending_timestamp + 30 * DAY,
        seller=seller.address,
        resale_permitted=True,
    )
    onboarding = Onboarding(
        SellerStore(market.ledger.engine), seller_chain, market.keys, market.catalog,
        posting_margin=market.settings.seller_posting_margin_seconds,
    )  # fmt: skip
    opened = onboarding.add(capacity)
    for line in opened.summary():
        console.print(f"  {line}")
    return opened.chain_lot_id


def run_market(deployment, market: Market, admin, seller_a, seller_b, treasury, buyer_1, buyer_2) -> None:
    usdc, escrow = contract_at(deployment, "USDC"), contract_at(deployment, "CreditEscrow")
    vault, router = contract_at(deployment, "CreditsVault"), contract_at(deployment, "Router")
    cld, gpt = contract_at(deployment, "token:CLD"), contract_at(deployment, "token:GPT")
    ledger, coord = market.ledger, market.coordinator

    step("Seller A tokenizes $10,000 of Anthropic credit (key verified and sealed; bond 10 %, mint fee 0.05 %)")
    lot_a = open_capacity(market, deployment, admin, seller_a, "anthropic", "tokenized", 10_000 * USD_MICRO, 0)
    minted = 10_000 * USD_MICRO * TOKEN_UNIT // cld.face_value_usd_micro()
    fee = escrow.lots(lot_a).capacity - escrow.lots(lot_a).seller_minted
    check(cld.balanceOf(seller_a) + cld.balanceOf(treasury) == minted, "seller CLD + fee == $10,000 ÷ $0.004218")
    check(fee * 10_000 >= minted * 5 and (fee - 1) * 10_000 < minted * 5, "fee is 0.05 % of minted, rounded up")

    step("Seller B lists $5,000 of OpenAI capacity at 60 % of list, for USDC")
    lot_b = open_capacity(market, deployment, admin, seller_b, "openai", "listed", 5_000 * USD_MICRO, 6_000)
    check(gpt.totalSupply() == 0, "a listed lot mints nothing")
    check(usdc.balanceOf(escrow) == escrow.bonds_held(), "escrow holds both bonds")
    show_lots(escrow, {lot_a: ("A", cld), lot_b: ("B", gpt)})

    step("Seller A seeds the CLD/USDC pool (0.30 %) with 2,000,000 CLD at the reference $0.004218")
    usdc.mint(seller_a, 8_436 * USD_MICRO, sender=seller_a)
    pool = create_pool_at_price(
        router, contract_at(deployment, "Factory"), cld, usdc, 2_000_000 * TOKEN_UNIT, 4_218, seller_a
    )
    check(pool.totalSupply() > 0, f"pool {pool.address} holds liquidity")
    contract_at(deployment, "Oracle").update(cld, sender=seller_a)  # the TWAP's first observation

    step("Buyer 1 swaps 100 USDC for CLD through the router (min_out 1 % under the quote) and deposits it")
    usdc.mint(buyer_1, 100 * USD_MICRO, sender=buyer_1)
    usdc.approve(router, 100 * USD_MICRO, sender=buyer_1)
    path, fees = [usdc.address, cld.address], [DEFAULT_FEE]
    quoted = router.get_amounts_out(100 * USD_MICRO, path, fees)[-1]
    router.swap_exact_in(
        100 * USD_MICRO, quoted * 99 // 100, path, fees, buyer_1, chain.pending_timestamp + 600, sender=buyer_1
    )
    cld_in = cld.balanceOf(buyer_1)
    check(cld_in == quoted, f"buyer 1 received the quoted {tokens(quoted)} CLD")
    cld.approve(vault, cld_in, sender=buyer_1)
    vault.deposit(cld, cld_in, sender=buyer_1)

    step("Buyer 2 deposits 100 USDC")
    usdc_in = 100 * USD_MICRO
    usdc.mint(buyer_2, usdc_in, sender=buyer_2)
    usdc.approve(vault, usdc_in, sender=buyer_2)
    vault.deposit(usdc, usdc_in, sender=buyer_2)

    step("Both sign up at the gateway, bind their wallets (EIP-712) and sign spend caps the coordinator registers")
    sign_domain = {"chain_id": chain.chain_id, "vault": vault.address}
    buyers = {}
    for who, symbol, total in ((buyer_1, "CLD", 50_000 * TOKEN_UNIT), (buyer_2, "USDC", 50 * USD_MICRO)):
        new = signup(market.ledger, market.store, chain.pending_timestamp, default_asset=symbol)
        message = ledger.issue_binding_challenge(new.account, who.address)
        ledger.bind_wallet(message, sign(message, who.private_key))
        asset = cld if symbol == "CLD" else usdc
        expiry, nonce = chain.pending_timestamp + DAY, vault.cap_nonce(who, asset)
        cap = {"account": who.address, "asset": asset.address, "per_epoch": UNLIMITED, "total": total}
        signature = sign_spend_cap(who.private_key, **sign_domain, **cap, expiry=expiry, nonce=nonce)
        coord.submit_spend_cap(who.address, symbol, UNLIMITED, total, expiry, nonce, signature)
        buyers[who.address] = (new, symbol, asset)
    market.settle()
    check(vault.spend_cap(buyer_1, cld)[1] == 50_000 * TOKEN_UNIT, "buyer 1 may be charged at most 50,000 CLD")
    check(vault.spend_cap(buyer_2, usdc)[1] == 50 * USD_MICRO, "buyer 2 may be charged at most 50 USDC")
    reconcile(market, vault, buyers, "the indexer credited both deposits: ledger == vault")

    market.serve()
    step(f"The gateway serves {market.gateway.url}/v1 — buyers call it with the unmodified openai SDK")
    account_1, _, _ = buyers[buyer_1.address]
    account_2, _, _ = buyers[buyer_2.address]
    client_1 = openai.OpenAI(base_url=market.gateway.url + "/v1", api_key=account_1.key, max_retries=0)
    client_2 = openai.OpenAI(base_url=market.gateway.url + "/v1", api_key=account_2.key, max_retries=0)
    before_1 = ledger.balance(account_1.account, "CLD").posted
    before_2 = ledger.balance(account_2.account, "USDC").posted

    calls = []  # (request id, usage) per call
    raw = client_1.chat.completions.with_raw_response.create(model="claude-sonnet-4-5", messages=PROMPT, max_tokens=400)
    completion = raw.parse()
    calls.append(("buyer 1", "claude-sonnet-4-5", raw.headers["x-request-id"], completion.usage, False))
    with client_1.chat.completions.with_streaming_response.create(
        model="claude-sonnet-4-5", messages=PROMPT, max_tokens=400, stream=True, stream_options={"include_usage": True}
    ) as response:
        chunks = list(response.parse())
        usage = next(c.usage for c in reversed(chunks) if c.usage is not None)
        calls.append(("buyer 1", "claude-sonnet-4-5", response.headers["x-request-id"], usage, True))
    raw = client_2.chat.completions.with_raw_response.create(model="gpt-4o", messages=PROMPT, max_tokens=400)
    calls.append(("buyer 2", "gpt-4o", raw.headers["x-request-id"], raw.parse().usage, False))

    fee_bps = market.settings.protocol_fee_bps
    claude, gpt_price = market.catalog.price("claude-sonnet-4-5"), market.catalog.price("gpt-4o")
    table = Table(title="Calls through the gateway")
    for col in ("buyer", "model", "stream", "in", "out", "cost"):
        table.add_column(col, justify="right")
    claude_total = gpt_total = 0
    list_value_b = 0
    for who, model, _rid, use, streamed in calls:
        if model == "gpt-4o":
            cost = message_cost(usdc_rates(gpt_price, escrow.lots(lot_b).rate_bps, fee_bps), *tokens_of(use))
            gpt_total += cost
            list_value_b += message_cost(usdc_rates(gpt_price, 10_000, 0), *tokens_of(use))
            shown = f"{usd(cost)} USDC"
        else:
            cost = message_cost(provider_token_rates(claude), *tokens_of(use))
            claude_total += cost
            shown = f"{tokens(cost)} CLD"
        streamed_text = "yes" if streamed else "no"
        table.add_row(who, model, streamed_text, str(use.prompt_tokens), str(use.completion_tokens), shown)
    console.print(table)
    # The vault draws lot B by the list value it served; the escrow pays seller B its rate of that.
    seller_b_share = list_value_b * escrow.lots(lot_b).rate_bps // 10_000
    spent_1 = before_1 - ledger.balance(account_1.account, "CLD").posted
    spent_2 = before_2 - ledger.balance(account_2.account, "USDC").posted
    check(spent_1 == claude_total, "buyer 1 charged exactly the meter")
    check(spent_2 == gpt_total, "buyer 2 charged exactly the meter")

    step("The coordinator settles the epoch on-chain: one batch per asset with the usage records' Merkle root")
    supply, reserve = cld.totalSupply(), vault.reserve(usdc)
    report = market.settle()
    if len(report.confirmed) < 2:  # a batch still waiting for its receipt
        report = market.settle()
    check(cld.totalSupply() == supply - claude_total, "CLD supply fell by exactly the metered cost (burned)")
    check(escrow.lots(lot_a).consumed == claude_total, "lot A drawn down by the CLD burned")
    check(vault.claimable(seller_b, usdc) == seller_b_share, "seller B credited its rate's share")
    check(vault.reserve(usdc) - reserve == gpt_total - seller_b_share, "protocol fee kept in the vault's reserve")
    check(escrow.lots(lot_b).consumed == list_value_b, "lot B drawn down by the list value it served, in the same call")
    reconcile(market, vault, buyers, "after settlement: ledger == vault for both buyers")

    step("Seller B claims its USDC")
    before = usdc.balanceOf(seller_b)
    vault.claim(usdc, sender=seller_b)
    check(usdc.balanceOf(seller_b) - before == seller_b_share, "seller B received its earnings")

    step("Buyer 1 sells its unused CLD for USDC inside the vault, then withdraws (coordinator-signed releases)")
    unused = int(vault.balance_of(buyer_1, cld))
    quoted = int(router.get_amounts_out(unused, [cld.address, usdc.address], [DEFAULT_FEE])[-1])
    release = coord.sign_release(buyer_1.address, "CLD", unused)
    signature = bytes.fromhex(release.signature[2:])
    vault.exit_instant(cld, unused, quoted * 99 // 100, release.nonce, release.expiry, signature, sender=buyer_1)
    check(vault.balance_of(buyer_1, usdc) == quoted, f"the quoted {usd(quoted)} USDC landed in buyer 1's vault balance")
    market.settle()  # the coordinator sees its release used; the indexer books the sale
    release = coord.sign_release(buyer_1.address, "USDC", quoted)
    signature = bytes.fromhex(release.signature[2:])
    vault.exit_instant(usdc, quoted, 0, release.nonce, release.expiry, signature, sender=buyer_1)
    check(usdc.balanceOf(buyer_1) == quoted, "buyer 1 holds its USDC")
    market.settle()

    step(f"Buyer 2 leaves through the trustless path (thaw {vault.thaw_period()} s, no one's consent)")
    left = int(vault.balance_of(buyer_2, usdc))
    vault.request_exit(usdc, left, sender=buyer_2)
    market.index()
    check(ledger.balance(account_2.account, "USDC").locked == left, "the exit is unspendable in the ledger at once")
    chain.pending_timestamp += vault.thaw_period()
    vault.complete_exit(usdc, 0, False, sender=buyer_2)
    check(usdc.balanceOf(buyer_2) == usdc_in - gpt_total, "buyer 2 got back everything not spent")
    market.settle()
    reconcile(market, vault, buyers, "after every exit: ledger == vault for both buyers")
    check(usdc.balanceOf(vault) == vault.reserve(usdc), "the vault's USDC is exactly its reserve")
    check(not ledger.problems(), "the ledger's double-entry checks pass")

    final = Table(title="After the epoch")
    for col in ("account", "vault CLD", "vault USDC", "wallet USDC"):
        final.add_column(col, justify="right")
    for label, who in (("buyer 1", buyer_1), ("buyer 2", buyer_2), ("seller B", seller_b)):
        final.add_row(
            label, tokens(vault.balance_of(who, cld)), usd(vault.balance_of(who, usdc)), usd(usdc.balanceOf(who))
        )
    console.print(final)
    _who, _model, request_id, _use, _ = calls[1]
    return request_id


def redeem_with_agent(deployment, market: Market, user) -> None:
    usdc, cld, router = (contract_at(deployment, n) for n in ("USDC", "token:CLD", "Router"))
    escrow = contract_at(deployment, "RedemptionEscrow")
    agent, billing = market.agent, market.billing_config
    operator = agent.chain.sender  # the agent's operator is reimbursed in USDC

    step("A Claude user buys 100 USDC of CLD, grants the redemption agent and links its Anthropic account")
    # Ten minutes later: the escrow prices its slippage bound on a 600-s TWAP, now covered.
    chain.pending_timestamp += 700
    usdc.mint(user, 100 * USD_MICRO, sender=user)
    usdc.approve(router, 100 * USD_MICRO, sender=user)
    path, fees = [usdc.address, cld.address], [DEFAULT_FEE]
    router.swap_exact_in(100 * USD_MICRO, 0, path, fees, user, chain.pending_timestamp + 600, sender=user)
    held = int(cld.balanceOf(user))
    account = agent.link_account(user.address, "anthropic", BILLING_ACCOUNT, "scoped-billing-credential")
    escrow.link_account(provider_id("anthropic"), account.account_ref, sender=user)
    expiry = chain.pending_timestamp + DAY
    escrow.set_grant(operator, operator, expiry, 500, [cld], [held], sender=user)  # ≤ 5 % under the TWAP
    cld.approve(escrow, held, sender=user)
    rule = agent.add_rule(user.address, "anthropic", "CLD", 20 * USD_MICRO, 20 * USD_MICRO, held)
    console.print(f"  grant: agent {operator}, up to {tokens(held)} CLD a day, 5 % slippage against the TWAP")
    console.print(
        f"  rule {rule.id}: when the Anthropic balance is under $20, add $20 (balance now {usd(5 * USD_MICRO)})"
    )

    step("The agent's pass: the rule fires, CLD is sold into the escrow, credits bought, USDC released")
    operator_before, escrow_before = usdc.balanceOf(operator), usdc.balanceOf(escrow)
    report = agent.run_once(check_rules=True)
    if not report.fired:
        raise click.ClickException(f"the rule did not fire: {report.skipped}")
    [redemption] = agent.store.redemptions()
    check(report.fired == [rule.id] and redemption.status == RELEASED, f"rule fired; redemption {redemption.status}")
    check(billing.balances[BILLING_ACCOUNT] == 25 * USD_MICRO, "the Anthropic account was topped up to $25")
    on_chain = escrow.redemptions(redemption.chain_redemption_id)
    check(on_chain.status == STATUS_RELEASED, "the escrow released against the billing signer's EIP-712 receipt")
    check(usdc.balanceOf(operator) - operator_before == 20 * USD_MICRO, "the agent's operator was reimbursed $20")
    check(usdc.balanceOf(escrow) == escrow_before, "the escrow holds no USDC for it any more")
    sold = held - cld.balanceOf(user)
    ref = (redemption.billing_ref or b"").hex()[:16]
    console.print(f"  sold {tokens(sold)} CLD for $20 of Anthropic credit (billing ref 0x{ref}…)")


def prove_usage(deployment, market: Market, request_id: str) -> None:
    step("Anyone can prove a usage record against the root the vault holds on-chain")
    vault, cld = contract_at(deployment, "CreditsVault"), contract_at(deployment, "token:CLD")
    proof = build_proof(CoordinatorStore(market.ledger.engine), request_id)
    root = vault.usage_roots(cld, proof["epoch"])
    path_hashes = [bytes.fromhex(p[2:]) for p in proof["proof"]]
    check(
        verify(path_hashes, bytes(root), bytes.fromhex(proof["leaf"][2:])),
        f"record {request_id} proves into CLD epoch {proof['epoch']}'s root {root.hex()[:18]}…",
    )


def tokens_of(usage) -> tuple[int, int]:
    return usage.prompt_tokens, usage.completion_tokens


def reconcile(market: Market, vault, buyers, what: str) -> None:
    """The buyers' balances checked by hand, then every book by `promptex reconcile`: any
    difference must be explained by named records (unsettled requests, debts, claims)."""
    ok = all(
        market.ledger.balance(new.account, symbol).posted == vault.balance_of(address, asset)
        for address, (new, symbol, asset) in buyers.items()
    )
    check(ok, what)
    report = market.reconcile()
    check(report.ok and report.block >= 0, f"promptex reconcile: {summary(report)}")


def show_lots(escrow, lots) -> None:
    table = Table(title="Lots in CreditEscrow")
    for col in ("lot", "seller", "provider", "kind", "face value", "capacity", "bond", "rate"):
        table.add_column(col)
    for lot_id, (seller, token) in lots.items():
        lot = escrow.lots(lot_id)
        tokenized = lot.kind == KIND_TOKENIZED
        table.add_row(
            str(lot_id),
            seller,
            token.provider_name(),
            "tokenized" if tokenized else "listed",
            usd(lot.face_value),
            f"{tokens(lot.capacity)} {token.symbol()}" if tokenized else usd(lot.capacity),
            usd(lot.bond),
            "—" if tokenized else f"{lot.rate_bps / 100:.0f} % of list",
        )
    console.print(table)
