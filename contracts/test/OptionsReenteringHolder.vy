# pragma version ~=0.4.3
"""
@title OptionsReenteringHolder
@license MIT
@notice An ERC-1155 receiver that, when Options sends it units, tries to call
        Options again (write, buy, claim, reclaim or unwind) and records
        whether the inner call succeeded. The attacker of
        tests/contracts/test_options_attacks.py. Tests only.
"""

from ethereum.ercs import IERC20

interface IOptions:
    def write(series_id: uint256, units: uint256) -> uint256: nonpayable

# @notice The call tried on receipt (ABI-encoded; empty: none).
reentry: public(Bytes[100])
# @notice Whether the last inner call succeeded.
reentered: public(bool)
# @notice Whether the hook ran.
hooked: public(bool)


@external
def set_reentry(data: Bytes[100]):
    self.reentry = data


@external
def approve(token: address, spender: address):
    extcall IERC20(token).approve(spender, max_value(uint256))


@external
def write(options: address, series_id: uint256, units: uint256):
    extcall IOptions(options).write(series_id, units)


@external
def onERC1155Received(operator: address, owner: address, id: uint256, amount: uint256, data: Bytes[1_024]) -> bytes4:
    self.hooked = True
    if len(self.reentry) != 0:
        ok: bool = raw_call(msg.sender, self.reentry, revert_on_failure=False)
        self.reentered = ok
    return method_id("onERC1155Received(address,address,uint256,uint256,bytes)", output_type=bytes4)
