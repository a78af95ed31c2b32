"""What an agent cannot do with a user's grant, each attempted and refused.

An agent may `redeem` for users that granted it, and nothing else: it cannot sell
for a user who did not grant it, sell a token the grant does not name, touch the
user's USDC, buy, send tokens or USDC anywhere but the swap and this escrow, act
after expiry or revocation, exceed the daily limit or the slippage (even through
a pool it manipulated or a sandwich), name an account or a payee of its own,
refund, release without the provider's receipt, or re-enter the escrow."""

import ape
from eth_account import Account
from redemption_fixtures import *  # noqa: F403  (the DEX and redemption fixtures)
from redemption_fixtures import ACCOUNT, CLD_DAILY, OPENAI, SLIPPAGE_BPS, USD20, cover_twap

from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.redemption import LOCAL_REFUND_DELAY as REFUND_DELAY
from promptex.protocol.redemption import provider_id
from promptex.protocol.units import DAY
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT


def test_surface__state_changing_functions__only_these(redemptions):
    # A new state-changing entry point is a new power: review it, then add it here.
    assert {method.name for method in redemptions.contract_type.mutable_methods} == {
        "set_grant",
        "revoke_grant",
        "link_account",
        "redeem",
        "release",
        "refund",
        "set_billing_signer",
        "pause",
        "unpause",
        "transfer_ownership",
        "accept_ownership",
    }


def test_agent__no_grant__cannot_redeem(redeemable, redeem, attacker):
    with ape.reverts("redemption: no grant"):
        redeem(redeemable[0], sender=attacker)


def test_agent__user_who_did_not_grant__cannot_redeem(redeemable, redeem, lp, redemptions, usdc):
    cld = redeemable[0]
    cld.approve(redemptions, MAX_UINT, sender=lp)  # approved the escrow, granted nobody
    with ape.reverts("redemption: no grant"):
        redeem(cld, for_user=lp)


def test_agent__token_not_in_grant__cannot_sell_it(redemptions, redeemable, redeem, user):
    gpt = redeemable[1]
    gpt.approve(redemptions, MAX_UINT, sender=user)
    gpt_before = gpt.balanceOf(user)
    with ape.reverts("redemption: token not granted"):
        redeem(gpt)
    assert gpt.balanceOf(user) == gpt_before


def test_agent__users_usdc__cannot_touch_it(redemptions, redeemable, redeem, user):
    cld, _, usdc = redeemable[:3]
    usdc.approve(redemptions, MAX_UINT, sender=user)  # even with an allowance
    before = usdc.balanceOf(user)
    for path in ([usdc, usdc], [usdc, cld, usdc]):
        with ape.reverts("redemption: token not granted"):
            redeem(usdc, path=path)
    assert usdc.balanceOf(user) == before


def test_agent__buying__path_must_end_in_usdc(redeemable, redeem):
    cld, gpt, usdc = redeemable[:3]
    for path in ([cld, gpt], [usdc, cld], [cld, usdc, gpt]):
        with ape.reverts("redemption: path must end in usdc"):
            redeem(cld, path=path)
    with ape.reverts("redemption: path too short"):
        redeem(cld, path=[usdc])


def test_agent__tokens_only_move_user_to_escrow_to_pool__usdc_only_pool_to_escrow(
    redemptions, redeemable, redeem, user, agent, operator
):
    cld, _, usdc, cld_pool, _ = redeemable
    agent_before = (cld.balanceOf(agent), usdc.balanceOf(agent), usdc.balanceOf(operator))
    tx = redeem(cld)
    moves = [(log.sender, log.receiver) for log in cld.Transfer.from_receipt(tx)]
    assert moves == [(user.address, redemptions.address), (redemptions.address, cld_pool.address)]
    assert [(log.sender, log.receiver) for log in usdc.Transfer.from_receipt(tx)] == [
        (cld_pool.address, redemptions.address)
    ]
    assert (cld.balanceOf(agent), usdc.balanceOf(agent), usdc.balanceOf(operator)) == agent_before


def test_agent__after_revocation__cannot_redeem(redemptions, redeemable, redeem, user, agent):
    redeem(redeemable[0])
    redemptions.revoke_grant(agent, sender=user)
    with ape.reverts("redemption: no grant"):
        redeem(redeemable[0])


def test_agent__after_expiry__cannot_redeem(redemptions, redeemable, redeem, user, agent, chain):
    _, expiry, _, _ = redemptions.grant(user, agent)
    chain.pending_timestamp = expiry
    redeem(redeemable[0])  # the expiry second itself is still inside the grant
    chain.pending_timestamp = expiry + 1
    with ape.reverts("redemption: grant expired"):
        redeem(redeemable[0])


def test_agent__one_redemption_beyond_the_daily_limit__reverts(redeemable, redeem):
    # 20,000 CLD ≈ $84: $90 needs more than the day's limit.
    with ape.reverts("redemption: daily limit exceeded"):
        redeem(redeemable[0], usdc_out=90 * 10**6)


def test_agent__sandwich_after_dumping_spot__slippage_reverts(redeemable, redeem, router, lp, attacker, chain):
    cld, _, usdc = redeemable[:3]
    cld.transfer(attacker, 5_000_000 * UNIT, sender=lp)
    cld.approve(router, MAX_UINT, sender=attacker)
    # Dump 5M CLD (a fifth of the pool): spot falls ~30 % below the TWAP.
    router.swap_exact_in(
        5_000_000 * UNIT, 0, [cld, usdc], [DEFAULT_FEE], attacker, chain.pending_timestamp + 600, sender=attacker
    )
    with ape.reverts("redemption: slippage beyond grant"):
        redeem(cld)


