"""Indexer pure logic: block-range adaptation, log decoding, fork-point search, JSON-RPC."""

from __future__ import annotations

import httpx
import pytest
from indexer_fakes import POOL_ABI, VAULT, VAULT_ABI, FakeNode, Log, deposited, new_address

from promptex.indexer.blockrange import AdaptiveRange
from promptex.indexer.decode import Decoder, LogDecodeError
from promptex.indexer.reorg import ReorgTooDeep, find_fork_point
from promptex.indexer.rpc import ChainMoved, RpcClient, RpcError, RpcUnavailable

# ─── Adaptive block range ────────────────────────────────────────────────────


def test_range__sparse_batches__grows_to_maximum():
    blocks = AdaptiveRange(maximum=1_000, target_logs=100, size=10)
    for _ in range(10):
        blocks.observe(blocks.size, 0)
    assert blocks.size == 1_000


def test_range__dense_batch__shrinks_toward_target():
    blocks = AdaptiveRange(maximum=1_000, target_logs=100, size=1_000)
    blocks.observe(1_000, 10_000)  # 10 logs a block: 10 blocks hold the target
    assert blocks.size == 10


def test_range__growth__at_most_doubles():
    blocks = AdaptiveRange(maximum=1_000, target_logs=100, size=10)
    blocks.observe(10, 1)
    assert blocks.size == 20


def test_range__short_batch_at_head__does_not_grow():
    blocks = AdaptiveRange(maximum=1_000, target_logs=100, size=500)
    blocks.observe(3, 0)  # cut short by the head: says nothing about 500 blocks
    assert blocks.size == 500
    blocks.observe(3, 300)  # but a dense short batch still shrinks it
    assert blocks.size == 1


def test_range__shrink__halves_until_one_block():
    blocks = AdaptiveRange(maximum=8, target_logs=100)
    assert [blocks.shrink() for _ in range(4)] == [True, True, True, False]
    assert blocks.size == 1


def test_range__nonsense_settings__refused():
    with pytest.raises(ValueError):
        AdaptiveRange(maximum=0, target_logs=1)


# ─── Decoding ────────────────────────────────────────────────────────────────


def _raw(log: Log, **changes: object) -> dict[str, object]:
    topics, data = log.raw()
    raw: dict[str, object] = {
        "address": log.address.lower(),
        "topics": topics,
        "data": data,
        "blockNumber": "0x5",
        "blockHash": "0x" + "ab" * 32,
        "transactionHash": "0x" + "cd" * 32,
        "logIndex": "0x2",
    }
    raw.update(changes)
    return raw


@pytest.fixture
def decoder() -> Decoder:
    d = Decoder()
    d.add_abi("CreditsVault", VAULT_ABI)
    d.add_abi("Pool", POOL_ABI)
    return d


def test_decode__deposited__names_args_checksummed(decoder):
    account = new_address()
    event = decoder.decode("CreditsVault", _raw(deposited(account, 7 * 10**30)))
    assert event is not None
    assert (event.name, event.block_number, event.log_index, event.contract) == ("Deposited", 5, 2, VAULT)
    assert event.args["account"] == account  # EIP-55, not lowercase
    assert event.args["amount"] == 7 * 10**30


def test_decode__dynamic_type__through_eth_abi(decoder):
    event = decoder.decode("Pool", _raw(Log(VAULT, "Note", {"memo": "hello"})))
    assert event is not None and event.args == {"memo": "hello"}


def test_decode__unknown_topic__skipped(decoder):
    raw = _raw(deposited(new_address(), 1))
    raw["topics"] = ["0x" + "11" * 32, *raw["topics"][1:]]  # type: ignore[index]
    assert decoder.decode("CreditsVault", raw) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw.update(data=raw["data"][:-2]),  # one byte short
        lambda raw: raw.update(data=raw["data"] + "00" * 32),  # one word too many
        lambda raw: raw.update(topics=raw["topics"][:-1]),  # an indexed topic missing
        lambda raw: raw["topics"].__setitem__(1, "0x" + "ff" * 32),  # address with dirty high bytes
        lambda raw: raw.update(data="0xzz"),  # not hex
        lambda raw: raw.pop("logIndex"),  # not a log
    ],
    ids=["short-data", "long-data", "missing-topic", "dirty-address", "not-hex", "no-log-index"],
)
def test_decode__malformed_log__refused(decoder, damage):
    raw = _raw(deposited(new_address(), 1))
    damage(raw)
    with pytest.raises(LogDecodeError):
        decoder.decode("CreditsVault", raw)


