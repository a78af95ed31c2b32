# pragma version ~=0.4.3
"""
@title ComputeToken
@license MIT
@notice ERC-20 (18 decimals, EIP-2612 permit) for one AI provider's tokenized
        API credit (CLD for Anthropic, GPT for OpenAI, ...). Every token in
        existence is backed by capacity in an open CreditEscrow lot, so only
        the escrow creates tokens and only the escrow and the credits vault
        destroy them as capacity is consumed.
@dev Roles are fixed at deploy and no function changes them: the escrow is
     the only minter, the escrow and the vault the only burners. The token
     has no admin at all: snekmate's ERC-20 makes its owner a minter (at
     construction and on every ownership transfer), so the constructor
     renounces ownership after taking that role back, and none of snekmate's
     role or ownership functions (`set_minter`, `transfer_ownership`,
     `renounce_ownership`) is exported.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

from .interfaces import IComputeToken

initializes: ownable
initializes: erc20[ownable := ownable]

implements: IComputeToken

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

# ─── Roles (fixed) ───────────────────────────────────────────────────────────

# @notice The CreditEscrow: the only minter, and a burner.
escrow: public(immutable(address))
# @notice The CreditsVault: a burner (settlement burns what buyers spent).
vault: public(immutable(address))


@deploy
def __init__(
    name_: String[25],
    symbol_: String[5],
    provider_: String[32],
    face_value_usd_micro_: uint256,
    escrow_: address,
    vault_: address,
):
    """
    @notice Deploys a provider token with its roles fixed for good.
    @param name_ Token name, e.g. "PROMPTEX Claude Credit".
    @param symbol_ Token symbol, e.g. "CLD".
    @param provider_ Provider name, e.g. "Anthropic".
    @param face_value_usd_micro_ USD micro-units per whole token; non-zero.
    @param escrow_ The CreditEscrow: the only minter, and a burner.
    @param vault_ The CreditsVault: the other burner.
    """
    assert face_value_usd_micro_ > 0, "token: zero face value"
    assert len(provider_) > 0, "token: empty provider"
    assert escrow_ != empty(address) and vault_ != empty(address), "token: zero address"
    assert escrow_ != vault_, "token: escrow is the vault"
    ownable.__init__()
    erc20.__init__(name_, symbol_, 18, name_, "1")
    # snekmate makes the deployer a minter; no key but the escrow may ever mint.
    erc20.is_minter[msg.sender] = False
    log erc20.RoleMinterChanged(minter=msg.sender, status=False)
    erc20.is_minter[escrow_] = True
    log erc20.RoleMinterChanged(minter=escrow_, status=True)
    # No owner: nothing is left to administer, and no key can re-enter a role.
    ownable._transfer_ownership(empty(address))
    provider_name = provider_
    face_value_usd_micro = face_value_usd_micro_
    escrow = escrow_
    vault = vault_


# ─── Supply ──────────────────────────────────────────────────────────────────


@external
def mint(owner: address, amount: uint256):
    """
    @notice Creates `amount` tokens for `owner`.
    @dev The escrow only (when it opens a tokenized lot).
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
    @dev The escrow and the vault only, so every burn is a recorded draw on
         capacity, a returned share of a closed lot, or a buy-back.
    @param amount Token amount in 10**-18 units; non-zero.
    """
    assert self._is_burner(msg.sender), "token: caller is not a burner"
    assert amount > 0, "token: zero amount"
    erc20._burn(msg.sender, amount)


@external
@view
def is_burner(account: address) -> bool:
    """
    @notice Whether `account` may burn its own tokens.
    @param account The account.
    @return bool True for the escrow and the vault only.
    """
    return self._is_burner(account)


@internal
@view
def _is_burner(account: address) -> bool:
    return account == escrow or account == vault
