"""RedemptionEscrow through ape, over the real DEX (pools, Router, Oracle): grants and
linked accounts, tokens' providers, billing signers and pausers, a redemption end to
end (redeem → release with a billing receipt, or refund after the deadline), every
event, and the failures a user, an operator or a billing API can run into. The attacks
an agent can try are in test_redemption_attacks.py."""

import ape
import pytest

from fixtures.redemption import (
    ACCOUNT,
    ANTHROPIC,
    BILLING,
    BILLING_REF,
    CLD_DAILY,
    OPENAI,
    OPENAI_ACCOUNT,
    SALE_REF,
    SLIPPAGE_BPS,
    USD20,
)
from promptex.protocol import redemption as helpers
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.redemption import LOCAL_REFUND_DELAY as REFUND_DELAY
from promptex.protocol.redemption import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.timelock import MIN_DELAY as TIMELOCK_MIN_DELAY
from promptex.protocol.units import DAY
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import ZERO_ADDRESS as ZERO


def record(redemptions, redemption_id):
    r = redemptions.redemptions(redemption_id)
    return r.user, r.payee, bytes(r.sale_hash), r.usdc, r.deadline, r.status


# ─── Deployment ──────────────────────────────────────────────────────────────


def test_deploy__parameters_and_constants__recorded_and_mirrored(redemptions, usdc, oracle, admin, cld, gpt):
    assert (redemptions.usdc(), redemptions.oracle()) == (usdc.address, oracle.address)
    assert (bytes(redemptions.token_provider(cld)), bytes(redemptions.token_provider(gpt))) == (ANTHROPIC, OPENAI)
    assert redemptions.is_pauser(admin) and redemptions.billing_signer_count(ANTHROPIC) == 1
    assert (redemptions.twap_window(), redemptions.refund_delay(), redemptions.owner()) == (
        TWAP_WINDOW,
        REFUND_DELAY,
        admin.address,
    )
    assert bytes(redemptions.RECEIPT_TYPEHASH()) == helpers.RECEIPT_TYPEHASH
    assert (redemptions.BPS(), redemptions.MAX_SLIPPAGE_BPS(), redemptions.DAY()) == (
        helpers.BPS,
        helpers.MAX_SLIPPAGE_BPS,
        helpers.DAY,
    )
    assert (redemptions.MAX_GRANT_TOKENS(), redemptions.IMPACT_TOLERANCE_BPS()) == (
        helpers.MAX_GRANT_TOKENS,
        helpers.IMPACT_TOLERANCE_BPS,
    )
    assert (redemptions.MIN_REFUND_DELAY(), redemptions.MAX_REFUND_DELAY()) == (
        helpers.MIN_REFUND_DELAY,
        helpers.MAX_REFUND_DELAY,
    )
    assert helpers.MAX_REFUND_DELAY == 3 * DAY < TIMELOCK_MIN_DELAY  # a user sees every change coming
    statuses = (redemptions.STATUS_NONE(), redemptions.STATUS_OPEN(), redemptions.STATUS_RELEASED())
    assert (*statuses, redemptions.STATUS_REFUNDED()) == (
        helpers.STATUS_NONE,
        helpers.STATUS_OPEN,
        helpers.STATUS_RELEASED,
        helpers.STATUS_REFUNDED,
    )
    _, name, version, chain_id, verifying, _, _ = redemptions.eip712Domain()
    assert (name, version, verifying) == (helpers.DOMAIN_NAME, helpers.DOMAIN_VERSION, redemptions.address)
    assert bytes(redemptions.DOMAIN_SEPARATOR()) == helpers.domain_separator(chain_id, redemptions.address)


@pytest.mark.parametrize(
    "twap_window, refund_delay, reason",
    [
        (59, REFUND_DELAY, "redemption: twap window below oracle period"),
        (2**31 + 1, REFUND_DELAY, "redemption: twap window too long"),
        (TWAP_WINDOW, 3_599, "redemption: refund delay out of range"),
        (TWAP_WINDOW, 3 * DAY + 1, "redemption: refund delay out of range"),
    ],
)
def test_deploy__bad_parameters__reverts(project, admin, usdc, oracle, twap_window, refund_delay, reason):
    with ape.reverts(reason):
        admin.deploy(project.RedemptionEscrow, usdc, oracle, twap_window, refund_delay)


