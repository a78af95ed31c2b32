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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_account import Account
from web3 import Web3

from promptex.chain.deployments import Deployment
from promptex.chain.node import connect, deployed_contract
from promptex.files import write_whole
from promptex.protocol.units import USD_MICRO
from promptex.protocol.vault import UNLIMITED, per_epoch_at_least

if TYPE_CHECKING:
    from promptex.gateway.store import GatewayStore

log = logging.getLogger("promptex.ready")

READY_FILE = "ready.json"
# The hash of the demo key `make_ready` is issuing, written before the ledger has the key and
# removed once ready.json shows it: a run cut off between the two leaves it, and the next
# run revokes that key (never shown to anyone) before it issues its own.
UNSHOWN_KEY = "demo-key.unshown"
# anvil's public development accounts ("test test … junk"); 0, 7, 8, 9 are the deployer and
# coordinator, attestor, agent and billing signer.
KEEPER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"  # account 3
ORG_OWNER_KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"  # account 4
TREASURY_KEY = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"  # account 5
BUYER_KEY = "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e"  # account 6
TREASURY_FUNDS = 1_000 * USD_MICRO  # what the promotions treasury deposits: 100 welcome credits
TREASURY_PER_EPOCH = 100 * USD_MICRO
HISTORY_HOURS = 25  # hourly observations: a day of TWAP history (the 24 h change, the longest window)
HISTORY_SECONDS = (HISTORY_HOURS - 1) * 3_600  # how far the history moves the chain's clock
DEMO_ORG = "demo-org"
DEMO_BUYER = "demo buyer"


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
    advancing anvil's clock between them (by HISTORY_SECONDS in all): TWAPs over any window
    up to a day answer at once. Returns the observations recorded."""
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


def fund_treasury(rpc_url: str, deployment: Deployment) -> tuple[str, bool]:
    """The promotions treasury's wallet mints test dollars, deposits them into the vault and
    caps what settlements may take per epoch (total unlimited). Returns (the wallet, whether
    anything was sent).

    Each step the chain lacks, no more: a funding cut anywhere (`up` killed, or anvil's last
    state dump taken between two of its transactions) is finished by the next `up`, never
    done twice: a cap on chain is a funded treasury (settlements never remove it); a deposit
    without a cap gets its cap; nothing deposited gets the deposit (minting only what the
    wallet lacks) and then the cap."""
    w3 = connect(rpc_url, timeout=30)
    wallet = Account.from_key(TREASURY_KEY).address
    usdc, vault = deployed_contract(w3, deployment, "USDC"), deployed_contract(w3, deployment, "CreditsVault")
    if vault.functions.spend_cap(wallet, usdc.address).call()[2] != 0:
        return str(wallet), False
    if vault.functions.balance_of(wallet, usdc.address).call() == 0:
        held = int(usdc.functions.balanceOf(wallet).call())
        if held < TREASURY_FUNDS:
            _send(w3, usdc.functions.mint(wallet, TREASURY_FUNDS - held), wallet)
        _send(w3, usdc.functions.approve(vault.address, TREASURY_FUNDS), wallet)
        _send(w3, vault.functions.deposit(usdc.address, TREASURY_FUNDS), wallet)
    expiry = int(w3.eth.get_block("latest")["timestamp"]) + 365 * 86_400
    _send(
        w3,
        vault.functions.set_spend_cap(usdc.address, per_epoch_at_least(TREASURY_PER_EPOCH), UNLIMITED, expiry),
        wallet,
    )
    return str(wallet), True


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
    """Bind `key`'s wallet to `account`, unless it is bound to it already."""
    from promptex.ledger.binding import sign

    wallet = str(Account.from_key(key).address)
    if ledger.account_of(wallet) != account:
        message = ledger.issue_binding_challenge(account, wallet)
        ledger.bind_wallet(message, sign(message, key))
    return wallet


def _named(ledger: Any, kind: Any, name: str) -> int:
    """The account of `kind` named `name`, created if there is none."""
    from promptex.ledger.accounts import account_by_name

    with ledger.engine.connect() as conn:
        found = account_by_name(conn, kind, name)
    return found.id if found is not None else int(ledger.create_account(kind, name).id)


