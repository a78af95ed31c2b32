# pragma version ~=0.4.3
"""
@title RedemptionSandwich
@license MIT
@notice An agent that sandwiches its own redemption inside the pool, in one
        transaction: it dumps the token (spot falls), redeems the user's
        tokens (which then buy less USDC each), and buys the token back with
        the USDC it got. The attacker of tests/contracts/test_redemption_attacks.py.
        Tests only.
"""

from ethereum.ercs import IERC20

interface IRouter:
    def swap_exact_in(
        amount_in: uint256,
        min_out: uint256,
        path: DynArray[address, 5],
        fees: DynArray[uint256, 4],
        to: address,
        deadline: uint256,
    ) -> uint256: nonpayable

interface IRedemption:
    def redeem(
        user: address,
        token: address,
        usdc_out: uint256,
        max_tokens_in: uint256,
        swap_deadline: uint256,
        sale_ref: bytes32,
    ) -> uint256: nonpayable

FEE: constant(uint256) = 30


@external
def sandwich(
    escrow: address, router: address, user: address, token: address, usdc: address, dump: uint256, usdc_out: uint256
):
    """
    @notice Dumps `dump` of `token`, redeems `usdc_out` of `user`'s `token`,
            buys the token back with all the USDC the dump raised.
    """
    extcall IERC20(token).approve(router, dump)
    raised: uint256 = extcall IRouter(router).swap_exact_in(dump, 0, [token, usdc], [FEE], self, block.timestamp)
    extcall IRedemption(escrow).redeem(user, token, usdc_out, max_value(uint256), block.timestamp, empty(bytes32))
    extcall IERC20(usdc).approve(router, raised)
    extcall IRouter(router).swap_exact_in(raised, 0, [usdc, token], [FEE], self, block.timestamp)
