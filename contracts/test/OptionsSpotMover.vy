# pragma version ~=0.4.3
"""
@title OptionsSpotMover
@license MIT
@notice Moves a pool's spot price and back inside ONE transaction (so one
        block) around a call to the Oracle or the Options contract: the
        attacker of tests/contracts/test_options_attacks.py. Tests only.
"""

from ethereum.ercs import IERC20

from ..interfaces import IOracle

interface IRouter:
    def swap_exact_in(
        amount_in: uint256,
        min_out: uint256,
        path: DynArray[address, 5],
        fees: DynArray[uint256, 4],
        to: address,
        deadline: uint256,
    ) -> uint256: nonpayable

interface IOptions:
    def settle(series_id: uint256, start_rank: uint256, end_rank: uint256) -> uint256: nonpayable

FEE: constant(uint256) = 30


@external
def pump_update_dump(router: address, oracle: address, token: address, usdc: address, usdc_in: uint256):
    """
    @notice Buys `token` with `usdc_in` USDC, records an Oracle observation,
            sells the tokens back.
    """
    bought: uint256 = self._pump(router, token, usdc, usdc_in)
    extcall IOracle(oracle).update(token)
    self._dump(router, token, usdc, bought)


@external
def pump_and_update(router: address, oracle: address, token: address, usdc: address, usdc_in: uint256):
    """
    @notice Buys `token` with `usdc_in` USDC and asks the Oracle for an
            observation (a trade and an update in one block), keeping the tokens.
    """
    self._pump(router, token, usdc, usdc_in)
    extcall IOracle(oracle).update(token)


@external
def pump_settle_dump(
    router: address,
    options: address,
    token: address,
    usdc: address,
    usdc_in: uint256,
    series_id: uint256,
    start_rank: uint256,
    end_rank: uint256,
) -> uint256:
    """
    @notice Buys `token` with `usdc_in` USDC, settles a series, sells back.
    @return uint256 The payout per unit the settlement fixed.
    """
    bought: uint256 = self._pump(router, token, usdc, usdc_in)
    payout: uint256 = extcall IOptions(options).settle(series_id, start_rank, end_rank)
    self._dump(router, token, usdc, bought)
    return payout


@internal
def _pump(router: address, token: address, usdc: address, usdc_in: uint256) -> uint256:
    extcall IERC20(usdc).approve(router, usdc_in)
    return extcall IRouter(router).swap_exact_in(usdc_in, 0, [usdc, token], [FEE], self, block.timestamp)


@internal
def _dump(router: address, token: address, usdc: address, amount: uint256):
    extcall IERC20(token).approve(router, amount)
    extcall IRouter(router).swap_exact_in(amount, 0, [token, usdc], [FEE], self, block.timestamp)
