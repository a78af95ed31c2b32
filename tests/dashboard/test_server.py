"""The dashboard's server without a chain: the wallet-signed key endpoints, what a key may
read and change (a wallet's redemption records and rules, an org's desk, a seller's
capacity up to the chain), the read-only JSON-RPC proxy, and the messages when a part is
missing. Opening a lot on chain is covered by the browser test."""

import dataclasses
import json
import threading
import time

import pytest
from eth_account import Account
from pydantic import SecretStr
from sqlalchemy import func, select
from starlette.testclient import TestClient

from anvil_node import free_port
from polling import until
from promptex.agent.fake_billing import FakeBillingConfig, create_fake_billing
from promptex.agent.store import AgentStore
from promptex.config import Settings
from promptex.dashboard import DashboardOptions, create_app
from promptex.fakes import FakeUpstreamConfig, create_fake_upstream
from promptex.gateway.buyers import signup
from promptex.gateway.store import GatewayStore
from promptex.ledger import AccountKind, Ledger
from promptex.ledger import wallets as _wallets
from promptex.ledger.binding import BindingMessage, sign
from promptex.ledger.errors import WalletAlreadyBound
from promptex.ledger.schema import accounts, binding_challenges
from promptex.sealing.envelope import load_master_keys
from promptex.serving import ServerThread
from promptex.throttle import Throttle

VAULT = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
SECRET_RPC = "http://127.0.0.1:{port}/secret-provider-key"
OPEN_LOT_ABI = {
    "type": "function",
    "name": "open_lot",
    "stateMutability": "nonpayable",
    "inputs": [
        {"name": name, "type": kind}
        for name, kind in (
            ("seller", "address"),
            ("token", "address"),
            ("kind", "uint8"),
            ("face_value", "uint256"),
            ("expiry", "uint64"),
            ("bond", "uint256"),
            ("terms_hash", "bytes32"),
            ("rate_bps", "uint16"),
        )
    ],  # fmt: skip
    "outputs": [{"name": "", "type": "uint256"}],
}


@pytest.fixture
def dashboard(tmp_path):
    deployments = tmp_path / "deployments"
    deployments.mkdir()
    escrow_abi = deployments / "CreditEscrow.json"  # the one function a seller's lot is opened with
    escrow_abi.write_text(json.dumps([OPEN_LOT_ABI]))
    record = {
        "network": "local",
        "chain_id": 31337,
        "block_number": 1,
        "deployer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "contracts": {
            "USDC": {"address": "0x5FbDB2315678afecb367f032d93F642f64180aa3", "abi": "x.json"},
            "CreditsVault": {"address": VAULT, "abi": "x.json"},
            "token:CLD": {"address": "0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9", "abi": "x.json"},
            "token:GPT": {"address": "0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9", "abi": "x.json"},
            "CreditEscrow": {"address": "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707", "abi": str(escrow_abi)},
        },
    }
    (deployments / "local.json").write_text(json.dumps(record))
    settings = Settings(
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        deployments_dir=deployments,
        gateway_master_key_file=tmp_path / "master.key",
    )
    dead = free_port()  # nothing listens: anything forwarded fails loudly
    options = DashboardOptions(
        rpc_url=SECRET_RPC.format(port=dead),
        network="local",
        gateway_url=f"http://127.0.0.1:{dead}",
        dist=tmp_path / "no-dist",
        deployments_dir=deployments,
    )
    ledger = Ledger.from_settings(settings)
    ahead = [0]  # seconds the chain's time is ahead of the wall's (no node: its clock stands in)
    with TestClient(
        create_app(settings, options, ledger=ledger, chain_clock=lambda: int(time.time()) + ahead[0])
    ) as client:
        client.ledger, client.settings, client.dead, client.options = ledger, settings, dead, options
        client.chain_ahead = ahead
        yield client
    ledger.close()


def obtain_key(client: TestClient, wallet: Account, signer: Account | None = None):
    challenge = client.post("/api/keys/challenge", json={"wallet": wallet.address})
    assert challenge.status_code == 200, challenge.text
    binding = challenge.json()["binding"]
    assert challenge.json()["typed_data"]["message"]["wallet"] == wallet.address
    signature = sign(BindingMessage(**binding), (signer or wallet).key)
    return client.post("/api/keys/bind", json={"binding": binding, "signature": "0x" + signature.hex()})


def test_keys__wallet_signs_its_challenge__key_issued_and_reads_its_account(dashboard):
    wallet = Account.create()
    issued = obtain_key(dashboard, wallet)
    assert issued.status_code == 200, issued.text
    key = issued.json()["key"]
    account = dashboard.get("/api/account", headers={"authorization": f"Bearer {key}"})
    assert account.status_code == 200
    assert account.json()["wallets"] == [wallet.address]
    assert account.json()["balances"]["USDC"]["spendable"] == "0"
    # The same wallet again: a new key for the same account.
    again = obtain_key(dashboard, wallet)
    assert again.json()["account"] == issued.json()["account"] and again.json()["key"] != key
    assert dashboard.get("/api/usage", headers={"authorization": f"Bearer {key}"}).json() == []


def test_account__open_debt__shown_with_its_reason_until_a_deposit_repays_it(dashboard):
    wallet = Account.create()
    issued = obtain_key(dashboard, wallet).json()
    headers = {"authorization": f"Bearer {issued['key']}"}
    ledger = dashboard.ledger
    assert dashboard.get("/api/account", headers=headers).json()["debts"] == []
    ledger.credit_deposit("0xd1:0", wallet.address, "USDC", 1_000)
    ledger.set_spend_cap(issued["account"], "USDC", 1_000)
    ledger.reserve(issued["account"], "USDC", 700, "req-1", ttl=60)
    ledger.settle("req-1", 700)
    ledger.unwind_chain_fact("0xd1:0")  # a reorg removed the deposit after it was spent

    (debt,) = dashboard.get("/api/account", headers=headers).json()["debts"]
    assert (debt["asset"], debt["outstanding"]) == ("USDC", "700")
    assert "reorg removed deposit 0xd1:0" in debt["reason"]
    ledger.credit_deposit("0xd2:0", wallet.address, "USDC", 1_000)
    assert dashboard.get("/api/account", headers=headers).json()["debts"] == []