def test_deploy__oracle_of_another_quote_asset__reverts(project, admin, plain, oracle):
    with ape.reverts("redemption: oracle does not quote usdc"):
        admin.deploy(project.RedemptionEscrow, plain[0], oracle, TWAP_WINDOW, REFUND_DELAY)


# ─── Grants and linked accounts ──────────────────────────────────────────────


def test_set_grant__tokens_and_limits__stored_and_logged(redemptions, markets, user, agent, operator, chain):
    cld, gpt = markets[0], markets[1]
    expiry = chain.pending_timestamp + DAY
    tx = redemptions.set_grant(agent, operator, expiry, 250, [cld, gpt], [5_000 * UNIT, 50 * UNIT], sender=user)
    assert redemptions.grant(user, agent) == (operator.address, expiry, 250, 1)
    assert redemptions.daily_limit(user, agent, cld) == 5_000 * UNIT
    assert redemptions.daily_limit(user, agent, gpt) == 50 * UNIT
    event = redemptions.GrantSet.from_receipt(tx)[0]
    assert (event.user, event.agent, event.payee, event.expiry, event.max_slippage_bps, event.version) == (
        user.address,
        agent.address,
        operator.address,
        expiry,
        250,
        1,
    )
    assert list(event.tokens) == [cld.address, gpt.address]
    assert list(event.daily_limits) == [5_000 * UNIT, 50 * UNIT]


def test_set_grant__again__replaces_the_whole_scope(redemptions, markets, user, agent, operator, chain):
    cld, gpt = markets[0], markets[1]
    expiry = chain.pending_timestamp + DAY
    redemptions.set_grant(agent, operator, expiry, 250, [cld, gpt], [5_000 * UNIT, 50 * UNIT], sender=user)
    redemptions.set_grant(agent, user, expiry + 1, 100, [gpt], [7 * UNIT], sender=user)
    assert redemptions.grant(user, agent) == (user.address, expiry + 1, 100, 2)
    assert redemptions.daily_limit(user, agent, cld) == 0  # left out of the new grant
    assert redemptions.daily_limit(user, agent, gpt) == 7 * UNIT


def test_revoke_grant__live_grant__cleared_at_once_and_logged(redemptions, markets, user, agent, operator, chain):
    cld = markets[0]
    redemptions.set_grant(agent, operator, chain.pending_timestamp + DAY, 250, [cld], [UNIT], sender=user)
    tx = redemptions.revoke_grant(agent, sender=user)
    assert redemptions.grant(user, agent) == (ZERO, 0, 0, 1)
    assert redemptions.daily_limit(user, agent, cld) == 0
    event = redemptions.GrantRevoked.from_receipt(tx)[0]
    assert (event.user, event.agent, event.version) == (user.address, agent.address, 1)
    with ape.reverts("redemption: no grant"):
        redemptions.revoke_grant(agent, sender=user)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("zero agent", "redemption: zero address"),
        ("zero payee", "redemption: zero address"),
        ("expired", "redemption: expiry in the past"),
        ("expiry too far", "redemption: expiry too far"),
        ("slippage", "redemption: slippage above maximum"),
        ("no tokens", "redemption: no tokens"),
        ("limits mismatch", "redemption: one limit per token"),
        ("usdc", "redemption: token cannot be granted"),
        ("zero token", "redemption: token cannot be granted"),
        ("zero limit", "redemption: daily limit out of range"),
        ("huge limit", "redemption: daily limit out of range"),
        ("repeated", "redemption: token repeated"),
    ],
)
def test_set_grant__bad_input__reverts(redemptions, markets, user, agent, operator, chain, case, reason):
    cld, usdc = markets[0], markets[2]
    args = {
        "agent": agent.address,
        "payee": operator.address,
        "expiry": chain.pending_timestamp + DAY,
        "slippage": SLIPPAGE_BPS,
        "tokens": [cld.address],
        "limits": [UNIT],
    }
    args.update(
        {
            "zero agent": {"agent": ZERO},
            "zero payee": {"payee": ZERO},
            "expired": {"expiry": chain.pending_timestamp - 1},
            "expiry too far": {"expiry": 2**40},
            "slippage": {"slippage": 5_001},
            "no tokens": {"tokens": [], "limits": []},
            "limits mismatch": {"limits": [UNIT, UNIT]},
            "usdc": {"tokens": [usdc.address]},
            "zero token": {"tokens": [ZERO]},
            "zero limit": {"limits": [0]},
            "huge limit": {"limits": [2**216]},
            "repeated": {"tokens": [cld.address, cld.address], "limits": [UNIT, UNIT]},
        }[case]
    )
    with ape.reverts(reason):
        redemptions.set_grant(*args.values(), sender=user)


