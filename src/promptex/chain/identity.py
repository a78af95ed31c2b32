"""What chain and deployment a service is pointed at: the node's chain id and genesis
block hash (two JSON-RPC calls over httpx, no web3: the gateway runs without one) and
the contracts of `deployments/<network>.json`; and `check_chain`, what every long-lived
service does first with it: check that its database mirrors that chain and deployment
(`Ledger.follow_chain`, see `ledger.identity`), so a service started against another
chain refuses in one line instead of mixing two chains' facts.

The indexer, coordinator and agent need the chain; the gateway and the dashboard can run
without one (tests, an off-chain demo) as long as their database follows no chain yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from promptex.chain.deployments import Deployment, load_deployment
from promptex.config import NO_MARKET, ConfigurationError
from promptex.ledger import Ledger, WrongChain
from promptex.protocol.identity import ChainIdentity


def _call(client: httpx.Client, url: str, method: str, params: list[Any]) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    try:
        answer = client.post(url, json=body)
        answer.raise_for_status()
        reply = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        why = type(exc).__name__
        raise ConfigurationError(f"no JSON-RPC node answers at {url} ({why}): start it or fix the URL") from None
    if not isinstance(reply, dict) or reply.get("result") is None:
        raise ConfigurationError(f"the node at {url} answered {method} with {reply!r:.200}")
    return reply["result"]


def identity_of(deployment: Deployment, chain_id: int, genesis_hash: str) -> ChainIdentity:
    """The identity of `deployment` on the node that answered `chain_id` and `genesis_hash`
    (ConfigurationError when the deployment record is for another chain id)."""
    if chain_id != deployment.chain_id:
        raise ConfigurationError(
            f"the {deployment.network} deployment is on chain {deployment.chain_id}, the node is chain {chain_id}"
        )
    contracts = {name: contract.address for name, contract in deployment.contracts.items()}
    return ChainIdentity(chain_id, genesis_hash.lower(), deployment.network, contracts)


def observe(rpc_url: str, network: str, *, root: Path | None = None, timeout: float = 5.0) -> ChainIdentity:
    """The chain at `rpc_url` with the deployment `network` (ConfigurationError, one line,
    when there is no deployment record, no node, or the record is for another chain id)."""
    try:
        deployment = load_deployment(network, root)
    except FileNotFoundError as exc:
        raise ConfigurationError(str(exc)) from None
    with httpx.Client(timeout=timeout) as client:
        chain_id = int(_call(client, rpc_url, "eth_chainId", []), 16)
        genesis = _call(client, rpc_url, "eth_getBlockByNumber", ["0x0", False])
    return identity_of(deployment, chain_id, str(genesis["hash"]))


def check_chain(
    ledger: Ledger, *, service: str, rpc_url: str | None, network: str, require_chain: bool = True
) -> ChainIdentity | None:
    """The identity `ledger` follows after this service's start (recorded now if it was the
    first), or None for a service that runs without a chain on a database that follows
    none. ConfigurationError, one line, for anything else."""
    try:
        if rpc_url is None:
            raise ConfigurationError(NO_MARKET)
        observed = observe(rpc_url, network)
    except ConfigurationError as exc:
        recorded = ledger.chain_identity()
        if require_chain or recorded is not None:
            follows = f" (its ledger follows {recorded.short()})" if recorded is not None else ""
            raise ConfigurationError(f"{service} cannot check its chain{follows}: {exc}") from None
        return None
    try:
        return ledger.follow_chain(observed, service)
    except WrongChain as exc:
        raise ConfigurationError(str(exc)) from None
