"""Options through ape: reading the Oracle's observations, settling a series, and
deploying the contract (its units and payout math are `promptex.protocol.options`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from promptex.chain.deployments import address_of
from promptex.protocol.options import LIVE_TWAP_WINDOW, LOCAL_TWAP_WINDOW, SettlementUnavailable


def read_observations(oracle: Any, token: Any) -> list[tuple[int, int]]:
    """The Oracle's observations of `token`, newest first."""
    count = int(oracle.observation_count(token))
    return [(int(time), int(cumulative)) for time, cumulative in (oracle.observation(token, r) for r in range(count))]


def settle(options: Any, series: int, sender: Any) -> Any:
    """Settle `series` through ape with the ranks the contract's `settlement_ranks`
    finds (a late settlement when the Oracle no longer holds its window). Returns the
    receipt; raises SettlementUnavailable before expiry. The ranks are structural (they
    do not depend on the time), so they stay valid unless the ring moves past the
    window's start before the transaction; then it reverts and a retry succeeds."""
    from ape.exceptions import ContractLogicError

    try:
        start, end = options.settlement_ranks(series)
    except ContractLogicError as error:
        raise SettlementUnavailable(str(error)) from error
    return options.settle(series, start, end, sender=sender)


# ─── Deployment ──────────────────────────────────────────────────────────────


def deploy_options(
    deployer: Any,
    oracle: Any,
    usdc: Any,
    *,
    twap_window: int | None = None,
    local: bool = True,
    log: Callable[[str], None] = print,
) -> Any:
    """Deploy Options over the Oracle and USDC (addresses or contract objects).
    `twap_window` defaults to LOCAL_TWAP_WINDOW when `local`, else LIVE_TWAP_WINDOW.
    Call inside an ape network context; returns the ape contract object. Record it
    with `options_record` (the caller merges it into the deployment)."""
    from ape import project

    if twap_window is None:
        twap_window = LOCAL_TWAP_WINDOW if local else LIVE_TWAP_WINDOW
    options = deployer.deploy(project.Options, address_of(usdc), address_of(oracle), twap_window)
    log(f"Options       {options.address}")
    return options


def options_record(options: Any, root: Path | None = None) -> Any:
    """The deployment record ("Options") for a deployed Options, its ABI written
    under `root`; merge it into a Deployment's `contracts`."""
    from ape import project

    from promptex.chain.deployments import DeployedContract, abi_of, write_abi

    abi = write_abi("Options", abi_of(project.Options), root)
    return DeployedContract(address=str(options.address), abi=abi)
