"""The coordinator and its chain as the settings describe them (what `promptex coordinator`
and `promptex usage verify` run); heavy imports happen only when one is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from promptex.config import ConfigurationError, Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from promptex.coordinator.chain import Web3Chain
    from promptex.coordinator.door import Door
    from promptex.coordinator.service import Coordinator
    from promptex.ledger import Ledger

ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's public dev account 0


def coordinator_key(s: Settings) -> str:
    if s.coordinator_private_key is not None:
        return s.coordinator_private_key.get_secret_value()
    if s.coordinator_network == "local":
        return ANVIL_KEY_0
    raise ConfigurationError("set PROMPTEX_COORDINATOR_PRIVATE_KEY (the vault coordinator's key)")


def make_chain(s: Settings) -> Web3Chain:
    from promptex.chain.deployments import load_deployment
    from promptex.coordinator.chain import Web3Chain

    rpc_url = s.chain_rpc_url("coordinator")  # first: no market at all is the thing to say
    try:
        deployment = load_deployment(s.coordinator_network)
    except FileNotFoundError as exc:
        raise ConfigurationError(str(exc)) from None
    return Web3Chain(rpc_url, deployment, coordinator_key(s))


def ledger_engine(s: Settings, open_ledger: Callable[[Settings], Ledger] | None = None) -> Engine:
    """The ledger's engine. `open_ledger`: how it is opened (default `Ledger.from_settings`,
    migrated: the coordinator service; `coordinator release` passes `cli.ledgers.market_ledger`,
    which never migrates)."""
    from promptex.ledger import Ledger

    return (open_ledger or Ledger.from_settings)(s).engine


def check_ledger_chain(s: Settings, engine: Engine) -> None:
    """Refuse (ConfigurationError, one line) a ledger that mirrors another chain or
    deployment than the one the coordinator settles on (see `chain.identity`)."""
    from promptex.chain.identity import check_chain
    from promptex.ledger import Ledger

    rpc_url = s.chain_rpc_url("coordinator")
    check_chain(Ledger(engine), service="the coordinator", rpc_url=rpc_url, network=s.coordinator_network)


def make_coordinator(s: Settings, *, open_ledger: Callable[[Settings], Ledger] | None = None) -> Coordinator:
    """The coordinator, once its ledger is checked to mirror the chain it settles on
    (`open_ledger`: as `ledger_engine`'s)."""
    from promptex.coordinator.service import Coordinator

    chain = make_chain(s)
    engine = ledger_engine(s, open_ledger)
    check_ledger_chain(s, engine)
    return Coordinator(
        engine,
        chain,
        holder=s.coordinator_instance_id,
        lease_seconds=s.coordinator_lease_seconds,
        tx_timeout=s.coordinator_tx_timeout_seconds,
        release_expiry=s.coordinator_release_expiry_seconds,
        quarantine_retry=s.coordinator_quarantine_retry_seconds,
        quarantine_refund=s.coordinator_quarantine_refund_seconds,
        reorg_window=s.coordinator_reorg_window_blocks,
    )


def make_door(s: Settings, coordinator: Coordinator) -> Door:
    """The coordinator's HTTP door over `coordinator`, for the deployment it settles on."""
    from promptex.chain.deployments import load_deployment
    from promptex.coordinator.door import WINDOW_SECONDS, Door
    from promptex.coordinator.requests import Place

    place = Place.of(load_deployment(s.coordinator_network))
    return Door(coordinator, place, limit=s.coordinator_door_requests_per_hour, window=WINDOW_SECONDS)
