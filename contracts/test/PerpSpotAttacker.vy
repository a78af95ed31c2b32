# pragma version ~=0.4.3
"""
@title PerpSpotAttacker
@license MIT
@notice Test helper: moves a DEX pool's spot price and acts on Perp in the same
        transaction (so in the same block), to show that Perp reads nothing the
        spot move changes. For tests only.
"""

from ethereum.ercs import IERC20


interface IPerp:
    def price(token: address) -> uint256: view
    def pool_value(for_deposit: bool) -> uint256: view
    def is_liquidatable(position_id: uint256) -> bool: view
    def liquidate(position_id: uint256) -> uint256: nonpayable
    def open_position(token: address, is_long: bool, margin: uint256, notional: uint256) -> uint256: nonpayable
    def close_position(position_id: uint256, min_payout: uint256) -> uint256: nonpayable


interface IRouter:
    def swap_exact_in(
        amount_in: uint256,
        min_out: uint256,
        path: DynArray[address, 5],
        fees: DynArray[uint256, 4],
        to: address,
        deadline: uint256,
    ) -> uint256: nonpayable


event Observed:
    price_before: uint256
    price_after: uint256
    value_before: uint256
    value_after: uint256
    liquidatable_before: bool
    liquidatable_after: bool


event RoundTrip:
    margin: uint256
    payout: uint256


router: public(immutable(address))
perp: public(immutable(address))
usdc: public(immutable(address))


@deploy
def __init__(router_: address, perp_: address, usdc_: address):
    router = router_
    perp = perp_
    usdc = usdc_


@internal
def _swap(token_in: address, token_out: address, amount_in: uint256, fee: uint256):
    extcall IERC20(token_in).approve(router, amount_in)
    extcall IRouter(router).swap_exact_in(amount_in, 0, [token_in, token_out], [fee], self, block.timestamp)


@external
def move_and_observe(token: address, sell_token: bool, amount_in: uint256, fee: uint256, position_id: uint256):
    """
    @notice Reads Perp, swaps `amount_in` (of USDC to buy `token`, or of `token`
            to sell it) held by this contract, reads Perp again; logs both.
    """
    price_before: uint256 = staticcall IPerp(perp).price(token)
    value_before: uint256 = staticcall IPerp(perp).pool_value(False)
    liquidatable_before: bool = staticcall IPerp(perp).is_liquidatable(position_id)
    if sell_token:
        self._swap(token, usdc, amount_in, fee)
    else:
        self._swap(usdc, token, amount_in, fee)
    log Observed(
        price_before=price_before,
        price_after=staticcall IPerp(perp).price(token),
        value_before=value_before,
        value_after=staticcall IPerp(perp).pool_value(False),
        liquidatable_before=liquidatable_before,
        liquidatable_after=staticcall IPerp(perp).is_liquidatable(position_id),
    )


@external
def dump_and_liquidate(token: address, amount_in: uint256, fee: uint256, position_id: uint256):
    """
    @notice Sells `amount_in` of `token` (crashing its spot), then liquidates.
    """
    self._swap(token, usdc, amount_in, fee)
    extcall IPerp(perp).liquidate(position_id)


@external
def pump_open_close(token: address, usdc_in: uint256, fee: uint256, margin: uint256, notional: uint256):
    """
    @notice Buys `token` with `usdc_in` (pumping its spot), opens a long of
            `notional` with `margin`, closes it at once; logs what came back.
    """
    self._swap(usdc, token, usdc_in, fee)
    extcall IERC20(usdc).approve(perp, margin)
    position_id: uint256 = extcall IPerp(perp).open_position(token, True, margin, notional)
    payout: uint256 = extcall IPerp(perp).close_position(position_id, 0)
    log RoundTrip(margin=margin, payout=payout)
