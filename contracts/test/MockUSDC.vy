# pragma version ~=0.4.3
"""
@title MockUSDC
@license MIT
@notice A 6-decimal test dollar with an open faucet. For local chains and tests
        only: the deploy script refuses to deploy it on a live network.
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
def __init__():
    """
    @notice Deploys the test dollar (symbol USDC, 6 decimals).
    """
    ownable.__init__()
    erc20.__init__("Mock USD Coin", "USDC", 6, "Mock USD Coin", "1")


@external
def mint(owner: address, amount: uint256):
    """
    @notice Open faucet: anyone mints test dollars to anyone.
    @param owner Recipient.
    @param amount Amount in 10**-6 units.
    """
    erc20._mint(owner, amount)
