"""Attacks on ComputeToken's roles (issue 19, item 4). Found on the old token: its admin
granted minting to a second key (`set_minter` refused only its own address) and minted
a billion CLD, and could remove the vault's burner role to halt settlement. Now the
roles are fixed at deploy and the token has no admin: each attack must leave the
supply and the roles exactly as they were.
"""

import ape
import pytest
from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

from promptex.protocol.units import TOKEN_UNIT, ZERO_ADDRESS

BILLION_CLD = 10**9 * TOKEN_UNIT

# Every role or ownership function snekmate's ERC-20 and ownable modules define, and the
# old token's own: none may be reachable.
ROLE_CALLS = {
    "set_minter(address,bool)": (["address", "bool"], "second_key", True),
    "set_burner(address,bool)": (["address", "bool"], "second_key", True),
    "transfer_ownership(address)": (["address"], "second_key"),
    "accept_ownership()": ([],),
    "renounce_ownership()": ([],),
}


def _calldata(signature, types, *args):
    return function_signature_to_4byte_selector(signature) + encode(types, list(args))


def _send(sender, token, data):
    """A raw transaction to `token` (the functions are not in its ABI any more)."""
    return sender.transfer(token.address, 0, data=data)


@pytest.fixture(scope="module")
def second_key(accounts):
    return accounts[9]


def test_abi__no_function_changes_a_role_or_the_owner(cld):
    names = {abi.name for abi in cld.contract_type.mutable_methods}
    assert names == {"transfer", "approve", "transferFrom", "permit", "mint", "burn"}


@pytest.mark.parametrize("signature", sorted(ROLE_CALLS))
@pytest.mark.parametrize("who", ["admin", "second_key"])
def test_role_call__by_deployer_or_anyone__reverts_and_nothing_changes(
    cld, escrow, vault, second_key, signature, who, request
):
    sender = request.getfixturevalue(who)
    types, *args = ROLE_CALLS[signature]
    args = [second_key.address if a == "second_key" else a for a in args]
    supply = cld.totalSupply()
    with ape.reverts():
        _send(sender, cld, _calldata(signature, types, *args))
    assert not cld.is_minter(second_key) and not cld.is_burner(second_key)
    assert cld.is_burner(vault) and cld.is_burner(escrow) and cld.is_minter(escrow)
    assert cld.owner() == ZERO_ADDRESS
    assert cld.totalSupply() == supply


def test_attack__second_minter_mints_a_billion__reverts(cld, admin, second_key):
    # The old attack: grant a second key minting, then mint a billion CLD.
    with ape.reverts():
        _send(admin, cld, _calldata("set_minter(address,bool)", ["address", "bool"], second_key.address, True))
    for who in (admin, second_key):
        with ape.reverts("token: caller is not a minter"):
            cld.mint(second_key, BILLION_CLD, sender=who)
    assert cld.balanceOf(second_key) == 0
    assert cld.totalSupply() == 0


def test_attack__remove_the_vaults_burner_role__reverts(cld, admin, vault):
    # The old attack: the admin revoked the vault's burner role and every settlement burn reverted.
    with ape.reverts():
        _send(admin, cld, _calldata("set_burner(address,bool)", ["address", "bool"], vault.address, False))
    assert cld.is_burner(vault)


def test_attack__ownership_transfer_cannot_make_a_minter(cld, admin, second_key):
    # snekmate's ERC-20 makes every new owner a minter; the token exports no way to get one.
    for signature in ("transfer_ownership(address)", "renounce_ownership()"):
        types = ["address"] if "address" in signature else []
        args = [second_key.address] if types else []
        with ape.reverts():
            _send(admin, cld, _calldata(signature, types, *args))
    assert not cld.is_minter(second_key) and not cld.is_minter(admin)