def test_decode__uint_out_of_range__refused():
    d = Decoder()
    d.add_abi("X", [{"type": "event", "name": "Small", "inputs": [{"name": "v", "type": "uint8", "indexed": False}]}])
    topic0 = d.spec("X", "Small").topic0
    raw = {**_raw(deposited(new_address(), 1)), "topics": [topic0], "data": "0x" + "00" * 30 + "0100"}
    with pytest.raises(LogDecodeError, match="uint8 out of range"):
        d.decode("X", raw)


# ─── Fork point ──────────────────────────────────────────────────────────────


def _chains(tip: int, fork: int, lowest: int = 0) -> tuple[dict[int, str], dict[int, str]]:
    ours = {n: f"a{n}" for n in range(lowest, tip + 1)}
    theirs = {n: (f"a{n}" if n <= fork else f"b{n}") for n in range(0, tip + 1)}
    return ours, theirs


def _window(hashes: dict[int, str], calls: list[tuple[int, int]] | None = None):
    def read(low: int, high: int) -> dict[int, str]:
        if calls is not None:
            calls.append((low, high))
        return {n: h for n, h in hashes.items() if low <= n <= high}

    return read


@pytest.mark.parametrize("depth", [1, 2, 10, 16, 17, 100])
def test_fork_point__reorg_of_depth__found(depth):
    tip = 500
    ours, theirs = _chains(tip, tip - depth)
    calls: list[tuple[int, int]] = []
    assert find_fork_point(tip, 0, 0, _window(ours), _window(theirs, calls)) == tip - depth
    assert len(calls) <= 4  # windows double: 16, 32, 64, ...


def test_fork_point__chain_shorter_than_tip__found():
    ours, theirs = _chains(50, 40)
    theirs = {n: h for n, h in theirs.items() if n <= 45}  # the node's head is 45 now
    assert find_fork_point(50, 0, 0, _window(ours), _window(theirs)) == 40


def test_fork_point__below_everything_indexed__rewinds_all():
    ours, theirs = _chains(30, -1, lowest=10)
    assert find_fork_point(30, 10, 10, _window(ours), _window(theirs)) == 9


def test_fork_point__below_pruned_hashes__too_deep():
    ours, theirs = _chains(30, 5, lowest=20)  # hashes below 20 were pruned
    with pytest.raises(ReorgTooDeep):
        find_fork_point(30, 20, 0, _window(ours), _window(theirs))


# ─── JSON-RPC ────────────────────────────────────────────────────────────────


def test_rpc__batch__results_in_order_even_if_answered_out_of_order():
    def handler(request: httpx.Request) -> httpx.Response:
        calls = __import__("json").loads(request.content)
        return httpx.Response(
            200, json=[{"jsonrpc": "2.0", "id": c["id"], "result": c["params"][0]} for c in calls][::-1]
        )

    rpc = RpcClient("http://x", transport=httpx.MockTransport(handler))
    assert rpc.batch([("echo", ["a"]), ("echo", ["b"]), ("echo", ["c"])]) == ["a", "b", "c"]


def test_rpc__error_in_batch__raised():
    node = FakeNode()
    node.fail = lambda method, params: {"code": -32000, "message": "boom"} if params[0] == "0x0" else None
    with pytest.raises(RpcError, match="boom"):
        node.client().headers([0])


def test_rpc__missing_block__chain_moved_unless_allowed():
    rpc = FakeNode().client()
    with pytest.raises(ChainMoved):
        rpc.headers([0, 1])
    assert list(rpc.headers([0, 1], missing_ok=True)) == [0]


@pytest.mark.parametrize(
    ("error", "shrink"),
    [
        (RpcError("query returned more than 10000 results", -32005), True),
        (RpcError("Log response size exceeded", -32602), True),
        (RpcError("query timeout exceeded", -32000), True),
        (RpcUnavailable("response too large", 413), True),
        (RpcUnavailable("http://x timed out: read"), True),
        (RpcUnavailable("http://x unreachable: connection refused"), False),
        (RpcError("execution reverted", 3), False),
    ],
)
def test_rpc__errors__classified(error, shrink):
    assert error.range_too_large is shrink


def test_rpc__node_down__unavailable():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(RpcUnavailable):
        RpcClient("http://x", transport=httpx.MockTransport(handler)).block_number()


def test_rpc__not_json__error():
    rpc = RpcClient("http://x", transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>")))
    with pytest.raises(RpcError, match="not JSON"):
        rpc.block_number()
