"""promptex.protocol.redemption against the contract: the Python receipt digest equals the
escrow's and eth_account's generic EIP-712 encoder's, the slippage bound and the honest
price bound equal the contract's, and `deploy_redemption` deploys from a recorded
deployment."""

import ape
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from fixtures.redemption import ACCOUNT, ANTHROPIC, BILLING_REF
from promptex.chain.deploy import contract_at
from promptex.chain.redemption import deploy_redemption, redemption_record
from promptex.protocol import redemption as helpers
from promptex.protocol.dex import amount_in
from promptex.protocol.redemption import LOCAL_TWAP_WINDOW as TWAP_WINDOW

FIELDS = {
    "redemption_id": 42,
    "sale": keccak(text="a sale"),
    "provider": ANTHROPIC,
    "account_ref": ACCOUNT,
    "usd_micro": 20_000_000,
}


def test_receipt_digest__python__equals_contract_and_eth_account(redemptions, chain):
    fields = FIELDS | {"billing_ref": BILLING_REF}
    ours = helpers.receipt_digest(chain_id=chain.chain_id, escrow=redemptions.address, **fields)
    assert bytes(redemptions.receipt_digest(*fields.values())) == ours
    typed = helpers.receipt_typed_data(chain_id=chain.chain_id, escrow=redemptions.address, message=fields)
    signable = encode_typed_data(full_message=typed)
    assert keccak(b"\x19" + signable.version + signable.header + signable.body) == ours


def test_sign_receipt__recovers_to_the_signer(redemptions, chain):
    key = Account.create()
    fields = FIELDS | {"billing_ref": BILLING_REF, "chain_id": chain.chain_id, "escrow": redemptions.address}
    signature = helpers.sign_receipt(key.key, **fields)
    assert len(signature) == 65
    assert Account._recover_hash(helpers.receipt_digest(**fields), signature=signature) == key.address


def test_sale_id__agent_and_ref__as_the_contract_logs_it(redemptions, redeemable, redeem, agent):
    ref = (7).to_bytes(32, "big")
    assert helpers.sale_ref(7) == ref
    tx = redeem(redeemable[0], ref=ref)
    assert bytes(redemptions.Redeemed.from_receipt(tx)[0].sale) == helpers.sale_id(agent.address, ref)
    # The agent's ref (fresh per redeem), read back from the call's data as the agent reads its own.
    fresh = helpers.new_sale_ref()
    tx = redeem(redeemable[0], ref=fresh)
    assert helpers.redeem_sale_ref(bytes(tx.transaction.data)) == fresh
    assert bytes(redemptions.Redeemed.from_receipt(tx)[0].sale) == helpers.sale_id(agent.address, fresh)
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            helpers.sale_ref(bad)


def test_provider_id__name__left_aligned_lower_case():
    assert helpers.provider_id("Anthropic") == b"anthropic" + b"\0" * 23
    for bad in ("", "x" * 33):
        with pytest.raises(ValueError):
            helpers.provider_id(bad)


def test_account_ref__salted_hash_of_the_account_id():
    assert helpers.account_ref("org-1", b"salt") == keccak(b"saltorg-1")
    assert helpers.account_ref("org-1", b"salt") != helpers.account_ref("org-1", b"other")
    with pytest.raises(ValueError):
        helpers.account_ref("")


@pytest.mark.parametrize("slippage", [0, 1, 100, 5_000])
def test_slippage_limit__python__equals_contract(redemptions, redeemable, oracle, slippage):
    cld = redeemable[0]
    price = oracle.consult(cld, TWAP_WINDOW)
    for usdc_out in (1, 20_000_000, 10**12 + 7):
        assert redemptions.slippage_limit(cld, usdc_out, slippage) == helpers.slippage_limit(usdc_out, price, slippage)
    with pytest.raises(ValueError):
        helpers.slippage_limit(1, price, 5_001)
    with ape.reverts("redemption: slippage above maximum"):
        redemptions.slippage_limit(cld, 1, 5_001)


@pytest.mark.parametrize("usdc_out", [1, 20_000_000, 30_000 * 10**6])
def test_honest_limit__python__equals_contract(redemptions, redeemable, oracle, usdc_out):
    cld, _, _, pool, _ = redeemable
    reserve0, reserve1, _ = pool.get_reserves()
    reserves = (reserve0, reserve1) if pool.token0() == cld.address else (reserve1, reserve0)
    price = oracle.consult(cld, TWAP_WINDOW)
    tokens_in, limit = redemptions.quote(cld, usdc_out)
    assert limit == helpers.honest_limit(usdc_out, reserves[0] * reserves[1], price, 30)
    assert tokens_in == amount_in(usdc_out, *reserves)
    assert tokens_in <= limit <= tokens_in * 10_060 // 10_000  # spot at the TWAP: 0.5 % headroom, rounding
    with pytest.raises(ValueError):
        helpers.honest_limit(reserves[1] * 2, reserves[0] * reserves[1], price, 30)


def test_deploy_redemption__from_a_recorded_deployment__wired_and_recorded(deployment, admin, tmp_path):
    signer = Account.create().address
    cld = deployment.address("token:CLD")
    escrow = deploy_redemption(
        admin,
        deployment,
        token_providers={cld: "Anthropic"},
        billing_signers={"Anthropic": signer},
        pausers=[admin.address],
        log=lambda _: None,
    )
    assert escrow.usdc() == deployment.address("USDC")
    assert escrow.oracle() == contract_at(deployment, "Oracle").address
    assert (escrow.twap_window(), escrow.refund_delay()) == (helpers.LOCAL_TWAP_WINDOW, helpers.LOCAL_REFUND_DELAY)
    assert escrow.is_billing_signer(helpers.provider_id("anthropic"), signer)
    assert bytes(escrow.token_provider(cld)) == helpers.provider_id("anthropic")
    assert escrow.is_pauser(admin)
    record = redemption_record(escrow, tmp_path)
    assert record.address == escrow.address
    assert ape.project.RedemptionEscrow.at(record.address).refund_delay() == helpers.LOCAL_REFUND_DELAY