def spender(dashboard, deposit: int, ref: str) -> tuple[dict[str, str], int]:
    """A wallet's key (its bearer header) and account, with `deposit` USDC units in the vault under an equal cap."""
    wallet = Account.create()
    issued = obtain_key(dashboard, wallet).json()
    dashboard.ledger.credit_deposit(ref, wallet.address, "USDC", deposit)
    dashboard.ledger.set_spend_cap(issued["account"], "USDC", deposit)
    return {"authorization": f"Bearer {issued['key']}"}, issued["account"]


def test_usage__quarantined_then_refunded__each_row_says_where_its_charge_stands(dashboard):
    from promptex.coordinator.store import CoordinatorStore
    from promptex.ledger import UsageRecord

    headers, account = spender(dashboard, 1_000, "0xu1:0")
    ledger = dashboard.ledger
    ledger.reserve(account, "USDC", 300, "req-q", ttl=60)
    ledger.settle("req-q", 300, record=UsageRecord("gpt-4o-mini", 10, 5, 150, lot_kind="listed", fee_bps=500))

    def row() -> dict:
        (found,) = dashboard.get("/api/usage", headers=headers).json()
        return found

    assert row()["settlement"] == "waiting for the next settlement"
    store = CoordinatorStore(ledger.engine)
    store.quarantine({"req-q": "no on-chain lot id"}, 0)
    assert row()["settlement"].startswith("held back from settlement: no on-chain lot id;")  # not "next epoch"
    assert store.refund("req-q", "the lot that served it was never opened on chain", 0)

    refunded = row()
    assert refunded["status"] == "refunded"
    assert refunded["settlement"] == "refunded: the lot that served it was never opened on chain"
    assert refunded["refund_reason"] == "the lot that served it was never opened on chain"
    assert ledger.balance(account, "USDC").posted == 1_000  # the charge is back with the payer
    ledger.check()


def test_usage__totals_and_csv__per_model_and_per_day_exact_refunds_not_counted(dashboard):
    import csv
    import io

    from promptex.coordinator.store import CoordinatorStore
    from promptex.ledger import UsageRecord
    from promptex.ledger.schema import usage_records

    headers, account = spender(dashboard, 10_000_000, "0xt1:0")
    ledger = dashboard.ledger
    spent = {
        "req-a": ("gpt-4o", 1_234_567),
        "req-b": ("gpt-4o", 1),
        "req-c": ("gpt-4o-mini", 300),
        "req-r": ("gpt-4o", 5),
    }
    for request_id, (model, cost) in spent.items():
        ledger.reserve(account, "USDC", cost, request_id, ttl=60)
        ledger.settle(request_id, cost, record=UsageRecord(model, 10, 5, cost, lot_kind="listed", fee_bps=500))
    store = CoordinatorStore(ledger.engine)
    store.quarantine({"req-r": "no on-chain lot id"}, 0)
    assert store.refund("req-r", "never served", 0)  # nothing charged in the end: not counted
    day = 86_400
    with ledger.engine.begin() as conn:  # req-a was yesterday (UTC) at 23:59:59, the rest today at noon
        today = int(time.time()) // day * day
        for request_id, at in (("req-a", today - 1), ("req-b", today + day // 2), ("req-c", today + day // 2)):
            conn.execute(usage_records.update().where(usage_records.c.request_id == request_id).values(settled_at=at))
    yesterday, today_text = (time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (today - 1, today))

    totals = dashboard.get("/api/usage-totals", headers=headers).json()
    assert totals["records"] == 4 and totals["complete"]
    assert totals["per_model"] == [
        {"model": "gpt-4o", "asset": "USDC", "requests": 2, "tokens": 30, "cost": "1234568"},
        {"model": "gpt-4o-mini", "asset": "USDC", "requests": 1, "tokens": 15, "cost": "300"},
    ]
    assert totals["per_day"] == [
        {"day": today_text, "asset": "USDC", "requests": 2, "cost": "301"},
        {"day": yesterday, "asset": "USDC", "requests": 1, "cost": "1234567"},
    ]

    answer = dashboard.get("/api/usage.csv", headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert f"promptex-usage-{account}.csv" in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["request_id"] for r in rows[:1]] == ["req-a"]  # oldest first
    a = rows[0]
    assert (a["time_utc"], a["model"], a["cost"], a["cost_units"]) == (
        f"{yesterday} 23:59:59",
        "gpt-4o",
        "1.234567",
        "1234567",
    )
    assert {r["request_id"]: r["status"] for r in rows}["req-r"] == "refunded"
    assert {r["mode"] for r in rows} == {"capped"} and {r["voucher_session"] for r in rows} == {""}
    assert dashboard.get("/api/usage.csv").status_code == 401  # the key's own records only


def test_usage__signed_mode_record__its_mode_and_voucher_in_the_rows_and_the_csv(dashboard):
    import csv
    import io

    from promptex.ledger import UsageRecord
    from promptex.ledger.schema import usage_records

    headers, account = spender(dashboard, 1_000_000, "0xs1:0")
    ledger = dashboard.ledger
    ledger.reserve(account, "USDC", 400, "req-s", ttl=60)
    ledger.settle("req-s", 400, record=UsageRecord("gpt-4o", 10, 5, 400))
    # As the gateway records a request a voucher covered (its hold's lane takes the ledger's general path).
    with ledger.engine.begin() as conn:
        voucher = {"mode": "signed", "voucher_session": 3, "voucher_lane": 1, "voucher_ceiling": 12_345}
        conn.execute(usage_records.update().where(usage_records.c.request_id == "req-s").values(**voucher))

    (row,) = dashboard.get("/api/usage", headers=headers).json()
    assert (row["mode"], row["voucher"]) == ("signed", {"session": 3, "lane": 1, "ceiling": "12345"})
    (line,) = csv.DictReader(io.StringIO(dashboard.get("/api/usage.csv", headers=headers).text))
    assert (line["mode"], line["voucher_session"], line["voucher_lane"], line["voucher_ceiling_units"]) == (
        "signed", "3", "1", "12345",
    )  # fmt: skip


USDC_TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def session_form(dashboard, wallet: Account, signer: Account | None = None, **change) -> dict:
    """A playground SessionKey for `wallet` in USDC, signed by `signer` (default: the wallet)."""
    from promptex.protocol.vault import sign_session_key

    terms = {"account": wallet.address, "key": Account.create().address, "lanes": 1, "maximum": 5_000_000}
    terms |= {"expiry": 2_000_000_000, "nonce": 0, **change}
    signature = sign_session_key((signer or wallet).key, chain_id=31337, vault=VAULT, asset=USDC_TOKEN, **terms)
    return {**terms, "asset": "USDC", "signature": "0x" + signature.hex()}


def test_session_keys__signed_by_the_bound_wallet__queued_for_the_relay_once(dashboard):
    from promptex.coordinator.store import CoordinatorStore

    wallet = Account.create()
    headers = {"authorization": f"Bearer {obtain_key(dashboard, wallet).json()['key']}"}
    form = session_form(dashboard, wallet)
    for _ in range(2):  # idempotent: the same SessionKey twice is one submission
        answer = dashboard.post("/api/session-keys", headers=headers, json=form)
        assert answer.status_code == 200, answer.text
    [queued] = CoordinatorStore(dashboard.ledger.engine).session_keys()
    assert (queued.address, queued.asset, queued.key, queued.maximum, queued.nonce) == (
        wallet.address, "USDC", form["key"], 5_000_000, 0,
    )  # fmt: skip
    assert answer.json()["queued"] == queued.id


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("another signer", 400, "was signed by"),
        ("a wallet not bound to the key", 403, "not bound to this key's account"),
        ("no lanes", 400, "1 to 64 lanes"),
        ("an unknown asset", 400, "asset must be one of"),
        ("a maximum of zero", 400, "above zero"),
        ("a wallet bound second", 403, "is not the wallet this account's settlements debit"),
    ],
)
def test_session_keys__refused__readable_and_nothing_queued(dashboard, case, status, message):
    """A wallet bound second signs no session of its account's (wbreak s15): the vault takes
    the account's usage from its first wallet alone, so vouchers under it would be refused."""
    from promptex.coordinator.store import CoordinatorStore
    from promptex.ledger.binding import sign

    wallet = Account.create()
    headers = {"authorization": f"Bearer {obtain_key(dashboard, wallet).json()['key']}"}
    stranger = Account.create()
    if case == "a wallet bound second":
        account = dashboard.ledger.account_of(wallet.address)
        challenge = dashboard.ledger.issue_binding_challenge(account, stranger.address)
        dashboard.ledger.bind_wallet(challenge, sign(challenge, stranger.key))
    form = {
        "another signer": lambda: session_form(dashboard, wallet, signer=stranger),
        "a wallet not bound to the key": lambda: session_form(dashboard, stranger),
        "no lanes": lambda: session_form(dashboard, wallet, lanes=0),
        "an unknown asset": lambda: {**session_form(dashboard, wallet), "asset": "XYZ"},
        "a maximum of zero": lambda: session_form(dashboard, wallet, maximum=0),
        "a wallet bound second": lambda: session_form(dashboard, stranger),
    }[case]()
    answer = dashboard.post("/api/session-keys", headers=headers, json=form)
    assert answer.status_code == status and message in answer.json()["error"], answer.text
    assert CoordinatorStore(dashboard.ledger.engine).session_keys() == []


