"""ComputeToken: metadata, mint/burn roles, ERC-20 basics, EIP-2612 permit, admin handover."""

import ape
import pytest
from ape import project

from promptex.protocol.permit import sign_permit
from promptex.protocol.units import TOKEN_UNIT, ZERO_ADDRESS

NOT_OWNER = "ownable: caller is not the owner"


@pytest.fixture
def minter(accounts, cld, admin):
    """A fresh account holding CLD's minter role (the escrow is the deployed minter)."""
    account = accounts[7]
    cld.set_minter(account, True, sender=admin)
    return account


@pytest.fixture
def burner(accounts, cld, admin):
    """A fresh account holding CLD's burner role."""
    account = accounts[8]
    cld.set_burner(account, True, sender=admin)
    return account


@pytest.fixture
def funded(cld, minter, seller):
    """`seller` holds 100 CLD."""
    cld.mint(seller, 100 * TOKEN_UNIT, sender=minter)
    return seller


def _sign_permit(token, chain, signer, owner, spender, amount, deadline, nonce):
    """An EIP-2612 permit for `owner`, signed by `signer`, as (v, r, s)."""
    return sign_permit(
        signer.private_key,
        token_name=token.name(),
        chain_id=chain.chain_id,
        token=str(token.address),
        owner=str(owner.address),
        spender=str(spender.address),
        value=amount,
        nonce=nonce,
        deadline=deadline,
    )


# ─── Metadata ────────────────────────────────────────────────────────────────


def test_metadata__cld__matches_provider_spec(cld):
    assert cld.name() == "PROMPTEX Claude Credit"
    assert cld.symbol() == "CLD"
    assert cld.decimals() == 18
    assert cld.provider_name() == "Anthropic"
    assert cld.face_value_usd_micro() == 4_218


def test_metadata__gpt__matches_provider_spec(gpt):
    assert gpt.name() == "PROMPTEX GPT Credit"
    assert gpt.symbol() == "GPT"
    assert gpt.decimals() == 18
    assert gpt.provider_name() == "OpenAI"
    assert gpt.face_value_usd_micro() == 3_695_000


def test_metadata__fresh_deployment__has_no_supply(cld):
    assert cld.totalSupply() == 0


# ─── Constructor ─────────────────────────────────────────────────────────────


def test_deploy__zero_face_value__reverts(admin):
    with ape.reverts("token: zero face value"):
        admin.deploy(project.ComputeToken, "Zero Credit", "ZERO", "Nobody", 0)


def test_deploy__empty_provider__reverts(admin):
    with ape.reverts("token: empty provider"):
        admin.deploy(project.ComputeToken, "Anon Credit", "ANON", "", 1_000)


def test_deploy__valid__admin_owns_but_cannot_mint(admin):
    token = admin.deploy(project.ComputeToken, "Test Credit", "TST", "Tester", 1_000)
    assert token.owner() == admin
    assert token.is_minter(admin) is False
    with ape.reverts("token: caller is not a minter"):
        token.mint(admin, 1, sender=admin)


def test_roles__deployed_token__escrow_is_minter_and_burner_admin_is_neither(cld, escrow, admin):
    assert cld.is_minter(escrow) is True
    assert cld.is_burner(escrow) is True
    assert cld.is_minter(admin) is False
    assert cld.is_burner(admin) is False


# ─── Mint ────────────────────────────────────────────────────────────────────


def test_mint__by_minter__credits_owner_and_emits_transfer(cld, minter, buyer):
    tx = cld.mint(buyer, 5 * TOKEN_UNIT, sender=minter)
    assert cld.balanceOf(buyer) == 5 * TOKEN_UNIT
    assert cld.totalSupply() == 5 * TOKEN_UNIT
    assert tx.events == [cld.Transfer(sender=ZERO_ADDRESS, receiver=buyer, value=5 * TOKEN_UNIT)]


