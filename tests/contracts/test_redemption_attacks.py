"""What an agent cannot do with a user's grant, each attempted and refused.

An agent may `redeem` for users that granted it, and nothing else: it cannot sell
for a user who did not grant it, sell a token the grant does not name, touch the
user's USDC, buy, send tokens or USDC anywhere but the Oracle's pool and this
escrow, route through pools of its own, act after expiry or revocation, exceed the
daily limit, redeem a token into another provider's credits (CLD into the user's
OpenAI account: found), keep the user's slippage allowance (a sandwich inside the
pool in one transaction gains it less than the 0.5 % tolerance: found, it kept most
of the allowance), name an account or a payee of its own, refund, release without
the provider's receipt, or re-enter the escrow."""

import ape
import pytest
from eth_account import Account

from fixtures.redemption import (
    ACCOUNT,
    ANTHROPIC,
    CLD_DAILY,
    OPENAI,
    OPENAI_ACCOUNT,
    SALE_REF,
    SLIPPAGE_BPS,
    USD20,
    cover_twap,
)
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.redemption import LOCAL_REFUND_DELAY as REFUND_DELAY
from promptex.protocol.redemption import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.redemption import provider_id, sale_hash, sale_id
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
        "register_token",
        "add_billing_signer",
        "revoke_billing_signer",
        "grant_pauser",
        "revoke_pauser",
        "pause",
        "unpause",
        "transfer_ownership",
        "accept_ownership",
    }
    # The agent names the token and the amount (and its own id for the sale, hashed with its
    # address); never a path, a pool, a provider or an account.
    assert [i.name for i in redemptions.redeem.abis[0].inputs] == [
        "user",
        "token",
        "usdc_out",
        "max_tokens_in",
        "swap_deadline",
        "sale_ref",
    ]


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
    usdc = redeemable[2]
    usdc.approve(redemptions, MAX_UINT, sender=user)  # even with an allowance
    before = usdc.balanceOf(user)
    with ape.reverts("redemption: token not granted"):
        redeem(usdc)
    assert usdc.balanceOf(user) == before


def test_agent__tokens_only_move_user_to_the_oracles_pool__usdc_only_pool_to_escrow(
    redemptions, redeemable, redeem, oracle, user, agent, operator
):
    cld, _, usdc, cld_pool, _ = redeemable
    assert oracle.pool_of(cld) == cld_pool.address
    agent_before = (cld.balanceOf(agent), usdc.balanceOf(agent), usdc.balanceOf(operator))
    tx = redeem(cld)
    moves = [(log.sender, log.receiver) for log in cld.Transfer.from_receipt(tx)]
    assert moves == [(user.address, cld_pool.address)]
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


def test_agent__sandwich_after_dumping_spot__price_tolerance_reverts_even_with_a_lax_grant(
    redemptions, redeemable, redeem, router, lp, user, agent, operator, attacker, chain
):
    cld, _, usdc = redeemable[:3]
    _, expiry, _, _ = redemptions.grant(user, agent)
    redemptions.set_grant(agent, operator, expiry, 5_000, [cld], [CLD_DAILY], sender=user)  # 50 % slippage allowed
    cld.transfer(attacker, 5_000_000 * UNIT, sender=lp)
    cld.approve(router, MAX_UINT, sender=attacker)
    # Dump 5M CLD (a fifth of the pool): spot falls ~30 % below the TWAP.
    router.swap_exact_in(
        5_000_000 * UNIT, 0, [cld, usdc], [DEFAULT_FEE], attacker, chain.pending_timestamp + 600, sender=attacker
    )
    before = cld.balanceOf(user)
    with ape.reverts("redemption: price beyond twap tolerance"):
        redeem(cld)
    assert cld.balanceOf(user) == before


@pytest.fixture
def sandwicher(project, redemptions, redeemable, lp, user, operator, attacker, chain):
    """An agent contract the user granted 10M CLD a day with a lax 50 % slippage, holding 2M CLD to dump."""
    cld = redeemable[0]
    contract = attacker.deploy(project.RedemptionSandwich)
    redemptions.set_grant(contract, operator, chain.pending_timestamp + DAY, 5_000, [cld], [10_000_000 * UNIT],
                          sender=user)  # fmt: skip
    cld.transfer(contract, 2_000_000 * UNIT, sender=lp)
    return contract


