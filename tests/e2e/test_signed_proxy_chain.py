"""Issue 23's proof on chain: the openai SDK through a `promptex proxy` process, to a
`promptex gateway serve` process, with the indexer and the coordinator running against
anvil and the vault deployed as `promptex up` deploys it. The wallet signs its SessionKey,
the coordinator relays it on chain, the indexer records it; many requests over several
lanes, and SIGKILLs of the proxy and of the gateway at random points (seeded;
PROMPTEX_SIGNED_CHAIN_SEED replays). Then, once the coordinator has settled every lane
with `settle_signed`, against the fake upstream's own log: Σ settled on chain ≤ Σ true
cost + one hold per lane, and every lane's settled total is covered by a voucher on the
buyer's disk. CI: 120 requests, 3 kills; HYPOTHESIS_PROFILE=deep: 1,000 and 12.

PROMPTEX_SIGNED_CHAIN_WORKERS=N (N > 1; opt-in, not in CI): the ledger on PostgreSQL and
`gateway serve --workers N`; the kills then also hit single workers (SIGKILL: its parent
starts it again and ends its holds, the other workers' sweeps too) besides the whole command
(its workers finish their requests) and the proxy."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
from eth_account import Account
from market_stack import Services, deployed_market
from sqlalchemy import func, select

from polling import until
from promptex import metering
from promptex.buyerside.opening import log_path
from promptex.buyerside.sessions import new_grant, save
from promptex.config import Settings
from promptex.coordinator.store import CoordinatorStore
from promptex.fakes import FakeUpstreamConfig, create_fake_upstream
from promptex.gateway.keys import hash_key, new_api_key
from promptex.gateway.store import GatewayStore
from promptex.ledger import Ledger
from promptex.ledger.binding import sign
from promptex.ledger.local_postgres import LocalPostgres
from promptex.ledger.schema import holds
from promptex.serving import ServerThread, free_port
from signed_traffic import CLI, Process, Served, drive, logged_vouchers, most_held, proxy_process

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
REQUESTS = 1_000 if DEEP else 120
KILLS = 12 if DEEP else 3
WORKERS = int(os.environ.get("PROMPTEX_SIGNED_CHAIN_WORKERS") or 1)
LANES = 3
MODEL = "fake-gpt"
RATE_BPS = 6_000
USD = 10**6


class _Worker:
    """A victim for `drive`: one worker of a `--workers` gateway, SIGKILLed; its parent
    starts another in its place (`start` waits for it, and for the gateway to answer)."""

    def __init__(self, gateway: Process, rng: random.Random) -> None:
        self.gateway, self.rng = gateway, rng
        self.up = threading.Event()
        self.up.set()
        self.kills = 0

    def _workers(self) -> list[int]:
        proc = self.gateway.proc
        if proc is None or proc.poll() is not None:
            return []
        with contextlib.suppress(FileNotFoundError):
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            return sorted(int(pid) for pid in children)
        return []

    def kill(self) -> None:
        workers = self._workers()
        if len(workers) == WORKERS:
            self.up.clear()
            os.kill(self.rng.choice(workers), signal.SIGKILL)
            self.kills += 1

    def start(self) -> None:
        until(lambda: len(self._workers()) == WORKERS or not self._workers(), "the parent started a worker again", 60)
        self.up.set()


def test_signed_mode_on_chain__proxy_and_gateway_sigkilled__settled_within_true_cost_plus_a_hold_per_lane(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("PROMPTEX_SIGNED_CHAIN_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    upstream = Served(create_fake_upstream(FakeUpstreamConfig(latency_ms=20)))
    with contextlib.ExitStack() as stack:
        chain = stack.enter_context(deployed_market(tmp_path))
        fake_server = stack.enter_context(ServerThread(upstream))
        fake = SimpleNamespace(url=fake_server.url + "/v1")
        services = Services(chain, tmp_path, fake)  # type: ignore[arg-type]
        serve = [*CLI, "gateway", "serve", "--port", str(services.gateway_port)]
        if WORKERS > 1:  # a PostgreSQL server of its own (not the session's fixture: ape's teardown)
            postgres = LocalPostgres().start()
            stack.callback(postgres.stop)
            services.ledger_url = postgres.create_database("signed_chain")  # migrated by Ledger.open below
            services.env["PROMPTEX_LEDGER_URL"] = services.ledger_url
            serve += ["--workers", str(WORKERS)]
        ledger = Ledger.open(services.ledger_url, sqlite_synchronous="NORMAL")
        vault, usdc, escrow = chain.contract("CreditsVault"), chain.asset("USDC"), chain.contract("CreditEscrow")
        gateway = Process(serve, services.env, services.gateway_port, "/healthz", tmp_path / "gateway.out")
        # With workers, a kill hits a single worker three times in five (the proxy and the whole
        # command one each): a killed worker's holds are a dead process's, which the parent and
        # the other workers' sweeps end (orphaned) while the lane's next request is signed.
        worker = _Worker(gateway, rng)
        victims: list[Process | _Worker] = [gateway] if WORKERS == 1 else [gateway, worker, worker, worker]
        proxy = None
        try:
            services.start("indexer")
            until(lambda: ledger.chain_identity() is not None, "the indexer adopted the chain", 120)
            services.start("coordinator")
            gateway.start()

            # A listed lot, as `promptex seller add-capacity` opens it.
            seller = chain.wallet()
            bond = -(-100 * USD * escrow.functions.min_bond_bps().call() // 10_000)
            chain.send(seller, usdc.functions.mint(seller.address, bond))
            chain.send(seller, usdc.functions.approve(escrow.address, bond))  # exactly the bond: the escrow asks so
            code, output = services.cli(
                "seller", "add-capacity", "--provider", "openai", "--base-url", fake.url, "--api-key", "sk-fake",
                "--face-value", "100", "--kind", "listed", "--rate", str(RATE_BPS / 10_000), "--expires", "30d",
                "--seller-address", seller.address, "--bond", f"{bond / USD:.6f}", "--declare-resale-permitted",
            )  # fmt: skip
            assert code == 0, output

            # The buyer: deposits, binds its wallet to an account with an API key, signs a SessionKey.
            wallet = chain.wallet()
            chain.send(wallet, usdc.functions.mint(wallet.address, 100 * USD))
            chain.send(wallet, usdc.functions.approve(vault.address, 100 * USD))
            chain.send(wallet, vault.functions.deposit(usdc.address, 100 * USD))
            account = ledger.create_account().id
            message = ledger.issue_binding_challenge(account, wallet.address)
            ledger.bind_wallet(message, sign(message, wallet.key))
            api_key = new_api_key()
            GatewayStore(ledger.engine).add_api_key(hash_key(api_key), api_key[:10], account, chain.now())
            grant = new_grant(
                lambda typed: bytes(Account.sign_typed_data(wallet.key, full_message=typed).signature),
                chain_id=chain.w3.eth.chain_id, vault=vault.address, account=wallet.address, asset=usdc.address,
                asset_symbol="USDC", lanes=LANES, maximum=50 * USD, expiry=chain.now() + 86_400,
                nonce=vault.functions.session_nonce(wallet.address, usdc.address).call(),
            )  # fmt: skip
            save(grant, tmp_path / "session.json")
            grant.relay(CoordinatorStore(ledger.engine), int(time.time()))  # what `promptex session create` does
            until(lambda: vault.functions.session_key(wallet.address, usdc.address).call()[0] == grant.key,
                  "the coordinator registered the session key", 120)  # fmt: skip
            until(lambda: ledger.session(account, "USDC") is not None, "the indexer recorded the session", 120)
            on_chain = vault.functions.session_key(wallet.address, usdc.address).call()
            # The indexer read the vault's epoch clock: the session's last settlement second is the vault's.
            assert ledger.session(account, "USDC").settles_until == on_chain[6]  # type: ignore[union-attr]
            signed_from = on_chain[7]
            epoch = vault.functions.epoch_length().call()
            until(lambda: chain.now() // epoch >= signed_from, "the session's first signed window", 120)

            proxy = proxy_process(gateway.url, api_key, tmp_path / "session.json", services.env, free_port(),
                                  tmp_path / "proxy.out")  # fmt: skip
            proxy.start()
            answered = drive(proxy, victims, model=MODEL, requests=REQUESTS, kills=KILLS, clients=4, rng=rng)  # type: ignore[arg-type]
            status = httpx.get(proxy.url + "/promptex/status", timeout=10).json()

            def settled() -> list[int]:
                return [vault.functions.lane_settled(wallet.address, usdc.address, i).call() for i in range(LANES)]

            seen: list[list[int]] = []

            def settled_all() -> bool:
                chain.advance(epoch)  # the chain's clock moves only with blocks: close the window
                seen[:] = [settled()]
                return seen[0] == charged

            by_lane = {lane.lane: lane.charged for lane in ledger.lanes(account, "USDC")[1]}
            charged = [by_lane.get(i, 0) for i in range(LANES)]
            try:
                until(settled_all, f"the coordinator settled every lane ({charged})", 180, every=0.5)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; on chain {seen}") from None
            on_chain = settled()
            kills = (proxy.kills, gateway.kills, worker.kills)
            with ledger.engine.connect() as conn:
                holds_seen = dict(
                    conn.execute(select(holds.c.status, func.count()).group_by(holds.c.status)).tuples().all()
                )
        finally:
            if proxy is not None:
                proxy.kill()
            gateway.kill()
            services.stop_all()
            ledger.close()
    assert answered >= REQUESTS and status["stopped"] is None, f"seed {seed}: {status['stopped']}"
    rates = metering.rates_for(
        metering.load_catalog(Path(services.env["PROMPTEX_MODEL_CATALOG"])).price(MODEL), "USDC", lot_rate_bps=RATE_BPS,
        fee_bps=Settings().protocol_fee_bps,
    )  # fmt: skip
    true_cost, held = upstream.true_cost(rates), most_held(rates)
    assert sum(on_chain) <= true_cost + LANES * held, f"seed {seed}"
    logged = logged_vouchers(log_path(tmp_path, grant))
    for lane, total in enumerate(on_chain):  # each settled debit within a voucher the buyer signed
        assert total <= max((c for at, c, _sig in logged if at == lane), default=0), f"seed {seed}"
    print(f"seed {seed}: {answered} answered, {len(upstream.usages)} served, true cost {true_cost}, "
          f"settled on chain {sum(on_chain)}, at most {LANES} × {held} above; kills (proxy, gateway, "
          f"worker): {kills}; holds {holds_seen}")  # fmt: skip
