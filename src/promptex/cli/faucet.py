"""`promptex wallet faucet`: test dollars for a wallet on a local market.

The deployment's MockUSDC mints to anyone; on anvil (a node answering `anvil_nodeInfo`)
the faucet mints whole USDC to the wallet of `--account` (an ape account alias or
`TEST::N`: only its address is read, nothing asks for a passphrase), sent by anvil's
unlocked development account 3 (the keeper's; the node numbers its nonces), and gives the
wallet gas if it holds less than `GAS_FLOOR`. On any other node it refuses in one line
before anything is sent: a live network's USDC is real money.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

import click

from promptex.cli.errors import readable_errors
from promptex.cli.market import local_node_url, rpc_url_option
from promptex.protocol.units import USD_MICRO, balance_text, money, usd_text

MOST = 1_000_000 * USD_MICRO  # a call's limit: a typo of a few zeros is refused, not minted
GAS_FLOOR = 10**17  # 0.1 ETH: below it the wallet is given GAS_TOP_UP
GAS_TOP_UP = 10**18  # 1 ETH


def faucet_amount(text: str) -> int:
    """Whole USDC as typed ("100", "12.5") → micro-USDC, exactly: positive, at most 6
    decimals, at most 1,000,000 a call; anything else one line (click.BadParameter).

    Bounded by exact comparisons before it is scaled: scaled in the default context,
    "1e-999999999" underflowed to 0 micro-USDC (a zero mint, announced as minted) and
    "1e999999" raised the context's overflow (an error naming no option)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not a number of USDC", param_hint="--amount") from None
    if not value.is_finite() or value <= 0:
        raise click.BadParameter(f"the faucet mints a positive amount, not {text!r}", param_hint="--amount")
    if value > Decimal(MOST).scaleb(-6):  # (exact: a comparison rounds nothing)
        raise click.BadParameter(f"at most {money(MOST, 'USDC')} a call, not {text!r}", param_hint="--amount")
    if value < Decimal("0.000001"):
        raise click.BadParameter(f"USDC has 6 decimals; {text!r} has more", param_hint="--amount")
    with localcontext() as exact:  # room for every digit typed: scaling rounds nothing
        exact.prec = len(value.as_tuple().digits) + 12
        micro = value.scaleb(6)
    if micro != micro.to_integral_value():
        raise click.BadParameter(f"USDC has 6 decimals; {text!r} has more", param_hint="--amount")
    return int(micro)


def _address(alias: str) -> str:
    """The wallet's address, read without unlocking it."""
    from promptex.chain.accounts import resolve_account

    try:
        return str(resolve_account(alias).address)
    except (IndexError, ValueError) as exc:  # TEST::99, TEST::x
        raise click.BadParameter(f"{alias!r}: {exc}", param_hint="--account") from None


def mint_test_dollars(rpc_url: str, address: str, amount: int) -> tuple[int, bool]:
    """Mint `amount` of the local deployment's MockUSDC to `address` (and gas if it holds
    little): returns (its USDC balance after, whether it was given gas)."""
    from web3 import Web3

    from promptex.chain.deployments import load_deployment
    from promptex.chain.node import connect, deployed_contract
    from promptex.config import settings
    from promptex.ready import KEEPER, _send

    deployment = load_deployment(settings().indexer_network)
    w3 = connect(rpc_url, timeout=30)
    if w3.eth.chain_id != deployment.chain_id:
        raise ValueError(
            f"the deployment recorded for chain {deployment.chain_id} is not this node's (chain {w3.eth.chain_id})"
        )
    usdc: Any = deployed_contract(w3, deployment, "USDC")
    if not w3.eth.get_code(usdc.address):  # another anvil, or a chain that lost the deploy
        # (`mint` to an address without code is a plain transfer: "minted", and nothing was)
        raise ValueError(
            f"no USDC contract at {usdc.address} on this node: the recorded deployment is not on this chain "
            "(start the market with `promptex up`, or pass its --rpc-url); nothing sent"
        )
    wallet = Web3.to_checksum_address(address)
    gassed = w3.eth.get_balance(wallet) < GAS_FLOOR
    if gassed:
        w3.provider.make_request("anvil_setBalance", [wallet, hex(GAS_TOP_UP)])  # type: ignore[arg-type]
    _send(w3, usdc.functions.mint(wallet, amount), KEEPER)
    return int(usdc.functions.balanceOf(wallet).call()), gassed


@click.command("faucet")
@click.option("--account", "alias", default="TEST::0", show_default=True, help="ape account alias or TEST::N")
@click.option("--amount", default="100", show_default=True, help="whole USDC (test dollars), e.g. 100 or 12.5")
@rpc_url_option
def faucet(alias: str, amount: str) -> None:
    """Local markets only: mint test dollars (the deployment's MockUSDC) to your wallet,
    and gas if it has little. Refused on any node that is not a local anvil."""
    from promptex.ready import is_local_chain

    minted = faucet_amount(amount)
    url = local_node_url()
    if not is_local_chain(url):
        raise click.ClickException(
            f"{url} is not a local anvil: the faucet mints test dollars on a local market only (nothing sent)"
        )
    with readable_errors():
        address = _address(alias)
        held, gassed = mint_test_dollars(url, address, minted)
    gas = f" and {GAS_TOP_UP // 10**18} ETH for gas" if gassed else ""
    click.echo(f"minted {money(minted, 'USDC')} ({usd_text(minted)} of test dollars){gas} to {address} ({alias})")
    click.echo(f"its wallet holds {balance_text(held, 'USDC')}; next: promptex wallet deposit --asset USDC --amount N "
               f"--account {alias}")  # fmt: skip
