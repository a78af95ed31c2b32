"""`promptex up`'s market state: anvil keeps its chain in the market's folder, and
`--fresh` archives the folder, the SQLite ledger (with its WAL files) and the deployment
record before starting clean (a PostgreSQL ledger is refused: nothing to move); a restarted
chain's clock goes on from its last block; lost blocks are named; one `up` per folder."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from promptex.ledger import Ledger
from promptex.up import (
    ANVIL_STATE,
    DEMO_SELLERS,
    Service,
    Supervisor,
    UpError,
    anvil_state_args,
    archive_market,
    chain_behind_ledger,
    check_ports_free,
    closing_panel,
    demo_finalizers,
    demo_lots_open,
    hold_market,
    live_escrow,
    restore_treasury,
    resume_chain_clock,
    state_dumped_at,
    twap_history_recorded,
)

NOW = datetime(2026, 12, 6, 13, 45, 7, tzinfo=UTC)


def test_anvil_state_args__load_dump_and_keep_history_in_the_folder(tmp_path: Path) -> None:
    args = anvil_state_args(tmp_path / "market", 10)
    assert args == ["--state", str(tmp_path / "market" / ANVIL_STATE), "--state-interval", "10",
                    "--preserve-historical-states"]  # fmt: skip
    assert (tmp_path / "market").is_dir()


def _latest(url: str) -> tuple[int, int]:
    from anvil_node import rpc

    block = rpc(url, "eth_getBlockByNumber", "latest", False)
    assert isinstance(block, dict)
    return int(block["number"], 16), int(block["timestamp"], 16)


def test_resume_chain_clock__a_restarted_chain_goes_on_from_its_last_block_not_a_day_before(tmp_path: Path) -> None:
    """anvil keeps no clock offset in its state: after the day of TWAP history a new market
    seeds (its clock moved a day ahead), every restart's next block was stamped a day BEFORE
    the last one, and the vault refused every settlement for that day ("epoch window already
    settled"). `up` now sets the clock to go on from the last block, the time it was down added."""
    from anvil_node import rpc, running_anvil

    market = tmp_path / "market"
    state = anvil_state_args(market, 10)
    assert state_dumped_at(market) is None  # a new market: nothing to resume
    with running_anvil(*state) as url:
        assert resume_chain_clock(url, time.time(), time.time() + 2) is None  # the wall clock is past it: left alone
        rpc(url, "evm_increaseTime", 86_400)
        rpc(url, "evm_mine")
        block, last = _latest(url)
    dumped_at = state_dumped_at(market)  # stopped: anvil dumped its chain
    assert dumped_at is not None
    with running_anvil(*state) as url:
        assert _latest(url) == (block, last)  # the same chain
        down = 120.0  # as if it had been down two minutes
        resumed = resume_chain_clock(url, dumped_at - down, dumped_at)
        assert resumed is not None and resumed >= last + down
        rpc(url, "evm_mine")
        assert _latest(url)[1] >= resumed > last  # (before: about `last` − 86,400)


def test_resume_chain_clock__a_market_stopped_before_its_twap_history__goes_on_a_day_behind_not_at_the_wall_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new market's chain starts a day back (`genesis_args`) so the day of TWAP history it
    seeds brings it to the wall clock. A first `up` stopped before that history (Ctrl-C or a
    failure in the deploy or the seeding: anvil dumps its chain) restarted the chain with its
    next block at the wall clock's time (anvil keeps no offset; the wall clock is past the
    last block, so nothing was set), and the history it then seeded left the chain a day
    AHEAD for good (measured with anvil: +86,399 s). With its history to come, the clock
    goes on from the last block plus the time it was down, behind the wall clock."""
    import promptex.chain.node as node

    started = 1_796_600_000  # the first `up`, its chain's genesis a day back
    last = started - 86_400 + 40  # the deploy's last block, 40 s in
    dumped_at = started + 50  # stopped 10 s later (anvil dumps its chain)
    wall = dumped_at + 3_600  # restarted an hour later
    set_to: list[object] = []

    class Node:
        class eth:  # noqa: N801
            @staticmethod
            def get_block(which: str) -> dict[str, int]:
                return {"timestamp": last}

        class provider:  # noqa: N801
            @staticmethod
            def make_request(method: str, params: list[object]) -> None:
                set_to.append((method, params))

    monkeypatch.setattr(node, "connect", lambda url, timeout: Node)
    assert resume_chain_clock("http://node", dumped_at, wall) is None  # a ready market: left to the wall clock
    assert set_to == []
    resumed = resume_chain_clock("http://node", dumped_at, wall, history_to_come=True)
    assert resumed == last + 3_600  # the time it was down added: a day (and 10 s) behind the wall clock
    assert set_to == [("evm_setTime", [resumed])]
    assert wall - 60 < resumed + 86_400 <= wall  # the history (a day) brings it to the wall clock, not a day past it


def test_start_chain__a_state_file_cut_short__one_line_left_as_it_is_and_the_copy_that_loaded_gets_the_chain_back(
    tmp_path: Path,
) -> None:
    """anvil rewrites its state file in place every few seconds: a power loss or anvil killed
    mid-write left it cut short, anvil refused it ("anvil exited with code 2 while starting"),
    and `up` knew only `--fresh` — the chain and every balance on it gone. Now one line says so,
    the file is left as it is, and the copy of the file the last `up` started from loads."""
    from anvil_node import free_port, rpc, running_anvil
    from promptex.up import LOADED_STATE, anvil_binary, rpc_answers, start_chain

    market = tmp_path / "market"
    state, loaded = market / ANVIL_STATE, market / LOADED_STATE

    def chain() -> tuple[Supervisor, str]:
        url = f"http://127.0.0.1:{free_port()}"
        argv = [anvil_binary(), "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--silent",
                *anvil_state_args(market, 3_600)]  # fmt: skip
        supervisor = Supervisor(dict(os.environ))
        start_chain(supervisor, Service("anvil", argv, url=url, ready=lambda: rpc_answers(url)), market)
        return supervisor, url

    with running_anvil(*anvil_state_args(market, 3_600)) as url:
        for _ in range(3):
            rpc(url, "evm_mine")
    supervisor, url = chain()  # the market's `up`: it keeps a copy of the file anvil loaded
    try:
        assert _latest(url)[0] == 3 and loaded.read_bytes() == state.read_bytes()
        rpc(url, "evm_mine")
        rpc(url, "evm_mine")
    finally:
        supervisor.stop_all()  # dumps: 5 blocks
    cut = state.read_bytes()[: state.stat().st_size // 2]  # anvil killed, or the power lost, mid-write
    state.write_bytes(cut)
    with pytest.raises(UpError) as refused:
        chain()
    line = str(refused.value)
    assert line.startswith(f"anvil cannot load the market's chain {state} (error: ") and "\n" not in line, line
    assert f"and is left as it is; go back to the chain the last `promptex up` started from: mv {loaded} {state}" \
        in line, line  # fmt: skip
    assert state.read_bytes() == cut and loaded.exists()
    os.replace(loaded, state)  # as the line says
    supervisor, url = chain()
    try:
        assert _latest(url)[0] == 3  # the chain back as the last `up` found it
    finally:
        supervisor.stop_all()


def test_start_chain__a_whole_state_file_anvil_cannot_load__not_said_to_be_cut_short(tmp_path: Path) -> None:
    """wbreak s15: a state file anvil refuses though it is whole JSON (another anvil version's
    format after an upgrade, or a file that is not anvil's) was said to be "cut short while
    anvil wrote it (a power loss, or anvil killed)". Its own cause now; cut short stays for
    a file that ends early (serde's "EOF while parsing")."""
    from anvil_node import free_port
    from promptex.up import anvil_binary, rpc_answers, start_chain

    market = tmp_path / "market"
    market.mkdir()
    (market / ANVIL_STATE).write_text('{"accounts": {}}')
    url = f"http://127.0.0.1:{free_port()}"
    argv = [anvil_binary(), "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--silent",
            *anvil_state_args(market, 3_600)]  # fmt: skip
    supervisor = Supervisor(dict(os.environ))
    try:
        with pytest.raises(UpError) as refused:
            start_chain(supervisor, Service("anvil", argv, url=url, ready=lambda: rpc_answers(url)), market)
    finally:
        supervisor.stop_all()
    line = str(refused.value)
    assert "cut short" not in line and "the file is whole but no chain this anvil loads" in line, line
    assert "\n" not in line and (market / ANVIL_STATE).read_text() == '{"accounts": {}}'


def test_start_chain__the_state_file_gone_and_its_loaded_copy_there__refused_before_a_new_chain_starts(
    tmp_path: Path,
) -> None:
    """wbreak s15: the market's state file removed by hand (the copy the last `up` started
    from kept): anvil started a new chain, dumped it over nothing at its stop, and every
    later `up` loaded that one while the ledger's chain check sent to --fresh; the market's
    chain was left in the copy, unnamed. Now one line names the copy, nothing started."""
    from promptex.up import LOADED_STATE, start_chain

    market = tmp_path / "market"
    market.mkdir()
    (market / LOADED_STATE).write_text("{}")
    supervisor = Supervisor(dict(os.environ))
    chain = Service("anvil", [sys.executable, "-c", "import time; time.sleep(30)"], ready=lambda: True)
    try:
        with pytest.raises(UpError) as refused:
            start_chain(supervisor, chain, market)
    finally:
        supervisor.stop_all()
    line = str(refused.value)
    assert f"go on from it with mv {market / LOADED_STATE} {market / ANVIL_STATE}" in line and "\n" not in line
    assert chain.process is None and not (market / ANVIL_STATE).exists()


def test_chain_behind_ledger__blocks_the_ledger_indexed_lost_with_the_last_dump__said_in_one_line(
    sqlite_ledger: Ledger,
) -> None:
    """A power loss (or anvil killed -9) loses the blocks after anvil's last state dump,
    which the ledger may have indexed: the indexer then rewinds them as a reorg, undoing
    the user's last deposits on the books, and `up` said nothing. It now says which blocks
    were lost, that the indexer undoes them, and what to do."""
    from anvil_node import rpc, running_anvil
    from promptex.indexer import store
    from promptex.indexer.rpc import Header

    with running_anvil() as url:
        dumped = rpc(url, "evm_snapshot")  # what the last dump kept: block 0
        for _ in range(4):
            rpc(url, "evm_mine")
        blocks = [rpc(url, "eth_getBlockByNumber", hex(n), False) for n in range(5)]
        headers = [Header(int(b["number"], 16), b["hash"], b["parentHash"]) for b in blocks]  # type: ignore[index]

        def indexed(facts: Any) -> None:
            store.create_cursor(facts.conn, 31337, 0, facts.now)
            store.save_blocks(facts.conn, headers, 100)
            store.move_cursor(facts.conn, 4, headers[4].hash, facts.now)

        sqlite_ledger.apply_chain_facts(indexed)
        assert chain_behind_ledger(url, sqlite_ledger) is None  # the chain has every block it indexed
        rpc(url, "evm_revert", dumped)  # anvil restarted from its last dump: block 0
        rpc(url, "evm_setNextBlockTimestamp", int(blocks[4]["timestamp"], 16) + 60)  # type: ignore[index]
        rpc(url, "evm_mine")  # and went on: block 1 is another block now
        said = chain_behind_ledger(url, sqlite_ledger)
    assert said is not None and said.startswith("the chain lost blocks 1..4 that the ledger indexed (0 events)")
    assert "The indexer rewinds them as a reorg" in said and "send again what they did" in said


def test_demo_lots_open__a_restart_opens_only_the_demo_lots_the_chain_lacks(seeded_anvil: tuple[str, Path]) -> None:
    """Ctrl-C while the demo lots open (they open in `up`'s process, to their end) or a crash
    before the market was recorded ready: the next `up` opened all eight again, with their
    bonds (16 demo lots). It now opens only those the chain does not have open by their
    demo seller: here the tokenized CLD lot is kept; the seeded market maker's lots are no
    demo lot."""
    from promptex.chain.deployments import load_deployment
    from promptex.chain.node import connect, deployed_contract
    from promptex.protocol.escrow import KIND_TOKENIZED
    from promptex.protocol.units import USD_MICRO
    from promptex.ready import approve_bond, bond_for

    url, root = seeded_anvil
    deployment = load_deployment("local", root)
    assert demo_lots_open(url, deployment) == set()
    w3 = connect(url)
    escrow = deployed_contract(w3, deployment, "CreditEscrow")
    seller, cld, face = DEMO_SELLERS["tokenized"], deployment.address("token:CLD"), 500 * USD_MICRO
    bond = bond_for(url, deployment, seller, face, 1, cld)
    approve_bond(url, deployment, seller, bond)
    expiry = int(w3.eth.get_block("latest")["timestamp"]) + 30 * 86_400
    sent = escrow.functions.open_lot(seller, cld, KIND_TOKENIZED, face, expiry, bond, b"\x01" * 32, 0).transact(
        {"from": w3.eth.accounts[0], "gas": 3_000_000}  # the deployer: an attestor
    )
    assert w3.eth.wait_for_transaction_receipt(sent, timeout=30)["status"] == 1
    assert demo_lots_open(url, deployment) == {("anthropic", "tokenized")}


def test_demo_lots_wanted__a_ledger_with_no_lot_under_a_market_made_ready__every_demo_lot_opened_for_it(
    seeded_anvil: tuple[str, Path],
) -> None:
    """wbreak s15: a market folder kept while its ledger changed (a new PROMPTEX_LEDGER_URL,
    or the database deleted): `make_ready` made the demo accounts and key again on the new
    ledger, but the demo lots were opened only on a new market (no ready.json), and then
    only those the chain lacked: the new ledger's gateway had no lot, and the panel's key
    got "no capacity" for every model. A ledger with no lot gets every demo lot; the
    market's own ledger none on a restart (a demo lot its seller closed stays closed), and
    on a new market those the chain does not have open."""
    from promptex.chain.deployments import load_deployment
    from promptex.up import demo_lots_wanted

    url, root = seeded_anvil
    deployment = load_deployment("local", root)
    every = [(provider, kind) for provider in ("anthropic", "openai", "google", "meta")
             for kind in ("tokenized", "listed")]  # fmt: skip
    assert demo_lots_wanted(url, deployment, new_market=False, ledger_lots=0) == every
    assert demo_lots_wanted(url, deployment, new_market=False, ledger_lots=3) == []
    already = demo_lots_open(url, deployment)
    assert demo_lots_wanted(url, deployment, new_market=True, ledger_lots=1) == [
        lot for lot in every if lot not in already
    ]


def test_live_escrow__a_deployment_only_partly_on_the_chain__one_line_says_to_start_fresh(
    seeded_anvil: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """anvil's last dump came while the deploy ran; a power loss after the deploy recorded
    it lost the rest: the escrow had code, so `up` (like `deploy --keep-existing`) kept the
    deployment and then failed with a traceback reading a pool from a factory that is not
    there, at every start. It now says so in one line and how to go on."""
    from anvil_node import rpc
    from promptex.chain.deployments import load_deployment
    from promptex.config import settings

    url, root = seeded_anvil
    monkeypatch.setenv("PROMPTEX_DEPLOYMENTS_DIR", str(root))
    settings.cache_clear()  # settings are cached per process; this test's environment counts
    deployment = load_deployment("local", root)
    before = rpc(url, "evm_snapshot")
    try:
        assert live_escrow(url, "local") == deployment.address("CreditEscrow")  # all there: kept
        rpc(url, "anvil_setCode", deployment.address("Factory"), "0x")  # not in the last dump
        with pytest.raises(UpError, match=r"only partly on this chain \(Factory: no code; .*--fresh$"):
            live_escrow(url, "local")
    finally:
        rpc(url, "evm_revert", before)
        settings.cache_clear()


def test_check_ports_free__a_port_a_stale_service_listens_on__named_with_its_flag_before_anything_starts() -> None:
    """A gateway left from an earlier market answered `up`'s readiness check for the new
    one, which then failed to bind: the market was announced ready, then stopped with
    "gateway exited with code 1". The port is now named before anything starts."""
    import socket

    from anvil_node import free_port
    from promptex.up import UpOptions

    def options(gateway: int) -> UpOptions:
        return UpOptions(rpc_url=None, chain_port=free_port(), gateway_host="127.0.0.1", gateway_port=gateway,
                         upstream_port=free_port(), seed=True, billing_port=free_port(), dashboard_port=free_port(),
                         door_port=free_port())  # fmt: skip

    with socket.create_server(("127.0.0.1", 0)) as stale:
        port = stale.getsockname()[1]
        with pytest.raises(UpError, match=rf"^port {port} \(the gateway's\) is taken on 127.0.0.1: .* --gateway-port$"):
            check_ports_free(options(port))
    check_ports_free(options(port))  # free again (its socket closed): no error


def test_restore_treasury__funding_lost_with_the_last_dump__funded_again_once(seeded_anvil: tuple[str, Path]) -> None:
    """A power loss in the seconds after the ready panel loses the welcome-credit treasury's
    deposit and spend cap on chain while ready.json stays: the restart showed "$10 of
    promotional credit" over an empty treasury. Now funded again; a funded one is left alone;
    a deposit the dump kept without its cap (cut between the two) gets its cap, not a second
    deposit (it was left capless before: its welcome credits could not settle)."""
    from anvil_node import rpc
    from promptex.chain.deployments import load_deployment
    from promptex.chain.node import connect, deployed_contract
    from promptex.ready import TREASURY_FUNDS, TREASURY_KEY

    url, root = seeded_anvil
    deployment = load_deployment("local", root)
    vault = deployed_contract(connect(url), deployment, "CreditsVault")
    wallet, usdc = Account.from_key(TREASURY_KEY).address, deployment.address("USDC")
    before = rpc(url, "evm_snapshot")
    try:
        assert restore_treasury(url, deployment) is True  # the chain has none of it: funded
        assert vault.functions.balance_of(wallet, usdc).call() == TREASURY_FUNDS
        assert vault.functions.spend_cap(wallet, usdc).call()[2] > 0
        assert restore_treasury(url, deployment) is False  # on chain now: left alone
        assert vault.functions.balance_of(wallet, usdc).call() == TREASURY_FUNDS
    finally:
        rpc(url, "evm_revert", before)
    before = rpc(url, "evm_snapshot")
    try:
        _deposit_without_cap(url, deployment)
        assert restore_treasury(url, deployment) is True  # its cap, nothing more deposited
        assert vault.functions.balance_of(wallet, usdc).call() == TREASURY_FUNDS
        assert vault.functions.spend_cap(wallet, usdc).call()[2] > 0
    finally:
        rpc(url, "evm_revert", before)


def _deposit_without_cap(url: str, deployment: Any) -> None:
    """The treasury's funding as a dump cut between its deposit and its spend cap left it."""
    from promptex.chain.node import connect, deployed_contract
    from promptex.ready import TREASURY_FUNDS, TREASURY_KEY

    w3 = connect(url)
    wallet = Account.from_key(TREASURY_KEY).address
    vault, usdc = deployed_contract(w3, deployment, "CreditsVault"), deployed_contract(w3, deployment, "USDC")
    for call in (usdc.functions.mint(wallet, TREASURY_FUNDS), usdc.functions.approve(vault.address, TREASURY_FUNDS),
                 vault.functions.deposit(usdc.address, TREASURY_FUNDS)):  # fmt: skip
        sent = call.transact({"from": wallet, "gas": 500_000})
        assert w3.eth.wait_for_transaction_receipt(sent, timeout=30)["status"] == 1


def test_make_ready__cut_off_before_ready_json__the_next_up_finishes_it_once(
    seeded_anvil: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up` killed (kill -9, the OOM killer, a crash) while it made the market ready, after
    the ledger had the demo buyer and before ready.json: every next `up` failed ("wallet …
    is bound to another account"), each try depositing the treasury's $1,000 again; killed
    between the demo buyer's account and its binding: "a user account named 'demo buyer'
    exists already". Now the next `up` finds what was done: the same accounts, the welcome
    credit granted once, the treasury funded once, a new key for the demo buyer that works."""
    from anvil_node import rpc
    from promptex.chain.deployments import load_deployment
    from promptex.chain.node import connect, deployed_contract
    from promptex.gateway.keys import hash_key
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import AccountKind
    from promptex.ready import READY_FILE, TREASURY_FUNDS, TREASURY_KEY, make_ready, read_ready

    url, root = seeded_anvil
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", ledger_url)
    deployment = load_deployment("local", root)
    market = tmp_path / "market"
    vault = deployed_contract(connect(url), deployment, "CreditsVault")
    treasury_wallet, usdc = Account.from_key(TREASURY_KEY).address, deployment.address("USDC")

    def ready() -> Any:
        return make_ready(url, deployment, market, welcome_asset="USDC", welcome_amount=10_000_000,
                          treasury="promotions")  # fmt: skip

    before = rpc(url, "evm_snapshot")
    try:
        with Ledger.open(ledger_url) as ledger:  # cut between the demo buyer's account and its binding
            named = ledger.create_account(AccountKind.USER, "demo buyer").id
        first = ready()
        assert first.buyer_account == named
        (market / READY_FILE).unlink()  # cut after the ledger had it all, before the file
        again = ready()
        assert (again.buyer_account, again.org_account, again.buyer_wallet, again.org_owner) == (
            first.buyer_account, first.org_account, first.buyer_wallet, first.org_owner,
        )  # fmt: skip
        assert read_ready(market) == again and (market / READY_FILE).stat().st_mode & 0o777 == 0o600
        assert vault.functions.balance_of(treasury_wallet, usdc).call() == TREASURY_FUNDS  # once
        with Ledger.open(ledger_url) as ledger:
            treasury = ledger.treasury("promotions").id
            budget = ledger.budget(treasury, again.buyer_account, "USDC")
            assert budget is not None and budget.remaining == 10_000_000  # granted once
            key = GatewayStore(ledger.engine).api_key(hash_key(again.buyer_key))
            assert key is not None and key.account == again.buyer_account  # the key shown works
    finally:
        rpc(url, "evm_revert", before)


def test_read_ready__a_file_cut_short_or_of_another_version__not_ready_yet(tmp_path: Path) -> None:
    """ready.json was written in place: a power loss mid-write (or a file of another
    version) left a file every `up` then failed on, at every start (a JSON error). It is
    now written whole or not at all, and one that is not a whole record is made again."""
    from promptex.ready import READY_FILE, read_ready

    tmp_path.joinpath(READY_FILE).write_text('{"buyer_account": 2, "buyer_wal')
    assert read_ready(tmp_path) is None
    tmp_path.joinpath(READY_FILE).write_text('{"buyer_account": 2}')
    assert read_ready(tmp_path) is None
    whole = {"buyer_account": 2, "buyer_wallet": "0x", "buyer_key": "sk", "welcome_usd_micro": 1, "org_account": 3,
             "org_owner": "0x", "treasury_wallet": "0x"}  # fmt: skip
    tmp_path.joinpath(READY_FILE).write_text(json.dumps({**whole, "buyer_key": 7}))  # every field, one a number
    assert read_ready(tmp_path) is None
    tmp_path.joinpath(READY_FILE).write_text(json.dumps(whole))
    assert read_ready(tmp_path) is not None


def _ready_on_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """make_ready on a ledger of the test's own, the treasury's funding on chain left out
    (`test_make_ready__cut_off_before_ready_json…` runs it): what a cut-off run left in the
    ledger and the market's folder is all these tests need, with no chain."""
    import promptex.ready
    from promptex.ready import TREASURY_KEY, make_ready

    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", ledger_url)
    monkeypatch.setattr(promptex.ready, "fund_treasury", lambda *_: (Account.from_key(TREASURY_KEY).address, False))

    def ready() -> Any:
        return make_ready("http://127.0.0.1:1", None, tmp_path / "market", welcome_asset="USDC",
                          welcome_amount=10_000_000, treasury="promotions")  # fmt: skip

    return ledger_url, ready


def test_make_ready__cut_off_between_the_demo_buyer_s_binding_and_its_grant__the_next_up_grants_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo buyer's binding and its welcome grant are two ledger commits: `up` killed
    between them left the demo buyer bound with no welcome credit, and every later `up`,
    finding it bound, granted none (its requests refused, the panel saying "$10 of
    promotional credit"). Now the next `up` grants it, once."""
    from promptex.ledger import AccountKind
    from promptex.ledger.binding import sign
    from promptex.ready import BUYER_KEY, DEMO_BUYER, READY_FILE

    ledger_url, ready = _ready_on_the_ledger(tmp_path, monkeypatch)
    wallet = Account.from_key(BUYER_KEY).address
    with Ledger.open(ledger_url) as ledger:  # bound, and cut off before the grant
        buyer = ledger.create_account(AccountKind.USER, DEMO_BUYER).id
        message = ledger.issue_binding_challenge(buyer, wallet)
        ledger.bind_wallet(message, sign(message, BUYER_KEY))
    assert ready().buyer_account == buyer
    (tmp_path / "market" / READY_FILE).unlink()  # and once more, ready.json lost
    assert ready().buyer_account == buyer
    with Ledger.open(ledger_url) as ledger:
        budget = ledger.budget(ledger.treasury("promotions").id, buyer, "USDC")
    assert budget is not None and budget.remaining == 10_000_000  # granted, once


def test_make_ready__ready_json_of_another_ledger__made_ready_again_on_the_market_s_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A market folder kept while its ledger changed (PROMPTEX_LEDGER_URL set to a new
    database, which the indexer fills from the chain): ready.json said the market was ready,
    so `up` made nothing and printed a demo key and accounts the gateway did not know, with
    no welcome credit and the treasury's wallet bound to no account. Now a recorded key this
    ledger does not take is made again on it; one it takes is kept."""
    from promptex.gateway.keys import hash_key, new_api_key
    from promptex.gateway.store import GatewayStore
    from promptex.ready import Ready, write_ready

    ledger_url, ready = _ready_on_the_ledger(tmp_path, monkeypatch)  # the new database
    first = Ready(2, "0x" + "aa" * 20, new_api_key(), 10_000_000, 3, "0x" + "bb" * 20, "0x" + "cc" * 20)
    write_ready(tmp_path / "market", first)  # the old ledger's market, made ready
    again = ready()
    assert again.buyer_key != first.buyer_key
    with Ledger.open(ledger_url) as ledger:
        key = GatewayStore(ledger.engine).api_key(hash_key(again.buyer_key))
        assert key is not None and key.account == again.buyer_account  # the key shown works here
        budget = ledger.budget(ledger.treasury("promotions").id, again.buyer_account, "USDC")
        assert budget is not None and budget.remaining == 10_000_000
    assert ready() == again  # kept once this ledger takes it


def test_make_ready__a_key_a_cut_off_run_issued_and_never_showed__revoked_when_the_next_issues_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run issues the demo buyer a new key, shown in the panel once ready.json has it:
    the key of a run cut off between the two stayed valid, shown to no one. Now the next run
    revokes it; the key it shows works, and a key the demo buyer made itself (shown to it,
    the dashboard's) stays."""
    import promptex.gateway.buyers
    import promptex.ready
    from promptex.gateway.buyers import issue_key
    from promptex.gateway.keys import hash_key
    from promptex.gateway.store import GatewayStore
    from promptex.ready import READY_FILE

    class Killed(Exception):
        pass

    ledger_url, ready = _ready_on_the_ledger(tmp_path, monkeypatch)
    issued: list[Any] = []

    def issuing(*args: Any, **kwargs: Any) -> Any:
        issued.append(issue_key(*args, **kwargs))
        return issued[-1]

    def killed(*_: Any) -> None:
        raise Killed("before ready.json")

    monkeypatch.setattr(promptex.gateway.buyers, "issue_key", issuing)
    with monkeypatch.context() as cut:
        cut.setattr(promptex.ready, "write_ready", killed)
        with pytest.raises(Killed):
            ready()
    [unshown] = issued
    with Ledger.open(ledger_url) as ledger:
        own = issue_key(GatewayStore(ledger.engine), unshown.account, 1)  # the buyer's own, shown to it
    shown = ready()
    assert [path.name for path in (tmp_path / "market").iterdir()] == [READY_FILE]  # nothing left pending
    with Ledger.open(ledger_url) as ledger:
        store = GatewayStore(ledger.engine)
        assert store.api_key(hash_key(unshown.key)) is None  # revoked
        assert store.api_key(hash_key(own.key)) is not None
        works = store.api_key(hash_key(shown.buyer_key))
        assert works is not None and works.account == shown.buyer_account == unshown.account


def test_twap_history_recorded__a_restart_does_not_record_the_day_again(seeded_anvil: tuple[str, Path]) -> None:
    """A stop after the day of TWAP history and before ready.json (the history runs in
    `up`'s process to its end): every next `up` recorded it again, moving the chain's clock
    another day ahead each time. It is now left alone once every token's TWAP covers the day."""
    from anvil_node import rpc
    from promptex.chain.deployments import load_deployment
    from promptex.chain.node import connect, deployed_contract

    url, root = seeded_anvil
    deployment = load_deployment("local", root)
    w3 = connect(url)
    oracle = deployed_contract(w3, deployment, "Oracle")
    before = rpc(url, "evm_snapshot")
    try:
        assert twap_history_recorded(url, deployment) is False  # the seed's one observation
        rpc(url, "evm_increaseTime", 86_400)
        rpc(url, "evm_mine")
        for symbol in deployment.token_symbols():  # a second observation a day after the first
            sent = oracle.functions.update(deployment.address(f"token:{symbol}")).transact(
                {"from": w3.eth.accounts[3], "gas": 500_000}
            )
            assert w3.eth.wait_for_transaction_receipt(sent, timeout=30)["status"] == 1
        assert twap_history_recorded(url, deployment) is True
    finally:
        rpc(url, "evm_revert", before)


def test_hold_market__a_second_up_in_the_same_folder_is_refused_naming_the_first(tmp_path: Path) -> None:
    """Two `promptex up` in one folder ran two chains dumping into one state file, or (the
    second told by its own error to pass --rpc-url) two indexers and coordinators on one
    ledger. The folder is now held by the first; released when it ends, however it ends."""
    held = hold_market(tmp_path / "market")
    try:
        with pytest.raises(UpError, match=rf"another promptex up \(pid {os.getpid()}\) runs the market in "):
            hold_market(tmp_path / "market")
    finally:
        os.close(held)
    os.close(hold_market(tmp_path / "market"))  # free again


def test_hold_linked_chain__a_state_file_linked_into_a_running_market_s_folder__refused_naming_it(
    tmp_path: Path,
) -> None:
    """wbreak s15: each `up` held only its own folder, so a folder whose anvil-state.json is
    a symbolic link to another market's ran a second anvil dumping another chain into the
    same file while that market ran. The folder linked to is held too; a folder's own file
    (or a link within it) holds nothing more."""
    from promptex.up import hold_linked_chain

    market, other = tmp_path / "market", tmp_path / "other"
    held = hold_market(market)
    (market / ANVIL_STATE).write_text("{}")
    other.mkdir()
    (other / ANVIL_STATE).symlink_to(market / ANVIL_STATE)
    try:
        with pytest.raises(UpError) as refused:
            hold_linked_chain(other)
    finally:
        os.close(held)
    line = str(refused.value)
    assert f"links to {market / ANVIL_STATE}, the chain of the market in {market}, which another promptex up " \
        f"(pid {os.getpid()}) runs" in line and "\n" not in line, line  # fmt: skip
    linked = hold_linked_chain(other)  # that market stopped: held for this one
    assert linked is not None
    try:
        with pytest.raises(UpError, match="another promptex up"):
            hold_market(market)  # and that market waits for this one
    finally:
        os.close(linked)
    assert hold_linked_chain(market) is None


def test_up_fresh_in_a_folder_whose_state_file_links_into_a_running_market__archives_the_link_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """wbreak s15: `up --fresh` in a folder whose anvil-state.json links into a running
    market's folder was refused ("which another promptex up runs"), and with that market
    stopped held its folder for the whole run, though --fresh archives the link and starts a
    chain of its own. Now the link is archived and the other market left alone (this `up`
    then stops at a port the test holds, before any chain starts)."""
    import socket

    market, other = tmp_path / "market", tmp_path / "other"
    held = hold_market(market)
    (market / ANVIL_STATE).write_text('{"the running market": 1}')
    other.mkdir()
    (other / ANVIL_STATE).symlink_to(market / ANVIL_STATE)
    options = _other_market(tmp_path, monkeypatch, fresh=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", options.gateway_port))
        taken.listen()
        try:
            assert _run_up(options) == 1
        finally:
            os.close(held)
    error = capsys.readouterr().err
    assert error.startswith(f"Error: port {options.gateway_port} (the gateway's) is taken"), error
    (archive,) = [path for path in tmp_path.iterdir() if path.name.startswith("other.archived-")]
    assert (archive / "other" / ANVIL_STATE).readlink() == market / ANVIL_STATE
    assert (market / ANVIL_STATE).read_text() == '{"the running market": 1}'


def test_up_refused_for_a_taken_port_before_anything_starts__nothing_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """newuser18: a first `promptex up` refused for a taken port (nothing started) left the
    market's folder (its up.lock) and the ledger's `.up-lock` in the working directory. Now
    what it made is taken away again; a folder and lock that were there before stay."""
    import socket

    monkeypatch.chdir(tmp_path)
    options = _other_market(tmp_path, monkeypatch, fresh=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", options.gateway_port))
        taken.listen()
        assert _run_up(options) == 1
        assert capsys.readouterr().err.startswith(f"Error: port {options.gateway_port} (the gateway's) is taken")
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        (tmp_path / "other").mkdir()  # a market's folder from before: kept, with its lock
        (tmp_path / "ledger.sqlite3.up-lock").write_text("")
        assert _run_up(options) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite3.up-lock", "other"]
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["up.lock"]


def test_up_fresh_while_another_up_runs_the_market__refused_and_nothing_archived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`promptex up --fresh` moved the folder, ledger and deployment record of a market
    another `up` was running into an archive (its anvil dumping on, its services writing a
    ledger that was no longer where the next `up` looks). Refused now, before anything moves."""
    import signal

    from promptex.up import UpOptions, up

    market = tmp_path / "market"
    held = hold_market(market)
    (market / ANVIL_STATE).write_text("{}")
    monkeypatch.setenv("PROMPTEX_UP_STATE_DIR", str(market))  # (up sets it; restored after the test)
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    monkeypatch.setenv("PROMPTEX_DEPLOYMENTS_DIR", str(tmp_path / "deployments"))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    options = UpOptions(rpc_url=None, chain_port=1, gateway_host="127.0.0.1", gateway_port=1, upstream_port=1,
                        seed=True, state_dir=market, fresh=True)  # fmt: skip
    try:
        assert up(options) == 1
    finally:
        os.close(held)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    error = capsys.readouterr().err
    assert error.startswith("Error: another promptex up (pid ") and error.count("\n") == 1, error
    assert (market / ANVIL_STATE).exists() and [p.name for p in tmp_path.iterdir() if "archived" in p.name] == []


def _run_up(options: Any) -> int:
    """`up` in this process, its signal handlers given back afterwards."""
    import signal

    from promptex.up import up

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return up(options)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _other_market(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fresh: bool, chain_port: int = 1) -> Any:
    """`up --state other [--fresh]` in a directory whose ledger and deployment record (the
    working directory's by default, not a folder's) belong to the market in `market`."""
    from anvil_node import free_port
    from promptex.up import UpOptions

    other = tmp_path / "other"
    monkeypatch.setenv("PROMPTEX_UP_STATE_DIR", str(other))  # (up sets it; restored after the test)
    monkeypatch.setenv("PROMPTEX_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    monkeypatch.setenv("PROMPTEX_DEPLOYMENTS_DIR", str(tmp_path / "deployments"))
    return UpOptions(rpc_url=None, chain_port=chain_port, gateway_host="127.0.0.1", gateway_port=free_port(),
                     upstream_port=free_port(), seed=True, billing_port=free_port(), dashboard_port=free_port(),
                     door_port=free_port(), state_dir=other, fresh=fresh)  # fmt: skip


def test_up_fresh_in_another_folder_while_an_up_runs_on_the_ledger__refused_and_nothing_archived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ledger and deployment record are the working directory's, not the market folder's:
    `up --state other --fresh` beside a running market moved that market's ledger and
    deployment record into other's archive (its services writing on into the moved file).
    The ledger is now held by the `up` running on it, and refused to another."""
    from promptex.up import hold_ledger

    (tmp_path / "ledger.sqlite3").write_text("")
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "local.json").write_text("{}")
    options = _other_market(tmp_path, monkeypatch, fresh=True)
    running = hold_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", tmp_path / "market")
    try:
        assert _run_up(options) == 1
    finally:
        running()
    error = capsys.readouterr().err
    assert error.startswith(f"Error: another promptex up (pid {os.getpid()}, market {tmp_path / 'market'}) runs a "
                            f"market on the ledger {tmp_path / 'ledger.sqlite3'}: stop it first") and \
        error.count("\n") == 1, error  # fmt: skip
    assert (tmp_path / "ledger.sqlite3").exists() and (tmp_path / "deployments" / "local.json").exists()
    assert [p.name for p in tmp_path.iterdir() if "archived" in p.name] == []


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:book?mode=memory&uri=true"])
def test_hold_ledger__a_sqlite_ledger_in_memory__refused_in_one_line(tmp_path: Path, url: str) -> None:
    """wbreak s15: a SQLite ledger in memory was held by nothing ("nothing to share") and
    `up` ran on it: each of its processes (indexer, coordinator, gateway, dashboard and `up`
    itself) opened a database of its own, empty, so the deposits the indexer credited were
    not the gateway's and the demo key `up` printed was one no gateway knew. Refused now,
    before anything starts."""
    from promptex.up import hold_ledger

    with pytest.raises(UpError) as refused:
        hold_ledger(url, tmp_path / "market")
    line = str(refused.value)
    assert "in memory" in line and "PROMPTEX_LEDGER_URL" in line and "\n" not in line, line


def test_up_on_a_postgresql_ledger_another_up_runs_on__refused_naming_it_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], postgres: Any
) -> None:
    """Only a SQLite ledger was held: a copy of a running market's folder (its profile names
    the ledger, its chain a copy of the first's), or a second folder with --rpc-url to the
    first's chain, ran a second `up` on the same PostgreSQL ledger — two indexers racing on
    one cursor, two agents signing with one key, and with the copy two chains diverging under
    one ledger, the coordinator that leads settling on its chain usage whose deposits were
    made on the other. Now the ledger is held for the life of the `up` on it (a session
    advisory lock), the refusal names the holder, and the lock goes with its session."""
    import socket

    from promptex.config import write_profile
    from promptex.serving import free_port
    from promptex.up import UpOptions, hold_ledger

    name = f"up_lock_{os.getpid()}"
    url = postgres.create_database(name)  # nothing but the lock is touched: no schema needed
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / ANVIL_STATE).write_text("{}")
    write_profile(copy, {"written_by": "promptex up", "settings": {"ledger_url": url}})
    monkeypatch.setenv("PROMPTEX_UP_STATE_DIR", str(copy))  # (up sets it; restored after the test)
    monkeypatch.delenv("PROMPTEX_LEDGER_URL", raising=False)  # the profile's
    monkeypatch.setenv("PROMPTEX_DEPLOYMENTS_DIR", str(tmp_path / "deployments"))
    options = UpOptions(rpc_url="http://127.0.0.1:1", chain_port=1, gateway_host="127.0.0.1",
                        gateway_port=free_port(), upstream_port=free_port(), seed=True, billing_port=free_port(),
                        dashboard_port=free_port(), door_port=free_port(), state_dir=copy)  # fmt: skip
    try:
        running = hold_ledger(url, tmp_path / "market")
        try:
            assert _run_up(options) == 1
        finally:
            running()
        hold_ledger(url, copy)()  # let go with its session: the next `up` holds it
    finally:
        postgres.drop_database(name)
    holder = f"{os.getpid()} on {socket.gethostname()}, market {(tmp_path / 'market').resolve()}"[:51]
    error = capsys.readouterr().err
    assert (
        error == f"Error: another promptex up (pid {holder}) runs a market on the ledger {url}: stop it first, "
        "or give this market its own ledger and deployment record (PROMPTEX_LEDGER_URL, PROMPTEX_DEPLOYMENTS_DIR)\n"
    )


def test_up_on_a_postgresql_ledger__its_lock_session_ended_under_it__taken_again_or_up_told_another_holds_it(
    tmp_path: Path, postgres: Any
) -> None:
    """The ledger's hold is a session advisory lock: a server restart, a pooler or an
    administrator ending that session (pg_terminate_backend, an idle timeout) let it go while
    `up` ran on, unaware, and a second `up` then ran on the same books (xbreak4 s14). Now
    `up`'s watch checks the hold: a lost one is taken again on a new session, or, when
    another `up` took it meanwhile, named so that this one stops."""
    import psycopg

    from promptex.up import hold_ledger

    name = f"up_lost_{os.getpid()}"
    url = postgres.create_database(name)

    def end_lock_sessions() -> None:
        with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                " AND application_name LIKE 'promptex up %%'", (name,),
            )  # fmt: skip
        time.sleep(0.1)  # the backend's exit: asynchronous to the call

    try:
        running = hold_ledger(url, tmp_path / "market")
        try:
            assert running.check() is None  # held
            end_lock_sessions()
            assert running.check() is None  # lost, and taken again on a new session
            with pytest.raises(UpError, match="another promptex up"):
                hold_ledger(url, tmp_path / "other")()
            end_lock_sessions()
            other = hold_ledger(url, tmp_path / "other")  # the hole: the lost lock is free to another up
            try:
                lost = running.check()
            finally:
                other()
        finally:
            running()
    finally:
        postgres.drop_database(name)
    assert lost is not None and lost.startswith(f"this market's hold on the ledger {url} was lost (its session ended)")
    assert f"another promptex up (pid {os.getpid()} on " in lost


def test_supervisor_watch__the_ledger_hold_lost_to_another_up__exit_1_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """up's watch asks its ledger hold (`LedgerHold.check`): a line back, the hold went to
    another `up`, and this one stops (exit 1) saying so; None, it watches on (xbreak4 s14)."""
    import threading

    from promptex.up import Supervisor

    answers = iter([None, "this market's hold on the ledger L was lost: another up took it"])
    supervisor = Supervisor({"PATH": os.environ["PATH"]})
    stop = threading.Timer(5.0, supervisor.stopping.set)  # a watch that does not ask: stopped, exit 0
    stop.start()
    try:
        assert supervisor.watch(lambda: next(answers), check_every=1) == 1
    finally:
        stop.cancel()
    assert "this market's hold on the ledger L was lost: another up took it" in capsys.readouterr().out


def test_up_in_a_new_folder_on_a_ledger_another_market_follows__refused_before_any_chain_or_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`up --state other` (a new market) in a directory whose ledger follows another market's
    chain started a new anvil, deployed over the other market's deployment record, and then
    stopped on the ledger's chain check, which said to start again with `--fresh`: that
    archived the OTHER market's ledger and record. Now refused before anything starts."""
    from anvil_node import rpc, running_anvil
    from promptex.protocol.identity import ChainIdentity
    from promptex.up import ledger_of_another_market

    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with Ledger.open(ledger_url) as ledger:
        ledger.follow_chain(ChainIdentity(31337, "0x" + "ab" * 32, "local", {}), "promptex up")
    with running_anvil() as url:  # something answers on the chain port: before, up said only that
        options = _other_market(tmp_path, monkeypatch, fresh=False, chain_port=int(url.rsplit(":", 1)[1]))
        assert _run_up(options) == 1
        assert rpc(url, "eth_blockNumber") == "0x0"  # nothing deployed anywhere
    error = capsys.readouterr().err
    assert error.startswith(f"Error: the ledger {ledger_url} follows another market's chain (chain 31337") and \
        f"and {tmp_path / 'other'} has no chain yet: give this market its own ledger" in error and \
        error.count("\n") == 1, error  # fmt: skip
    market = tmp_path / "market"
    market.mkdir()
    (market / ANVIL_STATE).write_text("{}")  # the market that follows it: its own chain, checked later
    assert ledger_of_another_market(ledger_url, market) is None


def test_archive_market__everything_moved_into_one_dated_archive(tmp_path: Path) -> None:
    market, deployments = tmp_path / "market", tmp_path / "deployments"
    market.mkdir()
    (market / ANVIL_STATE).write_text("{}")
    deployments.mkdir()
    (deployments / "local.json").write_text("{}")
    for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"):
        (tmp_path / name).write_text(name)

    archive = archive_market(market, f"sqlite:///{tmp_path / 'ledger.sqlite3'}", deployments / "local.json", NOW)

    assert archive == tmp_path / "market.archived-20261206T134507Z"
    assert sorted(p.name for p in archive.iterdir()) == [
        "ledger.sqlite3", "ledger.sqlite3-shm", "ledger.sqlite3-wal", "local.json", "market",
    ]  # fmt: skip
    assert (archive / "market" / ANVIL_STATE).exists()
    assert not market.exists() and not (tmp_path / "ledger.sqlite3").exists()
    assert not (deployments / "local.json").exists()


def test_archive_market__ledger_inside_the_folder__moved_once(tmp_path: Path) -> None:
    market = tmp_path / "market"
    market.mkdir()
    (market / "ledger.sqlite3").write_text("ledger")
    archive = archive_market(market, f"sqlite:///{market / 'ledger.sqlite3'}", tmp_path / "none.json", NOW)
    assert archive is not None and (archive / "market" / "ledger.sqlite3").read_text() == "ledger"


def test_archive_market__nothing_there__nothing_archived(tmp_path: Path) -> None:
    assert archive_market(tmp_path / "market", f"sqlite:///{tmp_path}/l.sqlite3", tmp_path / "d.json", NOW) is None
    assert list(tmp_path.iterdir()) == []


def test_archive_market__postgresql_ledger__refused_before_moving_anything(tmp_path: Path) -> None:
    (tmp_path / "market").mkdir()
    with pytest.raises(UpError, match="--fresh archives a SQLite ledger; this market's is postgresql"):
        archive_market(tmp_path / "market", "postgresql://u@h/db", tmp_path / "d.json", NOW)
    assert (tmp_path / "market").exists()


def test_demo_finalizers__one_per_demo_seller_with_its_own_key_in_its_environment(tmp_path: Path) -> None:
    """`promptex up` runs `seller finalize --watch` for each demo seller, signed with that
    seller's key, which reaches the process and no other service."""
    finalizers = demo_finalizers()
    keys = {Account.from_key(f.env["PROMPTEX_SELLER_PRIVATE_KEY"]).address for f in finalizers}
    assert keys == set(DEMO_SELLERS.values())
    assert all(f.argv[-4:-1] == ["seller", "finalize", "--watch"] for f in finalizers)
    out = tmp_path / "seen"
    seen = "os.environ.get('PROMPTEX_SELLER_PRIVATE_KEY', '-')"
    probe = f"import os, pathlib; pathlib.Path({str(out)!r}).write_text({seen})"
    supervisor = Supervisor({"PATH": os.environ["PATH"]})
    try:
        supervisor.start(Service("probe", [sys.executable, "-c", probe], env=finalizers[0].env))
        assert supervisor.services[0].process is not None and supervisor.services[0].process.wait(30) == 0
    finally:
        supervisor.stop_all()
    assert out.read_text() == finalizers[0].env["PROMPTEX_SELLER_PRIVATE_KEY"]
    assert "PROMPTEX_SELLER_PRIVATE_KEY" not in supervisor.env


def test_stop_all__the_chain_stops_after_every_service_that_uses_it(tmp_path: Path) -> None:
    """Ctrl-C: a coordinator or agent mid-pass must not lose its node under it (it printed a
    connection-reset traceback on every stop): the chain gets SIGTERM only once the others exited."""
    gone = tmp_path / "user-gone"
    seen = tmp_path / "chain-saw"
    # The user takes a second to finish its pass after SIGTERM; the chain notes whether it had.
    user = (
        "import pathlib, signal, sys, time\n"
        f"def stop(*_): time.sleep(1); pathlib.Path({str(gone)!r}).write_text('x'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "while True: time.sleep(0.05)\n"
    )
    chain = (
        "import pathlib, signal, sys, time\n"
        f"def stop(*_):\n    pathlib.Path({str(seen)!r}).write_text(str(pathlib.Path({str(gone)!r}).exists()))\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "while True: time.sleep(0.05)\n"
    )
    supervisor = Supervisor({"PATH": os.environ["PATH"]})
    try:
        supervisor.start(Service("anvil", [sys.executable, "-c", chain], stops_last=True))
        supervisor.start(Service("coordinator", [sys.executable, "-c", user]))
        time.sleep(0.5)  # both installed their handlers
    finally:
        supervisor.stop_all()
    assert seen.read_text() == "True"


def _stopping_script(gone: Path, ready: Path, *, seen: Path | None = None) -> str:
    """A service that stops a second after SIGINT or SIGTERM (it finishes its pass), noting
    that it is gone; or, given `seen`, the chain, which notes whether the service was gone
    when it got its own signal. Each says it is ready once its handlers are in place."""
    if seen is None:
        stop = f"time.sleep(1); pathlib.Path({str(gone)!r}).write_text('x'); sys.exit(0)"
    else:
        stop = f"pathlib.Path({str(seen)!r}).write_text(str(pathlib.Path({str(gone)!r}).exists())); sys.exit(0)"
    return (
        "import pathlib, signal, sys, time\n"
        f"def stop(*_): {stop}\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "while True: time.sleep(0.05)\n"
    )


def test_ctrl_c_in_the_terminal__the_chain_still_stops_after_the_services_that_use_it(tmp_path: Path) -> None:
    """rbreak (session 11): Ctrl-C sends SIGINT to the terminal's whole foreground process
    group, and `promptex up` started its services in its own: anvil got SIGINT and stopped
    at the same moment as the coordinator and the agent, mid-pass (4fb94ca's order held only
    for a SIGTERM to `up` alone). Each service now runs in its own process group: only `up`
    gets the terminal's signal, and stops the chain last."""
    import signal
    import subprocess

    from polling import until

    gone, seen = tmp_path / "user-gone", tmp_path / "chain-saw"
    ready = [tmp_path / "chain-ready", tmp_path / "user-ready"]
    chain = _stopping_script(gone, ready[0], seen=seen)
    user = _stopping_script(gone, ready[1])
    up = (  # `promptex up`'s supervision alone, as the terminal's foreground job
        "import os, signal, sys\n"
        "from promptex.up import Service, Supervisor\n"
        "supervisor = Supervisor(dict(os.environ))\n"
        "signal.signal(signal.SIGINT, supervisor.request_stop)\n"
        "signal.signal(signal.SIGTERM, supervisor.request_stop)\n"
        "try:\n"
        f"    supervisor.start(Service('anvil', [sys.executable, '-c', {chain!r}], stops_last=True))\n"
        f"    supervisor.start(Service('coordinator', [sys.executable, '-c', {user!r}]))\n"
        "    supervisor.watch()\n"
        "finally:\n"
        "    supervisor.stop_all()\n"
    )
    job = subprocess.Popen([sys.executable, "-c", up], start_new_session=True)  # a process group, as a shell's job
    try:
        until(lambda: all(path.exists() for path in ready), "both services started")
        os.killpg(job.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert job.wait(timeout=60) == 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert seen.read_text() == "True"


def test_await_ready__another_service_dead__says_so_at_once_not_the_awaited_ones_timeout(tmp_path: Path) -> None:
    """A service that dies while another is being awaited (the indexer, with no readiness
    check, exiting at start while the gateway starts): up waited out the gateway's timeout
    and then blamed the gateway ("not ready within 60 s"). Now the wait names the dead one."""
    supervisor = Supervisor({"PATH": os.environ["PATH"]})
    try:
        supervisor.start(Service("indexer", [sys.executable, "-c", "import sys; sys.exit(3)"]))
        slow = Service("gateway", [sys.executable, "-c", "import time; time.sleep(60)"], ready=lambda: False)
        with pytest.raises(UpError, match="indexer exited with code 3"):
            supervisor.start(slow, timeout=20)
    finally:
        supervisor.stop_all()


def test_stop_requested_during_a_step__the_step_is_stopped_and_up_stops_starting(tmp_path: Path) -> None:
    """SIGTERM to `up` while it deploys or seeds (a step, minutes long on a slow machine):
    the stop was only noted and `up` went on deploying, seeding and starting every service
    before it stopped them. Now the step is stopped and `up` goes no further."""
    import threading

    from promptex.up import UpStopped

    supervisor = Supervisor({"PATH": os.environ["PATH"]})
    step = [sys.executable, "-c", "import time; print('deploying', flush=True); time.sleep(30)"]
    timer = threading.Timer(0.5, supervisor.request_stop)
    timer.start()
    try:
        with pytest.raises(UpStopped):
            supervisor.run_step("deploy", step)
        with pytest.raises(UpStopped):
            supervisor.start(Service("indexer", [sys.executable, "-c", "import time; time.sleep(30)"]))
        assert supervisor.services == []
    finally:
        timer.cancel()
        supervisor.stop_all()


@pytest.mark.parametrize("nohup", [False, True], ids=["terminal", "nohup"])
def test_handle_signals__a_closed_terminal_stops_the_market__unless_started_under_nohup(nohup: bool) -> None:
    """The services no longer get the terminal's SIGHUP (their own process groups), so `up`
    takes it as a stop; under `nohup` (SIGHUP ignored from the start) it stays ignored, or
    a hangup would stop a market its user meant to outlive the terminal."""
    import subprocess

    script = (
        "import signal\n"
        + ("signal.signal(signal.SIGHUP, signal.SIG_IGN)\n" if nohup else "")
        + "from promptex.up import Supervisor\n"
        "supervisor = Supervisor({})\n"
        "supervisor.handle_signals()\n"
        "print(signal.getsignal(signal.SIGHUP) == supervisor.request_stop, "
        "signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == (["False", "True"] if nohup else ["True", "False"])


def _killed_with_kill_9__its_child_gets_sigterm(
    tmp_path: Path, child: str, up: Callable[[str], str], **popen: Any
) -> None:
    """Runs `up(script)`, the source of a stand-in for `promptex up` that starts the Python
    `script` as its child (`child`: "service", "step"), kills it with kill -9 once the child
    runs, and waits until the child got SIGTERM (it writes a file on SIGTERM). The child is
    SIGKILLed at the end however the test went."""
    import signal
    import subprocess

    from polling import until

    ready, termed, pid = tmp_path / "ready", tmp_path / "termed", tmp_path / "pid"
    script = (
        "import os, pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(termed)!r}).write_text('x'), sys.exit(0)))\n"
        f"pathlib.Path({str(pid)!r}).write_text(str(os.getpid()))\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "time.sleep(120)\n"
    )
    job = subprocess.Popen([sys.executable, "-c", up(script)], **popen)
    try:
        until(ready.exists, f"the {child} started")
        job.kill()
        job.wait(timeout=30)
        until(termed.exists, f"the {child} got SIGTERM once up died", seconds=20)
    finally:
        if job.poll() is None:
            job.kill()
        if pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid.read_text()), signal.SIGKILL)


def test_up_killed_with_kill_9__its_services_get_sigterm_not_left_running(tmp_path: Path) -> None:
    """rbreak (session 11): `promptex up` killed with kill -9 (or by the OOM killer) cannot
    stop its services: they ran on for good (anvil holding the chain's port, the next `up`
    refusing to start). Each now gets SIGTERM when `up` dies (setpriv --pdeathsig)."""
    _killed_with_kill_9__its_child_gets_sigterm(
        tmp_path,
        "service",
        lambda service: (
            "import os, sys, time\n"
            "from promptex.up import Service, Supervisor\n"
            "supervisor = Supervisor(dict(os.environ))\n"
            f"supervisor.start(Service('agent', [sys.executable, '-c', {service!r}]))\n"
            "time.sleep(120)\n"
        ),
    )


def test_up_killed_with_kill_9_during_a_step__the_step_gets_sigterm_not_left_deploying(tmp_path: Path) -> None:
    """`up` killed with kill -9 while it deployed or seeded: the chain got SIGTERM (its
    services' setpriv --pdeathsig) but the step (`ape run deploy`, `seed_market`, minutes on a
    slow machine) ran on as an orphan, its transactions going to whatever answered on the
    chain's port next: the next `up`'s new anvil, beside that `up`'s own deploy or seed."""
    import subprocess

    _killed_with_kill_9__its_child_gets_sigterm(
        tmp_path,
        "step",
        lambda step: (
            "import os, sys\n"
            "from promptex.up import Supervisor\n"
            f"Supervisor(dict(os.environ)).run_step('seed market', [sys.executable, '-c', {step!r}])\n"
        ),
        stdout=subprocess.DEVNULL,
    )


def test_closing_panel__the_demo_buyer_s_credit_as_granted__not_read_as_what_is_left(tmp_path: Path) -> None:
    """A restart shows the panel ready.json recorded: before, "10.00 USDC of promotional credit"
    after the demo buyer had spent some (9.99 left) — read as its balance now."""
    from promptex.ready import Ready
    from promptex.up import UpOptions

    ready = Ready(6, "0x" + "aa" * 20, "px-demo", 10_000_000, 8, "0x" + "bb" * 20, "0x" + "cc" * 20)
    options = UpOptions(
        rpc_url=None, chain_port=1, gateway_host="127.0.0.1", gateway_port=2, upstream_port=3, seed=True
    )
    panel = closing_panel(options, ready)
    assert "account 6, wallet 0x" + "aa" * 20 + ": 10.00 USDC of promotional credit granted" in panel
    assert "promptex buyer balance --account 6    # what the demo buyer can spend" in panel  # what is left