def test_session_keys__what_the_vault_would_refuse_or_cut__400_and_nothing_queued(dashboard):
    """Refused at once rather than stored to fail at the relay (or be cut by the vault): a
    replayed SessionKey (its nonce's session is registered), an expiry past or beyond the
    vault's range, a maximum beyond what the vault holds, the next one while the registered
    session's vouchers still settle. (One test: one dashboard.)"""
    from promptex.coordinator.store import CoordinatorStore

    wallet = Account.create()
    headers = {"authorization": f"Bearer {obtain_key(dashboard, wallet).json()['key']}"}
    replayed = session_form(dashboard, wallet)  # nonce 0, registered on chain below
    dashboard.ledger.register_session(
        f"0x{time.monotonic_ns():064x}:0", address=wallet.address, asset="USDC", asset_address=USDC_TOKEN,
        chain_id=31337, vault=VAULT, key=replayed["key"], session=0, lanes=1, maximum=5_000_000,
        expiry=2_000_000_000, signed_from=1,
    )  # fmt: skip
    huge = {**session_form(dashboard, wallet, nonce=1, maximum=2**96), "maximum": str(2**96)}  # a JSON-safe string
    for form, message in [
        (replayed, "already registered"),
        (session_form(dashboard, wallet, nonce=1, expiry=int(time.time()) - 1), "expired"),
        (session_form(dashboard, wallet, nonce=1, expiry=2**32), "beyond the vault's range"),
        (huge, "beyond what the vault holds"),
    ]:
        answer = dashboard.post("/api/session-keys", headers=headers, json=form)
        assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    next_one = session_form(dashboard, wallet, nonce=1)  # while session 0 is in force: the vault would refuse it
    answer = dashboard.post("/api/session-keys", headers=headers, json=next_one)
    assert answer.status_code == 409 and "session 0 in USDC is in force until" in answer.json()["error"], answer.text
    assert CoordinatorStore(dashboard.ledger.engine).session_keys() == []
    dashboard.ledger.revoke_session(
        f"0x{time.monotonic_ns():064x}:1", address=wallet.address, asset="USDC", session=0, ends_at=int(time.time()) - 1
    )  # revoked, and its vouchers no longer settle
    fresh = dashboard.post("/api/session-keys", headers=headers, json=next_one)
    assert fresh.status_code == 200, fresh.text


