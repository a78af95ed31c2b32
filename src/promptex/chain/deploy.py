"""Deploys the PROMPTEX contracts through ape and wires their roles.

Called by `scripts/deploy.py` (and by the demo) inside an ape network context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ape import chain, project

from promptex.chain.deployments import (
    DeployedContract,
    Deployment,
    abi_of,
    deployment_path,
    deployments_root,
    load_deployment,
    save_deployment,
    write_abi,
)
from promptex.chain.dex import deploy_dex, dex_records
from promptex.chain.options import deploy_options, options_record
from promptex.chain.perp import deploy_perp, perp_record
from promptex.chain.redemption import deploy_redemption, redemption_record
from promptex.chain.timelock import deploy_timelock, selector
from promptex.protocol.dex import LIVE_ORACLE_PERIOD, LOCAL_ORACLE_PERIOD
from promptex.protocol.escrow import TOKEN_BOND_BPS
from promptex.protocol.perp import DEFAULT_MARKET
from promptex.protocol.perp import LIVE_TWAP_WINDOW as PERP_LIVE_TWAP_WINDOW
from promptex.protocol.perp import LOCAL_TWAP_WINDOW as PERP_LOCAL_TWAP_WINDOW
from promptex.protocol.providers import PROVIDER_TOKENS
from promptex.protocol.redemption import LIVE_REFUND_DELAY, LIVE_TWAP_WINDOW, LOCAL_REFUND_DELAY, LOCAL_TWAP_WINDOW
from promptex.protocol.timelock import MIN_DELAY
from promptex.protocol.vault import POLICY_SPEND_ONLY

LOCAL_NETWORKS = ("local",)
# CreditsVault epoch length: seconds on a demo chain, ten minutes on a live one.
DEMO_EPOCH_LENGTH = 10
LIVE_EPOCH_LENGTH = 600
# The contracts the Timelock administers after deploy (two-step handover each).
GOVERNED = ("CreditEscrow", "CreditsVault", "Factory", "RedemptionEscrow", "Perp")
# Per governed contract, the role-revoking functions the Timelock's guardian may call at
# once (grants and parameters wait the delay; revoking a role never does).
REVOCATIONS: dict[str, tuple[str, ...]] = {
    "CreditEscrow": ("revoke_attestor",),
    "CreditsVault": ("revoke_coordinator", "revoke_pauser"),
    "RedemptionEscrow": ("revoke_billing_signer", "revoke_pauser"),
    "Perp": ("revoke_pauser",),
}


def vault_max_pause(epoch_length: int) -> int:
    """The vault's MAX_PAUSE: two epochs, its shortest thaw, so a pause never outlasts one."""
    return 2 * epoch_length


class DeploymentExists(ValueError):
    """A deployment on this network is live; refuse to replace it silently."""


def is_local(network_name: str) -> bool:
    return network_name in LOCAL_NETWORKS


def live_deployment(network_name: str, root: Path | None = None) -> Deployment | None:
    """The recorded deployment, if its contracts still have code on this chain."""
    if not deployment_path(network_name, root).exists():
        return None
    recorded = load_deployment(network_name, root)
    if recorded.chain_id != chain.chain_id:
        return None
    escrow = recorded.contracts.get("CreditEscrow")
    if escrow is None or not chain.provider.get_code(escrow.address):
        return None
    return recorded