def test_mint__by_non_minter__reverts(cld, attacker):
    with ape.reverts("token: caller is not a minter"):
        cld.mint(attacker, TOKEN_UNIT, sender=attacker)


def test_mint__by_admin__reverts(cld, admin):
    with ape.reverts("token: caller is not a minter"):
        cld.mint(admin, TOKEN_UNIT, sender=admin)


def test_mint__zero_amount__reverts(cld, minter, buyer):
    with ape.reverts("token: zero amount"):
        cld.mint(buyer, 0, sender=minter)


def test_mint__to_zero_address__reverts(cld, minter):
    with ape.reverts("erc20: mint to the zero address"):
        cld.mint(ZERO_ADDRESS, TOKEN_UNIT, sender=minter)


def test_mint__after_minter_revoked__reverts(cld, minter, admin, buyer):
    cld.set_minter(minter, False, sender=admin)
    with ape.reverts("token: caller is not a minter"):
        cld.mint(buyer, TOKEN_UNIT, sender=minter)


# ─── Burn ────────────────────────────────────────────────────────────────────


def test_burn__by_burner__destroys_own_tokens_and_emits_transfer(cld, minter, burner):
    cld.mint(burner, 10 * TOKEN_UNIT, sender=minter)
    tx = cld.burn(4 * TOKEN_UNIT, sender=burner)
    assert cld.balanceOf(burner) == 6 * TOKEN_UNIT
    assert cld.totalSupply() == 6 * TOKEN_UNIT
    assert tx.events == [cld.Transfer(sender=burner, receiver=ZERO_ADDRESS, value=4 * TOKEN_UNIT)]


def test_burn__by_non_burner_holder__reverts(cld, funded):
    with ape.reverts("token: caller is not a burner"):
        cld.burn(TOKEN_UNIT, sender=funded)
    assert cld.balanceOf(funded) == 100 * TOKEN_UNIT


def test_burn__zero_amount__reverts(cld, burner):
    with ape.reverts("token: zero amount"):
        cld.burn(0, sender=burner)


def test_burn__more_than_balance__reverts(cld, minter, burner):
    cld.mint(burner, TOKEN_UNIT, sender=minter)
    with ape.reverts("erc20: burn amount exceeds balance"):
        cld.burn(TOKEN_UNIT + 1, sender=burner)


# ─── Roles ───────────────────────────────────────────────────────────────────


def test_set_minter__by_admin__grants_role_and_emits_event(cld, admin, buyer):
    tx = cld.set_minter(buyer, True, sender=admin)
    assert cld.is_minter(buyer) is True
    assert tx.events == [cld.RoleMinterChanged(minter=buyer, status=True)]


def test_set_minter__by_non_admin__reverts(cld, attacker):
    with ape.reverts(NOT_OWNER):
        cld.set_minter(attacker, True, sender=attacker)
    assert cld.is_minter(attacker) is False


def test_set_minter__zero_address__reverts(cld, admin):
    with ape.reverts("token: zero address"):
        cld.set_minter(ZERO_ADDRESS, True, sender=admin)


def test_set_minter__admin_itself__reverts(cld, admin):
    with ape.reverts("token: admin cannot mint"):
        cld.set_minter(admin, True, sender=admin)


def test_set_burner__by_admin__grants_and_revokes_role(cld, admin, buyer):
    tx = cld.set_burner(buyer, True, sender=admin)
    assert cld.is_burner(buyer) is True
    assert tx.events == [cld.RoleBurnerChanged(burner=buyer, status=True)]
    cld.set_burner(buyer, False, sender=admin)
    assert cld.is_burner(buyer) is False


def test_set_burner__by_non_admin__reverts(cld, attacker):
    with ape.reverts(NOT_OWNER):
        cld.set_burner(attacker, True, sender=attacker)
    assert cld.is_burner(attacker) is False


def test_set_burner__zero_address__reverts(cld, admin):
    with ape.reverts("token: zero address"):
        cld.set_burner(ZERO_ADDRESS, True, sender=admin)