def test_session_keys__checked_at_the_chain_s_time_not_the_wall_s(dashboard):
    """The coordinator's door checks a SessionKey at the chain's time, the vault's; the dashboard
    checked it at the wall's (s17 review). On a chain two days ahead (a node's time moved), a
    key expiring tomorrow by the wall — expired for the vault — was queued for the relay, and
    the next key was refused while a session expired by the chain's time was "in force"."""
    from promptex.coordinator.store import CoordinatorStore

    wallet = Account.create()
    headers = {"authorization": f"Bearer {obtain_key(dashboard, wallet).json()['key']}"}
    wall, dashboard.chain_ahead[0] = int(time.time()), 2 * 86_400
    expired = dashboard.post(
        "/api/session-keys", headers=headers, json=session_form(dashboard, wallet, expiry=wall + 86_400)
    )
    assert expired.status_code == 400 and "expired" in expired.json()["error"], expired.text
    assert CoordinatorStore(dashboard.ledger.engine).session_keys() == []
    dashboard.ledger.register_session(
        f"0x{time.monotonic_ns():064x}:0", address=wallet.address, asset="USDC", asset_address=USDC_TOKEN,
        chain_id=31337, vault=VAULT, key=Account.create().address, session=0, lanes=1, maximum=5_000_000,
        expiry=wall + 86_400, signed_from=1, settles_until=wall + 86_400 + 1_200,
    )  # fmt: skip
    following = session_form(dashboard, wallet, nonce=1, expiry=wall + 30 * 86_400)  # session 0's windows are over
    answer = dashboard.post("/api/session-keys", headers=headers, json=following)
    assert answer.status_code == 200, answer.text


def test_session_keys__the_chain_s_node_silent__503_nothing_queued(dashboard):
    """The chain's time comes from the node (as the door reads it): none answering, one line."""
    from promptex.coordinator.store import CoordinatorStore

    wallet = Account.create()
    with TestClient(create_app(dashboard.settings, dashboard.options, ledger=dashboard.ledger)) as client:
        headers = {"authorization": f"Bearer {obtain_key(client, wallet).json()['key']}"}
        answer = client.post("/api/session-keys", headers=headers, json=session_form(dashboard, wallet))
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "the chain's time cannot be read now (its node does not answer): try again shortly"
    assert CoordinatorStore(dashboard.ledger.engine).session_keys() == []


def test_keys__signed_by_another_wallet__refused_and_no_key(dashboard):
    issued = obtain_key(dashboard, Account.create(), signer=Account.create())
    assert issued.status_code == 400
    assert "could not be bound" in issued.json()["error"]
    assert "key" not in issued.json()


@pytest.mark.parametrize("header", [None, "Bearer px-not-a-key", "Basic abc"])
def test_usage__without_a_valid_key__401_with_a_readable_message(dashboard, header):
    headers = {"authorization": header} if header else {}
    for path in ("/api/account", "/api/usage", "/api/usage/req_x", "/api/usage/req_x/proof"):
        answer = dashboard.get(path, headers=headers)
        assert answer.status_code == 401, path
        assert "API key" in answer.json()["error"]


def test_usage__someone_elses_or_unknown_record__404(dashboard):
    key = obtain_key(dashboard, Account.create()).json()["key"]
    answer = dashboard.get("/api/usage/req_unknown/proof", headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 404


def test_rpc__a_write_method__refused_without_reaching_the_node(dashboard):
    for method in ("eth_sendTransaction", "eth_sendRawTransaction", "anvil_setBalance", "eth_sign"):
        answer = dashboard.post("/rpc", json={"jsonrpc": "2.0", "id": 7, "method": method, "params": []})
        assert answer.status_code == 200
        assert answer.json()["error"]["code"] == -32601 and answer.json()["id"] == 7
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_sendTransaction", "params": []},
    ]
    assert all(item["error"]["code"] == -32601 for item in dashboard.post("/rpc", json=batch).json())


def test_rpc__a_read_with_the_node_down__502_without_the_nodes_url(dashboard):
    answer = dashboard.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    assert answer.status_code == 502
    assert "secret-provider-key" not in answer.text


def test_config__addresses_and_assets__no_node_url(dashboard):
    config = dashboard.get("/api/config").json()
    assert config["chain_id"] == 31337 and config["contracts"]["CreditsVault"] == VAULT
    assert [a["symbol"] for a in config["assets"]] == ["USDC", "CLD", "GPT"]
    assert config["rpc"] == "/rpc" and "secret-provider-key" not in json.dumps(config)


def test_gateway__down__openai_error_body_502(dashboard):
    answer = dashboard.get("/v1/models", headers={"authorization": "Bearer px-x"})
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "gateway_unavailable"


def test_front_end__not_built__page_says_how_to_build(dashboard):
    answer = dashboard.get("/")
    assert answer.status_code == 503 and "make setup" in answer.text
    assert dashboard.get("/api/nope").status_code == 404


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def link_unreachable_account(dashboard, user: str, credential: str) -> None:
    """A linked account whose billing API does not answer, its credential sealed as the agent seals it."""
    keys = load_master_keys(None, dashboard.settings.gateway_master_key_file)
    billing_url = f"http://127.0.0.1:{dashboard.dead}"
    sealed = keys.seal(credential.encode())
    AgentStore(dashboard.ledger.engine).link_account(
        user, "anthropic", "acct_1", b"s", b"r" * 32, billing_url, sealed, 1
    )


def test_redemption__own_wallet__accounts_without_the_credential_and_a_rule_added(dashboard):
    wallet = Account.create()
    key = obtain_key(dashboard, wallet).json()["key"]
    link_unreachable_account(dashboard, wallet.address, "billing-secret-credential")
    rule = {"wallet": wallet.address, "provider": "anthropic", "token": "CLD", "below_usd": "20", "add_usd": "20"}
    added = dashboard.post("/api/redemption/rules", json={**rule, "max_tokens": "5000"}, headers=bearer(key))
    assert added.status_code == 200, added.text
    view = dashboard.get("/api/redemption", headers=bearer(key))
    assert view.status_code == 200, view.text
    body = view.json()
    [account] = body["accounts"]
    assert account["provider"] == "anthropic" and account["balance_live"] is False  # its billing API is down
    assert "billing-secret-credential" not in view.text
    assert [(r["id"], r["below_usd_micro"], r["max_tokens_in"]) for r in body["rules"]] == [
        (added.json()["id"], 20 * 10**6, str(5000 * 10**18))
    ]
    assert body["redemptions"] == [] and body["agent"].startswith("0x")


