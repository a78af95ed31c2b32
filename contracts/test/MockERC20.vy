# pragma version ~=0.4.3
"""
@title MockERC20
@license MIT
@notice A plain ERC-20 (snekmate) with any name, symbol and decimals and an
        open faucet. For tests and benchmarks only: it is the "plain ERC-20 on
        both sides" of the DEX gas scenarios and the extra tokens of the
        multi-hop tests.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (
    erc20.transfer,
    erc20.approve,
    erc20.transferFrom,
    erc20.permit,
    erc20.DOMAIN_SEPARATOR,
    erc20.eip712Domain,
    erc20.name,
    erc20.symbol,
    erc20.decimals,
    erc20.balanceOf,
    erc20.allowance,
    erc20.totalSupply,
    erc20.nonces,
)


@deploy
def __init__(name_: String[25], symbol_: String[5], decimals_: uint8):
    """
    @notice Deploys a test token.
    @param name_ Token name.
    @param symbol_ Token symbol.
    @param decimals_ Decimal places.
    """
    ownable.__init__()
    erc20.__init__(name_, symbol_, decimals_, name_, "1")


@external
def mint(owner: address, amount: uint256):
    """
    @notice Open faucet: anyone mints to anyone.
    @param owner Recipient.
    @param amount Amount in the token's smallest unit.
    """
    erc20._mint(owner, amount)
