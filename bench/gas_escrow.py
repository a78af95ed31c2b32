"""CreditEscrow rows for bench/gas.py: lots past their expiry — `prune` of 1 and of 256,
a provider token's settlement whose draw unlinks 256 first, `expire` and a buy-back of
unbacked tokens (the scenario is described in promptex/chain/gas/escrow.py)."""

from __future__ import annotations

from gas import Context, measurement
from promptex.chain.deploy import contract_at
from promptex.chain.gas.escrow import measure_escrow

LABELS = {
    "escrow_prune_1": "escrow: prune 1 lot past expiry from the head of the draw order",
    "escrow_prune_256": "escrow: prune 256 lots past expiry (MAX_PRUNE_LOTS)",
    "vault_settle_token_prune_256": "vault: settle a provider token whose draw first unlinks 256 expired lots",
    "escrow_expire": "escrow: expire an undrawn tokenized lot (its bond share to the insurance fund)",
    "escrow_buy_back": "escrow: buy back unbacked tokens at the token's bond share",
}


@measurement
def escrow_expired_lots(ctx: Context) -> dict[str, tuple[str, int]]:
    seller, buyer = ctx.accounts[1], ctx.accounts[2]
    names = ("USDC", "CreditEscrow", "CreditsVault", "token:CLD")
    contracts = {name: contract_at(ctx.deployment, name) for name in names}
    gas = measure_escrow(ctx.chain, contracts, ctx.admin, seller, buyer)
    return {key: (LABELS[key], value) for key, value in gas.items()}
