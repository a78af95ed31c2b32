# pragma version ~=0.4.3
"""
@title FalseReturningToken
@license MIT
@notice Test token whose transfer, transferFrom and approve can be switched to
        return False instead of reverting (as some old tokens do). It also
        answers `face_value_usd_micro`, `is_minter` and `is_burner`, so an
        escrow can register it as a provider token. For tests only.
"""

from ethereum.ercs import IERC20

implements: IERC20

balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
totalSupply: public(uint256)

# @notice When set, transfer/transferFrom (resp. approve) return False and do nothing.
fail_transfers: public(bool)
fail_approvals: public(bool)


@external
@view
def face_value_usd_micro() -> uint256:
    """
    @notice Lets a CreditEscrow accept this token as a provider token.
    @return uint256 Always 1.
    """
    return 1


@external
@view
def is_minter(account: address) -> bool:
    """
    @notice Lets a CreditEscrow accept this token (it checks it is the minter).
    @param account Any account.
    @return bool Always True.
    """
    return True


@external
@view
def is_burner(account: address) -> bool:
    """
    @notice Lets a CreditEscrow accept this token (it checks it is a burner).
    @param account Any account.
    @return bool Always True.
    """
    return True


@external
def set_failures(transfers: bool, approvals: bool):
    """
    @notice Switches the False-returning behaviour.
    @param transfers Fail transfer and transferFrom.
    @param approvals Fail approve.
    """
    self.fail_transfers = transfers
    self.fail_approvals = approvals


@external
def mint(owner: address, amount: uint256):
    """
    @notice Open faucet.
    @param owner Recipient.
    @param amount Amount.
    """
    self.balanceOf[owner] += amount
    self.totalSupply += amount
    log IERC20.Transfer(sender=empty(address), receiver=owner, value=amount)


@external
def approve(spender: address, amount: uint256) -> bool:
    """
    @notice Sets `spender`'s allowance, unless approvals fail.
    @param spender The spender.
    @param amount The allowance.
    @return bool False when approvals fail.
    """
    if self.fail_approvals:
        return False
    self.allowance[msg.sender][spender] = amount
    log IERC20.Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def transfer(to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount`, unless transfers fail.
    @param to Recipient.
    @param amount Amount.
    @return bool False when transfers fail.
    """
    if self.fail_transfers:
        return False
    self._transfer(msg.sender, to, amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount` of `owner`'s tokens, unless transfers fail.
    @param owner Payer.
    @param to Recipient.
    @param amount Amount.
    @return bool False when transfers fail.
    """
    if self.fail_transfers:
        return False
    self.allowance[owner][msg.sender] -= amount
    self._transfer(owner, to, amount)
    return True


@internal
def _transfer(owner: address, to: address, amount: uint256):
    self.balanceOf[owner] -= amount
    self.balanceOf[to] += amount
    log IERC20.Transfer(sender=owner, receiver=to, value=amount)