def test_agent__path_through_pools_it_controls__slippage_reverts(
    redeemable, redeem, add_liquidity, plain, router, lp, attacker
):
    cld, _, usdc = redeemable[:3]
    bait = plain[0]
    cld.transfer(attacker, 1_000_000 * UNIT, sender=lp)
    usdc.mint(attacker, 10_000 * 10**6, sender=attacker)
    for token in (cld, usdc):
        token.approve(router, MAX_UINT, sender=attacker)
    # CLD worth $0.001 through the bait token, a quarter of its $0.004218 TWAP.
    add_liquidity(cld, bait, 1_000_000 * UNIT, 1_000 * UNIT, provider=attacker)
    add_liquidity(bait, usdc, 1_000 * UNIT, 1_000 * 10**6, provider=attacker)
    with ape.reverts("redemption: slippage beyond grant"):
        redeem(cld, path=[cld, bait, usdc])


def test_agent__account_or_provider_not_linked_by_user__cannot_redeem(redemptions, redeemable, redeem, agent, admin):
    cld = redeemable[0]
    redemptions.link_account(OPENAI, b"\x0a" * 32, sender=agent)  # the agent's own account: not the user's
    with ape.reverts("redemption: account not linked"):
        redeem(cld, provider=OPENAI)
    acme = provider_id("acme")
    with ape.reverts("redemption: account not linked"):
        redeem(cld, provider=acme)


def test_agent__provider_without_billing_signer__cannot_redeem(redemptions, redeemable, redeem, user):
    acme = provider_id("acme")
    redemptions.link_account(acme, ACCOUNT, sender=user)
    with ape.reverts("redemption: unknown provider"):
        redeem(redeemable[0], provider=acme)


def test_agent__granting_itself__does_not_widen_the_users_grant(
    redemptions, redeemable, redeem, user, agent, operator, chain
):
    cld, gpt = redeemable[:2]
    before = redemptions.grant(user, agent)
    redemptions.set_grant(agent, agent, chain.pending_timestamp + 99 * DAY, 5_000, [cld, gpt], [MAX_UINT >> 40] * 2,
                          sender=agent)  # fmt: skip
    assert redemptions.grant(user, agent) == before
    assert redemptions.daily_limit(user, agent, cld) == CLD_DAILY
    record = redemptions.redemptions(redemptions.Redeemed.from_receipt(redeem(cld))[0].redemption_id)
    assert record.payee == operator.address  # the user's payee, not the agent


def test_agent__refund_or_self_signed_release__refused_usdc_only_to_payee(
    redemptions, redeemable, redeem, receipt, agent, operator, chain
):
    usdc = redeemable[2]
    redeem(redeemable[0])
    chain.pending_timestamp += REFUND_DELAY + 1
    with ape.reverts("redemption: caller is not the user"):
        redemptions.refund(1, sender=agent)
    own_key = Account.from_key(agent.private_key)
    with ape.reverts("redemption: receipt not signed by billing signer"):
        redemptions.release(1, *receipt(1, signer=own_key), sender=agent)
    agent_before, operator_before = usdc.balanceOf(agent), usdc.balanceOf(operator)
    redemptions.release(1, *receipt(1), sender=agent)
    assert (usdc.balanceOf(agent), usdc.balanceOf(operator)) == (agent_before, operator_before + USD20)


def test_agent__re_entering_through_the_token__blocked(
    project, redemptions, redeemable, redeem, receipt, router, add_liquidity, oracle, lp, user, agent, operator, chain
):
    cld, _, usdc = redeemable[:3]
    redeem(cld)  # redemption 1, open
    hook = lp.deploy(project.ReentrantToken)
    for account in (lp, user):
        hook.mint(account, 10**9 * UNIT, sender=account)
    hook.approve(router, MAX_UINT, sender=lp)
    usdc.approve(router, MAX_UINT, sender=lp)
    add_liquidity(hook, usdc, 1_000_000 * UNIT, 100_000 * 10**6)
    cover_twap(oracle, chain, (hook,), lp)
    hook.approve(redemptions, MAX_UINT, sender=user)
    _, expiry, _, _ = redemptions.grant(user, agent)
    redemptions.set_grant(agent, operator, expiry, SLIPPAGE_BPS, [cld, hook], [CLD_DAILY, CLD_DAILY], sender=user)

    # While redemption 2 pulls the hook token, it tries to release redemption 1
    # (permissionless, and valid on its own): the escrow's lock refuses it.
    hook.arm(redemptions, redemptions.release.encode_input(1, *receipt(1)), sender=user)
    redeem(hook)
    assert (hook.hook_calls(), hook.hook_succeeded()) == (1, False)
    assert redemptions.redemptions(1).status == 1
    assert usdc.balanceOf(redemptions) == redemptions.total_held() == 2 * USD20
    redemptions.release(1, *receipt(1), sender=operator)  # and afterwards it works


def test_agent__token_without_oracle_twap__fails_closed(
    redemptions, redeemable, redeem, add_liquidity, plain, oracle, router, lp, user, agent, operator
):
    usdc, token = redeemable[2], plain[1]
    usdc.approve(router, MAX_UINT, sender=lp)
    add_liquidity(token, usdc, 100_000 * UNIT, 100_000 * 10**6)  # a market, but no TWAP yet
    token.approve(redemptions, MAX_UINT, sender=user)
    _, expiry, _, _ = redemptions.grant(user, agent)
    redemptions.set_grant(agent, operator, expiry, SLIPPAGE_BPS, [token], [10**6 * UNIT], sender=user)
    with ape.reverts("oracle: token not tracked"):
        redeem(token)
    oracle.update(token, sender=user)
    with ape.reverts("oracle: window not covered"):
        redeem(token)