def test_link_account__set_and_unset__stored_and_logged(redemptions, user):
    tx = redemptions.link_account(ANTHROPIC, ACCOUNT, sender=user)
    assert bytes(redemptions.linked_account(user, ANTHROPIC)) == ACCOUNT
    event = redemptions.AccountLinked.from_receipt(tx)[0]
    assert (event.user, bytes(event.event_arguments["provider"]), bytes(event.account_ref)) == (
        user.address,
        ANTHROPIC,
        ACCOUNT,
    )
    redemptions.link_account(ANTHROPIC, b"\0" * 32, sender=user)
    assert bytes(redemptions.linked_account(user, ANTHROPIC)) == b"\0" * 32
    with ape.reverts("redemption: zero provider"):
        redemptions.link_account(b"\0" * 32, ACCOUNT, sender=user)


# ─── Tokens, billing signers, pausers (admin) ────────────────────────────────


def test_register_token__once_for_good__logged(redemptions, plain, admin, cld):
    tx = redemptions.register_token(plain[0], ANTHROPIC, sender=admin)
    assert bytes(redemptions.token_provider(plain[0])) == ANTHROPIC
    event = redemptions.TokenRegistered.from_receipt(tx)[0]
    assert (event.token, bytes(event.event_arguments["provider"])) == (plain[0].address, ANTHROPIC)
    for token, provider, reason in [
        (cld, OPENAI, "redemption: token registered"),  # CLD stays Anthropic's
        (plain[0], OPENAI, "redemption: token registered"),
        (plain[1], b"\0" * 32, "redemption: zero provider"),
        (ZERO, ANTHROPIC, "redemption: bad token"),
    ]:
        with ape.reverts(reason):
            redemptions.register_token(token, provider, sender=admin)
    assert bytes(redemptions.token_provider(cld)) == ANTHROPIC


def test_add_and_revoke_billing_signer__admin__counted_and_logged(redemptions, admin, attacker):
    tx = redemptions.add_billing_signer(ANTHROPIC, attacker, sender=admin)
    assert redemptions.is_billing_signer(ANTHROPIC, attacker) and redemptions.billing_signer_count(ANTHROPIC) == 2
    event = redemptions.BillingSignerAdded.from_receipt(tx)[0]
    assert (bytes(event.event_arguments["provider"]), event.signer) == (ANTHROPIC, attacker.address)
    with ape.reverts("redemption: signer already added"):
        redemptions.add_billing_signer(ANTHROPIC, attacker, sender=admin)
    with ape.reverts("redemption: zero address"):
        redemptions.add_billing_signer(ANTHROPIC, ZERO, sender=admin)
    tx = redemptions.revoke_billing_signer(ANTHROPIC, attacker, sender=admin)
    assert not redemptions.is_billing_signer(ANTHROPIC, attacker) and redemptions.billing_signer_count(ANTHROPIC) == 1
    assert redemptions.BillingSignerRevoked.from_receipt(tx)[0].signer == attacker.address
    with ape.reverts("redemption: not a billing signer"):
        redemptions.revoke_billing_signer(ANTHROPIC, attacker, sender=admin)