# ─── ERC-20 ──────────────────────────────────────────────────────────────────


def test_transfer__within_balance__moves_tokens_and_emits_transfer(cld, funded, buyer):
    tx = cld.transfer(buyer, 30 * TOKEN_UNIT, sender=funded)
    assert cld.balanceOf(funded) == 70 * TOKEN_UNIT
    assert cld.balanceOf(buyer) == 30 * TOKEN_UNIT
    assert cld.totalSupply() == 100 * TOKEN_UNIT
    assert tx.events == [cld.Transfer(sender=funded, receiver=buyer, value=30 * TOKEN_UNIT)]


def test_transfer__above_balance__reverts(cld, funded, buyer):
    with ape.reverts("erc20: transfer amount exceeds balance"):
        cld.transfer(buyer, 100 * TOKEN_UNIT + 1, sender=funded)


def test_transfer__to_zero_address__reverts(cld, funded):
    with ape.reverts("erc20: transfer to the zero address"):
        cld.transfer(ZERO_ADDRESS, TOKEN_UNIT, sender=funded)


def test_approve__any_amount__sets_allowance_and_emits_approval(cld, funded, buyer):
    tx = cld.approve(buyer, 7 * TOKEN_UNIT, sender=funded)
    assert cld.allowance(funded, buyer) == 7 * TOKEN_UNIT
    assert tx.events == [cld.Approval(owner=funded, spender=buyer, value=7 * TOKEN_UNIT)]


def test_transfer_from__within_allowance__moves_tokens_and_spends_allowance(cld, funded, buyer, attacker):
    cld.approve(buyer, 10 * TOKEN_UNIT, sender=funded)
    cld.transferFrom(funded, attacker, 4 * TOKEN_UNIT, sender=buyer)
    assert cld.balanceOf(attacker) == 4 * TOKEN_UNIT
    assert cld.balanceOf(funded) == 96 * TOKEN_UNIT
    assert cld.allowance(funded, buyer) == 6 * TOKEN_UNIT


def test_transfer_from__above_allowance__reverts(cld, funded, buyer):
    cld.approve(buyer, TOKEN_UNIT, sender=funded)
    with ape.reverts("erc20: insufficient allowance"):
        cld.transferFrom(funded, buyer, TOKEN_UNIT + 1, sender=buyer)


def test_transfer_from__above_balance__reverts(cld, funded, buyer):
    cld.approve(buyer, 1_000 * TOKEN_UNIT, sender=funded)
    with ape.reverts("erc20: transfer amount exceeds balance"):
        cld.transferFrom(funded, buyer, 100 * TOKEN_UNIT + 1, sender=buyer)


# ─── EIP-2612 permit ─────────────────────────────────────────────────────────


