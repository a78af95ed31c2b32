"""Pins the RedemptionEscrow's gas (whole-transaction gasUsed) so a regression shows.

Measured through ape on its default test chain with the very function bench/gas.py
runs on anvil (promptex/chain/gas/redemption.py, which describes the scenario). A changed
figure is a changed contract (or compiler): look at it, then update the pin
deliberately.
"""

from promptex.chain.gas.measure import address_neutral_gas
from promptex.chain.gas.redemption import measure_redemption

# As if every calldata byte were non-zero (`address_neutral_gas`): addresses and receipt
# signatures depend on which tests ran before on the worker's chain.
PINNED = {
    "redemption_set_grant": 76_964,
    # issue 19: straight into the Oracle's pool, no Router hop or approve; rbind s13: + sale_ref
    # (32 calldata bytes, 512 gas as non-zero) and the sale's hash (agent, sale_ref) in the record's hash
    "redemption_redeem": 202_488,
    # issue 19: several signers per provider (one mapping read); rbind s13: + the sale (32 calldata
    # bytes) in the record's hash and the receipt's digest; rbreak4 s14: +125, the signer's time
    # added (same slot as the old bool) checked against the sale's (deadline less the delay)
    "redemption_release": 84_152,
    "redemption_refund": 53_927,
}


def test_redemption_gas__steady_state__pinned(markets, oracle, usdc, admin, user, agent, operator, chain):
    contracts = {"USDC": usdc, "Oracle": oracle, "token:CLD": markets[0]}
    gas = measure_redemption(chain, contracts, admin, user, agent, operator, gas_of=address_neutral_gas)
    assert gas == PINNED, f"redemption gas changed: {gas}; update PINNED deliberately"