def test_agent__sandwich_inside_the_pool_in_one_transaction__gains_less_than_the_tolerance(
    redemptions, redeemable, router, oracle, sandwicher, user, attacker, chain
):
    """The reviewer's finding: with a lax grant, an agent sandwiching its own sale kept
    most of the user's slippage allowance. Now each dump that still lets the sale
    through costs the user at most 0.5 % over the honest input, and the agent gains
    less than that (it pays the pool's fee on both legs); larger dumps fail."""
    cld, _, usdc = redeemable[:3]
    usdc_out = 2_000 * 10**6  # ≈ 474,000 CLD, 2 % of the pool
    price = oracle.consult(cld, TWAP_WINDOW)
    honest = redemptions.quote(cld, usdc_out)[0]  # spot sits at the TWAP: what an honest sale takes
    tolerance = usdc_out * 50 // 10_000  # 0.5 % of the trade, in USDC units
    outcomes = []
    for dump in (10_000 * UNIT, 30_000 * UNIT, 60_000 * UNIT, 120_000 * UNIT, 1_000_000 * UNIT):
        snapshot = chain.snapshot()
        user_before, agent_before = cld.balanceOf(user), cld.balanceOf(sandwicher)
        try:
            sandwicher.sandwich(redemptions, router, user, cld, usdc, dump, usdc_out, sender=attacker)
        except ape.exceptions.ContractLogicError as error:
            assert "redemption: price beyond twap tolerance" in str(error)
            outcomes.append("refused")
        else:
            paid = user_before - cld.balanceOf(user)
            assert paid <= honest * (10_000 + 50) // 10_000 + 1  # the user's loss: within 0.5 %
            gain = (cld.balanceOf(sandwicher) - agent_before) * price // 10**36  # at the TWAP, USDC units
            assert gain < tolerance
            assert usdc.balanceOf(sandwicher) == 0
            outcomes.append("through")
        chain.restore(snapshot)
    assert outcomes[0] == "through" and outcomes[-1] == "refused"


def test_agent__its_own_pool_or_route__never_used(
    redemptions, redeemable, redeem, add_liquidity, oracle, plain, router, lp, attacker
):
    """An agent's own CLD/USDC pool (another fee tier, CLD at a quarter of its price)
    and a route through a bait token are never traded: the sale happens in the
    Oracle's pool, at the honest price."""
    cld, _, usdc, cld_pool, _ = redeemable
    bait = plain[0]
    cld.transfer(attacker, 2_000_000 * UNIT, sender=lp)
    usdc.mint(attacker, 10_000 * 10**6, sender=attacker)
    for token in (cld, usdc):
        token.approve(router, MAX_UINT, sender=attacker)
    own = add_liquidity(cld, usdc, 1_000_000 * UNIT, 1_000 * 10**6, fee=100, provider=attacker)
    add_liquidity(cld, bait, 1_000_000 * UNIT, 1_000 * UNIT, provider=attacker)
    add_liquidity(bait, usdc, 1_000 * UNIT, 1_000 * 10**6, provider=attacker)
    own_reserves = own.get_reserves()[:2]
    quoted = redemptions.quote(cld, USD20)[0]
    tx = redeem(cld)
    assert [log.receiver for log in cld.Transfer.from_receipt(tx)] == [oracle.pool_of(cld)] == [cld_pool.address]
    assert redemptions.Redeemed.from_receipt(tx)[0].tokens_in == quoted
    assert own.get_reserves()[:2] == own_reserves


