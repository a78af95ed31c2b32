"""The dashboard's server without a chain: the wallet-signed key endpoints, what a key may
read, the read-only JSON-RPC proxy, and the messages when a part is missing."""

import json

import pytest
from eth_account import Account
from starlette.testclient import TestClient

from anvil_node import free_port
from promptex.config import Settings
from promptex.dashboard import DashboardOptions, create_app
from promptex.ledger import Ledger
from promptex.ledger.binding import BindingMessage, sign

VAULT = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
SECRET_RPC = "http://127.0.0.1:{port}/secret-provider-key"


@pytest.fixture
def dashboard(tmp_path):
    deployments = tmp_path / "deployments"
    deployments.mkdir()
    record = {
        "network": "local",
        "chain_id": 31337,
        "block_number": 1,
        "deployer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "contracts": {
            "USDC": {"address": "0x5FbDB2315678afecb367f032d93F642f64180aa3", "abi": "x.json"},
            "CreditsVault": {"address": VAULT, "abi": "x.json"},
            "token:CLD": {"address": "0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9", "abi": "x.json"},
        },
    }
    (deployments / "local.json").write_text(json.dumps(record))
    settings = Settings(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}", deployments_dir=deployments)
    dead = free_port()  # nothing listens: anything forwarded fails loudly
    options = DashboardOptions(
        rpc_url=SECRET_RPC.format(port=dead),
        network="local",
        gateway_url=f"http://127.0.0.1:{dead}",
        dist=tmp_path / "no-dist",
        deployments_dir=deployments,
    )
    ledger = Ledger.from_settings(settings)
    with TestClient(create_app(settings, options, ledger=ledger)) as client:
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
    assert [a["symbol"] for a in config["assets"]] == ["USDC", "CLD"]
    assert config["rpc"] == "/rpc" and "secret-provider-key" not in json.dumps(config)


def test_gateway__down__openai_error_body_502(dashboard):
    answer = dashboard.get("/v1/models", headers={"authorization": "Bearer px-x"})
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "gateway_unavailable"


def test_front_end__not_built__page_says_how_to_build(dashboard):
    answer = dashboard.get("/")
    assert answer.status_code == 503 and "npm ci" in answer.text
    assert dashboard.get("/api/nope").status_code == 404