def test_admin_functions__not_admin__revert(redemptions, plain, attacker):
    signer = BILLING[ANTHROPIC].address
    for call in (
        lambda: redemptions.register_token(plain[0], ANTHROPIC, sender=attacker),
        lambda: redemptions.add_billing_signer(ANTHROPIC, attacker, sender=attacker),
        lambda: redemptions.revoke_billing_signer(ANTHROPIC, signer, sender=attacker),
        lambda: redemptions.grant_pauser(attacker, sender=attacker),
        lambda: redemptions.revoke_pauser(attacker, sender=attacker),
    ):
        with ape.reverts("ownable: caller is not the owner"):
            call()


def test_pauser__granted_pauses_and_unpauses_revoked_cannot(redemptions, admin, pauser, attacker):
    with ape.reverts("redemption: caller is not a pauser"):
        redemptions.pause(sender=pauser)
    assert redemptions.PauserGranted.from_receipt(redemptions.grant_pauser(pauser, sender=admin))[0].account == pauser
    redemptions.pause(sender=pauser)
    with ape.reverts("redemption: caller is not a pauser"):
        redemptions.unpause(sender=attacker)
    redemptions.unpause(sender=pauser)
    redemptions.revoke_pauser(pauser, sender=admin)
    with ape.reverts("redemption: caller is not a pauser"):
        redemptions.pause(sender=pauser)
    with ape.reverts("redemption: not a pauser"):
        redemptions.revoke_pauser(pauser, sender=admin)


# ─── Redeem ──────────────────────────────────────────────────────────────────


def test_redeem__granted_agent__sells_exactly_the_input_in_the_oracles_pool_and_holds_usdc(
    redemptions, redeemable, redeem, router, oracle, user, agent, operator, chain
):
    cld, _, usdc, cld_pool, _ = redeemable
    quoted, limit = redemptions.quote(cld, USD20)
    assert quoted == router.get_amounts_in(USD20, [cld, usdc], [DEFAULT_FEE])[0] <= limit
    assert oracle.pool_of(cld) == cld_pool.address
    user_cld, pool_cld, pool_usdc = cld.balanceOf(user), cld.balanceOf(cld_pool), usdc.balanceOf(cld_pool)

    tx = redeem(cld)

    assert cld.balanceOf(user) == user_cld - quoted  # exactly the pool's input, nothing more
    assert (cld.balanceOf(cld_pool), usdc.balanceOf(cld_pool)) == (pool_cld + quoted, pool_usdc - USD20)
    assert cld.balanceOf(redemptions) == 0
    assert usdc.balanceOf(redemptions) == redemptions.total_held() == USD20
    assert redemptions.redemption_count() == 1
    deadline = tx.timestamp + REFUND_DELAY
    sale = helpers.sale_id(agent.address, SALE_REF)
    sale_hash = helpers.sale_hash(ANTHROPIC, ACCOUNT, sale)
    assert record(redemptions, 1) == (user.address, operator.address, sale_hash, USD20, deadline, 1)
    assert redemptions.spent_today(user, agent, cld) == quoted
    event = redemptions.Redeemed.from_receipt(tx)[0]
    assert (event.redemption_id, event.user, event.agent, event.token, event.tokens_in, event.usdc) == (
        1,
        user.address,
        agent.address,
        cld.address,
        quoted,
        USD20,
    )
    assert bytes(event.sale) == sale
    assert (event.payee, bytes(event.event_arguments["provider"]), bytes(event.account_ref), event.deadline) == (
        operator.address,
        ANTHROPIC,
        ACCOUNT,
        deadline,
    )


