"""`promptex wallet faucet` refuses before anything is sent: bad amounts before any node is
asked, and a node that is not a local anvil (a live network's USDC is real money) after
one question. Against a fake JSON-RPC node that records every method it is asked; the
minted balance on anvil is in tests/e2e/test_wallet_cli.py (the keyfile smoke test's set-up)
and in `promptex up`'s quick-starts (tests/e2e/test_up.py)."""

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from promptex.cli import main
from promptex.config import settings
from promptex.serving import ServerThread


@pytest.fixture(scope="module")
def mainnet() -> Iterator[tuple[str, list[str]]]:
    """A node of chain 1 that is not anvil: (its URL, the methods it was asked)."""
    asked: list[str] = []

    async def rpc(request: Request) -> JSONResponse:
        call = await request.json()
        asked.append(call["method"])
        if call["method"] == "eth_chainId":
            return JSONResponse({"jsonrpc": "2.0", "id": call["id"], "result": "0x1"})
        error = {"code": -32601, "message": f"the method {call['method']} does not exist/is not available"}
        return JSONResponse({"jsonrpc": "2.0", "id": call["id"], "error": error})

    with ServerThread(Starlette(routes=[Route("/", rpc, methods=["POST"])])) as server:
        yield f"http://127.0.0.1:{server.port}", asked


def _faucet(url: str, *args: str) -> tuple[int, str]:
    settings.cache_clear()
    result = CliRunner().invoke(main, ["wallet", "faucet", "--rpc-url", url, *args], prog_name="promptex")
    settings.cache_clear()
    return result.exit_code, result.output


def test_faucet__a_node_that_is_not_anvil__one_line_exit_1_nothing_sent(mainnet):
    url, asked = mainnet
    asked.clear()
    code, output = _faucet(url, "--account", "TEST::6", "--amount", "100")
    assert code == 1
    assert output.strip().splitlines() == [
        f"Error: {url} is not a local anvil: the faucet mints test dollars on a local market only (nothing sent)"
    ]
    # Asked only whether it answers and whether it is anvil: no balance set, nothing sent.
    assert asked and set(asked) <= {"eth_chainId", "anvil_nodeInfo"}, asked


@pytest.mark.parametrize(
    "amount, says",
    [
        ("-5", "the faucet mints a positive amount, not '-5'"),
        ("0", "the faucet mints a positive amount, not '0'"),
        ("0.0000001", "USDC has 6 decimals; '0.0000001' has more"),
        ("12.3456789", "USDC has 6 decimals; '12.3456789' has more"),
        ("ten", "'ten' is not a number of USDC"),
        ("NaN", "the faucet mints a positive amount, not 'NaN'"),
        ("1000000.000001", "at most 1,000,000.00 USDC a call"),
        # The default context scaled these: a zero mint (announced as minted), an overflow error.
        ("1e-999999999", "USDC has 6 decimals; '1e-999999999' has more"),
        ("1e999999", "at most 1,000,000.00 USDC a call"),
    ],
)
def test_faucet__bad_amount__one_line_exit_1_before_any_node_is_asked(mainnet, amount, says):
    url, asked = mainnet
    asked.clear()
    code, output = _faucet(url, "--account", "TEST::6", f"--amount={amount}")
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "--amount" in lines[0], output
    assert asked == []


def test_faucet__an_anvil_without_the_market__one_line_exit_1_nothing_sent(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The faucet pointed at an anvil that has no market (another anvil on the port, or the
    market's chain lost its deploy) sent `mint` to an address without code, a plain
    transfer, and said "minted 5.00 USDC" (exit 0) with the wallet holding 0.00 USDC."""
    import json

    from anvil_node import rpc, running_anvil

    abi = [
        {"type": "function", "name": "mint", "stateMutability": "nonpayable", "outputs": [],
         "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}]},
        {"type": "function", "name": "balanceOf", "stateMutability": "view",
         "inputs": [{"name": "owner", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
    ]  # fmt: skip
    (tmp_path / "abi").mkdir()
    (tmp_path / "abi" / "MockUSDC.json").write_text(json.dumps(abi))
    usdc = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # where a market's deploy puts it on a fresh anvil
    record = {"network": "local", "chain_id": 31337, "block_number": 1,
              "deployer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
              "contracts": {"USDC": {"address": usdc, "abi": str(tmp_path / "abi" / "MockUSDC.json")}}}  # fmt: skip
    (tmp_path / "local.json").write_text(json.dumps(record))
    monkeypatch.setenv("PROMPTEX_DEPLOYMENTS_DIR", str(tmp_path))
    with running_anvil() as url:
        code, output = _faucet(url, "--account", "TEST::6", "--amount", "5")
        assert rpc(url, "eth_blockNumber") == "0x0"  # nothing sent
    assert code == 1
    assert output.strip().splitlines() == [
        f"Error: no USDC contract at {usdc} on this node: the recorded deployment is not on this chain (start the "
        "market with `promptex up`, or pass its --rpc-url); nothing sent"
    ]
