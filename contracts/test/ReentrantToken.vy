# pragma version ~=0.4.3
"""
@title ReentrantToken
@license MIT
@notice Test token that, once armed, calls back into a target (the vault)
        from inside its next transfer, and records whether that call
        succeeded. It can also act as an account of its own (`execute`).
        For reentrancy tests only.
"""

from ethereum.ercs import IERC20

implements: IERC20

balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
totalSupply: public(uint256)

# @notice The pending callback: target and calldata; cleared when it fires.
hook_target: public(address)
hook_data: public(Bytes[1_024])
# @notice How many callbacks fired, and whether the last one succeeded.
hook_calls: public(uint256)
hook_succeeded: public(bool)


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
def arm(target: address, data: Bytes[1_024]):
    """
    @notice Makes the next transfer call `target` with `data` first.
    @param target The contract to re-enter.
    @param data The calldata.
    """
    self.hook_target = target
    self.hook_data = data


@external
def execute(target: address, data: Bytes[1_024]):
    """
    @notice Calls `target` as this contract (so the token can hold a vault account).
    @param target The contract.
    @param data The calldata; a revert is passed on.
    """
    raw_call(target, data)


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
    @notice Sends `amount`, after firing the armed callback.
    @param to Recipient.
    @param amount Amount.
    @return bool Always True.
    """
    self._fire()
    self._transfer(msg.sender, to, amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount` of `owner`'s tokens, after firing the armed callback.
    @param owner Payer.
    @param to Recipient.
    @param amount Amount.
    @return bool Always True.
    """
    self._fire()
    self.allowance[owner][msg.sender] -= amount
    self._transfer(owner, to, amount)
    return True


@internal
def _fire():
    target: address = self.hook_target
    if target == empty(address):
        return
    self.hook_target = empty(address)
    self.hook_calls += 1
    success: bool = raw_call(target, self.hook_data, revert_on_failure=False)
    self.hook_succeeded = success


@internal
def _transfer(owner: address, to: address, amount: uint256):
    self.balanceOf[owner] -= amount
    self.balanceOf[to] += amount
    log IERC20.Transfer(sender=owner, receiver=to, value=amount)
