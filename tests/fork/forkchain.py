"""Driving the contracts exactly as deployed, on an anvil fork, with web3.py.

web3 straight to anvil is ~3× faster per transaction than ape (../shared/TOOLCHAIN.md),
which is what lets hypothesis run many random sequences against a fork in CI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from hypothesis import HealthCheck, Phase, settings
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractCustomError, ContractLogicError

from promptex.chain.deployments import Deployment

ROOT = Path(__file__).resolve().parents[2]

# Each step is a few JSON-RPC round trips, so the fork runs fewer, shorter sequences than the
# titanoboa machines (tests/contracts); raise them with these variables for a deeper run.
# CI's profile runs 4 sequences (its share of the 20-minute budget), any other profile 10.
_CI_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci"
FORK_SETTINGS = settings(
    max_examples=int(os.environ.get("PROMPTEX_FORK_EXAMPLES", "4" if _CI_PROFILE else "10")),
    stateful_step_count=int(os.environ.get("PROMPTEX_FORK_STEPS", "15")),
    deadline=None,
    # Shrinking replays sequences over RPC for many minutes; a failure prints its unshrunk steps.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# anvil's well-known development mnemonic: public test keys, funded on every anvil and fork.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
Account.enable_unaudited_hdwallet_features()


def dev_key(index: int) -> str:
    return Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}").key.hex()


class Reverted(AssertionError):
    pass


@dataclass
class ForkChain:
    url: str
    deployment: Deployment
    w3: Web3 = field(init=False)
    _abis: dict[str, list[dict[str, Any]]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.w3 = Web3(HTTPProvider(self.url, request_kwargs={"timeout": 120}))

    # ─── Contracts ───────────────────────────────────────────────────────────

    def _abi(self, name: str) -> list[dict[str, Any]]:
        if name not in self._abis:
            path = Path(self.deployment.contracts[name].abi)
            self._abis[name] = json.loads((path if path.is_absolute() else ROOT / path).read_text())
        return self._abis[name]

    def contract(self, name: str) -> Any:
        """A deployed contract by its deployment name ("CreditsVault", "token:CLD", ...)."""
        return self.w3.eth.contract(address=self.deployment.address(name), abi=self._abi(name))

    def at(self, address: str, abi_of: str) -> Any:
        """A contract at `address` with the ABI of a deployed one (e.g. a pool, with "Pool")."""
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=self._abi(abi_of))

    # ─── Transactions ────────────────────────────────────────────────────────

    def send(self, call: Any, sender: str) -> Any:
        """Send a contract call from an unlocked (or impersonated) account; fail on revert."""
        tx_hash = call.transact({"from": sender})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        if receipt.status != 1:
            raise Reverted(f"transaction {tx_hash.hex()} reverted")
        return receipt

    def reverts(self, call: Any, sender: str, reason: str) -> None:
        """Assert the call reverts with `reason` and leaves no transaction behind."""
        try:
            call.transact({"from": sender})
        except (ContractLogicError, ContractCustomError) as exc:
            assert reason in str(exc), f"reverted with {exc!s}, expected {reason!r}"
            return
        raise AssertionError(f"expected a revert with {reason!r}")

    def rpc(self, method: str, *params: Any) -> Any:
        response = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']}")
        return response.get("result")

    def snapshot(self) -> str:
        return str(self.rpc("evm_snapshot"))

    def restore(self, snapshot_id: str) -> None:
        assert self.rpc("evm_revert", snapshot_id) is True

    def warp(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def impersonate(self, address: str) -> str:
        self.rpc("anvil_impersonateAccount", address)
        self.rpc("anvil_setBalance", address, hex(10**21))
        return Web3.to_checksum_address(address)

    def dev_account(self, index: int) -> str:
        return self.w3.eth.accounts[index]


class Roles:
    """anvil development accounts the tests act as (their keys are public test keys)."""

    COORDINATOR = 9
    ATTESTOR = 8
    SELLER = 7
    USERS = (3, 4, 5)

    def __init__(self, chain: ForkChain):
        self.coordinator = chain.dev_account(self.COORDINATOR)
        self.attestor = chain.dev_account(self.ATTESTOR)
        self.seller = chain.dev_account(self.SELLER)
        self.users = [chain.dev_account(i) for i in self.USERS]
