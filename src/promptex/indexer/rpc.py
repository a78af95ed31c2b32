"""Ethereum JSON-RPC over httpx: the few calls the indexer makes, with batches.

No web3 or ape here: the hot path is one `eth_getLogs` and one JSON-RPC batch of
`eth_getBlockByNumber` per block range, parsed with orjson.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

# Messages providers use when a range holds too much (Infura -32005, Alchemy, QuickNode,
# geth's "query timeout exceeded", anvil's own limits…): the indexer then shrinks the range.
_RANGE_HINTS = (
    "too many",
    "more than",
    "limit",
    "exceed",
    "range",
    "response size",
    "too large",
    "timeout",
    "timed out",
)
_RANGE_CODES = frozenset({-32005})


class RpcError(Exception):
    """The node answered with a JSON-RPC error (or an answer that is not JSON-RPC)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message if code is None else f"{message} (code {code})")
        self.code = code
        self.message = message

    @property
    def range_too_large(self) -> bool:
        """Would a smaller block range likely succeed?"""
        text = self.message.lower()
        return self.code in _RANGE_CODES or any(hint in text for hint in _RANGE_HINTS)


class RpcUnavailable(RpcError):
    """The node could not be reached or did not answer in time (worth retrying)."""

    @property
    def range_too_large(self) -> bool:
        return self.code == 413 or "timed out" in self.message.lower()


class ChainMoved(RpcError):
    """The chain changed while a range was being read (a block vanished or the answers
    disagree): read the range again."""


@dataclass(frozen=True)
class Header:
    number: int
    hash: str
    parent_hash: str


def _hex(number: int) -> str:
    return hex(number)


def _header(raw: Any) -> Header:
    try:
        return Header(int(raw["number"], 16), str(raw["hash"]).lower(), str(raw["parentHash"]).lower())
    except (KeyError, TypeError, ValueError) as exc:
        raise RpcError(f"malformed block header: {exc!r}") from None


class RpcClient:
    """A JSON-RPC client for one node (keep-alive connection; thread-unsafe like httpx.Client)."""

    def __init__(self, url: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url
        self._ids = itertools.count(1)
        self._http = httpx.Client(timeout=timeout, transport=transport, headers={"content-type": "application/json"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _post(self, payload: Any) -> Any:
        try:
            response = self._http.post(self.url, content=orjson.dumps(payload))
        except httpx.TimeoutException as exc:
            raise RpcUnavailable(f"{self.url} timed out: {exc}") from None
        except httpx.HTTPError as exc:
            raise RpcUnavailable(f"{self.url} unreachable: {exc}") from None
        if response.status_code == 413:
            raise RpcUnavailable("response too large", 413)
        if response.status_code >= 500 or response.status_code == 429:
            raise RpcUnavailable(f"HTTP {response.status_code}: {response.text[:200]}", response.status_code)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise RpcError(f"HTTP {response.status_code}, not JSON: {response.text[:200]!r}") from None

    @staticmethod
    def _result(answer: Any) -> Any:
        if not isinstance(answer, dict):
            raise RpcError(f"not a JSON-RPC answer: {str(answer)[:200]}")
        error = answer.get("error")
        if error is not None:
            if isinstance(error, dict):
                raise RpcError(str(error.get("message", error)), error.get("code"))
            raise RpcError(str(error))
        if "result" not in answer:
            raise RpcError(f"JSON-RPC answer without a result: {str(answer)[:200]}")
        return answer["result"]

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        return self._result(self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}))

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one JSON-RPC batch; results in the order of `calls`."""
        if not calls:
            return []
        first = next(self._ids)
        self._ids = itertools.count(first + len(calls))
        payload = [
            {"jsonrpc": "2.0", "id": first + i, "method": method, "params": params}
            for i, (method, params) in enumerate(calls)
        ]
        answers = self._post(payload)
        if isinstance(answers, dict):  # a node that refuses the whole batch answers with one error
            self._result(answers)
        if not isinstance(answers, list) or len(answers) != len(calls):
            raise RpcError(f"batch of {len(calls)} answered with {str(answers)[:200]}")
        by_id = {answer.get("id") if isinstance(answer, dict) else None: answer for answer in answers}
        return [self._result(by_id.get(first + i)) for i in range(len(calls))]

    # ─── The calls the indexer makes ─────────────────────────────────────────

    def chain_id(self) -> int:
        return int(self.call("eth_chainId"), 16)

    def block_number(self) -> int:
        return int(self.call("eth_blockNumber"), 16)

    def headers(self, numbers: Sequence[int], *, missing_ok: bool = False) -> dict[int, Header]:
        """Headers of these blocks, in one batch. A block the node does not have raises
        ChainMoved, or is left out with `missing_ok` (looking for a fork point)."""
        results = self.batch([("eth_getBlockByNumber", [_hex(n), False]) for n in numbers])
        headers: dict[int, Header] = {}
        for number, raw in zip(numbers, results, strict=True):
            if raw is None:
                if missing_ok:
                    continue
                raise ChainMoved(f"block {number} is gone")
            header = _header(raw)
            if header.number != number:
                raise RpcError(f"asked for block {number}, got {header.number}")
            headers[number] = header
        return headers

    def logs(self, from_block: int, to_block: int, addresses: Sequence[str]) -> list[dict[str, Any]]:
        """Every log of these contracts in [from_block, to_block], in one call."""
        result = self.call(
            "eth_getLogs", [{"fromBlock": _hex(from_block), "toBlock": _hex(to_block), "address": list(addresses)}]
        )
        if not isinstance(result, list):
            raise RpcError(f"eth_getLogs answered {str(result)[:200]}")
        return result

    def code(self, address: str, block: int | str = "latest") -> bytes:
        tag = block if isinstance(block, str) else _hex(block)
        return bytes.fromhex(str(self.call("eth_getCode", [address, tag]))[2:])

    def eth_call(self, to: str, data: str) -> bytes:
        return bytes.fromhex(str(self.call("eth_call", [{"to": to, "data": data}, "latest"]))[2:])
