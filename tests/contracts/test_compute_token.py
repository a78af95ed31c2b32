"""ComputeToken: metadata, roles fixed at deploy, ERC-20 basics, EIP-2612 permit.

Mint and burn are exercised on a stand-alone token whose fixed minter and burner are
plain accounts (`tst`); the deployment's tokens (`cld`, `gpt`) have the escrow and the
vault in those roles. What an attacker cannot do with roles is in
test_compute_token_attacks.py."""

import ape
import pytest
from ape import project

from promptex.protocol.permit import sign_permit
from promptex.protocol.units import TOKEN_UNIT, ZERO_ADDRESS


@pytest.fixture(scope="module")
def minter(accounts):
    """The stand-alone token's minter (its `escrow`)."""
    return accounts[7]


@pytest.fixture(scope="module")
def burner(accounts):
    """The stand-alone token's other burner (its `vault`)."""
    return accounts[8]


@pytest.fixture(scope="module")
def tst(admin, minter, burner, seller, buyer, attacker, vault):
    """A token whose fixed minter and burners are plain accounts."""
    return admin.deploy(project.ComputeToken, "Test Credit", "TST", "Tester", 1_000, minter, burner)


@pytest.fixture
def funded(tst, minter, seller):
    """`seller` holds 100 TST."""
    tst.mint(seller, 100 * TOKEN_UNIT, sender=minter)
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


def test_deploy__zero_face_value__reverts(admin, minter, burner):
    with ape.reverts("token: zero face value"):
        admin.deploy(project.ComputeToken, "Zero Credit", "ZERO", "Nobody", 0, minter, burner)


def test_deploy__empty_provider__reverts(admin, minter, burner):
    with ape.reverts("token: empty provider"):
        admin.deploy(project.ComputeToken, "Anon Credit", "ANON", "", 1_000, minter, burner)


@pytest.mark.parametrize("which", ["escrow", "vault"])
def test_deploy__zero_role__reverts(admin, minter, burner, which):
    escrow, vault = (ZERO_ADDRESS, burner) if which == "escrow" else (minter, ZERO_ADDRESS)
    with ape.reverts("token: zero address"):
        admin.deploy(project.ComputeToken, "Test Credit", "TST", "Tester", 1_000, escrow, vault)


def test_deploy__escrow_is_vault__reverts(admin, minter):
    with ape.reverts("token: escrow is the vault"):
        admin.deploy(project.ComputeToken, "Test Credit", "TST", "Tester", 1_000, minter, minter)


def test_deploy__valid__nobody_owns_and_the_deployer_cannot_mint(tst, admin, minter, burner):
    assert tst.owner() == ZERO_ADDRESS
    assert (tst.escrow(), tst.vault()) == (minter, burner)
    assert tst.is_minter(admin) is False
    with ape.reverts("token: caller is not a minter"):
        tst.mint(admin, 1, sender=admin)


def test_roles__deployed_token__escrow_mints_escrow_and_vault_burn(cld, escrow, vault, admin):
    assert (cld.escrow(), cld.vault()) == (escrow, vault)
    assert cld.is_minter(escrow) is True
    assert cld.is_minter(vault) is False
    assert cld.is_burner(escrow) is True
    assert cld.is_burner(vault) is True
    assert cld.is_minter(admin) is False
    assert cld.is_burner(admin) is False
    assert cld.owner() == ZERO_ADDRESS


# ─── Mint ────────────────────────────────────────────────────────────────────


def test_mint__by_minter__credits_owner_and_emits_transfer(tst, minter, buyer):
    tx = tst.mint(buyer, 5 * TOKEN_UNIT, sender=minter)
    assert tst.balanceOf(buyer) == 5 * TOKEN_UNIT
    assert tst.totalSupply() == 5 * TOKEN_UNIT
    assert tx.events == [tst.Transfer(sender=ZERO_ADDRESS, receiver=buyer, value=5 * TOKEN_UNIT)]


