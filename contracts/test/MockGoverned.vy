# pragma version ~=0.4.3
"""
@title MockGoverned
@license MIT
@notice A stand-in for a governed PROMPTEX contract in the Timelock's tests:
        two-step admin handover, a role with separate grant and revoke
        functions, and one parameter. Tests only.
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

initializes: ownable
initializes: ownable_2step[ownable := ownable]

exports: (
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
)

# @notice Holders of the governed role.
is_operator: public(HashMap[address, bool])
# @notice A governed parameter.
fee_bps: public(uint256)


@deploy
def __init__():
    """
    @notice The deployer becomes the admin.
    """
    ownable.__init__()
    ownable_2step.__init__()


@external
def grant_operator(account: address):
    """
    @notice Grants the role.
    @param account The account.
    """
    ownable._check_owner()
    self.is_operator[account] = True


@external
def revoke_operator(account: address):
    """
    @notice Revokes the role.
    @param account A holder.
    """
    ownable._check_owner()
    assert self.is_operator[account], "governed: not an operator"
    self.is_operator[account] = False


@external
def set_fee_bps(new_bps: uint256):
    """
    @notice Sets the parameter.
    @param new_bps Anything up to 10,000.
    """
    ownable._check_owner()
    assert new_bps <= 10_000, "governed: fee too high"
    self.fee_bps = new_bps
