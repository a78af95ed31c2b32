"""What chain and deployment a service is pointed at: the node's chain id and genesis
block hash (two JSON-RPC calls over httpx, no web3: the gateway runs without one) and
the contracts of `deployments/<network>.json`. Every service passes this to
`Ledger.follow_chain` at start, which refuses another chain than the one its database
mirrors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from promptex.chain.deployments import Deployment, load_deployment
from promptex.config import ConfigurationError
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