def test_mint__by_non_minter__reverts(tst, attacker):
    with ape.reverts("token: caller is not a minter"):
        tst.mint(attacker, TOKEN_UNIT, sender=attacker)


def test_mint__by_admin__reverts(tst, admin):
    with ape.reverts("token: caller is not a minter"):
        tst.mint(admin, TOKEN_UNIT, sender=admin)


def test_mint__zero_amount__reverts(tst, minter, buyer):
    with ape.reverts("token: zero amount"):
        tst.mint(buyer, 0, sender=minter)


def test_mint__to_zero_address__reverts(tst, minter):
    with ape.reverts("erc20: mint to the zero address"):
        tst.mint(ZERO_ADDRESS, TOKEN_UNIT, sender=minter)


def test_mint__by_a_burner__reverts(tst, burner, buyer):
    with ape.reverts("token: caller is not a minter"):
        tst.mint(buyer, TOKEN_UNIT, sender=burner)


# ─── Burn ────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("who", ["minter", "burner"])
def test_burn__by_either_burner__destroys_own_tokens_and_emits_transfer(tst, minter, who, request):
    burner = request.getfixturevalue(who)
    tst.mint(burner, 10 * TOKEN_UNIT, sender=minter)
    tx = tst.burn(4 * TOKEN_UNIT, sender=burner)
    assert tst.balanceOf(burner) == 6 * TOKEN_UNIT
    assert tst.totalSupply() == 6 * TOKEN_UNIT
    assert tx.events == [tst.Transfer(sender=burner, receiver=ZERO_ADDRESS, value=4 * TOKEN_UNIT)]


def test_burn__by_non_burner_holder__reverts(tst, funded):
    with ape.reverts("token: caller is not a burner"):
        tst.burn(TOKEN_UNIT, sender=funded)
    assert tst.balanceOf(funded) == 100 * TOKEN_UNIT


def test_burn__zero_amount__reverts(tst, burner):
    with ape.reverts("token: zero amount"):
        tst.burn(0, sender=burner)


def test_burn__more_than_balance__reverts(tst, minter, burner):
    tst.mint(burner, TOKEN_UNIT, sender=minter)
    with ape.reverts("erc20: burn amount exceeds balance"):
        tst.burn(TOKEN_UNIT + 1, sender=burner)


# ─── ERC-20 ──────────────────────────────────────────────────────────────────


def test_transfer__within_balance__moves_tokens_and_emits_transfer(tst, funded, buyer):
    tx = tst.transfer(buyer, 30 * TOKEN_UNIT, sender=funded)
    assert tst.balanceOf(funded) == 70 * TOKEN_UNIT
    assert tst.balanceOf(buyer) == 30 * TOKEN_UNIT
    assert tst.totalSupply() == 100 * TOKEN_UNIT
    assert tx.events == [tst.Transfer(sender=funded, receiver=buyer, value=30 * TOKEN_UNIT)]


def test_transfer__above_balance__reverts(tst, funded, buyer):
    with ape.reverts("erc20: transfer amount exceeds balance"):
        tst.transfer(buyer, 100 * TOKEN_UNIT + 1, sender=funded)


def test_transfer__to_zero_address__reverts(tst, funded):
    with ape.reverts("erc20: transfer to the zero address"):
        tst.transfer(ZERO_ADDRESS, TOKEN_UNIT, sender=funded)


def test_approve__any_amount__sets_allowance_and_emits_approval(tst, funded, buyer):
    tx = tst.approve(buyer, 7 * TOKEN_UNIT, sender=funded)
    assert tst.allowance(funded, buyer) == 7 * TOKEN_UNIT
    assert tx.events == [tst.Approval(owner=funded, spender=buyer, value=7 * TOKEN_UNIT)]


def test_transfer_from__within_allowance__moves_tokens_and_spends_allowance(tst, funded, buyer, attacker):
    tst.approve(buyer, 10 * TOKEN_UNIT, sender=funded)
    tst.transferFrom(funded, attacker, 4 * TOKEN_UNIT, sender=buyer)
    assert tst.balanceOf(attacker) == 4 * TOKEN_UNIT
    assert tst.balanceOf(funded) == 96 * TOKEN_UNIT
    assert tst.allowance(funded, buyer) == 6 * TOKEN_UNIT


