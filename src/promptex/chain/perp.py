"""Deploys Perp and lists its markets (its arithmetic is `promptex.protocol.perp`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from promptex.chain.deployments import address_of
from promptex.protocol.perp import (
    DEFAULT_INSURANCE_FEE_BPS,
    LIVE_TWAP_WINDOW,
    LOCAL_TWAP_WINDOW,
    MAX_REFRESH,
    MarketParams,
)


def deploy_perp(
    deployer: Any,
    deployment_or_addresses: Any,
    *,
    twap_window: int | None = None,
    insurance_fee_bps: int = DEFAULT_INSURANCE_FEE_BPS,
    markets: Mapping[str, MarketParams] | None = None,
    pausers: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> Any:
    """Deploy Perp next to a deployment's USDC and Oracle, and list `markets`.

    `deployment_or_addresses` is a `Deployment` (deployments/<network>.json) or a
    mapping {"USDC": …, "Oracle": …} of addresses or contract objects. `twap_window`
    defaults to LOCAL_TWAP_WINDOW on a local deployment (or a mapping) and
    LIVE_TWAP_WINDOW otherwise. `markets` maps token addresses (or the
    deployment's names, "token:CLD") to their parameters; the deployer is the admin
    and grants `pausers` the pauser role.
    Call inside an ape network context; returns the ape contract object. Record it
    with `perp_record` (the caller merges it into the deployment).
    """
    from ape import project

    from promptex.chain.deploy import is_local
    from promptex.chain.deployments import Deployment

    deployment = deployment_or_addresses if isinstance(deployment_or_addresses, Deployment) else None
    if deployment is not None:
        local = is_local(deployment.network)
        usdc, oracle = deployment.address("USDC"), deployment.address("Oracle")
    else:
        local = True
        usdc, oracle = (address_of(deployment_or_addresses[n]) for n in ("USDC", "Oracle"))
    if twap_window is None:
        twap_window = LOCAL_TWAP_WINDOW if local else LIVE_TWAP_WINDOW

    perp = deployer.deploy(project.Perp, usdc, oracle, twap_window, insurance_fee_bps)
    log(f"Perp          {perp.address}")
    for token, params in (markets or {}).items():
        address = deployment.address(token) if deployment is not None and token.startswith("token:") else token
        add_market(perp, address, params, deployer)
        log(f"  market {token}")
    for pauser in pausers:
        perp.grant_pauser(pauser, sender=deployer)
    return perp


def add_market(perp: Any, token: Any, params: MarketParams, admin: Any) -> Any:
    """List `token` on a deployed Perp (admin only); checks the parameters first."""
    params.check()
    return perp.add_market(address_of(token), *params.as_args(), sender=admin)


def side_positions(perp: Any, token: Any, is_long: bool) -> list[int]:
    """Every open position of one side of a market, ascending: what `refresh_bounds` takes.
    Reads each position once (a keeper's tool, not a hot path)."""
    address = address_of(token).lower()
    ids = []
    for position_id in range(1, int(perp.position_count()) + 1):
        p = perp.positions(position_id)
        if int(p.owner, 16) != 0 and str(p.token).lower() == address and bool(p.is_long) == is_long:
            ids.append(position_id)
    return ids


def refresh_bounds(perp: Any, token: Any, is_long: bool, sender: Any) -> int:
    """Recompute one side's LP-pricing bounds from its open positions (anyone may);
    returns how many positions it took. Raises ValueError past MAX_REFRESH positions."""
    ids = side_positions(perp, token, is_long)
    if len(ids) > MAX_REFRESH:
        raise ValueError(f"the side has {len(ids)} open positions, more than refresh_bounds takes ({MAX_REFRESH})")
    perp.refresh_bounds(address_of(token), is_long, ids, sender=sender)
    return len(ids)


def perp_record(perp: Any, root: Path | None = None) -> Any:
    """The deployment record ("Perp") for a deployed Perp, its ABI written under `root`;
    merge it into a Deployment's `contracts`."""
    from ape import project

    from promptex.chain.deployments import DeployedContract, abi_of, write_abi

    abi = write_abi("Perp", abi_of(project.Perp), root)
    return DeployedContract(address=str(perp.address), abi=abi)