def make_ready(
    rpc_url: str, deployment: Deployment, folder: Path, *, welcome_asset: str, welcome_amount: int, treasury: str
) -> Ready:
    """The treasury funded and bound, a demo buyer (bound, with its welcome credit) and a
    demo org with its owner; recorded in the market's folder. Once per market.

    Each step finds what an earlier, cut-off run did (`up` killed before `ready.json`, or the
    file lost): the treasury is funded by the steps the chain lacks, the demo buyer and org
    are the accounts already there (their wallets bound once, the welcome credit granted
    once, also to a demo buyer bound by a run cut off before its grant), and the demo buyer
    gets a new key; the one a cut-off run made, never shown, is revoked (`UNSHOWN_KEY`). The
    next `up` failed on every start ("wallet … is bound to another account", "a user account
    named 'demo buyer' exists already"), each try depositing the treasury's $1,000 again."""
    from promptex.config import Settings
    from promptex.gateway.buyers import grant_welcome_credit, issue_key
    from promptex.gateway.keys import hash_key, new_api_key
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import AccountKind, Ledger

    recorded = read_ready(folder)
    with Ledger.from_settings(Settings()) as ledger:
        store = GatewayStore(ledger.engine)
        if recorded is not None and _key_works(store, recorded):
            (folder / UNSHOWN_KEY).unlink(missing_ok=True)  # a run cut off after ready.json: its key was shown
            return recorded
        if recorded is not None:
            log.warning("%s names a demo buyer whose key this ledger does not take (another ledger's, or the "
                        "key revoked): made ready again on this ledger", folder / READY_FILE)  # fmt: skip
        treasury_wallet, _ = fund_treasury(rpc_url, deployment)
        buyer_wallet = str(Account.from_key(BUYER_KEY).address)
        _bind(ledger, ledger.treasury(treasury).id, TREASURY_KEY)  # its deposit is the treasury's
        buyer = ledger.account_of(buyer_wallet)
        if buyer is None:
            buyer = _named(ledger, AccountKind.USER, DEMO_BUYER)
            _bind(ledger, buyer, BUYER_KEY)
        grant_welcome_credit(ledger, buyer, welcome_asset=welcome_asset, welcome_amount=welcome_amount,
                             treasury=treasury)  # fmt: skip
        _revoke_unshown_key(folder, store)
        key = new_api_key()
        write_whole(folder / UNSHOWN_KEY, hash_key(key) + "\n", 0o600)  # before the ledger has it
        issue_key(store, buyer, int(time.time()), key=key)
        org = _named(ledger, AccountKind.ORG, DEMO_ORG)
        owner = _bind(ledger, org, ORG_OWNER_KEY)
    ready = Ready(buyer, buyer_wallet, key, welcome_amount, org, owner, treasury_wallet)
    write_ready(folder, ready)
    (folder / UNSHOWN_KEY).unlink()
    return ready


def _key_works(store: GatewayStore, ready: Ready) -> bool:
    """The demo key `ready` records is one this ledger takes, the demo buyer's. A market
    folder kept while its ledger changed (PROMPTEX_LEDGER_URL set to a new database: the
    indexer fills it from the chain, but the demo accounts, their bindings, the welcome
    credit and the key are the old ledger's) had its `up` skip making ready and print a
    key and accounts the gateway did not know, the treasury's wallet bound to no account."""
    from promptex.gateway.keys import hash_key

    key = store.api_key(hash_key(ready.buyer_key))
    return key is not None and key.account == ready.buyer_account


def _revoke_unshown_key(folder: Path, store: GatewayStore) -> None:
    """Revoke the demo key a cut-off run issued and never showed (its hash in `UNSHOWN_KEY`):
    it stayed valid, unknown to anyone, beside the new one each later run issues."""
    try:
        recorded = (folder / UNSHOWN_KEY).read_text().strip()
    except FileNotFoundError:
        return
    unshown = store.api_key(recorded)
    if unshown is not None:
        store.revoke_key(unshown.id)


def write_ready(folder: Path, ready: Ready) -> None:
    """`ready.json`, whole or not at all (`files.write_whole`), readable by its owner only
    from the start: the demo key is local and promotional only, but a key."""
    write_whole(folder / READY_FILE, json.dumps(asdict(ready), indent=2) + "\n", 0o600)


def read_ready(folder: Path) -> Ready | None:
    """What `make_ready` recorded; None when it has not (or the file is not a whole record:
    `make_ready` then finds what it did and records it again)."""
    try:
        ready = Ready(**json.loads((folder / READY_FILE).read_text()))
        wrong = [f.name for f in fields(Ready) if type(getattr(ready, f.name)).__name__ != f.type]
        if wrong:
            raise TypeError(f"{', '.join(wrong)} of another type")
        return ready
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:  # cut short, or another version's
        log.warning("%s is not a whole record (%s): made ready again", folder / READY_FILE, exc)
        return None
