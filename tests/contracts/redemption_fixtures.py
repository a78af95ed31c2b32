"""RedemptionEscrow fixtures for the ape contract tests (test_redemption_*.py). A test
module takes them with `from redemption_fixtures import *`, which brings the DEX
fixtures too, and imports the constants it uses by name.

The escrow is deployed by the real code (`promptex.chain.redemption.deploy_redemption`)
once per module over the DEX of dex_fixtures.py, CLD registered as Anthropic's token
and GPT as OpenAI's, one billing signer each, `admin` a pauser; `redeemable` then
builds the usual world: CLD and GPT markets with TWAPs covering the escrow's window,
a user (the trader, who holds 10M CLD) who approved the escrow, linked an Anthropic
account and granted `agent` CLD with `operator` as payee.
"""

import dex_fixtures
import pytest
from dex_fixtures import *  # noqa: F403  (the DEX fixtures)
from eth_account import Account
from eth_utils import keccak

from promptex.chain.redemption import deploy_redemption
from promptex.protocol.redemption import LOCAL_REFUND_DELAY as REFUND_DELAY
from promptex.protocol.redemption import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.redemption import account_ref, provider_id, sign_receipt
from promptex.protocol.units import DAY
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT

__all__ = [  # the fixtures (dex_fixtures' included); constants are imported by name
    *dex_fixtures.__all__,
    "agent",
    "operator",
    "redemptions",
    "redeemable",
    "redeem",
    "receipt",
    "user",
]

ANTHROPIC = provider_id("anthropic")
OPENAI = provider_id("openai")
ACCOUNT = account_ref("org-user-anthropic", salt=b"test salt")
OPENAI_ACCOUNT = account_ref("org-user-openai", salt=b"test salt")
BILLING = {
    ANTHROPIC: Account.from_key(keccak(text="anthropic billing")),
    OPENAI: Account.from_key(keccak(text="openai billing")),
}
SLIPPAGE_BPS = 100  # 1 %: the 0.30 % fee plus some price impact
CLD_DAILY = 20_000 * UNIT
GPT_DAILY = 50 * UNIT
USD20 = 20 * 10**6
BILLING_REF = keccak(text="provider receipt 0001")


@pytest.fixture(scope="module")
def agent(accounts):
    return accounts[8]


@pytest.fixture(scope="module")
def operator(accounts):
    """The agent operator: the grant's payee."""
    return accounts[9]


@pytest.fixture(scope="module")
def user(trader):
    return trader


@pytest.fixture(scope="module")
def redemptions(admin, usdc, oracle, cld, gpt):
    escrow = deploy_redemption(
        admin,
        {"USDC": usdc, "Oracle": oracle},
        twap_window=TWAP_WINDOW,
        refund_delay=REFUND_DELAY,
        token_providers={cld.address: "anthropic", gpt.address: "openai"},
        pausers=[admin.address],
        log=lambda _: None,
    )
    for provider, signer in BILLING.items():
        escrow.add_billing_signer(provider, signer.address, sender=admin)
    return escrow


def cover_twap(oracle, chain, tokens, by):
    """Oracle observations of `tokens` at least TWAP_WINDOW old: an update now, another after the window."""
    for token in tokens:
        oracle.update(token, sender=by)
    chain.pending_timestamp += TWAP_WINDOW
    for token in tokens:
        oracle.update(token, sender=by)


@pytest.fixture
def redeemable(markets, redemptions, oracle, chain, user, agent, operator, usdc):
    """The world described in the module docstring; returns (cld, gpt, usdc, cld_pool, gpt_pool)."""
    cld, gpt = markets[0], markets[1]
    cover_twap(oracle, chain, (cld, gpt), user)
    redemptions.link_account(ANTHROPIC, ACCOUNT, sender=user)
    cld.approve(redemptions, MAX_UINT, sender=user)
    expiry = chain.pending_timestamp + 30 * DAY
    redemptions.set_grant(agent, operator, expiry, SLIPPAGE_BPS, [cld], [CLD_DAILY], sender=user)
    return markets


@pytest.fixture
def redeem(redemptions, agent, user, chain):
    """`agent` redeems `usdc_out` USDC of `user`'s `token` (for its provider)."""

    def _redeem(token, usdc_out=USD20, max_in=MAX_UINT, sender=None, for_user=None, deadline=None):
        return redemptions.redeem(
            user if for_user is None else for_user,
            token,
            usdc_out,
            max_in,
            chain.pending_timestamp + 600 if deadline is None else deadline,
            sender=agent if sender is None else sender,
        )

    return _redeem


@pytest.fixture
def receipt(redemptions, chain):
    """release() arguments after the id for `redemption_id` (an Anthropic one by default):
    provider, account_ref, usd_micro, billing_ref and the signature of its billing signer
    (or of `signer`)."""

    def _receipt(
        redemption_id, usd_micro=None, billing_ref=BILLING_REF, signer=None, provider=ANTHROPIC, account=ACCOUNT
    ):
        usd_micro = redemptions.redemptions(redemption_id).usdc if usd_micro is None else usd_micro
        signature = sign_receipt(
            (BILLING[provider] if signer is None else signer).key,
            chain_id=chain.chain_id,
            escrow=redemptions.address,
            redemption_id=redemption_id,
            provider=provider,
            account_ref=account,
            usd_micro=usd_micro,
            billing_ref=billing_ref,
        )
        return provider, account, usd_micro, billing_ref, signature

    return _receipt