def test_redemption__another_wallet__403_and_no_rule_saved(dashboard):
    mine, theirs = Account.create(), Account.create()
    key = obtain_key(dashboard, mine).json()["key"]
    obtain_key(dashboard, theirs)
    assert dashboard.get(f"/api/redemption?wallet={theirs.address}", headers=bearer(key)).status_code == 403
    rule = {"wallet": theirs.address, "provider": "anthropic", "token": "CLD", "below_usd": "20", "add_usd": "20"}
    refused = dashboard.post("/api/redemption/rules", json={**rule, "max_tokens": "1"}, headers=bearer(key))
    assert refused.status_code == 403 and "your own" in refused.json()["error"]
    assert dashboard.post("/api/redemption/rules", json=rule).status_code == 401
    assert AgentStore(dashboard.ledger.engine).rules(enabled_only=False) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"below_usd": "twenty"}, "not a dollar amount"),
        ({"add_usd": "-5"}, "positive"),
        ({"token": "USDC"}, "pick one of CLD"),
        ({"provider": ""}, "provider name"),
        ({"max_tokens": "0.0000000000000000001"}, "18 decimals"),
    ],
)
def test_redemption__bad_rule__400_readable_and_nothing_saved(dashboard, change, message):
    wallet = Account.create()
    key = obtain_key(dashboard, wallet).json()["key"]
    rule = {"wallet": wallet.address, "provider": "anthropic", "token": "CLD", "below_usd": "20", "add_usd": "20"}
    refused = dashboard.post("/api/redemption/rules", json={**rule, "max_tokens": "10", **change}, headers=bearer(key))
    assert refused.status_code == 400 and message in refused.json()["error"]
    assert AgentStore(dashboard.ledger.engine).rules(enabled_only=False) == []


def test_redemption__switch_own_rule_off_and_on__others_rule_404_and_unchanged(dashboard):
    mine, theirs = Account.create(), Account.create()
    key, their_key = (obtain_key(dashboard, w).json()["key"] for w in (mine, theirs))
    rule = {"provider": "anthropic", "token": "CLD", "below_usd": "20", "add_usd": "20", "max_tokens": "10"}
    own = dashboard.post("/api/redemption/rules", json=rule, headers=bearer(key)).json()["id"]
    their = dashboard.post("/api/redemption/rules", json=rule, headers=bearer(their_key)).json()["id"]
    store = AgentStore(dashboard.ledger.engine)

    off = dashboard.post(f"/api/redemption/rules/{own}", json={"enabled": False}, headers=bearer(key))
    assert off.status_code == 200 and off.json() == {"id": own, "enabled": False}
    assert [r.id for r in store.rules()] == [their]  # the agent checks only rules that are on
    assert (
        dashboard.post(f"/api/redemption/rules/{own}", json={"enabled": True}, headers=bearer(key)).status_code == 200
    )
    assert [r.id for r in store.rules()] == [own, their]

    stolen = dashboard.post(f"/api/redemption/rules/{their}", json={"enabled": False}, headers=bearer(key))
    assert stolen.status_code == 404 and "no rule" in stolen.json()["error"]
    bad = dashboard.post(f"/api/redemption/rules/{own}", json={"enabled": "no"}, headers=bearer(key))
    assert bad.status_code == 400 and "enabled: true or false" in bad.json()["error"]
    assert dashboard.post(f"/api/redemption/rules/{own}", json={"enabled": False}).status_code == 401
    assert [r.id for r in store.rules()] == [own, their]


@pytest.fixture
def billing(dashboard):
    """The fake billing API with one account, and the dashboard pointed at it (with the master key)."""
    load_master_keys(None, dashboard.settings.gateway_master_key_file)
    config = FakeBillingConfig(
        signer_key="0x" + "22" * 32, chain_id=31337, escrow=VAULT,
        credentials={"acct_7": "scoped-credential"}, balances={"acct_7": 12 * 10**6},
    )  # fmt: skip
    with ServerThread(create_fake_billing(config)) as server:
        settings = dashboard.settings.model_copy(update={"agent_billing_url": server.url})
        with TestClient(create_app(settings, dashboard.options, ledger=dashboard.ledger)) as client:
            client.ledger = dashboard.ledger
            yield client


def test_redemption__link_an_account__credential_checked_sealed_and_never_shown(billing):
    wallet = Account.create()
    key = obtain_key(billing, wallet).json()["key"]
    form = {"provider": "anthropic", "account_id": "acct_7", "credential": "scoped-credential"}
    linked = billing.post("/api/redemption/accounts", json=form, headers=bearer(key))
    assert linked.status_code == 200, linked.text
    assert linked.json()["balance_usd_micro"] == 12 * 10**6 and "scoped-credential" not in linked.text
    [stored] = AgentStore(billing.ledger.engine).linked_accounts(wallet.address)
    assert (stored.provider, stored.account_id, "0x" + stored.account_ref.hex()) == (
        "anthropic", "acct_7", linked.json()["account_ref"],
    )  # fmt: skip
    assert stored.sealed.ciphertext.find(b"scoped-credential") == -1
    view = billing.get("/api/redemption", headers=bearer(key))
    assert view.json()["accounts"][0]["balance_live"] is True and "scoped-credential" not in view.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"credential": "not-the-credential"}, "the billing API did not accept this account and credential"),
        ({"account_id": "acct_unknown"}, "the billing API did not accept"),
        ({"credential": ""}, "give the scoped billing credential"),
        ({"account_id": " "}, "give the account id"),
        ({"provider": ""}, "provider"),
    ],
)
def test_redemption__link_with_a_refused_credential_or_bad_form__400_and_nothing_stored(billing, change, message):
    wallet = Account.create()
    key = obtain_key(billing, wallet).json()["key"]
    form = {"provider": "anthropic", "account_id": "acct_7", "credential": "scoped-credential", **change}
    refused = billing.post("/api/redemption/accounts", json=form, headers=bearer(key))
    assert refused.status_code == 400 and message in refused.json()["error"], refused.text
    assert "scoped-credential" not in refused.text and "not-the-credential" not in refused.text
    assert AgentStore(billing.ledger.engine).linked_accounts(wallet.address) == []


def test_redemption__link_for_another_wallet__403_and_nothing_stored(billing):
    mine, theirs = Account.create(), Account.create()
    key = obtain_key(billing, mine).json()["key"]
    form = {"provider": "anthropic", "account_id": "acct_7", "credential": "scoped-credential"}
    form["wallet"] = theirs.address
    assert billing.post("/api/redemption/accounts", json=form, headers=bearer(key)).status_code == 403
    assert AgentStore(billing.ledger.engine).linked_accounts(theirs.address) == []


