"""Deploys the RedemptionEscrow (its wire formats are `promptex.protocol.redemption`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from promptex.chain.deployments import address_of
from promptex.protocol.redemption import (
    LIVE_REFUND_DELAY,
    LIVE_TWAP_WINDOW,
    LOCAL_REFUND_DELAY,
    LOCAL_TWAP_WINDOW,
    provider_id,
)


def deploy_redemption(
    deployer: Any,
    deployment_or_addresses: Any,
    *,
    twap_window: int | None = None,
    refund_delay: int | None = None,
    billing_signers: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """Deploy the RedemptionEscrow next to a deployment's USDC, Router and Oracle.

    `deployment_or_addresses` is a `Deployment` (deployments/<network>.json) or a
    mapping {"USDC": …, "Router": …, "Oracle": …} of addresses or contract objects.
    `twap_window` and `refund_delay` default to the LOCAL_* values on a local
    deployment (or a mapping) and the LIVE_* values otherwise. `billing_signers`
    maps provider names to signer addresses, registered by the deployer (the
    admin). Call inside an ape network context; returns the ape contract object.
    Record it with `redemption_record` (the caller merges it into the deployment).
    """
    from ape import project

    from promptex.chain.deploy import is_local
    from promptex.chain.deployments import Deployment

    if isinstance(deployment_or_addresses, Deployment):
        local = is_local(deployment_or_addresses.network)
        usdc, router, oracle = (deployment_or_addresses.address(n) for n in ("USDC", "Router", "Oracle"))
    else:
        local = True
        usdc, router, oracle = (address_of(deployment_or_addresses[n]) for n in ("USDC", "Router", "Oracle"))
    if twap_window is None:
        twap_window = LOCAL_TWAP_WINDOW if local else LIVE_TWAP_WINDOW
    if refund_delay is None:
        refund_delay = LOCAL_REFUND_DELAY if local else LIVE_REFUND_DELAY

    escrow = deployer.deploy(project.RedemptionEscrow, usdc, router, oracle, twap_window, refund_delay)
    log(f"RedemptionEscrow {escrow.address}")
    for name, signer in (billing_signers or {}).items():
        escrow.set_billing_signer(provider_id(name), signer, sender=deployer)
        log(f"  billing signer {name}: {signer}")
    return escrow


def redemption_record(escrow: Any, root: Path | None = None) -> Any:
    """The deployment record ("RedemptionEscrow") for a deployed escrow, its ABI
    written under `root`; merge it into a Deployment's `contracts`."""
    from ape import project

    from promptex.chain.deployments import DeployedContract, abi_of, write_abi

    abi = write_abi("RedemptionEscrow", abi_of(project.RedemptionEscrow), root)
    return DeployedContract(address=str(escrow.address), abi=abi)