def test_redeem__within_slippage__input_below_the_twap_bound(redemptions, redeemable, redeem, oracle):
    cld = redeemable[0]
    price = oracle.consult(cld, TWAP_WINDOW)
    bound = helpers.slippage_limit(USD20, price, SLIPPAGE_BPS)
    assert redemptions.slippage_limit(cld, USD20, SLIPPAGE_BPS) == bound
    tokens_in = redemptions.Redeemed.from_receipt(redeem(cld))[0].tokens_in
    # The effective price is within 1 % of the TWAP: the 0.30 % fee and a little impact.
    assert tokens_in <= bound
    assert tokens_in * price * (10_000 - 40) < USD20 * 10**36 * 10_000


def test_redeem__daily_limit__counts_sold_tokens_and_resets_next_utc_day(
    redemptions, redeemable, redeem, user, agent, chain
):
    cld = redeemable[0]
    usd = 40 * 10**6  # ~9,520 CLD: two fit in the 20,000 CLD limit, a third does not
    first = redemptions.Redeemed.from_receipt(redeem(cld, usdc_out=usd))[0].tokens_in
    second = redemptions.Redeemed.from_receipt(redeem(cld, usdc_out=usd))[0].tokens_in
    assert redemptions.spent_today(user, agent, cld) == first + second
    with ape.reverts("redemption: daily limit exceeded"):
        redeem(cld, usdc_out=usd)
    # Re-granting the same day does not reset what was sold.
    grant = redemptions.grant(user, agent)
    redemptions.set_grant(agent, grant[0], grant[1], SLIPPAGE_BPS, [cld], [CLD_DAILY], sender=user)
    with ape.reverts("redemption: daily limit exceeded"):
        redeem(cld, usdc_out=usd)
    # The window is the UTC calendar day.
    chain.pending_timestamp = (chain.pending_timestamp // DAY + 1) * DAY
    redeem(cld, usdc_out=usd)
    assert 0 < redemptions.spent_today(user, agent, cld) < CLD_DAILY - first


def test_redeem__input_above_agent_maximum__reverts(redemptions, redeemable, redeem):
    cld = redeemable[0]
    quoted = redemptions.quote(cld, USD20)[0]
    with ape.reverts("redemption: input above maximum"):
        redeem(cld, max_in=quoted - 1)
    redeem(cld, max_in=quoted)


def test_redeem__slippage_beyond_grant__reverts(redemptions, redeemable, redeem, user, agent, operator):
    cld = redeemable[0]
    grant = redemptions.grant(user, agent)
    redemptions.set_grant(agent, operator, grant[1], 20, [cld], [CLD_DAILY], sender=user)  # 0.2 % < the fee
    with ape.reverts("redemption: slippage beyond grant"):
        redeem(cld)


@pytest.mark.parametrize("usdc_out", [0, 2**96])
def test_redeem__usdc_amount_out_of_range__reverts(redeemable, redeem, usdc_out):
    with ape.reverts("redemption: usdc amount out of range"):
        redeem(redeemable[0], usdc_out=usdc_out)


def test_redeem__swap_deadline_passed__reverts(redeemable, redeem, chain):
    with ape.reverts("redemption: deadline passed"):
        redeem(redeemable[0], deadline=chain.pending_timestamp - 1)


def test_redeem__paused__reverts_release_and_refund_still_work(
    redemptions, redeemable, redeem, receipt, admin, user, chain
):
    cld = redeemable[0]
    redeem(cld)
    redeem(cld)
    redemptions.pause(sender=admin)
    with ape.reverts("pausable: contract is paused"):
        redeem(cld)
    redemptions.release(1, *receipt(1), sender=user)
    chain.pending_timestamp += REFUND_DELAY + 1
    redemptions.refund(2, sender=user)
    redemptions.unpause(sender=admin)
    redeem(cld)


# ─── Release ─────────────────────────────────────────────────────────────────


def test_release__billing_receipt__pays_the_payee_and_logs(redemptions, redeemable, redeem, receipt, operator, agent):
    cld, _, usdc = redeemable[:3]
    redeem(cld)
    before = usdc.balanceOf(operator)
    tx = redemptions.release(1, *receipt(1), sender=agent)  # anyone may submit it
    assert usdc.balanceOf(operator) == before + USD20
    assert usdc.balanceOf(redemptions) == redemptions.total_held() == 0
    assert record(redemptions, 1)[-1] == helpers.STATUS_RELEASED
    event = redemptions.Released.from_receipt(tx)[0]
    assert (
        event.redemption_id,
        event.payee,
        bytes(event.event_arguments["provider"]),
        event.usdc,
        event.usd_micro,
    ) == (
        1,
        operator.address,
        ANTHROPIC,
        USD20,
        USD20,
    )
    assert bytes(event.billing_ref) == BILLING_REF


def test_release__receipt_above_amount_due__accepted(redemptions, redeemable, redeem, receipt, operator, usdc):
    redeem(redeemable[0])
    redemptions.release(1, *receipt(1, usd_micro=USD20 + 1), sender=operator)
    assert usdc.balanceOf(operator) >= USD20


def test_release__receipt_below_amount_due__reverts(redemptions, redeemable, redeem, receipt, operator):
    redeem(redeemable[0])
    with ape.reverts("redemption: receipt below amount due"):
        redemptions.release(1, *receipt(1, usd_micro=USD20 - 1), sender=operator)


def test_release__replayed_receipt__reverts(redemptions, redeemable, redeem, receipt, operator):
    redeem(redeemable[0])
    signed = receipt(1)
    redemptions.release(1, *signed, sender=operator)
    with ape.reverts("redemption: not open"):
        redemptions.release(1, *signed, sender=operator)


def test_release__receipt_of_another_redemption__reverts(redemptions, redeemable, redeem, receipt, operator):
    redeem(redeemable[0])
    redeem(redeemable[0])
    signed_for_1 = receipt(1)
    with ape.reverts("redemption: receipt not signed by billing signer"):
        redemptions.release(2, *signed_for_1, sender=operator)
    redemptions.release(1, *signed_for_1, sender=operator)


def test_release__receipt_for_another_sale_under_the_same_id__reverts(
    redemptions, redeemable, redeem, receipt, agent, operator, user, attacker, chain, usdc
):
    """abreak2 s12 item 2: a reorg gives escrow id 1 to another sale. Sale A (our agent,
    sale_ref 5) is escrowed as 1 and its credits bought: the billing signer signs a receipt
    for (1, sale A). Reorg to before it: on the new branch another agent key the user
    granted (its own payee) takes id 1 first with sale B. A's receipt, whoever submits it
    (a node holding our old release's bytes), must not pay B out: it reverts, as does A's
    signature submitted as B's sale; B's own receipt releases it. Before receipts named the
    sale, the escrow checked only id, provider, account and amount: A's receipt paid B's
    USDC to B's payee, and A, re-escrowed as 2, sat open under an id no receipt named."""
    cld = redeemable[0]
    ref = (5).to_bytes(32, "big")
    sale_a, sale_b = helpers.sale_id(agent.address, ref), helpers.sale_id(attacker.address, ref)
    assert sale_a != sale_b  # the same sale_ref from another key is another sale
    reorg = chain.snapshot()
    tx = redeem(cld, ref=ref)
    assert bytes(redemptions.Redeemed.from_receipt(tx)[0].sale) == sale_a
    ours = receipt(1, sale=sale_a)
    chain.restore(reorg)  # the new branch: sale A not (yet) on it

    redemptions.set_grant(
        attacker, attacker, chain.pending_timestamp + DAY, SLIPPAGE_BPS, [cld], [CLD_DAILY], sender=user
    )
    redeem(cld, usdc_out=USD20 // 4, sender=attacker, ref=ref)  # sale B: id 1, at most A's amount
    assert redemptions.redemptions(1).usdc == USD20 // 4
    before = usdc.balanceOf(attacker)
    with ape.reverts("redemption: sale, provider or account mismatch"):
        redemptions.release(1, *ours, sender=operator)  # our old release's bytes
    with ape.reverts("redemption: receipt not signed by billing signer"):
        redemptions.release(1, sale_b, *ours[1:], sender=operator)  # A's signature, B's sale
    assert (usdc.balanceOf(attacker), redemptions.redemptions(1).status) == (before, helpers.STATUS_OPEN)
    redemptions.release(1, *receipt(1, sale=sale_b, usd_micro=USD20 // 4), sender=operator)
    assert usdc.balanceOf(attacker) == before + USD20 // 4


@pytest.mark.parametrize(
    "override",
    [
        {"usd_micro": USD20 + 1},  # the amount signed is not the amount submitted
        {"sale": b"\x03" * 32},  # another sale (a receipt for it submitted as this one's)
        {"account_ref": b"\x01" * 32},  # credits bought on another account
        {"provider": OPENAI},  # a receipt for another provider
        {"billing_ref": b"\x02" * 32},  # another billing receipt id
        {"chain_id": 1},  # another chain
        {"escrow": "0x" + "11" * 20},  # another escrow
    ],
    ids=["amount", "sale", "account", "provider", "billing_ref", "chain", "contract"],
)
def test_release__receipt_fields_differ_from_what_was_signed__reverts(
    redemptions, redeemable, redeem, operator, chain, agent, override
):
    redeem(redeemable[0])
    fields = {
        "chain_id": chain.chain_id,
        "escrow": redemptions.address,
        "redemption_id": 1,
        "sale": helpers.sale_id(agent.address, SALE_REF),
        "provider": ANTHROPIC,
        "account_ref": ACCOUNT,
        "usd_micro": USD20,
        "billing_ref": BILLING_REF,
    }
    signature = helpers.sign_receipt(BILLING[ANTHROPIC].key, **(fields | override))
    submitted = (fields["sale"], ANTHROPIC, ACCOUNT, USD20, BILLING_REF)
    with ape.reverts("redemption: receipt not signed by billing signer"):
        redemptions.release(1, *submitted, signature, sender=operator)
    redemptions.release(1, *submitted, helpers.sign_receipt(BILLING[ANTHROPIC].key, **fields), sender=operator)


def test_release__provider_or_account_not_the_redemptions__reverts(
    redemptions, redeemable, redeem, receipt, operator, user
):
    redeem(redeemable[0])
    # A genuine OpenAI receipt (for the user's OpenAI account) cannot pay an Anthropic redemption.
    with ape.reverts("redemption: sale, provider or account mismatch"):
        redemptions.release(1, *receipt(1, provider=OPENAI, account=OPENAI_ACCOUNT), sender=operator)
    # Nor a genuine Anthropic receipt for another account.
    with ape.reverts("redemption: sale, provider or account mismatch"):
        redemptions.release(1, *receipt(1, account=b"\x01" * 32), sender=operator)


def test_release__forged_or_wrong_signer__reverts(redemptions, redeemable, redeem, receipt, operator, attacker):
    from eth_account import Account

    redeem(redeemable[0])
    forged = Account.from_key(attacker.private_key)
    for signer in (forged, BILLING[OPENAI]):  # a random key; another provider's signer
        with ape.reverts("redemption: receipt not signed by billing signer"):
            redemptions.release(1, *receipt(1, signer=signer), sender=operator)
    with ape.reverts():  # not a signature at all
        redemptions.release(1, *receipt(1)[:-1], b"\x00" * 65, sender=operator)


def test_release__signer_rotated__old_key_releases_the_older_sales_new_key_the_newer_revoked_none(
    redemptions, redeemable, redeem, receipt, admin, operator, attacker, chain
):
    """Rotation: add the new key; the old one signs the sales made before it (a key never
    releases a sale older than itself), and is revoked once they are closed."""
    from eth_account import Account

    redeem(redeemable[0])  # 1: before the new key
    chain.pending_timestamp += 10
    new_key = Account.from_key(attacker.private_key)
    redemptions.add_billing_signer(ANTHROPIC, new_key.address, sender=admin)  # add the new key…
    assert redemptions.billing_signer_since(ANTHROPIC, new_key.address) > 0
    chain.pending_timestamp += 10
    redeem(redeemable[0])  # 2: after it
    with ape.reverts("redemption: billing signer newer than the sale"):
        redemptions.release(1, *receipt(1, signer=new_key), sender=operator)
    redemptions.release(1, *receipt(1), sender=operator)
    redemptions.revoke_billing_signer(ANTHROPIC, BILLING[ANTHROPIC].address, sender=admin)  # …revoke the old
    with ape.reverts("redemption: receipt not signed by billing signer"):
        redemptions.release(2, *receipt(2), sender=operator)
    redemptions.release(2, *receipt(2, signer=new_key), sender=operator)


def test_release__last_signer_revoked__no_release_no_redeem_then_user_refunds(
    redemptions, redeemable, redeem, receipt, admin, operator, user, chain
):
    redeem(redeemable[0])
    signed = receipt(1)
    redemptions.revoke_billing_signer(ANTHROPIC, BILLING[ANTHROPIC].address, sender=admin)
    with ape.reverts("redemption: receipt not signed by billing signer"):
        redemptions.release(1, *signed, sender=operator)
    with ape.reverts("redemption: unknown provider"):
        redeem(redeemable[0])
    chain.pending_timestamp += REFUND_DELAY + 1
    redemptions.refund(1, sender=user)


def test_release__after_deadline_while_open__still_pays_the_payee(
    redemptions, redeemable, redeem, receipt, operator, usdc, chain
):
    redeem(redeemable[0])
    chain.pending_timestamp += REFUND_DELAY + 1
    before = usdc.balanceOf(operator)
    redemptions.release(1, *receipt(1), sender=operator)
    assert usdc.balanceOf(operator) == before + USD20


def test_release__unknown_redemption__reverts(redemptions, redeemable, receipt, operator):
    with ape.reverts("redemption: not open"):
        redemptions.release(7, bytes(32), ANTHROPIC, ACCOUNT, USD20, BILLING_REF, b"\x00" * 65, sender=operator)


# ─── Refund ──────────────────────────────────────────────────────────────────


def test_refund__after_deadline__user_gets_the_usdc_and_logs(redemptions, redeemable, redeem, user, chain):
    cld, _, usdc = redeemable[:3]
    tx = redeem(cld)
    before = usdc.balanceOf(user)
    chain.pending_timestamp = tx.timestamp + REFUND_DELAY + 1
    refund = redemptions.refund(1, sender=user)
    assert usdc.balanceOf(user) == before + USD20
    assert usdc.balanceOf(redemptions) == redemptions.total_held() == 0
    assert record(redemptions, 1)[-1] == helpers.STATUS_REFUNDED
    event = redemptions.Refunded.from_receipt(refund)[0]
    assert (event.redemption_id, event.user, event.usdc) == (1, user.address, USD20)


def test_refund__at_or_before_deadline__reverts(redemptions, redeemable, redeem, user, chain):
    tx = redeem(redeemable[0])
    chain.pending_timestamp = tx.timestamp + REFUND_DELAY
    with ape.reverts("redemption: deadline not reached"):
        redemptions.refund(1, sender=user)


def test_refund__by_anyone_but_the_user__reverts(redemptions, redeemable, redeem, operator, attacker, agent, chain):
    redeem(redeemable[0])
    chain.pending_timestamp += REFUND_DELAY + 1
    for caller in (agent, operator, attacker):
        with ape.reverts("redemption: caller is not the user"):
            redemptions.refund(1, sender=caller)


def test_refund_and_release__once_closed__neither_again(
    redemptions, redeemable, redeem, receipt, user, operator, chain
):
    redeem(redeemable[0])
    redeem(redeemable[0])
    redemptions.release(1, *receipt(1), sender=operator)
    chain.pending_timestamp += REFUND_DELAY + 1
    with ape.reverts("redemption: not open"):
        redemptions.refund(1, sender=user)  # released: no refund
    redemptions.refund(2, sender=user)
    with ape.reverts("redemption: not open"):
        redemptions.refund(2, sender=user)  # refunded twice
    with ape.reverts("redemption: not open"):
        redemptions.release(2, *receipt(2), sender=operator)  # refunded: no release