def org_owner_key(dashboard, name: str = "Acme") -> tuple[int, str]:
    """An org account with a wallet bound to it; that wallet's key is the org owner's."""
    ledger, owner = dashboard.ledger, Account.create()
    org = ledger.create_account(AccountKind.ORG, name).id
    message = ledger.issue_binding_challenge(org, owner.address)
    ledger.bind_wallet(message, sign(message, owner.key))
    issued = obtain_key(dashboard, owner).json()
    assert issued.get("account") == org, issued
    return org, issued["key"]


def test_org__owner__desk_with_members_and_a_new_member_key_shown_once(dashboard):
    org, key = org_owner_key(dashboard)
    made = dashboard.post(
        "/api/org/members", json={"name": "ada", "budget_asset": "USDC", "budget": "25"}, headers=bearer(key)
    )
    assert made.status_code == 200, made.text
    desk = dashboard.get("/api/org", headers=bearer(key))
    assert desk.status_code == 200 and desk.json()["org"] == org
    [member] = desk.json()["members"]
    assert member["name"] == "ada" and member["budgets"] == [{"asset": "USDC", "remaining": "25000000", "held": "0"}]
    assert [k["prefix"] for k in member["keys"]] == [made.json()["prefix"]]
    assert made.json()["key"] not in desk.text  # prefixes only
    # The member's key spends from the org but is not its owner's.
    refused = dashboard.get("/api/org", headers=bearer(made.json()["key"]))
    assert refused.status_code == 403 and "a member key of org 'Acme'" in refused.json()["error"], refused.text


def test_org__a_user_key_or_a_bad_budget__refused_and_nothing_added(dashboard):
    user_key = obtain_key(dashboard, Account.create()).json()["key"]
    refused = dashboard.get("/api/org", headers=bearer(user_key))
    # How an org the desk shows to is made (before: `buyer org-key`, which makes one with no owner's wallet)
    assert refused.status_code == 403 and "`promptex org create NAME --owner-wallet 0x…`" in refused.json()["error"]
    assert dashboard.post("/api/org/members", json={}, headers=bearer(user_key)).status_code == 403
    _org, key = org_owner_key(dashboard)
    bad = dashboard.post("/api/org/members", json={"budget_asset": "USDC", "budget": "1.0000001"}, headers=bearer(key))
    assert bad.status_code == 400 and "no member was added" in bad.json()["error"]
    assert dashboard.get("/api/org", headers=bearer(key)).json()["members"] == []


# ─── seller onboarding ───────────────────────────────────────────────────────

GOOD_UPSTREAM_KEY = "sk-seller-good-key"


def capacity_form(upstream_url: str, api_key: str = GOOD_UPSTREAM_KEY, **change) -> dict:
    form = {
        "provider": "openai",
        "base_url": upstream_url + "/v1",
        "api_key": api_key,
        "face_value_usd_micro": "250000000",
        "kind": "listed",
        "rate_bps": 6000,
        "expires_at": int(time.time()) + 30 * 86_400,
        "bond": "25000000",
        "declare_resale_permitted": True,
    }
    return {**form, **change}


@pytest.fixture
def upstream():
    config = FakeUpstreamConfig(api_keys=frozenset({GOOD_UPSTREAM_KEY}))
    with ServerThread(create_fake_upstream(config)) as server:
        server.config = config
        yield server


def upstream_calls(upstream) -> int:
    return upstream.config.requests


@pytest.fixture
def attesting(dashboard, upstream):
    """The same dashboard with an attestor key (on a chain that does not answer), the gateway's
    master key, and the fake upstream among the URLs sellers may onboard."""
    load_master_keys(None, dashboard.settings.gateway_master_key_file)
    update = {"attestor_private_key": SecretStr("0x" + "11" * 32), "dashboard_seller_base_urls": [upstream.url + "/v1"]}
    settings = dashboard.settings.model_copy(update=update)
    with TestClient(create_app(settings, dashboard.options, ledger=dashboard.ledger)) as client:
        client.ledger = dashboard.ledger
        yield client


def gateway_lots(dashboard) -> list:
    return GatewayStore(dashboard.ledger.engine).lots()


def seller_key(dashboard) -> tuple[Account, str]:
    seller = Account.create()
    return seller, obtain_key(dashboard, seller).json()["key"]


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"declare_resale_permitted": False}, 400, "declare that your agreement permits resale"),
        ({"face_value_usd_micro": "250 USD"}, 400, "face_value_usd_micro must be an integer"),
        ({"bond": "-1"}, 400, "bond cannot be negative"),
        ({"bond": -25_000_000}, 400, "bond cannot be negative"),
        ({"face_value_usd_micro": "-250000000"}, 400, "face_value_usd_micro cannot be negative"),
        ({"kind": "rented"}, 400, "kind is one of tokenized, listed"),
        ({"rate_bps": 0}, 400, "a listed lot's rate is a fraction of list price"),
        ({"expires_at": 1_000}, 400, "a lot must be valid for at least 7 days"),
        ({"provider": "acme"}, 400, "no provider token for provider 'acme'"),
        ({"api_key": "sk-not-this-one"}, 400, "the provider refused the API key"),
        ({"api_key": ""}, 400, "give the API key to sell capacity from"),
    ],
)
def test_seller__bad_terms_or_a_refused_key__400_readable_and_nothing_stored(
    attesting, upstream, change, status, message
):
    _, key = seller_key(attesting)
    answer = attesting.post("/api/seller/capacity", json=capacity_form(upstream.url, **change), headers=bearer(key))
    assert answer.status_code == status, answer.text
    assert answer.json()["error"].startswith("no lot was opened") and message in answer.json()["error"]
    assert gateway_lots(attesting) == []
    assert GOOD_UPSTREAM_KEY not in answer.text and "sk-not-this-one" not in answer.text


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:22/v1", "http://169.254.169.254/latest/meta-data", "https://api.openai.com.evil.example/v1"],
)
def test_seller__base_url_not_a_listed_provider__400_no_call_made_and_nothing_stored(attesting, upstream, base_url):
    _, key = seller_key(attesting)
    calls = upstream_calls(upstream)
    form = {**capacity_form(upstream.url), "base_url": base_url}
    answer = attesting.post("/api/seller/capacity", json=form, headers=bearer(key))
    assert answer.status_code == 400, answer.text
    assert "only from these provider URLs" in answer.json()["error"] and upstream.url in answer.json()["error"]
    assert gateway_lots(attesting) == [] and upstream_calls(upstream) == calls