def test_transfer_from__above_allowance__reverts(tst, funded, buyer):
    tst.approve(buyer, TOKEN_UNIT, sender=funded)
    with ape.reverts("erc20: insufficient allowance"):
        tst.transferFrom(funded, buyer, TOKEN_UNIT + 1, sender=buyer)


def test_transfer_from__above_balance__reverts(tst, funded, buyer):
    tst.approve(buyer, 1_000 * TOKEN_UNIT, sender=funded)
    with ape.reverts("erc20: transfer amount exceeds balance"):
        tst.transferFrom(funded, buyer, 100 * TOKEN_UNIT + 1, sender=buyer)


# ─── EIP-2612 permit ─────────────────────────────────────────────────────────


def test_permit__valid_signature__sets_allowance_and_bumps_nonce(tst, chain, seller, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(tst, chain, seller, seller, buyer, 42 * TOKEN_UNIT, deadline, nonce=0)
    tx = tst.permit(seller, buyer, 42 * TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    assert tst.allowance(seller, buyer) == 42 * TOKEN_UNIT
    assert tst.nonces(seller) == 1
    assert tx.events == [tst.Approval(owner=seller, spender=buyer, value=42 * TOKEN_UNIT)]


def test_permit__valid_signature__lets_spender_transfer(tst, chain, funded, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(tst, chain, funded, funded, buyer, 10 * TOKEN_UNIT, deadline, nonce=0)
    tst.permit(funded, buyer, 10 * TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    tst.transferFrom(funded, buyer, 10 * TOKEN_UNIT, sender=buyer)
    assert tst.balanceOf(buyer) == 10 * TOKEN_UNIT


def test_permit__wrong_signer__reverts(tst, chain, seller, attacker):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(tst, chain, attacker, seller, attacker, TOKEN_UNIT, deadline, nonce=0)
    with ape.reverts("erc20: invalid signature"):
        tst.permit(seller, attacker, TOKEN_UNIT, deadline, v, r, s, sender=attacker)
    assert tst.allowance(seller, attacker) == 0
    assert tst.nonces(seller) == 0


def test_permit__amount_differs_from_signed__reverts(tst, chain, seller, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(tst, chain, seller, seller, buyer, TOKEN_UNIT, deadline, nonce=0)
    with ape.reverts("erc20: invalid signature"):
        tst.permit(seller, buyer, 2 * TOKEN_UNIT, deadline, v, r, s, sender=buyer)


def test_permit__signed_for_other_token__reverts(cld, gpt, chain, seller, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(gpt, chain, seller, seller, buyer, TOKEN_UNIT, deadline, nonce=0)
    with ape.reverts("erc20: invalid signature"):
        cld.permit(seller, buyer, TOKEN_UNIT, deadline, v, r, s, sender=buyer)


def test_permit__expired_deadline__reverts(tst, chain, seller, buyer):
    deadline = chain.pending_timestamp - 1
    v, r, s = _sign_permit(tst, chain, seller, seller, buyer, TOKEN_UNIT, deadline, nonce=0)
    with ape.reverts("erc20: expired deadline"):
        tst.permit(seller, buyer, TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    assert tst.allowance(seller, buyer) == 0


def test_permit__replayed_signature__reverts(tst, chain, seller, buyer):
    deadline = chain.pending_timestamp + 3_600
    v, r, s = _sign_permit(tst, chain, seller, seller, buyer, TOKEN_UNIT, deadline, nonce=0)
    tst.permit(seller, buyer, TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    tst.approve(buyer, 0, sender=seller)
    with ape.reverts("erc20: invalid signature"):
        tst.permit(seller, buyer, TOKEN_UNIT, deadline, v, r, s, sender=buyer)
    assert tst.allowance(seller, buyer) == 0
    assert tst.nonces(seller) == 1
