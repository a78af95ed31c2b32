# pragma version ~=0.4.3
"""
@title ComputeToken
@license MIT
@notice ERC-20 (18 decimals, EIP-2612 permit) for one AI provider's tokenized
        API credit (CLD for Anthropic, GPT for OpenAI, ...). Every token in
        existence is backed by capacity in an open CreditEscrow lot, so only
        the minter role (the escrow) creates tokens and only the burner role
        (the escrow, the credits vault) destroys them as capacity is consumed.
@dev Composes snekmate's ERC-20. The admin never holds the minter role:
     snekmate makes its owner a minter, and the constructor revokes that.
     Admin handover is two-step (`transfer_ownership`, `accept_ownership`).
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
    erc20.is_minter,
    ownable.owner,
)


# ─── Metadata ────────────────────────────────────────────────────────────────

# @notice Human-readable provider name, e.g. "Anthropic".
provider_name: public(immutable(String[32]))

# @notice USD face value of one whole token (10**18 units), in USD micro-units
#         (1 USD = 10**6). CLD at $0.004218 is 4_218.
face_value_usd_micro: public(immutable(uint256))

# ─── Roles ───────────────────────────────────────────────────────────────────

# @notice Addresses allowed to destroy tokens they hold.
is_burner: public(HashMap[address, bool])

# @notice The admin-elect of a two-step handover.
pending_owner: public(address)


event RoleBurnerChanged:
    burner: indexed(address)
    status: bool


event OwnershipTransferStarted:
    previous_owner: indexed(address)
    new_owner: indexed(address)


@deploy
def __init__(
    name_: String[25],
    symbol_: String[5],
    provider_: String[32],
    face_value_usd_micro_: uint256,
):
    """
    @notice Deploys a provider token; the deployer becomes the admin.
    @param name_ Token name, e.g. "PROMPTEX Claude Credit".
    @param symbol_ Token symbol, e.g. "CLD".
    @param provider_ Provider name, e.g. "Anthropic".
    @param face_value_usd_micro_ USD micro-units per whole token; non-zero.
    """
    assert face_value_usd_micro_ > 0, "token: zero face value"
    assert len(provider_) > 0, "token: empty provider"
    ownable.__init__()
    erc20.__init__(name_, symbol_, 18, name_, "1")
    # snekmate grants its owner the minter role; an admin must not mint unbacked tokens.
    erc20.is_minter[msg.sender] = False
    log erc20.RoleMinterChanged(minter=msg.sender, status=False)
    provider_name = provider_
    face_value_usd_micro = face_value_usd_micro_


# ─── Supply ──────────────────────────────────────────────────────────────────


@external
def mint(owner: address, amount: uint256):
    """
    @notice Creates `amount` tokens for `owner`.
    @dev Minter role only (the CreditEscrow, when it opens a tokenized lot).
    @param owner Recipient; not the zero address.
    @param amount Token amount in 10**-18 units; non-zero.
    """
    assert erc20.is_minter[msg.sender], "token: caller is not a minter"
    assert amount > 0, "token: zero amount"
    erc20._mint(owner, amount)


@external
def burn(amount: uint256):
    """
    @notice Destroys `amount` of the caller's own tokens.
    @dev Burner role only, so every burn is a recorded draw on capacity.
    @param amount Token amount in 10**-18 units; non-zero.
    """
    assert self.is_burner[msg.sender], "token: caller is not a burner"
    assert amount > 0, "token: zero amount"
    erc20._burn(msg.sender, amount)


# ─── Admin ───────────────────────────────────────────────────────────────────


@external
def set_minter(minter: address, status: bool):
    """
    @notice Grants or revokes the minter role.
    @dev Admin only; the admin itself can never be a minter.
    @param minter The account; not the zero address nor the admin.
    @param status True to grant, False to revoke.
    """
    ownable._check_owner()
    assert minter != empty(address), "token: zero address"
    assert minter != msg.sender, "token: admin cannot mint"
    erc20.is_minter[minter] = status
    log erc20.RoleMinterChanged(minter=minter, status=status)


@external
def set_burner(burner: address, status: bool):
    """
    @notice Grants or revokes the burner role.
    @dev Admin only.
    @param burner The account; not the zero address.
    @param status True to grant, False to revoke.
    """
    ownable._check_owner()
    assert burner != empty(address), "token: zero address"
    self.is_burner[burner] = status
    log RoleBurnerChanged(burner=burner, status=status)


@external
def transfer_ownership(new_owner: address):
    """
    @notice Starts a two-step admin handover.
    @dev Admin only; `new_owner` must call `accept_ownership`.
    @param new_owner The admin-elect; the zero address cancels.
    """
    ownable._check_owner()
    self.pending_owner = new_owner
    log OwnershipTransferStarted(previous_owner=ownable.owner, new_owner=new_owner)


@external
def accept_ownership():
    """
    @notice Completes a two-step admin handover.
    @dev Only the admin-elect may call it.
    """
    assert msg.sender == self.pending_owner, "token: caller is not the new owner"
    assert not erc20.is_minter[msg.sender], "token: admin cannot mint"
    self.pending_owner = empty(address)
    ownable._transfer_ownership(msg.sender)
