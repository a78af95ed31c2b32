# pragma version ~=0.4.3
"""
@title RevertingExitMarket
@license MIT
@notice An exit market that refuses every sale: what an admin could point the
        vault at to keep spend-only tokens in. For tests only.
"""


@external
def sell(token: address, amount: uint256, min_out: uint256, recipient: address) -> uint256:
    """
    @notice Always reverts.
    @param token The token sold.
    @param amount Token units.
    @param min_out Least USDC to pay.
    @param recipient Receives the USDC.
    @return uint256 Never returns.
    """
    raise "market: closed"