def deploy_all(
    deployer: Any,
    network_name: str,
    *,
    usdc: str | None = None,
    treasury: str | None = None,
    attestor: str | None = None,
    extra_attestors: Sequence[str] = (),
    coordinator: str | None = None,
    epoch_length: int | None = None,
    billing_signers: dict[str, str] | None = None,
    proposers: Sequence[str] = (),
    guardians: Sequence[str] = (),
    timelock_delay: int = MIN_DELAY,
    hand_over: bool = True,
    live_parameters: bool = False,
    force: bool = False,
    root: Path | None = None,
    log: Callable[[str], None] = print,
) -> Deployment:
    """Deploy tokens, the escrow, the credits vault (and MockUSDC on local chains),
    wire roles, record it.

    Roles default to the deployer, which suits a local chain; on a live network pass
    the gateway's attestor key and the vault's coordinator (`extra_attestors` also get
    the role: e.g. the dashboard's own key). The vault is the escrow's only drawer of
    lots (`set_vault`, once) and a burner of every provider token; it lists USDC
    withdrawable and each provider token spend-only. Its longest pause is its default
    thaw (two epochs). `epoch_length` defaults to
    DEMO_EPOCH_LENGTH on a local chain and LIVE_EPOCH_LENGTH elsewhere. The
    Oracle's period and the TWAP windows of RedemptionEscrow, Options and Perp are the
    short local ones on a local chain (tests move the clock through them), the live
    network's elsewhere or with `live_parameters` (what `promptex up` deploys, its TWAP
    history seeded at start-up, so a local market behaves as a live one). The
    RedemptionEscrow redeems each provider token into its provider's credits only and
    trusts `billing_signers` (provider name → address) for receipts; the admin can add
    or revoke signers later (timelocked; revoking at once).

    Last, the Timelock becomes the admin of every governed contract (GOVERNED): from
    then on every grant and parameter is an operation that `proposers` schedule and
    anyone executes after `timelock_delay`; `guardians` cancel operations and revoke
    roles at once (REVOCATIONS). Both default to the deployer (a local chain).
    `hand_over=False` leaves the deployer the admin (contract tests that call admin
    functions directly); the Timelock is deployed and recorded either way.
    """
    existing = live_deployment(network_name, root)
    if existing is not None and not force:
        raise DeploymentExists(
            f"a live deployment is recorded for {network_name!r} "
            f"(CreditEscrow at {existing.address('CreditEscrow')}); pass --force to replace it"
        )
    if usdc is None and not is_local(network_name):
        raise ValueError("on a live network pass the USDC address (--usdc); MockUSDC is for local chains")

    treasury = treasury or deployer.address
    attestor = attestor or deployer.address
    coordinator = coordinator or deployer.address
    if epoch_length is None:
        epoch_length = DEMO_EPOCH_LENGTH if is_local(network_name) else LIVE_EPOCH_LENGTH
    contracts: dict[str, DeployedContract] = {}

    if usdc is None:
        mock = deployer.deploy(project.MockUSDC)
        usdc = str(mock.address)
        log(f"MockUSDC      {usdc}")
    contracts["USDC"] = DeployedContract(address=usdc, abi=write_abi("MockUSDC", abi_of(project.MockUSDC), root))

    escrow = deployer.deploy(project.CreditEscrow, usdc, treasury, epoch_length)
    log(f"CreditEscrow  {escrow.address}")
    contracts["CreditEscrow"] = DeployedContract(
        address=str(escrow.address), abi=write_abi("CreditEscrow", abi_of(project.CreditEscrow), root)
    )
    token_abi = write_abi("ComputeToken", abi_of(project.ComputeToken), root)

    # Spend caps, session keys and signed settlement's entries run from a second contract on
    # the vault's storage (the vault alone would pass EIP-170's 24 KiB code limit).
    signed_module = deployer.deploy(project.CreditsVaultSigned)
    log(f"VaultSigned   {signed_module.address}")
    vault = deployer.deploy(
        project.CreditsVault,
        usdc,
        escrow.address,
        epoch_length,
        vault_max_pause(epoch_length),
        signed_module.address,
    )
    log(f"CreditsVault  {vault.address}")
    contracts["CreditsVault"] = DeployedContract(
        address=str(vault.address), abi=write_abi("CreditsVault", abi_of(project.CreditsVault), root)
    )

    for spec in PROVIDER_TOKENS:
        # Roles fixed for good: the escrow the only minter, the escrow and the vault the only burners.
        token = deployer.deploy(
            project.ComputeToken,
            spec.name,
            spec.symbol,
            spec.provider,
            spec.face_value_usd_micro,
            escrow.address,
            vault.address,
        )
        escrow.add_provider(token.address, TOKEN_BOND_BPS, sender=deployer)
        vault.list_asset(token.address, POLICY_SPEND_ONLY, sender=deployer)
        contracts[f"token:{spec.symbol}"] = DeployedContract(address=str(token.address), abi=token_abi)
        log(f"{spec.symbol:<13} {token.address}")

    for address in (attestor, *extra_attestors):
        escrow.grant_attestor(address, sender=deployer)
    escrow.set_vault(vault.address, sender=deployer)
    vault.grant_coordinator(coordinator, sender=deployer)
    # A pauser that can act at once (the admin's own pause waits the Timelock's delay).
    vault.grant_pauser(deployer.address, sender=deployer)

    local = is_local(network_name) and not live_parameters  # (the TWAP parameters; MockUSDC, epochs stay local)
    oracle_period = LOCAL_ORACLE_PERIOD if local else LIVE_ORACLE_PERIOD
    dex = deploy_dex(deployer, log, quote_token=usdc, oracle_period=oracle_period)
    contracts.update(dex_records(dex, root))
    # The vault sells spend-only tokens for USDC on exit through the Router.
    vault.set_exit_market(dex["Router"].address, sender=deployer)

    redemption = deploy_redemption(
        deployer,
        {"USDC": usdc, "Oracle": dex["Oracle"]},
        twap_window=LOCAL_TWAP_WINDOW if local else LIVE_TWAP_WINDOW,
        refund_delay=LOCAL_REFUND_DELAY if is_local(network_name) else LIVE_REFUND_DELAY,
        token_providers={contracts[f"token:{spec.symbol}"].address: spec.provider for spec in PROVIDER_TOKENS},
        billing_signers=billing_signers,
        pausers=[deployer.address],
        log=log,
    )
    contracts["RedemptionEscrow"] = redemption_record(redemption, root)
    # Hedging: capped calls and puts settled at the Oracle's TWAP.
    contracts["Options"] = options_record(deploy_options(deployer, dex["Oracle"], usdc, local=local, log=log), root)
    perp = deploy_perp(
        deployer,
        {"USDC": usdc, "Oracle": dex["Oracle"]},
        twap_window=PERP_LOCAL_TWAP_WINDOW if local else PERP_LIVE_TWAP_WINDOW,
        markets={contracts[f"token:{spec.symbol}"].address: DEFAULT_MARKET for spec in PROVIDER_TOKENS},
        pausers=[deployer.address],
        log=log,
    )
    contracts["Perp"] = perp_record(perp, root)

    governed = {
        "CreditEscrow": escrow,
        "CreditsVault": vault,
        "Factory": dex["Factory"],
        "RedemptionEscrow": redemption,
        "Perp": perp,
    }
    timelock = deploy_timelock(
        deployer,
        delay=timelock_delay,
        proposers=list(proposers) or [deployer.address],
        guardians=list(guardians) or [deployer.address],
        revocations=[
            (str(governed[name].address), selector(governed[name], method))
            for name, methods in REVOCATIONS.items()
            for method in methods
        ],
    )
    log(f"Timelock      {timelock.address}")
    contracts["Timelock"] = DeployedContract(
        address=str(timelock.address), abi=write_abi("Timelock", abi_of(project.Timelock), root)
    )
    if hand_over:
        for name in GOVERNED:
            governed[name].transfer_ownership(timelock.address, sender=deployer)
            timelock.accept_ownership(governed[name].address, sender=deployer)
        log(f"admin of {', '.join(GOVERNED)}: the Timelock ({timelock_delay // 3600} h delay)")

    deployment = Deployment(
        network=network_name,
        chain_id=chain.chain_id,
        block_number=chain.blocks.head.number,
        deployer=str(deployer.address),
        contracts=contracts,
    )
    path = save_deployment(deployment, root)
    log(f"recorded in {path}")
    return deployment


