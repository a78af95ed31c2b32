"""Deploys the RedemptionEscrow (its wire formats are `promptex.protocol.redemption`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    token_providers: Mapping[str, str] | None = None,
    billing_signers: Mapping[str, str] | None = None,
    pausers: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> Any:
    """Deploy the RedemptionEscrow next to a deployment's USDC and Oracle.

    `deployment_or_addresses` is a `Deployment` (deployments/<network>.json) or a
    mapping {"USDC": …, "Oracle": …} of addresses or contract objects.
    `twap_window` and `refund_delay` default to the LOCAL_* values on a local
    deployment (or a mapping) and the LIVE_* values otherwise. As its admin, the
    deployer registers `token_providers` (token address → provider name: the provider
    whose credits each token redeems into; once per token, for good),
    `billing_signers` (provider name → signer address) and `pausers`. Call inside an
    ape network context; returns the ape contract object. Record it with
    `redemption_record` (the caller merges it into the deployment).
    """
    from ape import project

    from promptex.chain.deploy import is_local
    from promptex.chain.deployments import Deployment

    if isinstance(deployment_or_addresses, Deployment):
        local = is_local(deployment_or_addresses.network)
        usdc, oracle = (deployment_or_addresses.address(n) for n in ("USDC", "Oracle"))
    else:
        local = True
        usdc, oracle = (address_of(deployment_or_addresses[n]) for n in ("USDC", "Oracle"))
    if twap_window is None:
        twap_window = LOCAL_TWAP_WINDOW if local else LIVE_TWAP_WINDOW
    if refund_delay is None:
        refund_delay = LOCAL_REFUND_DELAY if local else LIVE_REFUND_DELAY

    escrow = deployer.deploy(project.RedemptionEscrow, usdc, oracle, twap_window, refund_delay)
    log(f"RedemptionEscrow {escrow.address}")
    for token, name in (token_providers or {}).items():
        escrow.register_token(address_of(token), provider_id(name), sender=deployer)
    for name, signer in (billing_signers or {}).items():
        escrow.add_billing_signer(provider_id(name), signer, sender=deployer)
        log(f"  billing signer {name}: {signer}")
    for pauser in pausers:
        escrow.grant_pauser(pauser, sender=deployer)
    return escrow


def redemption_record(escrow: Any, root: Path | None = None) -> Any:
    """The deployment record ("RedemptionEscrow") for a deployed escrow, its ABI
    written under `root`; merge it into a Deployment's `contracts`."""
    from ape import project

    from promptex.chain.deployments import DeployedContract, abi_of, write_abi

    abi = write_abi("RedemptionEscrow", abi_of(project.RedemptionEscrow), root)
    return DeployedContract(address=str(escrow.address), abi=abi)
