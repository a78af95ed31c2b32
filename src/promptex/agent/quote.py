"""Whether a redemption can go through now, checked against the chain before anything
is signed: the user's grant (live, naming the token, its daily limit), the token's
provider (a token redeems into its own provider's credits only), the linked account
and billing signers, the escrow's quote of the sale against the caller's maximum
input, the honest-price bound (TWAP-consistent reserves + 0.5 %) and the grant's
slippage bound on the Oracle TWAP, and the user's balance and allowance. The escrow
checks the same again on chain; this only spares a revert and says clearly why a rule
does not fire."""

from __future__ import annotations

from dataclasses import dataclass

from promptex.agent.chain import AgentChain
from promptex.protocol.redemption import slippage_limit
from promptex.protocol.units import money, utc_text


@dataclass(frozen=True)
class Quote:
    tokens_in: int  # what the pool takes for the USDC
    honest_limit: int  # most the escrow sells: the input at TWAP-consistent reserves + 0.5 %
    slippage_limit: int  # most the grant allows at the TWAP
    daily_left: int  # what is left of today's limit


class QuoteRefused(Exception):
    """The redemption cannot go through; `code` names the reason (for notifications)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_redemption(
    chain: AgentChain, user: str, provider: bytes, account_ref: bytes, token: str, usd_micro: int, max_tokens_in: int,
    *, symbol: str,
) -> Quote:  # fmt: skip
    """`symbol` names `token` in the messages (whole tokens for people)."""

    def tokens(amount: int) -> str:
        return money(amount, symbol)

    if usd_micro <= 0:
        raise QuoteRefused("amount", "the USD amount must be positive")
    grant = chain.grant(user)
    if not grant.live:
        raise QuoteRefused("no_grant", "the user has not granted this agent (or revoked the grant)")
    if chain.now() > grant.expiry:
        raise QuoteRefused("grant_expired", f"the user's grant expired at {utc_text(grant.expiry)}")
    limit = chain.daily_limit(user, token)
    if limit == 0:
        raise QuoteRefused("token_not_granted", "the user's grant does not name this token")
    token_provider = chain.token_provider(token)
    if token_provider != provider:
        raise QuoteRefused(
            "wrong_provider",
            f"this token redeems into {token_provider.rstrip(bytes(1)).decode(errors='replace') or 'no'} "
            f"credits only, not {provider.rstrip(bytes(1)).decode(errors='replace')}",
        )
    if chain.linked_account(user, provider) != account_ref:
        raise QuoteRefused("not_linked", "the account is not the one the user linked on chain for this provider")
    if chain.billing_signer_count(provider) == 0:
        raise QuoteRefused("unknown_provider", "the escrow has no billing signer for this provider")
    price = chain.twap(token)
    if price is None or price == 0:
        raise QuoteRefused("no_twap", "the Oracle has no TWAP for this token yet")
    quoted = chain.quote(token, usd_micro)
    if quoted is None:
        raise QuoteRefused("no_market", "the market cannot deliver that much USDC (no pool or too little liquidity)")
    tokens_in, honest = quoted
    if tokens_in > max_tokens_in:
        raise QuoteRefused(
            "above_max", f"the market needs {tokens(tokens_in)}, above the maximum of {tokens(max_tokens_in)}"
        )
    if tokens_in > honest:
        raise QuoteRefused(
            "price", f"the pool's price is off its TWAP by more than the 0.5 % the escrow allows ({tokens(tokens_in)} "
            f"now, at most {tokens(honest)}); try again once the TWAP has caught up",
        )  # fmt: skip
    bound = slippage_limit(usd_micro, price, grant.max_slippage_bps)
    if tokens_in > bound:
        raise QuoteRefused(
            "slippage",
            f"selling {tokens(tokens_in)} is beyond the grant's slippage (at most {tokens(bound)} at the TWAP)",
        )
    left = limit - chain.spent_today(user, token)
    if tokens_in > left:
        raise QuoteRefused(
            "daily_limit", f"the grant's daily limit leaves {tokens(max(0, left))} today, not the {tokens(tokens_in)} "
            f"the sale needs",
        )  # fmt: skip
    if chain.token_balance(user, token) < tokens_in:
        raise QuoteRefused("balance", "the user's wallet holds fewer tokens than the sale needs")
    if chain.allowance(user, token) < tokens_in:
        raise QuoteRefused("allowance", "the user's allowance to the escrow is below what the sale needs")
    return Quote(tokens_in, honest, bound, left)
