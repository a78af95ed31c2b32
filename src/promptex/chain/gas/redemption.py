"""RedemptionEscrow gas scenario: a user's grant, an agent's redemption
(exact output in the Oracle's pool for the token, honest-price and TWAP slippage
checks), the release against a provider's signed receipt, and the user's refund.

Steady state: the redemptions measured are the user's third and fourth of the
day (the day's counter, the redemption counter, the escrow's USDC balance and
every pool's accumulators are already non-zero), and each measured transaction
lands in a new block. The user already holds USDC when refunded; the payee holds
none before its first reimbursement (17,100 gas of the release is that fresh
balance). bench/gas_redemption.py prints these figures; tests/contracts/test_redemption_gas.py pins them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth_account import Account
from eth_utils.crypto import keccak

from promptex.chain.gas.measure import new_block, whole_gas
from promptex.chain.redemption import deploy_redemption
from promptex.protocol.redemption import LOCAL_REFUND_DELAY as REFUND_DELAY
from promptex.protocol.redemption import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.redemption import account_ref, provider_id, sale_id, sale_ref, sign_receipt
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD

PROVIDER = provider_id("anthropic")
ACCOUNT = account_ref("bench account")
BILLING = Account.from_key(keccak(text="bench billing signer"))


def measure_redemption(
    chain: Any,
    contracts: dict[str, Any],
    deployer: Any,
    user: Any,
    agent: Any,
    operator: Any,
    gas_of: Callable[[Any], Any] = whole_gas,
) -> dict[str, int]:
    """Whole-transaction gas of set_grant, redeem, release and refund.

    `contracts` holds USDC, Oracle and token:CLD; a CLD/USDC 0.30 % pool exists, and
    `user` holds CLD.
    """
    usdc, oracle, cld = (contracts[n] for n in ("USDC", "Oracle", "token:CLD"))
    escrow = deploy_redemption(
        deployer,
        contracts,
        twap_window=TWAP_WINDOW,
        refund_delay=REFUND_DELAY,
        token_providers={cld.address: "anthropic"},
        billing_signers={"anthropic": BILLING.address},
        log=lambda _: None,
    )
    oracle.update(cld.address, sender=deployer)
    chain.pending_timestamp += TWAP_WINDOW
    oracle.update(cld.address, sender=deployer)
    escrow.link_account(PROVIDER, ACCOUNT, sender=user)
    if usdc.balanceOf(user) == 0:
        usdc.mint(user, USD, sender=user)  # the refund pays a wallet that holds USDC already
    cld.approve(escrow.address, MAX_UINT, sender=user)
    gas: dict[str, int] = {}

    new_block(chain)
    expiry = chain.pending_timestamp + 30 * 86_400
    receipt = escrow.set_grant(agent, operator, expiry, 100, [cld.address], [1_000_000 * UNIT], sender=user)
    gas["redemption_set_grant"] = gas_of(receipt)

    refs = iter(range(1, 100))  # sale_ref: the agent's redeem nonce (small: mostly zero calldata bytes)

    def redeem() -> Any:
        new_block(chain)
        deadline = chain.pending_timestamp + 600
        return escrow.redeem(user, cld.address, 20 * USD, 100_000 * UNIT, deadline, sale_ref(next(refs)), sender=agent)

    redeem()  # the day's first: counters and accumulators become non-zero
    redeem()
    gas["redemption_redeem"] = gas_of(redeem())  # redemption 3
    redeem()  # redemption 4, refunded below

    new_block(chain)
    signature = sign_receipt(
        BILLING.key,
        chain_id=chain.chain_id,
        escrow=escrow.address,
        redemption_id=3,
        sale=sale_id(agent.address, sale_ref(3)),
        provider=PROVIDER,
        account_ref=ACCOUNT,
        usd_micro=20 * USD,
        billing_ref=keccak(text="bench receipt"),
    )
    sale = sale_id(agent.address, sale_ref(3))
    receipt = escrow.release(
        3, sale, PROVIDER, ACCOUNT, 20 * USD, keccak(text="bench receipt"), signature, sender=operator
    )
    gas["redemption_release"] = gas_of(receipt)

    chain.pending_timestamp += REFUND_DELAY + 1
    gas["redemption_refund"] = gas_of(escrow.refund(4, sender=user))
    return gas