def test_agent__cld_into_the_users_openai_account__impossible(redemptions, redeemable, redeem, user, agent):
    """Found: an agent granted CLD redeemed it into the user's OpenAI account. CLD is
    Anthropic's token: its credits go to the user's Anthropic account, or nowhere."""
    cld = redeemable[0]
    redemptions.link_account(OPENAI, OPENAI_ACCOUNT, sender=user)  # the user has both accounts linked
    tx = redeem(cld)
    event = redemptions.Redeemed.from_receipt(tx)[0]
    assert (bytes(event.event_arguments["provider"]), bytes(event.account_ref)) == (ANTHROPIC, ACCOUNT)
    sale = sale_id(agent.address, SALE_REF)
    assert bytes(event.sale) == sale
    assert bytes(redemptions.redemptions(event.redemption_id).sale_hash) == sale_hash(ANTHROPIC, ACCOUNT, sale)
    redemptions.link_account(ANTHROPIC, b"\0" * 32, sender=user)  # only OpenAI left
    with ape.reverts("redemption: account not linked"):
        redeem(cld)


def test_agent__account_not_linked_by_user__cannot_redeem(redemptions, redeemable, redeem, agent, user):
    cld = redeemable[0]
    redemptions.link_account(ANTHROPIC, b"\x0a" * 32, sender=agent)  # the agent's own account: not the user's
    redemptions.link_account(ANTHROPIC, b"\0" * 32, sender=user)
    with ape.reverts("redemption: account not linked"):
        redeem(cld)


def test_agent__token_without_a_registered_provider__cannot_redeem(redemptions, redeemable, redeem, plain, user, agent):
    token = plain[1]
    token.approve(redemptions, MAX_UINT, sender=user)
    _, expiry, _, _ = redemptions.grant(user, agent)
    redemptions.set_grant(agent, agent, expiry, SLIPPAGE_BPS, [token], [10**6 * UNIT], sender=user)
    with ape.reverts("redemption: token has no provider"):
        redeem(token)


def test_agent__provider_without_billing_signer__cannot_redeem(
    redemptions, redeemable, redeem, plain, admin, user, agent
):
    acme = provider_id("acme")
    token = plain[1]
    redemptions.register_token(token, acme, sender=admin)
    redemptions.link_account(acme, ACCOUNT, sender=user)
    _, expiry, _, _ = redemptions.grant(user, agent)
    redemptions.set_grant(agent, agent, expiry, SLIPPAGE_BPS, [token], [10**6 * UNIT], sender=user)
    with ape.reverts("redemption: unknown provider"):
        redeem(token)


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


def test_admin__billing_signer_added_after_a_sale__never_releases_it_the_user_refunds(
    redemptions, redeemable, redeem, receipt, admin, attacker, user, chain
):
    """rbreak4 (s14): the admin (the Timelock, whose 4-day delay is longer than
    MAX_REFUND_DELAY) adds a billing signer whose key it holds. The users see it queued,
    but their agent keeps selling meanwhile: a sale made in the delay's last 3 days could
    not be refunded before the key went live, and its receipt paid the sale's USDC to the
    payee with no credits bought (taken by whoever holds the payee's key too). A key now
    never releases a sale made before it was added; the user refunds it."""
    usdc = redeemable[2]
    redeem(redeemable[0])
    chain.pending_timestamp += 10
    rogue = Account.from_key(attacker.private_key)
    redemptions.add_billing_signer(ANTHROPIC, rogue.address, sender=admin)  # the delay over, the sale still open
    with ape.reverts("redemption: billing signer newer than the sale"):
        redemptions.release(1, *receipt(1, signer=rogue), sender=attacker)
    chain.pending_timestamp += REFUND_DELAY + 1
    before = usdc.balanceOf(user)
    redemptions.refund(1, sender=user)
    assert usdc.balanceOf(user) == before + USD20


def test_agent__re_entering_through_the_token__blocked(
    project, redemptions, redeemable, redeem, receipt, router, add_liquidity, oracle, admin, lp, user, agent, operator,
    chain,
):  # fmt: skip
    cld, _, usdc = redeemable[:3]
    redeem(cld)  # redemption 1, open
    hook = lp.deploy(project.ReentrantToken)
    redemptions.register_token(hook, ANTHROPIC, sender=admin)
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
    redemptions, redeemable, redeem, add_liquidity, plain, oracle, router, admin, lp, user, agent, operator
):
    usdc, token = redeemable[2], plain[1]
    redemptions.register_token(token, ANTHROPIC, sender=admin)
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
