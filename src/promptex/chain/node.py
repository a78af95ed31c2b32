"""Connecting to a node: the one place a Web3 client is built (HTTP, with a request
timeout), and contract objects for a deployment's records."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from web3 import Web3

from promptex.chain.deployments import Deployment

DEFAULT_TIMEOUT = 30.0  # seconds per JSON-RPC request (web3's own default)


def connect(rpc_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> Web3:
    """A Web3 client for the node at `rpc_url`."""
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))


@cache
def load_abi(path: str) -> Any:
    """A recorded ABI file (read once per process: a deployment rewrites it only on a redeploy)."""
    return json.loads(Path(path).read_text())


def deployed_contract(w3: Web3, deployment: Deployment, name: str, address: str | None = None) -> Any:
    """A web3 contract for a recorded contract ("CreditsVault", "token:CLD", ...) with its
    recorded ABI, at its recorded address or at `address` (another instance, same ABI)."""
    record = deployment.contracts[name]
    return w3.eth.contract(address=Web3.to_checksum_address(address or record.address), abi=load_abi(record.abi))