def test_seller__listed_url_with_a_trailing_slash__accepted_as_the_same(attesting, upstream):
    _, key = seller_key(attesting)
    calls = upstream_calls(upstream)
    answer = attesting.post(
        "/api/seller/capacity", json=capacity_form(upstream.url, base_url=upstream.url + "/v1/"), headers=bearer(key)
    )
    assert answer.status_code == 502 and "the chain's node does not answer" in answer.json()["error"], answer.text
    assert upstream_calls(upstream) == calls + 1  # the key was verified there


def test_seller__good_key_but_the_chain_down__502_and_nothing_stored(attesting, upstream):
    _, key = seller_key(attesting)
    answer = attesting.post("/api/seller/capacity", json=capacity_form(upstream.url), headers=bearer(key))
    assert answer.status_code == 502 and "no lot was opened" in answer.json()["error"], answer.text
    assert gateway_lots(attesting) == [] and GOOD_UPSTREAM_KEY not in answer.text


def test_seller__dashboard_without_an_attestor_key__503_says_use_the_cli_and_nothing_stored(dashboard, upstream):
    _, key = seller_key(dashboard)
    form = capacity_form(upstream.url, base_url="https://api.openai.com/v1")  # listed by default; never called
    answer = dashboard.post("/api/seller/capacity", json=form, headers=bearer(key))
    assert answer.status_code == 503 and "promptex seller add-capacity" in answer.json()["error"]
    assert gateway_lots(dashboard) == []


def test_seller__a_wallet_not_bound_to_the_key__403_and_nothing_stored(attesting, upstream):
    _, key = seller_key(attesting)
    stranger = Account.create().address
    answer = attesting.post(
        "/api/seller/capacity", json=capacity_form(upstream.url, wallet=stranger), headers=bearer(key)
    )
    assert answer.status_code == 403 and "not bound to this key's account" in answer.json()["error"]
    assert attesting.post("/api/seller/capacity", json=capacity_form(upstream.url)).status_code == 401
    assert gateway_lots(attesting) == []


# ─── key challenges: one pending account per wallet, new accounts capped per client ─


def account_count(dashboard) -> int:
    with dashboard.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(accounts)).scalar_one())


def test_keys__a_wallet_asks_twice__one_pending_account_and_either_challenge_binds(dashboard):
    wallet = Account.create()
    first = dashboard.post("/api/keys/challenge", json={"wallet": wallet.address}).json()["binding"]
    count = account_count(dashboard)
    second = dashboard.post("/api/keys/challenge", json={"wallet": wallet.address.lower()}).json()["binding"]
    assert second == first  # still outstanding: given again, nothing stored
    assert account_count(dashboard) == count
    signature = sign(BindingMessage(**first), wallet.key)
    bound = dashboard.post("/api/keys/bind", json={"binding": first, "signature": "0x" + signature.hex()})
    assert bound.status_code == 200 and bound.json()["account"] == first["account"]


def test_keys__a_wallet_someone_signed_up_for__bound_to_an_account_of_its_own_not_theirs(dashboard):
    """`promptex buyer signup --wallet W` makes an account, hands its runner the key, and issues
    W a challenge for it. W asking the dashboard for a key was given that challenge (the account
    of its last challenge, still unbound): W signed, was bound into an account another holds a
    key of — its deposits spent with that key (sbreak s17). Now W gets an account of its own;
    the signup's challenge no longer binds (the wallet is bound elsewhere)."""
    victim = Account.create()
    store = GatewayStore(dashboard.ledger.engine)
    theirs = signup(dashboard.ledger, store, int(time.time()))  # whoever ran signup holds theirs.key
    challenge = dashboard.ledger.issue_binding_challenge(theirs.account, victim.address)
    issued = obtain_key(dashboard, victim)
    assert issued.status_code == 200, issued.text
    assert issued.json()["account"] != theirs.account
    assert dashboard.ledger.account_of(victim.address) == issued.json()["account"]
    with pytest.raises(WalletAlreadyBound):
        dashboard.ledger.bind_wallet(challenge, sign(challenge, victim.key))
    # An org's owner wallet still signs the org's challenge there (no key of the org exists yet).
    org = dashboard.ledger.create_account(AccountKind.ORG, "acme").id
    owner = Account.create()
    dashboard.ledger.issue_binding_challenge(org, owner.address)
    assert obtain_key(dashboard, owner).json()["account"] == org


def challenge_count(dashboard) -> int:
    with dashboard.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(binding_challenges)).scalar_one())


def test_keys__a_bound_wallet_asked_for_again_and_again__one_challenge_stored_not_one_per_ask(dashboard, monkeypatch):
    """late1 s16: anyone may ask for any bound wallet's challenge, unthrottled; each ask stored a
    row (before: 5 asks, 5 rows). Now an unused challenge with half its ttl left is given again;
    a new one clears the address's expired ones; the one given still binds."""
    wallet = Account.create()
    assert obtain_key(dashboard, wallet).status_code == 200
    stored = challenge_count(dashboard)
    asked = [dashboard.post("/api/keys/challenge", json={"wallet": wallet.address}) for _ in range(5)]
    assert len({answer.json()["binding"]["nonce"] for answer in asked}) == 1
    assert challenge_count(dashboard) == stored + 1
    later = dashboard.ledger.clock() + dashboard.ledger.binding_ttl + 1
    monkeypatch.setattr(dashboard.ledger, "clock", lambda: later)
    fresh = dashboard.post("/api/keys/challenge", json={"wallet": wallet.address}).json()["binding"]
    assert fresh["nonce"] != asked[0].json()["binding"]["nonce"] and fresh["issued_at"] == later
    assert challenge_count(dashboard) == stored + 1  # the expired one cleared
    signature = sign(BindingMessage(**fresh), wallet.key)
    bound = dashboard.post("/api/keys/bind", json={"binding": fresh, "signature": "0x" + signature.hex()})
    assert bound.status_code == 200, bound.text