def contract_at(deployment: Deployment, name: str) -> Any:
    """An ape contract object for a recorded contract ("CreditEscrow", "Router", "token:CLD", ...):
    from the checkout's compiled contracts, or — run outside the checkout, where ape has no
    project — from the ABI the deployment recorded."""
    try:
        return _project_contract_at(deployment, name)
    except AttributeError:  # ape's ApeAttributeError: no such contract in the current project
        if name not in deployment.contracts:
            raise
        record = deployment.contracts[name]
        abi = Path(record.abi)
        if not abi.is_absolute():  # recorded relative to the checkout: it sits in the deployments folder
            abi = deployments_root() / "abi" / abi.name
        return chain.contracts.instance_at(record.address, abi=abi, fetch_from_explorer=False)


def _project_contract_at(deployment: Deployment, name: str) -> Any:
    if name.startswith("token:"):
        return project.ComputeToken.at(deployment.address(name))
    containers = {
        "USDC": project.MockUSDC,
        "CreditEscrow": project.CreditEscrow,
        "CreditsVault": project.CreditsVault,
        "Factory": project.Factory,
        "Router": project.Router,
        "Oracle": project.Oracle,
        "RedemptionEscrow": project.RedemptionEscrow,
        "Options": project.Options,
        "Perp": project.Perp,
        "Timelock": project.Timelock,
    }
    if name not in containers:
        raise KeyError(
            f"{name!r} is not a contract object of a deployment (one of {', '.join(containers)}, token:SYMBOL)"
        )
    return containers[name].at(deployment.address(name))
