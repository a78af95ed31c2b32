"""The vault's one release nonce per wallet makes every release of a wallet exclusive
(session 4's breaker, the door's twins): the coordinator's door and its operator, or two
coordinators, may each sign a release at the wallet's nonce before either is used, for
another amount or asset. On chain, once one is used no other can be, whoever signed it."""

import ape
import pytest

from promptex.protocol.vault import sign_release

USD = 10**6


def _release(vault, chain, usdc, account, amount, signer):
    """A Release of `amount` USDC for `account` at its current nonce, signed by `signer`."""
    nonce, expiry = vault.release_nonce(account), chain.pending_timestamp + 600
    signature = sign_release(signer.private_key, chain_id=chain.chain_id, vault=vault.address, account=account.address,
                             asset=usdc.address, amount=amount, nonce=nonce, expiry=expiry)  # fmt: skip
    return nonce, expiry, signature


@pytest.mark.parametrize("used_first", ["small", "large"])
def test_exit_instant__twin_releases_at_one_nonce_from_two_coordinators__only_one_ever_pays(
    vault, usdc, fund, buyer, admin, accounts, coordinator, chain, used_first
):
    fund(buyer, 100 * USD)
    second = accounts[8]
    vault.grant_coordinator(second, sender=admin)
    small = _release(vault, chain, usdc, buyer, 30 * USD, coordinator)
    large = _release(vault, chain, usdc, buyer, 70 * USD, second)
    assert small[0] == large[0] == vault.release_nonce(buyer)  # both signed before either was used
    first, other = (small, large) if used_first == "small" else (large, small)
    amounts = {small: 30 * USD, large: 70 * USD}
    vault.exit_instant(usdc, amounts[first], 0, *first, sender=buyer)
    with ape.reverts("vault: bad nonce"):
        vault.exit_instant(usdc, amounts[other], 0, *other, sender=buyer)
    assert vault.balance_of(buyer, usdc) == 100 * USD - amounts[first]
    assert usdc.balanceOf(buyer) == amounts[first]
