# pragma version ~=0.4.3
"""
@title VaultEventEmitter
@license MIT
@notice Test only: emits CreditsVault-shaped `Deposited` events in bulk, so the
        indexer benchmark can follow it as "the vault" and catch up over
        100,000 events in a handful of transactions.
"""

MAX_EVENTS: constant(uint256) = 10_000

event Deposited:
    account: indexed(address)
    asset: indexed(address)
    payer: indexed(address)
    amount: uint256
    balance: uint256


@external
def emit_deposits(asset: address, accounts: uint256, count: uint256):
    """
    @notice Logs `count` deposits of 1 unit of `asset`, round-robin over the
            accounts 0x…01 to 0x…`accounts`.
    @param asset The asset named in every event.
    @param accounts How many distinct accounts; at least 1.
    @param count How many events; at most MAX_EVENTS.
    """
    assert accounts > 0, "emitter: no accounts"
    for i: uint256 in range(count, bound=MAX_EVENTS):
        account: address = convert(convert(i % accounts + 1, uint160), address)
        log Deposited(account=account, asset=asset, payer=account, amount=1, balance=i + 1)