def test_keys__an_unbound_wallet_asks_twice_at_once__one_account(dashboard, monkeypatch):
    """wbreak s15: two challenges at once for one unbound wallet each read "no account" (the
    read in one transaction, the account created in another) and each created one: two
    accounts, one left empty for good. Here the second request runs while the first has read
    and not yet created: before, it read too and two accounts were made; now it waits for the
    first's write (SQLite: the ledger's writer lock). The first goes on once the second has
    read or waits for the lock (polled, as test_ledger_binding_race polls PostgreSQL's locks)."""
    wallet = Account.create()
    read, second_read = _wallets.challenged_account, threading.Event()
    answers: list = []
    writer, waiting = dashboard.ledger._writer, set()

    class Queued:  # the ledger's writer lock, telling which threads wait for it
        def __enter__(self) -> None:
            waiting.add(threading.get_ident())
            try:
                writer.__enter__()
            finally:
                waiting.discard(threading.get_ident())

        def __exit__(self, *exc) -> None:
            writer.__exit__(*exc)

    def ask() -> None:
        answers.append(dashboard.post("/api/keys/challenge", json={"wallet": wallet.address}))

    second = threading.Thread(target=ask)

    def challenged_account(conn, address):
        found = read(conn, address)
        if not second.is_alive() and not second_read.is_set() and not answers:
            second.start()
            until(lambda: second_read.is_set() or waiting, "the second challenge read or waiting for the writer", 10)
        else:
            second_read.set()
        return found

    monkeypatch.setattr(dashboard.ledger, "_writer", Queued())
    monkeypatch.setattr(_wallets, "challenged_account", challenged_account)
    before = account_count(dashboard)
    ask()
    second.join(10)
    assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
    assert len({answer.json()["binding"]["account"] for answer in answers}) == 1
    assert account_count(dashboard) == before + 1


def test_keys__too_many_new_wallets_from_one_client__429_and_no_account_created(dashboard):
    options = dataclasses.replace(dashboard.options, new_accounts_per_hour=2)
    with TestClient(create_app(dashboard.settings, options, ledger=dashboard.ledger)) as client:
        client.ledger = dashboard.ledger
        known = Account.create()
        assert obtain_key(client, known).status_code == 200
        assert client.post("/api/keys/challenge", json={"wallet": Account.create().address}).status_code == 200
        count = account_count(client)
        refused = client.post("/api/keys/challenge", json={"wallet": Account.create().address})
        assert refused.status_code == 429 and "too many new accounts" in refused.json()["error"]
        assert account_count(client) == count
        # A bound wallet still gets its challenges (a new key for its own account).
        assert obtain_key(client, known).status_code == 200
    bad = dashboard.post("/api/keys/challenge", json={"wallet": "0x1234"})
    assert bad.status_code == 400


def test_throttle__window_slides__events_counted_only_when_allowed():
    now = [0.0]
    throttle = Throttle(2, 60.0, clock=lambda: now[0])
    assert throttle.allow("a") and throttle.allow("a") and not throttle.allow("a")
    assert throttle.allow("b")  # per key
    now[0] = 59.9
    assert not throttle.allow("a")
    now[0] = 60.0  # the first two events left the window; the refused ones never counted
    assert throttle.allow("a") and throttle.allow("a") and not throttle.allow("a")


def test_seller_health__own_lots_only__errors_latency_and_a_refused_key_shown(dashboard):
    from promptex.gateway.health import LotHealth
    from promptex.sellers import Capacity, SellerStore

    seller, key = seller_key(dashboard)
    keys = load_master_keys(None, dashboard.settings.gateway_master_key_file)
    store = SellerStore(dashboard.ledger.engine)
    now = int(time.time())

    def lot(owner: str) -> int:
        capacity = Capacity(
            "openai", "openai", "http://127.0.0.1:9/v1", "sk-x", 100_000_000, "listed", 6000, now + 30 * 86_400,
            owner, True,
        )  # fmt: skip
        return store.record_lot(keys, capacity, route_until=capacity.expires_at - 3_600, now=now)

    mine, theirs = lot(seller.address), lot(Account.create().address)
    seen = LotHealth(failures=2)
    seen.succeeded(mine, 0.120)
    seen.failed(mine, "401", 401)
    seen.failed(mine, "401", 401)
    seen.failed(theirs, "timeout")
    seen.flush(dashboard.ledger.engine)

    answer = dashboard.get("/api/seller/health", headers=bearer(key))
    assert answer.status_code == 200, answer.text
    [view] = answer.json()
    assert (view["lot"], view["requests"], view["errors"], view["mean_latency_ms"]) == (mine, 3, 2, 120)
    assert view["last_error"] == "401" and view["key_refused_at"] is not None and view["circuit_open"] is True
    assert dashboard.get("/api/seller/health").status_code == 401


def test_exits__forwarded_to_the_coordinators_door_as_answered__without_a_door_503(dashboard):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    no_door = dashboard.post("/api/exits", json={"account": "0x" + "11" * 20})
    assert no_door.status_code == 503 and "promptex up" in no_door.json()["error"]["message"]
    seen = []

    async def exits(request):
        seen.append(await request.json())
        body = {"error": {"code": "rate_limited", "message": "try again in 60 s", "retry_after_seconds": 60}}
        return JSONResponse(body, 429, headers={"retry-after": "60"})

    async def nonce(request):
        return JSONResponse({"account": request.query_params["account"], "nonce": 3})

    door = Starlette(routes=[Route("/v1/exits", exits, methods=["POST"]), Route("/v1/exits/nonce", nonce)])
    with ServerThread(door) as server:
        settings = dashboard.settings.model_copy(update={"coordinator_door_url": server.url})
        with TestClient(create_app(settings, dashboard.options, ledger=dashboard.ledger)) as client:
            wallet = "0x" + "22" * 20
            assert client.get("/api/exits/nonce", params={"account": wallet}).json() == {"account": wallet, "nonce": 3}
            answer = client.post("/api/exits", json={"account": wallet, "amount": "5"})
    assert seen == [{"account": wallet, "amount": "5"}]  # the body as the browser sent it
    assert answer.status_code == 429 and answer.headers["retry-after"] == "60"
    assert answer.json()["error"]["message"] == "try again in 60 s"
