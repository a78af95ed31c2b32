"""Reading the Oracle's TWAPs over JSON-RPC: `Oracle.consult(token, window)` for every
provider token of a deployment. The gateway's cache (`promptex.gateway.twap`) calls it
from a background thread and imports it only when it reads a node.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from web3 import Web3
from web3.exceptions import ContractLogicError

from promptex.chain.deployments import load_deployment
from promptex.chain.node import connect

log = logging.getLogger("promptex.gateway.twap")  # the gateway's log: these are its price reads

CONSULT_ABI = [
    {
        "type": "function",
        "name": "consult",
        "stateMutability": "view",
        "inputs": [{"name": "token", "type": "address"}, {"name": "window", "type": "uint256"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]


class OracleTwapSource:
    """`Oracle.consult(token, window)` over JSON-RPC for each provider token of a deployment."""

    def __init__(self, rpc_url: str, oracle: str, tokens: Mapping[str, str], window: int, timeout: float) -> None:
        self.w3 = connect(rpc_url, timeout=timeout)
        self.oracle = self.w3.eth.contract(address=Web3.to_checksum_address(oracle), abi=CONSULT_ABI)
        self.tokens = {symbol: Web3.to_checksum_address(address) for symbol, address in tokens.items()}
        self.window = window

    @classmethod
    def from_deployment(
        cls, rpc_url: str, network: str, window: int, *, root: Path | None = None, timeout: float = 10.0
    ) -> OracleTwapSource:
        deployment = load_deployment(network, root)
        tokens = {symbol: deployment.address(f"token:{symbol}") for symbol in deployment.token_symbols()}
        return cls(rpc_url, deployment.address("Oracle"), tokens, window, timeout)

    def read(self) -> dict[str, int]:
        prices: dict[str, int] = {}
        for symbol, token in self.tokens.items():
            try:
                price = int(self.oracle.functions.consult(token, self.window).call())
            except ContractLogicError as exc:  # not tracked yet, or the window not covered
                log.warning("no TWAP for %s: %s", symbol, exc)
                continue
            if price > 0:
                prices[symbol] = price
        return prices
