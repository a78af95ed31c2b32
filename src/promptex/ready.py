"""What `promptex up` adds to a new local market so it can be used at once: TWAP history
(the local clock advanced with Oracle updates, so TWAP features work from the start), an
Oracle keeper, the welcome-credit treasury funded on chain, a demo buyer with a key and
its welcome credit, and a demo org with its owner's wallet bound.

Local chains only: it signs with anvil's public development accounts (unlocked on anvil)
and mints MockUSDC. Done once per market: `ready.json` in the market's folder records it
(and the demo key, a local key with promotional credit only), so a restart shows the same.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from promptex.chain.deployments import Deployment
from promptex.chain.node import connect, deployed_contract
from promptex.protocol.units import USD_MICRO
from promptex.protocol.vault import UNLIMITED, per_epoch_at_least

log = logging.getLogger("promptex.ready")

READY_FILE = "ready.json"
# anvil's public development accounts ("test test … junk"); 0, 7, 8, 9 are the deployer and
# coordinator, attestor, agent and billing signer.
KEEPER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"  # account 3
ORG_OWNER_KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"  # account 4
TREASURY_KEY = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"  # account 5
BUYER_KEY = "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e"  # account 6
TREASURY_FUNDS = 1_000 * USD_MICRO  # what the promotions treasury deposits: 100 welcome credits
TREASURY_PER_EPOCH = 100 * USD_MICRO
HISTORY_HOURS = 25  # hourly observations: a day of TWAP history (the 24 h change, the longest window)
DEMO_ORG = "demo-org"


@dataclass(frozen=True)
class Ready:
    buyer_account: int
    buyer_wallet: str
    buyer_key: str
    welcome_usd_micro: int
    org_account: int
    org_owner: str
    treasury_wallet: str


def _send(w3: Web3, fn: Any, sender: str) -> None:
    tx = fn.transact({"from": Web3.to_checksum_address(sender)})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=60)
    if receipt["status"] != 1:
        raise RuntimeError(f"transaction {tx.hex()} reverted")


def _tokens(deployment: Deployment) -> list[str]:
    return [Web3.to_checksum_address(deployment.address(f"token:{s}")) for s in deployment.token_symbols()]


def seed_twap_history(rpc_url: str, deployment: Deployment, hours: int = HISTORY_HOURS) -> int:
    """Record an Oracle observation of every provider token once an hour for `hours`,
    advancing anvil's clock between them: TWAPs over any window up to a day answer at
    once. Returns the observations recorded."""
    w3 = connect(rpc_url, timeout=30)
    oracle = deployed_contract(w3, deployment, "Oracle")
    recorded = 0
    for step in range(hours):
        if step:
            w3.provider.make_request("evm_increaseTime", [3_600])  # type: ignore[arg-type]
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        for token in _tokens(deployment):
            _send(w3, oracle.functions.update(token), KEEPER)
            recorded += 1
    return recorded


def is_local_chain(rpc_url: str) -> bool:
    """anvil (it answers anvil_nodeInfo): test dollars can be minted, its clock moved, and
    its development accounts sign unlocked."""
    import httpx

    try:
        body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_nodeInfo", "params": []}
        return "result" in httpx.post(rpc_url, json=body, timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False


class OracleKeeper:
    """Calls `Oracle.update` for every provider token each period (a no-op call inside one);
    `promptex keeper` runs it as its own process."""

    def __init__(self, rpc_url: str, deployment: Deployment, period: float, stop: threading.Event) -> None:
        self.rpc_url, self.deployment, self.period, self.stop = rpc_url, deployment, period, stop

    def run(self) -> None:
        w3 = connect(self.rpc_url, timeout=30)
        oracle = deployed_contract(w3, self.deployment, "Oracle")
        while not self.stop.wait(self.period):
            for token in _tokens(self.deployment):
                try:
                    if oracle.functions.update(token).call({"from": KEEPER}):  # due: record it
                        _send(w3, oracle.functions.update(token), KEEPER)
                except Exception as exc:  # a keeper keeps going; the next period tries again
                    log.warning("oracle keeper: %s", exc)


def fund_treasury(rpc_url: str, deployment: Deployment) -> str:
    """The promotions treasury's wallet mints test dollars, deposits them into the vault and
    caps what settlements may take per epoch (total unlimited). Returns the wallet."""
    w3 = connect(rpc_url, timeout=30)
    wallet = Account.from_key(TREASURY_KEY).address
    usdc, vault = deployed_contract(w3, deployment, "USDC"), deployed_contract(w3, deployment, "CreditsVault")
    _send(w3, usdc.functions.mint(wallet, TREASURY_FUNDS), wallet)
    _send(w3, usdc.functions.approve(vault.address, TREASURY_FUNDS), wallet)
    _send(w3, vault.functions.deposit(usdc.address, TREASURY_FUNDS), wallet)
    expiry = int(w3.eth.get_block("latest")["timestamp"]) + 365 * 86_400
    _send(
        w3,
        vault.functions.set_spend_cap(usdc.address, per_epoch_at_least(TREASURY_PER_EPOCH), UNLIMITED, expiry),
        wallet,
    )
    return str(wallet)


def bond_for(
    rpc_url: str, deployment: Deployment, seller: str, face_value_usd_micro: int, lots: int, token: str | None = None
) -> int:
    """The escrow's bond for a lot of this face value (USDC units) — a tokenized lot of
    `token`'s: its token's share, the only one accepted; a listed lot's (no token): the
    minimum — with `lots` of them minted to the seller (anvil's accounts are unlocked):
    what a demo seller needs before `promptex seller add-capacity --bond`, each lot's bond
    approved by `approve_bond` first."""
    w3 = connect(rpc_url, timeout=30)
    usdc, escrow = deployed_contract(w3, deployment, "USDC"), deployed_contract(w3, deployment, "CreditEscrow")
    if token is None:
        bond = int(escrow.functions.min_bond(face_value_usd_micro).call())
    else:
        bond = int(escrow.functions.tokenized_bond(Web3.to_checksum_address(token), face_value_usd_micro).call())
    if bond:
        _send(w3, usdc.functions.mint(Web3.to_checksum_address(seller), bond * lots), Web3.to_checksum_address(seller))
    return bond


def approve_bond(rpc_url: str, deployment: Deployment, seller: str, bond: int) -> None:
    """The demo seller (an unlocked anvil account) approves exactly one lot's bond to the
    escrow, which opens a lot only against an allowance of exactly its bond."""
    w3 = connect(rpc_url, timeout=30)
    usdc, escrow = deployed_contract(w3, deployment, "USDC"), deployed_contract(w3, deployment, "CreditEscrow")
    _send(w3, usdc.functions.approve(escrow.address, bond), Web3.to_checksum_address(seller))


def _bind(ledger: Any, account: int, key: str) -> str:
    from promptex.ledger.binding import sign

    wallet = str(Account.from_key(key).address)
    message = ledger.issue_binding_challenge(account, wallet)
    ledger.bind_wallet(message, sign(message, key))
    return wallet


def make_ready(
    rpc_url: str, deployment: Deployment, folder: Path, *, welcome_asset: str, welcome_amount: int, treasury: str
) -> Ready:
    """The treasury funded and bound, a demo buyer (bound, with its welcome credit) and a
    demo org with its owner; recorded in the market's folder. Once per market."""
    from promptex.config import Settings
    from promptex.gateway.buyers import bind_wallet, signup
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import AccountKind, Ledger
    from promptex.ledger.binding import sign

    recorded = read_ready(folder)
    if recorded is not None:
        return recorded
    treasury_wallet = fund_treasury(rpc_url, deployment)
    with Ledger.from_settings(Settings()) as ledger:
        _bind(ledger, ledger.treasury(treasury).id, TREASURY_KEY)  # its deposit is the treasury's
        new = signup(ledger, GatewayStore(ledger.engine), int(time.time()), name="demo buyer")
        message = ledger.issue_binding_challenge(new.account, Account.from_key(BUYER_KEY).address)
        bind_wallet(ledger, message, sign(message, BUYER_KEY), welcome_asset=welcome_asset,
                    welcome_amount=welcome_amount, treasury=treasury)  # fmt: skip
        org = ledger.create_account(AccountKind.ORG, DEMO_ORG).id
        owner = _bind(ledger, org, ORG_OWNER_KEY)
    ready = Ready(new.account, str(message.wallet), new.key, welcome_amount, org, owner, treasury_wallet)
    path = folder / READY_FILE
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(ready), indent=2) + "\n")
    path.chmod(0o600)  # the demo key: local, promotional credit only, but a key
    return ready


def read_ready(folder: Path) -> Ready | None:
    try:
        return Ready(**json.loads((folder / READY_FILE).read_text()))
    except FileNotFoundError:
        return None
