# pragma version ~=0.4.3
"""
@title FeeOnTransferToken
@license MIT
@notice Test token that burns 1 % of every transfer, so the recipient gets
        less than was sent. For tests only: the vault must refuse it.
"""

from ethereum.ercs import IERC20

implements: IERC20

FEE_BPS: constant(uint256) = 100

balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
totalSupply: public(uint256)


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
    @notice Sets `spender`'s allowance.
    @param spender The spender.
    @param amount The allowance.
    @return bool Always True.
    """
    self.allowance[msg.sender][spender] = amount
    log IERC20.Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def transfer(to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount`; the recipient receives 99 % of it.
    @param to Recipient.
    @param amount Amount sent.
    @return bool Always True.
    """
    self._transfer(msg.sender, to, amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount` of `owner`'s tokens; the recipient receives 99 % of it.
    @param owner Payer.
    @param to Recipient.
    @param amount Amount sent.
    @return bool Always True.
    """
    self.allowance[owner][msg.sender] -= amount
    self._transfer(owner, to, amount)
    return True


@internal
def _transfer(owner: address, to: address, amount: uint256):
    fee: uint256 = amount * FEE_BPS // 10_000
    self.balanceOf[owner] -= amount
    self.balanceOf[to] += amount - fee
    self.totalSupply -= fee
    log IERC20.Transfer(sender=owner, receiver=to, value=amount - fee)
