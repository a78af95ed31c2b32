"""A fake Ethereum node for indexer tests: blocks with hashes and logs, reorgs on demand,
answering JSON-RPC (single and batched) through httpx's MockTransport.

The event ABIs are written out here (the vault's, the factory's, a pool's) so that these
tests need no compiled contracts; the e2e tests use the real ones.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from eth_abi.abi import encode
from eth_account import Account

from promptex.indexer.decode import event_specs
from promptex.indexer.followed import Followed
from promptex.indexer.rpc import RpcClient


def _event(name: str, *fields: tuple[str, str, bool]) -> dict[str, Any]:
    return {
        "type": "event",
        "name": name,
        "anonymous": False,
        "inputs": [{"name": n, "type": t, "indexed": i} for n, t, i in fields],
    }


A, U, IX = "address", "uint256", True
VAULT_ABI = [
    _event("Deposited", ("account", A, IX), ("asset", A, IX), ("payer", A, IX), ("amount", U, 0), ("balance", U, 0)),
    _event(
        "ExitRequested", ("account", A, IX), ("asset", A, IX), ("amount", U, 0), ("unlock_at", U, 0), ("market", A, 0)
    ),
    _event("ExitCancelled", ("account", A, IX), ("asset", A, IX), ("amount", U, 0)),
    _event(
        "ExitCompleted",
        ("account", A, IX),
        ("asset", A, IX),
        ("requested", U, 0),
        ("amount", U, 0),
        ("proceeds", U, 0),
        ("sold", "bool", 0),
    ),
    _event("ExitReleased", ("account", A, IX), ("asset", A, IX), ("amount", U, 0), ("proceeds", U, 0), ("nonce", U, 0)),
    _event("Sold", ("account", A, IX), ("asset", A, IX), ("amount", U, 0), ("proceeds", U, 0)),
    _event("ShortfallRecorded", ("epoch", U, IX), ("asset", A, IX), ("account", A, IX), ("amount", U, 0)),
    _event(
        "SpendCapRegistered",
        ("account", A, IX),
        ("asset", A, IX),
        ("per_epoch", U, 0),
        ("total", U, 0),
        ("expiry", U, 0),
        ("nonce", U, 0),
    ),
    _event("SpendCapRevoked", ("account", A, IX), ("asset", A, IX), ("expiry", U, 0), ("nonce", U, 0)),
    _event(
        "EpochSettled",
        ("epoch", U, IX),
        ("asset", A, IX),
        ("usage_root", "bytes32", 0),
        ("total", U, 0),
        ("entries", U, 0),
    ),
]
FACTORY_ABI = [
    _event("PoolCreated", ("token0", A, IX), ("token1", A, IX), ("fee", U, IX), ("pool", A, 0), ("pool_count", U, 0))
]
POOL_ABI = [
    _event(
        "Swapped",
        ("sender", A, IX),
        ("to", A, IX),
        ("amount0_in", U, 0),
        ("amount1_in", U, 0),
        ("amount0_out", U, 0),
        ("amount1_out", U, 0),
    ),
    _event("Note", ("memo", "string", 0)),  # a dynamic type: decoded by eth-abi
]

VAULT = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
FACTORY = "0x84eA74d481Ee0A5332c457a4d796187F6Ba67fEB"
USDC = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CLD = "0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9"
ABIS = {"CreditsVault": VAULT_ABI, "Factory": FACTORY_ABI, "Pool": POOL_ABI}
TOPICS = {
    spec.name: spec for source, abi in ABIS.items() for spec in event_specs(source, abi)
}  # name → spec (names are distinct across these ABIs)


def followed() -> Followed:
    return Followed.build(
        ABIS, {VAULT: "CreditsVault", FACTORY: "Factory"}, {USDC: "USDC", CLD: "CLD"}, vault=VAULT, usdc=USDC
    )


def new_address() -> str:
    return str(Account.create().address)


def _word(value: Any, kind: str) -> str:
    return "0x" + encode([kind], [value]).hex()


@dataclass
class Log:
    """An event to put in a block: which contract, which event, its args."""

    address: str
    name: str
    args: dict[str, Any]
    tx: str | None = None  # a fixed tx hash (to re-include a transaction after a reorg)

    def raw(self) -> tuple[list[str], str]:
        spec = TOPICS[self.name]
        topics = [spec.topic0] + [_word(self.args[f.name], f.type) for f in spec.fields if f.indexed]
        plain = [f for f in spec.fields if not f.indexed]
        data = encode([f.type for f in plain], [self.args[f.name] for f in plain])
        return topics, "0x" + data.hex()


def deposited(account: str, amount: int, asset: str = USDC, **kw: Any) -> Log:
    return Log(
        VAULT, "Deposited", {"account": account, "asset": asset, "payer": account, "amount": amount, "balance": 0}, **kw
    )


ZERO = "0x" + "00" * 20


def exit_requested(account: str, amount: int, asset: str = USDC, market: str = ZERO) -> Log:
    args = {"account": account, "asset": asset, "amount": amount, "unlock_at": 0, "market": market}
    return Log(VAULT, "ExitRequested", args)


def exit_cancelled(account: str, amount: int, asset: str = USDC) -> Log:
    return Log(VAULT, "ExitCancelled", {"account": account, "asset": asset, "amount": amount})


def exit_completed(
    account: str, requested: int, amount: int, asset: str = USDC, proceeds: int = 0, sold: bool = False
) -> Log:
    args = {
        "account": account,
        "asset": asset,
        "requested": requested,
        "amount": amount,
        "proceeds": proceeds,
        "sold": sold,
    }
    return Log(VAULT, "ExitCompleted", args)


def _hash(*parts: object) -> str:
    return "0x" + hashlib.sha256(repr(parts).encode()).hexdigest()


@dataclass
class Block:
    number: int
    hash: str
    parent: str
    logs: list[dict[str, Any]] = field(default_factory=list)


class FakeNode:
    """A chain of blocks answering JSON-RPC. `max_logs`: eth_getLogs answers -32005 above it."""

    def __init__(self, chain_id: int = 31337) -> None:
        self.chain_id = chain_id
        self.blocks: list[Block] = [Block(0, _hash("genesis", chain_id), "0x" + "00" * 32)]
        self._branch = itertools.count(1)
        self._txs = itertools.count(1)
        self.branch = 0
        self.max_logs: int | None = None
        self.calls: list[str] = []
        self.fail: Callable[[str, list[Any]], dict[str, Any] | None] | None = None  # an error to answer, or None

    @property
    def head(self) -> int:
        return self.blocks[-1].number

    def mine(self, *logs: Log, empty: int = 0) -> Block:
        """One block holding `logs` (one transaction per log), after `empty` empty blocks."""
        for _ in range(empty):
            self.mine()
        number = self.head + 1
        block = Block(number, _hash(self.branch, number, [(log.name, log.args) for log in logs]), self.blocks[-1].hash)
        for index, log in enumerate(logs):
            topics, data = log.raw()
            block.logs.append(
                {
                    "address": log.address.lower(),
                    "topics": topics,
                    "data": data,
                    "blockNumber": hex(number),
                    "blockHash": block.hash,
                    "transactionHash": log.tx or _hash("tx", next(self._txs)),
                    "transactionIndex": hex(index),
                    "logIndex": hex(index),
                    "removed": False,
                }
            )
        self.blocks.append(block)
        return block

    def reorg(self, depth: int) -> None:
        """Drop the last `depth` blocks; what is mined next is another branch."""
        del self.blocks[len(self.blocks) - depth :]
        self.branch = next(self._branch)

    def client(self) -> RpcClient:
        return RpcClient("http://fake-node", transport=httpx.MockTransport(self.handle))

    # ─── JSON-RPC ────────────────────────────────────────────────────────────

    def handle(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content)
        if isinstance(payload, list):
            return httpx.Response(200, json=[self._answer(p) for p in payload])
        return httpx.Response(200, json=self._answer(payload))

    def _answer(self, call: dict[str, Any]) -> dict[str, Any]:
        method, params = call["method"], call["params"]
        self.calls.append(method)
        base = {"jsonrpc": "2.0", "id": call["id"]}
        error = self.fail(method, params) if self.fail else None
        if error is not None:
            return {**base, "error": error}
        try:
            return {**base, "result": getattr(self, "_" + method)(*params)}
        except _RpcFail as exc:
            return {**base, "error": {"code": exc.code, "message": exc.message}}

    def _eth_chainId(self) -> str:
        return hex(self.chain_id)

    def _eth_blockNumber(self) -> str:
        return hex(self.head)

    def _eth_getBlockByNumber(self, number: str, _full: bool) -> dict[str, Any] | None:
        n = int(number, 16)
        if n > self.head:
            return None
        block = self.blocks[n]
        return {"number": hex(n), "hash": block.hash, "parentHash": block.parent, "transactions": []}

    def _eth_getLogs(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        low, high = int(query["fromBlock"], 16), min(int(query["toBlock"], 16), self.head)
        wanted = {a.lower() for a in query["address"]}
        logs = [log for b in self.blocks[low : high + 1] for log in b.logs if log["address"] in wanted]
        if self.max_logs is not None and len(logs) > self.max_logs:
            raise _RpcFail(-32005, f"query returned more than {self.max_logs} results")
        return logs

    def _eth_getCode(self, _address: str, _block: str) -> str:
        return "0x6001"


class _RpcFail(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message
