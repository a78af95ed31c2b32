# pragma version ~=0.4.3
"""
@title VaultSeeder
@license MIT
@notice Funds many CreditsVault accounts and registers their signed spend
        caps in one transaction, so benchmarks can set up hundreds of buyers
        quickly. For local chains and benchmarks only.
"""

from ethereum.ercs import IERC20

interface ICreditsVault:
    def deposit_for(account: address, asset: address, amount: uint256): nonpayable
    def register_spend_cap(
        account: address,
        asset: address,
        per_epoch: uint256,
        total: uint256,
        expiry: uint256,
        nonce: uint256,
        signature: Bytes[65],
    ): nonpayable

MAX_ACCOUNTS: constant(uint256) = 128


@external
def seed(
    vault: address,
    asset: address,
    accounts: DynArray[address, MAX_ACCOUNTS],
    amount: uint256,
    per_epoch: uint256,
    total: uint256,
    expiry: uint256,
    signatures: DynArray[Bytes[65], MAX_ACCOUNTS],
):
    """
    @notice Deposits `amount` for each account (paid by the caller, who must
            have approved amount × len(accounts) to this contract) and
            registers each account's first spend cap (nonce 0).
    @param vault The CreditsVault.
    @param asset The asset to deposit and cap.
    @param accounts The buyers.
    @param amount Deposit per buyer.
    @param per_epoch The caps' per-epoch maximum.
    @param total The caps' total.
    @param expiry The caps' expiry.
    @param signatures Each buyer's SpendCap signature, in the order of `accounts`.
    """
    assert len(accounts) == len(signatures), "seeder: length mismatch"
    assert extcall IERC20(asset).transferFrom(msg.sender, self, amount * len(accounts))
    assert extcall IERC20(asset).approve(vault, amount * len(accounts))
    for i: uint256 in range(len(accounts), bound=MAX_ACCOUNTS):
        extcall ICreditsVault(vault).deposit_for(accounts[i], asset, amount)
        extcall ICreditsVault(vault).register_spend_cap(accounts[i], asset, per_epoch, total, expiry, 0, signatures[i])
