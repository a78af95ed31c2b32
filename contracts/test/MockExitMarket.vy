# pragma version ~=0.4.3
"""
@title MockExitMarket
@license MIT
@notice Stands in for the DEX on a vault exit of a spend-only token: buys the
        token at a fixed price and pays in MockUSDC (minted). Its `mode` can
        misbehave (take less than asked, pay less than the minimum) so tests
        can check the vault's guards. For tests only.
"""

from ethereum.ercs import IERC20

interface IMockUSDC:
    def mint(owner: address, amount: uint256): nonpayable

HONEST: public(constant(uint8)) = 0
TAKES_LESS: public(constant(uint8)) = 1
PAYS_LESS: public(constant(uint8)) = 2

usdc: public(immutable(address))
# @notice USDC units paid per 10**18 token units.
price: public(uint256)
mode: public(uint8)


@deploy
def __init__(usdc_: address, price_: uint256):
    """
    @notice A market paying `price_` USDC units per whole token.
    @param usdc_ MockUSDC (open faucet).
    @param price_ USDC units per 10**18 token units.
    """
    usdc = usdc_
    self.price = price_


@external
def set_mode(mode_: uint8):
    """
    @notice Sets how the market behaves.
    @param mode_ HONEST, TAKES_LESS or PAYS_LESS.
    """
    self.mode = mode_


@external
def sell(token: address, amount: uint256, min_out: uint256, recipient: address) -> uint256:
    """
    @notice Pulls `amount` of `token` from the caller and pays USDC to `recipient`.
    @param token The token sold.
    @param amount Token units.
    @param min_out Least USDC to pay (ignored in PAYS_LESS mode).
    @param recipient Receives the USDC.
    @return uint256 USDC paid.
    """
    taken: uint256 = amount
    if self.mode == TAKES_LESS:
        taken = amount - 1
    assert extcall IERC20(token).transferFrom(msg.sender, self, taken), "market: transfer failed"
    out: uint256 = amount * self.price // 10**18
    if self.mode == PAYS_LESS:
        out = min_out - 1
    else:
        assert out >= min_out, "market: below minimum"
    extcall IMockUSDC(usdc).mint(recipient, out)
    return out