def test_permit__valid_signature__sets_allowance_and_bumps_nonce(cld, chain, seller, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(cld, chain, seller, seller, buyer, 42 * TOKEN_UNIT, deadline, nonce=0)
    tx = cld.permit(seller, buyer, 42 * TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    assert cld.allowance(seller, buyer) == 42 * TOKEN_UNIT
    assert cld.nonces(seller) == 1
    assert tx.events == [cld.Approval(owner=seller, spender=buyer, value=42 * TOKEN_UNIT)]


def test_permit__valid_signature__lets_spender_transfer(cld, chain, funded, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(cld, chain, funded, funded, buyer, 10 * TOKEN_UNIT, deadline, nonce=0)
    cld.permit(funded, buyer, 10 * TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    cld.transferFrom(funded, buyer, 10 * TOKEN_UNIT, sender=buyer)
    assert cld.balanceOf(buyer) == 10 * TOKEN_UNIT


def test_permit__wrong_signer__reverts(cld, chain, seller, attacker):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(cld, chain, attacker, seller, attacker, TOKEN_UNIT, deadline, nonce=0)
    with ape.reverts("erc20: invalid signature"):
        cld.permit(seller, attacker, TOKEN_UNIT, deadline, v, r, s, sender=attacker)
    assert cld.allowance(seller, attacker) == 0
    assert cld.nonces(seller) == 0


def test_permit__amount_differs_from_signed__reverts(cld, chain, seller, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(cld, chain, seller, seller, buyer, TOKEN_UNIT, deadline, nonce=0)
    with ape.reverts("erc20: invalid signature"):
        cld.permit(seller, buyer, 2 * TOKEN_UNIT, deadline, v, r, s, sender=buyer)


def test_permit__signed_for_other_token__reverts(cld, gpt, chain, seller, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(gpt, chain, seller, seller, buyer, TOKEN_UNIT, deadline, nonce=0)
    with ape.reverts("erc20: invalid signature"):
        cld.permit(seller, buyer, TOKEN_UNIT, deadline, v, r, s, sender=buyer)


def test_permit__expired_deadline__reverts(cld, chain, seller, buyer):
    deadline = chain.pending_timestamp - 1
    v, r, s = _sign_permit(cld, chain, seller, seller, buyer, TOKEN_UNIT, deadline, nonce=0)
    with ape.reverts("erc20: expired deadline"):
        cld.permit(seller, buyer, TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    assert cld.allowance(seller, buyer) == 0


def test_permit__replayed_signature__reverts(cld, chain, seller, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(cld, chain, seller, seller, buyer, TOKEN_UNIT, deadline, nonce=0)
    cld.permit(seller, buyer, TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    cld.approve(buyer, 0, sender=seller)
    with ape.reverts("erc20: invalid signature"):
        cld.permit(seller, buyer, TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    assert cld.allowance(seller, buyer) == 0
    assert cld.nonces(seller) == 1


# ─── Ownership (two-step) ────────────────────────────────────────────────────


def test_transfer_ownership__by_non_admin__reverts(cld, attacker):
    with ape.reverts(NOT_OWNER):
        cld.transfer_ownership(attacker, sender=attacker)
    assert cld.pending_owner() == ZERO_ADDRESS


def test_transfer_ownership__by_admin__records_pending_owner_only(cld, admin, buyer):
    tx = cld.transfer_ownership(buyer, sender=admin)
    assert cld.pending_owner() == buyer
    assert cld.owner() == admin
    assert tx.events == [cld.OwnershipTransferStarted(previous_owner=admin, new_owner=buyer)]


def test_accept_ownership__by_other_than_pending__reverts(cld, admin, buyer, attacker):
    cld.transfer_ownership(buyer, sender=admin)
    with ape.reverts("token: caller is not the new owner"):
        cld.accept_ownership(sender=attacker)
    assert cld.owner() == admin


def test_accept_ownership__by_pending__moves_owner_and_admin_rights(cld, admin, buyer, attacker):
    cld.transfer_ownership(buyer, sender=admin)
    tx = cld.accept_ownership(sender=buyer)
    assert cld.owner() == buyer
    assert cld.pending_owner() == ZERO_ADDRESS
    assert tx.events == [cld.OwnershipTransferred(previous_owner=admin, new_owner=buyer)]
    cld.set_burner(attacker, True, sender=buyer)
    assert cld.is_burner(attacker) is True
    with ape.reverts(NOT_OWNER):
        cld.set_burner(attacker, False, sender=admin)


def test_accept_ownership__by_minter__reverts(cld, admin, minter):
    cld.transfer_ownership(minter, sender=admin)
    with ape.reverts("token: admin cannot mint"):
        cld.accept_ownership(sender=minter)
    assert cld.owner() == admin


def test_transfer_ownership__to_zero_address__cancels_pending_handover(cld, admin, buyer):
    cld.transfer_ownership(buyer, sender=admin)
    cld.transfer_ownership(ZERO_ADDRESS, sender=admin)
    with ape.reverts("token: caller is not the new owner"):
        cld.accept_ownership(sender=buyer)
    assert cld.owner() == admin
